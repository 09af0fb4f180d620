//! OCSP stapling, soft-fail: when the server staples an OCSP response for its
//! certificate (rustls asks for one in every handshake), the daemon reads it; a response
//! its issuer signed saying *revoked* ends the handshake. Everything short of that — no
//! staple, a response that is stale, unsigned by the issuer (a delegated responder),
//! for another certificate, `unknown`, or unreadable — is logged and the connection
//! goes on, as browsers do: a staple can only take trust away, and its absence (a
//! server that cannot reach its CA's responder) must not stop uploads.
//!
//! The response is RFC 6960's BasicOCSPResponse; its CertID names the certificate by
//! serial and by the hash (SHA-1 or SHA-256) of the issuer's key.

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::der::{self, Tlv};
use super::verify::{CertCheck, Presented};

/// id-pkix-ocsp-basic, 1.3.6.1.5.5.7.48.1.1.
const OCSP_BASIC: &[u8] = &[
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01,
];
/// id-sha1, 1.3.14.3.2.26.
const SHA1: &[u8] = &[0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// id-sha256, 2.16.840.1.101.3.4.2.1.
const SHA256: &[u8] = &[
    0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
];
/// ecdsa-with-SHA256, 1.2.840.10045.4.3.2.
const ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// sha256WithRSAEncryption, 1.2.840.113549.1.1.11.
const RSA_SHA256: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
];

/// A response dated this far in our future still counts (clocks differ).
const CLOCK_SKEW_SECS: u64 = 300;

/// What a stapled response says of the server's certificate.
#[derive(Debug, PartialEq, Eq)]
pub enum Stapled {
    /// None stapled.
    Absent,
    /// Signed by the issuer, current, and says good.
    Good,
    /// Signed by the issuer, current, and says revoked.
    Revoked,
    /// Not usable; why (soft-fail: ignored).
    Ignored(String),
}

/// Reads `response` for `leaf`, whose issuer is one of `issuers`, at `now` (Unix s).
pub fn read(response: &[u8], leaf: &[u8], issuers: &[&[u8]], now: u64) -> Stapled {
    if response.is_empty() {
        return Stapled::Absent;
    }
    match evaluate(response, leaf, issuers, now) {
        Ok(s) => s,
        Err(why) => Stapled::Ignored(why),
    }
}

fn evaluate(response: &[u8], leaf: &[u8], issuers: &[&[u8]], now: u64) -> Result<Stapled, String> {
    // OCSPResponse: responseStatus, [0] responseBytes.
    let (outer, _) = der::tlv(response)?;
    let top = der::children(outer.contents)?;
    let status = top.first().ok_or("empty response")?;
    if status.tag != 0x0a || status.contents != [0] {
        return Err(format!(
            "response status {:?}, not successful",
            status.contents
        ));
    }
    let bytes = top
        .iter()
        .find(|t| t.tag == 0xa0)
        .ok_or("no responseBytes")?;
    let (rb, _) = der::tlv(bytes.contents)?;
    let rb = der::children(rb.contents)?;
    if rb.first().map(|t| t.whole) != Some(OCSP_BASIC) {
        return Err("not a basic OCSP response".into());
    }
    let octets = rb.get(1).ok_or("no response octets")?;
    // BasicOCSPResponse: tbsResponseData, signatureAlgorithm, signature, [0] certs.
    let (basic, _) = der::tlv(octets.contents)?;
    let basic = der::children(basic.contents)?;
    let [tbs, alg, sig, ..] = basic.as_slice() else {
        return Err("a basic response with too few fields".into());
    };
    let single = find_single(tbs, leaf)?;
    let key_hash_alg = single.hash_alg;
    let issuer = issuers
        .iter()
        .filter_map(|c| der::spki_of(c))
        .filter_map(der::spki_key_bits)
        .find(|key| key_hash(key_hash_alg, key).as_deref() == Some(single.issuer_key_hash))
        .ok_or("no certificate of the chain is the issuer it names")?;
    if !signed_by(tbs.whole, alg, sig, issuer) {
        return Err(
            "not signed by the certificate's issuer (a delegated responder, or forged)".into(),
        );
    }
    if single.this_update > now + CLOCK_SKEW_SECS {
        return Err("dated in the future".into());
    }
    if single.next_update.is_some_and(|t| t < now) {
        return Err("stale: its nextUpdate has passed".into());
    }
    Ok(match single.status {
        0x80 => Stapled::Good,
        0xa1 => Stapled::Revoked,
        _ => return Err("status unknown".into()),
    })
}

/// The SingleResponse for `leaf` in a ResponseData.
struct Single<'a> {
    hash_alg: &'a [u8],
    issuer_key_hash: &'a [u8],
    status: u8,
    this_update: u64,
    next_update: Option<u64>,
}

fn find_single<'a>(tbs: &Tlv<'a>, leaf: &[u8]) -> Result<Single<'a>, String> {
    let serial = der::serial_of(leaf).ok_or("the certificate has no readable serial")?;
    // ResponseData: [0] version?, responderID, producedAt, responses, [1] extensions?
    let fields = der::children(tbs.contents)?;
    let responses = fields
        .iter()
        .find(|t| t.tag == 0x30)
        .ok_or("no responses")?;
    for r in der::children(responses.contents)? {
        let parts = der::children(r.contents)?;
        let [cert_id, status, this_update, rest @ ..] = parts.as_slice() else {
            continue;
        };
        let id = der::children(cert_id.contents)?;
        let [alg, _name_hash, key_hash, id_serial, ..] = id.as_slice() else {
            continue;
        };
        if id_serial.contents != serial {
            continue;
        }
        let hash_alg = der::tlv(alg.contents)?.0.whole;
        let next_update = match rest.iter().find(|t| t.tag == 0xa0) {
            Some(n) => Some(generalized_time(der::tlv(n.contents)?.0)?),
            None => None,
        };
        return Ok(Single {
            hash_alg,
            issuer_key_hash: key_hash.contents,
            status: status.tag,
            this_update: generalized_time(*this_update)?,
            next_update,
        });
    }
    Err("no response for this certificate".into())
}

fn key_hash(alg: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    match alg {
        SHA1 => Some(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, key)
                .as_ref()
                .to_vec(),
        ),
        SHA256 => Some(Sha256::digest(key).to_vec()),
        _ => None,
    }
}

fn signed_by(data: &[u8], alg: &Tlv<'_>, sig: &Tlv<'_>, key: &[u8]) -> bool {
    let Ok((oid, _)) = der::tlv(alg.contents) else {
        return false;
    };
    let verify: &dyn ring::signature::VerificationAlgorithm = match oid.whole {
        ECDSA_SHA256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
        RSA_SHA256 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        _ => return false,
    };
    let Some(([0], signature)) = (sig.tag == 0x03)
        .then(|| sig.contents.split_first_chunk::<1>())
        .flatten()
    else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(verify, key)
        .verify(data, signature)
        .is_ok()
}

/// `YYYYMMDDHHMMSSZ` to Unix seconds.
fn generalized_time(t: Tlv<'_>) -> Result<u64, String> {
    let bad = || "a malformed GeneralizedTime".to_string();
    let s = std::str::from_utf8(t.contents).map_err(|_| bad())?;
    if t.tag != 0x18 || s.len() != 15 || !s.ends_with('Z') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|v| v.parse::<u64>().ok());
    let (y, mo, d) = (num(0..4), num(4..6), num(6..8));
    let (h, mi, se) = (num(8..10), num(10..12), num(12..14));
    let (
        Some(y),
        Some(mo @ 1..=12),
        Some(d @ 1..=31),
        Some(h @ 0..24),
        Some(mi @ 0..60),
        Some(se @ 0..61),
    ) = (y, mo, d, h, mi, se)
    else {
        return Err(bad());
    };
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let (y, mo) = (y as i64 - i64::from(mo <= 2), mo as i64);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + (h * 3600 + mi * 60 + se) as i64).map_err(|_| bad())
}

/// The OCSP check: a stapled *revoked* from the issuer refuses; all else passes.
#[derive(Debug)]
pub struct OcspCheck {
    roots: Vec<CertificateDer<'static>>,
}

impl OcspCheck {
    pub fn new(roots: Vec<CertificateDer<'static>>) -> OcspCheck {
        OcspCheck { roots }
    }
}

impl CertCheck for OcspCheck {
    fn check(&self, p: &Presented<'_>) -> Result<(), String> {
        let issuers = p.issuers(&self.roots);
        match read(p.ocsp, p.end_entity, &issuers, p.now.as_secs()) {
            Stapled::Absent | Stapled::Good => Ok(()),
            Stapled::Revoked => Err("OCSP check failed: the server's stapled OCSP response, \
                 signed by its certificate's issuer, says the certificate is revoked"
                .into()),
            Stapled::Ignored(why) => {
                tracing::warn!(%why, "stapled OCSP response ignored (soft-fail)");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> Result<u64, String> {
        let enc = der::encode(0x18, s.as_bytes());
        generalized_time(der::tlv(&enc).unwrap().0)
    }

    #[test]
    fn generalized_times_read_as_unix_seconds() {
        assert_eq!(time("19700101000000Z"), Ok(0));
        assert_eq!(time("20000301000000Z"), Ok(951_868_800));
        assert_eq!(time("20261203011500Z"), Ok(1_796_260_500));
        for bad in [
            "2026120301150Z",
            "20261303011500Z",
            "2026120301150xZ",
            "20261203011500+",
        ] {
            assert!(time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_staple_is_absent_and_garbage_is_ignored_not_fatal() {
        assert_eq!(read(&[], b"", &[], 0), Stapled::Absent);
        assert!(matches!(
            read(&[0x30, 0x03, 0x0a, 0x01, 0x06], b"", &[], 0),
            Stapled::Ignored(_)
        ));
        assert!(matches!(
            read(&[0xff; 40], b"", &[], 0),
            Stapled::Ignored(_)
        ));
    }
}
