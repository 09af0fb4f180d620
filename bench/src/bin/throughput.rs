//! Upload throughput side by side in one run, as ratios (the machine is shared and noisy).
//!
//! Loopback (default 2048 MiB): `openssl dgst -sha256` of the file (the hashing floor),
//! uplink over HTTP/3, uplink over HTTP/2 (server with `--no-h3`), one `curl --http2 -T`.
//! netsim (default 256 MiB): 200 Mbit/s, 25 ms each way (50 ms RTT), 1 % loss each way,
//! the client's TCP default CUBIC:
//! uplink h3, uplink h2, curl.
//!
//!   cargo build --release --workspace && target/release/throughput [LOOPBACK_MIB] [NETSIM_MIB]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use netsim::{Impair, Sim, SimOpts};
use uplink_bench::{curl_put, send, time_cmd};
use uplink_e2e::{Daemon, Server, random_file, uplink, workdir};

fn uplink_run(
    dir: &Path,
    name: &str,
    server: &Server,
    netns: Option<&str>,
    file: &Path,
) -> (f64, String) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("dir");
    let daemon = Daemon::start_cmd(&d, Daemon::command_in(&d, server, netns));
    let warm = uplink(&daemon.socket, &["prewarm"]);
    assert!(warm.status.success(), "{warm:?}");
    let rec = send(&daemon.socket, file, name);
    (
        rec["total_seconds"].as_f64().unwrap_or(f64::NAN),
        rec["protocol"].as_str().unwrap_or("").to_string(),
    )
}

fn row(what: &str, secs: f64, bytes: u64, reference: f64) {
    println!(
        "{what:<40} {secs:>8.2} {:>9.0} {:>10.2}x",
        bytes as f64 / 1e6 / secs,
        reference / secs
    );
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let lo_mib = args.first().copied().unwrap_or(2048);
    let ns_mib = args.get(1).copied().unwrap_or(256);
    let dir = workdir();
    let d = dir.path();

    // Loopback.
    let file = d.join("loop.bin");
    random_file(&file, lo_mib << 20);
    let bytes = lo_mib << 20;
    let _ = Command::new("cat")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .status();
    let floor = time_cmd(Command::new("openssl").args(["dgst", "-sha256"]).arg(&file));
    let s3 = Server::start_opts(&d.join("srv-h3"), None, &[]);
    let s2 = Server::start_opts(&d.join("srv-h2"), None, &["--no-h3"]);
    let (t3, p3) = uplink_run(d, "lo-h3", &s3, None, &file);
    let (t2, p2) = uplink_run(d, "lo-h2", &s2, None, &file);
    let tc = curl_put(
        None,
        &s3.ca,
        &format!("{}/v1/objects/curl.bin", s3.url()),
        &s3.bearer(),
        &file,
    );
    println!("loopback, {lo_mib} MiB                          seconds      MB/s   vs floor");
    row("openssl dgst -sha256 (hashing floor)", floor, bytes, floor);
    row(&format!("uplink send ({p3}, 12 streams)"), t3, bytes, floor);
    row(
        &format!("uplink send ({p2}, 12 streams / 4 conns)"),
        t2,
        bytes,
        floor,
    );
    row("curl --http2 -T (one stream)", tc, bytes, floor);
    println!(
        "uplink {p3} vs curl: {:.2}x, uplink {p2} vs curl: {:.2}x\n",
        tc / t3,
        tc / t2
    );
    drop((s3, s2));
    let _ = std::fs::remove_file(&file);

    // netsim: a long, lossy path.
    let imp = Impair::default()
        .delay(Duration::from_millis(25))
        .rate_bps(200_000_000)
        .loss(0.01);
    let sim = Sim::up("bench-tput", SimOpts::symmetric(imp)).expect("netsim");
    // The client host's TCP default is CUBIC, as on stock Linux (this machine's is BBR):
    // curl gets it; uplinkd's HTTP/2 connections ask for BBR.
    sim.set_client_congctl("cubic").expect("congctl cubic");
    let file = d.join("far.bin");
    random_file(&file, ns_mib << 20);
    let bytes = ns_mib << 20;
    let ns = sim.client_ns();
    let s3 = Server::start_opts(&d.join("far-h3"), Some(&sim), &[]);
    let s2 = Server::start_opts(&d.join("far-h2"), Some(&sim), &["--no-h3"]);
    let (t3, p3) = uplink_run(d, "far-h3", &s3, Some(&ns), &file);
    let (t2, p2) = uplink_run(d, "far-h2", &s2, Some(&ns), &file);
    let tc = curl_put(
        Some(&ns),
        &s3.ca,
        &format!("{}/v1/objects/curl.bin", s3.url()),
        &s3.bearer(),
        &file,
    );
    let line = 200e6 / 8.0;
    println!("netsim 200 Mbit/s, RTT 50 ms, 1 % loss, {ns_mib} MiB  seconds      MB/s   vs curl");
    row(&format!("uplink send ({p3}, 12 streams)"), t3, bytes, tc);
    row(
        &format!("uplink send ({p2}, 12 streams / 4 conns)"),
        t2,
        bytes,
        tc,
    );
    row("curl --http2 -T (one stream)", tc, bytes, tc);
    println!("line rate would take {:.2} s", bytes as f64 / line);
}
