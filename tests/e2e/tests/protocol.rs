//! The server refuses every chunk that fails verification and stores nothing of it;
//! a replayed chunk is a no-op. Spoken over real HTTP/2 + TLS 1.3 to the real server.

use bytes::Bytes;
use uplink_e2e::*;
use uplink_proto::integrity::{self, ChunkSecret, ClientSecret};
use uplink_proto::wire::CreateUpload;
use uplinkd::server_api::{ChunkPayload, SessionKeys};

fn payload(offset: u64, data: &[u8]) -> ChunkPayload {
    chunk_payload(offset, Bytes::copy_from_slice(data))
}

#[tokio::test]
async fn bad_chunks_are_refused_and_nothing_of_them_is_stored() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let c = server_client(&server);
    let created = c
        .create(
            "job-proto",
            &CreateUpload {
                deferred_length: false,
                size: 8,
                name: "p.bin".into(),
                metadata: Default::default(),
                overwrite: false,
            },
        )
        .await
        .expect("create");
    let keys = c.session_keys(&created.upload_id, &created.nonce).unwrap();
    let good = payload(0, b"abcd");

    // Wrong HMAC: keyed with the chunk secret of another token.
    let other = integrity::chunk_secret(&ClientSecret::from_token_text("not-the-token").unwrap());
    let wrong_keys = SessionKeys::new(&other, &created.upload_id, &created.nonce).unwrap();
    refused_with(c.put_chunk(&wrong_keys, &good, 0).await, 401, "bad_hmac");
    // Wrong CRC32C.
    let mut bad_crc = good.clone();
    bad_crc.crc32c ^= 1;
    refused_with(
        c.put_chunk(&keys, &bad_crc, 0).await,
        422,
        "crc32c_mismatch",
    );
    // Wrong SHA-256 (the tag is valid for the claimed hash; the body does not match it).
    let mut bad_sha = good.clone();
    bad_sha.sha256[0] ^= 1;
    refused_with(
        c.put_chunk(&keys, &bad_sha, 0).await,
        422,
        "sha256_mismatch",
    );

    let state = c.state(&created.upload_id).await.unwrap();
    assert_eq!((state.chunk_count, state.ranges.len()), (0, 0), "{state:?}");
    assert_eq!(state.received_bytes, 0);
    let part = server
        .data_dir
        .join("sessions")
        .join(&created.upload_id)
        .join("data.part");
    assert_eq!(
        std::fs::read(&part).unwrap(),
        vec![0u8; 8],
        "no byte of a refused chunk reached the disk"
    );

    // The right chunk goes through; a replay is a no-op success.
    assert!(!c.put_chunk(&keys, &good, 0).await.unwrap().duplicate);
    assert!(c.put_chunk(&keys, &good, 0).await.unwrap().duplicate);
    // The same offset with other bytes is a conflict.
    refused_with(
        c.put_chunk(&keys, &payload(0, b"abcX"), 0).await,
        409,
        "chunk_conflict",
    );
    let state = c.state(&created.upload_id).await.unwrap();
    assert_eq!(state.chunk_count, 1);
    assert_eq!(state.duplicate_puts, 1);

    // Complete refuses a gap, then a wrong Merkle root, then accepts the right one.
    refused_with(
        c.complete(&created.upload_id, &[0; 32], None).await,
        409,
        "incomplete",
    );
    assert!(
        !c.put_chunk(&keys, &payload(4, b"efgh"), 0)
            .await
            .unwrap()
            .duplicate
    );
    refused_with(
        c.complete(&created.upload_id, &[0; 32], None).await,
        422,
        "merkle_mismatch",
    );
    let root = uplink_proto::merkle::root_of([
        (0, 4, &integrity::sha256(b"abcd")),
        (4, 4, &integrity::sha256(b"efgh")),
    ])
    .unwrap();
    let done = c.complete(&created.upload_id, &root, None).await.unwrap();
    assert_eq!(done.sha256, hex::encode(integrity::sha256(b"abcdefgh")));
    assert_eq!(std::fs::read(server.object("p.bin")).unwrap(), b"abcdefgh");
}

/// Session keys derived the way the old scheme did (HKDF over the token that travelled),
/// but from the bearer credential: what someone who sees requests would try.
fn old_scheme_keys(sent: &str, upload_id: &str, nonce_hex: &str) -> SessionKeys {
    let nonce = hex::decode(nonce_hex).unwrap();
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&nonce), sent.as_bytes());
    let mut key = [0u8; 32];
    hk.expand_multi_info(&[integrity::CHUNK_KEY_INFO, upload_id.as_bytes()], &mut key)
        .unwrap();
    SessionKeys {
        upload_id: upload_id.to_string(),
        nonce,
        key,
        generation: 0,
    }
}

/// `curl` GET of `path` with `Authorization: Bearer <credential>`: (HTTP status, body).
fn curl_get(server: &Server, credential: &str, path: &str) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "-w", "\n%{http_code}", "--cacert"])
        .arg(&server.ca)
        .args(["-H", &format!("Authorization: Bearer {credential}")])
        .arg(format!("{}{path}", server.url()))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.to_string(), body.to_string())
}

/// The bearer credential travels with every request; the key that signs chunks does
/// not. A chunk tagged with a key derived from the credential is refused and nothing of
/// it is stored; the token file's secret is not a credential.
#[tokio::test]
async fn a_chunk_tagged_with_what_travels_is_refused() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let bearer = server.bearer();
    assert_eq!(
        bearer,
        uplink_e2e::bearer(),
        "--print-bearer and the daemon agree"
    );
    assert_ne!(bearer, TOKEN);
    let c = server_client(&server);
    let created = c
        .create(
            "job-forge",
            &CreateUpload {
                deferred_length: false,
                size: 8,
                name: "f.bin".into(),
                metadata: Default::default(),
                overwrite: false,
            },
        )
        .await
        .expect("create with the derived bearer");
    let (id, nonce) = (created.upload_id.as_str(), created.nonce.as_str());
    let good = payload(0, b"abcd");

    let mut bearer_bytes = [0u8; 32];
    hex::decode_to_slice(&bearer, &mut bearer_bytes).unwrap();
    let forged = [
        // The credential's bytes taken as the chunk secret.
        SessionKeys::new(&ChunkSecret::from_bytes(bearer_bytes), id, nonce).unwrap(),
        // The credential taken as if it were the token file's secret.
        SessionKeys::new(
            &integrity::chunk_secret(&ClientSecret::from_token_text(&bearer).unwrap()),
            id,
            nonce,
        )
        .unwrap(),
        // The old scheme: the session key straight from what was sent.
        old_scheme_keys(&bearer, id, nonce),
    ];
    for keys in &forged {
        refused_with(c.put_chunk(keys, &good, 0).await, 401, "bad_hmac");
    }
    let state = c.state(id).await.unwrap();
    assert_eq!((state.chunk_count, state.ranges.len()), (0, 0), "{state:?}");
    assert_eq!(state.received_bytes, 0);
    let part = server.data_dir.join("sessions").join(id).join("data.part");
    assert_eq!(
        std::fs::read(&part).unwrap(),
        vec![0u8; 8],
        "no byte of a forged chunk reached the disk"
    );

    // Keyed from the chunk secret, the same chunk goes through.
    let keys = c.session_keys(id, nonce).unwrap();
    assert!(!c.put_chunk(&keys, &good, 0).await.unwrap().duplicate);
    assert_eq!(c.state(id).await.unwrap().received_bytes, 4);

    // The raw secret is not a credential; the printed credential is (plain curl).
    let path = uplink_proto::wire::upload_path(id);
    let (status, body) = curl_get(&server, TOKEN, &path);
    assert_eq!(status, "401", "{body}");
    assert!(body.contains("\"unauthorized\""), "{body}");
    let (status, body) = curl_get(&server, &bearer, &path);
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("\"received_bytes\":4"), "{body}");
}

#[tokio::test]
async fn sessions_survive_a_server_restart_and_create_is_idempotent() {
    let dir = workdir();
    let mut server = Server::start(dir.path());
    let req = CreateUpload {
        deferred_length: false,
        size: 8,
        name: "r.bin".into(),
        metadata: Default::default(),
        overwrite: false,
    };
    let created = server_client(&server).create("job-r", &req).await.unwrap();
    let keys = server_client(&server)
        .session_keys(&created.upload_id, &created.nonce)
        .unwrap();
    server_client(&server)
        .put_chunk(&keys, &payload(0, b"1234"), 0)
        .await
        .unwrap();
    server.restart_after(std::time::Duration::from_millis(100));
    let c = server_client(&server);
    assert_eq!(c.create("job-r", &req).await.unwrap(), created);
    let state = c.state(&created.upload_id).await.unwrap();
    assert_eq!(state.ranges, vec![[0, 4]]);
    let page = c.chunk_page(&created.upload_id, 0).await.unwrap();
    assert_eq!(
        page.chunks[0].sha256,
        hex::encode(integrity::sha256(b"1234"))
    );
}

#[test]
fn a_plain_curl_put_stores_an_object_and_a_wrong_sha_is_refused() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let file = dir.path().join("small.bin");
    random_file(&file, 100_000);
    let sha = sha256_file(&file);
    let bearer = server.bearer();
    let curl = |name: &str, sha_header: &str| {
        std::process::Command::new("curl")
            .args(["-sS", "--http2", "--cacert"])
            .arg(&server.ca)
            .args([
                "-H",
                &format!("Authorization: Bearer {bearer}"),
                "-H",
                &format!("X-Content-SHA256: {sha_header}"),
            ])
            .arg("-T")
            .arg(&file)
            .arg(format!("{}/v1/objects/{name}", server.url()))
            .output()
            .expect("curl")
    };
    let ok = curl("small.bin", &sha);
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&sha), "{ok:?}");
    assert_eq!(sha256_file(&server.object("small.bin")), sha);
    let bad = curl("other.bin", &"0".repeat(64));
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("sha256_mismatch"),
        "{bad:?}"
    );
    assert!(
        !server.object("other.bin").exists(),
        "a refused object is not committed"
    );
}
