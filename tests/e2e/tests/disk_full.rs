//! The server's disk fills up: the upload is not failed but waits — state `waiting`, with
//! its next attempt and why — and completes intact once space returns. The server's data
//! lives on a small tmpfs this test mounts (and unmounts, also when it fails).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use uplink_e2e::*;

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_server_disk_makes_the_job_wait_and_it_completes_once_space_returns() {
    let dir = workdir();
    let disk = Tmpfs::mount(&dir.path().join("srv"), "8m");
    let server = Server::start_opts(&disk.0, None, &[]);
    let daemon = Daemon::start(dir.path(), &server);
    let file = dir.path().join("scan.bin");
    random_file(&file, 24 << 20);
    let job = enqueue(&daemon.socket, &file);

    // 24 MiB do not fit in 8: the server says 507 disk_full; the job waits, not fails.
    let waiting = wait_for(Duration::from_secs(60), || {
        job_record(&daemon.socket, &job).filter(|j| j["state"] == "waiting")
    })
    .unwrap_or_else(|| {
        panic!(
            "the job never showed waiting: {:?}",
            job_record(&daemon.socket, &job)
        )
    });
    eprintln!("{waiting}");
    let why = waiting["waiting_why"].as_str().unwrap_or_default();
    assert!(why.contains("disk_full"), "{waiting}");
    assert!(
        waiting["next_attempt_ms"].as_u64().unwrap_or(0)
            > waiting["created_at_ms"].as_u64().unwrap_or(0),
        "{waiting}"
    );

    // Space returns: the next attempt goes through and the upload completes intact.
    disk.resize("96m");
    // The wait is the daemon's backoff, announced as next_attempt_ms.
    let resumed = next_ack_after(&daemon.socket, &job);
    eprintln!("space back; next acknowledgement after {resumed:?}");
    let last = wait_done(&daemon.socket, &job);
    assert_eq!(last["state"], "completed", "{last}");
    assert_eq!(last["server_sha256"], sha256_file(&file).as_str());
    assert_eq!(sha256_file(&server.object("scan.bin")), sha256_file(&file));
    drop(daemon);
    drop(server);
}
