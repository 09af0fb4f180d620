//! The server-certificate verifier: WebPKI (chain, name, validity) first, then each
//! configured check on the verified chain — CA pins ([`super::pin`]), Certificate
//! Transparency ([`super::ct`]), a stapled OCSP response ([`super::ocsp`]). One
//! verifier, a list of checks: a refusal names the check that failed.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

/// What a check sees: the chain WebPKI has just verified.
pub struct Presented<'a> {
    pub end_entity: &'a CertificateDer<'a>,
    pub intermediates: &'a [CertificateDer<'a>],
    pub server_name: &'a ServerName<'a>,
    /// The stapled OCSP response (empty: none).
    pub ocsp: &'a [u8],
    pub now: UnixTime,
}

impl Presented<'_> {
    /// The certificates that may have issued the server's: what it sent after its own,
    /// then the trusted `roots` (a server may send its leaf alone).
    pub fn issuers<'b>(&'b self, roots: &'b [CertificateDer<'static>]) -> Vec<&'b [u8]> {
        self.intermediates
            .iter()
            .map(|c| c.as_ref())
            .chain(roots.iter().map(|c| c.as_ref()))
            .collect()
    }
}

/// One check beyond WebPKI; `Err` says what failed, starting with the check's name.
pub trait CertCheck: std::fmt::Debug + Send + Sync {
    fn check(&self, presented: &Presented<'_>) -> Result<(), String>;
}

#[derive(Debug)]
pub struct CheckedVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    checks: Vec<Box<dyn CertCheck>>,
}

impl CheckedVerifier {
    pub fn new(
        roots: &[CertificateDer<'static>],
        checks: Vec<Box<dyn CertCheck>>,
    ) -> Result<CheckedVerifier, String> {
        Ok(CheckedVerifier {
            webpki: webpki_verifier(roots)?,
            checks,
        })
    }
}

/// rustls' WebPKI verifier over `roots`.
pub fn webpki_verifier(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        let _ = store.add(c.clone());
    }
    WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("TLS verifier: {e}"))
}

/// A failed check, as rustls carries it (the handshake ends with `bad_certificate`).
#[derive(Debug)]
struct CheckFailed(String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

impl ServerCertVerifier for CheckedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let presented = Presented {
            end_entity,
            intermediates,
            server_name,
            ocsp: ocsp_response,
            now,
        };
        for check in &self.checks {
            check.check(&presented).map_err(|why| {
                Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    CheckFailed(why),
                ))))
            })?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
