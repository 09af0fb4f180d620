//! Before a live job completes (one enqueued while its file was still being written),
//! every chunk the server acknowledged is compared, by CRC32C, with the file as it is
//! now. Capture formats patch their header when they finish (PLY's vertex count, MP4's
//! `moov`, GLB's length): bytes already on the server may have changed since they were
//! read, and completing then would assemble a file that never existed. CRC32C runs at
//! memory speed (about 0.1 s per GB from the page cache, where the writer left the pages),
//! so the check costs little at the seal and catches what nobody named.
//!
//! What changed inside ranges the seal named goes again (the server takes the new chunk
//! in place of the old, `X-Chunk-Replace`); a change anywhere else fails the job
//! (`file_rewritten`). The chunks' SHA-256 are kept too: the Merkle root `complete`
//! needs is over the final bytes, and the ledger's folded tree cannot change a leaf.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use super::reader::{ReadError, SourceFile};

/// One acknowledged chunk of a live job, as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub len: u64,
    pub crc32c: u32,
    pub sha256: [u8; 32],
}

/// A live job's acknowledged chunks by offset.
pub type ChunkCrcs = BTreeMap<u64, Sent>;

const BLOCK: usize = 1 << 20;

/// What the re-scan found.
#[derive(Debug, PartialEq, Eq)]
pub enum Rescan {
    /// The file holds exactly what the server holds.
    Same,
    /// These chunks (offset, length) changed, all inside named ranges: send them again.
    Resend(Vec<(u64, u64)>),
}

/// Compares every acknowledged chunk with the file now. `named`: ranges (offset, length)
/// the seal said were rewritten. Blocking: call from a blocking thread.
pub fn rescan(
    source: &SourceFile,
    crcs: &ChunkCrcs,
    named: &[(u64, u64)],
) -> Result<Rescan, ReadError> {
    let mut buf = vec![0u8; BLOCK];
    let mut resend = Vec::new();
    for (&offset, sent) in crcs {
        if crc_of(source, offset, sent.len, &mut buf)? == sent.crc32c {
            continue;
        }
        let end = offset + sent.len;
        if !named.iter().any(|&(o, l)| o < end && offset < o + l) {
            return Err(ReadError::Rewritten(format!(
                "the bytes at {offset}..{end} changed after they were uploaded, and the seal did not name them"
            )));
        }
        resend.push((offset, sent.len));
    }
    Ok(match resend.is_empty() {
        true => Rescan::Same,
        false => Rescan::Resend(resend),
    })
}

/// The Merkle root over the chunks as sent, if they cover `[0, size)` exactly.
pub fn root(crcs: &ChunkCrcs, size: u64) -> Option<[u8; 32]> {
    let covered = crcs
        .iter()
        .try_fold(0u64, |end, (&o, s)| (o == end).then_some(o + s.len));
    if covered != Some(size) {
        return None;
    }
    uplink_proto::merkle::root_of(crcs.iter().map(|(&o, s)| (o, s.len, &s.sha256))).ok()
}

fn crc_of(source: &SourceFile, offset: u64, len: u64, buf: &mut [u8]) -> Result<u32, ReadError> {
    let mut crc = 0u32;
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let want = ((end - at) as usize).min(buf.len());
        let got = source
            .file()
            .read_at(&mut buf[..want], at)
            .map_err(|e| ReadError::Io(e.to_string()))?;
        if got == 0 {
            return Err(ReadError::Truncated(format!(
                "it ends at {at} bytes, a chunk sent before reaches {end}"
            )));
        }
        crc = crc32c::crc32c_append(crc, &buf[..got]);
        at += got as u64;
    }
    Ok(crc)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;
    use crate::engine::reader::FileIdentity;

    #[test]
    fn a_patch_inside_a_named_range_is_resent_elsewhere_it_fails_and_untouched_passes() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        let id = FileIdentity::of(&f.as_file().metadata().unwrap());
        let src = SourceFile::open(f.path(), &id, true).unwrap();
        let mut crcs = ChunkCrcs::new();
        for (o, l) in [(0u64, 1_500_000u64), (1_500_000, 1_500_000)] {
            let bytes = &data[o as usize..(o + l) as usize];
            let d = uplink_proto::integrity::digest(bytes);
            let sent = Sent {
                len: l,
                crc32c: d.crc32c,
                sha256: d.sha256,
            };
            crcs.insert(o, sent);
        }
        assert_eq!(
            root(&crcs, 3_000_000),
            uplink_proto::merkle::root_of([
                (0, 1_500_000, &crcs[&0].sha256),
                (1_500_000, 1_500_000, &crcs[&1_500_000].sha256)
            ])
            .ok()
        );
        assert_eq!(root(&crcs, 3_000_001), None, "not every byte is covered");
        assert_eq!(rescan(&src, &crcs, &[]).unwrap(), Rescan::Same);
        f.as_file_mut().seek(SeekFrom::Start(2_000_000)).unwrap();
        f.write_all(b"patched").unwrap();
        f.flush().unwrap();
        let named = [(2_000_000, 7)];
        let found = rescan(&src, &crcs, &named).unwrap();
        assert_eq!(found, Rescan::Resend(vec![(1_500_000, 1_500_000)]));
        let elsewhere = [(0, 100)];
        assert!(matches!(
            rescan(&src, &crcs, &elsewhere),
            Err(ReadError::Rewritten(_))
        ));
        f.as_file().set_len(2_500_000).unwrap();
        assert!(matches!(
            rescan(&src, &crcs, &named),
            Err(ReadError::Truncated(_))
        ));
    }
}
