//! `netsim` command line: up / set / status / down / bench. See README.md.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use netsim::probe::{TcpSink, median_f64, tcp_goodput, udp_blast};
use netsim::{Change, DirSel, Impair, PathSel, Sim, SimOpts, addr};

#[derive(Parser)]
#[command(
    name = "netsim",
    about = "TUN-based network emulator: two namespaces, two impaired paths"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create NAME-c and NAME-s, link them with two paths and start the forwarder.
    /// Returns once traffic can flow; the forwarder keeps running in the background
    /// (log: /run/netsim/NAME.log) unless --foreground is given.
    Up(UpArgs),
    /// Change impairments of a running sim, live.
    Set(SetArgs),
    /// Show settings and packet counters.
    Status { name: String },
    /// Stop the forwarder and remove namespaces, links, processes in them, and run files.
    Down { name: String },
    /// Measure the forwarder's ceiling (no impairment): bulk TCP goodput and UDP packets/s.
    Bench(BenchArgs),
}

/// Impairment flags shared by `up` and `set`. Delays are one-way, per direction.
#[derive(Args, Default)]
struct ImpairArgs {
    /// One-way delay, e.g. 25ms (RTT = delay up + delay down).
    #[arg(long)]
    delay: Option<String>,
    /// Uniform jitter: each packet gets delay ± jitter.
    #[arg(long)]
    jitter: Option<String>,
    /// Let jitter reorder packets: on|off (default off: FIFO).
    #[arg(long)]
    reorder: Option<String>,
    /// Random loss, e.g. 1% or 0.01.
    #[arg(long)]
    loss: Option<String>,
    /// Gilbert-Elliott burst loss P_ENTER,P_EXIT[,LOSS_BAD[,LOSS_GOOD]] (e.g. 1%,30%) or off.
    #[arg(long = "burst-loss")]
    burst_loss: Option<String>,
    /// Rate limit: 200mbit, 1gbit, 500kbit, or off.
    #[arg(long)]
    rate: Option<String>,
    /// Bottleneck queue: 100p (packets), 256kb / 1mib (bytes), or a time like 50ms (default 100ms).
    #[arg(long)]
    queue: Option<String>,
    /// Drop everything: on|off.
    #[arg(long)]
    blackhole: Option<String>,
    /// Drop UDP only (forces QUIC → TCP fallback): on|off.
    #[arg(long = "drop-udp")]
    drop_udp: Option<String>,
}

impl ImpairArgs {
    fn tokens(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut add = |k: &str, val: &Option<String>| {
            if let Some(x) = val {
                v.push(format!("{k}={}", x.replace(',', ":")));
            }
        };
        add("delay", &self.delay);
        add("jitter", &self.jitter);
        add("reorder", &self.reorder);
        add("loss", &self.loss);
        add("burst-loss", &self.burst_loss);
        add("rate", &self.rate);
        add("queue", &self.queue);
        add("blackhole", &self.blackhole);
        add("drop-udp", &self.drop_udp);
        v
    }
}

#[derive(Args)]
struct UpArgs {
    name: String,
    #[command(flatten)]
    imp: ImpairArgs,
    /// Impairments of path 2 as key=value list (default: same as path 1),
    /// e.g. "delay=60ms loss=2% rate=20mbit".
    #[arg(long)]
    path2: Option<String>,
    /// Extra changes applied after start, same language as the control socket
    /// (e.g. "path=1 dir=up rate=10mbit"); repeatable.
    #[arg(long = "set")]
    extra: Vec<String>,
    /// TUN MTU.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Packet buffers per direction.
    #[arg(long, default_value_t = 8192)]
    slots: usize,
    /// Seed for the loss/jitter dice.
    #[arg(long)]
    seed: Option<u64>,
    /// Stay in the foreground; prints "READY ..." on stdout when traffic can flow and runs
    /// until SIGINT/SIGTERM or `netsim down NAME`.
    #[arg(long)]
    foreground: bool,
}

#[derive(Args)]
struct SetArgs {
    name: String,
    /// 1, 2 or all.
    #[arg(long, default_value = "all")]
    path: String,
    /// up (client→server), down (server→client) or both.
    #[arg(long, default_value = "both")]
    dir: String,
    #[command(flatten)]
    imp: ImpairArgs,
    /// Take the path's client interface down / bring it back: up|down.
    #[arg(long)]
    link: Option<String>,
    /// Reset the selected directions to a perfect link first.
    #[arg(long)]
    reset: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, default_value = "nsbench")]
    name: String,
    /// Seconds per sample.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Samples of each measurement.
    #[arg(long, default_value_t = 3)]
    samples: usize,
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Up(a) if a.foreground => run_foreground(a),
        Cmd::Up(a) => up_daemon(a),
        Cmd::Set(a) => set(a),
        Cmd::Status { name } => {
            netsim::control(&name, "status", Duration::from_secs(10)).map(|s| println!("{s}"))
        }
        Cmd::Down { name } => netsim::cleanup(&name).map(|()| {
            let _ = fs::remove_file(netsim::log_path(&name));
        }),
        Cmd::Bench(a) => bench(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netsim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn opts_of(a: &UpArgs) -> Result<SimOpts> {
    let mut path1 = Impair::default();
    Change::parse(&a.imp.tokens().join(" "))?.apply_to(&mut path1)?;
    let path2 = match &a.path2 {
        Some(spec) => {
            let mut p2 = Impair::default();
            Change::parse(spec)?.apply_to(&mut p2)?;
            Some(p2)
        }
        None => None,
    };
    for s in &a.extra {
        Change::parse(s)?;
    }
    Ok(SimOpts {
        path1,
        path2,
        mtu: a.mtu,
        slots: a.slots,
        seed: a.seed,
    })
}

/// Start `netsim up ... --foreground` detached and wait for its READY line.
fn up_daemon(a: UpArgs) -> Result<()> {
    netsim::check_name(&a.name)?;
    opts_of(&a)?; // report bad flags here, not in the log
    fs::create_dir_all(netsim::RUN_DIR)?;
    let log = fs::File::create(netsim::log_path(&a.name)).context("create log file")?;
    let exe = std::env::current_exe().context("locate own executable")?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("spawn forwarder")?;
    let Some(out) = child.stdout.take() else {
        bail!("no stdout from forwarder");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) if line.starts_with("READY") => {
            print!("{line}");
            Ok(())
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(netsim::log_path(&a.name)).unwrap_or_default();
            bail!("forwarder did not start:\n{}", log.trim_end())
        }
    }
}

fn run_foreground(a: UpArgs) -> Result<()> {
    let opts = opts_of(&a)?;
    // Block termination signals before any thread exists, then wait for them synchronously.
    let sigs = netsim::block_term_signals()?;
    let hook: netsim::ShutdownHook = Box::new(netsim::terminate_self);
    let sim = Sim::up_with_hook(&a.name, opts, Some(hook))?;
    for s in &a.extra {
        sim.apply(s)?;
    }
    let pidf = netsim::pid_path(&a.name);
    fs::write(&pidf, format!("{}\n", std::process::id()))?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "READY pid={} client-ns={} server-ns={} path1={}<->{} path2={}<->{} service={} ctl={}",
        std::process::id(),
        sim.client_ns(),
        sim.server_ns(),
        addr::CLIENT_V4[0],
        addr::SERVER_V4[0],
        addr::CLIENT_V4[1],
        addr::SERVER_V4[1],
        addr::SERVICE_V4,
        netsim::ctl_path(&a.name).display()
    )?;
    out.flush()?;
    let sig = netsim::wait_for_signal(&sigs);
    eprintln!("netsim: signal {sig}, tearing down {}", a.name);
    let r = sim.down();
    let _ = fs::remove_file(&pidf);
    r
}

fn set(a: SetArgs) -> Result<()> {
    let mut toks = vec![format!("path={}", a.path), format!("dir={}", a.dir)];
    if a.reset {
        toks.push("reset".into());
    }
    toks.extend(a.imp.tokens());
    if let Some(l) = &a.link {
        toks.push(format!("link={l}"));
    }
    let spec = toks.join(" ");
    Change::parse(&spec)?; // validate locally for a good error message
    netsim::control(&a.name, &format!("set {spec}"), Duration::from_secs(10))?;
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let sim = Sim::up(
        &a.name,
        SimOpts {
            mtu: a.mtu,
            ..SimOpts::default()
        },
    )?;
    let secs = Duration::from_secs(a.seconds.clamp(1, 60));
    let samples = a.samples.clamp(1, 10);
    let to = SocketAddr::from((addr::SERVER_V4[0], 5001));
    let sink = TcpSink::start(&sim, to.ip(), to.port())?;
    let mut tcp = Vec::new();
    for i in 0..samples {
        let before = sim.stats(PathSel::P1, DirSel::Both);
        let bps = tcp_goodput(&sim, &sink, to, Duration::from_secs(1), secs)?;
        let after = sim.stats(PathSel::P1, DirSel::Both);
        let pkts = after.tx_packets - before.tx_packets;
        println!(
            "tcp sample {}: goodput {:.0} Mbit/s ({} packets forwarded both ways in {:.1} s)",
            i + 1,
            bps / 1e6,
            pkts,
            (secs + Duration::from_secs(1)).as_secs_f64()
        );
        tcp.push(bps);
    }
    drop(sink);
    let mut pps = Vec::new();
    for i in 0..samples {
        let to = SocketAddr::from((addr::SERVER_V4[0], 5002 + i as u16));
        let before = sim.stats(PathSel::P1, DirSel::Up);
        let b = udp_blast(
            &sim,
            to,
            u64::MAX,
            18,
            256,
            Duration::ZERO,
            secs,
            Duration::from_millis(300),
        )?;
        let after = sim.stats(PathSel::P1, DirSel::Up);
        let rate = if b.recv_secs > 0.0 {
            b.received as f64 / b.recv_secs
        } else {
            0.0
        };
        println!(
            "udp sample {}: sent {} received {} -> {:.0} packets/s delivered (forwarder read {} wrote {})",
            i + 1,
            b.sent,
            b.received,
            rate,
            after.rx_packets - before.rx_packets,
            after.tx_packets - before.tx_packets
        );
        pps.push(rate);
    }
    println!(
        "median: tcp {:.0} Mbit/s, udp 46-byte packets {:.0} packets/s (mtu {})",
        median_f64(&tcp).unwrap_or(0.0) / 1e6,
        median_f64(&pps).unwrap_or(0.0),
        a.mtu
    );
    sim.down()
}
