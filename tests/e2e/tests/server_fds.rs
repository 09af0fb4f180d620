//! The server's open files stay bounded by the uploads in progress, and running out of
//! them is a retryable 503 the server recovers from by itself.
//!
//! Before: every completed session kept its part file and chunk log open until a restart;
//! under `ulimit -n 1024` the 337th upload got `500 Too many open files` and the daemon
//! waited forever behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use uplink_e2e::*;
use uplink_proto::wire::{CreateUpload, code};
use uplinkd::server_api::CallError;

/// The open-files limit a shell or a systemd service gives a process is 1024; this test
/// uses a quarter of it.
const NOFILE: u64 = 256;
const UPLOADS: usize = 2000;
const FD_CEILING: usize = 200;

/// Samples the server's open fds every 20 ms until dropped; remembers the highest count.
struct FdWatch {
    peak: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdWatch {
    fn start(pid: u32) -> FdWatch {
        let peak = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&peak), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    p.fetch_max(d.count(), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        FdWatch {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for FdWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sessions_on_disk(server: &Server) -> usize {
    std::fs::read_dir(server.data_dir.join("sessions"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_uploads_under_ulimit_256_all_complete_and_fds_stay_bounded() {
    let dir = workdir();
    let d = dir.path();
    // Completed sessions are removed 2 s after completion (the default is a day), so the
    // test also sees the sweep run while the server serves.
    let server = Server::start_limited(d, NOFILE, &["--completed-retention", "2"]);
    let watch = FdWatch::start(server.proc.child.id());
    let mut cmd = Daemon::command(d, &server);
    cmd.args(["--keep-finished-jobs", "5000"]);
    let daemon = Daemon::start_cmd(d, cmd);
    let mut client = uplink::connect(&daemon.socket).await.expect("connect");

    let files = d.join("capture");
    std::fs::create_dir_all(&files).unwrap();
    let mut expected = Vec::with_capacity(UPLOADS);
    for n in 0..UPLOADS {
        let name = format!("photo-{n:04}.jpg");
        let path = files.join(&name);
        random_file(&path, 512 + (n as u64 * 37) % 3000);
        client
            .enqueue(uplink::grpc::EnqueueRequest {
                path: path.to_string_lossy().into_owned(),
                ..Default::default()
            })
            .await
            .expect("enqueue");
        expected.push((name, sha256_file(&path)));
    }

    // Every job ends; bounded wait (the whole run takes about a minute here).
    let deadline = Instant::now() + Duration::from_secs(900);
    let (mut completed, mut failed) = (0, 0);
    while Instant::now() < deadline {
        let (mut c, mut f) = (0, 0);
        uplink::for_each_job(
            &mut client,
            uplink::grpc::ListJobsRequest {
                page_size: 1000,
                ..Default::default()
            },
            None,
            |job| match uplink::state_name(job.state) {
                "completed" => c += 1,
                "failed" | "cancelled" => f += 1,
                _ => {}
            },
        )
        .await
        .expect("list jobs");
        (completed, failed) = (c, f);
        if completed + failed == UPLOADS {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        (completed, failed),
        (UPLOADS, 0),
        "every upload completes (server log: {})",
        d.join("server.log").display()
    );
    for (name, sha) in &expected {
        assert_eq!(&sha256_file(&server.object(name)), sha, "{name} intact");
    }
    let peak = watch.peak();
    println!(
        "{UPLOADS} uploads under ulimit -n {NOFILE}: server fds peaked at {peak}, now {}",
        server.open_fds()
    );
    assert!(
        peak < FD_CEILING,
        "server fds peaked at {peak} (ceiling {FD_CEILING})"
    );
    // The sweep removes completed sessions while the server runs.
    let swept = wait_for(Duration::from_secs(20), || {
        (sessions_on_disk(&server) == 0).then_some(())
    });
    assert!(
        swept.is_some(),
        "{} completed sessions still on disk",
        sessions_on_disk(&server)
    );
}

#[tokio::test]
async fn out_of_file_descriptors_is_a_503_with_retry_after_and_the_server_recovers() {
    let dir = workdir();
    // A limit so low that a few dozen open sessions exhaust it.
    let server = Server::start_limited(dir.path(), 64, &[]);
    let c = server_client(&server);
    let mut open = Vec::new();
    let mut refused = None;
    // Each session in progress holds its part file and log: create until refused.
    for n in 0..200 {
        let body = CreateUpload {
            deferred_length: false,
            size: 1000,
            name: format!("held-{n}.bin"),
            metadata: Default::default(),
            overwrite: false,
        };
        match c.create(&format!("key-{n}"), &body).await {
            Ok(created) => open.push(created.upload_id),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the server ran out of files within 200 sessions");
    match &refused {
        CallError::Server {
            status,
            code: c,
            retry_after,
            ..
        } => {
            assert_eq!((*status, c.as_str()), (503, code::UNAVAILABLE), "{refused}");
            assert_eq!(*retry_after, Some(Duration::from_secs(1)));
        }
        other => panic!("expected 503 unavailable, got {other:?}"),
    }
    assert!(!open.is_empty(), "some sessions were created first");
    let n = open.len();
    // Freeing sessions frees their files: the same create now succeeds, no restart.
    for id in open.drain(..n.min(5)) {
        c.delete(&id).await.expect("delete");
    }
    let body = CreateUpload {
        deferred_length: false,
        size: 1000,
        name: format!("held-{n}.bin"),
        metadata: Default::default(),
        overwrite: false,
    };
    c.create(&format!("key-{n}"), &body)
        .await
        .expect("create succeeds once files are free");
    println!(
        "ulimit -n 64: {n} sessions open, then 503 unavailable; after 5 deletes, create works"
    );
}
