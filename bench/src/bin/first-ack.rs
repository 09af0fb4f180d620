//! Time from Enqueue to the first chunk's ACK through netsim (25 ms each way, 50 ms RTT):
//! cold, prewarmed, prewarmed with a 0-RTT handshake, and 0-RTT without prewarm.
//! Medians of N runs, in ms and in RTTs.
//!
//!   cargo build --release --workspace && target/release/first-ack [RUNS]

use std::time::Duration;

use netsim::{Impair, Sim, SimOpts};
use uplink_bench::{median, send};
use uplink_e2e::{Daemon, Server, random_file, uplink, wait_for, workdir};

const ONE_WAY: Duration = Duration::from_millis(25);
const RTT_MS: f64 = 50.0;

fn ttfa(record: &serde_json::Value) -> f64 {
    record["time_to_first_ack_ms"].as_f64().unwrap_or(f64::NAN)
}

fn wait_cold(socket: &std::path::Path) {
    let cold = wait_for(Duration::from_secs(15), || {
        let out = uplink(socket, &["status", "--json"]);
        let s = uplink_e2e::json_lines(&out).pop()?;
        (s["endpoints"][0]["warm"] == false).then_some(())
    });
    assert!(
        cold.is_some(),
        "connections did not close after the keep-warm window"
    );
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let sim = Sim::up(
        "bench-ttfa",
        SimOpts::symmetric(Impair::default().delay(ONE_WAY)),
    )
    .expect("netsim");
    let dir = workdir();
    let server = Server::start_in(dir.path(), &sim);
    let ns = sim.client_ns();
    let file = dir.path().join("first.bin");
    // One chunk, small, so the figure is about connection setup, not slow start.
    random_file(&file, 256 * 1024);

    let fresh_daemon = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        Daemon::start_cmd(&d, Daemon::command_in(&d, &server, Some(&ns)))
    };
    let (mut cold, mut warm, mut warm0, mut zero) = (vec![], vec![], vec![], vec![]);
    for r in 0..runs {
        // Cold: a daemon with empty state (no Alt-Svc cache, no TLS ticket), no prewarm.
        let daemon = fresh_daemon(&format!("cold-{r}"));
        cold.push(ttfa(&send(&daemon.socket, &file, &format!("cold-{r}"))));
        drop(daemon);

        // Prewarmed: a new daemon, Prewarm (full handshakes), then the job.
        let daemon = fresh_daemon(&format!("warm-{r}"));
        assert!(
            uplink(&daemon.socket, &["prewarm", "--keep-warm", "1"])
                .status
                .success()
        );
        warm.push(ttfa(&send(&daemon.socket, &file, &format!("warm-{r}"))));
        drop(daemon);

        // Prewarmed + 0-RTT: a ticket from an earlier connection whose keep-warm window
        // closed; Prewarm makes a 0-RTT connection; then the job.
        let daemon = fresh_daemon(&format!("warm0-{r}"));
        assert!(
            uplink(&daemon.socket, &["prewarm", "--keep-warm", "1"])
                .status
                .success()
        );
        wait_cold(&daemon.socket);
        assert!(
            uplink(&daemon.socket, &["prewarm", "--keep-warm", "1"])
                .status
                .success()
        );
        warm0.push(ttfa(&send(&daemon.socket, &file, &format!("warm0-{r}"))));
        drop(daemon);

        // 0-RTT, no prewarm: same history, but the job's own connection is the 0-RTT one.
        let daemon = fresh_daemon(&format!("zero-{r}"));
        assert!(
            uplink(&daemon.socket, &["prewarm", "--keep-warm", "1"])
                .status
                .success()
        );
        wait_cold(&daemon.socket);
        let rec = send(&daemon.socket, &file, &format!("zero-{r}"));
        assert_eq!(rec["used_0rtt"], true, "{rec}");
        zero.push(ttfa(&rec));
    }
    println!(
        "Enqueue -> first chunk ACK through netsim, RTT 50 ms, 256 KiB chunk, median of {runs}"
    );
    println!(
        "{:<36} {:>9} {:>8} {:>14}",
        "case", "ms", "RTTs", "vs cold (RTTs)"
    );
    let c = median(cold.clone());
    for (name, v) in [
        ("cold (no prewarm, no ticket)", cold),
        ("0-RTT reconnect, no prewarm", zero),
        ("prewarmed (full handshake)", warm),
        ("prewarmed with a 0-RTT handshake", warm0),
    ] {
        let m = median(v);
        println!(
            "{name:<36} {m:>9.1} {:>8.2} {:>14.2}",
            m / RTT_MS,
            (c - m) / RTT_MS
        );
    }
}
