//! Hostile chunk PUTs at session S's second chunk: forged, malformed, oversized,
//! misplaced, and replays with other bytes.

use bytes::Bytes;
use uplink_proto::wire;

use super::client::*;
use super::{Fixture, auth};

/// Chunk PUTs aimed at S's second chunk that must all be refused, then overlaps of and
/// replays with other bytes at the first, stored one.
pub async fn chunk_puts(f: &Fixture, t: &mut Tally) {
    use Want::*;
    let Fixture {
        raw,
        a,
        b,
        s,
        bs,
        keys,
        d_keys,
        c1,
        c1_path,
        ..
    } = f;
    // ---- Chunk PUTs at S's second chunk ----
    let good = signed(keys, c1);
    let body = c1.data.clone();
    let mut flipped = c1.data.to_vec();
    flipped[1000] ^= 0x20;
    let flipped = Bytes::from(flipped);
    let forged_offset = tag_for(keys, c1, 0, HALF);
    let d_signed = signed(d_keys, &chunk(HALF, HALF, 2));
    let d_tag = d_signed
        .iter()
        .find(|(n, _)| *n == wire::HDR_CHUNK_HMAC)
        .map(|(_, v)| v.clone())
        .expect("tag");
    let h = |name: &'static str, value: Option<&[u8]>| with(a, &good, name, value);
    let mut too_large = h(wire::HDR_CHUNK_LENGTH, Some(b"33554433"));
    too_large.retain(|(n, _)| *n != wire::HDR_CHUNK_HMAC);
    too_large.push((wire::HDR_CHUNK_HMAC, tag_for(keys, c1, HALF, 33_554_433)));
    let puts: Vec<(&str, Headers, String, Bytes, Want)> = vec![
        (
            "chunk: no X-Chunk-Length",
            h(wire::HDR_CHUNK_LENGTH, None),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: no X-Chunk-SHA256",
            h(wire::HDR_CHUNK_SHA256, None),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: no X-Chunk-CRC32C",
            h(wire::HDR_CHUNK_CRC32C, None),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: no X-Chunk-HMAC",
            h(wire::HDR_CHUNK_HMAC, None),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: length not a number",
            h(wire::HDR_CHUNK_LENGTH, Some(b"lots")),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: negative length",
            h(wire::HDR_CHUNK_LENGTH, Some(b"-262144")),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: length past u64",
            h(wire::HDR_CHUNK_LENGTH, Some(b"18446744073709551616")),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: length not UTF-8",
            h(wire::HDR_CHUNK_LENGTH, Some(b"26\xff")),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: 63 hex digits of SHA-256",
            h(wire::HDR_CHUNK_SHA256, Some(&[b'a'; 63])),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: SHA-256 not hex",
            h(wire::HDR_CHUNK_SHA256, Some(&[b'z'; 64])),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: CRC32C not hex",
            h(wire::HDR_CHUNK_CRC32C, Some(b"xyzxyzxy")),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: CRC32C too long",
            h(wire::HDR_CHUNK_CRC32C, Some(b"0123456789")),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: HMAC not hex",
            h(wire::HDR_CHUNK_HMAC, Some(b"not-hex")),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: HMAC cut short",
            h(wire::HDR_CHUNK_HMAC, Some(b"00ff")),
            c1_path.clone(),
            body.clone(),
            Answer(401, "bad_hmac"),
        ),
        (
            "chunk: HMAC for another offset",
            h(wire::HDR_CHUNK_HMAC, Some(&forged_offset)),
            c1_path.clone(),
            body.clone(),
            Answer(401, "bad_hmac"),
        ),
        (
            "chunk: HMAC of another session",
            h(wire::HDR_CHUNK_HMAC, Some(&d_tag)),
            c1_path.clone(),
            body.clone(),
            Answer(401, "bad_hmac"),
        ),
        (
            "chunk: a length the tag does not cover",
            h(wire::HDR_CHUNK_LENGTH, Some(b"262143")),
            c1_path.clone(),
            body.slice(..262_143),
            Answer(401, "bad_hmac"),
        ),
        (
            "chunk: one byte flipped",
            h("", None),
            c1_path.clone(),
            flipped.clone(),
            Answer(422, "crc32c_mismatch"),
        ),
        (
            "chunk: X-Chunk-SHA256-From not hex",
            h(wire::HDR_CHUNK_SHA256_FROM, Some(&[b'z'; 64])),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            "chunk: X-Chunk-SHA256-From of another offset's length",
            h(wire::HDR_CHUNK_SHA256_FROM, Some(&[b'0'; 66])),
            c1_path.clone(),
            body.clone(),
            Answer(400, "bad_header"),
        ),
        (
            // Signed as a plain chunk, sent as a link: the link's digest is another.
            "chunk: a plain digest claimed as a link",
            h(
                wire::HDR_CHUNK_SHA256_FROM,
                Some(uplink_proto::chain::FileState::start().encode().as_bytes()),
            ),
            c1_path.clone(),
            body.clone(),
            Answer(422, "sha256_mismatch"),
        ),
        (
            "chunk: body shorter than declared",
            h("", None),
            c1_path.clone(),
            body.slice(..1000),
            Answer(400, "length_mismatch"),
        ),
        (
            "chunk: body longer than declared",
            h("", None),
            c1_path.clone(),
            Bytes::from([body.to_vec(), vec![0; 4096]].concat()),
            Answer(400, "length_mismatch"),
        ),
        (
            "chunk: an empty body",
            h("", None),
            c1_path.clone(),
            Bytes::new(),
            Answer(400, "length_mismatch"),
        ),
        (
            "chunk: gzip encoding",
            h(wire::HDR_CONTENT_ENCODING, Some(b"gzip")),
            c1_path.clone(),
            body.clone(),
            Answer(415, "bad_encoding"),
        ),
        (
            "chunk: lz4 that is garbage",
            h(wire::HDR_CONTENT_ENCODING, Some(b"lz4")),
            c1_path.clone(),
            Bytes::from_static(b"\xff\xff\xff\xffgarbage"),
            Answer(400, "bad_encoding"),
        ),
        (
            "chunk: lz4 that inflates past the length",
            h(wire::HDR_CONTENT_ENCODING, Some(b"lz4")),
            c1_path.clone(),
            Bytes::from(lz4_flex::block::compress(&vec![0u8; 8 << 20])),
            Answer(400, "bad_encoding"),
        ),
        (
            "chunk: past the declared size",
            h(wire::HDR_CHUNK_HMAC, Some(&tag_for(keys, c1, SIZE, HALF))),
            wire::chunk_path(&s.upload_id, SIZE),
            body.clone(),
            Answer(416, "out_of_range"),
        ),
        (
            "chunk: at offset u64::MAX",
            h(
                wire::HDR_CHUNK_HMAC,
                Some(&tag_for(keys, c1, u64::MAX, HALF)),
            ),
            wire::chunk_path(&s.upload_id, u64::MAX),
            body.clone(),
            Answer(416, "out_of_range"),
        ),
        (
            "chunk: larger than the largest chunk",
            too_large,
            c1_path.clone(),
            body.clone(),
            Answer(413, "chunk_too_large"),
        ),
        (
            "chunk: to bob's session",
            h("", None),
            wire::chunk_path(&bs.upload_id, HALF),
            body.clone(),
            Answer(404, "unknown_upload"),
        ),
        (
            "chunk: with bob's bearer",
            with(b, &good, "", None),
            c1_path.clone(),
            body.clone(),
            Answer(404, "unknown_upload"),
        ),
    ];
    for (case, headers, path, body, want) in puts {
        let got = raw.send("PUT", &path, &refs(&headers), body).await;
        t.check(case, got, want);
    }
    let got = raw
        .send(
            "POST",
            &format!("{c1_path}/resume"),
            &refs(&auth(a)),
            Bytes::new(),
        )
        .await;
    t.check(
        "chunk: resume with no headers",
        got,
        Answer(400, "bad_header"),
    );
    // Overlaps and replays with altered bytes, against the stored first chunk.
    let overlap = chunk(HALF / 2, HALF, 3);
    let got = raw
        .send(
            "PUT",
            &wire::chunk_path(&s.upload_id, HALF / 2),
            &refs(&with(a, &signed(keys, &overlap), "", None)),
            overlap.data.clone(),
        )
        .await;
    t.check(
        "chunk: overlapping the stored one",
        got,
        Answer(409, "chunk_conflict"),
    );
    let altered = chunk(0, HALF, 4);
    let got = raw
        .send(
            "PUT",
            &wire::chunk_path(&s.upload_id, 0),
            &refs(&with(a, &signed(keys, &altered), "", None)),
            altered.data.clone(),
        )
        .await;
    t.check(
        "chunk: the stored offset again with other bytes",
        got,
        Answer(409, "chunk_conflict"),
    );
    let got = raw
        .send(
            "PUT",
            &wire::chunk_path(&s.upload_id, 0),
            &refs(&with(
                a,
                &signed(keys, &altered),
                wire::HDR_CHUNK_REPLACE,
                Some(b"1"),
            )),
            altered.data.clone(),
        )
        .await;
    t.check(
        "chunk: other bytes with X-Chunk-Replace on an upload not growing",
        got,
        Answer(409, "chunk_conflict"),
    );
}
