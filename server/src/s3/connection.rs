//! The HTTP side of the S3 client: connections to the endpoint (TLS by rustls with the
//! system's roots or `AWS_CA_BUNDLE`), kept in a small pool, and request bodies of several
//! buffers sent without joining them.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::S3Error;

/// Idle connections kept for reuse.
const POOL: usize = 16;

/// A request body of several buffers (a chunk as it arrived), sent without joining them.
pub struct Parts {
    parts: VecDeque<Bytes>,
    left: u64,
}

impl Parts {
    pub fn new(parts: Vec<Bytes>) -> Parts {
        let left = parts.iter().map(|p| p.len() as u64).sum();
        Parts {
            parts: parts.into(),
            left,
        }
    }
}

impl http_body::Body for Parts {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.parts.pop_front();
        if let Some(b) = &next {
            self.left -= b.len() as u64;
        }
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Connections to one endpoint.
pub struct Connections {
    https: bool,
    /// `host[:port]` to connect to.
    pub authority: String,
    tls: Option<tokio_rustls::TlsConnector>,
    pool: Mutex<Vec<SendRequest<Parts>>>,
}

impl Connections {
    pub fn new(
        https: bool,
        authority: String,
        ca_bundle: Option<&std::path::Path>,
    ) -> Result<Connections, String> {
        let tls = match https {
            true => Some(tls_connector(ca_bundle)?),
            false => None,
        };
        Ok(Connections {
            https,
            authority,
            tls,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// Sends on a pooled connection (replacing it once if the server had closed it) or a
    /// new one; returns status, headers and the whole body.
    pub async fn roundtrip(
        &self,
        build: impl Fn() -> Result<Request<Parts>, S3Error>,
        repeatable: bool,
    ) -> Result<(u16, HeaderMap, Bytes), S3Error> {
        let mut pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(sender) = &mut pooled
            && sender.ready().await.is_err()
        {
            pooled = None;
        }
        let resp = match pooled {
            Some(mut sender) => {
                match sender.send_request(build()?).await {
                    Ok(r) => Ok((r, sender)),
                    // Closed under us before an answer: once more on a fresh connection.
                    Err(e)
                        if e.is_canceled()
                            || repeatable && (e.is_closed() || e.is_incomplete_message()) =>
                    {
                        Err(())
                    }
                    Err(e) => return Err(S3Error::transport(format!("request failed: {e}"))),
                }
            }
            None => Err(()),
        };
        let (resp, sender) = match resp {
            Ok(pair) => pair,
            Err(()) => {
                let mut sender = self.connect().await?;
                let r = sender
                    .send_request(build()?)
                    .await
                    .map_err(|e| S3Error::transport(format!("request failed: {e}")))?;
                (r, sender)
            }
        };
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| S3Error::transport(format!("reading the answer: {e}")))?
            .to_bytes();
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL && !sender.is_closed() {
            pool.push(sender);
        }
        Ok((status, parts.headers, body))
    }

    async fn connect(&self) -> Result<SendRequest<Parts>, S3Error> {
        let fail = |e: std::io::Error| {
            S3Error::transport(format!("cannot connect to {}: {e}", self.authority))
        };
        let (host, port) = split_authority(&self.authority);
        let port = port.unwrap_or(if self.https { 443 } else { 80 });
        let addr = match host.contains(':') {
            // An IPv6 address, bracketed again for the socket address.
            true => format!("[{host}]:{port}"),
            false => format!("{host}:{port}"),
        };
        let tcp = tokio::net::TcpStream::connect(&addr).await.map_err(fail)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| S3Error::transport(format!("bad S3 host {host}: {e}")))?;
                let stream = tls.connect(name, tcp).await.map_err(fail)?;
                handshake(stream).await
            }
        }
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Parts>, S3Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| S3Error::transport(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// `host[:port]` or `[v6]:port` to (host without brackets, port).
pub fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((host, after)) = rest.split_once(']')
    {
        return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

fn tls_connector(
    ca_bundle: Option<&std::path::Path>,
) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_bundle {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read AWS_CA_BUNDLE {}: {e}", path.display()))?;
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA certificates for the S3 endpoint (set AWS_CA_BUNDLE)".into());
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::split_authority;

    #[test]
    fn authorities_split_into_host_and_port_ipv6_too() {
        assert_eq!(
            split_authority("s3.amazonaws.com"),
            ("s3.amazonaws.com", None)
        );
        assert_eq!(split_authority("127.0.0.1:9000"), ("127.0.0.1", Some(9000)));
        assert_eq!(split_authority("[::1]:9000"), ("::1", Some(9000)));
        assert_eq!(split_authority("[fd00::5]"), ("fd00::5", None));
    }
}
