//! The engine's adaptive half through netsim (100 Mbit/s, 50 ms RTT) with the real
//! binaries: progress from the first round trips, and a capture's many small files
//! sharing the link instead of going one after another. Behaviour, not speed: the
//! figures live in `bench/src/bin/adaptive.rs`.

use std::time::Duration;

use netsim::{Impair, Sim, SimOpts};
use uplink_e2e::*;

fn link(name: &str) -> Sim {
    let imp = Impair::default()
        .delay(Duration::from_millis(25))
        .rate_bps(100_000_000);
    Sim::up(name, SimOpts::symmetric(imp)).expect("netsim")
}

#[test]
fn a_big_file_shows_progress_from_a_small_first_chunk_while_most_of_it_is_still_to_send() {
    let sim = link("e2e-ack");
    let dir = workdir();
    let server = Server::start_in(dir.path(), &sim);
    let daemon = Daemon::start_in(dir.path(), &server, &sim);
    assert!(uplink(&daemon.socket, &["prewarm"]).status.success());
    let file = dir.path().join("mesh.bin");
    let size = 24u64 << 20;
    random_file(&file, size);
    let out = uplink(
        &daemon.socket,
        &["send", file.to_str().unwrap(), "--wait", "--json"],
    );
    assert!(out.status.success(), "{out:?}");
    let lines = json_lines(&out);
    let progress: Vec<u64> = lines
        .iter()
        .filter(|l| l["event"] == "progress")
        .filter_map(|l| l["detail"]["acked_bytes"].as_u64())
        .collect();
    let record = lines.last().expect("final record");
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["server_sha256"], sha256_file(&file).as_str());
    // The first acknowledgement is one small chunk (it fits a fresh QUIC window), not a
    // dozen chunks finishing together.
    let first = *progress.first().expect("progress events");
    assert!(first <= 128 << 10, "first progress at {first} bytes");
    // And the bar moves all along: many steps, in order.
    assert!(progress.len() >= 8, "{} progress events", progress.len());
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    // Later chunks are bigger than the first (the ramp), within the tier's bounds.
    let largest = record["chunk_size"].as_u64().unwrap_or(0);
    assert!(
        largest > 256 << 10 && largest <= 16 << 20,
        "largest chunk {largest}"
    );
}

#[test]
fn a_captures_small_files_are_sent_side_by_side() {
    let sim = link("e2e-many");
    let dir = workdir();
    let server = Server::start_in(dir.path(), &sim);
    let daemon = Daemon::start_in(dir.path(), &server, &sim);
    let photos: Vec<_> = (0..60)
        .map(|i| dir.path().join(format!("photo-{i:02}.jpg")))
        .collect();
    for p in &photos {
        random_file(p, 256 << 10);
    }
    let mut args = vec!["send".to_string(), "--json".to_string()];
    args.extend(photos.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = uplink(&daemon.socket, &args);
    assert!(out.status.success(), "{out:?}");

    // Requests out at once, sampled while the capture goes up.
    let mut most = 0;
    let done = wait_for(Duration::from_secs(120), || {
        let s = json_lines(&uplink(&daemon.socket, &["status", "--json"]))
            .pop()
            .unwrap_or_default();
        most = most.max(s["chunks_in_flight"].as_u64().unwrap_or(0));
        let running =
            s["jobs_running"].as_u64().unwrap_or(1) + s["jobs_queued"].as_u64().unwrap_or(1);
        (running == 0).then_some(())
    });
    assert!(done.is_some(), "the capture did not finish");
    assert!(
        most >= 4,
        "at most {most} requests at once: the files went one by one"
    );
    let listed = json_lines(&uplink(
        &daemon.socket,
        &["ls", "--json", "--state", "completed"],
    ));
    assert_eq!(listed.len(), photos.len(), "every photo completed");
    for p in &photos {
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(sha256_file(&server.object(name)), sha256_file(p), "{name}");
    }
}
