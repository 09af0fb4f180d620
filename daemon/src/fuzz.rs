//! Fuzz targets of what the daemon reads from disk and from the server outside the
//! wire protocol proper: the checkpoint (sealed and plain), the config file, the
//! `Alt-Svc` header, endpoint URLs and SPKI pins. Run by `uplink_fuzz::fuzz`; see its
//! docs for the budget. Each states the contract a hostile input must not break.

use std::collections::BTreeMap;

use proptest::prelude::*;
use uplink_fuzz::{fuzz, mutated, mutated_text, mutated_up_to, proptest};

use crate::config::{Config, Settings};
use crate::engine::ledger::{Checkpoint, Ledger};
use crate::engine::rescan::{self, Sent};
use crate::engine::resume::{self, ServerChunk};
use crate::seal::Sealer;
use crate::transport::Endpoint;
use crate::transport::alt_svc::{self, AltSvcCache};
use crate::transport::pin::SpkiPin;

const MIB: u64 = 1 << 20;

/// A live upload's checkpoint: a folded prefix of 3 chunks, 2 acks beyond a gap, CRCs.
fn checkpoint_json() -> Vec<u8> {
    let mut ledger = Ledger::new();
    let mut crcs = BTreeMap::new();
    for i in [0u64, 1, 2, 4, 6] {
        let sha = [i as u8; 32];
        ledger.ack(i * MIB, MIB, sha);
        crcs.insert(
            i * MIB,
            Sent {
                len: MIB,
                crc32c: i as u32,
                sha256: sha,
            },
        );
    }
    let cp = Checkpoint {
        upload_id: "0123456789abcdef0123456789abcdef".into(),
        ledger,
        dispatched_until: 7 * MIB,
        chunks_sent: 6,
        chunks_resent: 1,
        bytes_resent: MIB,
        crcs,
    };
    serde_json::to_vec(&cp).unwrap_or_default()
}

#[test]
fn fuzz_checkpoint_decoder_yields_only_checkpoints_a_resume_can_use() {
    let seeds = vec![
        checkpoint_json(),
        serde_json::to_vec(&Checkpoint::default()).unwrap_or_default(),
    ];
    let server = (
        any::<u64>(),
        proptest::collection::vec((0u64..16, 1u64..4), 0..6),
    );
    let decoded = std::cell::Cell::new(0u64);
    fuzz(
        "checkpoint",
        (mutated_up_to(seeds, 3), server),
        |(bytes, (size_seed, chunks))| {
            let Ok(cp) = Checkpoint::decode(&bytes) else {
                return Ok(());
            };
            decoded.set(decoded.get() + 1);
            // Whatever decoded is safe to resume from: reconcile it with a server state,
            // acknowledge more, ask for the roots.
            let size = size_seed % (16 * MIB + 1);
            let chunks: Vec<ServerChunk> = chunks
                .iter()
                .map(|&(i, n)| ServerChunk {
                    offset: i * MIB,
                    length: n * MIB,
                    sha256: [i as u8; 32],
                    from: None,
                })
                .collect();
            let ranges: Vec<[u64; 2]> = chunks
                .iter()
                .map(|c| [c.offset, c.offset + c.length])
                .collect();
            let from = resume::chunks_needed_from(Some(&cp), &ranges);
            let plan = resume::reconcile(size, Some(&cp), &ranges, from, &chunks);
            prop_assert!(plan.verify.iter().all(|c| c.offset + c.length <= size));
            let mut ledger = cp.ledger.clone();
            ledger.ack(ledger.prefix_end(), MIB, [9; 32]);
            let _ = ledger.root_if_complete(size);
            let _ = rescan::root(&cp.crcs, size);
            Ok(())
        },
    );
    eprintln!(
        "fuzz checkpoint: {} decoded and resumed from",
        decoded.get()
    );
}

#[test]
fn fuzz_sealed_checkpoints_open_only_unaltered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sealer = Sealer::load_or_create(&dir.path().join("key")).expect("key");
    let plain = checkpoint_json();
    let sealed = sealer.seal(&plain, b"job-1");
    fuzz(
        "sealed_checkpoint",
        mutated(vec![sealed.clone()]),
        |bytes| {
            match sealer.open(&bytes, b"job-1") {
                Some(opened) => {
                    prop_assert_eq!(&bytes, &sealed, "an altered seal opened");
                    prop_assert_eq!(opened, plain.clone());
                }
                None => prop_assert_ne!(&bytes, &sealed, "the seal itself must open"),
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_config_file_is_refused_with_an_error_never_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    uplink_proto::integrity::write_private_file(&token, b"fuzz-secret\n").expect("token");
    let good = format!(
        "endpoint = \"https://upload.example.org:8443\"\ntoken_file = \"{}\"\nct = \"off\"\n\
         streams = 12\nconnections = 4\nchunk_size = 4194304\nkeep_warm_seconds = 300\n\
         keep_finished_jobs = 1000\nkeep_finished_days = 7\n\
         pin_spki = [\"sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\"]\n",
        token.display()
    );
    let path = dir.path().join("uplinkd.toml");
    fuzz("config_file", mutated_text(&[&good]), |text| {
        std::fs::write(&path, &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Ok(cfg) = Config::resolve(Some(path.clone()), Settings::default()) {
            prop_assert!(cfg.endpoint.starts_with("https://"));
            if let Some(c) = cfg.chunk_size {
                prop_assert!(
                    (uplink_proto::wire::MIN_CHUNK_SIZE..=uplink_proto::wire::MAX_CHUNK_SIZE)
                        .contains(&c)
                );
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_alt_svc_offers_a_real_port_and_never_overflows_the_clock() {
    let seeds = [
        r#"h3=":8443"; ma=3600"#,
        r#"h2=":443", h3=":4433"; ma=86400; persist=1"#,
        "clear",
        r#"h3=":1"; ma=18446744073709551615"#,
    ];
    let cache = AltSvcCache::load(None, "upload.example.org:8443");
    fuzz("alt_svc", mutated_text(&seeds), |value| {
        if let Some(offer) = alt_svc::parse(&value) {
            prop_assert!(offer.port != 0);
            cache.learn(offer);
            // Learned whatever came before (a second of slack for the clock's tick).
            if offer.max_age.as_secs() >= 2 {
                prop_assert_eq!(cache.port(), Some(offer.port));
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_endpoints_and_pins_parse_or_say_why() {
    fuzz(
        "endpoint",
        mutated_text(&[
            "https://upload.example.org:8443",
            "https://[::1]:443/",
            "http://x",
        ]),
        |url| {
            if let Ok(e) = Endpoint::parse(&url) {
                // Schemes are case-insensitive (RFC 3986): "HTTPS://" is https too.
                prop_assert!(url.to_ascii_lowercase().starts_with("https://"));
                prop_assert!(!e.authority.is_empty());
            }
            Ok(())
        },
    );
    fuzz(
        "spki_pin",
        mutated_text(&["sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="]),
        |text| {
            match SpkiPin::parse(&text) {
                Ok(_) => prop_assert!(text.trim().starts_with("sha256/")),
                Err(e) => prop_assert!(!e.is_empty()),
            }
            Ok(())
        },
    );
}
