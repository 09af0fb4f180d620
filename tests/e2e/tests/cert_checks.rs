//! The daemon's checks of the server's certificate beyond WebPKI, against the real
//! server serving certificates this test issues from its own CA:
//! - Certificate Transparency (`uplinkd --ct on --ct-logs FILE`): SCTs signed by the
//!   test's own two "logs" (RFC 6962 precertificate SCTs, embedded). Accepted only with
//!   valid SCTs from 2 distinct logs of the list: one SCT, two from one log, a bad
//!   signature or a log missing from the list are each refused, saying which.
//! - OCSP stapling, soft-fail (`uplink-server --ocsp FILE`): a stapled response the
//!   issuer signed saying *good* passes and *revoked* refuses; a stale one, or one the
//!   issuer did not sign, is ignored (logged) and the upload goes on.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use rcgen::{
    CertificateParams, CustomExtension, IsCa, Issuer, KeyPair, PublicKeyData, SerialNumber,
    SigningKey,
};
use sha2::{Digest, Sha256};
use uplink_e2e::*;

/// The embedded SCT list extension, 1.3.6.1.4.1.11129.2.4.2.
const SCT_LIST_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2];

struct Pki {
    ca_key: KeyPair,
    ca_params: CertificateParams,
    ca_pem: PathBuf,
    leaf_key: KeyPair,
}

/// An SCT to embed: which log signs it, and whether to spoil its signature.
struct Stamp<'a> {
    log: &'a KeyPair,
    spoil: bool,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ct test CA");
        let ca = ca_params.clone().self_signed(&ca_key).expect("CA cert");
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).expect("write CA");
        Pki {
            ca_key,
            ca_params,
            ca_pem,
            leaf_key: KeyPair::generate().expect("leaf key"),
        }
    }

    fn leaf_params(&self) -> CertificateParams {
        let mut p = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("leaf params");
        // Fixed, so the certificate issued with SCTs has the precertificate's TBS.
        p.serial_number = Some(SerialNumber::from(vec![0x42, 0x17]));
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        p
    }

    /// Issues the server's certificate with `stamps` embedded; writes cert and key PEM.
    fn issue(&self, dir: &Path, name: &str, stamps: &[Stamp<'_>]) -> (PathBuf, PathBuf) {
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let pre = self
            .leaf_params()
            .signed_by(&self.leaf_key, &issuer)
            .expect("precertificate");
        let tbs = tbs_of(pre.der());
        let issuer_key_hash: [u8; 32] =
            Sha256::digest(self.ca_key.subject_public_key_info()).into();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
            - 60_000;
        let mut list = Vec::new();
        for s in stamps {
            let sct = sct(s.log, now_ms, &issuer_key_hash, &tbs, s.spoil);
            list.extend_from_slice(&(sct.len() as u16).to_be_bytes());
            list.extend_from_slice(&sct);
        }
        let mut tls_list = (list.len() as u16).to_be_bytes().to_vec();
        tls_list.extend_from_slice(&list);
        let mut params = self.leaf_params();
        if !stamps.is_empty() {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    SCT_LIST_OID,
                    der_octet_string(&tls_list),
                ));
        }
        let cert = params
            .signed_by(&self.leaf_key, &issuer)
            .expect("certificate");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        write_secret(&key_path, &self.leaf_key.serialize_pem());
        (cert_path, key_path)
    }
}

/// RFC 6962 §3.2: a v1 SCT over a precertificate entry, signed by `log` (ECDSA P-256).
fn sct(log: &KeyPair, ts: u64, issuer_key_hash: &[u8; 32], tbs: &[u8], spoil: bool) -> Vec<u8> {
    let mut signed = vec![0u8, 0];
    signed.extend_from_slice(&ts.to_be_bytes());
    signed.extend_from_slice(&1u16.to_be_bytes());
    signed.extend_from_slice(issuer_key_hash);
    signed.extend_from_slice(&(tbs.len() as u32).to_be_bytes()[1..]);
    signed.extend_from_slice(tbs);
    signed.extend_from_slice(&0u16.to_be_bytes());
    if spoil {
        signed[2] ^= 1; // signs another timestamp than the one it states
    }
    let sig = log.sign(&signed).expect("log signs");
    let mut out = vec![0u8];
    out.extend_from_slice(&Sha256::digest(log.subject_public_key_info()));
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&[4, 3]); // SHA-256, ECDSA
    out.extend_from_slice(&(sig.len() as u16).to_be_bytes());
    out.extend_from_slice(&sig);
    out
}

/// The TBSCertificate of a DER certificate (its first element).
fn tbs_of(cert: &[u8]) -> Vec<u8> {
    let (_, cert_body) = der_split(cert);
    let (tbs_len, tbs_header) = der_len(&cert_body[1..]);
    cert_body[..1 + tbs_header + tbs_len].to_vec()
}

/// (header length, contents) of the DER element at the start of `d`.
fn der_split(d: &[u8]) -> (usize, &[u8]) {
    let (len, header) = der_len(&d[1..]);
    (1 + header, &d[1 + header..1 + header + len])
}

/// (length, bytes the length took) of a DER length at the start of `d`.
fn der_len(d: &[u8]) -> (usize, usize) {
    match d[0] {
        n @ 0..=0x7f => (usize::from(n), 1),
        n => {
            let k = usize::from(n & 0x7f);
            let len = d[1..=k]
                .iter()
                .fold(0usize, |a, &b| (a << 8) | usize::from(b));
            (len, 1 + k)
        }
    }
}

fn der_octet_string(contents: &[u8]) -> Vec<u8> {
    der(0x04, contents)
}

/// One DER element (lengths below 64 KiB).
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match contents.len() {
        n @ 0..=0x7f => out.push(n as u8),
        n @ 0x80..=0xff => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(contents);
    out
}

/// A `log_list.json` (v3) naming `logs`.
fn log_list(dir: &Path, name: &str, logs: &[(&str, &KeyPair)]) -> PathBuf {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let entries: Vec<serde_json::Value> = logs
        .iter()
        .map(|(desc, key)| {
            let spki = key.subject_public_key_info();
            serde_json::json!({
                "description": desc,
                "log_id": b64(&Sha256::digest(&spki)),
                "key": b64(&spki),
                "url": "https://ct.example/",
                "state": {"usable": {"timestamp": "2026-01-01T00:00:00Z"}}
            })
        })
        .collect();
    let doc = serde_json::json!({"version": "test", "operators": [
        {"name": "test operator", "email": [], "logs": entries}
    ]});
    let path = dir.join(name);
    std::fs::write(&path, doc.to_string()).expect("write log list");
    path
}

/// A daemon trusting `ca` for `server`, with `extra` flags.
fn daemon_with(dir: &Path, name: &str, server: &Server, ca: &Path, extra: &[&str]) -> Daemon {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).expect("daemon dir");
    let mut cmd = Command::new(bin("uplinkd"));
    cmd.arg("--endpoint")
        .arg(server.url())
        .arg("--token-file")
        .arg(&server.token_file)
        .arg("--ca-file")
        .arg(ca)
        .args(extra)
        .arg("--state-dir")
        .arg(home.join("daemon-state"))
        .arg("--socket")
        .arg(home.join("uplinkd.sock"));
    Daemon::start_cmd(&home, cmd)
}

/// The server on loopback with `cert`/`key` and, if given, an OCSP response to staple.
fn serve(dir: &Path, cert: &Path, key: &Path, ocsp: Option<&Path>) -> Server {
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let mut args = vec!["--cert", &cert, "--key", &key];
    let ocsp = ocsp.map(|p| p.to_string_lossy().into_owned());
    if let Some(o) = &ocsp {
        args.extend(["--ocsp", o.as_str()]);
    }
    Server::start_opts(dir, None, &args)
}

/// A 3 MiB upload through `daemon` arrives whole.
fn uploads_intact(dir: &Path, daemon: &Daemon, server: &Server, case: &str) {
    let file = dir.join("capture.bin");
    seeded_file(&file, 3 << 20, 7);
    let record = send_wait(&daemon.socket, &file);
    assert_eq!(record["state"], "completed", "{case}: {record}");
    assert_eq!(
        sha256_file(&server.object("capture.bin")),
        sha256_file(&file),
        "{case}"
    );
}

#[test]
fn only_a_certificate_with_scts_from_two_known_logs_is_accepted() {
    let dir = workdir();
    let d = dir.path();
    let pki = Pki::new(d);
    let (log_a, log_b) = (
        KeyPair::generate().expect("log A"),
        KeyPair::generate().expect("log B"),
    );
    let both = log_list(d, "both.json", &[("log A", &log_a), ("log B", &log_b)]);
    let only_a = log_list(d, "only-a.json", &[("log A", &log_a)]);
    let a = |spoil| Stamp { log: &log_a, spoil };
    let b = |spoil| Stamp { log: &log_b, spoil };

    // (case, SCTs embedded, log list, refusal expected: None = accepted)
    let cases: Vec<(&str, Vec<Stamp<'_>>, &Path, Option<&str>)> = vec![
        ("two logs", vec![a(false), b(false)], &both, None),
        (
            "one SCT",
            vec![a(false)],
            &both,
            Some("from 1 distinct known log(s), 2 required (1 SCT(s) embedded"),
        ),
        (
            "two SCTs of one log",
            vec![a(false), a(false)],
            &both,
            Some("from 1 distinct known log(s)"),
        ),
        (
            "a bad signature",
            vec![a(false), b(true)],
            &both,
            Some("1 not validly signed"),
        ),
        (
            "a log not in the list",
            vec![a(false), b(false)],
            &only_a,
            Some("1 from logs not in the log list"),
        ),
        (
            "no SCT at all",
            vec![],
            &both,
            Some("from 0 distinct known log(s)"),
        ),
    ];
    for (i, (case, stamps, list, refusal)) in cases.into_iter().enumerate() {
        let sdir = d.join(format!("server-{i}"));
        std::fs::create_dir_all(&sdir).expect("server dir");
        let (cert, key) = pki.issue(&sdir, "leaf", &stamps);
        let server = serve(&sdir, &cert, &key, None);
        let list = list.to_string_lossy();
        let daemon = daemon_with(
            d,
            &format!("daemon-{i}"),
            &server,
            &pki.ca_pem,
            &["--ct", "on", "--ct-logs", &list],
        );
        let (ok, text) = prewarm_output(&daemon);
        match refusal {
            None => {
                assert!(ok, "{case}: refused: {text}");
                uploads_intact(d, &daemon, &server, case);
            }
            Some(why) => {
                assert!(!ok, "{case}: accepted: {text}");
                assert!(
                    text.contains("Certificate Transparency check failed") && text.contains(why),
                    "{case}: {text}"
                );
            }
        }
    }

    // CT on with no log list: the daemon does not start, and says what to pass.
    let home = d.join("no-list");
    std::fs::create_dir_all(&home).expect("dir");
    let token = home.join("token");
    write_secret(&token, "ct-test-secret");
    let out = Command::new(bin("uplinkd"))
        .args([
            "--endpoint",
            "https://upload.example.org:8443",
            "--ct",
            "on",
        ])
        .arg("--token-file")
        .arg(&token)
        .arg("--state-dir")
        .arg(home.join("state"))
        .arg("--socket")
        .arg(home.join("d.sock"))
        .output()
        .expect("run uplinkd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ct-logs FILE"), "{err}");
}

/// What a stapled OCSP response says, and how it was made.
struct Staple<'a> {
    revoked: bool,
    next_update: &'a str,
    signer: &'a KeyPair,
}

/// An RFC 6960 OCSPResponse (basic) for the leaf's serial, naming `pki`'s CA by the
/// SHA-256 of its key, signed by `s.signer` (ECDSA P-256).
fn ocsp_response(pki: &Pki, s: &Staple<'_>) -> Vec<u8> {
    let seq = |parts: &[&[u8]]| der(0x30, &parts.concat());
    let time = |t: &str| der(0x18, t.as_bytes());
    let sha256_oid = [
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
    ];
    let cert_id = seq(&[
        &seq(&[&sha256_oid, &[0x05, 0x00]]),
        &der(0x04, &[0u8; 32]), // issuerNameHash: not what clients match on
        &der(0x04, &Sha256::digest(pki.ca_key.public_key_raw())),
        &der(0x02, &[0x42, 0x17]),
    ]);
    let status = match s.revoked {
        true => der(0xa1, &time("20260101000000Z")),
        false => vec![0x80, 0x00],
    };
    let single = seq(&[
        &cert_id,
        &status,
        &time("20260101000000Z"),
        &der(0xa0, &time(s.next_update)),
    ]);
    let responder = der(0xa2, &der(0x04, &[1u8; 20]));
    let tbs = seq(&[&responder, &time("20260101000000Z"), &seq(&[&single])]);
    let sig = s.signer.sign(&tbs).expect("sign the response");
    let ecdsa_sha256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let basic = seq(&[
        &tbs,
        &seq(&[&ecdsa_sha256]),
        &der(0x03, &[&[0u8][..], &sig].concat()),
    ]);
    let ocsp_basic = [
        0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01,
    ];
    seq(&[
        &[0x0a, 0x01, 0x00],
        &der(0xa0, &seq(&[&ocsp_basic, &der(0x04, &basic)])),
    ])
}

#[test]
fn a_stapled_revocation_refuses_and_anything_less_is_soft_failed() {
    let dir = workdir();
    let d = dir.path();
    let pki = Pki::new(d);
    let stranger = KeyPair::generate().expect("another key");
    let fresh = "20990101000000Z";
    // (case, staple, refused?, what the daemon logs)
    let cases = [
        (
            "good",
            Staple {
                revoked: false,
                next_update: fresh,
                signer: &pki.ca_key,
            },
            false,
            None,
        ),
        (
            "revoked",
            Staple {
                revoked: true,
                next_update: fresh,
                signer: &pki.ca_key,
            },
            true,
            None,
        ),
        (
            "revoked but stale",
            Staple {
                revoked: true,
                next_update: "20260102000000Z",
                signer: &pki.ca_key,
            },
            false,
            Some("stale"),
        ),
        (
            "revoked but not signed by the issuer",
            Staple {
                revoked: true,
                next_update: fresh,
                signer: &stranger,
            },
            false,
            Some("not signed by the certificate's issuer"),
        ),
    ];
    for (i, (case, staple, refused, logged)) in cases.iter().enumerate() {
        let sdir = d.join(format!("ocsp-server-{i}"));
        std::fs::create_dir_all(&sdir).expect("server dir");
        let (cert, key) = pki.issue(&sdir, "leaf", &[]);
        let response = sdir.join("ocsp.der");
        std::fs::write(&response, ocsp_response(&pki, staple)).expect("write response");
        let server = serve(&sdir, &cert, &key, Some(&response));
        let daemon = daemon_with(d, &format!("ocsp-daemon-{i}"), &server, &pki.ca_pem, &[]);
        let (ok, text) = prewarm_output(&daemon);
        if *refused {
            assert!(!ok, "{case}: accepted: {text}");
            assert!(
                text.contains("OCSP check failed") && text.contains("revoked"),
                "{case}: {text}"
            );
            continue;
        }
        assert!(ok, "{case}: refused: {text}");
        uploads_intact(d, &daemon, &server, case);
        let lines = daemon.log_lines("stapled OCSP response ignored");
        match logged {
            Some(why) => assert!(
                lines.iter().any(|l| l.contains(why)),
                "{case}: the daemon did not say why it ignored the staple: {lines:?}"
            ),
            None => assert!(
                lines.is_empty(),
                "{case}: a good staple was ignored: {lines:?}"
            ),
        }
    }

    // A renewed staple reaches new handshakes at SIGHUP, without a restart. (A new daemon:
    // a resumed TLS session does not show the certificate again.)
    let sdir = d.join("ocsp-renewed");
    std::fs::create_dir_all(&sdir).expect("server dir");
    let (cert, key) = pki.issue(&sdir, "leaf", &[]);
    let response = sdir.join("ocsp.der");
    let good = Staple {
        revoked: false,
        next_update: fresh,
        signer: &pki.ca_key,
    };
    std::fs::write(&response, ocsp_response(&pki, &good)).expect("write response");
    let server = serve(&sdir, &cert, &key, Some(&response));
    let before = daemon_with(d, "renew-before", &server, &pki.ca_pem, &[]);
    let (ok, text) = prewarm_output(&before);
    assert!(ok, "the good staple: {text}");
    let revoked = Staple {
        revoked: true,
        next_update: fresh,
        signer: &pki.ca_key,
    };
    std::fs::write(&response, ocsp_response(&pki, &revoked)).expect("renew response");
    server.hangup();
    // Once the server says it reloaded (a daemon connecting before would keep its
    // connection, and the old staple with it).
    let reloaded = (0..100).any(|_| {
        let log = std::fs::read_to_string(&server.proc.log).unwrap_or_default();
        let done = log.contains("certificate, key and OCSP staple reloaded");
        if !done {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        done
    });
    assert!(reloaded, "the server did not reload at SIGHUP");
    let after = daemon_with(d, "renew-after", &server, &pki.ca_pem, &[]);
    let (ok, text) = prewarm_output(&after);
    assert!(
        !ok && text.contains("OCSP check failed") && text.contains("revoked"),
        "the renewed (revoked) staple did not reach a new handshake: {text}"
    );
}
