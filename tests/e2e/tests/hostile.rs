//! Hostile input: malformed, forged, replayed and abusive requests against the real
//! `uplink-server`, each spoken over its own TLS 1.3 connection. Every one gets its clear
//! 4xx with a stable code (or, for a broken stream, a clean reset), none stores a byte,
//! and the server keeps serving: a good upload goes through right after.
//!
//! The client is hyper's HTTP/2 client (every header and body byte chosen by the test)
//! and quinn for the HTTP/3 stream abuse.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use uplink_e2e::*;
use uplink_proto::integrity::{self, ChunkId, Credentials};
use uplink_proto::wire::{self, CreateUpload};
use uplinkd::server_api::{ChunkPayload, SessionKeys, chunk_headers};

/// HTTP/3 stream abuse, frames written by hand.
#[path = "hostile/h3.rs"]
mod h3;

const KIB: u64 = 1024;
/// The session the chunk cases aim at: two 256 KiB chunks.
const SIZE: u64 = 512 * KIB;
const HALF: u64 = 256 * KIB;

/// What a case must get back.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// This status and this error code.
    Answer(u16, &'static str),
    /// A broken stream: the server resets it, or answers 400.
    Reset,
}

/// Request headers as (name, raw value) pairs; values need not be UTF-8.
type Headers = Vec<(&'static str, Vec<u8>)>;

/// The server's answer to one request: status and error code, or the stream's error.
type Got = Result<(u16, String), String>;

/// An HTTP/2 client that opens a new TLS connection per request, so that one case's
/// connection error cannot spill into the next.
struct Raw {
    url: String,
    addr: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Raw {
    fn new(server: &Server) -> Raw {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Raw {
            url: server.url(),
            addr: server.addr.clone(),
            tls: uplinkd::transport::tls::client_config(Some(&server.ca), &[wire::ALPN_H2])
                .expect("tls"),
        }
    }

    async fn sender<B>(&self) -> hyper::client::conn::http2::SendRequest<B>
    where
        B: hyper::body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .expect("TLS");
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        sender
    }

    /// Sends one request; the answer's status and `code`.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: impl Into<Bytes>,
    ) -> Got {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        for (name, value) in headers {
            req = req.header(*name, http::HeaderValue::from_bytes(value).expect("value"));
        }
        let req = req
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let mut sender = self.sender().await;
        let answer = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
            .await
            .map_err(|_| "no answer in 20 s".to_string())?
            .map_err(|e| e.to_string())?;
        let status = answer.status().as_u16();
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        Ok((status, code))
    }
}

/// The cases tried and the ones that got something else than they should.
#[derive(Default)]
struct Tally {
    tried: usize,
    refused: usize,
    wrong: Vec<String>,
}

impl Tally {
    fn check(&mut self, case: &str, got: Got, want: Want) {
        self.tried += 1;
        let ok = match (&got, want) {
            (Ok((status, code)), Want::Answer(s, c)) => *status == s && code == c,
            (Ok((status, _)), Want::Reset) => *status == 400,
            (Err(_), Want::Reset) => true,
            (Err(_), Want::Answer(..)) => false,
        };
        if matches!(&got, Ok((s, _)) if (400..500).contains(s)) || got.is_err() {
            self.refused += 1;
        }
        if !ok {
            self.wrong
                .push(format!("{case}: got {got:?}, want {want:?}"));
        }
    }
}

fn tenant(clients: &std::path::Path, name: &str) -> Credentials {
    Credentials::from_token_file(&clients.join(format!("{name}.token"))).expect("credentials")
}

fn chunk(offset: u64, len: u64, seed: u64) -> ChunkPayload {
    let mut data = vec![0u8; len as usize];
    let mut x = 0x2545_F491_4F6C_DD1D ^ seed;
    fill_random(&mut data, &mut x);
    chunk_payload(offset, data)
}

/// The four chunk headers as the daemon sends them, as owned (name, value) pairs.
fn signed(keys: &SessionKeys, c: &ChunkPayload) -> Headers {
    chunk_headers(keys, c)
        .into_iter()
        .map(|(n, v)| (n, v.into_bytes()))
        .collect()
}

/// `headers` with `name` replaced by `value` (or removed when `None`), plus the bearer.
fn with(
    bearer: &str,
    headers: &[(&'static str, Vec<u8>)],
    name: &'static str,
    value: Option<&[u8]>,
) -> Headers {
    let mut out: Headers = headers
        .iter()
        .filter(|(n, _)| *n != name)
        .cloned()
        .collect();
    if let Some(v) = value {
        out.push((name, v.to_vec()));
    }
    out.push(("authorization", format!("Bearer {bearer}").into_bytes()));
    out
}

fn refs<'a>(h: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'a str, &'a [u8])> {
    h.iter().map(|(n, v)| (*n, v.as_slice())).collect()
}

/// The tag of `c` as if it were at `offset` with `length` bytes (a forged identity).
fn tag_for(keys: &SessionKeys, c: &ChunkPayload, offset: u64, length: u64) -> Vec<u8> {
    let tag = integrity::chunk_tag(
        &keys.key,
        &ChunkId {
            offset,
            length,
            sha256: &c.sha256,
            upload_id: &keys.upload_id,
            nonce: &keys.nonce,
        },
    );
    hex::encode(tag).into_bytes()
}

#[tokio::test]
async fn malformed_forged_and_abusive_requests_are_refused_and_nothing_is_stored() {
    use Want::*;
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
    let auth = |bearer: &str| vec![("authorization", format!("Bearer {bearer}").into_bytes())];
    let json = |bearer: &str| {
        let mut h = auth(bearer);
        h.push(("content-type", b"application/json".to_vec()));
        h
    };

    // ---- Credentials and paths ----
    let cases: Vec<(&str, Headers, &str, String, Want)> = vec![
        (
            "no credential",
            vec![],
            "GET",
            s_path.clone(),
            Answer(401, "unauthorized"),
        ),
        (
            "Basic instead of Bearer",
            vec![("authorization", b"Basic YWxpY2U6eA==".to_vec())],
            "GET",
            s_path.clone(),
            Answer(401, "unauthorized"),
        ),
        (
            "empty bearer",
            vec![("authorization", b"Bearer ".to_vec())],
            "GET",
            s_path.clone(),
            Answer(401, "unauthorized"),
        ),
        (
            "a 16 KiB bearer",
            vec![(
                "authorization",
                format!("Bearer {}", "A".repeat(16 * 1024)).into_bytes(),
            )],
            "GET",
            s_path.clone(),
            Answer(431, ""),
        ),
        (
            "a bearer that is not UTF-8",
            vec![("authorization", b"Bearer \xff\xfe".to_vec())],
            "GET",
            s_path.clone(),
            Answer(401, "unauthorized"),
        ),
        (
            "bob reads alice's upload",
            auth(&b),
            "GET",
            s_path.clone(),
            Answer(404, "unknown_upload"),
        ),
        (
            "bob deletes alice's upload",
            auth(&b),
            "DELETE",
            s_path.clone(),
            Answer(404, "unknown_upload"),
        ),
        (
            "bob lists alice's chunks",
            auth(&b),
            "GET",
            format!("{s_path}/chunks"),
            Answer(404, "unknown_upload"),
        ),
        (
            "an id that is not hex",
            auth(&a),
            "GET",
            "/v1/uploads/zz".into(),
            Answer(404, "not_found"),
        ),
        (
            "an upper-case id",
            auth(&a),
            "GET",
            format!("/v1/uploads/{}", s.upload_id.to_uppercase()),
            Answer(404, "not_found"),
        ),
        (
            "an unknown id",
            auth(&a),
            "GET",
            format!("/v1/uploads/{}", "0".repeat(32)),
            Answer(404, "unknown_upload"),
        ),
        (
            "an offset with a leading zero",
            auth(&a),
            "PUT",
            format!("{s_path}/chunks/0262144"),
            Answer(404, "not_found"),
        ),
        (
            "a negative offset",
            auth(&a),
            "PUT",
            format!("{s_path}/chunks/-1"),
            Answer(404, "not_found"),
        ),
        (
            "an offset past u64",
            auth(&a),
            "PUT",
            format!("{s_path}/chunks/99999999999999999999999"),
            Answer(404, "not_found"),
        ),
        (
            "a path past the chunk",
            auth(&a),
            "PUT",
            format!("{c1_path}/x"),
            Answer(404, "not_found"),
        ),
        (
            "an unknown path",
            auth(&a),
            "GET",
            "/v2/uploads".into(),
            Answer(404, "not_found"),
        ),
        (
            "PATCH on uploads",
            auth(&a),
            "PATCH",
            wire::PATH_UPLOADS.into(),
            Answer(405, "method_not_allowed"),
        ),
        (
            "DELETE on a chunk",
            auth(&a),
            "DELETE",
            c1_path.clone(),
            Answer(405, "method_not_allowed"),
        ),
        (
            "POST on ping",
            vec![],
            "POST",
            wire::PATH_PING.into(),
            Answer(405, "method_not_allowed"),
        ),
        (
            "an object name climbing out",
            auth(&a),
            "PUT",
            "/v1/objects/..%2Fetc%2Fpasswd".into(),
            Answer(400, "bad_name"),
        ),
        (
            "a hidden object name",
            auth(&a),
            "PUT",
            "/v1/objects/.hidden".into(),
            Answer(400, "bad_name"),
        ),
        (
            "an empty object name",
            auth(&a),
            "PUT",
            "/v1/objects/".into(),
            Answer(400, "bad_name"),
        ),
        (
            "a 256-byte object name",
            auth(&a),
            "PUT",
            format!("/v1/objects/{}", "n".repeat(256)),
            Answer(400, "bad_name"),
        ),
        (
            "the chunk list with a bad query",
            auth(&a),
            "GET",
            format!("{s_path}/chunks?from=abc"),
            Answer(400, "bad_request"),
        ),
        (
            "the chunk list with an unknown key",
            auth(&a),
            "GET",
            format!("{s_path}/chunks?drop=1"),
            Answer(400, "bad_request"),
        ),
    ];
    for (case, headers, method, path, want) in cases {
        let got = raw.send(method, &path, &refs(&headers), Bytes::new()).await;
        t.check(case, got, want);
    }

    // ---- Create ----
    let big_meta = format!(
        "{{\"size\":10,\"name\":\"m.bin\",\"metadata\":{{\"k\":\"{}\"}}}}",
        "x".repeat(70 * 1024)
    );
    let creates: Vec<(&str, String, Want)> = vec![
        (
            "create: not JSON",
            "size=10".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: empty body",
            String::new(),
            Answer(400, "bad_request"),
        ),
        (
            "create: truncated JSON",
            "{\"size\":10,\"name\":\"t".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: size is a string",
            "{\"size\":\"ten\",\"name\":\"t.bin\"}".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: negative size",
            "{\"size\":-1,\"name\":\"t.bin\"}".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: size 0",
            "{\"size\":0,\"name\":\"t.bin\"}".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: size past the largest file",
            format!(
                "{{\"size\":{},\"name\":\"t.bin\"}}",
                wire::MAX_FILE_SIZE + 1
            ),
            Answer(400, "bad_request"),
        ),
        (
            "create: size past u64",
            "{\"size\":18446744073709551616,\"name\":\"t.bin\"}".into(),
            Answer(400, "bad_request"),
        ),
        (
            "create: a name climbing out",
            "{\"size\":10,\"name\":\"../../etc/passwd\"}".into(),
            Answer(400, "bad_name"),
        ),
        (
            "create: a name with a NUL",
            "{\"size\":10,\"name\":\"a\\u0000b\"}".into(),
            Answer(400, "bad_name"),
        ),
        (
            "create: 70 KiB of metadata",
            big_meta,
            Answer(413, "body_too_large"),
        ),
        (
            "create: JSON nested 10,000 deep",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            Answer(400, "bad_request"),
        ),
    ];
    for (case, body, want) in creates {
        let got = raw
            .send("POST", wire::PATH_UPLOADS, &refs(&json(&a)), body)
            .await;
        t.check(case, got, want);
    }
    // The same idempotency key with another body: a replay with altered bytes.
    let mut keyed = json(&a);
    keyed.push((wire::HDR_IDEMPOTENCY_KEY, b"hostile-key-1".to_vec()));
    let first = raw
        .send(
            "POST",
            wire::PATH_UPLOADS,
            &refs(&keyed),
            "{\"size\":10,\"name\":\"k.bin\"}",
        )
        .await;
    assert!(matches!(first, Ok((201, _))), "a keyed create: {first:?}");
    let got = raw
        .send(
            "POST",
            wire::PATH_UPLOADS,
            &refs(&keyed),
            "{\"size\":11,\"name\":\"k.bin\"}",
        )
        .await;
    t.check(
        "create: the key again with another size",
        got,
        Answer(409, "idempotency_mismatch"),
    );

    // ---- Chunk PUTs at S's second chunk ----
    let good = signed(&keys, &c1);
    let body = c1.data.clone();
    let mut flipped = c1.data.to_vec();
    flipped[1000] ^= 0x20;
    let flipped = Bytes::from(flipped);
    let forged_offset = tag_for(&keys, &c1, 0, HALF);
    let d_signed = signed(&d_keys, &chunk(HALF, HALF, 2));
    let d_tag = d_signed
        .iter()
        .find(|(n, _)| *n == wire::HDR_CHUNK_HMAC)
        .map(|(_, v)| v.clone())
        .expect("tag");
    let h = |name: &'static str, value: Option<&[u8]>| with(&a, &good, name, value);
    let mut too_large = h(wire::HDR_CHUNK_LENGTH, Some(b"33554433"));
    too_large.retain(|(n, _)| *n != wire::HDR_CHUNK_HMAC);
    too_large.push((wire::HDR_CHUNK_HMAC, tag_for(&keys, &c1, HALF, 33_554_433)));
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
            h(wire::HDR_CHUNK_HMAC, Some(&tag_for(&keys, &c1, SIZE, HALF))),
            wire::chunk_path(&s.upload_id, SIZE),
            body.clone(),
            Answer(416, "out_of_range"),
        ),
        (
            "chunk: at offset u64::MAX",
            h(
                wire::HDR_CHUNK_HMAC,
                Some(&tag_for(&keys, &c1, u64::MAX, HALF)),
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
            with(&b, &good, "", None),
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
            &refs(&auth(&a)),
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
            &refs(&with(&a, &signed(&keys, &overlap), "", None)),
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
            &refs(&with(&a, &signed(&keys, &altered), "", None)),
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
                &a,
                &signed(&keys, &altered),
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
        let got = raw.send("POST", &complete, &refs(&json(&a)), body).await;
        t.check(case, got, want);
    }
    let got = raw
        .send(
            "POST",
            &format!("{}/complete", wire::upload_path(&d.upload_id)),
            &refs(&json(&a)),
            format!("{{\"merkle_root\":\"{}\"}}", "0".repeat(64)),
        )
        .await;
    t.check(
        "complete: a deferred upload naming no size",
        got,
        Answer(400, "bad_request"),
    );

    // ---- Whole objects ----
    let mut sha_bad = auth(&a);
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
    let mut sha_malformed = auth(&a);
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
    let mut short = auth(&a);
    short.push(("content-length", b"200000".to_vec()));
    let got = raw
        .send("PUT", "/v1/objects/o.bin", &refs(&short), vec![7u8; 1000])
        .await;
    t.check("object: a body shorter than its Content-Length", got, Reset);

    // ---- Streams broken off ----
    // A body broken off by RST_STREAM: the chunk is not stored (its first bytes may be
    // kept aside for a resume, never acknowledged).
    abrupt_reset(&raw, &a, &keys, &c1).await;
    t.tried += 1;
    t.refused += 1;
    let after = api.state(&s.upload_id).await.expect("S state");
    assert_eq!(after.chunk_count, 1, "a reset chunk was stored: {after:?}");
    h3::abuse(&server, &mut t).await;

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
