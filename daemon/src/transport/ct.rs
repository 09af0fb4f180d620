//! Certificate Transparency (RFC 6962): the server's certificate must carry signed
//! certificate timestamps (SCTs) from at least [`MIN_LOGS`] distinct logs the daemon
//! knows, each signature valid. A certificate a CA issued in secret — the attack CT
//! exists for — has none a known log signed.
//!
//! What is checked: SCTs embedded in the certificate (the extension CAs add when they
//! log a precertificate; nearly every public certificate has them). Each signs the
//! certificate's `TBSCertificate` without that extension, and the issuer's key hash, so
//! the check rebuilds that structure from the DER and tries the issuers the chain
//! offers. SCTs delivered in the TLS extension or stapled OCSP are not read: rustls does
//! not hand them to a verifier.
//!
//! The known logs come from a log list in the format Google publishes
//! (`log_list.json`, v3: operators → logs → `key`, base64 DER SubjectPublicKeyInfo);
//! a log whose state is `rejected` does not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use base64::Engine;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::der;
use super::verify::{CertCheck, Presented};

/// SCTs from this many distinct known logs are required.
pub const MIN_LOGS: usize = 2;

/// DER of the OID 1.3.6.1.4.1.11129.2.4.2 (embedded SCT list).
const SCT_LIST_OID: &[u8] = &[
    0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0xd6, 0x79, 0x02, 0x04, 0x02,
];

/// One log: its id (SHA-256 of its key) and the key to check signatures with.
#[derive(Clone)]
struct Log {
    name: String,
    /// SubjectPublicKeyInfo DER.
    key: Vec<u8>,
}

/// The logs SCTs are checked against, by log id.
#[derive(Clone, Default)]
pub struct LogList {
    logs: BTreeMap<[u8; 32], Log>,
}

impl std::fmt::Debug for LogList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogList({} logs)", self.logs.len())
    }
}

impl LogList {
    /// Reads a `log_list.json` (v3).
    pub fn load(path: &Path) -> Result<LogList, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read CT log list {}: {e}", path.display()))?;
        LogList::parse(&text).map_err(|e| format!("CT log list {}: {e}", path.display()))
    }

    pub fn parse(json: &[u8]) -> Result<LogList, String> {
        let doc: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let operators = doc
            .get("operators")
            .and_then(|o| o.as_array())
            .ok_or("no \"operators\" array (expected Google's log_list.json, v3)")?;
        let mut list = LogList::default();
        for op in operators {
            for log in op
                .get("logs")
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
            {
                let rejected = log.get("state").and_then(|s| s.get("rejected")).is_some();
                let Some(key_b64) = log.get("key").and_then(|k| k.as_str()) else {
                    continue;
                };
                let key = base64::engine::general_purpose::STANDARD
                    .decode(key_b64)
                    .map_err(|_| format!("a log's key is not base64: {key_b64:?}"))?;
                if rejected {
                    continue;
                }
                let name = log
                    .get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("unnamed log")
                    .to_string();
                list.logs
                    .insert(Sha256::digest(&key).into(), Log { name, key });
            }
        }
        if list.logs.is_empty() {
            return Err("it names no usable log".into());
        }
        Ok(list)
    }

    pub fn len(&self) -> usize {
        self.logs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }

    /// Checks `leaf`'s embedded SCTs; `issuers`: the certificates that may have issued
    /// it (the chain's next certificate, the trusted roots). `now_ms`: Unix time.
    pub fn check(&self, leaf: &[u8], issuers: &[&[u8]], now_ms: u64) -> Result<CtVerdict, String> {
        let (tbs, list) = precert_tbs(leaf)?;
        let scts = list
            .map(|l| parse_sct_list(&l))
            .transpose()?
            .unwrap_or_default();
        let issuer_hashes: Vec<[u8; 32]> = issuers
            .iter()
            .filter_map(|c| der::spki_of(c))
            .map(|spki| Sha256::digest(spki).into())
            .collect();
        let mut v = CtVerdict {
            embedded: scts.len(),
            ..CtVerdict::default()
        };
        let mut good_logs = BTreeSet::new();
        for sct in &scts {
            let Some(log) = self.logs.get(&sct.log_id) else {
                v.unknown_log += 1;
                continue;
            };
            let signed_ok = sct.timestamp <= now_ms.saturating_add(CLOCK_SKEW_MS)
                && issuer_hashes.iter().any(|h| verify_sct(sct, log, h, &tbs));
            match signed_ok {
                true => {
                    good_logs.insert(sct.log_id);
                }
                false => v.bad_signature += 1,
            }
        }
        v.valid_logs = good_logs
            .iter()
            .filter_map(|id| self.logs.get(id).map(|l| l.name.clone()))
            .collect();
        Ok(v)
    }
}

/// An SCT may be stamped this far in our future (clocks differ).
const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// What the check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CtVerdict {
    pub embedded: usize,
    /// Distinct known logs with a valid SCT.
    pub valid_logs: Vec<String>,
    pub unknown_log: usize,
    pub bad_signature: usize,
}

impl CtVerdict {
    pub fn passes(&self) -> bool {
        self.valid_logs.len() >= MIN_LOGS
    }

    fn why(&self) -> String {
        format!(
            "Certificate Transparency check failed: the certificate has valid SCTs from {} \
             distinct known log(s), {MIN_LOGS} required ({} SCT(s) embedded: {} from logs \
             not in the log list, {} not validly signed)",
            self.valid_logs.len(),
            self.embedded,
            self.unknown_log,
            self.bad_signature
        )
    }
}

/// One signed certificate timestamp (RFC 6962 §3.2, version 1).
#[derive(Debug, Clone)]
struct Sct {
    log_id: [u8; 32],
    timestamp: u64,
    extensions: Vec<u8>,
    hash_alg: u8,
    sig_alg: u8,
    signature: Vec<u8>,
}

/// A cursor over TLS-encoded bytes; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("an SCT is cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// A vector with an `n`-byte length prefix.
    fn vec(&mut self, n: usize) -> Result<&'a [u8], String> {
        let len = self.uint(n)? as usize;
        self.take(len)
    }
}

fn parse_sct_list(list: &[u8]) -> Result<Vec<Sct>, String> {
    let mut outer = Reader(list);
    let mut r = Reader(outer.vec(2)?);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let mut s = Reader(r.vec(2)?);
        if s.uint(1)? != 0 {
            continue; // a version this check does not know: ignored, not counted
        }
        let log_id: [u8; 32] = s
            .take(32)?
            .try_into()
            .map_err(|_| "an SCT's log id is not 32 bytes".to_string())?;
        let timestamp = s.uint(8)?;
        let extensions = s.vec(2)?.to_vec();
        let hash_alg = s.uint(1)? as u8;
        let sig_alg = s.uint(1)? as u8;
        let signature = s.vec(2)?.to_vec();
        out.push(Sct {
            log_id,
            timestamp,
            extensions,
            hash_alg,
            sig_alg,
            signature,
        });
    }
    Ok(out)
}

fn verify_sct(sct: &Sct, log: &Log, issuer_key_hash: &[u8; 32], tbs: &[u8]) -> bool {
    let Ok(tbs_len) = u32::try_from(tbs.len()) else {
        return false;
    };
    let Ok(ext_len) = u16::try_from(sct.extensions.len()) else {
        return false;
    };
    let mut signed = Vec::with_capacity(tbs.len() + 64);
    signed.push(0); // version v1
    signed.push(0); // signature type: certificate_timestamp
    signed.extend_from_slice(&sct.timestamp.to_be_bytes());
    signed.extend_from_slice(&1u16.to_be_bytes()); // entry type: precert_entry
    signed.extend_from_slice(issuer_key_hash);
    signed.extend_from_slice(&tbs_len.to_be_bytes()[1..]); // uint24
    signed.extend_from_slice(tbs);
    signed.extend_from_slice(&ext_len.to_be_bytes());
    signed.extend_from_slice(&sct.extensions);
    let Some(key) = der::spki_key_bits(&log.key) else {
        return false;
    };
    let alg: &dyn ring::signature::VerificationAlgorithm = match (sct.hash_alg, sct.sig_alg) {
        (4, 3) => &ring::signature::ECDSA_P256_SHA256_ASN1,
        (4, 1) => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        _ => return false,
    };
    ring::signature::UnparsedPublicKey::new(alg, key)
        .verify(&signed, &sct.signature)
        .is_ok()
}

/// The certificate's `TBSCertificate` with the SCT list extension taken out (what the
/// logs signed), and that extension's TLS-encoded list, if present.
fn precert_tbs(cert: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let (tbs, _) = der::tbs_fields(cert)?;
    let mut fields = Vec::with_capacity(tbs.contents.len());
    let mut list = None;
    for field in der::children(tbs.contents)? {
        if field.tag != 0xa3 {
            fields.extend_from_slice(field.whole);
            continue;
        }
        // [3] EXPLICIT Extensions: SEQUENCE OF Extension.
        let (exts, _) = der::tlv(field.contents)?;
        let mut kept = Vec::with_capacity(exts.contents.len());
        for ext in der::children(exts.contents)? {
            if !ext.contents.starts_with(SCT_LIST_OID) {
                kept.extend_from_slice(ext.whole);
                continue;
            }
            // extnID, critical (optional), extnValue: an OCTET STRING holding an OCTET
            // STRING of the TLS-encoded list.
            let parts = der::children(&ext.contents[SCT_LIST_OID.len()..])?;
            let value = parts
                .iter()
                .find(|t| t.tag == 0x04)
                .ok_or("the SCT extension has no value")?;
            let (inner, _) = der::tlv(value.contents)?;
            list = Some(inner.contents.to_vec());
        }
        if !kept.is_empty() {
            fields.extend_from_slice(&der::encode(0xa3, &der::encode(0x30, &kept)));
        }
    }
    Ok((der::encode(0x30, &fields), list))
}

/// The CT check, on the verified chain.
#[derive(Debug)]
pub struct CtCheck {
    logs: LogList,
    /// Trusted roots: the issuer of a leaf the server sent alone.
    roots: Vec<CertificateDer<'static>>,
}

impl CtCheck {
    pub fn new(logs: LogList, roots: Vec<CertificateDer<'static>>) -> CtCheck {
        CtCheck { logs, roots }
    }
}

impl CertCheck for CtCheck {
    fn check(&self, p: &Presented<'_>) -> Result<(), String> {
        let issuers = p.issuers(&self.roots);
        let now_ms = p.now.as_secs().saturating_mul(1000);
        match self.logs.check(p.end_entity.as_ref(), &issuers, now_ms) {
            Ok(v) if v.passes() => Ok(()),
            Ok(v) => Err(v.why()),
            Err(e) => Err(format!("Certificate Transparency check failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_list_needs_operators_and_skips_rejected_logs() {
        assert!(LogList::parse(b"{}").is_err());
        let key = base64::engine::general_purpose::STANDARD.encode([1u8; 91]);
        let json = format!(
            r#"{{"operators":[{{"name":"o","logs":[
                {{"description":"a","key":"{key}","state":{{"usable":{{}}}}}},
                {{"description":"b","key":"{key}x","state":{{"rejected":{{}}}}}}]}}]}}"#
        );
        assert!(
            LogList::parse(json.as_bytes()).is_err(),
            "a bad key is named"
        );
        let json = json.replace(&format!("{key}x"), &key.replace('A', "B"));
        let list = LogList::parse(json.as_bytes()).unwrap();
        assert_eq!(list.len(), 1, "the rejected log does not count");
    }

    #[test]
    fn a_truncated_sct_list_is_an_error_not_a_panic() {
        assert!(parse_sct_list(&[0x00, 0x10, 0x00]).is_err());
        assert!(parse_sct_list(&[0x00, 0x00]).unwrap().is_empty());
    }

    #[test]
    fn a_certificate_without_scts_has_none_and_its_tbs_is_kept_whole() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (tbs, list) = precert_tbs(cert.der()).unwrap();
        assert!(list.is_none());
        let (certificate, _) = der::tlv(cert.der()).unwrap();
        assert_eq!(tbs, der::tlv(certificate.contents).unwrap().0.whole);
    }
}
