//! `uplink demo`: the whole path on one machine, with nothing set up by hand.
//!
//! Starts `uplink-server` and `uplinkd` (the binaries next to this one) in a temporary
//! directory, writes a synthetic capture, uploads it with progress bars, compares the
//! server's copy byte for byte, prints the figures and stops what it started.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uplink::follow::{Render, follow};
use uplink::{ClientError, connect, grpc, state_name};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Size of the synthetic capture (bytes, or with K/M/G suffix).
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    size: u64,
    /// Keep the temporary directory (server data, daemon state, logs) for inspection.
    #[arg(long)]
    keep: bool,
    /// Print JSON lines instead of progress bars.
    #[arg(long)]
    json: bool,
    /// Upload while capturing: write the capture at --rate, uploading as it grows, seal
    /// it at the end, and report the seconds from the seal to the file verified.
    #[arg(long)]
    capture: bool,
    /// The capture's write rate with --capture (bytes per second, or with K/M/G suffix).
    #[arg(long, default_value = "30M", value_parser = parse_size)]
    rate: u64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a size like 512M"))
}

struct Procs {
    children: Vec<Child>,
}

impl Procs {
    /// SIGTERM each child, then wait (bounded); SIGKILL whatever is left.
    async fn stop(&mut self) {
        for c in self.children.iter_mut().rev() {
            if let Some(pid) = c
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
        self.children.clear();
    }
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let p = exe.with_file_name(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found next to {}; build the workspace first (cargo build --release)",
            name,
            exe.display()
        ))
    }
}

/// Starts a program and waits for its `ready` line on stdout; returns the line.
async fn start(
    procs: &mut Procs,
    cmd: &mut Command,
    log: &Path,
    what: &str,
) -> Result<String, String> {
    let log_file =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    procs.children.push(child);
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(" ready ") {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| format!("{what} did not start; see {}", log.display()))?;
    Ok(ready)
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

pub async fn run(args: DemoArgs) -> Result<ExitCode, ClientError> {
    match run_inner(args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("uplink demo: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn run_inner(args: DemoArgs) -> Result<ExitCode, String> {
    let tmp = std::env::temp_dir().join(format!("uplink-demo-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let mut procs = Procs {
        children: Vec::new(),
    };
    let result = demo(&args, &tmp, &mut procs).await;
    procs.stop().await;
    if args.keep {
        eprintln!("kept {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

async fn demo(args: &DemoArgs, tmp: &Path, procs: &mut Procs) -> Result<ExitCode, String> {
    let token = tmp.join("token");
    let mut raw = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // A secret: readable by its owner only (the server and daemon refuse it otherwise).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token)
            .map_err(|e| format!("cannot create {}: {e}", token.display()))?;
        f.write_all(hex::encode(raw).as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", token.display()))?;
    }

    let server_dir = tmp.join("server");
    let ready = start(
        procs,
        Command::new(sibling("uplink-server")?)
            .arg("--listen=127.0.0.1:0")
            .arg("--data-dir")
            .arg(&server_dir)
            .arg("--token-file")
            .arg(&token),
        &tmp.join("server.log"),
        "uplink-server",
    )
    .await?;
    let addr = field(&ready, "addr")
        .ok_or("server printed no address")?
        .to_string();
    let ca = field(&ready, "ca")
        .ok_or("server printed no CA")?
        .to_string();
    let socket = tmp.join("uplinkd.sock");
    start(
        procs,
        Command::new(sibling("uplinkd")?)
            .arg("--endpoint")
            .arg(format!("https://{addr}"))
            .arg("--token-file")
            .arg(&token)
            .arg("--ca-file")
            .arg(&ca)
            .arg("--state-dir")
            .arg(tmp.join("daemon"))
            .arg("--socket")
            .arg(&socket),
        &tmp.join("uplinkd.log"),
        "uplinkd",
    )
    .await?;
    eprintln!("server https://{addr}, daemon {}", socket.display());

    let capture = tmp.join("demo-capture.ply");
    let size = args.size;
    let mut client = connect(&socket).await.map_err(|e| e.to_string())?;
    let warm = client
        .prewarm(grpc::PrewarmRequest::default())
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    eprintln!("prewarmed {} in {} ms", warm.protocol, warm.connect_ms);
    let rate = args.capture.then_some(args.rate);
    if !args.capture {
        eprintln!(
            "writing a synthetic {:.0} MiB capture…",
            size as f64 / 1048576.0
        );
        let cap2 = capture.clone();
        tokio::task::spawn_blocking(move || write_capture(&cap2, size, None))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot write the capture: {e}"))?;
    } else {
        std::fs::File::create(&capture).map_err(|e| format!("cannot create the capture: {e}"))?;
        eprintln!(
            "capturing {:.0} MiB at {:.0} MB/s, uploading as it grows…",
            size as f64 / 1048576.0,
            args.rate as f64 / 1e6
        );
    }
    let started = Instant::now();
    let job = client
        .enqueue(grpc::EnqueueRequest {
            path: capture.to_string_lossy().into_owned(),
            growing: args.capture,
            ..Default::default()
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    // With --capture: the writer runs, then seals; the seal's moment is kept.
    let sealer = rate.map(|rate| {
        let (cap2, mut c, id) = (capture.clone(), client.clone(), job.job_id.clone());
        tokio::spawn(async move {
            tokio::task::spawn_blocking(move || write_capture(&cap2, size, Some(rate)))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot write the capture: {e}"))?;
            let sealed_at = Instant::now();
            let req = grpc::SealRequest {
                job_id: id,
                final_size: size,
                rewritten: Vec::new(),
            };
            c.seal(req).await.map_err(|e| e.message().to_string())?;
            Ok::<Instant, String>(sealed_at)
        })
    });
    let render = if args.json {
        Render::Json
    } else {
        Render::Bars
    };
    let jobs = follow(&socket, std::slice::from_ref(&job.job_id), render)
        .await
        .map_err(|e| e.to_string())?;
    let seal_to_verified = match sealer {
        Some(task) => {
            let sealed_at = task.await.map_err(|e| e.to_string())??;
            Some(sealed_at.elapsed())
        }
        None => None,
    };
    let elapsed = started.elapsed();
    let j = jobs.first().ok_or("no job record")?;
    if state_name(j.state) != "completed" {
        return Err(format!(
            "upload {}: {}: {}",
            state_name(j.state),
            j.error_code,
            j.error_message
        ));
    }
    let stored = server_dir.join("objects").join(&j.target);
    let (a, b) = (capture.clone(), stored.clone());
    let same = tokio::task::spawn_blocking(move || same_bytes(&a, &b))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot compare with {}: {e}", stored.display()))?;
    if !same {
        return Err(format!(
            "the server's copy {} differs from the capture",
            stored.display()
        ));
    }
    let secs = elapsed.as_secs_f64();
    println!("verified: the server's copy is identical, byte for byte");
    println!(
        "size            {} bytes ({:.0} MiB)",
        j.size,
        j.size as f64 / 1048576.0
    );
    println!("time            {secs:.2} s (enqueue to completed)");
    if let Some(d) = seal_to_verified {
        println!(
            "seal -> verified {:.2} s (the capture ended; the rest of it went while it was written)",
            d.as_secs_f64()
        );
    }
    println!(
        "throughput      {:.1} MB/s",
        j.size as f64 / 1e6 / secs.max(1e-9)
    );
    println!("protocol        {} with {} streams", j.protocol, j.streams);
    println!(
        "first chunk ack {} ms after enqueue",
        j.time_to_first_ack_ms
    );
    println!(
        "chunks          {} sent, {} re-sent; {} bytes on the wire",
        j.chunks_sent, j.chunks_resent, j.bytes_on_wire
    );
    println!("sha256          {}", j.server_sha256);
    println!("merkle root     {}", j.merkle_root);
    Ok(ExitCode::SUCCESS)
}

/// A point-cloud-like file of 16-byte points: the first half a smooth, structured scan
/// (compressible), the second half sensor noise (not compressible). With `rate` (bytes/s)
/// it is appended at that pace, 1 MiB at a time, as a capture app writes.
fn write_capture(path: &Path, size: u64, rate: Option<u64>) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let start = Instant::now();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut point = [0u8; 16];
    let mut i = 0u64;
    let mut written = 0u64;
    while written < size {
        if written < size / 2 {
            let (x, y) = ((i % 1024) as f32 * 0.01, ((i / 1024) % 1024) as f32 * 0.01);
            let z = ((i % 4096) as f32 * 0.001).sin();
            point[0..4].copy_from_slice(&x.to_le_bytes());
            point[4..8].copy_from_slice(&y.to_le_bytes());
            point[8..12].copy_from_slice(&z.to_le_bytes());
            point[12..16].copy_from_slice(&[(i % 256) as u8, 128, 64, 255]);
        } else {
            for half in point.chunks_mut(8) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                half.copy_from_slice(&rng.to_le_bytes());
            }
        }
        let n = (size - written).min(16) as usize;
        w.write_all(&point[..n])?;
        written += n as u64;
        i += 1;
        if let Some(rate) = rate.filter(|_| written.is_multiple_of(1 << 20)) {
            w.flush()?;
            let due = Duration::from_secs_f64(written as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    w.flush()?;
    w.get_ref().sync_all()
}

fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
