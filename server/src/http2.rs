//! HTTP/2 over TLS 1.3: the accept loop and per-connection settings.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, App};
use crate::idle::Activity;
use crate::limits::{self, Budget, ConnectionBudget, Connections};

/// Per-stream flow-control window: a 4 MiB chunk flows without waiting for updates.
pub const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// Per-connection window: room for many streams in flight on a long fat path.
pub const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
const MAX_FRAME: u32 = 1024 * 1024;
const MAX_STREAMS: u32 = 256;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections past the limit are told so (503 on every request) for this long, then
/// closed; at most [`OVERFLOW_CONNECTIONS`] of them at once, beyond that they are closed
/// unanswered.
const OVERFLOW_TIME: Duration = Duration::from_secs(5);
const OVERFLOW_CONNECTIONS: usize = 64;
/// How long an idle connection told GOAWAY has to close before it is dropped.
const GOAWAY_TIME: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let overflow = Connections::new(OVERFLOW_CONNECTIONS);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let slot = match app.connections.try_open() {
            Some(slot) => Ok(slot),
            None => match overflow.try_open() {
                Some(over) => Err(over),
                None => {
                    tracing::debug!(%peer, "connection limit and overflow reached: closed");
                    continue;
                }
            },
        };
        let (acceptor, app) = (acceptor.clone(), Arc::clone(&app));
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let _slot = match slot {
                Ok(slot) => slot,
                Err(_over) => {
                    tracing::debug!(%peer, "over the connection limit: answering 503");
                    let max = app.connections.max();
                    let refuse = service_fn(move |_req| async move {
                        let e = limits::too_many_connections(max);
                        Ok::<_, std::convert::Infallible>(api::error_response(&e))
                    });
                    let conn = builder().serve_connection(TokioIo::new(tls), refuse);
                    let _ = tokio::time::timeout(OVERFLOW_TIME, conn).await;
                    return;
                }
            };
            let budget = ConnectionBudget(Budget::new(app.limits.connection_buffered));
            let activity = Activity::new();
            let limits = app.limits;
            let requests = Arc::clone(&activity);
            let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let in_progress = requests.begin();
                req.extensions_mut().insert(budget.clone());
                let app = Arc::clone(&app);
                async move {
                    let response = api::handle(app, req).await;
                    drop(in_progress);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let conn = builder().serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let result = loop {
                let Some(left) = activity.time_left(limits.first_request, limits.idle_connection)
                else {
                    tracing::debug!(%peer, "no request in progress for too long: closing");
                    conn.as_mut().graceful_shutdown();
                    break tokio::time::timeout(GOAWAY_TIME, conn.as_mut())
                        .await
                        .unwrap_or(Ok(()));
                };
                tokio::select! {
                    r = conn.as_mut() => break r,
                    _ = tokio::time::sleep(left) => {}
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// The HTTP/2 settings of every connection.
fn builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buf_size(1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}
