//! Upload throughput side by side in one run, as ratios (the machine is shared and noisy).
//!
//! Loopback (default 2048 MiB): `openssl dgst -sha256` of the file (the hashing floor),
//! uplink over HTTP/3, uplink over HTTP/2 (server with `--no-h3`), one `curl --http2 -T`.
//! netsim (default 512 MiB: at 128 MiB the start and the complete are a tenth of the
//! time): 200 Mbit/s, 25 ms each way (50 ms RTT), 1 % loss each way,
//! the client's TCP default CUBIC:
//! uplink h3, uplink h2, curl.
//!
//! Also: the daemon's CPU per GiB against the openssl pass, its peak RSS against
//! 64 MiB + 15 chunks, its heap allocations per chunk, and the bytes on the wire for a
//! compressible file.
//!
//!   cargo build --release --workspace && target/release/throughput [LOOPBACK_MIB] [NETSIM_MIB]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use netsim::{Impair, Sim, SimOpts};
use uplink_bench::{cpu_secs, curl_put, peak_rss, send, time_cmd};
use uplink_e2e::{Daemon, Server, point_cloud_file, random_file, uplink, workdir};

/// One upload by a fresh daemon, and what it cost.
struct Run {
    secs: f64,
    protocol: String,
    /// The daemon's CPU seconds (user + system) for this upload.
    cpu: f64,
    /// The daemon's peak RSS over its life (start, prewarm, this upload).
    peak_rss: u64,
    largest_chunk: u64,
    wire_bytes: u64,
    /// The daemon's heap allocations during the upload, per chunk sent.
    allocs_per_chunk: f64,
}

fn heap_allocations(socket: &Path) -> u64 {
    let out = uplink(socket, &["status", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["heap_allocations"].as_u64())
        .unwrap_or(0)
}

fn uplink_run(dir: &Path, name: &str, server: &Server, netns: Option<&str>, file: &Path) -> Run {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("dir");
    let daemon = Daemon::start_cmd(&d, Daemon::command_in(&d, server, netns));
    let warm = uplink(&daemon.socket, &["prewarm"]);
    assert!(warm.status.success(), "{warm:?}");
    let pid = daemon.proc.child.id();
    let cpu0 = cpu_secs(pid);
    let allocs0 = heap_allocations(&daemon.socket);
    let rec = send(&daemon.socket, file, name);
    let allocs = heap_allocations(&daemon.socket).saturating_sub(allocs0);
    let chunks = rec["chunks_sent"].as_u64().unwrap_or(0).max(1);
    Run {
        allocs_per_chunk: allocs as f64 / chunks as f64,
        secs: rec["total_seconds"].as_f64().unwrap_or(f64::NAN),
        protocol: rec["protocol"].as_str().unwrap_or("").to_string(),
        cpu: cpu_secs(pid) - cpu0,
        peak_rss: peak_rss(pid),
        largest_chunk: rec["chunk_size"].as_u64().unwrap_or(0),
        wire_bytes: rec["bytes_on_wire"].as_u64().unwrap_or(0),
    }
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
    let ns_mib = args.get(1).copied().unwrap_or(512);
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
    let r3 = uplink_run(d, "lo-h3", &s3, None, &file);
    let r2 = uplink_run(d, "lo-h2", &s2, None, &file);
    let tc = curl_put(
        None,
        &s3.ca,
        &format!("{}/v1/objects/curl.bin", s3.url()),
        &s3.bearer(),
        &file,
    );
    println!("loopback, {lo_mib} MiB                          seconds      MB/s   vs floor");
    row("openssl dgst -sha256 (hashing floor)", floor, bytes, floor);
    row(
        &format!("uplink send ({})", r3.protocol),
        r3.secs,
        bytes,
        floor,
    );
    row(
        &format!("uplink send ({}, 4 conns)", r2.protocol),
        r2.secs,
        bytes,
        floor,
    );
    row("curl --http2 -T (one stream)", tc, bytes, floor);
    println!(
        "uplink {} vs curl: {:.2}x, uplink {} vs curl: {:.2}x",
        r3.protocol,
        tc / r3.secs,
        r2.protocol,
        tc / r2.secs
    );
    // openssl is one thread, CPU-bound on a cached file: its wall time is its CPU time.
    let gib = bytes as f64 / (1u64 << 30) as f64;
    for r in [&r3, &r2] {
        let ceiling = 64 * (1 << 20) + 15 * r.largest_chunk;
        println!(
            "daemon over {}: CPU {:.2} s/GiB = {:.2}x the openssl pass ({:.2} s/GiB); peak RSS {} MiB vs 64 MiB + 15 x {} MiB chunks = {} MiB; {:.0} heap allocations per chunk",
            r.protocol,
            r.cpu / gib,
            r.cpu / floor,
            floor / gib,
            r.peak_rss >> 20,
            r.largest_chunk >> 20,
            ceiling >> 20,
            r.allocs_per_chunk,
        );
    }
    drop((s3, s2));
    let _ = std::fs::remove_file(&file);

    // Compressible input: an ASCII point cloud, a quarter of the loopback size.
    let cloud = d.join("cloud.ply");
    let cloud_bytes = (lo_mib << 20) / 4;
    point_cloud_file(&cloud, cloud_bytes);
    let s = Server::start_opts(&d.join("srv-cloud"), None, &[]);
    let rc = uplink_run(d, "lo-cloud", &s, None, &cloud);
    println!(
        "compressible {} MiB (ASCII point cloud) over {}: {} bytes on the wire = {:.0} % of the file (LZ4), {:.2} s\n",
        cloud_bytes >> 20,
        rc.protocol,
        rc.wire_bytes,
        100.0 * rc.wire_bytes as f64 / cloud_bytes as f64,
        rc.secs
    );
    drop(s);
    let _ = std::fs::remove_file(&cloud);

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
    let r3 = uplink_run(d, "far-h3", &s3, Some(&ns), &file);
    let r2 = uplink_run(d, "far-h2", &s2, Some(&ns), &file);
    // CUBIC under 1 % loss crawls (128 MiB took curl 7 minutes): curl sends a sixteenth
    // of the file and its time is scaled to the whole at the rate it reached.
    let curl_file = d.join("far-curl.bin");
    let curl_bytes = bytes / 16;
    random_file(&curl_file, curl_bytes);
    let tc_part = curl_put(
        Some(&ns),
        &s3.ca,
        &format!("{}/v1/objects/curl.bin", s3.url()),
        &s3.bearer(),
        &curl_file,
    );
    let tc = tc_part * 16.0;
    let line = 200e6 / 8.0;
    println!("netsim 200 Mbit/s, RTT 50 ms, 1 % loss, {ns_mib} MiB  seconds      MB/s   vs curl");
    row(
        &format!("uplink send ({})", r3.protocol),
        r3.secs,
        bytes,
        tc,
    );
    row(
        &format!("uplink send ({}, 4 conns, BBR asked)", r2.protocol),
        r2.secs,
        bytes,
        tc,
    );
    row(
        "curl --http2 -T (one stream, CUBIC; 1/16)",
        tc_part,
        curl_bytes,
        tc_part,
    );
    let line_secs = bytes as f64 / line;
    println!(
        "share of line rate ({line_secs:.2} s): {} {:.0} %, {} {:.0} %, curl {:.0} %",
        r3.protocol,
        100.0 * line_secs / r3.secs,
        r2.protocol,
        100.0 * line_secs / r2.secs,
        100.0 * line_secs / tc
    );
}
