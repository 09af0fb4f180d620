//! TLS for the ingest server: TLS 1.3 only, ALPN `h2` over TCP and `h3` over QUIC.
//!
//! With no `--cert/--key`, the server makes a private CA and a certificate signed by it
//! in `DATA_DIR/tls/` on first start and reuses them afterwards; clients trust `ca.pem`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls_sessions::SessionCache;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    NotPrivate(String),
}

/// Where the certificate files are.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA a client should trust; `None` when the operator brought their own cert.
    pub ca: Option<PathBuf>,
    /// A DER OCSP response for `cert`, stapled to every handshake.
    pub ocsp: Option<PathBuf>,
}

/// Makes (once) a private CA and a server certificate for `names` under `dir`.
pub fn ensure_self_signed(dir: &Path, names: &[String]) -> Result<CertFiles, TlsError> {
    let files = CertFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: Some(dir.join("ca.pem")),
        ocsp: None,
    };
    if files.cert.exists() && files.key.exists() && dir.join("ca.pem").exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.into(),
        source,
    })?;

    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "uplink-server local CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);

    let mut leaf_params = rcgen::CertificateParams::new(names.to_vec())?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "uplink-server");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;

    write_private(&files.key, leaf_key.serialize_pem().as_bytes())?;
    write_file(&files.cert, leaf.pem().as_bytes())?;
    write_file(&dir.join("ca.pem"), ca_cert.pem().as_bytes())?;
    Ok(files)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    std::fs::write(path, bytes).map_err(|source| TlsError::Write {
        path: path.into(),
        source,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    uplink_proto::integrity::write_private_file(path, bytes).map_err(|source| TlsError::Write {
        path: path.into(),
        source,
    })
}

/// The server's certificate chain, key and OCSP staple, read again on SIGHUP: a renewed
/// certificate or a fresh staple (OCSP responses expire in days) reaches new handshakes
/// without a restart. A reload that fails keeps what was there.
pub struct Certs {
    files: CertFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certs {
    pub fn load(files: CertFiles) -> Result<Arc<Certs>, TlsError> {
        let current = RwLock::new(Arc::new(read_certified(&files)?));
        Ok(Arc::new(Certs { files, current }))
    }

    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(read_certified(&self.files)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").field("files", &self.files).finish()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// The rustls server configuration for HTTP/2 over TCP: TLS 1.3 only, the given ALPN
/// protocols, sessions resumed from `sessions`.
pub fn server_config(
    certs: Arc<Certs>,
    alpn: &[&[u8]],
    sessions: Arc<SessionCache>,
) -> Arc<ServerConfig> {
    let mut cfg = build(certs, alpn);
    cfg.session_storage = sessions;
    Arc::new(cfg)
}

/// The rustls server configuration for HTTP/3 over QUIC: TLS 1.3, ALPN `h3`, and 0-RTT on.
///
/// QUIC allows only 0 or `u32::MAX` as the early-data limit. Tickets are stateful (the
/// default: no `ticketer`), so rustls *takes* a session out of `sessions` when a client
/// resumes with it: one ticket admits early data at most once on this process, which bounds
/// replays of a captured ClientHello. Requests that must not run twice are still refused in
/// early data (`early_data.rs`): that bound is a property of this cache, and would be lost
/// with stateless tickets or a ticket store shared by a fleet of servers.
pub fn quic_server_config(certs: Arc<Certs>, sessions: Arc<SessionCache>) -> ServerConfig {
    let mut cfg = build(certs, &[uplink_proto::wire::ALPN_H3]);
    cfg.max_early_data_size = u32::MAX;
    cfg.session_storage = sessions;
    cfg
}

fn build(certs: Arc<Certs>, alpn: &[&[u8]]) -> ServerConfig {
    let mut cfg = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// Reads the chain, the key (which must be 0600 and match the chain's leaf) and the
/// staple.
fn read_certified(files: &CertFiles) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.into(),
            source,
        })
    };
    let cert_pem = read(&files.cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem {
            path: files.cert.clone(),
            what: "certificate",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: files.cert.clone(),
            what: "certificate",
        });
    }
    uplink_proto::integrity::check_private_file(&files.key, "TLS key")
        .map_err(TlsError::NotPrivate)?;
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem {
        path: files.key.clone(),
        what: "private key",
    })?;
    let key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)?;
    let mut certified = CertifiedKey::new(certs, key);
    certified.keys_match()?;
    if let Some(path) = &files.ocsp {
        certified.ocsp = Some(read(path)?);
    }
    Ok(certified)
}
