//! A chunk cut off mid-body is not sent again from byte 0: the client asks what the
//! server has of it (`POST …/chunks/{offset}/resume`) and sends only the rest
//! (`X-Chunk-Resume-From`); the server verifies the whole chunk as if it had come in one
//! piece. Spoken to the real server: the cut-off attempt is a real `curl` whose transfer
//! ends mid-body, the resumed one the daemon's own client.

use std::process::Command;

use uplink_e2e::*;
use uplink_proto::integrity;
use uplink_proto::wire::{self, CreateUpload};
use uplinkd::server_api::{ChunkPayload, SessionKeys, chunk_headers};

const MIB: usize = 1 << 20;

/// `curl` PUT of `body` as chunk `chunk`'s bytes from `from` on (its headers and tag as
/// the daemon makes them), with `extra` arguments; the output carries the status on its last line.
fn curl_chunk_put(
    server: &Server,
    keys: &SessionKeys,
    chunk: &ChunkPayload,
    from: u64,
    extra: &[&str],
    dir: &std::path::Path,
) -> std::process::Output {
    let file = dir.join(format!("body-{from}.bin"));
    std::fs::write(&file, &chunk.data[from as usize..]).expect("write body");
    let mut headers = vec![format!("Authorization: Bearer {}", server.bearer())];
    headers.extend(chunk_headers(keys, chunk).map(|(name, value)| format!("{name}: {value}")));
    if from > 0 {
        headers.push(format!("X-Chunk-Resume-From: {from}"));
    }
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2", "-w", "\n%{http_code}", "--cacert"])
        .arg(&server.ca)
        .args(extra)
        .args(["-X", "PUT", "-T"])
        .arg(&file);
    for h in &headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!(
        "{}{}",
        server.url(),
        wire::chunk_path(&keys.upload_id, chunk.offset)
    ))
    .output()
    .expect("run curl")
}

/// A chunk PUT by `curl` at 1 MB/s, given up after 2 s: the server receives part of the
/// body and then loses the connection.
fn curl_put_cut_off(
    server: &Server,
    keys: &SessionKeys,
    chunk: &ChunkPayload,
    dir: &std::path::Path,
) {
    let out = curl_chunk_put(
        server,
        keys,
        chunk,
        0,
        &["--limit-rate", "1M", "--max-time", "2"],
        dir,
    );
    // 28: the transfer timed out, mid-body.
    assert_eq!(out.status.code(), Some(28), "curl: {out:?}");
}

#[tokio::test]
async fn a_chunk_cut_off_mid_body_resumes_from_what_the_server_has_and_arrives_intact() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let c = server_client(&server);
    let size = 8 * MIB;
    let created = c
        .create(
            "job-resume",
            &CreateUpload {
                deferred_length: false,
                size: size as u64,
                name: "r.bin".into(),
                metadata: Default::default(),
                overwrite: false,
            },
        )
        .await
        .expect("create");
    let keys = c.session_keys(&created.upload_id, &created.nonce).unwrap();
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let chunk = chunk_payload(0, data.clone());

    curl_put_cut_off(&server, &keys, &chunk, dir.path());
    let had = c.resume_point(&keys, &chunk).await.expect("resume point");
    assert!(
        had > 0 && had < size as u64,
        "the server should hold part of the body: {had} of {size} bytes"
    );
    // Asking again changes nothing: the bytes wait for the resumed PUT.
    assert_eq!(c.resume_point(&keys, &chunk).await.unwrap(), had);

    let (stored, from) = c
        .put_chunk_resumed(&keys, &chunk, 0, 1, None)
        .await
        .expect("resumed put");
    assert_eq!(from, had, "only the rest was sent");
    assert!(!stored.duplicate);
    assert_eq!(stored.length, size as u64);
    // The bytes were used once; the chunk is held now, so a new ask finds nothing partial.
    assert_eq!(c.resume_point(&keys, &chunk).await.unwrap(), 0);

    let root = uplink_proto::merkle::root_of([(0, size as u64, &chunk.sha256)]).unwrap();
    let done = c
        .complete(&created.upload_id, &root, None)
        .await
        .expect("complete");
    assert_eq!(done.sha256, hex::encode(integrity::sha256(&data)));
    assert_eq!(std::fs::read(server.object("r.bin")).unwrap(), data);
}

#[tokio::test]
async fn a_resume_is_refused_without_the_key_or_when_the_server_lost_the_bytes() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let c = server_client(&server);
    let created = c
        .create(
            "job-resume-bad",
            &CreateUpload {
                deferred_length: false,
                size: (4 * MIB) as u64,
                name: "b.bin".into(),
                metadata: Default::default(),
                overwrite: false,
            },
        )
        .await
        .expect("create");
    let keys = c.session_keys(&created.upload_id, &created.nonce).unwrap();
    let chunk = chunk_payload(0, vec![5u8; 4 * MIB]);
    curl_put_cut_off(&server, &keys, &chunk, dir.path());

    // Someone without the session key can neither see nor take the bytes.
    let mut wrong = c.session_keys(&created.upload_id, &created.nonce).unwrap();
    wrong.key = [9; 32];
    refused_with(c.resume_point(&wrong, &chunk).await, 401, "bad_hmac");
    refused_with(
        c.put_chunk_resumed(&wrong, &chunk, 0, 1, None).await,
        401,
        "bad_hmac",
    );

    // Other bytes at the same offset see nothing to build on.
    let other = chunk_payload(0, vec![6u8; 4 * MIB]);
    assert_eq!(c.resume_point(&keys, &other).await.unwrap(), 0);

    // The server restarted: the parked bytes are gone, and a PUT that builds on them is
    // refused with its code (the client then sends the chunk whole).
    let had = c.resume_point(&keys, &chunk).await.unwrap();
    assert!(had > 0, "the cut-off body was parked");
    let mut server = server;
    server.restart_after(std::time::Duration::from_millis(100));
    let c = server_client(&server);
    assert_eq!(c.resume_point(&keys, &chunk).await.unwrap(), 0);
    // (Building on the last 64 KiB only, so the refused body is small enough to be read
    // before the answer, which curl then reports.)
    let from = chunk.data.len() as u64 - 64 * 1024;
    let status = curl_status_put_from(&server, &keys, &chunk, from, dir.path());
    assert_eq!(status, ("409".to_string(), "partial_gone".to_string()));
    // Nothing half-stored: the chunk goes whole and the upload completes intact.
    assert!(!c.put_chunk(&keys, &chunk, 0).await.unwrap().duplicate);
    let root =
        uplink_proto::merkle::root_of([(0, chunk.data.len() as u64, &chunk.sha256)]).unwrap();
    c.complete(&created.upload_id, &root, None)
        .await
        .expect("complete");
    assert_eq!(std::fs::read(server.object("b.bin")).unwrap(), chunk.data);
}

/// A `curl` PUT of the chunk's bytes from `from` on: (HTTP status, error code).
fn curl_status_put_from(
    server: &Server,
    keys: &SessionKeys,
    chunk: &ChunkPayload,
    from: u64,
    dir: &std::path::Path,
) -> (String, String) {
    let out = curl_chunk_put(server, keys, chunk, from, &[], dir);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status.to_string(), code)
}
