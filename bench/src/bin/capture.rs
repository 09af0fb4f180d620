//! Upload while capturing, through netsim (500 Mbit/s, 50 ms RTT): a writer produces a
//! capture at RATE MB/s for SECONDS; seconds from the end of the capture to the file
//! verified on the server, side by side in one run:
//! - growing: enqueued `--growing` when the capture starts, `uplink seal` at its end;
//! - after capture: enqueued when the file is finished (what every other tool does).
//!
//!   cargo build --release --workspace && target/release/capture [SECONDS] [RATE_MB]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netsim::{Impair, Sim, SimOpts};
use uplink_bench::send;
use uplink_e2e::{
    Daemon, Server, fill_random, json_lines, random_file, sha256_file, uplink, workdir,
};

/// Appends `secs` × `rate` pseudo-random bytes to `path` at `rate` bytes/s, 1 MiB at a time.
fn write_at_rate(path: &Path, rate: u64, secs: u64) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open capture");
    let total = rate * secs;
    let mut buf = vec![0u8; 1 << 20];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let (start, mut written) = (Instant::now(), 0u64);
    while written < total {
        fill_random(&mut buf, &mut x);
        let n = (total - written).min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).expect("write capture");
        written += n as u64;
        let due = Duration::from_secs_f64(written as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

fn job_id(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{out:?}");
    json_lines(out)[0]["job_id"]
        .as_str()
        .expect("job id")
        .to_string()
}

fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (secs, rate_mb) = (arg(1, 20), arg(2, 30));
    let rate = rate_mb * 1_000_000;
    let link = Impair::default()
        .delay(Duration::from_millis(25))
        .rate_bps(500_000_000);
    let sim = Sim::up("bench-capture", SimOpts::symmetric(link)).expect("netsim");
    let dir = workdir();
    let server = Server::start_in(dir.path(), &sim);
    let daemon = Daemon::start_in(dir.path(), &server, &sim);
    let socket = &daemon.socket;
    assert!(uplink(socket, &["prewarm"]).status.success());

    // Growing: the job exists from the first byte; the seal sends the tail and completes.
    let live: PathBuf = dir.path().join("live.bin");
    std::fs::File::create(&live).expect("create");
    let path = live.to_str().expect("utf-8");
    let job = job_id(&uplink(socket, &["send", path, "--growing", "--json"]));
    write_at_rate(&live, rate, secs);
    let sealed_at = Instant::now();
    let out = uplink(socket, &["seal", &job, "--wait", "--json"]);
    let growing_secs = sealed_at.elapsed().as_secs_f64();
    let record = json_lines(&out).pop().unwrap_or_default();
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["server_sha256"], sha256_file(&live).as_str());

    // After capture: the same bytes, enqueued once finished.
    let done: PathBuf = dir.path().join("done.bin");
    random_file(&done, rate * secs);
    let ended_at = Instant::now();
    let after = send(socket, &done, "done.bin");
    let after_secs = ended_at.elapsed().as_secs_f64();

    let size = record["size"].as_u64().unwrap_or(0);
    println!(
        "capture of {:.0} MB written at {rate_mb} MB/s for {secs} s; netsim 500 Mbit/s, 50 ms RTT; protocol {}",
        size as f64 / 1e6,
        record["protocol"]
    );
    println!("{:<44} {:>10}", "case", "seconds");
    println!(
        "{:<44} {growing_secs:>10.2}",
        "growing: seal -> verified on the server"
    );
    println!(
        "{:<44} {after_secs:>10.2}",
        "after capture: enqueue -> verified"
    );
    println!(
        "{:<44} {:>10.2}",
        "line time of the whole file (size / 500 Mbit/s)",
        size as f64 * 8.0 / 500e6
    );
    println!(
        "growing job: {} chunks, {} re-sent; after-capture job: {} chunks",
        record["chunks_acked"], record["chunks_resent"], after["chunks_acked"]
    );
}
