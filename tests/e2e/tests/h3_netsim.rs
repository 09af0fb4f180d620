//! HTTP/3 and its fallback, through netsim: 25 ms each way (50 ms RTT), real binaries in
//! the emulator's namespaces, the CLI talking to the daemon's socket from outside.

use std::time::Duration;

use netsim::{Impair, Sim, SimOpts};
use uplink_e2e::*;

const ONE_WAY: Duration = Duration::from_millis(25);

#[test]
fn a_prewarmed_job_uses_h3_and_reconnects_with_0rtt_after_the_keep_warm_window() {
    let sim = Sim::up(
        "e2e-h3",
        SimOpts::symmetric(Impair::default().delay(ONE_WAY)),
    )
    .expect("netsim");
    let dir = workdir();
    let server = Server::start_in(dir.path(), &sim);
    let daemon = Daemon::start_in(dir.path(), &server, &sim);
    let file = dir.path().join("scan.bin");
    random_file(&file, 8 << 20);

    let warm = uplink(&daemon.socket, &["prewarm", "--keep-warm", "1"]);
    assert!(warm.status.success(), "{warm:?}");
    let ep = daemon_status(&daemon.socket)["endpoints"][0].clone();
    assert_eq!(ep["protocol"], "h3", "{ep}");
    assert_eq!(ep["handshake"], "full", "{ep}");
    assert_eq!(ep["warm"], true);
    let rtt = ep["rtt_ms"].as_f64().unwrap();
    assert!(
        rtt >= 45.0,
        "QUIC's RTT estimate {rtt} ms is below the emulated 50 ms"
    );

    // No job within the keep-warm window: the connections close...
    let cold = wait_for(Duration::from_secs(10), || {
        let ep = daemon_status(&daemon.socket)["endpoints"][0].clone();
        (ep["warm"] == false).then_some(ep)
    });
    assert!(
        cold.is_some(),
        "connections still open after the keep-warm window"
    );
    // ...and the next job's connection resumes with 0-RTT.
    let record = send_wait(&daemon.socket, &file);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["protocol"], "h3", "{record}");
    assert_eq!(record["used_0rtt"], true, "{record}");
    assert_eq!(record["server_sha256"], sha256_file(&file).as_str());
}

#[test]
fn with_udp_blocked_the_job_completes_over_h2_without_waiting_for_quic() {
    let sim = Sim::up(
        "e2e-h3-block",
        SimOpts::symmetric(Impair::default().delay(ONE_WAY)),
    )
    .expect("netsim");
    let dir = workdir();
    let server = Server::start_in(dir.path(), &sim);
    let ns = sim.client_ns();
    // First life: the daemon learns (and caches) that the server offers HTTP/3.
    let mut daemon = Daemon::start_cmd(
        dir.path(),
        Daemon::command_in(dir.path(), &server, Some(&ns)),
    );
    assert!(uplink(&daemon.socket, &["prewarm"]).status.success());
    assert_eq!(
        daemon_status(&daemon.socket)["endpoints"][0]["protocol"],
        "h3"
    );
    daemon.proc.term();

    // Now UDP is dropped (a network that blocks QUIC), and the daemon starts again,
    // expecting HTTP/3 from its cache.
    sim.apply("drop-udp=on").expect("drop udp");
    let daemon = Daemon::start_cmd(
        dir.path(),
        Daemon::command_in(dir.path(), &server, Some(&ns)),
    );
    let file = dir.path().join("scan.bin");
    random_file(&file, 8 << 20);
    let record = send_wait(&daemon.socket, &file);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["protocol"], "h2", "{record}");
    assert_eq!(record["server_sha256"], sha256_file(&file).as_str());
    // The first chunk went over HTTP/2 at once; it did not wait out the QUIC attempt
    // (which gives up after 3 s).
    let first_ack = record["time_to_first_ack_ms"].as_u64().unwrap();
    assert!(
        first_ack < 3000,
        "first ack after {first_ack} ms: the job waited for QUIC"
    );
}
