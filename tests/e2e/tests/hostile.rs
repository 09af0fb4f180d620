//! Hostile input: malformed, forged, replayed and abusive requests against the real
//! `uplink-server`, each spoken over its own TLS 1.3 connection. Every one gets its clear
//! 4xx with a stable code (or, for a broken stream, a clean reset), none stores a byte,
//! and the server keeps serving: a good upload goes through right after.
//!
//! The client is hyper's HTTP/2 client (every header and body byte chosen by the test)
//! and quinn for the HTTP/3 stream abuse.

use std::time::Duration;

use uplink_e2e::*;
use uplink_proto::wire::{self, CreateUpload, UploadCreated};
use uplinkd::server_api::{ChunkPayload, SessionKeys};

use client::*;

#[path = "hostile/chunks.rs"]
mod chunks;
#[path = "hostile/client.rs"]
mod client;
#[path = "hostile/finish.rs"]
mod finish;
/// HTTP/3 stream abuse, frames written by hand.
#[path = "hostile/h3.rs"]
mod h3;
#[path = "hostile/requests.rs"]
mod requests;

/// What every section of cases aims at: alice's session S (two 256 KiB chunks, the first
/// stored), her deferred-length session D, and bob's session B.
struct Fixture {
    server: Server,
    raw: Raw,
    /// Alice's and bob's bearer credentials.
    a: String,
    b: String,
    s: UploadCreated,
    d: UploadCreated,
    bs: UploadCreated,
    keys: SessionKeys,
    d_keys: SessionKeys,
    /// S's first chunk (stored) and second (the target of the chunk cases).
    c0: ChunkPayload,
    c1: ChunkPayload,
    s_path: String,
    c1_path: String,
}

/// The bearer header alone.
fn auth(bearer: &str) -> Headers {
    vec![("authorization", format!("Bearer {bearer}").into_bytes())]
}

/// The bearer and a JSON content type.
fn json(bearer: &str) -> Headers {
    let mut h = auth(bearer);
    h.push(("content-type", b"application/json".to_vec()));
    h
}

#[tokio::test]
async fn malformed_forged_and_abusive_requests_are_refused_and_nothing_is_stored() {
    let dir = workdir();
    let clients = dir.path().join("clients");
    std::fs::create_dir_all(&clients).expect("clients dir");
    write_secret(&clients.join("alice.token"), "alice-hostile-secret");
    write_secret(&clients.join("bob.token"), "bob-hostile-secret");
    let server = Server::start_tenants(dir.path(), &clients, &[]);
    let (alice, bob) = (tenant(&clients, "alice"), tenant(&clients, "bob"));
    let (a, b) = (alice.bearer().to_string(), bob.bearer().to_string());
    let api = server_client_as(&server, tenant(&clients, "alice"));
    let bob_api = server_client_as(&server, tenant(&clients, "bob"));
    let raw = Raw::new(&server);
    let mut t = Tally::default();

    // Alice's session S (two 256 KiB chunks, the first stored), a deferred one D, and
    // bob's session B.
    let create = |name: &str, size: u64, deferred: bool| CreateUpload {
        deferred_length: deferred,
        size,
        name: name.into(),
        metadata: Default::default(),
        overwrite: false,
    };
    let s = api
        .create("s", &create("s.bin", SIZE, false))
        .await
        .expect("create S");
    let d = api
        .create("d", &create("d.bin", 0, true))
        .await
        .expect("create D");
    let bs = bob_api
        .create("b", &create("b.bin", SIZE, false))
        .await
        .expect("create B");
    let keys = api.session_keys(&s.upload_id, &s.nonce).expect("keys");
    let d_keys = api.session_keys(&d.upload_id, &d.nonce).expect("keys");
    let c0 = chunk(0, HALF, 1);
    assert!(
        !api.put_chunk(&keys, &c0, 0)
            .await
            .expect("first chunk")
            .duplicate
    );
    let c1 = chunk(HALF, HALF, 2);
    let s_path = wire::upload_path(&s.upload_id);
    let c1_path = wire::chunk_path(&s.upload_id, HALF);
    let f = Fixture {
        server,
        raw,
        a,
        b,
        s,
        d,
        bs,
        keys,
        d_keys,
        c0,
        c1,
        s_path,
        c1_path,
    };
    requests::credentials_paths_and_creates(&f, &mut t).await;
    chunks::chunk_puts(&f, &mut t).await;
    finish::completes_objects_and_broken_streams(&f, &mut t).await;
    let after = api.state(&f.s.upload_id).await.expect("S state");
    assert_eq!(after.chunk_count, 1, "a reset chunk was stored: {after:?}");
    h3::abuse(&f.server, &mut t).await;
    let Fixture {
        server,
        s,
        d,
        bs,
        c0,
        ..
    } = f;

    // Nothing of any of it was stored: S holds exactly its first chunk, D and B nothing,
    // there are no objects and no other sessions than the ones made on purpose.
    let state = api.state(&s.upload_id).await.expect("S state");
    assert_eq!(
        (state.chunk_count, state.received_bytes),
        (1, HALF),
        "{state:?}"
    );
    let part = std::fs::read(
        server
            .data_dir
            .join("sessions")
            .join(&s.upload_id)
            .join("data.part"),
    )
    .expect("S part file");
    assert_eq!(
        &part[..HALF as usize],
        &c0.data[..],
        "the stored chunk is intact"
    );
    assert!(
        part[HALF as usize..].iter().all(|&b| b == 0),
        "no byte of a refused chunk reached S's part file"
    );
    for (client, id) in [(&api, &d.upload_id), (&bob_api, &bs.upload_id)] {
        let st = client.state(id).await.expect("state");
        assert_eq!((st.chunk_count, st.received_bytes), (0, 0), "{st:?}");
    }
    let sessions = std::fs::read_dir(server.data_dir.join("sessions"))
        .expect("sessions dir")
        .count();
    assert_eq!(
        sessions, 4,
        "S, D, B and the keyed create; no refused create made one"
    );
    // A reset stream's temp file is removed by the server's writer thread once the
    // request is gone, a moment after the client saw the reset: allow it 5 s.
    let objects = server.data_dir.join("objects");
    let mut stored = files_under(&objects);
    for _ in 0..50 {
        if stored.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stored = files_under(&objects);
    }
    assert!(stored.is_empty(), "objects or temp files left: {stored:?}");

    eprintln!(
        "hostile: {} requests tried, {} refused with a 4xx or a reset, 0 bytes stored",
        t.tried, t.refused
    );
    assert!(
        t.wrong.is_empty(),
        "answered otherwise:\n{}",
        t.wrong.join("\n")
    );
    assert!(t.tried >= 50, "only {} cases", t.tried);

    // The server is still up and serves a good upload.
    let home = dir.path().join("device");
    std::fs::create_dir_all(&home).expect("device dir");
    let token = home.join("token");
    write_secret(&token, "alice-hostile-secret");
    let daemon = Daemon::start_cmd(&home, Daemon::command_as(&home, &server, None, &token));
    let file = home.join("after.bin");
    seeded_file(&file, 5 << 20, 9);
    let record = tokio::task::spawn_blocking(move || {
        let r = send_wait(&daemon.socket, &file);
        (r, sha256_file(&file))
    })
    .await
    .expect("send");
    assert_eq!(record.0["state"], "completed", "{}", record.0);
    assert_eq!(
        sha256_file(&objects.join("alice").join("after.bin")),
        record.1
    );
}
