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
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

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
        let anchor = webpki::anchor_from_trusted_cert(cert).ok()?;
        // webpki hands out the SPKI's contents; the pin is over the whole DER SEQUENCE.
        let body: &[u8] = anchor.subject_public_key_info.as_ref();
        let mut der = Vec::with_capacity(body.len() + 4);
        der.push(0x30);
        der_length(body.len(), &mut der);
        der.extend_from_slice(body);
        Some(SpkiPin(Sha256::digest(&der).into()))
    }
}

impl std::fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.0);
        write!(f, "sha256/{b64}")
    }
}

fn der_length(len: usize, out: &mut Vec<u8>) {
    match len {
        0..=0x7f => out.push(len as u8),
        _ => {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
}

/// WebPKI verification, then the pin check.
#[derive(Debug)]
pub struct PinnedVerifier {
    /// Every trusted root: the chain must be valid first.
    all: Arc<WebPkiServerVerifier>,
    /// Only the trusted roots whose key is pinned (`None`: no root is).
    pinned_roots: Option<Arc<WebPkiServerVerifier>>,
    pins: Vec<SpkiPin>,
}

impl PinnedVerifier {
    /// `roots`: the trusted CA certificates; `pins`: at least one.
    pub fn new(
        roots: &[CertificateDer<'static>],
        pins: Vec<SpkiPin>,
    ) -> Result<PinnedVerifier, String> {
        let store = |certs: &mut dyn Iterator<Item = &CertificateDer<'static>>| {
            let mut s = rustls::RootCertStore::empty();
            for c in certs {
                let _ = s.add(c.clone());
            }
            s
        };
        let build = |s: rustls::RootCertStore| {
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(s),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .map_err(|e| format!("TLS verifier: {e}"))
        };
        let all = build(store(&mut roots.iter()))?;
        let pinned: Vec<&CertificateDer<'static>> = roots
            .iter()
            .filter(|c| SpkiPin::of(c).is_some_and(|p| pins.contains(&p)))
            .collect();
        let pinned_roots = match pinned.is_empty() {
            true => None,
            false => Some(build(store(&mut pinned.into_iter()))?),
        };
        Ok(PinnedVerifier {
            all,
            pinned_roots,
            pins,
        })
    }

    fn refuse(&self, why: String) -> Error {
        Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PinError(why)))))
    }
}

/// The pin check failed; the message names it.
#[derive(Debug)]
struct PinError(String);

impl std::fmt::Display for PinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PinError {}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self.all.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        // A pinned intermediate the server sent: the chain runs through it (webpki built
        // the path from what was sent; a pinned CA that is not on the path fails below).
        let pinned =
            |c: &CertificateDer<'_>| SpkiPin::of(c).is_some_and(|p| self.pins.contains(&p));
        if intermediates.iter().any(pinned) {
            return Ok(verified);
        }
        // A pinned root: the chain must build to one of the pinned roots alone.
        if let Some(roots) = &self.pinned_roots
            && roots
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .is_ok()
        {
            return Ok(verified);
        }
        let why = match pinned(end_entity) {
            true => "SPKI pin check failed: the pin names the server's own (leaf) key; pin a \
                     CA's key instead (a leaf key changes at every renewal)"
                .to_string(),
            false => format!(
                "SPKI pin check failed: no CA in the server's chain has a pinned key (pins: {:?})",
                self.pins
            ),
        };
        Err(self.refuse(why))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.all.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.all.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.all.supported_verify_schemes()
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
    fn der_lengths_use_the_short_form_below_128_and_the_long_form_above() {
        let enc = |n| {
            let mut v = Vec::new();
            der_length(n, &mut v);
            v
        };
        assert_eq!(enc(5), [5]);
        assert_eq!(enc(127), [127]);
        assert_eq!(enc(128), [0x81, 128]);
        assert_eq!(enc(294), [0x82, 0x01, 0x26]);
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
