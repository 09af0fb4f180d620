//! `uplink-server`: the reference ingest server for uplink.

mod api;
mod chunk_log;
mod chunk_put;
mod clients;
mod early_data;
mod error;
mod fsutil;
#[cfg(test)]
mod fuzz;
mod heap;
mod http2;
mod http3;
mod http3_body;
mod idle;
mod limits;
mod listen;
mod objects;
mod part;
mod s3;
mod store;
mod tls;
mod tls_sessions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use uplink_proto::integrity::Credentials;

use crate::clients::{ClientSource, Clients};
use crate::tls_sessions::SessionCache;

/// Reference ingest server: verifies every chunk and assembles uploads (HTTP/3 and HTTP/2,
/// TLS 1.3).
#[derive(Parser, Debug)]
#[command(name = "uplink-server", version)]
struct Args {
    /// Address to listen on: TCP for HTTP/2 and UDP for HTTP/3 on the same port number;
    /// port 0 picks a port free on both.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Serve HTTP/2 only: no UDP socket, no Alt-Svc advertisement.
    #[arg(long)]
    no_h3: bool,
    /// Where sessions, objects and the generated certificate live.
    #[arg(long, default_value = "uplink-data")]
    data_dir: PathBuf,
    /// Keep sessions and objects in an S3-compatible object store instead of DATA_DIR:
    /// `s3://bucket/prefix`. Endpoint, region and credentials come from the usual AWS
    /// environment (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...) or
    /// ~/.aws/{config,credentials}. Several servers given the same store, certificate and
    /// clients serve the same uploads: any of them takes any request.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// With --store: a multipart upload under the store's objects/ older than this many
    /// seconds was left by a complete whose node died, and the sweep aborts it (S3 bills
    /// its parts until then). It must exceed the longest complete (one holds its lease an
    /// hour at most): a shorter age can abort a complete still running.
    #[arg(long, value_name = "SECS", default_value_t = store::ABANDONED_MULTIPART_SECS, requires = "store")]
    abandoned_multipart_after: u64,
    /// File holding the client secret (the daemon uses the same file). The bearer
    /// credential clients present and the key that checks chunk tags are derived from it;
    /// the secret itself is never sent. One client: objects go to DATA_DIR/objects.
    #[arg(long, required_unless_present = "clients", conflicts_with = "clients")]
    token_file: Option<PathBuf>,
    /// Directory of clients (tenants): `<id>.token` holds client <id>'s secret (mode 0600),
    /// `<id>.previous` the secret it replaces while devices switch. Each tenant sees only
    /// its own uploads and objects (DATA_DIR/objects/<id>/). SIGHUP reads it again.
    #[arg(long, value_name = "DIR")]
    clients: Option<PathBuf>,
    /// Per tenant: most bytes held (objects plus the declared sizes of open uploads).
    /// A create past it answers 413 `quota_exceeded`.
    #[arg(long)]
    quota_bytes: Option<u64>,
    /// Per tenant: most uploads open at once. A create past it answers 429
    /// `too_many_sessions` with Retry-After.
    #[arg(long)]
    quota_sessions: Option<usize>,
    /// Print the bearer credential derived from --token-file (for plain HTTP clients:
    /// `curl -H "Authorization: Bearer $(uplink-server --token-file F --print-bearer)"`)
    /// and exit.
    #[arg(long, requires = "token_file")]
    print_bearer: bool,
    /// PEM certificate chain; with no --cert/--key a private CA and certificate are made
    /// in DATA_DIR/tls.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for --cert (mode 0600, or it is refused).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// A DER OCSP response for --cert to staple to every TLS handshake (fetch it from
    /// the CA's responder, e.g. `openssl ocsp ... -respout FILE`; SIGHUP reads it again,
    /// with the certificate and key).
    #[arg(long, requires = "cert", value_name = "FILE")]
    ocsp: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the generated certificate.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Seconds a completed session is kept (so a client that lost the answer to
    /// `complete` can ask again) before it is removed; the object itself stays.
    #[arg(long, default_value_t = 86_400)]
    completed_retention: u64,
    /// Do not reserve an upload's whole size on disk when it is created (thin-provisioned
    /// volumes, or uploads larger than the free space that will be moved away as they
    /// come). A full disk is then answered mid-upload with 507 `disk_full` instead of at
    /// create.
    #[arg(long)]
    no_reserve: bool,
    /// Most connections open at once (HTTP/2 and HTTP/3 together). Past it, HTTP/2
    /// requests are answered 503 `too_many_connections` and HTTP/3 connections refused.
    #[arg(long, default_value_t = limits::Limits::default().max_connections)]
    max_connections: usize,
    /// Most bytes of request bodies held in memory at once, all connections together.
    /// Past it a chunk is answered 503 `busy` with Retry-After before its body is read.
    #[arg(long, default_value_t = limits::Limits::default().max_buffered)]
    max_buffered_bytes: u64,
    /// Most bytes of request bodies one connection may have held in memory at once.
    #[arg(long, default_value_t = limits::Limits::default().connection_buffered)]
    connection_buffered_bytes: u64,
    /// Seconds a request body may deliver less than 16 KiB (silent, or trickling) before it
    /// is answered 408 `body_timeout`.
    #[arg(long, default_value_t = limits::Limits::default().body_idle.as_secs())]
    body_timeout: u64,
    /// Seconds a new HTTP/2 connection may take to send its first request; then it is
    /// closed. (A QUIC connection gets the idle timeout: a prewarmed one waits for the
    /// capture to end.)
    #[arg(long, default_value_t = limits::Limits::default().first_request.as_secs())]
    header_timeout: u64,
    /// Seconds a connection (HTTP/2 or HTTP/3) may go with no request in progress; then it
    /// is closed (a client simply connects again).
    #[arg(long, default_value_t = limits::Limits::default().idle_connection.as_secs())]
    idle_timeout: u64,
    /// Seconds a TLS session may be resumed (and carry 0-RTT data) after it was issued;
    /// then its secret is erased. The seed rotates ticket keys every 3600 s.
    #[arg(long, default_value_t = tls_sessions::DEFAULT_LIFETIME.as_secs())]
    tls_session_lifetime: u64,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UPLINK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; plain text for journald and log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    heap::keep_freed_buffers();
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uplink-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let source = match (&args.clients, &args.token_file) {
        (Some(dir), _) => ClientSource::Dir(dir.clone()),
        (None, Some(file)) => ClientSource::TokenFile(file.clone()),
        (None, None) => return Err("pass --token-file FILE or --clients DIR".into()),
    };
    if let (true, ClientSource::TokenFile(file)) = (args.print_bearer, &source) {
        println!("{}", Credentials::from_token_file(file)?.bearer());
        return Ok(());
    }
    let clients = Clients::load(&source)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", args.data_dir.display()))?;
    let files = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => tls::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
            ocsp: args.ocsp.clone(),
        },
        _ => {
            let mut names = vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ];
            if !args.listen.ip().is_unspecified() {
                names.push(args.listen.ip().to_string());
            }
            names.extend(args.sans.iter().cloned());
            names.dedup();
            tls::ensure_self_signed(&args.data_dir.join("tls"), &names)?
        }
    };
    let lifetime = Duration::from_secs(args.tls_session_lifetime.max(1));
    let tcp_sessions = Arc::new(SessionCache::new(TLS_SESSIONS, lifetime));
    let quic_sessions = Arc::new(SessionCache::new(TLS_SESSIONS, lifetime));
    let certs = tls::Certs::load(files.clone())?;
    let tls_config = tls::server_config(
        Arc::clone(&certs),
        &[uplink_proto::wire::ALPN_H2],
        Arc::clone(&tcp_sessions),
    );
    let quic_tls = if args.no_h3 {
        None
    } else {
        Some(tls::quic_server_config(
            Arc::clone(&certs),
            Arc::clone(&quic_sessions),
        ))
    };
    let quota = store::Quota {
        bytes: args.quota_bytes,
        sessions: args.quota_sessions,
    };
    let per_tenant = source.per_tenant_objects();
    let store = match &args.store {
        None => store::Store::open(&args.data_dir, per_tenant),
        Some(url) => {
            let env: std::collections::HashMap<String, String> = std::env::vars().collect();
            let config = s3::Config::from_env(url, &env)?;
            let credentials = config.credentials.describe();
            tracing::info!(store = %url, %credentials, "object store");
            let prefix = config.prefix.clone();
            let remote = store::Remote::new(s3::S3::new(config)?, &prefix, per_tenant)
                .abandoning_multiparts_after(args.abandoned_multipart_after);
            if args.abandoned_multipart_after < store::LEASE_SECS {
                tracing::warn!(
                    secs = args.abandoned_multipart_after,
                    lease_secs = store::LEASE_SECS,
                    "--abandoned-multipart-after is shorter than a completion lease: a complete running that long loses its multipart upload and fails"
                );
            }
            // Chunks kept for the running hash are bodies in memory too.
            store::set_hash_ahead_budget(args.max_buffered_bytes / 4);
            remote.probe()?;
            store::Store::open_remote(&args.data_dir, per_tenant, remote)
        }
    }
    .map(|s| s.reserving_space(!args.no_reserve).with_quota(quota))
    .map_err(|e| format!("cannot open data dir {}: {e}", args.data_dir.display()))?;
    store.set_tenant_quotas(clients.quotas());
    let sessions = store.session_count();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listeners = listen::bind(args.listen, quic_tls.is_some())?;
        let addr = listeners.tcp.local_addr()?;
        let endpoint = match (listeners.udp, quic_tls) {
            (Some(udp), Some(quic_tls)) => Some(http3::endpoint(udp, quic_tls)?),
            _ => None,
        };
        let tenants = clients.len();
        let limits = limits::Limits {
            max_connections: args.max_connections.max(1),
            max_buffered: args.max_buffered_bytes,
            connection_buffered: args.connection_buffered_bytes,
            body_idle: Duration::from_secs(args.body_timeout.max(1)),
            first_request: Duration::from_secs(args.header_timeout.max(1)),
            idle_connection: Duration::from_secs(args.idle_timeout.max(1)),
        };
        let app = Arc::new(api::App {
            store,
            clients: std::sync::RwLock::new(Arc::new(clients)),
            client_source: source,
            buffered: limits::Budget::new(limits.max_buffered),
            connections: limits::Connections::new(limits.max_connections),
            limits,
            // Clients that start on HTTP/2 learn here that HTTP/3 is on the same port.
            alt_svc: endpoint
                .as_ref()
                .map(|_| format!("h3=\":{}\"; ma=86400", addr.port())),
        });
        if let Some(endpoint) = &endpoint {
            tokio::spawn(http3::serve(endpoint.clone(), Arc::clone(&app)));
        }
        tokio::spawn(sweep_sessions(Arc::clone(&app), args.completed_retention));
        tokio::spawn(reload_on_sighup(Arc::clone(&app), certs));
        tokio::spawn(purge_tls_sessions([tcp_sessions, quic_sessions]));
        let ca = files.ca.as_ref().unwrap_or(&files.cert);
        let h3 = u8::from(endpoint.is_some());
        tracing::info!(%addr, sessions, tenants, http3 = h3 == 1, "serving");
        // One line on stdout that scripts and tests wait for.
        println!(
            "uplink-server ready addr={addr} ca={} h3={h3}",
            ca.display()
        );
        http2::serve(listeners.tcp, tls_config, app, shutdown_signal()).await;
        if let Some(endpoint) = endpoint {
            // Tell HTTP/3 clients we are going (H3_NO_ERROR), then give the close a moment
            // to reach them.
            endpoint.close(quinn::VarInt::from_u32(0x100), b"server shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        tracing::info!("stopped");
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// Removes expired and old completed sessions and closes idle files, while serving.
async fn sweep_sessions(app: Arc<api::App>, retention_secs: u64) {
    // Often enough to close idle files soon after IDLE_CLOSE_SECS and to honour a short
    // retention; a sweep is one pass over the in-memory index.
    let every = Duration::from_secs((retention_secs / 2).clamp(1, store::IDLE_CLOSE_SECS / 2));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let app = Arc::clone(&app);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let _ = tokio::task::spawn_blocking(move || app.store.sweep(now, retention_secs)).await;
    }
}

/// TLS sessions the server remembers per transport (the oldest goes first past it).
const TLS_SESSIONS: usize = 4096;

/// Erases TLS sessions past their lifetime even when no handshake comes to do it, so no
/// resumption secret outlives its lifetime by more than a tenth of it.
async fn purge_tls_sessions(caches: [Arc<SessionCache>; 2]) {
    let every = (caches[0].lifetime() / 10).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        for c in &caches {
            c.purge(now);
        }
    }
}

/// Reads the clients (secret rotation, clients added or removed) and the certificate, key
/// and OCSP staple again on each SIGHUP.
async fn reload_on_sighup(app: Arc<api::App>, certs: Arc<tls::Certs>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: clients and certificates are read at start only");
        return;
    };
    while hup.recv().await.is_some() {
        let certs2 = Arc::clone(&certs);
        match tokio::task::spawn_blocking(move || certs2.reload()).await {
            Ok(Ok(())) => tracing::info!("certificate, key and OCSP staple reloaded"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "certificate not reloaded; the old one stays")
            }
            Err(e) => tracing::error!(error = %e, "certificate not reloaded"),
        }
        let app2 = Arc::clone(&app);
        match tokio::task::spawn_blocking(move || app2.reload_clients()).await {
            Ok(Ok(n)) => tracing::info!(clients = n, "clients reloaded"),
            Ok(Err(e)) => tracing::error!(error = %e, "clients not reloaded; the old ones stay"),
            Err(e) => tracing::error!(error = %e, "clients not reloaded"),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
