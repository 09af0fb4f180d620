//! What the hostile cases are built from: an HTTP/2 client that sends any bytes, the
//! tally of answers, and chunk headers signed right or forged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use uplink_e2e::*;
use uplink_proto::integrity::{self, ChunkId, Credentials};
use uplink_proto::wire;
use uplinkd::server_api::{ChunkPayload, SessionKeys, chunk_headers};

pub const KIB: u64 = 1024;
/// The session the chunk cases aim at: two 256 KiB chunks.
pub const SIZE: u64 = 512 * KIB;
pub const HALF: u64 = 256 * KIB;

/// What a case must get back.
#[derive(Clone, Copy, Debug)]
pub enum Want {
    /// This status and this error code.
    Answer(u16, &'static str),
    /// A broken stream: the server resets it, or answers 400.
    Reset,
}

/// Request headers as (name, raw value) pairs; values need not be UTF-8.
pub type Headers = Vec<(&'static str, Vec<u8>)>;

/// The server's answer to one request: status and error code, or the stream's error.
pub type Got = Result<(u16, String), String>;

/// An HTTP/2 client that opens a new TLS connection per request, so that one case's
/// connection error cannot spill into the next.
pub struct Raw {
    pub url: String,
    pub addr: String,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Raw {
    pub fn new(server: &Server) -> Raw {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Raw {
            url: server.url(),
            addr: server.addr.clone(),
            tls: uplinkd::transport::tls::client_config(Some(&server.ca), &[wire::ALPN_H2])
                .expect("tls"),
        }
    }

    pub async fn sender<B>(&self) -> hyper::client::conn::http2::SendRequest<B>
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
    pub async fn send(
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
pub struct Tally {
    pub tried: usize,
    pub refused: usize,
    pub wrong: Vec<String>,
}

impl Tally {
    pub fn check(&mut self, case: &str, got: Got, want: Want) {
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

pub fn tenant(clients: &std::path::Path, name: &str) -> Credentials {
    Credentials::from_token_file(&clients.join(format!("{name}.token"))).expect("credentials")
}

pub fn chunk(offset: u64, len: u64, seed: u64) -> ChunkPayload {
    let mut data = vec![0u8; len as usize];
    let mut x = 0x2545_F491_4F6C_DD1D ^ seed;
    fill_random(&mut data, &mut x);
    chunk_payload(offset, data)
}

/// The four chunk headers as the daemon sends them, as owned (name, value) pairs.
pub fn signed(keys: &SessionKeys, c: &ChunkPayload) -> Headers {
    chunk_headers(keys, c)
        .map(|(n, v)| (n, v.into_bytes()))
        .collect()
}

/// `headers` with `name` replaced by `value` (or removed when `None`), plus the bearer.
pub fn with(
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

pub fn refs<'a>(h: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'a str, &'a [u8])> {
    h.iter().map(|(n, v)| (*n, v.as_slice())).collect()
}

/// The tag of `c` as if it were at `offset` with `length` bytes (a forged identity).
pub fn tag_for(keys: &SessionKeys, c: &ChunkPayload, offset: u64, length: u64) -> Vec<u8> {
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
