//! Carrying requests of the wire protocol to the server.
//!
//! [`h2::H2Pool`] keeps a few HTTP/2 connections over TLS 1.3 and spreads streams over
//! them; the upload engine only sees [`Transport::request`], so HTTP/3 can slot in beside it.

pub mod h2;
pub mod tls;

use std::time::Duration;

use bytes::Bytes;

/// One request of the wire protocol.
#[derive(Debug, Clone)]
pub struct WireRequest {
    pub method: http::Method,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Which connection slot to prefer (streams of one upload spread over the pool).
    pub lane: usize,
    pub timeout: Duration,
}

/// The server's answer, body read whole (answers are small JSON).
#[derive(Debug, Clone)]
pub struct WireResponse {
    pub status: http::StatusCode,
    pub body: Bytes,
}

/// Why a request did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("TLS handshake with {host} failed: {message}")]
    Tls { host: String, message: String },
    #[error("HTTP/2 error: {0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("bad endpoint {0}")]
    Endpoint(String),
}

/// A connection's facts, for Status and the job record.
#[derive(Debug, Clone, Default)]
pub struct LinkInfo {
    pub protocol: &'static str,
    pub connected: u32,
    pub last_connect_ms: u64,
}

/// Where the server is: parsed from `https://host:port`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// `host:port` for the `:authority` pseudo-header.
    pub authority: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, TransportError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| TransportError::Endpoint(url.into()))?;
        if uri.scheme_str() != Some("https") {
            return Err(TransportError::Endpoint(format!(
                "{url}: scheme must be https"
            )));
        }
        let auth = uri
            .authority()
            .ok_or_else(|| TransportError::Endpoint(url.into()))?;
        let host = auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = auth.port_u16().unwrap_or(443);
        Ok(Endpoint {
            url: url.to_string(),
            host,
            port,
            authority: auth.as_str().to_string(),
        })
    }
}
