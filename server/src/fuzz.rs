//! Fuzz targets of the wire protocol as the server takes it: whole requests (method,
//! path, headers, body) through the real router and store, in process. Run by
//! `uplink_fuzz::fuzz`; see its docs for the budget.
//!
//! Two contracts: every request gets a clear answer (never a 5xx, never a panic; an
//! error carries a stable code), and a chunk the server acknowledges is stored exactly:
//! the bytes at its range hash to the SHA-256 its signed headers declared — including
//! chunks whose signature is right but whose body, length, encoding or hash is not.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use uplink_fuzz::{fuzz, mutated_text_up_to, mutated_up_to, proptest};
use uplink_proto::integrity::{self, ChunkId, Credentials};
use uplink_proto::wire::{self, ErrorBody, UploadCreated};

use crate::api::{self, App};
use crate::clients::{ClientSource, Clients};
use crate::limits::{Budget, Connections, Limits};
use crate::store::{Quota, Store};

/// The fixed-size upload's length: one chunk, below the smallest chunk size.
const FIXED_SIZE: u64 = 70_000;

struct Harness {
    rt: tokio::runtime::Runtime,
    app: Arc<App>,
    dir: tempfile::TempDir,
    credentials: Credentials,
    fixed: UploadCreated,
    growing: UploadCreated,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = dir.path().join("token");
        uplink_proto::integrity::write_private_file(&token, b"fuzz-secret").expect("token");
        let source = ClientSource::TokenFile(token.clone());
        let clients = Clients::load(&source).expect("clients");
        let credentials = Credentials::from_token_file(&token).expect("credentials");
        // No reservation and a quota: fuzzed creates must not fill the disk.
        let store = Store::open(&dir.path().join("data"), false)
            .expect("store")
            .reserving_space(false)
            .with_quota(Quota {
                bytes: Some(1 << 30),
                sessions: Some(64),
            });
        let limits = Limits::default();
        let app = Arc::new(App {
            store,
            clients: RwLock::new(Arc::new(clients)),
            client_source: source,
            alt_svc: None,
            buffered: Budget::new(limits.max_buffered),
            connections: Connections::new(limits.max_connections),
            limits,
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut h = Harness {
            rt,
            app,
            dir,
            credentials,
            fixed: placeholder(),
            growing: placeholder(),
        };
        h.fixed = h.create(&format!(r#"{{"size":{FIXED_SIZE},"name":"fixed.bin"}}"#));
        h.growing = h.create(r#"{"size":0,"deferred_length":true,"name":"growing.bin"}"#);
        h
    }

    fn create(&self, json: &str) -> UploadCreated {
        let (status, body) = self.send(self.request(
            Method::POST,
            wire::PATH_UPLOADS,
            &[],
            json.as_bytes().to_vec(),
        ));
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).expect("created")
    }

    /// A request with the client's bearer credential and `headers`.
    fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, Vec<u8>)],
        body: Vec<u8>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder().method(method).uri(path);
        req = req.header(
            wire::HDR_AUTHORIZATION,
            format!("Bearer {}", self.credentials.bearer()),
        );
        for (name, value) in headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(value),
            ) {
                req = req.header(n, v);
            }
        }
        req.body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }

    fn send(&self, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
        self.rt.block_on(async {
            let resp = api::handle(Arc::clone(&self.app), req).await;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (status, body)
        })
    }

    /// The stored bytes of `upload` at `[offset, offset + len)`.
    fn stored(&self, upload: &UploadCreated, offset: u64, len: u64) -> Vec<u8> {
        let part = self
            .dir
            .path()
            .join("data/sessions")
            .join(&upload.upload_id)
            .join("data.part");
        // One pread of the range: a growing upload's part file may be sparse and huge.
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len as usize];
        match std::fs::File::open(part).and_then(|f| f.read_exact_at(&mut buf, offset)) {
            Ok(()) => buf,
            Err(_) => Vec::new(),
        }
    }

    /// After fuzzing: the server still makes uploads, answers for them, and stores a good
    /// object. (The fuzzing may have deleted its own uploads: a DELETE is a request too.)
    fn still_serves(&self) {
        // A long run fills the tenant's quota with fuzzed uploads: the client deletes them
        // (as a real one would), and then the quota has room again.
        let dirs = std::fs::read_dir(self.dir.path().join("data/sessions"));
        for entry in dirs.into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let req = self.request(Method::DELETE, &wire::upload_path(&id), &[], Vec::new());
            let (status, _) = self.send(req);
            assert!(
                status.is_success() || status == StatusCode::NOT_FOUND,
                "{status}"
            );
        }
        let fresh = self.create(r#"{"size":5,"name":"fresh.bin"}"#);
        let (status, _) = self.send(self.request(
            Method::GET,
            &wire::upload_path(&fresh.upload_id),
            &[],
            Vec::new(),
        ));
        assert_eq!(status, StatusCode::OK);
        let body = b"after the fuzzing".to_vec();
        let (status, answer) = self.send(self.request(
            Method::PUT,
            &wire::object_path("after.bin"),
            &[],
            body.clone(),
        ));
        assert_eq!(status, StatusCode::CREATED, "{answer:?}");
        let stored = std::fs::read(self.dir.path().join("data/objects/after.bin"));
        assert_eq!(stored.ok(), Some(body));
    }
}

fn placeholder() -> UploadCreated {
    UploadCreated {
        upload_id: String::new(),
        nonce: String::new(),
        expires_at: 0,
        sha256_chain: false,
    }
}

/// A refusal must say what went wrong with a stable code; a 5xx is the server's fault.
fn check_answer(status: StatusCode, body: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        status.as_u16() < 500,
        "{status}: {}",
        String::from_utf8_lossy(body)
    );
    if status.as_u16() >= 400 {
        let err: ErrorBody = serde_json::from_slice(body)
            .map_err(|e| TestCaseError::fail(format!("{status} without an error body: {e}")))?;
        prop_assert!(
            !err.code.is_empty()
                && err
                    .code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "code {:?}",
            err.code
        );
    }
    Ok(())
}

const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS"];

const HEADERS: &[&str] = &[
    wire::HDR_IDEMPOTENCY_KEY,
    wire::HDR_CHUNK_LENGTH,
    wire::HDR_CHUNK_SHA256,
    wire::HDR_CHUNK_CRC32C,
    wire::HDR_CHUNK_HMAC,
    wire::HDR_CHUNK_RESUME_FROM,
    wire::HDR_CHUNK_REPLACE,
    wire::HDR_OVERWRITE,
    wire::HDR_CONTENT_SHA256,
    wire::HDR_CONTENT_ENCODING,
    "content-length",
    "content-type",
];

#[test]
fn fuzz_every_request_gets_a_clear_answer() {
    let h = Harness::new();
    let (fixed, growing) = (h.fixed.upload_id.clone(), h.growing.upload_id.clone());
    let paths = [
        wire::PATH_UPLOADS.to_string(),
        wire::upload_path(&fixed),
        wire::chunk_path(&fixed, 0),
        wire::chunk_resume_path(&fixed, 0),
        wire::chunk_page_path(&growing, 0, 10),
        wire::complete_path(&fixed),
        wire::complete_path(&growing),
        wire::object_path("scan.ply"),
        wire::PATH_PING.to_string(),
    ];
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let values = [
        "0",
        "70000",
        &"ab".repeat(32)[..],
        "0badc0de",
        "lz4",
        "1",
        "application/json",
        "key-1",
    ];
    let bodies = vec![
        br#"{"size":1000,"name":"a.bin","metadata":{"k":"v"}}"#.to_vec(),
        br#"{"size":0,"deferred_length":true,"name":"g.bin","overwrite":true}"#.to_vec(),
        format!(r#"{{"merkle_root":"{}","size":70000}}"#, "00".repeat(32)).into_bytes(),
        vec![7u8; 300],
        Vec::new(),
    ];
    let header = (
        proptest::sample::select(HEADERS),
        mutated_text_up_to(&values, 4).prop_map(String::into_bytes),
    );
    let request = (
        proptest::sample::select(METHODS),
        mutated_text_up_to(&paths, 3),
        proptest::collection::vec(header, 0..6),
        mutated_up_to(bodies, 4),
    );
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, u64>::new());
    fuzz(
        "server_requests",
        request,
        |(method, path, headers, body)| {
            let Ok(method) = Method::from_bytes(method.as_bytes()) else {
                return Ok(());
            };
            // A path the http crate will not take as a URI never reaches a server.
            if path.parse::<http::Uri>().is_err() {
                return Ok(());
            }
            let headers: Vec<(String, Vec<u8>)> = headers
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            let (status, answer) = h.send(h.request(method, &path, &headers, body));
            *statuses.borrow_mut().entry(status.as_u16()).or_default() += 1;
            check_answer(status, &answer)
        },
    );
    eprintln!(
        "fuzz server_requests: answers by status {:?}",
        statuses.borrow()
    );
    h.still_serves();
}

/// A signed chunk PUT: what the client declares, and the body it sends.
#[derive(Debug, Clone)]
struct SignedChunk {
    growing: bool,
    offset: u64,
    raw: Vec<u8>,
    /// Declared length: the raw length, or another.
    length: u64,
    lz4: bool,
    /// Edits to the body after encoding (an LZ4 block broken in transit).
    body_edits: Vec<u8>,
    /// Declare the hash of other bytes.
    wrong_sha: bool,
    wrong_crc: bool,
}

fn signed_chunk() -> impl Strategy<Value = SignedChunk> {
    let seeds = vec![
        (0..FIXED_SIZE)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
        vec![0u8; 300_000],
        b"short".to_vec(),
    ];
    // Distinct slots for the growing upload, so chunks do not all collide at 0.
    let offset = prop_oneof![
        4 => (0u64..4000).prop_map(|i| i * 300_000),
        1 => Just(1u64),
        1 => Just(262_144u64),
        1 => Just(FIXED_SIZE),
        1 => Just(wire::MAX_FILE_SIZE - 5),
        1 => any::<u64>(),
    ];
    let length_delta = prop_oneof![6 => Just(0i64), 1 => -2i64..3, 1 => any::<i64>()];
    let body_edits = prop_oneof![
        3 => Just(Vec::new()),
        1 => proptest::collection::vec(any::<u8>(), 1..3),
    ];
    (
        prop_oneof![3 => Just(true), 1 => Just(false)],
        offset,
        mutated_up_to(seeds, 4),
        length_delta,
        any::<bool>(),
        body_edits,
        prop_oneof![9 => Just(false), 1 => Just(true)],
        prop_oneof![9 => Just(false), 1 => Just(true)],
    )
        .prop_map(
            |(growing, offset, raw, delta, lz4, body_edits, wrong_sha, wrong_crc)| SignedChunk {
                growing,
                offset,
                length: (raw.len() as u64).wrapping_add_signed(delta),
                raw,
                lz4,
                body_edits,
                wrong_sha,
                wrong_crc,
            },
        )
}

#[test]
fn fuzz_an_acknowledged_chunk_is_stored_exactly_as_declared() {
    let h = Harness::new();
    let acked = std::cell::Cell::new(0u64);
    fuzz("server_signed_chunks", signed_chunk(), |c| {
        let upload = if c.growing { &h.growing } else { &h.fixed };
        let digest = integrity::digest(&c.raw);
        let sha = match c.wrong_sha {
            true => integrity::sha256(b"other bytes"),
            false => digest.sha256,
        };
        let crc = if c.wrong_crc {
            digest.crc32c ^ 1
        } else {
            digest.crc32c
        };
        let nonce = hex::decode(&upload.nonce).unwrap_or_default();
        let key = integrity::session_key(h.credentials.chunk_secret(), &nonce, &upload.upload_id);
        let tag = integrity::chunk_tag(
            &key,
            &ChunkId {
                offset: c.offset,
                length: c.length,
                sha256: &sha,
                upload_id: &upload.upload_id,
                nonce: &nonce,
            },
        );
        let mut body = match c.lz4 {
            true => lz4_flex::block::compress(&c.raw),
            false => c.raw.clone(),
        };
        for (i, &b) in c.body_edits.iter().enumerate() {
            if !body.is_empty() {
                let at = (usize::from(b) * 7919 + i) % body.len();
                body[at] ^= b | 1;
            }
        }
        let mut headers = vec![
            (
                wire::HDR_CHUNK_LENGTH.to_string(),
                c.length.to_string().into_bytes(),
            ),
            (
                wire::HDR_CHUNK_SHA256.to_string(),
                hex::encode(sha).into_bytes(),
            ),
            (
                wire::HDR_CHUNK_CRC32C.to_string(),
                format!("{crc:08x}").into_bytes(),
            ),
            (
                wire::HDR_CHUNK_HMAC.to_string(),
                hex::encode(tag).into_bytes(),
            ),
        ];
        if c.lz4 {
            headers.push((wire::HDR_CONTENT_ENCODING.to_string(), b"lz4".to_vec()));
        }
        let path = wire::chunk_path(&upload.upload_id, c.offset);
        let (status, answer) = h.send(h.request(Method::PUT, &path, &headers, body));
        check_answer(status, &answer)?;
        if status.is_success() {
            // The server said it holds this chunk: its bytes hash to what was declared.
            let stored = h.stored(upload, c.offset, c.length);
            prop_assert_eq!(stored.len() as u64, c.length, "short part file");
            prop_assert_eq!(<[u8; 32]>::from(Sha256::digest(&stored)), sha);
            acked.set(acked.get() + 1);
        }
        Ok(())
    });
    let acknowledged = acked.get();
    eprintln!(
        "fuzz server_signed_chunks: {acknowledged} chunks acknowledged, each checked on disk"
    );
    assert!(
        acknowledged > 0,
        "no case reached a stored chunk: the target tests nothing"
    );
    h.still_serves();
}
