//! Chunk digests and the per-session chunk authentication tag.
//!
//! Every chunk carries SHA-256 and CRC32C of its raw bytes and an HMAC-SHA256 tag over
//! `offset (u64 LE) || length (u64 LE) || sha256 || upload_id || nonce`, keyed by
//! `HKDF-SHA256(secret, salt = nonce, info = "uplink chunk v1" || upload_id)`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Hashing walks the data in blocks of this size so both digests see each block while
/// it is still in cache: one pass over memory, not two.
pub const HASH_BLOCK: usize = 128 * 1024;

/// HKDF `info` prefix for chunk keys; the upload id follows it.
pub const CHUNK_KEY_INFO: &[u8] = b"uplink chunk v1";

/// SHA-256 and CRC32C of one chunk's raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkDigest {
    pub sha256: [u8; 32],
    pub crc32c: u32,
}

/// Incremental SHA-256 + CRC32C, fed in any split of the data.
#[derive(Clone, Default)]
pub struct ChunkHasher {
    sha: Sha256,
    crc: u32,
    len: u64,
}

impl ChunkHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        for block in data.chunks(HASH_BLOCK) {
            self.sha.update(block);
            self.crc = crc32c::crc32c_append(self.crc, block);
        }
        self.len += data.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> ChunkDigest {
        ChunkDigest {
            sha256: self.sha.finalize().into(),
            crc32c: self.crc,
        }
    }
}

/// Digest of a whole buffer in one pass.
pub fn digest(data: &[u8]) -> ChunkDigest {
    let mut h = ChunkHasher::new();
    h.update(data);
    h.finish()
}

/// The per-session key for chunk tags.
pub fn session_key(secret: &[u8], nonce: &[u8], upload_id: &str) -> [u8; 32] {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(nonce), secret);
    let mut info = Vec::with_capacity(CHUNK_KEY_INFO.len() + upload_id.len());
    info.extend_from_slice(CHUNK_KEY_INFO);
    info.extend_from_slice(upload_id.as_bytes());
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so expand cannot fail.
    if hk.expand(&info, &mut key).is_err() {
        unreachable!("HKDF-SHA256 output of 32 bytes is always valid");
    }
    key
}

/// Identifies the chunk a tag is computed over.
#[derive(Clone, Copy, Debug)]
pub struct ChunkId<'a> {
    pub offset: u64,
    pub length: u64,
    pub sha256: &'a [u8; 32],
    pub upload_id: &'a str,
    pub nonce: &'a [u8],
}

fn chunk_mac(key: &[u8; 32], id: &ChunkId<'_>) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    mac.update(&id.offset.to_le_bytes());
    mac.update(&id.length.to_le_bytes());
    mac.update(id.sha256);
    mac.update(id.upload_id.as_bytes());
    mac.update(id.nonce);
    mac
}

/// The HMAC-SHA256 tag of a chunk.
pub fn chunk_tag(key: &[u8; 32], id: &ChunkId<'_>) -> [u8; 32] {
    chunk_mac(key, id).finalize().into_bytes().into()
}

/// Constant-time check of a chunk's tag.
pub fn verify_chunk_tag(key: &[u8; 32], id: &ChunkId<'_>, tag: &[u8]) -> bool {
    chunk_mac(key, id).verify_slice(tag).is_ok()
}

/// SHA-256 of a buffer.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Constant-time equality for secrets of equal length (bearer tokens).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_feeding_gives_the_same_digest() {
        let data: Vec<u8> = (0..(3 * HASH_BLOCK + 17))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let whole = digest(&data);
        let mut h = ChunkHasher::new();
        for part in data.chunks(1000) {
            h.update(part);
        }
        assert_eq!(h.finish(), whole);
        assert_eq!(whole.sha256, sha256(&data));
        assert_eq!(whole.crc32c, crc32c::crc32c(&data));
    }

    #[test]
    fn crc32c_matches_the_rfc_3720_check_value() {
        assert_eq!(digest(b"123456789").crc32c, 0xE306_9283);
    }

    #[test]
    fn tag_binds_every_field() {
        let key = session_key(b"secret", b"nonce-1", "up-1");
        let sha = sha256(b"chunk");
        let id = ChunkId {
            offset: 0,
            length: 5,
            sha256: &sha,
            upload_id: "up-1",
            nonce: b"nonce-1",
        };
        let tag = chunk_tag(&key, &id);
        assert!(verify_chunk_tag(&key, &id, &tag));
        let other_sha = sha256(b"chunK");
        let variants = [
            ChunkId { offset: 1, ..id },
            ChunkId { length: 6, ..id },
            ChunkId {
                sha256: &other_sha,
                ..id
            },
            ChunkId {
                upload_id: "up-2",
                ..id
            },
            ChunkId {
                nonce: b"nonce-2",
                ..id
            },
        ];
        for v in variants {
            assert!(
                !verify_chunk_tag(&key, &v, &tag),
                "tag must not verify for {v:?}"
            );
        }
        let other_key = session_key(b"secret", b"nonce-2", "up-1");
        assert!(!verify_chunk_tag(&other_key, &id, &tag));
        assert!(!verify_chunk_tag(&key, &id, &tag[..31]));
    }

    #[test]
    fn session_keys_differ_per_upload() {
        assert_ne!(session_key(b"s", b"n", "a"), session_key(b"s", b"n", "b"));
        assert_ne!(session_key(b"s", b"n", "a"), session_key(b"t", b"n", "a"));
    }
}
