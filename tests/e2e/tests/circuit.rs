//! The endpoint's circuit breaker with the real binaries: the server dies mid-upload and
//! its host refuses every connection; after five such failures the circuit opens (Status
//! says so, with when it probes again), nothing is sent for 30 s, then one request probes;
//! once the server is back two successes close it, and the upload completes intact.
//! Every change shows as an `incident` event on the job.

use std::time::Duration;

use uplink_e2e::*;

#[test]
fn a_dead_server_opens_the_circuit_and_a_returning_one_closes_it_and_the_upload_completes_intact() {
    let dir = workdir();
    let mut server = Server::start(dir.path());
    let daemon = Daemon::start(dir.path(), &server);
    let file = dir.path().join("capture.bin");
    let size = 256 << 20;
    random_file(&file, size);
    let local_sha = sha256_file(&file);
    let mut acked_when_open = 0;
    let events = upload_through(&daemon, &file, size / 8, || {
        server.proc.kill9();
        let status = wait_for(Duration::from_secs(90), || {
            let s = daemon_status(&daemon.socket);
            (s["endpoints"][0]["circuit"] == "open").then_some(s)
        })
        .expect("the circuit opens while the server refuses connections");
        let endpoint = &status["endpoints"][0];
        let retry_ms = endpoint["circuit_retry_ms"].as_u64().unwrap_or(0);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        assert!(
            retry_ms > now_ms && retry_ms <= now_ms + 30_500,
            "open: probes again in {} ms",
            retry_ms as i64 - now_ms as i64
        );
        let health = endpoint["health"].as_f64().unwrap_or(100.0);
        assert!(health < 100.0, "health falls with the failures: {health}");
        // The only job: what it had acknowledged when the circuit opened.
        acked_when_open = json_lines(&uplink(&daemon.socket, &["ls", "--json"]))
            .first()
            .and_then(|j| j["bytes_acked"].as_u64())
            .unwrap_or(0);
        server.start_again();
    });
    assert_eq!(sha256_file(&server.object("capture.bin")), local_sha);

    let incidents: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "incident")
        .map(|e| e["detail"]["kind"].as_str().unwrap_or("").to_string())
        .collect();
    eprintln!("incidents: {incidents:?}; {acked_when_open} bytes acknowledged when it opened");
    let at = |k: &str| incidents.iter().position(|i| i == k);
    let (open, half, closed) = (
        at("circuit_open").expect("circuit_open event"),
        at("circuit_half_open").expect("circuit_half_open event"),
        incidents
            .iter()
            .rposition(|i| i == "circuit_closed")
            .expect("circuit_closed event"),
    );
    assert!(open < half && half < closed, "{incidents:?}");
    assert_eq!(
        daemon_status(&daemon.socket)["endpoints"][0]["circuit"],
        "closed"
    );
}
