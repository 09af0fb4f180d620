//! Under a cgroup memory limit (a systemd `MemoryMax=`, a container's) the daemon sees
//! the limit, not the host's free memory: its buffer pool shrinks, the upload goes on
//! and arrives intact, and the daemon is not killed.

use uplink_e2e::*;

/// Uploads a 64 MiB file with the daemon in a cgroup limited to `limit` bytes; answers
/// the engine's Status once the upload is done, and the job's record.
fn upload_under(limit: u64) -> (serde_json::Value, serde_json::Value) {
    let dir = workdir();
    let server = Server::start(dir.path());
    let cgroup = MemCgroup::new(
        &format!("uplink-e2e-mem-{}-{limit}", std::process::id()),
        limit,
    );
    let daemon = Daemon::start_cmd(
        dir.path(),
        cgroup.wrap(&Daemon::command(dir.path(), &server)),
    );
    let joined = std::fs::read_to_string(cgroup.dir.join("cgroup.procs")).unwrap_or_default();
    assert!(
        joined
            .split_whitespace()
            .any(|p| p == daemon.proc.child.id().to_string()),
        "the daemon is not in the cgroup: {joined:?}"
    );
    let file = dir.path().join("mesh.bin");
    random_file(&file, 64 << 20);
    let record = send_wait(&daemon.socket, &file);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["server_sha256"], sha256_file(&file).as_str());

    let status = uplink(&daemon.socket, &["status", "--json"]);
    assert!(status.status.success(), "the daemon died: {status:?}");
    let engine = json_lines(&status).pop().expect("status")["engine"].clone();
    let read = |f: &str| std::fs::read_to_string(cgroup.dir.join(f)).unwrap_or_default();
    eprintln!(
        "engine under {limit}: {engine}; cgroup usage {}",
        read("memory.usage_in_bytes").trim()
    );
    (engine, record)
}

// The host has gigabytes free; the cgroup leaves the daemon far less, and the pool follows
// the cgroup: 8 buffers below 200 MB of headroom, 4 below 100 MB, 2 below 50 MB.
#[test]
fn under_a_192_mib_cgroup_limit_the_pool_is_8_and_the_upload_completes() {
    assert_eq!(upload_under(192 << 20).0["buffers"], 8);
}

#[test]
fn under_a_48_mib_cgroup_limit_the_pool_is_2_and_the_upload_still_completes() {
    let (engine, record) = upload_under(48 << 20);
    assert_eq!(engine["buffers"], 2, "{engine}");
    assert_eq!(engine["stream_limit"], 2, "{engine}");
    // The buffers shrink too, not only their number: at most 4 MiB each.
    let largest = record["chunk_size"].as_u64().expect("chunk_size");
    assert!(largest <= 4 << 20, "largest chunk {largest}");
}
