//! The HTTP wire protocol between `uplinkd` and `uplink-server` (same over HTTP/2 and
//! HTTP/3): paths, header names, JSON bodies, error codes and limits. Both sides build
//! and parse requests only through these names, so they cannot drift apart.
//!
//! Every request carries `Authorization: Bearer <credential>`, where the credential is
//! derived from the token file's secret ([`crate::integrity::bearer_credential`]); the
//! secret itself and the chunk secret that keys `X-Chunk-HMAC` never travel (see
//! [`crate::integrity`]), so what a request reveals cannot forge chunk tags. Plain clients
//! get the credential from `uplink-server --token-file FILE --print-bearer`.

use serde::{Deserialize, Serialize};

/// Largest chunk the server accepts (the top speed tier).
pub const MAX_CHUNK_SIZE: u64 = 32 * 1024 * 1024;
/// Smallest chunk the daemon plans (the last chunk of a file may be shorter).
pub const MIN_CHUNK_SIZE: u64 = 256 * 1024;
/// Default chunk size.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 * 1024 * 1024;
/// Largest file uplink accepts: 100 GB.
pub const MAX_FILE_SIZE: u64 = 100_000_000_000;
/// Largest single-request object (`PUT /v1/objects/{name}`): it streams to disk, so the
/// file limit applies (a plain `curl -T` of a big file must work, if slowly).
pub const MAX_OBJECT_SIZE: u64 = MAX_FILE_SIZE;
/// Most chunk records one page of `GET /v1/uploads/{id}/chunks` carries (about 1 MB of JSON):
/// a 100 GB file in 1 MiB chunks is 100,000 records, so the list is paged, never one answer.
pub const MAX_CHUNK_PAGE: usize = 10_000;
/// Sessions expire after 7 days.
pub const SESSION_MAX_AGE_SECS: u64 = 7 * 24 * 3600;

/// `Bearer <credential>`: the derived bearer credential, never the token file's secret.
pub const HDR_AUTHORIZATION: &str = "authorization";
pub const HDR_IDEMPOTENCY_KEY: &str = "idempotency-key";
pub const HDR_CHUNK_LENGTH: &str = "x-chunk-length";
/// The chunk's digest: SHA-256 of its bytes, or with [`HDR_CHUNK_SHA256_FROM`] its link
/// digest ([`crate::chain`]).
pub const HDR_CHUNK_SHA256: &str = "x-chunk-sha256";
/// On a chunk PUT (optional): the whole file's SHA-256 state at the chunk's first byte
/// ([`crate::chain::FileState::encode`]); the chunk's digest is then a link of the file's
/// hash, and the server need not hash the file a second time.
pub const HDR_CHUNK_SHA256_FROM: &str = "x-chunk-sha256-from";
pub const HDR_CHUNK_CRC32C: &str = "x-chunk-crc32c";
pub const HDR_CHUNK_HMAC: &str = "x-chunk-hmac";
/// On a chunk PUT: the body is the chunk's bytes from this offset on; the server holds
/// the ones before (it said so in its [`ChunkResume`] answer). Not with `Content-Encoding`.
pub const HDR_CHUNK_RESUME_FROM: &str = "x-chunk-resume-from";
/// On a chunk PUT, `1`: these bytes replace the chunk the server holds at the same offset
/// and length (a growing file's header, rewritten behind the upload and named at its seal).
/// Accepted only before the upload completes; without it, other bytes there are a conflict.
pub const HDR_CHUNK_REPLACE: &str = "x-chunk-replace";
/// `X-Overwrite: 1` on `PUT /v1/objects/{name}`: replace an existing object (without it
/// an existing name answers 409 `object_exists`).
pub const HDR_OVERWRITE: &str = "x-overwrite";
/// Optional on `PUT /v1/objects/{name}`: hex SHA-256 of the whole body, checked before commit.
pub const HDR_CONTENT_SHA256: &str = "x-content-sha256";
pub const HDR_CONTENT_ENCODING: &str = "content-encoding";
pub const HDR_ALT_SVC: &str = "alt-svc";
/// `Content-Encoding: lz4` on a chunk PUT: the body is one LZ4 *block* (no frame, no size
/// prefix) that decodes to exactly `X-Chunk-Length` bytes. Length, SHA-256, CRC32C and the
/// HMAC all describe the raw bytes, so the server verifies what it stores, not what
/// travelled. The daemon compresses only chunks whose sample saves more than 10 %.
pub const CONTENT_ENCODING_LZ4: &str = "lz4";

pub const PATH_UPLOADS: &str = "/v1/uploads";
pub const PATH_PING: &str = "/v1/ping";
pub const PATH_OBJECTS: &str = "/v1/objects/";

/// ALPN of the HTTP/2 transport.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of the HTTP/3 transport (QUIC, UDP on the same port number as HTTP/2).
pub const ALPN_H3: &[u8] = b"h3";

/// `/v1/uploads/{id}`
pub fn upload_path(upload_id: &str) -> String {
    format!("{PATH_UPLOADS}/{upload_id}")
}

/// `/v1/uploads/{id}/chunks/{offset}`
pub fn chunk_path(upload_id: &str, offset: u64) -> String {
    format!("{PATH_UPLOADS}/{upload_id}/chunks/{offset}")
}

/// `/v1/uploads/{id}/chunks/{offset}/resume`: with the chunk's headers and no body, asks
/// how much of the chunk's body the server has (taking it from a request still receiving
/// it, whose connection the client lost) → [`ChunkResume`].
pub fn chunk_resume_path(upload_id: &str, offset: u64) -> String {
    format!("{PATH_UPLOADS}/{upload_id}/chunks/{offset}/resume")
}

/// `/v1/uploads/{id}/chunks?from={offset}&limit={n}`: one page of the chunk records at and
/// after `from`.
pub fn chunk_page_path(upload_id: &str, from: u64, limit: usize) -> String {
    format!("{PATH_UPLOADS}/{upload_id}/chunks?from={from}&limit={limit}")
}

/// `/v1/uploads/{id}/complete`
pub fn complete_path(upload_id: &str) -> String {
    format!("{PATH_UPLOADS}/{upload_id}/complete")
}

/// `/v1/objects/{name}`
pub fn object_path(name: &str) -> String {
    format!("{PATH_OBJECTS}{name}")
}

/// A request path of the protocol, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Ping,
    Uploads,
    Upload(&'a str),
    Chunk(&'a str, u64),
    /// How much of a chunk's body the server has (`POST …/chunks/{offset}/resume`).
    ChunkResume(&'a str, u64),
    /// The paged chunk list (`GET /v1/uploads/{id}/chunks`).
    Chunks(&'a str),
    Complete(&'a str),
    Object(&'a str),
}

/// Parses a request path; `None` for anything the protocol does not define.
pub fn parse_route(path: &str) -> Option<Route<'_>> {
    if path == PATH_PING {
        return Some(Route::Ping);
    }
    if path == PATH_UPLOADS {
        return Some(Route::Uploads);
    }
    if let Some(name) = path.strip_prefix(PATH_OBJECTS) {
        return Some(Route::Object(name));
    }
    let rest = path.strip_prefix(PATH_UPLOADS)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let id = parts.next().filter(|s| is_valid_id(s))?;
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => Some(Route::Upload(id)),
        (Some("complete"), None, _) => Some(Route::Complete(id)),
        (Some("chunks"), None, _) => Some(Route::Chunks(id)),
        (Some("chunks"), Some(off), rest @ (None | Some("resume"))) => {
            if rest.is_some() && parts.next().is_some() {
                return None;
            }
            // Canonical decimal only: "007" or "+7" would alias another chunk's URL.
            let canonical = !off.is_empty()
                && off.bytes().all(|b| b.is_ascii_digit())
                && (off.len() == 1 || !off.starts_with('0'));
            if !canonical {
                return None;
            }
            let offset = off.parse().ok()?;
            Some(match rest {
                None => Route::Chunk(id, offset),
                Some(_) => Route::ChunkResume(id, offset),
            })
        }
        _ => None,
    }
}

/// Upload ids are lower-case hex of fixed length.
pub fn is_valid_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Object names: 1..=255 bytes of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn is_valid_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Turns any file name into a valid object name (unsafe bytes become `_`).
pub fn sanitize_object_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(255)
        .collect();
    while out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push_str("upload");
    }
    out
}

/// `POST /v1/uploads`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateUpload {
    /// The file's length; 0 with `deferred_length` (not known yet).
    pub size: u64,
    /// The length is not known yet (a file still being written): chunks may go anywhere
    /// below [`MAX_FILE_SIZE`], and `complete` names the final length.
    #[serde(default)]
    pub deferred_length: bool,
    pub name: String,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Replace an object of this name if the tenant has one; without it, create (and
    /// complete) answer 409 [`code::OBJECT_EXISTS`] rather than overwrite.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overwrite: bool,
}

/// Answer to create: the session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadCreated {
    pub upload_id: String,
    /// Hex of the session nonce (HKDF salt and HMAC input).
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// The server takes chunks as links of the file's hash (`X-Chunk-SHA256-From`,
    /// [`crate::chain`]). A server that does not say so must get plain digests.
    #[serde(default)]
    pub sha256_chain: bool,
}

/// One chunk the server holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRecord {
    pub offset: u64,
    pub length: u64,
    /// The digest the chunk was sent with: hex SHA-256 of the raw bytes, or its link
    /// digest when `sha256_from` is given.
    pub sha256: String,
    /// For a chunk sent as a link of the file's hash: the state it started from, as its
    /// `X-Chunk-SHA256-From` gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_from: Option<String>,
}

/// `GET /v1/uploads/{id}`: what the server holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadState {
    pub upload_id: String,
    /// 0 while the length is deferred and the upload not completed.
    pub size: u64,
    /// Created with a deferred length: `size` is set by `complete`.
    #[serde(default)]
    pub deferred_length: bool,
    pub name: String,
    pub nonce: String,
    pub expires_at: u64,
    /// The byte ranges `[start, end)` the server holds, coalesced and in order: a
    /// resume's first question ("what is stored?") in a few numbers however many chunks
    /// there are. The chunks themselves (boundaries and hashes) are paged separately.
    pub ranges: Vec<[u64; 2]>,
    /// How many verified chunks the server holds.
    pub chunk_count: u64,
    pub received_bytes: u64,
    /// Set once complete succeeded.
    pub completed: Option<UploadCompleted>,
    /// Chunk PUT requests the server has begun to receive for this upload (since it started).
    pub chunk_puts: u64,
    /// Of those, PUTs of a chunk it already held (replays: no-ops).
    pub duplicate_puts: u64,
    /// As in [`UploadCreated::sha256_chain`].
    #[serde(default)]
    pub sha256_chain: bool,
}

impl UploadState {
    /// The state of a session that holds nothing yet.
    pub fn empty(upload_id: &str, size: u64) -> UploadState {
        UploadState {
            upload_id: upload_id.to_string(),
            size,
            deferred_length: false,
            name: String::new(),
            nonce: String::new(),
            expires_at: 0,
            ranges: Vec::new(),
            chunk_count: 0,
            received_bytes: 0,
            completed: None,
            chunk_puts: 0,
            duplicate_puts: 0,
            sha256_chain: false,
        }
    }
}

/// Query of `GET /v1/uploads/{id}/chunks`: records with `offset >= from`, at most `limit`
/// (default and ceiling [`MAX_CHUNK_PAGE`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkPageQuery {
    #[serde(default)]
    pub from: u64,
    pub limit: Option<usize>,
}

impl ChunkPageQuery {
    /// Parses `from=N&limit=M` (either may be absent); `None` for anything else.
    pub fn parse(query: Option<&str>) -> Option<ChunkPageQuery> {
        let mut q = ChunkPageQuery::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=')?;
            match k {
                "from" => q.from = v.parse().ok()?,
                "limit" => q.limit = Some(v.parse().ok()?),
                _ => return None,
            }
        }
        Some(q)
    }

    /// The page size to serve: the asked limit, within 1..=[`MAX_CHUNK_PAGE`].
    pub fn limit(&self) -> usize {
        self.limit
            .unwrap_or(MAX_CHUNK_PAGE)
            .clamp(1, MAX_CHUNK_PAGE)
    }
}

/// One page of the chunk list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkPage {
    /// In offset order, all with `offset >= from`.
    pub chunks: Vec<ChunkRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next_from: Option<u64>,
}

/// `POST /v1/uploads/{id}/complete`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompleteUpload {
    /// Hex Merkle root (RFC 6962) over all chunks.
    pub merkle_root: String,
    /// The final length: required for an upload created with a deferred length (it seals
    /// it); otherwise optional, and then it must equal the declared size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Answer to complete (and to a single-request object PUT).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadCompleted {
    /// Hex SHA-256 of the assembled file.
    pub sha256: String,
    pub size: u64,
    /// Where the object lives: `/v1/objects/{name}`.
    pub location: String,
}

/// Answer to a chunk PUT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkStored {
    pub offset: u64,
    pub length: u64,
    /// True when the server already held this exact chunk (replay).
    pub duplicate: bool,
}

/// Answer to `POST …/chunks/{offset}/resume`: the server holds the first `received` bytes
/// of this chunk's body (0: none, send it whole) for a PUT with `X-Chunk-Resume-From`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkResume {
    pub offset: u64,
    pub length: u64,
    pub received: u64,
}

/// Every error body: a stable machine code and a sentence for people.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// Stable error codes of the wire protocol.
pub mod code {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const BAD_HEADER: &str = "bad_header";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const BAD_HMAC: &str = "bad_hmac";
    pub const NOT_FOUND: &str = "not_found";
    pub const UNKNOWN_UPLOAD: &str = "unknown_upload";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const CHUNK_CONFLICT: &str = "chunk_conflict";
    pub const CHUNK_IN_PROGRESS: &str = "chunk_in_progress";
    /// A resumed chunk PUT built on bytes the server no longer holds: send it whole.
    pub const PARTIAL_GONE: &str = "partial_gone";
    pub const IDEMPOTENCY_MISMATCH: &str = "idempotency_mismatch";
    pub const ALREADY_COMPLETED: &str = "already_completed";
    pub const CHUNK_TOO_LARGE: &str = "chunk_too_large";
    /// 413: a JSON request body (create, complete) past its limit.
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const OUT_OF_RANGE: &str = "out_of_range";
    pub const LENGTH_MISMATCH: &str = "length_mismatch";
    /// A `Content-Encoding` the server does not take (415), or an LZ4 body that does not
    /// decode to exactly `X-Chunk-Length` bytes (400).
    pub const BAD_ENCODING: &str = "bad_encoding";
    pub const CRC32C_MISMATCH: &str = "crc32c_mismatch";
    pub const SHA256_MISMATCH: &str = "sha256_mismatch";
    pub const INCOMPLETE: &str = "incomplete";
    pub const MERKLE_MISMATCH: &str = "merkle_mismatch";
    pub const BAD_NAME: &str = "bad_name";
    pub const EXPIRED: &str = "expired";
    /// 425: a request that must not be replayed (complete, delete, ...) arrived in TLS early
    /// data (0-RTT) before the handshake finished; retry it once the connection is up.
    pub const TOO_EARLY: &str = "too_early";
    pub const DISK_FULL: &str = "disk_full";
    /// 409: the tenant already has an object of this name and the request did not ask to
    /// overwrite it.
    pub const OBJECT_EXISTS: &str = "object_exists";
    /// 413: the tenant's byte quota (objects stored plus uploads open) would be exceeded.
    pub const QUOTA_EXCEEDED: &str = "quota_exceeded";
    /// 429 with `Retry-After`: the tenant has as many uploads open as its quota allows;
    /// one finishing makes room.
    pub const TOO_MANY_SESSIONS: &str = "too_many_sessions";
    /// 503 with `Retry-After`: the server (or this connection) holds as many request
    /// bytes in memory as it may; the same request will pass shortly.
    pub const BUSY: &str = "busy";
    /// 503 with `Retry-After`: the server has as many connections open as it may.
    pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
    /// 408: the request body sent nothing for the server's idle time; send it again.
    pub const BODY_TIMEOUT: &str = "body_timeout";
    /// 503 with `Retry-After`: the server is short of a resource that frees up by itself
    /// (open files); the same request will succeed later.
    pub const UNAVAILABLE: &str = "unavailable";
    pub const INTERNAL: &str = "internal";
}

/// `Retry-After` (seconds) on 503 answers.
pub const HDR_RETRY_AFTER: &str = "retry-after";

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn routes_round_trip_through_the_path_builders() {
        assert_eq!(parse_route(&upload_path(ID)), Some(Route::Upload(ID)));
        assert_eq!(parse_route(&chunk_path(ID, 0)), Some(Route::Chunk(ID, 0)));
        assert_eq!(
            parse_route(&chunk_path(ID, 4194304)),
            Some(Route::Chunk(ID, 4194304))
        );
        assert_eq!(parse_route(&complete_path(ID)), Some(Route::Complete(ID)));
        assert_eq!(
            parse_route(&chunk_resume_path(ID, 8)),
            Some(Route::ChunkResume(ID, 8))
        );
        let page = chunk_page_path(ID, 7, 20);
        let (path, query) = page.split_once('?').unwrap_or((&page, ""));
        assert_eq!(parse_route(path), Some(Route::Chunks(ID)));
        let q = ChunkPageQuery::parse(Some(query));
        assert_eq!(q.map(|q| (q.from, q.limit())), Some((7, 20)));
        assert_eq!(parse_route(PATH_UPLOADS), Some(Route::Uploads));
        assert_eq!(parse_route(PATH_PING), Some(Route::Ping));
        assert_eq!(
            parse_route(&object_path("a.ply")),
            Some(Route::Object("a.ply"))
        );
    }

    #[test]
    fn non_canonical_or_foreign_paths_are_refused() {
        for p in [
            format!("{PATH_UPLOADS}/{ID}/chunks/007"),
            format!("{PATH_UPLOADS}/{ID}/chunks/+7"),
            format!("{PATH_UPLOADS}/{ID}/chunks/"),
            format!("{PATH_UPLOADS}/{ID}/chunks/1/x"),
            format!("{PATH_UPLOADS}/{ID}/chunks/1/resume/x"),
            format!("{PATH_UPLOADS}/{ID}/chunks/01/resume"),
            format!("{PATH_UPLOADS}/../etc"),
            format!("{PATH_UPLOADS}/{}", ID.to_uppercase()),
            "/v2/uploads".to_string(),
        ] {
            assert_eq!(parse_route(&p), None, "{p}");
        }
    }

    #[test]
    fn chunk_page_queries_are_bounded_and_strict() {
        let q = |s: &str| ChunkPageQuery::parse(Some(s)).map(|q| (q.from, q.limit()));
        assert_eq!(q(""), Some((0, MAX_CHUNK_PAGE)));
        assert_eq!(q("limit=0"), Some((0, 1)));
        assert_eq!(q("from=5&limit=999999999"), Some((5, MAX_CHUNK_PAGE)));
        for bad in ["from=-1", "from=x", "limit", "cursor=3", "from=1&sort=desc"] {
            assert_eq!(q(bad), None, "{bad}");
        }
    }

    #[test]
    fn object_names_are_safe_file_names() {
        assert!(is_valid_object_name("scan-01.ply"));
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(256)] {
            assert!(!is_valid_object_name(bad), "{bad}");
        }
        for raw in ["a b/c", ".x", "", "ok.bin", "é"] {
            assert!(is_valid_object_name(&sanitize_object_name(raw)), "{raw}");
        }
    }
}
