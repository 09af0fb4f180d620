//! Upload while capturing: a file enqueued `--growing` is uploaded while a writer appends
//! to it, completes only after `uplink seal`, and arrives byte for byte — also across
//! kill -9 of the daemon. A header patched behind the upload that the seal did not name
//! fails the job (`file_rewritten`) instead of completing a file that never existed; a
//! truncated file fails as `file_truncated`.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use uplink_e2e::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The daemon with 1 MiB chunks, so chunks complete behind a slow writer.
fn daemon(dir: &Path, server: &Server) -> Daemon {
    let mut cmd = Daemon::command(dir, server);
    cmd.arg("--chunk-size").arg(MIB.to_string());
    Daemon::start_cmd(dir, cmd)
}

/// `uplink send FILE --growing --json`: the job's id.
fn enqueue_growing(socket: &Path, file: &Path) -> String {
    let path = file.to_str().expect("utf-8 path");
    let out = uplink(socket, &["send", path, "--growing", "--json"]);
    assert!(out.status.success(), "send --growing failed: {out:?}");
    json_lines(&out)[0]["job_id"]
        .as_str()
        .expect("job id")
        .to_string()
}

/// A capture app writing: `blocks` blocks of `block` pseudo-random bytes, `pause` apart.
fn writer(file: PathBuf, blocks: u64, block: u64, pause: Duration) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .expect("open for append");
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ blocks;
        let mut buf = vec![0u8; block as usize];
        for _ in 0..blocks {
            fill_random(&mut buf, &mut x);
            f.write_all(&buf).expect("append");
            std::thread::sleep(pause);
        }
    })
}

fn acked(j: &serde_json::Value) -> u64 {
    j["bytes_acked"].as_u64().unwrap_or(0)
}

/// Waits until `bytes` of the job are acknowledged; its record then.
fn wait_acked_at_least(socket: &Path, job: &str, bytes: u64) -> serde_json::Value {
    wait_for(Duration::from_secs(60), || {
        job_record(socket, job).filter(|j| acked(j) >= bytes)
    })
    .unwrap_or_else(|| panic!("job {job} never reached {bytes} acknowledged bytes"))
}

/// `uplink seal JOB [--size N] --wait --json`: the job's final record.
fn seal_wait(socket: &Path, job: &str) -> serde_json::Value {
    let out = uplink(socket, &["seal", job, "--wait", "--json"]);
    json_lines(&out).pop().expect("seal --wait printed nothing")
}

#[test]
fn a_file_written_during_its_upload_arrives_whole_once_sealed() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let daemon = daemon(dir.path(), &server);
    let file = dir.path().join("capture.ply");
    std::fs::File::create(&file).expect("create");
    // A capture starts empty: the job is accepted all the same.
    let job = enqueue_growing(&daemon.socket, &file);

    // 24 MiB over about 2.4 s.
    let writing = writer(file.clone(), 48, 512 * KIB, Duration::from_millis(50));
    let during = wait_acked_at_least(&daemon.socket, &job, 4 * MIB);
    assert!(
        !writing.is_finished(),
        "the upload must run while the file grows"
    );
    assert_eq!(during["growing"], true, "{during}");
    assert_eq!(during["state"], "running", "{during}");
    let status = daemon_status(&daemon.socket);
    assert_eq!(
        status["jobs_growing"], 1,
        "Status shows the job waiting on the writer"
    );
    writing.join().expect("writer");

    // Everything written may be on the server now; without a seal nothing completes.
    std::thread::sleep(Duration::from_secs(1));
    let waiting = job_record(&daemon.socket, &job).expect("job");
    assert_eq!(waiting["state"], "running", "{waiting}");
    assert_eq!(
        waiting["size"],
        24 * MIB,
        "size is the bytes written so far"
    );
    assert!(!server.object("capture.ply").exists());

    // A seal that disagrees with the file is refused with its code; the job goes on.
    let wrong = uplink(&daemon.socket, &["seal", &job, "--size", "1000"]);
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("size_mismatch"), "{stderr}");

    // The capture ends with a tail shorter than a chunk.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(&[7u8; 100_000]))
        .expect("append the tail");
    let done = seal_wait(&daemon.socket, &job);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["growing"], false, "{done}");
    assert_eq!(done["size"], 24 * MIB + 100_000, "{done}");
    assert_eq!(done["server_sha256"], sha256_file(&file).as_str());
    assert_eq!(
        sha256_file(&server.object("capture.ply")),
        sha256_file(&file)
    );
    // Sealing a job that was never growing is refused.
    let plain = dir.path().join("plain.bin");
    random_file(&plain, 1000);
    let plain_job = enqueue(&daemon.socket, &plain);
    let out = uplink(&daemon.socket, &["seal", &plain_job, "--size", "1000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not_growing") || stderr.contains("job_ended"),
        "{stderr}"
    );
}

/// A PLY capture whose header went to the server before the writer, at the end, fills in
/// the vertex count (bytes 19..26), as PLY writers do. Returns the job, once sealed with
/// `seal_args` (after the job id), and its final record.
fn capture_with_patched_header(
    dir: &Path,
    server: &Server,
    seal_args: &[&str],
) -> (PathBuf, serde_json::Value) {
    let daemon = daemon(dir, server);
    let file = dir.join("scan.ply");
    std::fs::write(&file, b"ply\nelement vertex 0000000\nend_header\n").expect("create");
    let job = enqueue_growing(&daemon.socket, &file);
    let writing = writer(file.clone(), 24, 512 * KIB, Duration::from_millis(20));
    // Chunks are read in offset order: with 2 MiB acknowledged, the header went before.
    wait_acked_at_least(&daemon.socket, &job, 2 * MIB);
    writing.join().expect("writer");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open");
    f.seek(SeekFrom::Start(19)).expect("seek");
    f.write_all(b"1234567").expect("patch");
    drop(f);
    let mut args = vec!["seal", job.as_str()];
    args.extend_from_slice(seal_args);
    args.extend_from_slice(&["--wait", "--json"]);
    let out = uplink(&daemon.socket, &args);
    let done = json_lines(&out).pop().expect("seal --wait printed nothing");
    (file, done)
}

#[test]
fn a_header_patched_at_the_end_and_named_at_the_seal_is_sent_again_and_completes() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let (file, done) = capture_with_patched_header(dir.path(), &server, &["--rewritten", "19+7"]);
    assert_eq!(done["state"], "completed", "{done}");
    assert!(done["chunks_resent"].as_u64().unwrap_or(0) >= 1, "{done}");
    assert_eq!(done["server_sha256"], sha256_file(&file).as_str());
    let stored = std::fs::read(server.object("scan.ply")).expect("object");
    assert!(stored.starts_with(b"ply\nelement vertex 1234567\n"));
    assert_eq!(sha256_file(&server.object("scan.ply")), sha256_file(&file));
}

#[test]
fn a_header_patched_behind_the_upload_and_not_named_is_never_completed() {
    let dir = workdir();
    let server = Server::start(dir.path());
    // The seal names a range in another chunk: the change at 19..26 is not covered.
    let (_, done) = capture_with_patched_header(dir.path(), &server, &["--rewritten", "5000000+4"]);
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["error_code"], "file_rewritten", "{done}");
    assert!(
        !server.object("scan.ply").exists(),
        "no mixed file on the server"
    );
}

#[test]
fn a_growing_file_that_is_truncated_fails_clearly() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let daemon = daemon(dir.path(), &server);
    let file = dir.path().join("capture.bin");
    std::fs::File::create(&file).expect("create");
    let job = enqueue_growing(&daemon.socket, &file);
    writer(file.clone(), 16, 512 * KIB, Duration::from_millis(10))
        .join()
        .expect("writer");
    wait_acked_at_least(&daemon.socket, &job, 4 * MIB);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(MIB))
        .expect("truncate");
    let done = wait_done(&daemon.socket, &job);
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["error_code"], "file_truncated", "{done}");
    assert!(!server.object("capture.bin").exists());
}

#[test]
fn kill_9_while_the_file_grows_and_again_after_the_seal_loses_nothing() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let mut d = daemon(dir.path(), &server);
    let file = dir.path().join("capture.bin");
    std::fs::File::create(&file).expect("create");
    let job = enqueue_growing(&d.socket, &file);
    let writing = writer(file.clone(), 48, 512 * KIB, Duration::from_millis(50));
    wait_acked_at_least(&d.socket, &job, 3 * MIB);

    // The daemon dies mid-capture; the writer goes on; the new daemon follows the file.
    d.proc.kill9();
    std::thread::sleep(Duration::from_millis(300));
    d = daemon(dir.path(), &server);
    let before = job_record(&d.socket, &job).map_or(0, |j| acked(&j));
    let resumed = wait_acked_at_least(&d.socket, &job, before + 4 * MIB);
    assert_eq!(resumed["growing"], true, "{resumed}");
    writing.join().expect("writer");

    // A last burst, sealed at once, and the daemon dies again while the tail goes.
    writer(file.clone(), 8, 2 * MIB, Duration::ZERO)
        .join()
        .expect("writer");
    let size = std::fs::metadata(&file).expect("stat").len().to_string();
    let sealed = uplink(&d.socket, &["seal", &job, "--size", &size]);
    assert!(sealed.status.success(), "{sealed:?}");
    d.proc.kill9();
    d = daemon(dir.path(), &server);
    let done = wait_done(&d.socket, &job);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["server_sha256"], sha256_file(&file).as_str());
    assert_eq!(
        sha256_file(&server.object("capture.bin")),
        sha256_file(&file)
    );
}
