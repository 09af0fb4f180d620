//! The vertical slice, end to end: real server, real daemon, real CLI, on loopback.

use std::time::Duration;

use uplink_e2e::*;

const GIB: u64 = 1 << 30;
const CHUNK: u64 = 4 << 20;
const STREAMS: u64 = 12;

#[test]
fn a_1_gib_file_arrives_intact_with_send_wait() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let daemon = Daemon::start(dir.path(), &server);
    let file = dir.path().join("capture.bin");
    random_file(&file, GIB);
    let local_sha = sha256_file(&file);

    let out = uplink(
        &daemon.socket,
        &["send", file.to_str().unwrap(), "--wait", "--json"],
    );
    assert!(
        out.status.success(),
        "send --wait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let job_id = lines[0]["job_id"]
        .as_str()
        .expect("first line names the job")
        .to_string();
    assert!(
        lines.iter().any(|l| l["event"] == "progress"),
        "no progress events"
    );
    let record = lines.last().expect("final record");
    assert_eq!(record["job_id"], job_id.as_str());
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["size"], GIB);
    assert_eq!(record["bytes_acked"], GIB);
    assert_eq!(record["server_sha256"], local_sha.as_str());
    // The server offers HTTP/3 (Alt-Svc on the first answers); the daemon moves to it.
    assert_eq!(record["protocol"], "h3");
    // Streams and chunk sizes follow the link (speed tiers): within the seed's bounds.
    let streams = record["streams"].as_u64().unwrap();
    assert!((1..=STREAMS).contains(&streams), "{streams} streams");
    let largest = record["chunk_size"].as_u64().unwrap();
    assert!(largest <= 32 << 20, "largest chunk {largest}");
    assert_eq!(record["chunks_total"], record["chunks_acked"]);
    assert!(record["chunks_acked"].as_u64().unwrap() >= GIB / (32 << 20));
    assert_eq!(record["merkle_root"].as_str().map(str::len), Some(64));
    assert!(record["time_to_first_ack_ms"].as_u64().unwrap() > 0);
    assert_eq!(sha256_file(&server.object("capture.bin")), local_sha);
    // Every chunk came as a link of the file's hash: the server hashed each byte once.
    assert_eq!(server.file_hash_tally(), Some((GIB, 0)));
}

#[test]
fn kill_9_of_the_daemon_mid_upload_resends_at_most_the_chunks_in_flight() {
    let dir = workdir();
    let server = Server::start(dir.path());
    // Fixed chunks and streams, so the bound can be stated in chunks: what was in flight
    // plus what was acked after the last checkpoint (and only re-hashed, not re-sent).
    let fixed = |d: &std::path::Path| {
        let mut cmd = Daemon::command(d, &server);
        cmd.args([
            "--chunk-size",
            &CHUNK.to_string(),
            "--streams",
            &STREAMS.to_string(),
        ]);
        Daemon::start_cmd(d, cmd)
    };
    let mut daemon = fixed(dir.path());
    let file = dir.path().join("capture.bin");
    random_file(&file, GIB);
    let local_sha = sha256_file(&file);

    let job = enqueue(&daemon.socket, &file);
    wait_acked(&daemon.socket, &job, GIB / 3);
    daemon.proc.kill9();
    let before = std::fs::read_dir(server.data_dir.join("objects"))
        .unwrap()
        .count();
    assert_eq!(
        before, 0,
        "the upload must not have finished before the kill"
    );

    let daemon = fixed(dir.path());
    let record = wait_done(&daemon.socket, &job);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["server_sha256"], local_sha.as_str());
    assert_eq!(sha256_file(&server.object("capture.bin")), local_sha);
    let resent = record["chunks_resent"].as_u64().unwrap();
    assert!(resent <= 10 + STREAMS, "daemon re-sent {resent} chunks");

    // The server's own count of chunk PUTs bounds the re-sends independently of the daemon.
    let upload_id = record["upload_id"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = rt
        .block_on(async { server_client(&server).state(&upload_id).await })
        .expect("state");
    let chunks = GIB / CHUNK;
    eprintln!(
        "daemon re-sent {resent} chunks; server saw {} PUTs for {chunks} chunks",
        state.chunk_puts
    );
    assert!(
        state.chunk_puts <= chunks + 10 + STREAMS,
        "server saw {} chunk PUTs for {chunks} chunks",
        state.chunk_puts
    );
    // The restarted daemon went on with the chain where the server's records end.
    let tally = server.file_hash_tally();
    eprintln!("file hash (linked, hashed again): {tally:?}");
    assert_eq!(tally, Some((GIB, 0)));
}

#[test]
fn a_server_restart_mid_upload_still_completes_intact() {
    let dir = workdir();
    let mut server = Server::start(dir.path());
    let daemon = Daemon::start(dir.path(), &server);
    let file = dir.path().join("capture.bin");
    let size = GIB / 2;
    random_file(&file, size);
    let local_sha = sha256_file(&file);

    let job = enqueue(&daemon.socket, &file);
    wait_acked(&daemon.socket, &job, size / 4);
    server.restart_after(Duration::from_millis(1500));
    // What the restart cost beyond its 1.5 s: the wait for the next acknowledgement.
    let resumed = next_ack_after(&daemon.socket, &job);
    eprintln!("server back; next acknowledgement after {resumed:?}");
    let record = wait_done(&daemon.socket, &job);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["server_sha256"], local_sha.as_str());
    assert_eq!(sha256_file(&server.object("capture.bin")), local_sha);
    // The links outlived the restart in the chunk log.
    let tally = server.file_hash_tally();
    eprintln!("file hash (linked, hashed again): {tally:?}");
    assert_eq!(tally, Some((size, 0)));
}

/// With adaptive chunk sizes, the restarted daemon cuts the unsent bytes differently
/// than the run before: a request of the old run that lands after the new run fetched the
/// server's state conflicts with a new chunk (409). The engine fetches the state again
/// and goes on; the job must complete, not fail.
#[test]
fn sigterm_pauses_the_job_and_a_restart_finishes_it() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let mut daemon = Daemon::start(dir.path(), &server);
    let file = dir.path().join("capture.bin");
    let size = GIB / 4;
    random_file(&file, size);
    let job = enqueue(&daemon.socket, &file);
    wait_acked(&daemon.socket, &job, size / 4);
    daemon.proc.term();
    assert!(
        daemon
            .proc
            .child
            .try_wait()
            .unwrap()
            .is_some_and(|s| s.success()),
        "clean exit on SIGTERM"
    );
    assert!(!daemon.socket.exists(), "the socket is removed on shutdown");
    let daemon = Daemon::start(dir.path(), &server);
    let record = wait_done(&daemon.socket, &job);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(
        sha256_file(&server.object("capture.bin")),
        sha256_file(&file)
    );
}

/// The server forgets the session mid-upload (here: deleted by its id, as an operator's
/// cleanup or an expiry would): the daemon's next request meets `404 unknown_upload`, the
/// job starts a new session and goes on from the server's truth — nothing — and the file
/// arrives intact under a new upload id.
#[test]
fn a_session_the_server_forgot_is_created_again_and_the_upload_completes_intact() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let daemon = Daemon::start(dir.path(), &server);
    let file = dir.path().join("capture.bin");
    let size = GIB / 4;
    random_file(&file, size);
    let local_sha = sha256_file(&file);
    let job = enqueue(&daemon.socket, &file);
    let record = wait_acked(&daemon.socket, &job, size / 8);
    let first = record["upload_id"].as_str().unwrap_or("").to_string();
    assert!(!first.is_empty(), "{record}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { server_client(&server).delete(&first).await })
        .expect("the server forgets the session");
    let record = wait_done(&daemon.socket, &job);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["server_sha256"], local_sha.as_str());
    assert_ne!(record["upload_id"], first.as_str(), "a new session");
    assert_eq!(sha256_file(&server.object("capture.bin")), local_sha);
}
