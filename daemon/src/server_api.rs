//! The wire protocol's calls, typed: what the engine asks the server.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use uplink_proto::chain::FileState;
use uplink_proto::integrity::{self, ChunkId, ChunkSecret, Credentials};
use uplink_proto::wire::{
    self, ChunkPage, ChunkResume, ChunkStored, CompleteUpload, CreateUpload, ErrorBody,
    UploadCompleted, UploadCreated, UploadState,
};

use crate::transport::progress::BodyProgress;
use crate::transport::{LinkInfo, Transport, TransportError, WireRequest, WireResponse};

/// Timeout of small control requests (create, state, delete, ping).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(15);
/// Complete hashes the whole file on the server: allow for 100 GB at ~0.5 GB/s.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(600);
/// The seed's chunk timeout, max(10 s, size / 1 Mbit/s × 2), for a chunk that shares the
/// link with `sharing - 1` others: 12 chunks of 4 MiB on a 2 Mbit/s link each move at
/// 1/12 of it, and a per-chunk deadline that ignored this would expire them all together,
/// again and again. Dead connections are caught sooner by keepalives (HTTP/2 PING, QUIC
/// idle timeout); this deadline is the last resort.
pub fn chunk_timeout(len: u64, sharing: usize) -> Duration {
    const MIN_EXPECTED_BYTES_PER_SEC: u64 = 125_000;
    let bytes = len.saturating_mul(sharing.max(1) as u64);
    Duration::from_secs((bytes.saturating_mul(2) / MIN_EXPECTED_BYTES_PER_SEC).max(10))
}

/// How a failed call should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network trouble or a server busy/overloaded: try again later.
    Transient,
    /// The server no longer knows the upload: start a new session.
    UnknownUpload,
    /// Retrying cannot help (auth, conflict, bad request).
    Permanent,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("server answered {status} {code}: {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
        /// The server's `Retry-After`: when it is worth asking again.
        retry_after: Option<Duration>,
    },
    #[error("server answer unreadable: {0}")]
    Decode(String),
    /// The server refused the credential and the token file holds a new one: the same
    /// request will pass with it.
    #[error("the server refused the credential; the token file's new secret is in use now")]
    CredentialsRenewed,
}

impl CallError {
    pub fn class(&self) -> ErrorClass {
        match self {
            CallError::Transport(TransportError::Endpoint(_)) => ErrorClass::Permanent,
            CallError::Transport(_) => ErrorClass::Transient,
            CallError::Decode(_) | CallError::CredentialsRenewed => ErrorClass::Transient,
            CallError::Server { status, code, .. } => match (*status, code.as_str()) {
                (404, wire::code::UNKNOWN_UPLOAD) | (410, _) => ErrorClass::UnknownUpload,
                (409, wire::code::CHUNK_IN_PROGRESS | wire::code::PARTIAL_GONE) => {
                    ErrorClass::Transient
                }
                // A checksum mismatch means the bytes changed between hashing and sending.
                (422, wire::code::CRC32C_MISMATCH | wire::code::SHA256_MISMATCH) => {
                    ErrorClass::Transient
                }
                (408 | 425 | 429, _) => ErrorClass::Transient,
                (s, _) if s >= 500 => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
        }
    }

    /// The endpoint itself answered with trouble (a 5xx, 429 or 408, or a refused
    /// connection): this counts toward its circuit breaker; silence and broken paths do not.
    pub fn endpoint_failure(&self) -> bool {
        match self {
            CallError::Transport(TransportError::Refused { .. }) => true,
            CallError::Server { status, .. } => *status >= 500 || matches!(*status, 408 | 429),
            _ => false,
        }
    }

    /// How long the server asked us to wait before trying again, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A stable code for the job record.
    pub fn code(&self) -> String {
        match self {
            CallError::Transport(TransportError::Tls { .. }) => "tls_failed".into(),
            CallError::Transport(TransportError::Timeout(_)) => "timeout".into(),
            CallError::Transport(TransportError::Endpoint(_)) => "bad_endpoint".into(),
            CallError::Transport(TransportError::Refused { .. }) => "refused".into(),
            CallError::Transport(TransportError::PathGone) => "path_gone".into(),
            CallError::Transport(_) => "network".into(),
            CallError::Server { code, .. } => format!("server_{code}"),
            CallError::Decode(_) => "bad_answer".into(),
            CallError::CredentialsRenewed => "credentials_renewed".into(),
        }
    }
}

/// Whether an error answer's body carries `code`.
fn is_code(body: &[u8], code: &str) -> bool {
    serde_json::from_slice::<ErrorBody>(body).is_ok_and(|e| e.code == code)
}

/// The session keys a chunk tag needs.
#[derive(Clone)]
pub struct SessionKeys {
    pub upload_id: String,
    pub nonce: Vec<u8>,
    pub key: [u8; 32],
    /// Which credentials they derive from ([`ServerClient::refresh_keys`]).
    pub generation: u64,
}

impl SessionKeys {
    pub fn new(
        chunk_secret: &ChunkSecret,
        upload_id: &str,
        nonce_hex: &str,
    ) -> Result<SessionKeys, CallError> {
        let nonce =
            hex::decode(nonce_hex).map_err(|_| CallError::Decode("nonce is not hex".into()))?;
        Ok(SessionKeys {
            key: integrity::session_key(chunk_secret, &nonce, upload_id),
            upload_id: upload_id.to_string(),
            nonce,
            generation: 0,
        })
    }
}

/// A chunk ready to send: its place, digests and the raw bytes.
#[derive(Clone)]
pub struct ChunkPayload {
    pub offset: u64,
    pub sha256: [u8; 32],
    pub crc32c: u32,
    pub data: Bytes,
    /// Replaces the chunk the server holds here ([`wire::HDR_CHUNK_REPLACE`]).
    pub replace: bool,
    /// The chunk was hashed as a link of the file's hash from this state
    /// ([`wire::HDR_CHUNK_SHA256_FROM`]); `sha256` is then the link's digest.
    pub from: Option<FileState>,
}

pub struct ServerClient {
    transport: std::sync::Arc<Transport>,
    /// Swapped when the token file changes (a rotated secret), noticed at a 401.
    credentials: std::sync::RwLock<std::sync::Arc<Credentials>>,
    /// Counts the swaps: session keys made before one are made again.
    generation: std::sync::atomic::AtomicU64,
    /// Read again when the server refuses the credential.
    token_file: Option<std::path::PathBuf>,
}

impl ServerClient {
    /// Fresh connections for the requests that follow (a watchdog found a job hung); those
    /// out finish or fail on the old ones.
    pub async fn reconnect(&self) {
        self.transport.reconnect().await;
    }

    pub fn new(transport: std::sync::Arc<Transport>, credentials: Credentials) -> ServerClient {
        ServerClient {
            transport,
            credentials: std::sync::RwLock::new(std::sync::Arc::new(credentials)),
            generation: std::sync::atomic::AtomicU64::new(0),
            token_file: None,
        }
    }

    /// Where the credentials came from: read again when the server answers 401, so a
    /// rotated secret is picked up at the first refusal.
    pub fn with_token_file(mut self, path: std::path::PathBuf) -> ServerClient {
        self.token_file = Some(path);
        self
    }

    fn credentials(&self) -> std::sync::Arc<Credentials> {
        std::sync::Arc::clone(&self.credentials.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reads the token file again; true if it now holds another secret (then in use).
    fn reload_credentials(&self, refused_bearer: &str) -> bool {
        let Some(path) = &self.token_file else {
            return false;
        };
        let fresh = match Credentials::from_token_file(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the token file again");
                return false;
            }
        };
        let mut slot = self.credentials.write().unwrap_or_else(|p| p.into_inner());
        if slot.bearer() != refused_bearer {
            return true; // another request swapped them meanwhile
        }
        if fresh.bearer() == refused_bearer {
            return false;
        }
        *slot = std::sync::Arc::new(fresh);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tracing::info!("the token file holds a new secret: using it");
        true
    }

    /// The keys that tag the chunks of one upload session (from the chunk secret, which
    /// never leaves this client).
    pub fn session_keys(&self, upload_id: &str, nonce_hex: &str) -> Result<SessionKeys, CallError> {
        let generation = self.generation();
        let mut keys = SessionKeys::new(self.credentials().chunk_secret(), upload_id, nonce_hex)?;
        keys.generation = generation;
        Ok(keys)
    }

    /// `keys` made again from the credentials now in use, if those changed since.
    pub fn refresh_keys(&self, keys: &SessionKeys) -> Option<SessionKeys> {
        let generation = self.generation();
        if keys.generation == generation {
            return None;
        }
        Some(SessionKeys {
            key: integrity::session_key(
                self.credentials().chunk_secret(),
                &keys.nonce,
                &keys.upload_id,
            ),
            generation,
            ..keys.clone()
        })
    }

    pub fn link(&self) -> LinkInfo {
        self.transport.info()
    }

    /// Whether requests now go over an HTTP/3 connection made with 0-RTT.
    pub fn zero_rtt(&self) -> bool {
        self.transport.zero_rtt()
    }

    pub fn lanes(&self) -> usize {
        self.transport.lanes()
    }

    /// Closes idle connections (see [`Transport::close`]).
    pub async fn close(&self) {
        self.transport.close().await;
    }

    /// Connects ahead of need (HTTP/2 and, if offered, HTTP/3) and checks with a ping.
    pub async fn warm(&self) -> Result<(), CallError> {
        self.transport.warm().await?;
        // The answer may carry the first Alt-Svc: then bring HTTP/3 up before returning.
        self.ping().await?;
        self.transport.warm_h3().await;
        Ok(())
    }

    fn request(
        &self,
        method: http::Method,
        path: String,
        body: Bytes,
        timeout: Duration,
    ) -> WireRequest {
        WireRequest {
            method,
            path,
            headers: vec![(
                wire::HDR_AUTHORIZATION,
                format!("Bearer {}", self.credentials().bearer()),
            )],
            body,
            lane: 0,
            timeout,
            progress: None,
        }
    }

    async fn call(&self, req: WireRequest) -> Result<WireResponse, CallError> {
        let bearer = self.credentials();
        let resp = self.transport.request(req).await?;
        if resp.status.is_success() {
            return Ok(resp);
        }
        if resp.status == http::StatusCode::UNAUTHORIZED
            && is_code(&resp.body, wire::code::UNAUTHORIZED)
            && self.reload_credentials(bearer.bearer())
        {
            // A rotated secret: the request goes again (one retry) with the new one.
            return Err(CallError::CredentialsRenewed);
        }
        let status = resp.status.as_u16();
        let retry_after = resp.retry_after;
        Err(match serde_json::from_slice::<ErrorBody>(&resp.body) {
            Ok(e) => CallError::Server {
                status,
                code: e.code,
                message: e.message,
                retry_after,
            },
            Err(_) => CallError::Server {
                status,
                retry_after,
                code: "http_error".into(),
                message: String::from_utf8_lossy(&resp.body)
                    .chars()
                    .take(200)
                    .collect(),
            },
        })
    }

    async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        req: WireRequest,
    ) -> Result<T, CallError> {
        let resp = self.call(req).await?;
        serde_json::from_slice(&resp.body).map_err(|e| CallError::Decode(e.to_string()))
    }

    pub async fn ping(&self) -> Result<(), CallError> {
        self.call(self.request(
            http::Method::HEAD,
            wire::PATH_PING.into(),
            Bytes::new(),
            CONTROL_TIMEOUT,
        ))
        .await
        .map(|_| ())
    }

    pub async fn create(
        &self,
        idempotency_key: &str,
        body: &CreateUpload,
    ) -> Result<UploadCreated, CallError> {
        let json = serde_json::to_vec(body).map_err(|e| CallError::Decode(e.to_string()))?;
        let mut req = self.request(
            http::Method::POST,
            wire::PATH_UPLOADS.into(),
            json.into(),
            CONTROL_TIMEOUT,
        );
        req.headers
            .push((wire::HDR_IDEMPOTENCY_KEY, idempotency_key.to_string()));
        req.headers
            .push(("content-type", "application/json".into()));
        self.call_json(req).await
    }

    pub async fn state(&self, upload_id: &str) -> Result<UploadState, CallError> {
        self.call_json(self.request(
            http::Method::GET,
            wire::upload_path(upload_id),
            Bytes::new(),
            CONTROL_TIMEOUT,
        ))
        .await
    }

    /// One page of the server's chunk records at and after `from`.
    pub async fn chunk_page(&self, upload_id: &str, from: u64) -> Result<ChunkPage, CallError> {
        self.call_json(self.request(
            http::Method::GET,
            wire::chunk_page_path(upload_id, from, wire::MAX_CHUNK_PAGE),
            Bytes::new(),
            CONTROL_TIMEOUT,
        ))
        .await
    }

    pub async fn delete(&self, upload_id: &str) -> Result<(), CallError> {
        self.call(self.request(
            http::Method::DELETE,
            wire::upload_path(upload_id),
            Bytes::new(),
            CONTROL_TIMEOUT,
        ))
        .await
        .map(|_| ())
    }

    pub async fn complete(
        &self,
        upload_id: &str,
        merkle_root: &[u8; 32],
        size: Option<u64>,
    ) -> Result<UploadCompleted, CallError> {
        // Required for a session created with a deferred length (a growing file); checked
        // against the declared one otherwise.
        let body = CompleteUpload {
            merkle_root: hex::encode(merkle_root),
            size,
        };
        let json = serde_json::to_vec(&body).map_err(|e| CallError::Decode(e.to_string()))?;
        let mut req = self.request(
            http::Method::POST,
            wire::complete_path(upload_id),
            json.into(),
            COMPLETE_TIMEOUT,
        );
        req.headers
            .push(("content-type", "application/json".into()));
        self.call_json(req).await
    }

    /// PUT of one chunk with its digests and tag.
    pub async fn put_chunk(
        &self,
        keys: &SessionKeys,
        chunk: &ChunkPayload,
        lane: usize,
    ) -> Result<ChunkStored, CallError> {
        self.put_chunk_shared(keys, chunk, None, lane, 1).await
    }

    /// [`Self::put_chunk`] while `sharing` chunks are in flight together; `lz4` is the
    /// chunk as one LZ4 block, sent instead of the raw bytes (`Content-Encoding: lz4`).
    pub async fn put_chunk_shared(
        &self,
        keys: &SessionKeys,
        chunk: &ChunkPayload,
        lz4: Option<Bytes>,
        lane: usize,
        sharing: usize,
    ) -> Result<ChunkStored, CallError> {
        self.put_chunk_watched(keys, chunk, lz4, lane, sharing, None)
            .await
    }

    /// [`Self::put_chunk_shared`], counting the body bytes handed on in `progress`.
    pub async fn put_chunk_watched(
        &self,
        keys: &SessionKeys,
        chunk: &ChunkPayload,
        lz4: Option<Bytes>,
        lane: usize,
        sharing: usize,
        progress: Option<Arc<BodyProgress>>,
    ) -> Result<ChunkStored, CallError> {
        let mut req = self.chunk_request(keys, chunk, lz4, 0, sharing);
        req.lane = lane;
        req.progress = progress;
        self.call_json(req).await
    }

    /// How many of this chunk's first bytes the server has from an earlier request whose
    /// connection was lost (it takes them from that request, which stops).
    pub async fn resume_point(
        &self,
        keys: &SessionKeys,
        chunk: &ChunkPayload,
    ) -> Result<u64, CallError> {
        let mut req = self.request(
            http::Method::POST,
            wire::chunk_resume_path(&keys.upload_id, chunk.offset),
            Bytes::new(),
            CONTROL_TIMEOUT,
        );
        req.headers.extend(chunk_headers(keys, chunk));
        let answer: ChunkResume = self.call_json(req).await?;
        let length = chunk.data.len() as u64;
        // Only an answer about this very chunk, inside it, is built on.
        Ok(
            match answer.offset == chunk.offset && answer.length == length {
                true => answer.received.min(length.saturating_sub(1)),
                false => 0,
            },
        )
    }

    /// A chunk sent again: asks the server what it has of it first
    /// ([`Self::resume_point`]) and sends only the rest. Returns the answer and the bytes
    /// the server already had. A server that lost them answers `partial_gone`, a transient
    /// failure: the next attempt asks again and sends it whole.
    pub async fn put_chunk_resumed(
        &self,
        keys: &SessionKeys,
        chunk: &ChunkPayload,
        lane: usize,
        sharing: usize,
        progress: Option<Arc<BodyProgress>>,
    ) -> Result<(ChunkStored, u64), CallError> {
        // A server without resume (or any trouble asking) just means sending it whole.
        let from = self.resume_point(keys, chunk).await.unwrap_or(0);
        let mut req = self.chunk_request(keys, chunk, None, from, sharing);
        req.lane = lane;
        req.progress = progress;
        Ok((self.call_json(req).await?, from))
    }

    /// A chunk PUT: the body from byte `from` of the chunk (raw), or `lz4` instead.
    fn chunk_request(
        &self,
        keys: &SessionKeys,
        chunk: &ChunkPayload,
        lz4: Option<Bytes>,
        from: u64,
        sharing: usize,
    ) -> WireRequest {
        let length = chunk.data.len() as u64;
        let compressed = lz4.is_some();
        let from = from.min(length);
        let body = lz4.unwrap_or_else(|| chunk.data.slice(from as usize..));
        let mut req = self.request(
            http::Method::PUT,
            wire::chunk_path(&keys.upload_id, chunk.offset),
            body,
            chunk_timeout(length - from, sharing),
        );
        if compressed {
            req.headers.push((
                wire::HDR_CONTENT_ENCODING,
                wire::CONTENT_ENCODING_LZ4.into(),
            ));
        } else if from > 0 {
            req.headers
                .push((wire::HDR_CHUNK_RESUME_FROM, from.to_string()));
        }
        req.headers.extend(chunk_headers(keys, chunk));
        if chunk.replace {
            req.headers.push((wire::HDR_CHUNK_REPLACE, "1".into()));
        }
        req.headers
            .push(("content-type", "application/octet-stream".into()));
        req
    }
}

/// A chunk's identity as the server checks it: length, digests and the HMAC tag over them
/// (on its PUT, and on the question how much of it the server has).
pub fn chunk_headers(
    keys: &SessionKeys,
    chunk: &ChunkPayload,
) -> impl Iterator<Item = (&'static str, String)> + use<> {
    let length = chunk.data.len() as u64;
    let tag = integrity::chunk_tag(
        &keys.key,
        &ChunkId {
            offset: chunk.offset,
            length,
            sha256: &chunk.sha256,
            upload_id: &keys.upload_id,
            nonce: &keys.nonce,
        },
    );
    [
        (wire::HDR_CHUNK_LENGTH, length.to_string()),
        (wire::HDR_CHUNK_SHA256, hex::encode(chunk.sha256)),
        (wire::HDR_CHUNK_CRC32C, format!("{:08x}", chunk.crc32c)),
        (wire::HDR_CHUNK_HMAC, hex::encode(tag)),
    ]
    .into_iter()
    .chain(
        chunk
            .from
            .as_ref()
            .map(|from| (wire::HDR_CHUNK_SHA256_FROM, from.encode())),
    )
}

#[cfg(test)]
mod tests {
    use super::chunk_timeout;
    use std::time::Duration;

    #[test]
    fn chunk_timeout_follows_the_seed_and_the_share_of_the_link() {
        // The seed's examples: small chunks get the 10 s floor; 4 MiB alone ~67 s.
        assert_eq!(chunk_timeout(256 * 1024, 1), Duration::from_secs(10));
        assert_eq!(chunk_timeout(4 << 20, 1), Duration::from_secs(67));
        // Twelve 4 MiB chunks sharing a 1 Mbit/s link each need 12x as long.
        assert_eq!(chunk_timeout(4 << 20, 12), Duration::from_secs(805));
        assert_eq!(chunk_timeout(4 << 20, 0), chunk_timeout(4 << 20, 1));
    }
}
