//! A small pool of HTTP/2 connections over TLS 1.3.
//!
//! Streams are spread over several TCP connections ("lanes"): one lost packet then stalls
//! only the streams of its own connection, and each connection gets its own congestion
//! window. A lane whose connection died reconnects on its next request. Each connection
//! asks for BBR (see [`super::congestion`]): CUBIC collapses under random loss.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::progress::LinkWatch;
use super::{Endpoint, LinkInfo, TransportError, WireRequest, WireResponse};
use super::{congestion, tcp_watch};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-stream receive window we advertise (answers are small; uploads use the server's).
const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// Keepalive PING while connected (the seed's 15 s).
const KEEPALIVE: Duration = Duration::from_secs(15);
const MAX_ANSWER: usize = 4 * 1024 * 1024;

mod body;

type Sender = SendRequest<body::PiecedBody>;

/// A lane's connection: where to send, and the kernel's word on whether it moves.
#[derive(Clone)]
struct Lane {
    send: Sender,
    /// None where the kernel cannot be asked (not Linux, or no descriptor to spare).
    watch: Option<Arc<LinkWatch>>,
    /// Its addresses: whether the host still routes to `peer` from `local`.
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    /// Cancelled when its path is gone: its requests end with `PathGone`.
    gone: CancellationToken,
    /// A duplicate of its socket, to ask whether it became multipath (MPTCP).
    socket: Option<Arc<std::os::fd::OwnedFd>>,
}

pub struct H2Pool {
    endpoint: Endpoint,
    tls: TlsConnector,
    lanes: Vec<tokio::sync::Mutex<Option<Lane>>>,
    connected: Arc<AtomicU32>,
    last_connect_ms: AtomicU64,
    /// The congestion control of the latest connection.
    congestion: std::sync::Mutex<congestion::Choice>,
}

impl H2Pool {
    pub fn new(endpoint: Endpoint, tls: Arc<rustls::ClientConfig>, lanes: usize) -> H2Pool {
        H2Pool {
            endpoint,
            tls: TlsConnector::from(tls),
            lanes: (0..lanes.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            connected: Arc::new(AtomicU32::new(0)),
            last_connect_ms: AtomicU64::new(0),
            congestion: Default::default(),
        }
    }

    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    pub fn info(&self) -> LinkInfo {
        LinkInfo {
            protocol: "h2",
            connected: self.connected.load(Ordering::Relaxed),
            last_connect_ms: self.last_connect_ms.load(Ordering::Relaxed),
            rtt_ms: None,
            handshake: None,
            tcp_congestion: self
                .congestion
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default(),
            quic_congestion: None,
        }
    }

    /// Drops every connection (they close once in-flight requests finish).
    pub async fn close(&self) {
        for lane in &self.lanes {
            *lane.lock().await = None;
        }
    }

    /// Connects every lane that is not connected yet, all at once (one handshake time,
    /// not one per lane).
    pub async fn warm(&self) -> Result<(), TransportError> {
        let results =
            futures_util::future::join_all((0..self.lanes.len()).map(|lane| self.sender(lane)))
                .await;
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }

    /// Forgets every lane's connection: the next request on each opens a fresh one, while
    /// requests out finish on the old (it closes when its last request ends).
    pub async fn reconnect(&self) {
        for lane in &self.lanes {
            *lane.lock().await = None;
        }
    }

    /// Drops the lanes whose connection the host no longer routes (the route to the
    /// server now leaves from another address): their requests fail with `PathGone` and
    /// go again on fresh connections, which the kernel opens on the new path. Returns
    /// (lanes left, lanes busy and not checked: look again soon).
    pub fn leave_dead_paths(&self) -> (usize, usize) {
        let (mut left, mut busy) = (0, 0);
        for slot in &self.lanes {
            // A lane in use (perhaps connecting, for up to a connect timeout) is not
            // waited for: the caller looks again soon.
            let Ok(mut slot) = slot.try_lock() else {
                busy += 1;
                continue;
            };
            let Some(lane) = slot.as_ref() else { continue };
            let now_from = super::path_watch::source_towards(lane.peer);
            if now_from == Some(lane.local.ip()) {
                continue;
            }
            // A multipath connection has a subflow on another path: MPTCP carries on.
            let subflows = lane
                .socket
                .as_deref()
                .and_then(super::mptcp::extra_subflows)
                .unwrap_or(0);
            if subflows > 0 {
                tracing::info!(local = %lane.local, subflows, "path changed; the MPTCP connection carries on over its other subflows");
                continue;
            }
            tracing::info!(
                local = %lane.local,
                peer = %lane.peer,
                now_from = ?now_from,
                "HTTP/2 connection's path is gone: its requests go again on a new connection"
            );
            lane.gone.cancel();
            *slot = None;
            left += 1;
        }
        (left, busy)
    }

    async fn sender(&self, lane: usize) -> Result<Lane, TransportError> {
        let mut slot = self.lanes[lane % self.lanes.len()].lock().await;
        if let Some(s) = slot.as_ref()
            && !s.send.is_closed()
            && !s.watch.as_ref().is_some_and(|w| w.stale())
        {
            return Ok(s.clone());
        }
        *slot = None;
        let s = self.connect().await?;
        *slot = Some(s.clone());
        Ok(s)
    }

    async fn connect(&self) -> Result<Lane, TransportError> {
        let started = Instant::now();
        let ep = &self.endpoint;
        let addrs: Vec<_> = tokio::net::lookup_host((ep.host.as_str(), ep.port))
            .await
            .map_err(|_| TransportError::Resolve(ep.host.clone()))?
            .collect();
        if addrs.is_empty() {
            return Err(TransportError::Resolve(ep.host.clone()));
        }
        let tcp = super::happy::connect(&addrs, CONNECT_TIMEOUT).await?;
        let _ = tcp.set_nodelay(true);
        let (local, peer) = (
            tcp.local_addr()
                .map_err(|e| TransportError::Http(format!("socket address: {e}")))?,
            tcp.peer_addr()
                .map_err(|e| TransportError::Http(format!("peer address: {e}")))?,
        );
        let choice = congestion::prefer_bbr(&tcp);
        // Duplicates of the socket for the watcher and the path check (none if the system
        // is out of fds).
        let socket = tcp.as_fd().try_clone_to_owned().ok();
        let probe = tcp.as_fd().try_clone_to_owned().ok().map(Arc::new);
        if !choice.note.is_empty() {
            tracing::debug!(algorithm = %choice.algorithm, note = %choice.note, "TCP congestion control");
        }
        if let Ok(mut c) = self.congestion.lock() {
            *c = choice;
        }
        let name = ServerName::try_from(ep.host.clone()).map_err(|_| {
            TransportError::Endpoint(format!("{} is not a valid server name", ep.host))
        })?;
        let tls_err = |message: String| TransportError::Tls {
            host: ep.host.clone(),
            message,
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| tls_err("timed out".into()))?
            .map_err(|e| tls_err(e.to_string()))?;
        if tls.get_ref().1.alpn_protocol() != Some(uplink_proto::wire::ALPN_H2) {
            return Err(tls_err("server did not agree to HTTP/2 (ALPN h2)".into()));
        }
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buf_size(4 * 1024 * 1024)
            .keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| TransportError::Http(e.to_string()))?;
        let connected = Arc::clone(&self.connected);
        connected.fetch_add(1, Ordering::Relaxed);
        let ended = Arc::new(AtomicBool::new(false));
        let watch = socket.filter(|_| tcp_watch::SUPPORTED).map(|socket| {
            let watch = Arc::new(LinkWatch::default());
            tokio::spawn(tcp_watch::watch(
                socket,
                Arc::clone(&watch),
                Arc::clone(&ended),
            ));
            watch
        });
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP/2 connection ended");
            }
            ended.store(true, Ordering::Relaxed);
            connected.fetch_sub(1, Ordering::Relaxed);
        });
        self.last_connect_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        Ok(Lane {
            send,
            watch,
            local,
            peer,
            gone: CancellationToken::new(),
            socket: probe,
        })
    }

    /// Sends one request and reads its answer, within the request's timeout.
    pub async fn request(&self, req: WireRequest) -> Result<WireResponse, TransportError> {
        let timeout = req.timeout;
        match tokio::time::timeout(timeout, self.request_inner(req)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    async fn request_inner(&self, req: WireRequest) -> Result<WireResponse, TransportError> {
        let lane = self.sender(req.lane).await?;
        let gone = lane.gone.clone();
        tokio::select! {
            r = Self::exchange(&self.endpoint, lane, req) => r,
            () = gone.cancelled() => Err(TransportError::PathGone),
        }
    }

    async fn exchange(
        endpoint: &Endpoint,
        lane: Lane,
        req: WireRequest,
    ) -> Result<WireResponse, TransportError> {
        let Lane {
            send: mut sender,
            watch,
            ..
        } = lane;
        if let (Some(p), Some(watch)) = (&req.progress, watch) {
            p.watch_link(watch);
        }
        let mut builder = http::Request::builder()
            .method(req.method)
            .uri(format!("https://{}{}", endpoint.authority, req.path));
        for (name, value) in &req.headers {
            builder = builder.header(*name, value);
        }
        let request = builder
            .body(body::PiecedBody::new(req.body, req.progress))
            .map_err(|e| TransportError::Http(format!("building the request: {e}")))?;
        sender
            .ready()
            .await
            .map_err(|e| TransportError::Http(e.to_string()))?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| TransportError::Http(e.to_string()))?;
        let status = resp.status();
        let alt_svc = resp
            .headers()
            .get(uplink_proto::wire::HDR_ALT_SVC)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = super::retry_after(resp.headers());
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| TransportError::Http(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(WireResponse {
            status,
            body,
            alt_svc,
            protocol: "h2",
            retry_after,
        })
    }
}
