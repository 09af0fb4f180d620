//! `uplink-server`: the reference ingest server for uplink.

mod api;
mod error;
mod fsutil;
mod http2;
mod objects;
mod part;
mod store;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

/// Reference ingest server: verifies every chunk and assembles uploads (HTTP/2, TLS 1.3).
#[derive(Parser, Debug)]
#[command(name = "uplink-server", version)]
struct Args {
    /// Address to listen on (TCP); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Where sessions, objects and the generated certificate live.
    #[arg(long, default_value = "uplink-data")]
    data_dir: PathBuf,
    /// File holding the bearer token clients must present (also the HMAC secret).
    #[arg(long)]
    token_file: PathBuf,
    /// PEM certificate chain; with no --cert/--key a private CA and certificate are made
    /// in DATA_DIR/tls.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the generated certificate.
    #[arg(long = "san")]
    sans: Vec<String>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UPLINK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    let _ = rustls::crypto::ring::default_provider().install_default();
    let token = std::fs::read_to_string(&args.token_file)
        .map_err(|e| format!("cannot read token file {}: {e}", args.token_file.display()))?
        .trim()
        .as_bytes()
        .to_vec();
    if token.is_empty() {
        return Err(format!("token file {} is empty", args.token_file.display()).into());
    }
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", args.data_dir.display()))?;
    let files = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => tls::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
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
    let tls_config = tls::server_config(&files, &[uplink_proto::wire::ALPN_H2])?;
    let store = store::Store::open(&args.data_dir, token.clone())
        .map_err(|e| format!("cannot open data dir {}: {e}", args.data_dir.display()))?;
    let sessions = store.session_count();
    let app = Arc::new(api::App {
        store,
        token,
        alt_svc: None,
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let socket = if args.listen.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket
            .bind(args.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        let ca = files.ca.as_ref().unwrap_or(&files.cert);
        tracing::info!(%addr, sessions, "serving HTTP/2");
        // One line on stdout that scripts and tests wait for.
        println!("uplink-server ready addr={addr} ca={}", ca.display());
        http2::serve(listener, tls_config, app, shutdown_signal()).await;
        tracing::info!("stopped");
        Ok::<_, Box<dyn std::error::Error>>(())
    })
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
