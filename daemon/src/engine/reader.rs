//! Reading the source file: mmap each chunk, hash it in one pass, hand the mapped bytes
//! to the sender without a copy.
//!
//! The file is the producer's; we cannot lock it (advisory locks stop nobody), so we
//! detect change instead: device, inode, size and mtime are recorded at enqueue and
//! checked before every chunk. A change fails the job with `file_changed`.
//! A growing file (a capture still being written) is checked for device and inode only,
//! and for holding every byte asked for (else `file_truncated`), until it is sealed; the
//! chunks read meanwhile are re-scanned before completing (`rescan`).
//! (A truncation racing between that check and the read would still fault the mapping —
//! a risk every mmap reader carries; the check makes the window tiny.)

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uplink_proto::chain::FileState;
use uplink_proto::integrity::{self, ChunkDigest};

/// Files above this size have their pages dropped from the cache behind the reader.
pub const DROP_CACHE_ABOVE: u64 = 256 * 1024 * 1024;

/// What identifies the exact file content we promised to upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("the file changed since it was enqueued ({0})")]
    Changed(String),
    #[error("the file was truncated ({0})")]
    Truncated(String),
    #[error("the file was rewritten behind the upload ({0})")]
    Rewritten(String),
    #[error("cannot read the file: {0}")]
    Io(String),
}

/// The source file, opened once per run.
pub struct SourceFile {
    file: Arc<File>,
    identity: FileIdentity,
    /// Still being written: `identity.size` is a floor, and mtime changes.
    growing: bool,
    drop_cache: bool,
}

impl SourceFile {
    /// Opens the file enqueued with `expected`; `growing`: still being written, holding
    /// at least `expected.size` bytes.
    pub fn open(
        path: &Path,
        expected: &FileIdentity,
        growing: bool,
    ) -> Result<SourceFile, ReadError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::Changed("it no longer exists".into()),
            _ => ReadError::Io(e.to_string()),
        })?;
        let src = SourceFile {
            file: Arc::new(file),
            identity: *expected,
            growing,
            // A growing file's pages are re-scanned at the seal: keep them cached.
            drop_cache: !growing && expected.size > DROP_CACHE_ABOVE,
        };
        src.check()?;
        Ok(src)
    }

    /// The same open file, sealed: from now on it must stay exactly as `identity` says.
    pub fn sealed(&self, identity: FileIdentity) -> SourceFile {
        SourceFile {
            file: Arc::clone(&self.file),
            identity,
            growing: false,
            drop_cache: false,
        }
    }

    /// The open file (for reads outside the chunk path, like the seal's re-scan).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file's current metadata (through the open descriptor).
    pub fn metadata(&self) -> Result<std::fs::Metadata, ReadError> {
        self.file
            .metadata()
            .map_err(|e| ReadError::Io(e.to_string()))
    }

    /// Fails if the open file is no longer the one that was enqueued.
    pub fn check(&self) -> Result<(), ReadError> {
        self.check_holds(0)
    }

    /// [`SourceFile::check`], and a growing file must hold at least `end` bytes.
    fn check_holds(&self, end: u64) -> Result<(), ReadError> {
        let now = FileIdentity::of(&self.metadata()?);
        if now.dev != self.identity.dev || now.ino != self.identity.ino {
            return Err(ReadError::Changed("it was replaced by another file".into()));
        }
        if self.growing {
            let floor = end.max(self.identity.size);
            if now.size < floor {
                return Err(ReadError::Truncated(format!(
                    "it holds {} bytes, {floor} were written before",
                    now.size
                )));
            }
            return Ok(());
        }
        if now.size != self.identity.size {
            return Err(ReadError::Changed(format!(
                "size {} became {}",
                self.identity.size, now.size
            )));
        }
        if now.mtime_ns != self.identity.mtime_ns {
            return Err(ReadError::Changed("it was modified".into()));
        }
        Ok(())
    }

    /// Maps `[offset, offset + len)` and hashes it (SHA-256 + CRC32C, one pass).
    /// Blocking: call from a blocking thread.
    pub fn read_chunk(&self, offset: u64, len: u64) -> Result<(Bytes, ChunkDigest), ReadError> {
        self.read_chunk_from(offset, len, None)
            .map(|(data, digest, _)| (data, digest))
    }

    /// [`SourceFile::read_chunk`]; with `from`, the file's SHA-256 state at `offset`, the
    /// chunk is hashed as a link of the file's hash (its digest the link's) and the state
    /// after it comes back too.
    pub fn read_chunk_from(
        &self,
        offset: u64,
        len: u64,
        from: Option<FileState>,
    ) -> Result<(Bytes, ChunkDigest, Option<FileState>), ReadError> {
        self.check_holds(offset + len)?;
        let page = page_size();
        let aligned = offset - offset % page;
        let delta = (offset - aligned) as usize;
        let map_len = delta + len as usize;
        // SAFETY: mapping a file is unsafe because another process may change or truncate it
        // while mapped. We map read-only, check the file's identity right before, and treat a
        // content change as a job failure (the server refuses bytes that do not match their hash).
        let mmap = unsafe {
            memmap2::MmapOptions::new()
                .offset(aligned)
                .len(map_len)
                .map(&*self.file)
        }
        .map_err(|e| ReadError::Io(e.to_string()))?;
        let _ = mmap.advise(memmap2::Advice::Sequential);
        let _ = mmap.advise(memmap2::Advice::WillNeed);
        let view = MappedChunk {
            mmap,
            start: delta,
            len: len as usize,
            file: Arc::clone(&self.file),
            file_offset: offset,
            drop_cache: self.drop_cache,
        };
        let mut hasher = match from {
            Some(from) => integrity::ChunkHasher::from_state(from),
            None => integrity::ChunkHasher::new(),
        };
        hasher.update(view.as_ref());
        let (digest, to) = hasher.finish_link();
        Ok((Bytes::from_owner(view), digest, to))
    }
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// A chunk's bytes, backed by its mapping until the last reference (the request body) is gone.
struct MappedChunk {
    mmap: memmap2::Mmap,
    start: usize,
    len: usize,
    file: Arc<File>,
    file_offset: u64,
    drop_cache: bool,
}

impl AsRef<[u8]> for MappedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.mmap[self.start..self.start + self.len]
    }
}

impl Drop for MappedChunk {
    fn drop(&mut self) {
        if self.drop_cache {
            // The mapping is released right after this; big captures should not evict
            // everything else from the page cache.
            drop_behind(&self.file, self.file_offset, self.len as u64, &self.mmap);
        }
    }
}

/// Drops a sent chunk's pages from the page cache. Advice only: errors change nothing.
/// Linux (and the other systems rustix offers it on): `posix_fadvise(DONTNEED)`.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn drop_behind(file: &File, offset: u64, len: u64, _mapping: &memmap2::Mmap) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

/// Apple has no `posix_fadvise`. `F_NOCACHE` only governs `read`/`write` through the
/// descriptor (we map the file) and purges nothing already cached; `F_RDADVISE` is
/// read-ahead, which `madvise(WILLNEED)` on the mapping already asks for. What discards
/// cached pages of a range is `msync(MS_INVALIDATE)` on a shared mapping of it (fio's
/// DONTNEED on macOS does the same) — and the chunk's own mapping is one.
#[cfg(target_vendor = "apple")]
fn drop_behind(_file: &File, _offset: u64, _len: u64, mapping: &memmap2::Mmap) {
    // SAFETY: the pointer and length are those of `mapping`, a live, page-aligned
    // (offset aligned in `read_chunk`), read-only shared mapping we own; MS_INVALIDATE
    // on it discards clean cached pages (the file's bytes are re-read on next use) and
    // touches no memory Rust can observe: nothing reads the mapping after this.
    let _ = unsafe {
        libc::msync(
            mapping.as_ptr() as *mut libc::c_void,
            mapping.len(),
            libc::MS_INVALIDATE,
        )
    };
}

/// Elsewhere: no page-cache advice.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_vendor = "apple"
)))]
fn drop_behind(_file: &File, _offset: u64, _len: u64, _mapping: &memmap2::Mmap) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn unaligned_chunks_read_the_right_bytes() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        let id = FileIdentity::of(&f.as_file().metadata().unwrap());
        let src = SourceFile::open(f.path(), &id, false).unwrap();
        let (bytes, digest) = src.read_chunk(5000, 70_000).unwrap();
        assert_eq!(&bytes[..], &data[5000..75_000]);
        assert_eq!(digest, integrity::digest(&data[5000..75_000]));
    }

    #[test]
    fn a_changed_file_is_detected() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"hello world").unwrap();
        f.flush().unwrap();
        let id = FileIdentity::of(&f.as_file().metadata().unwrap());
        let src = SourceFile::open(f.path(), &id, false).unwrap();
        f.write_all(b"!").unwrap();
        f.flush().unwrap();
        assert!(matches!(src.read_chunk(0, 4), Err(ReadError::Changed(_))));
    }

    #[test]
    fn a_growing_file_may_grow_but_not_shrink() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"hello").unwrap();
        f.flush().unwrap();
        let id = FileIdentity::of(&f.as_file().metadata().unwrap());
        let src = SourceFile::open(f.path(), &id, true).unwrap();
        f.write_all(b" world").unwrap();
        f.flush().unwrap();
        let (bytes, _) = src.read_chunk(0, 11).unwrap();
        assert_eq!(&bytes[..], b"hello world");
        assert!(matches!(src.read_chunk(8, 8), Err(ReadError::Truncated(_))));
        f.as_file().set_len(3).unwrap();
        assert!(matches!(src.check(), Err(ReadError::Truncated(_))));
        let sealed = src.sealed(FileIdentity::of(&f.as_file().metadata().unwrap()));
        assert!(sealed.check().is_ok());
        f.write_all(b"!").unwrap();
        f.flush().unwrap();
        assert!(matches!(sealed.check(), Err(ReadError::Changed(_))));
    }
}
