//! Compressible chunks travel LZ4-compressed and arrive byte-identical; incompressible ones
//! travel raw. The server verifies the raw bytes, so a body that does not decode to them
//! is refused and nothing of it is stored.

use std::process::Command;

use bytes::Bytes;
use uplink_e2e::*;
use uplink_proto::integrity;
use uplink_proto::wire::CreateUpload;
use uplinkd::server_api::ChunkPayload;

const MIB: u64 = 1 << 20;

#[test]
fn compressible_files_go_lz4_and_incompressible_ones_raw_and_all_arrive_intact() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let daemon = Daemon::start(dir.path(), &server);
    let cloud = dir.path().join("cloud.ply");
    point_cloud_file(&cloud, 48 * MIB);
    let small = dir.path().join("depth.txt");
    point_cloud_file(&small, MIB);
    let noise = dir.path().join("photo.heic");
    random_file(&noise, 24 * MIB);

    for (file, compressible) in [(&cloud, true), (&small, true), (&noise, false)] {
        let size = std::fs::metadata(file).unwrap().len();
        let record = send_wait(&daemon.socket, file);
        let name = file.file_name().unwrap().to_str().unwrap();
        assert_eq!(record["state"], "completed", "{name}: {record}");
        assert_eq!(
            record["server_sha256"],
            sha256_file(file).as_str(),
            "{name}"
        );
        assert_eq!(
            std::fs::read(server.object(name)).unwrap(),
            std::fs::read(file).unwrap(),
            "{name}: the stored object differs"
        );
        let wire = record["bytes_on_wire"].as_u64().expect("bytes_on_wire");
        let resent = record["chunks_resent"].as_u64().unwrap_or(0);
        if compressible {
            assert!(
                wire < size * 7 / 10,
                "{name}: {wire} bytes on the wire for {size} compressible bytes"
            );
        } else if resent == 0 {
            assert_eq!(wire, size, "{name}: incompressible bytes go raw");
        } else {
            assert!(wire >= size, "{name}: {wire} < {size}");
        }
    }
}

#[tokio::test]
async fn an_lz4_body_must_decode_to_exactly_the_chunk_it_claims() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let c = server_client(&server);
    let created = c
        .create(
            "job-lz4",
            &CreateUpload {
                deferred_length: false,
                size: 8192,
                name: "z.bin".into(),
                metadata: Default::default(),
                overwrite: false,
            },
        )
        .await
        .expect("create");
    let keys = c.session_keys(&created.upload_id, &created.nonce).unwrap();
    let raw = vec![b'z'; 4096];
    let d = integrity::digest(&raw);
    let chunk = ChunkPayload {
        replace: false,
        offset: 0,
        sha256: d.sha256,
        crc32c: d.crc32c,
        data: Bytes::from(raw.clone()),
        from: None,
    };
    // Not LZ4 at all.
    let garbage = Bytes::from_static(&[0xff; 64]);
    refused_with(
        c.put_chunk_shared(&keys, &chunk, Some(garbage), 0, 1).await,
        400,
        "bad_encoding",
    );
    // Valid LZ4 of other bytes (twice as many).
    let longer = lz4_flex::block::compress(&[b'z'; 8192]);
    refused_with(
        c.put_chunk_shared(&keys, &chunk, Some(longer.into()), 0, 1)
            .await,
        400,
        "bad_encoding",
    );
    // Valid LZ4 of other bytes of the same length: the hashes catch it.
    let other = lz4_flex::block::compress(&[b'y'; 4096]);
    refused_with(
        c.put_chunk_shared(&keys, &chunk, Some(other.into()), 0, 1)
            .await,
        422,
        "crc32c_mismatch",
    );
    let state = c.state(&created.upload_id).await.unwrap();
    assert_eq!(state.chunk_count, 0, "nothing of a refused body is stored");

    // The right block is stored as the raw bytes it decodes to.
    let packed = lz4_flex::block::compress(&raw);
    assert!(packed.len() < 100);
    let stored = c
        .put_chunk_shared(&keys, &chunk, Some(packed.into()), 0, 1)
        .await
        .expect("a good LZ4 chunk is stored");
    assert_eq!((stored.offset, stored.length), (0, 4096));
    let state = c.state(&created.upload_id).await.unwrap();
    assert_eq!(state.ranges, vec![[0, 4096]]);

    // An encoding the server does not take is named in a 415 (curl, a foreign client).
    let url = format!(
        "{}{}",
        server.url(),
        uplink_proto::wire::chunk_path(&created.upload_id, 4096)
    );
    let out = Command::new("curl")
        .args(["--http2", "-sS", "--max-time", "10", "--cacert"])
        .arg(&server.ca)
        .args(["-H", &format!("Authorization: Bearer {}", server.bearer())])
        .args([
            "-H",
            "Content-Encoding: gzip",
            "-X",
            "PUT",
            "--data-binary",
            "x",
        ])
        .args(["-w", "\n%{http_code}", &url])
        .output()
        .expect("curl is needed (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n415"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"code\":\"bad_encoding\""), "{text}");
}
