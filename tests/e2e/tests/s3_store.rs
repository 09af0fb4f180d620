//! `uplink-server --store s3://bucket/prefix`: sessions and objects in an S3-compatible
//! object store (moto, with SigV4 signatures checked), so several server nodes serve the
//! same uploads. A node killed mid-upload loses nothing: the daemon finishes through
//! another node that shares only the store, the certificate and the clients.

use uplink_e2e::*;
use uplink_proto::wire::CreateUpload;

/// Reaching the store and the credential chain.
#[path = "s3_store/access.rs"]
mod access;

const BUCKET: &str = "captures";
const STORE: &str = "s3://captures/uplink";
const MIB: u64 = 1 << 20;

/// Starts a node of the store in `dir`, at `listen`, serving the certificate in
/// `tls_from` (another node's generated one) if given, with `extra` flags.
fn node(
    dir: &std::path::Path,
    listen: &str,
    s3: &S3Server,
    tls_from: Option<&Server>,
    extra: &[&str],
) -> Server {
    if let Some(other) = tls_from {
        let to = dir.join("server-data/tls");
        std::fs::create_dir_all(&to).unwrap();
        for f in ["cert.pem", "key.pem", "ca.pem"] {
            std::fs::copy(other.data_dir.join("tls").join(f), to.join(f)).unwrap();
        }
        chmod(&to.join("key.pem"), 0o600);
    }
    let flags = [&["--store", STORE][..], extra].concat();
    Server::start_on(dir, listen, &flags, &s3.env())
}

#[test]
fn a_node_killed_mid_upload_and_the_daemon_finishes_through_another() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let mut a = node(&dir.path().join("node-a"), "127.0.0.1:0", &s3, None, &[]);
    let file = dir.path().join("scan.bin");
    random_file(&file, 96 * MIB);
    let device = dir.path().join("device");
    std::fs::create_dir_all(&device).unwrap();
    let daemon = Daemon::start(&device, &a);
    let job = enqueue(&daemon.socket, &file);
    let before = wait_acked(&daemon.socket, &job, 8 * MIB);
    assert_eq!(before["state"], "running", "{before}");
    let upload_id = before["upload_id"].as_str().expect("upload id").to_string();
    a.proc.kill9();

    // Node B: a fresh data dir, the same address (what a load balancer or DNS name gives
    // the daemon), the same certificate and store.
    let b = node(&dir.path().join("node-b"), &a.addr, &s3, Some(&a), &[]);
    assert!(
        !b.data_dir.join("sessions").join(&upload_id).exists(),
        "node B starts with nothing of the upload on its own disk"
    );
    let done = wait_done(&daemon.socket, &job);
    assert_eq!(done["state"], "completed", "{done}");
    let want = sha256_file(&file);
    assert_eq!(done["server_sha256"], want, "{done}");
    assert_eq!(
        s3.object_sha("uplink/objects/scan.bin"),
        Some((want, 96 * MIB)),
        "the store holds the file's exact bytes"
    );
    // Chunks were acknowledged before the kill and never sent again in full: the daemon
    // resumed from what the store held.
    let resent = done["bytes_resent"].as_u64().unwrap_or(0);
    eprintln!(
        "acknowledged when node A was killed: {} bytes; re-sent through node B: {resent} bytes",
        before["bytes_acked"]
    );
    assert!(resent < 96 * MIB / 2, "{done}");
    // Nothing of the upload is left but its record (kept for a repeated complete): the
    // chunk objects go right after the answer.
    let record = [format!("uplink/sessions/{upload_id}/meta.json")];
    let left = wait_for(std::time::Duration::from_secs(20), || {
        let left = s3.keys(&format!("uplink/sessions/{upload_id}/"));
        (left == record).then_some(())
    });
    assert!(
        left.is_some(),
        "{:?}",
        s3.keys(&format!("uplink/sessions/{upload_id}/"))
    );
    assert!(s3.open_multipart_uploads().is_empty());
    drop(b);
}

/// Chunks come as links of the file's hash; their objects' names carry both states, and
/// the node that takes them in order hashes each byte once.
#[test]
fn a_daemon_upload_through_one_node_hashes_every_byte_once() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let mut a = node(&dir.path().join("node"), "127.0.0.1:0", &s3, None, &[]);
    let size = 64 * MIB + 12_345;
    let file = dir.path().join("linked.bin");
    random_file(&file, size);
    let device = dir.path().join("device");
    std::fs::create_dir_all(&device).unwrap();
    let daemon = Daemon::start(&device, &a);
    let job = enqueue(&daemon.socket, &file);
    let before = wait_acked(&daemon.socket, &job, 8 * MIB);
    let upload_id = before["upload_id"].as_str().expect("upload id").to_string();
    let names = s3.keys(&format!("uplink/sessions/{upload_id}/chunks/"));
    // <offset>.<len>.<digest>.<from>.<to>, the first from the start of SHA-256.
    let first = names.first().expect("a chunk object");
    let parts: Vec<&str> = first.rsplit('/').next().unwrap_or("").split('.').collect();
    assert_eq!(parts.len(), 5, "{first}");
    assert!(parts[3].starts_with("6a09e667bb67ae85"), "{first}");
    let done = wait_done(&daemon.socket, &job);
    assert_eq!(done["state"], "completed", "{done}");
    let want = sha256_file(&file);
    assert_eq!(done["server_sha256"], want, "{done}");
    assert_eq!(
        s3.object_sha("uplink/objects/linked.bin"),
        Some((want, size))
    );
    assert_eq!(a.file_hash_tally(), Some((size, 0)));
    drop(daemon);
    a.proc.kill9();
}

fn create(name: &str, size: u64) -> CreateUpload {
    CreateUpload {
        deferred_length: false,
        size,
        name: name.into(),
        metadata: Default::default(),
        overwrite: false,
    }
}

/// Two nodes of the store (B serving A's certificate), each at its own address.
fn two_nodes(dir: &std::path::Path, s3: &S3Server) -> (Server, Server) {
    two_nodes_with(dir, s3, &[])
}

/// [`two_nodes`], both started with `extra` flags.
fn two_nodes_with(dir: &std::path::Path, s3: &S3Server, extra: &[&str]) -> (Server, Server) {
    let a = node(&dir.join("node-a"), "127.0.0.1:0", s3, None, extra);
    let b = node(&dir.join("node-b"), "127.0.0.1:0", s3, Some(&a), extra);
    (a, b)
}

/// Creates an upload of `data` named `name` through `api` and stores it in chunks of
/// `sizes` (in the order of `order`, indexes into `sizes`); returns its id and Merkle root.
async fn stored_upload(
    api: &uplinkd::server_api::ServerClient,
    name: &str,
    data: &[u8],
    sizes: &[u64],
    order: &[usize],
) -> (String, [u8; 32]) {
    let created = api
        .create(name, &create(name, data.len() as u64))
        .await
        .expect("create");
    let keys = api
        .session_keys(&created.upload_id, &created.nonce)
        .unwrap();
    let mut chunks = Vec::new();
    let mut offset = 0u64;
    for &len in sizes {
        let piece = data[offset as usize..(offset + len) as usize].to_vec();
        chunks.push(chunk_payload(offset, piece));
        offset += len;
    }
    assert_eq!(offset, data.len() as u64, "the sizes cover the data");
    for &i in order {
        api.put_chunk(&keys, &chunks[i], 0).await.expect("chunk");
    }
    let leaves: Vec<_> = chunks
        .iter()
        .map(|c| (c.offset, c.data.len() as u64, c.sha256))
        .collect();
    let root = uplink_proto::merkle::root_of(leaves.iter().map(|(o, l, s)| (*o, *l, s))).unwrap();
    (created.upload_id, root)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_live_nodes_share_sessions_and_only_one_upload_of_a_name_wins() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let (a, b) = two_nodes(dir.path(), &s3);
    let (api_a, api_b) = (server_client(&a), server_client(&b));

    // Two uploads of one name, each begun on a different node, their chunks alternating
    // between the nodes, each finished on the node that did not create it.
    let size = 12 * MIB;
    let chunk = 4 * MIB as usize;
    let mut uploads = Vec::new();
    for (seed, api) in [(1u64, &api_a), (2u64, &api_b)] {
        let mut data = vec![0u8; size as usize];
        fill_random(&mut data, &mut (seed * 7919));
        let created = api
            .create(&format!("race-{seed}"), &create("race.bin", size))
            .await
            .expect("create");
        let keys = api
            .session_keys(&created.upload_id, &created.nonce)
            .unwrap();
        uploads.push((created.upload_id, keys, data));
    }
    // A create repeated with its idempotency key through the other node (the daemon
    // retrying after losing the answer) gets the same upload, not a second one.
    for (seed, api) in [(1, &api_b), (2, &api_a)] {
        let again = api
            .create(&format!("race-{seed}"), &create("race.bin", size))
            .await
            .expect("create again");
        assert_eq!(again.upload_id, uploads[seed - 1].0);
    }
    let mut leaves = [Vec::new(), Vec::new()];
    for (i, (_, keys, data)) in uploads.iter().enumerate() {
        for (n, piece) in data.chunks(chunk).enumerate() {
            let api = if (n + i) % 2 == 0 { &api_a } else { &api_b };
            let payload = chunk_payload((n * chunk) as u64, piece.to_vec());
            api.put_chunk(keys, &payload, 0)
                .await
                .expect("chunk stored");
            leaves[i].push((payload.offset, piece.len() as u64, payload.sha256));
        }
    }
    // Each node sees every chunk of each upload, whichever node took it.
    for (id, _, _) in &uploads {
        for api in [&api_a, &api_b] {
            let st = api.state(id).await.expect("state");
            assert_eq!(st.received_bytes, size, "{st:?}");
        }
    }
    let root = |i: usize| {
        uplink_proto::merkle::root_of(leaves[i].iter().map(|(o, l, s)| (*o, *l, s))).unwrap()
    };
    let first = api_b.complete(&uploads[0].0, &root(0), None).await;
    let second = api_a.complete(&uploads[1].0, &root(1), None).await;
    let first = first.expect("the first complete wins the name");
    refused_with(second, 409, "object_exists");
    let want = hex::encode(uplink_proto::integrity::sha256(&uploads[0].2));
    assert_eq!(first.sha256, want);
    assert_eq!(s3.object_sha("uplink/objects/race.bin"), Some((want, size)));
    // Completing again answers the same result, on either node.
    let again = api_a
        .complete(&uploads[0].0, &root(0), None)
        .await
        .expect("a repeated complete");
    assert_eq!(again.sha256, first.sha256);
    assert!(s3.open_multipart_uploads().is_empty());
    // A new upload of the taken name is refused at create, before any byte.
    refused_with(
        api_a.create("race-3", &create("race.bin", 10)).await,
        409,
        "object_exists",
    );
    // Deleting the losing session on one node removes it for both.
    api_b.delete(&uploads[1].0).await.expect("delete");
    assert!(
        s3.keys(&format!("uplink/sessions/{}/", uploads[1].0))
            .is_empty()
    );
    refused_with(api_a.state(&uploads[1].0).await, 404, "unknown_upload");

    // A node that never saw the winner's session still sweeps it once its retention is
    // over (its own node may be gone); the object stays.
    let c = Server::start_on(
        &dir.path().join("node-c"),
        "127.0.0.1:0",
        &["--store", STORE, "--completed-retention", "1"],
        &s3.env(),
    );
    let swept = wait_for(std::time::Duration::from_secs(20), || {
        let left = ["sessions", "keys", "open"]
            .iter()
            .map(|k| s3.keys(&format!("uplink/{k}/")).len())
            .sum::<usize>();
        (left == 0).then_some(())
    });
    assert!(
        swept.is_some(),
        "left: {:?} {:?}",
        s3.keys("uplink/sessions/"),
        s3.keys("uplink/keys/")
    );
    assert_eq!(s3.keys("uplink/objects/"), ["uplink/objects/race.bin"]);
    drop(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_quota_counts_the_uploads_open_on_every_node() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let (a, b) = two_nodes_with(dir.path(), &s3, &["--quota-sessions", "1"]);
    let (api_a, api_b) = (server_client(&a), server_client(&b));

    let first = api_a
        .create("q-1", &create("one.bin", 10))
        .await
        .expect("the first upload");
    // Open on node A: node B counts it.
    refused_with(
        api_b.create("q-2", &create("two.bin", 10)).await,
        429,
        "too_many_sessions",
    );
    api_a.delete(&first.upload_id).await.expect("delete");
    api_b
        .create("q-3", &create("two.bin", 10))
        .await
        .expect("room again once the first is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_complete_sent_to_two_nodes_at_once_writes_the_object_once() {
    complete_on_two_nodes_at_once(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_left_by_a_dead_node_is_taken_over_by_one_node_only() {
    complete_on_two_nodes_at_once(true).await;
}

/// A complete sent to two nodes at once; with `stale_lease`, a lease expired long ago
/// (its node died mid-complete) is in the way: both nodes see it expired, one replaces it.
async fn complete_on_two_nodes_at_once(stale_lease: bool) {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let (a, b) = two_nodes(dir.path(), &s3);
    let (api_a, api_b) = (server_client(&a), server_client(&b));
    let size = 64 * MIB;
    let mut data = vec![0u8; size as usize];
    fill_random(&mut data, &mut 4242);
    let sizes = [4 * MIB; 16];
    let in_order: Vec<usize> = (0..sizes.len()).collect();
    let (upload_id, root) = stored_upload(&api_a, "twice.bin", &data, &sizes, &in_order).await;

    // The client's complete, sent to both nodes at once (as after a timeout and a retry
    // through the other node): one writes the object; the other answers 503 while it
    // does, or the same result once it is done.
    let id = upload_id.as_str();
    let lease = format!("uplink/sessions/{id}/completing");
    if stale_lease {
        s3.put_text(&lease, "1000000000 a-node-that-died");
    }
    let (on_a, on_b) = tokio::join!(
        api_a.complete(id, &root, None),
        api_b.complete(id, &root, None)
    );
    let want = hex::encode(uplink_proto::integrity::sha256(&data));
    let mut answered = 0;
    for r in [on_a, on_b] {
        match r {
            Ok(done) => {
                assert_eq!(done.sha256, want);
                answered += 1;
            }
            Err(e) => refused_with(Err::<(), _>(e), 503, "unavailable"),
        }
    }
    assert!(answered >= 1);
    for api in [&api_a, &api_b] {
        let done = api.complete(id, &root, None).await.expect("complete again");
        assert_eq!(done.sha256, want);
    }
    let writes: usize = [&a, &b]
        .iter()
        .map(|n| {
            let log = std::fs::read_to_string(&n.proc.log).unwrap_or_default();
            log.lines()
                .filter(|l| l.contains("writing the object from its chunks") && l.contains(id))
                .count()
        })
        .sum();
    assert_eq!(writes, 1, "the object was written {writes} times");
    assert_eq!(
        s3.object_sha("uplink/objects/twice.bin"),
        Some((want, size))
    );
    assert!(s3.keys(&lease).is_empty(), "the lease was not given back");
}

/// Bytes the process has written to files and sockets so far (`/proc/PID/io`; its reads
/// from sockets, `recv`, are not counted there, so the log tells what was read back).
fn written_by(server: &Server) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{}/io", server.proc.child.id()))
        .expect("/proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("wchar")
}

/// Complete neither reads back what the node hashed as the chunks came nor sends again
/// what the store can copy.
#[tokio::test(flavor = "multi_thread")]
async fn complete_hashes_nothing_twice_and_has_the_store_copy_whole_parts() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let node = node(&dir.path().join("node"), "127.0.0.1:0", &s3, None, &[]);
    let api = server_client(&node);
    // As the daemon cuts a file: a small first chunk, then large ones, a short tail.
    let sizes = [MIB, 16 * MIB, 16 * MIB, 4 * MIB + 3];
    let size: u64 = sizes.iter().sum();
    let mut data = vec![0u8; size as usize];
    fill_random(&mut data, &mut 77);
    // Last first: every chunk waits in memory until the first comes; then all are hashed.
    let (upload_id, root) = stored_upload(&api, "copied.bin", &data, &sizes, &[3, 2, 1, 0]).await;

    let before = written_by(&node);
    let done = api
        .complete(&upload_id, &root, None)
        .await
        .expect("complete");
    let sent = written_by(&node) - before;
    eprintln!("complete of {size} bytes: the node wrote {sent} bytes");
    let want = hex::encode(uplink_proto::integrity::sha256(&data));
    assert_eq!(done.sha256, want, "the whole-file hash is still computed");
    assert_eq!(
        s3.object_sha("uplink/objects/copied.bin"),
        Some((want, size))
    );
    // Parts of 8 MiB: the first is the 1 MiB chunk topped up with 7 MiB of the next, which
    // then gives its other 9 MiB as a copied part; the third chunk is copied whole; the
    // tail is sent. So 25 MiB of 37 never pass through the node again, and only what is
    // sent is read back (the hash went over all of it as it came).
    let log = std::fs::read_to_string(&node.proc.log).unwrap_or_default();
    let copied = 25 * MIB;
    let line = log
        .lines()
        .find(|l| l.contains("object written"))
        .unwrap_or_else(|| panic!("{log}"));
    for field in [
        format!("hashed_before={size}"),
        format!("read_back={}", size - copied),
        format!("copied={copied}"),
    ] {
        assert!(line.contains(&field), "{field} not in {line}");
    }
    assert!(
        sent < size - copied + 4 * MIB,
        "the node wrote {sent} bytes for a {size}-byte object"
    );
}

/// A node that died between placing the object and recording the session leaves an
/// object behind; a complete sent again (to any node) finds it is this upload's own and
/// answers as if it had written it. An object of another upload stays, and is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_complete_repeated_after_a_crash_recognises_its_own_object() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let node = node(&dir.path().join("node"), "127.0.0.1:0", &s3, None, &[]);
    let api = server_client(&node);
    let size = 10 * MIB;
    let mut data = vec![0u8; size as usize];
    fill_random(&mut data, &mut 9);
    let sizes = [4 * MIB, 4 * MIB, 2 * MIB];
    let in_order = [0, 1, 2];
    let want = hex::encode(uplink_proto::integrity::sha256(&data));

    // The dead node's object, as it would have placed it: the file, the upload's id in
    // its metadata.
    let (ours, root) = stored_upload(&api, "mine.bin", &data, &sizes, &in_order).await;
    let file = dir.path().join("mine.bin");
    std::fs::write(&file, &data).unwrap();
    let placed = format!("@{}", file.display());
    s3.put_text_with_metadata("uplink/objects/mine.bin", &placed, "uplink-upload", &ours);
    let done = api.complete(&ours, &root, None).await.expect("complete");
    assert_eq!(done.sha256, want);
    assert_eq!(
        s3.object_sha("uplink/objects/mine.bin"),
        Some((want.clone(), size))
    );

    // Another upload's object under the name: not overwritten, 409.
    let (other, root) = stored_upload(&api, "theirs.bin", &data, &sizes, &in_order).await;
    s3.put_text_with_metadata(
        "uplink/objects/theirs.bin",
        "someone else's",
        "uplink-upload",
        "0123456789abcdef0123456789abcdef",
    );
    refused_with(
        api.complete(&other, &root, None).await,
        409,
        "object_exists",
    );
    assert_eq!(
        s3.object_sha("uplink/objects/theirs.bin").map(|(_, n)| n),
        Some("someone else's".len() as u64)
    );
}

/// A complete whose node died leaves its multipart upload open, and S3 bills the parts
/// until someone aborts it: the sweep does, once it is older than
/// `--abandoned-multipart-after`, and only under the server's own objects/.
#[test]
fn the_sweep_aborts_a_multipart_upload_a_dead_complete_left_and_nothing_else() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    s3.begin_multipart("uplink/objects/orphan.bin");
    // Someone else's, outside the server's prefix.
    s3.begin_multipart("elsewhere/theirs.bin");
    let _node = node(
        &dir.path().join("node"),
        "127.0.0.1:0",
        &s3,
        None,
        &[
            "--completed-retention",
            "2",
            "--abandoned-multipart-after",
            "12",
        ],
    );
    let keys = || -> Vec<String> {
        let mut k: Vec<String> = s3
            .open_multipart_uploads()
            .iter()
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect();
        k.sort();
        k
    };
    // Younger than the age (the node sweeps every second): kept, a complete may be writing it.
    assert_eq!(
        keys(),
        ["elsewhere/theirs.bin", "uplink/objects/orphan.bin"]
    );
    let aborted = wait_for(std::time::Duration::from_secs(40), || {
        (keys() == ["elsewhere/theirs.bin"]).then_some(())
    });
    assert!(aborted.is_some(), "still open: {:?}", keys());
}

/// Creates racing on two nodes all pass the early quota check; each counts every node's
/// open markers again once its own is written, so together they never pass the quota (at
/// worst all are refused, 429, and retried).
#[tokio::test(flavor = "multi_thread")]
async fn creates_racing_on_two_nodes_never_open_more_uploads_than_the_quota() {
    let dir = workdir();
    let s3 = S3Server::start(dir.path(), BUCKET);
    let (a, b) = two_nodes_with(dir.path(), &s3, &["--quota-sessions", "1"]);
    let apis = [
        std::sync::Arc::new(server_client(&a)),
        std::sync::Arc::new(server_client(&b)),
    ];
    for round in 0..4 {
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let api = std::sync::Arc::clone(&apis[i % 2]);
                tokio::spawn(async move {
                    let name = format!("race-{round}-{i}.bin");
                    api.create(&name, &create(&name, 10)).await
                })
            })
            .collect();
        let mut admitted = Vec::new();
        for t in tasks {
            match t.await.expect("create task") {
                Ok(created) => admitted.push(created.upload_id),
                refused => refused_with(refused, 429, "too_many_sessions"),
            }
        }
        assert!(
            admitted.len() <= 1,
            "round {round}: {admitted:?} open, quota 1"
        );
        assert!(
            s3.keys("uplink/open/").len() <= 1,
            "{:?}",
            s3.keys("uplink/open/")
        );
        for id in admitted {
            apis[0].delete(&id).await.expect("delete");
        }
    }
}
