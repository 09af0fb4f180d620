//! CA-level public-key pinning: the server's chain must pass the usual WebPKI checks
//! *and* run through a CA whose key (SubjectPublicKeyInfo, SHA-256) is pinned.
//!
//! Pins name a CA, never the leaf: a leaf key changes at every renewal, so a leaf pin
//! would lock the fleet out on the server's next certificate. A pin that matches only
//! the leaf is refused with an error that says so. The format is HPKP's
//! (`sha256/<base64>`), which `openssl` prints for any certificate:
//! `openssl x509 -in ca.pem -pubkey -noout | openssl pkey -pubin -outform der |
//!  openssl dgst -sha256 -binary | base64`.

use std::sync::Arc;

use base64::Engine;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::der;
use super::verify::{CertCheck, Presented, webpki_verifier};

/// The SHA-256 of a DER SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SpkiPin(pub [u8; 32]);

impl SpkiPin {
    /// Parses `sha256/<base64 of 32 bytes>`.
    pub fn parse(text: &str) -> Result<SpkiPin, String> {
        let bad =
            || format!("pin {text:?} must be sha256/<base64 of the SHA-256 of a CA's public key>");
        let b64 = text.trim().strip_prefix("sha256/").ok_or_else(bad)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| bad())?;
        Ok(SpkiPin(bytes.try_into().map_err(|_| bad())?))
    }

    /// The pin of a certificate's public key; `None` if it does not parse.
    pub fn of(cert: &CertificateDer<'_>) -> Option<SpkiPin> {
        der::spki_of(cert).map(|spki| SpkiPin(Sha256::digest(spki).into()))
    }
}

impl std::fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.0);
        write!(f, "sha256/{b64}")
    }
}

/// The pin check: the verified chain runs through a CA with a pinned key.
#[derive(Debug)]
pub struct PinCheck {
    /// Only the trusted roots whose key is pinned (`None`: no root is).
    pinned_roots: Option<Arc<WebPkiServerVerifier>>,
    pins: Vec<SpkiPin>,
}

impl PinCheck {
    /// `roots`: the trusted CA certificates; `pins`: at least one.
    pub fn new(roots: &[CertificateDer<'static>], pins: Vec<SpkiPin>) -> Result<PinCheck, String> {
        let pinned: Vec<CertificateDer<'static>> = roots
            .iter()
            .filter(|c| SpkiPin::of(c).is_some_and(|p| pins.contains(&p)))
            .cloned()
            .collect();
        if pinned.is_empty() {
            // Not fatal: the pinned CA may be an intermediate the server sends.
            tracing::info!(
                ?pins,
                "no trusted root has a pinned key; an intermediate the server sends must"
            );
        }
        let pinned_roots = match pinned.is_empty() {
            true => None,
            false => Some(webpki_verifier(&pinned)?),
        };
        Ok(PinCheck { pinned_roots, pins })
    }
}

impl CertCheck for PinCheck {
    fn check(&self, p: &Presented<'_>) -> Result<(), String> {
        // A pinned intermediate the server sent: the chain runs through it (webpki built
        // the path from what was sent; a pinned CA that is not on the path fails below).
        let pinned =
            |c: &CertificateDer<'_>| SpkiPin::of(c).is_some_and(|pin| self.pins.contains(&pin));
        if p.intermediates.iter().any(pinned) {
            return Ok(());
        }
        // A pinned root: the chain must build to one of the pinned roots alone.
        if let Some(roots) = &self.pinned_roots
            && roots
                .verify_server_cert(p.end_entity, p.intermediates, p.server_name, p.ocsp, p.now)
                .is_ok()
        {
            return Ok(());
        }
        Err(match pinned(p.end_entity) {
            true => "SPKI pin check failed: the pin names the server's own (leaf) key; pin a \
                     CA's key instead (a leaf key changes at every renewal)"
                .to_string(),
            false => format!(
                "SPKI pin check failed: no CA in the server's chain has a pinned key (pins: {:?})",
                self.pins
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_sha256_slash_base64_of_32_bytes() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(
            SpkiPin::parse(&format!("sha256/{b64}")).unwrap().0,
            [7u8; 32]
        );
        for bad in [
            "",
            "sha256/",
            "sha1/AAAA",
            "sha256/not base64!",
            &format!(
                "sha256/{}",
                base64::engine::general_purpose::STANDARD.encode([7u8; 20])
            ),
        ] {
            assert!(SpkiPin::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_pin_of_a_certificate_hashes_its_whole_public_key_info() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pin = SpkiPin::of(cert.der()).unwrap();
        assert_eq!(
            pin.0,
            <[u8; 32]>::from(Sha256::digest(
                rcgen::PublicKeyData::subject_public_key_info(&key)
            ))
        );
    }
}
