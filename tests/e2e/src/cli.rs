//! Driving the daemon as a user does, through the `uplink` CLI (and the wire client for
//! poking the server directly), and waiting on what it reports.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::*;

/// Runs the `uplink` CLI against `socket`.
pub fn uplink(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("uplink"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run uplink")
}

/// Runs the `uplink` CLI as another uid.
pub fn uplink_as(uid: u32, socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("uplink"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .uid(uid)
        .gid(uid)
        .env("HOME", "/")
        .output()
        .expect("run uplink")
}

/// `uplink send FILE --wait --json`: the job's final record (the CLI must succeed).
pub fn send_wait(socket: &Path, file: &Path) -> serde_json::Value {
    let out = uplink(
        socket,
        &[
            "send",
            file.to_str().expect("utf-8 path"),
            "--wait",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "send --wait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out).pop().expect("final record")
}

/// `uplink status --json`.
pub fn daemon_status(socket: &Path) -> serde_json::Value {
    let out = uplink(socket, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    json_lines(&out).pop().expect("status")
}

/// A wire call the server refused with `status` and the stable `code`.
pub fn refused_with(
    r: Result<impl std::fmt::Debug, uplinkd::server_api::CallError>,
    status: u16,
    code: &str,
) {
    match r {
        Err(uplinkd::server_api::CallError::Server {
            status: s, code: c, ..
        }) => assert_eq!((s, c.as_str()), (status, code)),
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}

/// Parses the JSON lines a `--json` command printed.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Polls `f` every 20 ms until it returns Some, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A wire-protocol client for `server` (the daemon's own, used here to poke the server
/// directly: bad chunks, replays, state).
pub fn server_client(server: &Server) -> uplinkd::server_api::ServerClient {
    server_client_as(server, credentials())
}

/// [`server_client`] holding another client's credentials (a tenant's).
pub fn server_client_as(
    server: &Server,
    credentials: uplink_proto::integrity::Credentials,
) -> uplinkd::server_api::ServerClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls =
        uplinkd::transport::tls::client_config(Some(&server.ca), &[uplink_proto::wire::ALPN_H2])
            .expect("tls");
    let ep = uplinkd::transport::Endpoint::parse(&server.url()).expect("endpoint");
    let alt = uplinkd::transport::alt_svc::AltSvcCache::load(None, &ep.authority);
    let pool = uplinkd::transport::h2::H2Pool::new(ep, tls, 1);
    let transport = uplinkd::transport::Transport::new(pool, None, alt);
    uplinkd::server_api::ServerClient::new(transport, credentials)
}

/// A chunk of `data` at `offset`, its digests computed: what the daemon's client sends.
pub fn chunk_payload(
    offset: u64,
    data: impl Into<bytes::Bytes>,
) -> uplinkd::server_api::ChunkPayload {
    let data = data.into();
    let d = uplink_proto::integrity::digest(&data);
    uplinkd::server_api::ChunkPayload {
        replace: false,
        offset,
        sha256: d.sha256,
        crc32c: d.crc32c,
        data,
        from: None,
    }
}

/// `uplink send FILE --json` (no waiting): the new job's id.
pub fn enqueue(socket: &Path, file: &Path) -> String {
    let out = uplink(socket, &["send", &file.to_string_lossy(), "--json"]);
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out)[0]["job_id"]
        .as_str()
        .expect("job id")
        .to_string()
}

/// Waits (up to 2 minutes) until the daemon has checkpointed at least `bytes` of the job;
/// returns its record then.
pub fn wait_acked(socket: &Path, job: &str, bytes: u64) -> serde_json::Value {
    wait_for(Duration::from_secs(120), || {
        job_record(socket, job).filter(|j| j["bytes_acked"].as_u64().unwrap_or(0) >= bytes)
    })
    .unwrap_or_else(|| panic!("job {job} never reached {bytes} acknowledged bytes"))
}

/// How long after now the job's acknowledged bytes next grow (up to 2 minutes): the time
/// an upload loses once a fault is over, for the log. `None` if it finished meanwhile.
pub fn next_ack_after(socket: &Path, job: &str) -> Option<Duration> {
    let start = Instant::now();
    let acked = |j: &serde_json::Value| j["bytes_acked"].as_u64().unwrap_or(0);
    let before = job_record(socket, job).map(|j| acked(&j)).unwrap_or(0);
    wait_for(Duration::from_secs(120), || {
        job_record(socket, job).filter(|j| acked(j) > before || j["state"] == "completed")
    })
    .filter(|j| acked(j) > before)
    .map(|_| start.elapsed())
}

/// `uplink watch JOB --json` until the job ends: its final record.
pub fn wait_done(socket: &Path, job: &str) -> serde_json::Value {
    let out = uplink(socket, &["watch", job, "--json"]);
    let last = json_lines(&out).pop().expect("watch printed nothing");
    assert_eq!(last["job_id"], job);
    last
}

/// The job record of `job_id` as `uplink ls --json` reports it.
pub fn job_record(socket: &Path, job_id: &str) -> Option<serde_json::Value> {
    let out = uplink(socket, &["ls", "--json"]);
    json_lines(&out).into_iter().find(|j| j["job_id"] == job_id)
}

/// Enqueues `file`, follows it with `uplink watch JOB --json`, runs `during` once `acked`
/// bytes are acknowledged, and returns every line watch printed: the job's events, then
/// its final record (last). Asserts that the job completed and the server holds the
/// file's exact bytes.
pub fn upload_through(
    daemon: &Daemon,
    file: &Path,
    acked: u64,
    during: impl FnOnce(),
) -> Vec<serde_json::Value> {
    let job = enqueue(&daemon.socket, file);
    let watcher = {
        let (socket, job) = (daemon.socket.clone(), job.clone());
        std::thread::spawn(move || uplink(&socket, &["watch", &job, "--json"]))
    };
    wait_acked(&daemon.socket, &job, acked);
    during();
    let out = watcher.join().expect("watch thread");
    let lines = json_lines(&out);
    let record = lines.last().cloned().unwrap_or_default();
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["server_sha256"], sha256_file(file).as_str());
    lines
}

/// `uplink prewarm`'s combined output and whether it succeeded (a TLS refusal says why).
pub fn prewarm_output(daemon: &Daemon) -> (bool, String) {
    let out = uplink(&daemon.socket, &["prewarm"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
