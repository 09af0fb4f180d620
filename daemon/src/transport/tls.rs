//! The client's TLS: 1.3 only, the server's CA from a file or the system's roots, and
//! optionally CA-level key pins ([`super::pin`]).

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::pin::{PinnedVerifier, SpkiPin};

pub fn client_config(ca_file: Option<&Path>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    client_config_pinned(ca_file, &[], alpn)
}

/// [`client_config`] that also requires a CA with one of `pins` in the server's chain
/// (no pins: no such check).
pub fn client_config_pinned(
    ca_file: Option<&Path>,
    pins: &[SpkiPin],
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, String> {
    let certs = trusted_roots(ca_file)?;
    let builder = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13]);
    let mut cfg = match pins {
        [] => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in &certs {
                let _ = roots.add(cert.clone());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => {
            if !certs
                .iter()
                .any(|c| SpkiPin::of(c).is_some_and(|p| pins.contains(&p)))
            {
                // Not fatal: the pinned CA may be an intermediate the server sends.
                tracing::info!(
                    ?pins,
                    "no trusted root has a pinned key; an intermediate the server sends must"
                );
            }
            let verifier = PinnedVerifier::new(&certs, pins.to_vec())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The CA certificates to trust: those of `ca_file`, else the system's.
fn trusted_roots(ca_file: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut roots = Vec::new();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
            let mut check = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("CA file {}: {e}", path.display()))?;
                check
                    .add(cert.clone())
                    .map_err(|e| format!("CA file {}: {e}", path.display()))?;
                roots.push(cert);
            }
            if roots.is_empty() {
                return Err(format!("CA file {} holds no certificate", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut check = rustls::RootCertStore::empty();
            for cert in found.certs {
                if check.add(cert.clone()).is_ok() {
                    roots.push(cert);
                }
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; pass --ca-file".into());
            }
        }
    }
    Ok(roots)
}
