//! What the engine's adaptive half buys, through netsim at 100 Mbit/s and 50 ms RTT,
//! measured against the link itself (the time its line rate needs for the same bytes):
//! - a big file, prewarmed: Enqueue to the first chunk's ACK (small first chunks, ramp-up)
//!   and the whole upload's share of line rate;
//! - a photogrammetry capture, 300 files of 512 KiB: share of line rate (many jobs share
//!   the streams instead of create -> PUT -> complete one after another).
//!
//!   cargo build --release --workspace && target/release/adaptive [BIG_MIB] [SMALL_FILES]

use std::time::{Duration, Instant};

use netsim::{Impair, Sim, SimOpts};
use uplink_bench::send;
use uplink_e2e::{Daemon, Server, json_lines, random_file, uplink, workdir};

const RATE_BPS: u64 = 100_000_000;
const ONE_WAY: Duration = Duration::from_millis(25);
const RTT_MS: f64 = 50.0;

/// Seconds the link's line rate needs for `bytes` of payload (IP/TCP/TLS overhead not
/// counted, so a perfect sender scores a little under 100 %).
fn line_secs(bytes: u64) -> f64 {
    bytes as f64 * 8.0 / RATE_BPS as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let big_mib: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(128);
    let small_files: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(300);
    let link = Impair::default().delay(ONE_WAY).rate_bps(RATE_BPS);
    let sim = Sim::up("bench-adapt", SimOpts::symmetric(link)).expect("netsim");
    let dir = workdir();
    let server = Server::start_in(dir.path(), &sim);
    let ns = sim.client_ns();
    let d = dir.path().join("daemon");
    std::fs::create_dir_all(&d).expect("dir");
    let daemon = Daemon::start_cmd(&d, Daemon::command_in(&d, &server, Some(&ns)));

    // 1. A big file, prewarmed.
    let big = dir.path().join("big.bin");
    random_file(&big, big_mib << 20);
    assert!(
        uplink(&daemon.socket, &["prewarm", "--keep-warm", "60"])
            .status
            .success()
    );
    let t = Instant::now();
    let rec = send(&daemon.socket, &big, "big.bin");
    let total = t.elapsed().as_secs_f64();
    let first = rec["time_to_first_ack_ms"].as_f64().unwrap_or(f64::NAN);
    println!("100 Mbit/s, RTT 50 ms (netsim); reference: the line rate's time for the same bytes");
    println!(
        "big file {big_mib} MiB, prewarmed: first ACK {first:.0} ms = {:.1} RTT; whole upload {total:.2} s vs line {:.2} s = {:.0} % of line ({}, largest chunk {} KiB, {} chunks)",
        first / RTT_MS,
        line_secs(big_mib << 20),
        100.0 * line_secs(big_mib << 20) / total,
        rec["protocol"],
        rec["chunk_size"].as_u64().unwrap_or(0) >> 10,
        rec["chunks_acked"],
    );

    // 2. Many small files, enqueued at once (as a capture app hands them over).
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).expect("dir");
    let paths: Vec<String> = (0..small_files)
        .map(|i| {
            let p = photos.join(format!("p{i:04}.jpg"));
            random_file(&p, 512 << 10);
            p.to_string_lossy().into_owned()
        })
        .collect();
    // One `send --wait` for all of them, as a capture app's user would run it: the CLI
    // follows every job on one Watch stream (polling `ls` would steal CPU from the
    // daemon and server on this 2-core machine and skew the figure).
    let t = Instant::now();
    let mut args = vec!["send", "--wait", "--json"];
    args.extend(paths.iter().map(String::as_str));
    let out = uplink(&daemon.socket, &args);
    assert!(out.status.success(), "{out:?}");
    let completed = json_lines(&out)
        .iter()
        .filter(|j| j["state"] == "completed" && j["size"] == 512 << 10)
        .count();
    assert_eq!(completed, small_files, "every file completed");
    let total = t.elapsed().as_secs_f64();
    let bytes = small_files as u64 * (512 << 10);
    println!(
        "{small_files} files of 512 KiB: {total:.2} s vs line {:.2} s = {:.0} % of line",
        line_secs(bytes),
        100.0 * line_secs(bytes) / total
    );
}
