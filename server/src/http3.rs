//! HTTP/3 over QUIC (quinn + h3): the endpoint's settings, the accept loop, and carrying
//! each request to the protocol handler (`api::handle`) and its response back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h3::server::{RequestResolver, RequestStream};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use quinn::crypto::rustls::QuicServerConfig;
use uplink_proto::wire::code;

use crate::api::{self, App, ResponseBody};
use crate::early_data::{self, Handshake};
use crate::error::ApiError;
use crate::http3_body::H3Body;
use crate::idle::Activity;
use crate::limits::{Budget, ConnectionBudget};
use crate::listen::UdpBound;

/// Per-stream receive window. It also bounds what can wait behind a lost packet in one
/// stream, and that must stay small: quinn keeps each well-filled packet that arrives
/// behind a gap as its own buffer and kills the connection (INTERNAL_ERROR "too many gaps
/// in stream buffer") past 1024 of them. At 16 MiB a single loss on a fast stream did that
/// (1 % loss, 200 Mbit/s: 3 of 3 uploads of 512 MiB lost QUIC). 960 KiB is under 1024 of
/// the smallest such packets (~1 KB), and still 19 MB/s per stream at 50 ms RTT, 12
/// streams, far above one path.
pub const STREAM_WINDOW: u32 = 960 * 1024;
/// Per-connection receive window: 12 streams of 4 MiB chunks and more, on a long fat path.
pub const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// How much the server may have unacknowledged on a connection (responses are small; this
/// only matters if downloads are ever served).
const SEND_WINDOW: u64 = 64 * 1024 * 1024;
/// Concurrent request streams per connection: far above the 12 the daemon uses.
const MAX_STREAMS: u32 = 256;
/// A connection nobody uses is dropped after this. The server sends no keep-alives: a
/// client that wants its connection warm pings it (the daemon does every 15 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request header section (QPACK-decoded): ours are well under 2 KiB.
const MAX_FIELD_SECTION: u64 = 64 * 1024;

/// Builds the QUIC endpoint on `udp` with the HTTP/3 TLS configuration.
///
/// Segmentation offload: quinn-udp sends with Linux GSO (`UDP_SEGMENT`: up to
/// `max_gso_segments` packets of one flow in a single `sendmsg`) and receives with GRO
/// (`UDP_GRO`: up to `gro_segments` packets per `recvmsg`), which cuts the per-packet
/// syscall cost that otherwise caps QUIC well below TCP. Both are probed on the socket at
/// start (the kernel or a virtual NIC may lack them) and logged.
pub fn endpoint(udp: UdpBound, tls: rustls::ServerConfig) -> Result<quinn::Endpoint, String> {
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| format!("TLS configuration unusable for QUIC: {e}"))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .send_window(SEND_WINDOW)
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
                .map_err(|e| format!("idle timeout out of range: {e}"))?,
        ))
        .keep_alive_interval(None);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));

    match quinn::udp::UdpSocketState::new((&udp.socket).into()) {
        Ok(state) => tracing::info!(
            recv_buffer = udp.recv_buffer,
            send_buffer = udp.send_buffer,
            wanted = crate::listen::UDP_BUFFER,
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            "HTTP/3 UDP socket (buffers as the kernel reports them: twice the usable size on Linux)"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot probe UDP offload capabilities"),
    }
    // Accept datagrams up to jumbo size: clients probe for larger paths (loopback, jumbo
    // Ethernet) and fewer packets means less per-packet work on both sides.
    let mut endpoint = quinn::EndpointConfig::default();
    endpoint
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| format!("QUIC endpoint config: {e}"))?;
    quinn::Endpoint::new(
        endpoint,
        Some(server),
        udp.socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| format!("cannot start the QUIC endpoint: {e}"))
}

/// Largest UDP payload accepted (a 9000-byte jumbo frame less IP/UDP headers).
const MAX_UDP_PAYLOAD: u16 = 8952;
/// Accepts connections until the endpoint is closed.
/// Past the connection limit a connection is refused (QUIC CONNECTION_REFUSED): the
/// client tries again, or goes on over HTTP/2.
pub async fn serve(endpoint: quinn::Endpoint, app: Arc<App>) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(slot) = app.connections.try_open() else {
            tracing::debug!(peer = %incoming.remote_address(), "over the connection limit: refused");
            incoming.refuse();
            continue;
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            serve_connection(incoming, app).await;
            drop(slot);
        });
    }
}

async fn serve_connection(incoming: quinn::Incoming, app: Arc<App>) {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "QUIC connection refused");
            return;
        }
    };
    // 0.5-RTT: serve requests that came in 0-RTT packets now, not one round trip later;
    // `Handshake` tells the request tasks whether the client has finished the handshake.
    let (conn, handshake) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => {
            let handshake = Handshake::pending(conn.clone(), accepted);
            (conn, handshake)
        }
        // Never happens on a server (quinn documents `into_0rtt` as infallible there);
        // waiting for the handshake is the safe fallback.
        Err(connecting) => match connecting.await {
            Ok(conn) => (conn, Handshake::complete()),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "QUIC handshake failed");
                return;
            }
        },
    };
    let mut h3 = match h3::server::builder()
        .max_field_section_size(MAX_FIELD_SECTION)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
    {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 setup failed");
            return;
        }
    };
    let budget = ConnectionBudget(Budget::new(app.limits.connection_buffered));
    // QUIC's idle timeout ends a silent connection; this ends one kept alive (pings) but
    // carrying no request, as over HTTP/2. The idle time applies from the handshake on: a
    // daemon's prewarmed QUIC connection carries no request until the capture ends.
    let activity = Activity::new();
    let idle = app.limits.idle_connection;
    loop {
        let Some(left) = activity.time_left(idle, idle) else {
            tracing::debug!(%peer, "no request in progress for too long: closing");
            conn.close(H3_NO_ERROR.into(), b"idle");
            break;
        };
        let accepted = tokio::select! {
            a = h3.accept() => a,
            _ = tokio::time::sleep(left) => continue,
        };
        match accepted {
            Ok(Some(resolver)) => {
                let (app, handshake, conn) = (Arc::clone(&app), handshake.clone(), conn.clone());
                let (in_progress, budget) = (activity.begin(), budget.clone());
                tokio::spawn(async move {
                    serve_request(resolver, app, handshake, conn, budget).await;
                    drop(in_progress);
                });
            }
            Ok(None) => break,
            Err(e) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(%peer, error = %e, "HTTP/3 connection ended with an error");
                }
                break;
            }
        }
    }
}

/// HTTP/3's H3_NO_ERROR: the connection closes because it is not needed.
const H3_NO_ERROR: u32 = 0x100;

type Resolver = RequestResolver<h3_quinn::Connection, Bytes>;
type SendHalf = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

async fn serve_request(
    resolver: Resolver,
    app: Arc<App>,
    handshake: Handshake,
    conn: quinn::Connection,
    budget: ConnectionBudget,
) {
    let (req, stream) = match resolver.resolve_request().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/3 request unreadable");
            return;
        }
    };
    let (mut send, recv) = stream.split();
    let body = H3Body::new(recv, conn);
    let resp = if handshake.is_complete()
        || early_data::allowed_in_early_data(req.method(), req.uri().path(), req.headers())
    {
        let (mut parts, ()) = req.into_parts();
        parts.extensions.insert(budget);
        api::handle(app, Request::from_parts(parts, body)).await
    } else {
        tracing::info!(method = %req.method(), path = req.uri().path(), "refused in 0-RTT");
        drop(body);
        api::error_response(&ApiError::new(
            425,
            code::TOO_EARLY,
            format!(
                "{} {} must not be sent in TLS early data; send it again now that the handshake is done",
                req.method(),
                req.uri().path()
            ),
        ))
    };
    if let Err(e) = respond(&mut send, resp).await {
        tracing::debug!(error = %e, "HTTP/3 response not delivered");
    }
}

/// Sends the response head, its body (JSON bodies are small and whole) and the end of the
/// stream.
async fn respond(
    send: &mut SendHalf,
    resp: Response<ResponseBody>,
) -> Result<(), h3::error::StreamError> {
    let (mut parts, body) = resp.into_parts();
    let data = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    // hyper adds this on HTTP/2; here it is ours to add, so clients can size their reads
    // (RFC 9110 forbids it on 204 and 304).
    if !matches!(
        parts.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    ) {
        parts
            .headers
            .entry(http::header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(data.len()));
    }
    send.send_response(Response::from_parts(parts, ())).await?;
    if !data.is_empty() {
        send.send_data(data).await?;
    }
    send.finish().await
}
