//! Chained chunk digests: the whole file's SHA-256 without a second pass over its bytes.
//!
//! The server must answer `complete` with the SHA-256 of the whole file (an identity users
//! can check with `sha256sum`), and it verifies every chunk as it arrives. Done naively
//! those are two SHA-256 passes over every byte. SHA-256 is a chain: the state after
//! byte `n` (eight words, plus the `n % 64` bytes of an unfinished block) is all the hash
//! needs to go on. So a chunk can be hashed *as a link of the file's hash*: the client
//! sends the file's state at the chunk's first byte (`X-Chunk-SHA256-From`), and the
//! chunk's digest becomes
//!
//! `SHA-256("uplink chunk chain v1" || from || to)`, each state as
//! `bytes absorbed (u64 LE) || h0..h7 (u32 BE) || the unfinished block's bytes`,
//!
//! where `to` is the state after the chunk. The server computes `to` from `from` and the
//! bytes it received — the one pass it makes anyway — and checks the digest; the chunk's
//! HMAC covers the digest as before. When the chunk at its running hash's frontier
//! starts from the very state the server holds there, the frontier jumps to `to` without
//! touching the bytes again, and `complete` finishes the last state.
//!
//! Nothing here is trusted from the client: a wrong `from` only makes the server hash
//! those bytes the old way (it never jumps from a state it did not reach itself), so the
//! file hash is right whatever a client sends. Forging a chunk under a given digest would
//! take a collision of SHA-256's compression function from a chosen state.

use sha2::block_api::compress256;
use sha2::{Digest, Sha256};

/// Domain label of a chained chunk digest.
pub const CHAIN_LABEL: &[u8] = b"uplink chunk chain v1";

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// SHA-256 part-way through a file: the chaining value after `len` bytes and the bytes
/// of the block not yet full.
#[derive(Clone, Copy)]
pub struct FileState {
    h: [u32; 8],
    pending: [u8; 64],
    len: u64,
}

/// Equal when they stand at the same offset with the same chaining value and unfinished
/// block (bytes of the buffer past the block are leftovers, not state).
impl PartialEq for FileState {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.h == other.h && self.pending() == other.pending()
    }
}

impl Eq for FileState {}

impl Default for FileState {
    fn default() -> Self {
        Self::start()
    }
}

impl std::fmt::Debug for FileState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileState({} bytes, {})", self.len, self.encode())
    }
}

impl FileState {
    /// The state before the file's first byte.
    pub const fn start() -> FileState {
        FileState {
            h: IV,
            pending: [0; 64],
            len: 0,
        }
    }

    /// Bytes absorbed: the file offset this state stands at.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn pending(&self) -> &[u8] {
        &self.pending[..(self.len % 64) as usize]
    }

    /// Absorbs the next bytes of the file.
    pub fn update(&mut self, mut data: &[u8]) {
        let fill = (self.len % 64) as usize;
        self.len += data.len() as u64;
        if fill > 0 {
            let take = (64 - fill).min(data.len());
            self.pending[fill..fill + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if fill + take < 64 {
                return;
            }
            compress256(&mut self.h, &[self.pending]);
        }
        let (blocks, rest) = data.as_chunks::<64>();
        compress256(&mut self.h, blocks);
        self.pending[..rest.len()].copy_from_slice(rest);
    }

    /// The SHA-256 of the bytes absorbed (the state itself is unchanged).
    pub fn finish(&self) -> [u8; 32] {
        let n = (self.len % 64) as usize;
        let mut tail = [0u8; 128];
        tail[..n].copy_from_slice(self.pending());
        tail[n] = 0x80;
        let end = if n < 56 { 64 } else { 128 };
        tail[end - 8..end].copy_from_slice(&self.len.wrapping_mul(8).to_be_bytes());
        let mut h = self.h;
        compress256(&mut h, tail[..end].as_chunks::<64>().0);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(h) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// The state's bytes as the wire and the digest carry them, without the length:
    /// h0..h7 (u32 BE), then the unfinished block's bytes.
    fn state_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.h
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .chain(self.pending().iter().copied())
    }

    /// Lower-case hex of the state, as `X-Chunk-SHA256-From` carries it: 64 digits of
    /// chaining value, then two per byte of the unfinished block (`offset % 64` bytes).
    pub fn encode(&self) -> String {
        self.state_bytes().fold(String::new(), |mut s, b| {
            s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
            s.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
            s
        })
    }

    /// The state at file offset `offset`, from its [`FileState::encode`]d text. `None`
    /// unless the text is hex of exactly the length that offset implies.
    pub fn parse(text: &str, offset: u64) -> Option<FileState> {
        let n = (offset % 64) as usize;
        if text.len() != 2 * (32 + n) {
            return None;
        }
        let mut raw = [0u8; 96];
        hex::decode_to_slice(text, &mut raw[..32 + n]).ok()?;
        let mut h = [0u32; 8];
        for (w, b) in h.iter_mut().zip(raw[..32].chunks_exact(4)) {
            *w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        let mut pending = [0u8; 64];
        pending[..n].copy_from_slice(&raw[32..32 + n]);
        Some(FileState {
            h,
            pending,
            len: offset,
        })
    }

    fn absorb_into(&self, sha: &mut Sha256) {
        sha.update(self.len.to_le_bytes());
        for w in self.h {
            sha.update(w.to_be_bytes());
        }
        sha.update(self.pending());
    }
}

/// The digest of a chunk hashed as a link of the file's hash: from the state at its first
/// byte to the state after its last.
pub fn link_digest(from: &FileState, to: &FileState) -> [u8; 32] {
    let mut sha = Sha256::new();
    sha.update(CHAIN_LABEL);
    from.absorb_into(&mut sha);
    to.absorb_into(&mut sha);
    sha.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 253) as u8).collect()
    }

    #[test]
    fn the_state_finishes_to_sha256_for_every_length_and_split() {
        for n in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 70_001] {
            let bytes = data(n);
            let want: [u8; 32] = Sha256::digest(&bytes).into();
            let mut whole = FileState::start();
            whole.update(&bytes);
            assert_eq!(whole.finish(), want, "{n} bytes at once");
            for cut in [1, 7, 63, 64, 100] {
                let mut s = FileState::start();
                bytes.chunks(cut).for_each(|p| s.update(p));
                assert_eq!(s.finish(), want, "{n} bytes in pieces of {cut}");
                assert_eq!(s, whole);
            }
        }
    }

    #[test]
    fn a_state_travels_as_text_and_back_at_its_offset() {
        for n in [0u64, 1, 63, 64, 22_369_622] {
            let mut s = FileState::start();
            s.update(&data(n as usize));
            let text = s.encode();
            assert_eq!(text.len() as u64, 64 + 2 * (n % 64));
            assert_eq!(FileState::parse(&text, n), Some(s));
            // The text of another offset's length, or not hex, is refused.
            assert_eq!(FileState::parse(&text, n + 1), None);
            let mut bad = text.clone();
            bad.replace_range(0..1, "g");
            assert_eq!(FileState::parse(&bad, n), None);
        }
    }

    /// Chunks hashed each from the state the one before ended at give, finished, the
    /// file's SHA-256; their digests bind both states.
    #[test]
    fn links_chain_to_the_file_hash() {
        let bytes = data(300_007);
        let mut state = FileState::start();
        let mut digests = Vec::new();
        for chunk in bytes.chunks(70_001) {
            let from = state;
            state.update(chunk);
            digests.push(link_digest(&from, &state));
        }
        assert_eq!(state.finish(), <[u8; 32]>::from(Sha256::digest(&bytes)));
        let mut other = FileState::start();
        other.update(&bytes[..1]);
        assert_ne!(link_digest(&other, &state), digests[digests.len() - 1]);
        assert_ne!(digests[0], digests[1]);
    }

    /// A fixed answer computed independently (Python `hashlib`, from the definition): the
    /// digest cannot drift without this test failing.
    #[test]
    fn link_digest_matches_a_known_answer() {
        let from = FileState::start();
        let mut to = FileState::start();
        to.update(b"abc");
        assert_eq!(
            hex::encode(to.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            to.encode(),
            "6a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19616263"
        );
        assert_eq!(
            hex::encode(link_digest(&from, &to)),
            KNOWN_LINK_ABC,
            "SHA-256(label || 0u64 || IV || 3u64 || IV || 'abc')"
        );
    }

    const KNOWN_LINK_ABC: &str = "6c308950de46363b14d5d9602564549b263e0bb471e9c71d046d6a9f2318426d";
}
