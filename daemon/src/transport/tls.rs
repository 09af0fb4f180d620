//! The client's TLS: 1.3 only, the server's CA from a file or the system's roots, and
//! optionally CA-level key pins ([`super::pin`]) and Certificate Transparency
//! ([`super::ct`]); a stapled OCSP response is read always ([`super::ocsp`]).

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::ct::{CtCheck, LogList};
use super::ocsp::OcspCheck;
use super::pin::{PinCheck, SpkiPin};
use super::verify::{CertCheck, CheckedVerifier};

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

/// [`client_config`] with the checks `trust` asks for, and OCSP (soft-fail) always.
pub fn client_config_checked(
    ca_file: Option<&Path>,
    trust: &Trust,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, String> {
    let roots = trusted_roots(ca_file)?;
    let mut checks: Vec<Box<dyn CertCheck>> = Vec::new();
    if !trust.pins.is_empty() {
        checks.push(Box::new(PinCheck::new(&roots, trust.pins.clone())?));
    }
    if let Some(logs) = &trust.ct {
        checks.push(Box::new(CtCheck::new(logs.clone(), roots.clone())));
    }
    checks.push(Box::new(OcspCheck::new(roots.clone())));
    let verifier = CheckedVerifier::new(&roots, checks)?;
    let mut cfg = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
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
