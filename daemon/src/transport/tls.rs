//! The client's TLS: 1.3 only, the server's CA from a file or the system's roots, and
//! optionally CA-level key pins ([`super::pin`]) and Certificate Transparency
//! ([`super::ct`]).

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::ct::{CtVerifier, LogList};
use super::pin::{PinnedVerifier, SpkiPin};

pub fn client_config(ca_file: Option<&Path>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
    client_config_checked(ca_file, &Trust::default(), alpn)
}

/// What the server's certificate must satisfy beyond a valid chain.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// A CA with one of these keys must be in the chain ([`super::pin`]); none: no check.
    pub pins: Vec<SpkiPin>,
    /// The certificate must carry SCTs from these logs ([`super::ct`]); `None`: no check.
    pub ct: Option<LogList>,
}

/// [`client_config`] with the checks `trust` asks for.
pub fn client_config_checked(
    ca_file: Option<&Path>,
    trust: &Trust,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, String> {
    let certs = trusted_roots(ca_file)?;
    let builder = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13]);
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        let _ = roots.add(cert.clone());
    }
    let mut cfg = match (&trust.pins[..], &trust.ct) {
        ([], None) => builder.with_root_certificates(roots).with_no_client_auth(),
        (pins, ct) => {
            let chain: Arc<dyn ServerCertVerifier> = match pins {
                [] => WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::new(rustls::crypto::ring::default_provider()),
                )
                .build()
                .map_err(|e| format!("TLS verifier: {e}"))?,
                pins => {
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
                    Arc::new(PinnedVerifier::new(&certs, pins.to_vec())?)
                }
            };
            let verifier: Arc<dyn ServerCertVerifier> = match ct {
                Some(logs) => Arc::new(CtVerifier::new(chain, logs.clone(), certs.clone())),
                None => chain,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
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
