//! "Wi-Fi lost, cellular takes over" in the middle of an upload, through netsim's two
//! paths (each 100 Mbit/s, 50 ms RTT): path 1's link goes down once 16 MiB are
//! acknowledged, and the host's routes move to path 2. Over HTTP/3 the QUIC connection
//! migrates; over HTTP/2 the daemon notices the route change, drops the connections left
//! on the dead path and sends their chunks again at once on new ones. Either way the file
//! arrives intact, no request is counted as failed (every retry is a move), and the time
//! lost against the same upload without a handoff, in the same run, is printed.

use std::time::{Duration, Instant};

use netsim::{Impair, PathSel, Sim, SimOpts};
use uplink_e2e::*;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 128 * MIB;

/// Uploads `file` (running `during` once 16 MiB are acknowledged): its events and final
/// record, and seconds from enqueue to completed.
fn upload(
    daemon: &Daemon,
    file: &std::path::Path,
    during: impl FnOnce(),
) -> (Vec<serde_json::Value>, f64) {
    let lines = upload_through(daemon, file, 16 * MIB, during);
    let secs = lines
        .last()
        .and_then(|r| r["total_seconds"].as_f64())
        .unwrap_or(0.0);
    (lines, secs)
}

fn handoff(name: &str, server_args: &[&str], protocol: &str) {
    let imp = Impair::default()
        .delay(Duration::from_millis(25))
        .rate_bps(100_000_000);
    let sim = Sim::up(name, SimOpts::symmetric(imp).path2(imp)).expect("netsim");
    let dir = workdir();
    let server = Server::start_opts(dir.path(), Some(&sim), server_args);
    let daemon = Daemon::start_in(dir.path(), &server, &sim);
    assert!(uplink(&daemon.socket, &["prewarm"]).status.success());
    let (steady_file, moving_file) = (dir.path().join("steady.bin"), dir.path().join("moving.bin"));
    random_file(&steady_file, SIZE);
    random_file(&moving_file, SIZE);

    let (_, steady) = upload(&daemon, &steady_file, || {});
    let mut cut_at = None;
    let (events, moving) = upload(&daemon, &moving_file, || {
        cut_at = Some(Instant::now());
        sim.set_link(PathSel::P1, false).expect("path 1 down");
    });
    assert!(cut_at.is_some());
    let record = events.last().cloned().unwrap_or_default();
    let retries: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "retrying")
        .map(|e| e["detail"]["why"].as_str().unwrap_or("").to_string())
        .collect();
    eprintln!(
        "{protocol}: {steady:.2} s without a handoff, {moving:.2} s with one: {:.2} s lost; \
         {} chunks re-sent ({} bytes went again); ended on {}; retries: {retries:?}",
        moving - steady,
        record["chunks_resent"],
        record["bytes_resent"],
        record["protocol"]
    );
    // HTTP/2: every retry is a move. HTTP/3 migrates and needs none. Nothing may fail
    // (while QUIC's congestion window restarts on the new path, a stream queued behind its
    // siblings in quinn's shared send buffer is waiting, not stalled).
    let failures: Vec<&String> = retries
        .iter()
        .filter(|w| !w.contains("path is gone"))
        .collect();
    assert!(
        failures.is_empty(),
        "requests counted as failed: {failures:?}"
    );
    // A chunk cut off on the dead path resumes from what the server received of it: what
    // went again is less than the chunks it belongs to.
    let resent = record["chunks_resent"].as_u64().unwrap_or(0);
    if protocol == "h2" && resent > 0 {
        let whole = resent * record["chunk_size"].as_u64().unwrap_or(0);
        let again = record["bytes_resent"].as_u64().unwrap_or(u64::MAX);
        assert!(
            again < whole,
            "{again} bytes re-sent for {resent} chunks: none resumed"
        );
    }
    // Bounded, not a speed assertion: a handoff that waited for TCP to give up on the dead
    // path (the 27 s) or for stall detection would show here.
    assert!(
        moving - steady < 5.0,
        "{:.2} s lost to the handoff",
        moving - steady
    );
}

#[test]
fn http3_moves_to_path_2_when_path_1_goes_down_and_loses_nothing() {
    handoff("e2e-ho3", &[], "h3");
}

#[test]
fn http2_moves_to_path_2_when_path_1_goes_down_and_loses_nothing() {
    handoff("e2e-ho2", &["--no-h3"], "h2");
}
