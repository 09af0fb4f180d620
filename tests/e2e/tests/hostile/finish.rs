//! Hostile completes and whole-object PUTs, and streams broken off mid-body.

use std::time::Duration;

use bytes::Bytes;
use uplink_proto::wire;
use uplinkd::server_api::{ChunkPayload, SessionKeys, chunk_headers};

use super::client::*;
use super::{Fixture, auth, json};

/// Completes S cannot make, whole objects that do not match what they claim, and a
/// chunk whose stream is reset mid-body.
pub async fn completes_objects_and_broken_streams(f: &Fixture, t: &mut Tally) {
    use Want::*;
    let Fixture {
        raw,
        a,
        d,
        keys,
        c1,
        s_path,
        ..
    } = f;
    // ---- Complete ----
    let complete = format!("{s_path}/complete");
    let completes: Vec<(&str, String, Want)> = vec![
        (
            "complete: not JSON",
            "done".into(),
            Answer(400, "bad_request"),
        ),
        (
            "complete: merkle root not hex",
            "{\"merkle_root\":\"zz\"}".into(),
            Answer(400, "bad_request"),
        ),
        (
            "complete: with a byte range missing",
            format!("{{\"merkle_root\":\"{}\"}}", "0".repeat(64)),
            Answer(409, "incomplete"),
        ),
        (
            "complete: another size than declared",
            format!("{{\"merkle_root\":\"{}\",\"size\":7}}", "0".repeat(64)),
            Answer(409, "length_mismatch"),
        ),
    ];
    for (case, body, want) in completes {
        let got = raw.send("POST", &complete, &refs(&json(a)), body).await;
        t.check(case, got, want);
    }
    let got = raw
        .send(
            "POST",
            &format!("{}/complete", wire::upload_path(&d.upload_id)),
            &refs(&json(a)),
            format!("{{\"merkle_root\":\"{}\"}}", "0".repeat(64)),
        )
        .await;
    t.check(
        "complete: a deferred upload naming no size",
        got,
        Answer(400, "bad_request"),
    );

    // ---- Whole objects ----
    let mut sha_bad = auth(a);
    sha_bad.push((wire::HDR_CONTENT_SHA256, "0".repeat(64).into_bytes()));
    let got = raw
        .send(
            "PUT",
            "/v1/objects/o.bin",
            &refs(&sha_bad),
            vec![7u8; 100_000],
        )
        .await;
    t.check(
        "object: body not matching X-Content-SHA256",
        got,
        Answer(422, "sha256_mismatch"),
    );
    let mut sha_malformed = auth(a);
    sha_malformed.push((wire::HDR_CONTENT_SHA256, b"abc".to_vec()));
    let got = raw
        .send(
            "PUT",
            "/v1/objects/o.bin",
            &refs(&sha_malformed),
            vec![7u8; 10],
        )
        .await;
    t.check(
        "object: X-Content-SHA256 malformed",
        got,
        Answer(400, "bad_header"),
    );
    let mut short = auth(a);
    short.push(("content-length", b"200000".to_vec()));
    let got = raw
        .send("PUT", "/v1/objects/o.bin", &refs(&short), vec![7u8; 1000])
        .await;
    t.check("object: a body shorter than its Content-Length", got, Reset);

    // ---- Streams broken off ----
    // A body broken off by RST_STREAM: the chunk is not stored (its first bytes may be
    // kept aside for a resume, never acknowledged).
    abrupt_reset(raw, a, keys, c1).await;
    t.tried += 1;
    t.refused += 1;
}

/// A chunk PUT whose body is broken off after 64 KiB: the client drops the request,
/// which resets the stream.
async fn abrupt_reset(raw: &Raw, bearer: &str, keys: &SessionKeys, c: &ChunkPayload) {
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let mut req = http::Request::put(format!(
        "{}{}",
        raw.url,
        wire::chunk_path(&keys.upload_id, c.offset)
    ))
    .header("authorization", format!("Bearer {bearer}"));
    for (name, value) in chunk_headers(keys, c) {
        req = req.header(name, value);
    }
    let req = req.body(body).expect("request");
    let mut sender = raw.sender().await;
    let answer = sender.send_request(req);
    let feed = async {
        tx.send_data(c.data.slice(..64 * 1024))
            .await
            .expect("first bytes");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // The answer cannot come before the body ends; the feed ends first and both drop.
    tokio::select! {
        _ = answer => {}
        _ = feed => {}
    }
}
