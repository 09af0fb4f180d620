//! `uplinkd`: takes files over a local gRPC socket and delivers them to the server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use uplink_proto::grpc::uplink_server::UplinkServer;
use uplinkd::config::{Config, Settings};
use uplinkd::jobs::JobDb;
use uplinkd::manager::Manager;
use uplinkd::server_api::ServerClient;
use uplinkd::transport::{self, alt_svc::AltSvcCache, h2::H2Pool, h3::H3Client};
use uplinkd::{grpc, ipc};

/// uplink's background upload daemon.
#[derive(Parser, Debug)]
#[command(name = "uplinkd", version)]
struct Args {
    /// TOML config file (keys: endpoint, token_file, ca_file, pin_spki, ct, ct_logs, state_dir, socket, streams,
    /// connections, chunk_size, keep_warm_seconds, keep_finished_jobs, keep_finished_days,
    /// sysfs_root);
    /// default ~/.config/uplink/uplinkd.toml if present.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Ingest server, https://HOST:PORT.
    #[arg(long)]
    endpoint: Option<String>,
    /// File holding the client secret (the server uses the same file); the bearer
    /// credential and the chunk-signing key are derived from it, the secret is never sent.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for the server (default: the system's roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Pin a CA: the server's chain must run through a CA with this key
    /// (`sha256/<base64>` of its SubjectPublicKeyInfo; repeat for more, e.g. the next CA
    /// during a rotation). Never the leaf's key: that changes at every renewal.
    #[arg(long = "pin-spki", value_name = "sha256/BASE64")]
    pin_spki: Vec<String>,
    /// Certificate Transparency: require SCTs from 2 distinct logs of --ct-logs in the
    /// server's certificate. `auto` (default): on when the server is trusted through the
    /// system's CAs, off with --ca-file (a private CA's certificates are not logged).
    #[arg(long, value_parser = ["auto", "on", "off"])]
    ct: Option<String>,
    /// The CT log list: Google's log_list.json (v3), e.g. from
    /// https://www.gstatic.com/ct/log_list/v3/log_list.json
    #[arg(long, value_name = "FILE")]
    ct_logs: Option<PathBuf>,
    /// Where jobs and checkpoints live.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The gRPC Unix socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Requests in flight, fixed (default: the speed tier's, 4/8/12/12 from slow to fast).
    #[arg(long)]
    streams: Option<u32>,
    /// TCP connections the streams spread over (default 4).
    #[arg(long)]
    connections: Option<u32>,
    /// Chunk size in bytes, fixed (default: the speed tier's, 1/4/16/32 MiB, starting
    /// at 256 KiB so the first acknowledgement comes quickly).
    #[arg(long)]
    chunk_size: Option<u64>,
    /// Finished jobs to keep listed, at most (default 1000; older ones are removed).
    #[arg(long)]
    keep_finished_jobs: Option<u64>,
    /// Days a finished job stays listed, at most (default 7).
    #[arg(long)]
    keep_finished_days: Option<u32>,
    /// Where Status reads heat and power from (default /sys). Reported only: uploads are
    /// never slowed for heat or battery.
    #[arg(long)]
    sysfs_root: Option<PathBuf>,
}

#[global_allocator]
static HEAP: uplinkd::heap::Counting = uplinkd::heap::Counting;

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
    let a = Args::parse();
    let flags = Settings {
        endpoint: a.endpoint,
        token_file: a.token_file,
        ca_file: a.ca_file,
        pin_spki: (!a.pin_spki.is_empty()).then_some(a.pin_spki),
        ct: a.ct,
        ct_logs: a.ct_logs,
        state_dir: a.state_dir,
        socket: a.socket,
        streams: a.streams,
        connections: a.connections,
        chunk_size: a.chunk_size,
        keep_warm_seconds: None,
        keep_finished_jobs: a.keep_finished_jobs,
        keep_finished_days: a.keep_finished_days,
        sysfs_root: a.sysfs_root,
    };
    let result = Config::resolve(a.config, flags).and_then(|cfg| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        rt.block_on(run(cfg))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uplinkd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoint = transport::Endpoint::parse(&cfg.endpoint).map_err(|e| e.to_string())?;
    let tls = transport::tls::client_config_checked(
        cfg.ca_file.as_deref(),
        &cfg.trust,
        &[uplink_proto::wire::ALPN_H2],
    )?;
    let h3 = match H3Client::new(endpoint.clone(), &tls) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "HTTP/3 unavailable; using HTTP/2 only");
            None
        }
    };
    let alt = AltSvcCache::load(Some(cfg.state_dir.join("altsvc.json")), &endpoint.authority);
    let pool = H2Pool::new(endpoint, tls, cfg.connections as usize);
    let transport = transport::Transport::new(pool, h3, alt);
    tokio::spawn(transport::path_watch::run(Arc::downgrade(&transport)));
    let client = Arc::new(
        ServerClient::new(transport, cfg.credentials.clone())
            .with_token_file(cfg.token_file.clone()),
    );
    let db = Arc::new(JobDb::open(&cfg.state_dir)?);
    let stop = CancellationToken::new();
    let socket = cfg.socket.clone();
    let listener = ipc::listen(&socket)?;
    let mgr = Arc::new(Manager::new(cfg, db, client, stop.clone()));
    let queue = tokio::spawn(Arc::clone(&mgr).run_queue());

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<UplinkServer<grpc::Api>>().await;
    // Both reflection versions: older grpcurl/grpcui builds only speak v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(uplink_proto::grpc::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(uplink_proto::grpc::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| format!("reflection: {e}"))?;
    let api = UplinkServer::new(grpc::Api {
        mgr: Arc::clone(&mgr),
    });

    tracing::info!(socket = %socket.display(), endpoint = %mgr.cfg.endpoint, "uplinkd serving");
    println!("uplinkd ready socket={}", socket.display());
    ipc::notify_ready();
    let shutdown = {
        let stop = stop.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down: checkpointing the running job");
            stop.cancel();
        }
    };
    let served = tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(ipc::check_peer))
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(api)
        .serve_with_incoming_shutdown(ipc::incoming(listener), shutdown)
        .await;
    stop.cancel();
    // The running job checkpoints on the stop signal; give it a bounded moment.
    if tokio::time::timeout(Duration::from_secs(10), queue)
        .await
        .is_err()
    {
        tracing::warn!("the running job did not stop within 10 s");
    }
    if let Err(e) = mgr.db.flush().await {
        tracing::error!(error = %e, "final flush of the job store failed");
    }
    // Close the connections properly: a QUIC peer would otherwise hold our unfinished
    // requests (and the byte ranges they reserve) until its idle timeout, and the next
    // start would wait on them.
    let _ = tokio::time::timeout(Duration::from_secs(2), mgr.client.close()).await;
    let _ = std::fs::remove_file(&socket);
    served.map_err(|e| format!("gRPC server: {e}"))
}

async fn wait_for_signal() {
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
