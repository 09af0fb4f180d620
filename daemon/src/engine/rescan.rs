//! Before a live job completes (one enqueued while its file was still being written),
//! every chunk the server acknowledged is compared, by CRC32C, with the file as it is
//! now. Capture formats patch their header when they finish (PLY's vertex count, MP4's
//! `moov`, GLB's length): bytes already on the server may have changed since they were
//! read, and completing then would assemble a file that never existed. CRC32C runs at
//! memory speed (about 0.1 s per GB from the page cache, where the writer left the pages),
//! so the check costs little at the seal and catches what nobody named.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

use super::reader::{ReadError, SourceFile};

/// Chunks acknowledged for a live job: offset -> (length, CRC32C of the bytes sent).
pub type ChunkCrcs = BTreeMap<u64, (u64, u32)>;

const BLOCK: usize = 1 << 20;

/// The offset of the first acknowledged chunk whose bytes differ from the file now, if
/// any. Blocking: call from a blocking thread.
pub fn first_changed(source: &SourceFile, crcs: &ChunkCrcs) -> Result<Option<u64>, ReadError> {
    let mut buf = vec![0u8; BLOCK];
    for (&offset, &(len, crc)) in crcs {
        if crc_of(source, offset, len, &mut buf)? != crc {
            return Ok(Some(offset));
        }
    }
    Ok(None)
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
    fn a_patch_behind_the_edge_is_found_and_an_untouched_file_passes() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        let id = FileIdentity::of(&f.as_file().metadata().unwrap());
        let src = SourceFile::open(f.path(), &id, true).unwrap();
        let mut crcs = ChunkCrcs::new();
        for (o, l) in [(0u64, 1_500_000u64), (1_500_000, 1_500_000)] {
            let range = o as usize..(o + l) as usize;
            crcs.insert(o, (l, crc32c::crc32c(&data[range])));
        }
        assert_eq!(first_changed(&src, &crcs).unwrap(), None);
        f.as_file_mut().seek(SeekFrom::Start(2_000_000)).unwrap();
        f.write_all(b"patched").unwrap();
        f.flush().unwrap();
        assert_eq!(first_changed(&src, &crcs).unwrap(), Some(1_500_000));
        f.as_file().set_len(2_500_000).unwrap();
        assert!(matches!(
            first_changed(&src, &crcs),
            Err(ReadError::Truncated(_))
        ));
    }
}
