//! A 100 GB upload resumes. Its state is byte ranges and pages of chunk records, not one
//! list of every chunk, so the restarted daemon's questions stay small however large the
//! file: kill -9 the daemon early in a 100 GB (sparse) upload, and the restarted daemon goes
//! on from what the server holds, re-sending at most what was in flight.

use std::time::Duration;

use uplink_e2e::*;
use uplink_proto::wire;

const GIB: u64 = 1 << 30;

#[test]
fn a_hundred_gb_upload_resumes_after_kill_9_where_it_stopped() {
    let dir = workdir();
    // The disk need not hold 100 GB: the server does not reserve the size up front.
    let server = Server::start_opts(dir.path(), None, &["--no-reserve"]);
    let mut daemon = Daemon::start(dir.path(), &server);
    let file = dir.path().join("scan.bin");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(wire::MAX_FILE_SIZE))
        .expect("sparse 100 GB file");

    let job = enqueue(&daemon.socket, &file);
    let record = wait_acked(&daemon.socket, &job, GIB);
    daemon.proc.kill9();
    let upload_id = record["upload_id"]
        .as_str()
        .expect("a running job names its upload")
        .to_string();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = server_client(&server);
    let before = rt.block_on(api.state(&upload_id)).expect("state");
    assert_eq!(before.size, wire::MAX_FILE_SIZE);
    assert!(before.received_bytes >= GIB, "{before:?}");

    let daemon = Daemon::start(dir.path(), &server);
    let record = wait_acked(&daemon.socket, &job, before.received_bytes + GIB);
    assert_eq!(record["state"], "running", "{record}");
    let resent = record["chunks_resent"].as_u64().unwrap_or(0);
    let resent_bytes = record["bytes_resent"].as_u64().unwrap_or(0);
    let after = rt.block_on(api.state(&upload_id)).expect("state");
    eprintln!(
        "before the kill: {} bytes in {} chunks ({} PUTs); after the restart: {} bytes in {} \
         chunks ({} PUTs), {resent} chunks ({resent_bytes} bytes) re-sent by the daemon",
        before.received_bytes,
        before.chunk_count,
        before.chunk_puts,
        after.received_bytes,
        after.chunk_count,
        after.chunk_puts
    );
    // What was acknowledged stays; nothing from before the kill is sent again but what
    // was in flight (12 streams of at most 32 MiB), and retries of it while the killed
    // run's requests still linger on the server. Counted in bytes: the restarted engine
    // starts with small chunks again, so one lost 32 MiB chunk may go as a dozen. A restart
    // from the beginning would re-send the whole GiB held before the kill.
    assert_eq!(after.ranges.first().map(|r| r[0]), Some(0), "{after:?}");
    assert!(after.received_bytes >= before.received_bytes + GIB);
    assert!(
        resent_bytes <= (10 + 12) * wire::MAX_CHUNK_SIZE,
        "daemon re-sent {resent} chunks, {resent_bytes} bytes"
    );
    assert!(resent_bytes < before.received_bytes);
    // The server's own count, independently of the daemon: PUTs since the restart are the
    // new chunks, the re-sent ones, and up to 12 still arriving as the state was read. A
    // restart from the beginning would add the 70-90 chunks held before the kill.
    let puts = after.chunk_puts - before.chunk_puts;
    let new_chunks = after.chunk_count - before.chunk_count;
    assert!(
        puts <= new_chunks + 10 + 12 + 12,
        "server saw {puts} PUTs for {new_chunks} new chunks after the restart"
    );

    // Cancelling ends it: the job says so and the server forgets the session.
    let out = uplink(&daemon.socket, &["cancel", &job]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = wait_for(Duration::from_secs(30), || {
        rt.block_on(api.state(&upload_id)).err()
    });
    assert!(gone.is_some(), "the server still holds {upload_id}");
}
