//! HTTP/3 over QUIC: one connection, every chunk its own stream (no head-of-line blocking
//! between chunks), 0-RTT on reconnects.
//!
//! TLS session tickets live in rustls' in-memory store, so a reconnect within the same
//! process resumes with 0-RTT. They do not survive a daemon restart: rustls 0.23 offers no
//! public way to serialise a client ticket (rustls issue #2287).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use quinn::crypto::rustls::QuicClientConfig;

use super::progress::LinkWatch;
use super::{Endpoint, TransportError, WireRequest, WireResponse};

pub const ALPN_H3: &[u8] = b"h3";
/// QUIC handshake budget: past it the HTTP/2 path carries on alone.
pub const QUIC_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Largest UDP payload MTU discovery tries (9000-byte jumbo frames).
const MTU_PROBE_CEILING: u16 = 8952;
/// 128 KiB, about 90 packets (quinn's default is 10 packets).
const INITIAL_WINDOW: u64 = 128 * 1024;
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// The congestion controller of our QUIC connections (quinn's BBR: random loss does not
/// read as congestion).
pub const CONGESTION: &str = "bbr";
/// Socket buffers for high bandwidth-delay products (the kernel may grant less).
const UDP_BUFFER: usize = 8 * 1024 * 1024;

mod streams;

type Sender = h3::client::SendRequest<streams::OpenStreams, Bytes>;

/// How the last QUIC connection was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// No early data, or the server refused it (then nothing was sent before the
    /// handshake as far as the server is concerned).
    Full,
    /// Requests went out as 0-RTT early data and the server accepted them.
    ZeroRtt,
}

/// What is known about the last connection's handshake.
enum HandshakeState {
    Full,
    /// Early data sent; quinn says whether the server accepted it once the handshake is
    /// done (before any answer to the early data can be read).
    EarlyData(quinn::ZeroRttAccepted),
    EarlyDataAccepted,
    EarlyDataRejected,
}

impl Handshake {
    pub fn name(self) -> &'static str {
        match self {
            Handshake::Full => "full",
            Handshake::ZeroRtt => "0-rtt",
        }
    }
}

struct Live {
    conn: quinn::Connection,
    send: Sender,
    watch: Arc<LinkWatch>,
}

/// How often a connection's watcher looks whether it still hears from its peer.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Keeps `watch` up to date for `conn` until the connection closes: waiting on the peer
/// since the last datagram received, when datagrams went out after it.
async fn watch_connection(conn: quinn::Connection, watch: Arc<LinkWatch>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = (0u64, Instant::now(), 0u64);
    let mut looked = Instant::now();
    while conn.close_reason().is_none() {
        tick.tick().await;
        let stats = conn.stats();
        let (rx, tx) = (stats.udp_rx.datagrams, stats.udp_tx.datagrams);
        let now = Instant::now();
        if rx > heard.0 {
            // The datagrams came after the last look: count from then, the earliest they
            // may have come, so silence is judged from the last datagram, not up to a
            // watch interval after it.
            heard = (rx, looked, tx);
            watch.set_waiting(None);
        } else if tx > heard.2 {
            watch.set_waiting(Some(heard.1));
        }
        looked = now;
    }
}

pub struct H3Client {
    endpoint: Endpoint,
    quic: quinn::Endpoint,
    config: quinn::ClientConfig,
    /// UDP port to use (from Alt-Svc).
    port: std::sync::atomic::AtomicU16,
    live: tokio::sync::Mutex<Option<Live>>,
    /// The live connection, readable without waiting for a connect in progress.
    current: std::sync::Mutex<Option<quinn::Connection>>,
    last_handshake: std::sync::Mutex<Option<HandshakeState>>,
    last_connect_ms: AtomicU64,
    /// When a connection was last replaced because it had gone silent.
    silent_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl H3Client {
    pub fn new(endpoint: Endpoint, tls: &rustls::ClientConfig) -> Result<H3Client, String> {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![ALPN_H3.to_vec()];
        tls.enable_early_data = true;
        let quic_tls =
            QuicClientConfig::try_from(tls).map_err(|e| format!("QUIC TLS config: {e}"))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic_tls));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(KEEPALIVE))
            .max_idle_timeout(Some(
                Duration::from_secs(60)
                    .try_into()
                    .map_err(|e| format!("{e}"))?,
            ))
            .stream_receive_window((16u32 << 20).into())
            .receive_window((64u32 << 20).into())
            .send_window(64 << 20);
        // BBR, not Cubic: on a lossy radio link a loss-based controller collapses (1 %
        // loss at 50 ms RTT holds Cubic to ~0.4 MB/s; measured through netsim), while the
        // TCP path gets the kernel's BBR. A larger initial window (paced by quinn, so no
        // line-rate burst): the first chunk should not spend five round trips in slow start.
        // Probe for paths larger than Ethernet (jumbo frames, loopback): fewer packets is
        // less per-packet crypto and syscall work. Probing is binary search; a failed probe
        // costs one lost packet, not a connection.
        let mut mtud = quinn::MtuDiscoveryConfig::default();
        mtud.upper_bound(MTU_PROBE_CEILING);
        transport.mtu_discovery_config(Some(mtud));
        let mut cc = quinn::congestion::BbrConfig::default();
        cc.initial_window(INITIAL_WINDOW);
        transport.congestion_controller_factory(Arc::new(cc));
        config.transport_config(Arc::new(transport));
        let quic = client_endpoint()?;
        let port = endpoint.port;
        Ok(H3Client {
            endpoint,
            quic,
            config,
            port: std::sync::atomic::AtomicU16::new(port),
            live: tokio::sync::Mutex::new(None),
            current: std::sync::Mutex::new(None),
            last_handshake: std::sync::Mutex::new(None),
            last_connect_ms: AtomicU64::new(0),
            silent_at: std::sync::Mutex::new(None),
        })
    }

    pub fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Relaxed);
    }

    /// How the last connection was made: `ZeroRtt` only once the server has accepted its
    /// early data; `None` before any connection, and while the handshake of one that sent
    /// early data is still under way.
    pub fn last_handshake(&self) -> Option<Handshake> {
        let mut last = self
            .last_handshake
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(HandshakeState::EarlyData(accepted)) = last.as_mut() {
            // Resolves (true or false) when the handshake ends, also when it fails.
            match accepted.now_or_never() {
                Some(true) => *last = Some(HandshakeState::EarlyDataAccepted),
                Some(false) => *last = Some(HandshakeState::EarlyDataRejected),
                None => {}
            }
        }
        match last.as_ref()? {
            HandshakeState::Full | HandshakeState::EarlyDataRejected => Some(Handshake::Full),
            HandshakeState::EarlyDataAccepted => Some(Handshake::ZeroRtt),
            HandshakeState::EarlyData(_) => None,
        }
    }

    pub fn last_connect_ms(&self) -> u64 {
        self.last_connect_ms.load(Ordering::Relaxed)
    }

    fn current(&self) -> Option<quinn::Connection> {
        let c = self.current.lock().unwrap_or_else(|p| p.into_inner());
        c.as_ref().filter(|c| c.close_reason().is_none()).cloned()
    }

    /// Smoothed RTT of the live connection.
    pub fn rtt(&self) -> Option<Duration> {
        self.current().map(|c| c.rtt())
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    async fn sender(&self) -> Result<(Sender, Arc<LinkWatch>), TransportError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref()
            && l.conn.close_reason().is_none()
        {
            if !l.watch.stale() {
                return Ok((l.send.clone(), Arc::clone(&l.watch)));
            }
            tracing::info!("HTTP/3 connection silent for 5 s with data out: replacing it");
            *self.silent_at.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(std::time::Instant::now());
            l.conn.close(0u32.into(), b"stalled");
        }
        *live = None;
        let fresh = self.connect().await?;
        let out = (fresh.send.clone(), Arc::clone(&fresh.watch));
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh.conn.clone());
        *live = Some(fresh);
        Ok(out)
    }

    /// Forgets the connection: the next request opens a fresh one, while requests out
    /// finish on the old (it closes when its last request ends).
    pub async fn reconnect(&self) {
        *self.live.lock().await = None;
    }

    /// A connection went silent within `within`: failures now are the path's, not QUIC's
    /// (a request sent as 0-RTT on a connection whose handshake never got through fails
    /// as "0-RTT rejected" when that connection is given up).
    pub fn went_silent_within(&self, within: Duration) -> bool {
        self.silent_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() <= within)
    }

    /// Closes the connection; the TLS ticket stays, so the next connect is 0-RTT.
    pub async fn close(&self) {
        if let Some(live) = self.live.lock().await.take() {
            live.conn.close(0u32.into(), b"idle");
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Connects (bounded by [`QUIC_CONNECT_TIMEOUT`]) without sending a request, and
    /// reports success only once the server has taken the connection. With a ticket the
    /// connection is usable at once (0-RTT), before the server has said anything; a server
    /// at its connection limit refuses it a moment later, and "warm" would have been a
    /// false report.
    pub async fn warm(&self) -> Result<(), TransportError> {
        let started = Instant::now();
        self.sender().await?;
        while self.last_handshake().is_none() && started.elapsed() < QUIC_CONNECT_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let conn = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let refused = |message: String| TransportError::Connect {
            addr: format!("udp {}", self.endpoint.authority),
            message,
        };
        match conn.and_then(|c| c.close_reason()) {
            Some(reason) => Err(refused(format!(
                "the server closed the connection during its handshake: {reason}"
            ))),
            None if self.last_handshake().is_none() => {
                Err(refused("QUIC handshake timed out".into()))
            }
            None => Ok(()),
        }
    }

    async fn connect(&self) -> Result<Live, TransportError> {
        let started = Instant::now();
        let port = self.port.load(Ordering::Relaxed);
        let host = &self.endpoint.host;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| TransportError::Resolve(host.clone()))?
            .collect();
        let addr = addrs
            .first()
            .copied()
            .ok_or_else(|| TransportError::Resolve(host.clone()))?;
        let err = |message: String| TransportError::Connect {
            addr: format!("udp {addr}"),
            message,
        };
        let connecting = self
            .quic
            .connect_with(self.config.clone(), addr, host)
            .map_err(|e| err(e.to_string()))?;
        // With a ticket, requests go out at once as early data; whether the server took
        // them is only known when the handshake ends.
        let (conn, handshake) = match connecting.into_0rtt() {
            Ok((conn, accepted)) => (conn, HandshakeState::EarlyData(accepted)),
            Err(connecting) => {
                let conn = tokio::time::timeout(QUIC_CONNECT_TIMEOUT, connecting)
                    .await
                    .map_err(|_| err("QUIC handshake timed out".into()))?
                    .map_err(|e| err(e.to_string()))?;
                (conn, HandshakeState::Full)
            }
        };
        let early_data = matches!(handshake, HandshakeState::EarlyData(_));
        let (mut driver, send) = tokio::time::timeout(
            QUIC_CONNECT_TIMEOUT,
            h3::client::new(streams::Connection::new(conn.clone())),
        )
        .await
        .map_err(|_| err("HTTP/3 setup timed out".into()))?
        .map_err(|e| err(format!("HTTP/3 setup: {e}")))?;
        tokio::spawn(async move {
            let e = driver.wait_idle().await;
            tracing::debug!(error = %e, "HTTP/3 connection ended");
        });
        *self
            .last_handshake
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(handshake);
        self.last_connect_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        tracing::debug!(%addr, early_data, "HTTP/3 connected");
        let watch = Arc::new(LinkWatch::default());
        tokio::spawn(watch_connection(conn.clone(), Arc::clone(&watch)));
        Ok(Live { conn, send, watch })
    }

    /// One request on its own QUIC stream.
    pub async fn request(&self, req: &WireRequest) -> Result<WireResponse, TransportError> {
        let timeout = req.timeout;
        match tokio::time::timeout(timeout, self.request_inner(req)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    async fn request_inner(&self, req: &WireRequest) -> Result<WireResponse, TransportError> {
        let (mut send, watch) = self.sender().await?;
        if let Some(p) = &req.progress {
            p.watch_link(watch);
        }
        let h3err = |e: &dyn std::fmt::Display| TransportError::Http(format!("HTTP/3: {e}"));
        let mut builder = http::Request::builder()
            .method(req.method.clone())
            .uri(format!("https://{}{}", self.endpoint.authority, req.path));
        for (name, value) in &req.headers {
            builder = builder.header(*name, value);
        }
        let request = builder
            .body(())
            .map_err(|e| TransportError::Http(format!("building the request: {e}")))?;
        let mut stream = send.send_request(request).await.map_err(|e| h3err(&e))?;
        // The server may answer before reading the whole body (a replayed chunk, a refusal)
        // and stop our sending: then the send fails but its answer is still there to read.
        // One DATA frame, handed to quinn by reference (no copy, no buffer of quinn's own).
        let mut sent = Ok(());
        if !req.body.is_empty() {
            sent =
                streams::send_zero_copy(&mut stream, req.body.clone(), req.progress.clone()).await;
        }
        let sent = match sent {
            Ok(()) => stream.finish().await,
            Err(e) => Err(e),
        };
        let resp = match stream.recv_response().await {
            Ok(r) => r,
            Err(e) => {
                return Err(match sent {
                    Err(send_err) => h3err(&send_err),
                    Ok(()) => h3err(&e),
                });
            }
        };
        let retry_after = super::retry_after(resp.headers());
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| h3err(&e))? {
            if body.len() + chunk.remaining() > MAX_ANSWER {
                return Err(TransportError::Http("answer too large".into()));
            }
            while chunk.has_remaining() {
                let part = chunk.chunk();
                body.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok(WireResponse {
            status: resp.status(),
            body: Bytes::from(body),
            alt_svc: None,
            protocol: "h3",
            retry_after,
        })
    }
}

/// A client UDP endpoint with large socket buffers.
fn client_endpoint() -> Result<quinn::Endpoint, String> {
    let sock = std::net::UdpSocket::bind("[::]:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let s2 = socket2::SockRef::from(&sock);
    let _ = s2.set_recv_buffer_size(UDP_BUFFER);
    let _ = s2.set_send_buffer_size(UDP_BUFFER);
    let runtime = quinn::default_runtime().ok_or("no async runtime for QUIC")?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, sock, runtime)
        .map_err(|e| format!("QUIC endpoint: {e}"))
}
