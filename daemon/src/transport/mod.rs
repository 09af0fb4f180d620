//! Carrying requests of the wire protocol to the server.
//!
//! [`h2::H2Pool`] keeps a few HTTP/2 connections over TLS 1.3 and spreads streams over
//! them; the upload engine only sees [`Transport::request`], so HTTP/3 can slot in beside it.

pub mod alt_svc;
pub mod congestion;
pub mod ct;
pub mod der;
pub mod h2;
pub mod h3;
pub mod happy;
pub mod mptcp;
pub mod ocsp;
pub mod path_watch;
pub mod pin;
pub mod progress;
pub mod tcp_watch;
pub mod tls;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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
    /// Where the transport counts the body bytes it hands on (for stall detection).
    pub progress: Option<Arc<progress::BodyProgress>>,
}

/// The server's answer, body read whole (answers are small JSON).
#[derive(Debug, Clone)]
pub struct WireResponse {
    pub status: http::StatusCode,
    pub body: Bytes,
    /// The `Alt-Svc` header, if the server sent one.
    pub alt_svc: Option<String>,
    /// `h2` or `h3`: what carried this exchange.
    pub protocol: &'static str,
    /// `Retry-After` in seconds, if the server sent one (on 503: it is short of something
    /// that frees up by itself).
    pub retry_after: Option<std::time::Duration>,
}

/// The longest `Retry-After` honoured; a larger value is taken as this.
const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// `Retry-After` as delay-seconds (the HTTP-date form is not used by our server).
pub fn retry_after(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let secs: u64 = headers
        .get(uplink_proto::wire::HDR_RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Why a request did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    /// The connection's path is gone: the host now reaches the server from another
    /// address (Wi-Fi lost, cellular took over). Sent again at once on a fresh connection.
    #[error("the connection's network path is gone")]
    PathGone,
    /// The host answered that nothing listens there (the server is down, its host is up).
    #[error("connection to {addr} refused")]
    Refused { addr: String },
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
    /// Smoothed RTT (HTTP/3 only; TCP's is not visible to us).
    pub rtt_ms: Option<f64>,
    /// How the last HTTP/3 connection was made: `full` or `0-rtt`.
    pub handshake: Option<&'static str>,
    /// The congestion control of the latest HTTP/2 (TCP) connection.
    pub tcp_congestion: congestion::Choice,
    /// The congestion control of HTTP/3 connections (quinn's), when HTTP/3 is on.
    pub quic_congestion: Option<&'static str>,
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

/// After an HTTP/3 failure, stay on HTTP/2 this long before trying QUIC again.
const H3_PENALTY: std::time::Duration = std::time::Duration::from_secs(60);

/// HTTP/2 answering nothing for this long after QUIC was benched for silence means the
/// path was dead, not QUIC (the engine's stall window).
const H2_SILENT_AFTER_BENCH: std::time::Duration = std::time::Duration::from_secs(5);

/// While HTTP/3 is benched for silence: how often QUIC is asked whether it answers again,
/// and how long an answer may take.
const H3_PROBE_EVERY: Duration = Duration::from_secs(2);
const H3_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// HTTP/3 when the server offers it and it works, HTTP/2 always as the floor.
///
/// Happy-Eyeballs style: a request never waits for QUIC to come up. While HTTP/3 is not
/// connected, requests go over HTTP/2 and a QUIC connection is attempted in the
/// background; once it is up, new requests use it. A QUIC failure sends requests back to
/// HTTP/2 at once and benches HTTP/3 for a minute. (With a ticket from an earlier
/// connection, a reconnect is 0-RTT and needs no wait, so it is used directly.)
pub struct Transport {
    h2: h2::H2Pool,
    h3: Option<h3::H3Client>,
    alt: alt_svc::AltSvcCache,
    h3_connecting: AtomicBool,
    h3_ready_once: AtomicBool,
    h3_benched_until: std::sync::Mutex<Option<Instant>>,
    /// When HTTP/3 was benched for silence (a connect that timed out, a connection that
    /// went quiet), and when an HTTP/2 request last failed. A silent bench may be an
    /// outage of the whole path rather than QUIC's fault: a probe asks QUIC every few
    /// seconds, and at once when HTTP/2 comes back after failing too.
    h3_silent_bench_at: std::sync::Mutex<Option<Instant>>,
    h2_failed_at: std::sync::Mutex<Option<Instant>>,
    /// When an HTTP/2 request last succeeded. Requests the engine abandons as stalled
    /// never fail here (they are dropped), so "HTTP/2 answered nothing for a stall window
    /// after the bench" counts as HTTP/2 failing too.
    h2_ok_at: std::sync::Mutex<Option<Instant>>,
    /// A QUIC probe is under way (at most one), and the bell that makes it ask at once.
    h3_probing: AtomicBool,
    h3_wake: tokio::sync::Notify,
}

impl Transport {
    pub fn new(
        h2: h2::H2Pool,
        h3: Option<h3::H3Client>,
        alt: alt_svc::AltSvcCache,
    ) -> Arc<Transport> {
        if let (Some(h3), Some(port)) = (&h3, alt.port()) {
            h3.set_port(port);
        }
        Arc::new(Transport {
            h2,
            h3,
            alt,
            h3_connecting: AtomicBool::new(false),
            h3_ready_once: AtomicBool::new(false),
            h3_benched_until: std::sync::Mutex::new(None),
            h3_silent_bench_at: std::sync::Mutex::new(None),
            h2_failed_at: std::sync::Mutex::new(None),
            h2_ok_at: std::sync::Mutex::new(None),
            h3_probing: AtomicBool::new(false),
            h3_wake: tokio::sync::Notify::new(),
        })
    }

    fn h3_benched(&self) -> bool {
        let b = self
            .h3_benched_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        b.is_some_and(|until| Instant::now() < until)
    }

    fn bench_h3(self: &Arc<Self>, why: &TransportError) {
        tracing::info!(error = %why, "HTTP/3 failed; using HTTP/2 for a while");
        let silent = match why {
            TransportError::Timeout(_) => true,
            TransportError::Connect { message, .. } => message.contains("timed out"),
            _ => false,
        } || self
            .h3
            .as_ref()
            .is_some_and(|h| h.went_silent_within(std::time::Duration::from_secs(10)));
        let now = Instant::now();
        // One outage brings many QUIC failures, silence first and then whatever the dead
        // connection's requests end with (a 0-RTT connect made into the outage fails
        // long after the silence). While a bench for silence lasts, later failures are
        // part of the same outage and keep its mark; only a fresh bench starts a new one.
        let still_benched = self.h3_benched();
        let mut mark = lock(&self.h3_silent_bench_at);
        *mark = match (*mark, still_benched) {
            (Some(at), true) => Some(at),
            _ => silent.then_some(now),
        };
        let silent_bench = mark.is_some();
        drop(mark);
        *lock(&self.h3_benched_until) = Some(now + H3_PENALTY);
        if silent_bench {
            self.probe_h3_while_silent();
        }
    }

    /// While HTTP/3 is benched for silence, asks QUIC itself every few seconds whether it
    /// answers again (an unauthenticated ping; with a ticket it goes as early data, and its
    /// answer proves the handshake got through). An answer lifts the bench at once, whatever
    /// HTTP/2 saw meanwhile: the outage's end, not a guess from the other protocol, decides.
    fn probe_h3_while_silent(self: &Arc<Self>) {
        if self.h3.is_none() || self.h3_probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut woken = false;
            loop {
                if !woken {
                    tokio::select! {
                        () = tokio::time::sleep(H3_PROBE_EVERY) => {}
                        () = me.h3_wake.notified() => {}
                    }
                }
                let Some(h3) = me.h3.as_ref() else { break };
                if lock(&me.h3_silent_bench_at).is_none() || !me.h3_benched() {
                    break;
                }
                let ping = WireRequest {
                    method: http::Method::HEAD,
                    path: uplink_proto::wire::PATH_PING.into(),
                    headers: Vec::new(),
                    body: Bytes::new(),
                    lane: 0,
                    timeout: H3_PROBE_TIMEOUT,
                    progress: None,
                };
                // A wake while a ping is out means the path just came back: that ping rode
                // a connection opened into the outage, so ask again on a fresh one.
                woken = false;
                let answered = tokio::select! {
                    r = h3.request(&ping) => r.is_ok_and(|r| r.status.is_success()),
                    () = me.h3_wake.notified() => { woken = true; false }
                };
                if answered {
                    *lock(&me.h3_silent_bench_at) = None;
                    *lock(&me.h3_benched_until) = None;
                    me.h3_ready_once.store(true, Ordering::SeqCst);
                    tracing::info!("QUIC answers again: back on HTTP/3");
                    break;
                }
                // A connection whose handshake got no answer has backed off its retries;
                // after the path's return a fresh one is quicker. The ticket stays (0-RTT).
                tracing::debug!("QUIC probe unanswered");
                h3.close().await;
            }
            me.h3_probing.store(false, Ordering::SeqCst);
        });
    }

    /// The HTTP/3 client, if the server offers it and it is not benched.
    fn h3_offered(&self) -> Option<&h3::H3Client> {
        self.h3
            .as_ref()
            .filter(|_| self.alt.port().is_some() && !self.h3_benched())
    }

    /// Starts a background QUIC connection unless one is under way.
    fn connect_h3_soon(self: &Arc<Self>) {
        if self.h3_offered().is_none() || self.h3_connecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Some(h3) = me.h3_offered() {
                match h3.warm().await {
                    Ok(()) => me.h3_ready_once.store(true, Ordering::SeqCst),
                    Err(e) => me.bench_h3(&e),
                }
            }
            me.h3_connecting.store(false, Ordering::SeqCst);
        });
    }

    /// Connects HTTP/2 and, if offered, HTTP/3 at the same time; waits for both (each is
    /// bounded by its own connect timeout). HTTP/2 failing is an error; HTTP/3 failing
    /// only benches it.
    pub async fn warm(self: &Arc<Self>) -> Result<(), TransportError> {
        let h3 = async {
            if let Some(h3) = self.h3_offered() {
                match h3.warm().await {
                    Ok(()) => self.h3_ready_once.store(true, Ordering::SeqCst),
                    Err(e) => self.bench_h3(&e),
                }
            }
        };
        let (h2, ()) = tokio::join!(self.h2.warm(), h3);
        h2
    }

    /// Connects HTTP/3 if it is offered and not connected (bounded); a failure benches it.
    pub async fn warm_h3(self: &Arc<Self>) {
        if let Some(h3) = self.h3_offered()
            && !h3.is_connected()
        {
            match h3.warm().await {
                Ok(()) => self.h3_ready_once.store(true, Ordering::SeqCst),
                Err(e) => self.bench_h3(&e),
            }
        }
    }

    pub async fn request(
        self: &Arc<Self>,
        req: WireRequest,
    ) -> Result<WireResponse, TransportError> {
        if let Some(h3) = self.h3_offered()
            && (h3.is_connected() || self.h3_ready_once.load(Ordering::SeqCst))
        {
            match h3.request(&req).await {
                Ok(r) => return Ok(r),
                // A slow request is the network's fault, not QUIC's: let the caller retry.
                Err(e @ TransportError::Timeout(_)) => return Err(e),
                Err(e) => self.bench_h3(&e),
            }
        }
        let resp = match self.h2.request(req).await {
            Ok(r) => r,
            Err(e) => {
                *lock(&self.h2_failed_at) = Some(Instant::now());
                return Err(e);
            }
        };
        self.after_outage();
        if let Some(offer) = resp.alt_svc.as_deref().and_then(alt_svc::parse) {
            if self.alt.learn(offer)
                && let Some(h3) = &self.h3
            {
                h3.set_port(offer.port);
            }
            if self.h3.as_ref().is_some_and(|h| !h.is_connected()) {
                self.connect_h3_soon();
            }
        }
        Ok(resp)
    }

    /// HTTP/2 works again after an outage that also benched HTTP/3 (it failed, or answered
    /// nothing for a stall window, after the bench): the path is likely back, so the QUIC
    /// probe asks at once instead of at its next period. Only the probe lifts the bench,
    /// on QUIC's own answer.
    fn after_outage(self: &Arc<Self>) {
        let now = Instant::now();
        let last_ok = lock(&self.h2_ok_at).replace(now);
        let Some(benched_at) = *lock(&self.h3_silent_bench_at) else {
            return;
        };
        let failed_since_ok = lock(&self.h2_failed_at)
            .is_some_and(|f| f >= benched_at && last_ok.is_none_or(|ok| ok < f));
        let silent_since_bench = last_ok.is_none_or(|ok| ok < benched_at)
            && now.duration_since(benched_at) >= H2_SILENT_AFTER_BENCH;
        if failed_since_ok || silent_since_bench {
            tracing::info!("HTTP/2 answers again after the outage: asking QUIC now");
            self.h3_wake.notify_one();
        }
    }

    /// The protocol new requests go over right now.
    pub fn current_protocol(&self) -> &'static str {
        match self.h3_offered() {
            Some(h3) if h3.is_connected() => "h3",
            _ => "h2",
        }
    }

    /// Whether the HTTP/3 connection in use was made with 0-RTT.
    pub fn zero_rtt(&self) -> bool {
        self.current_protocol() == "h3"
            && self.h3.as_ref().and_then(|h| h.last_handshake()) == Some(h3::Handshake::ZeroRtt)
    }

    pub fn lanes(&self) -> usize {
        self.h2.lanes()
    }

    /// Connections whose path is gone are dropped and their requests failed with
    /// [`TransportError::PathGone`], so they go again at once on fresh connections (HTTP/2;
    /// QUIC migrates by itself). Returns (connections dropped, connections busy and not
    /// checked).
    pub fn leave_dead_paths(&self) -> (usize, usize) {
        self.h2.leave_dead_paths()
    }

    /// The next requests open fresh connections; requests out finish on the old ones.
    pub async fn reconnect(&self) {
        self.h2.reconnect().await;
        if let Some(h3) = &self.h3 {
            h3.reconnect().await;
        }
    }

    /// Closes every connection (the keep-warm window ended with nothing to send).
    pub async fn close(&self) {
        self.h2.close().await;
        if let Some(h3) = &self.h3 {
            h3.close().await;
        }
    }

    pub fn info(&self) -> LinkInfo {
        let mut info = self.h2.info();
        info.protocol = self.current_protocol();
        if let Some(h3) = &self.h3 {
            info.quic_congestion = Some(h3::CONGESTION);
            info.handshake = h3.last_handshake().map(h3::Handshake::name);
            if info.protocol == "h3" {
                info.rtt_ms = h3.rtt().map(|d| d.as_secs_f64() * 1000.0);
                info.last_connect_ms = h3.last_connect_ms();
                info.connected = info.connected.max(1);
            }
        }
        info
    }
}
