//! Credentials, chunk digests and the per-session chunk authentication tag.
//!
//! # Keys
//!
//! The token file (the same file on the server and on the daemon) holds a client secret
//! that never travels. Both sides derive from it, with HKDF-SHA256 (no salt) under
//! distinct labels:
//!
//! - the **bearer credential**, `hex(HKDF(secret, info = "uplink bearer v1"))`, sent as
//!   `Authorization: Bearer <credential>` on every request;
//! - the **chunk secret**, `HKDF(secret, info = "uplink chunk-secret v1")`, which never
//!   leaves either side.
//!
//! HKDF outputs under different labels are independent, so someone who sees requests
//! (a TLS-terminating proxy, a log) learns the bearer credential but nothing about the
//! chunk secret: they can call the API, but cannot forge chunk tags.
//!
//! # Chunk tags
//!
//! Every chunk carries SHA-256 and CRC32C of its raw bytes and an HMAC-SHA256 tag over
//! `offset (u64 LE) || length (u64 LE) || sha256 || upload_id || nonce`, keyed by the
//! session key `HKDF-SHA256(chunk secret, salt = nonce, info = "uplink chunk v1" || upload_id)`.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::chain::{self, FileState};

type HmacSha256 = Hmac<Sha256>;

/// Hashing walks the data in blocks of this size so both digests see each block while
/// it is still in cache: one pass over memory, not two.
pub const HASH_BLOCK: usize = 128 * 1024;

/// HKDF `info` prefix for chunk keys; the upload id follows it.
pub const CHUNK_KEY_INFO: &[u8] = b"uplink chunk v1";
/// HKDF `info` of the bearer credential (what travels in `Authorization`).
pub const BEARER_INFO: &[u8] = b"uplink bearer v1";
/// HKDF `info` of the chunk secret (what session keys derive from; never sent).
pub const CHUNK_SECRET_INFO: &[u8] = b"uplink chunk-secret v1";

/// The client secret from the token file. Wiped from memory when dropped; never sent,
/// never logged (its `Debug` prints nothing of it).
pub struct ClientSecret(Zeroizing<Vec<u8>>);

impl ClientSecret {
    /// The secret in a token file's text: surrounding whitespace (a trailing newline)
    /// is not part of it. `None` if nothing is left.
    pub fn from_token_text(text: &str) -> Option<ClientSecret> {
        let secret = text.trim();
        (!secret.is_empty()).then(|| ClientSecret(Zeroizing::new(secret.as_bytes().to_vec())))
    }

    /// Reads the token file at `path`.
    /// The file must not be readable by group or others (mode 0600): a secret anyone on
    /// the host can read is not a secret.
    pub fn read_token_file(path: &Path) -> Result<ClientSecret, String> {
        check_private_file(path, "token file")?;
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?,
        );
        Self::from_token_text(&text)
            .ok_or_else(|| format!("token file {} is empty", path.display()))
    }
}

/// Refuses a secret file (`what`: "token file", "TLS key", …) that group or others may
/// read: a secret anyone on the host can read is not a secret.
pub fn check_private_file(path: &Path, what: &str) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{what} {} is readable by others (mode {:o}): chmod 600 it",
                path.display(),
                mode & 0o777
            ));
        }
    }
    Ok(())
}

/// Writes a secret file readable by its owner only (mode 0600 from the first byte, not
/// chmod after), replacing what was there.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

/// The key chunk session keys derive from. Wiped when dropped; never sent or logged.
#[derive(Clone)]
pub struct ChunkSecret(Zeroizing<[u8; 32]>);

impl ChunkSecret {
    pub fn from_bytes(bytes: [u8; 32]) -> ChunkSecret {
        ChunkSecret(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for ChunkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkSecret(..)")
    }
}

/// 32 bytes of `HKDF-SHA256(ikm, salt, info)`.
fn hkdf32(ikm: &[u8], salt: Option<&[u8]>, info: &[&[u8]]) -> [u8; 32] {
    let hk = hkdf::Hkdf::<Sha256>::new(salt, ikm);
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so expand cannot fail.
    if hk.expand_multi_info(info, &mut out).is_err() {
        unreachable!("HKDF-SHA256 output of 32 bytes is always valid");
    }
    out
}

/// The bearer credential: lower-case hex of `HKDF-SHA256(secret, info = "uplink bearer v1")`.
pub fn bearer_credential(secret: &ClientSecret) -> String {
    let raw = Zeroizing::new(hkdf32(&secret.0, None, &[BEARER_INFO]));
    hex::encode(raw.as_slice())
}

/// The chunk secret: `HKDF-SHA256(secret, info = "uplink chunk-secret v1")`.
pub fn chunk_secret(secret: &ClientSecret) -> ChunkSecret {
    ChunkSecret::from_bytes(hkdf32(&secret.0, None, &[CHUNK_SECRET_INFO]))
}

/// What one side needs from the client secret: the credential it sends (or expects) and
/// the secret chunk keys derive from. The client secret itself is not kept.
#[derive(Clone)]
pub struct Credentials {
    bearer: Zeroizing<String>,
    chunk_secret: ChunkSecret,
}

impl Credentials {
    pub fn derive(secret: &ClientSecret) -> Credentials {
        Credentials {
            bearer: Zeroizing::new(bearer_credential(secret)),
            chunk_secret: chunk_secret(secret),
        }
    }

    /// Reads the token file and derives both; the secret is wiped right after.
    pub fn from_token_file(path: &Path) -> Result<Credentials, String> {
        ClientSecret::read_token_file(path).map(|s| Credentials::derive(&s))
    }

    /// The value of `Authorization: Bearer <credential>`.
    pub fn bearer(&self) -> &str {
        &self.bearer
    }

    pub fn chunk_secret(&self) -> &ChunkSecret {
        &self.chunk_secret
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// SHA-256 and CRC32C of one chunk's raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkDigest {
    pub sha256: [u8; 32],
    pub crc32c: u32,
}

/// The SHA-256 a chunk hasher keeps: of the chunk alone, or of the file from the state at
/// the chunk's first byte (a chained digest, see [`crate::chain`]).
#[derive(Clone)]
enum Sha {
    Plain(Sha256),
    Link { from: FileState, to: FileState },
}

/// Incremental SHA-256 + CRC32C, fed in any split of the data.
#[derive(Clone)]
pub struct ChunkHasher {
    sha: Sha,
    crc: u32,
    len: u64,
}

impl Default for ChunkHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkHasher {
    /// Hashes the chunk on its own: the digest is its bytes' SHA-256.
    pub fn new() -> Self {
        ChunkHasher {
            sha: Sha::Plain(Sha256::new()),
            crc: 0,
            len: 0,
        }
    }

    /// Hashes the chunk as a link of the file's hash, from `from`, the file's state at the
    /// chunk's first byte: the digest is [`chain::link_digest`].
    pub fn from_state(from: FileState) -> Self {
        ChunkHasher {
            sha: Sha::Link { to: from, from },
            crc: 0,
            len: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        for block in data.chunks(HASH_BLOCK) {
            match &mut self.sha {
                Sha::Plain(sha) => sha.update(block),
                Sha::Link { to, .. } => to.update(block),
            }
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
        self.finish_link().0
    }

    /// The digest, and for a chained one the file's state after the chunk.
    pub fn finish_link(self) -> (ChunkDigest, Option<FileState>) {
        let (sha256, to) = match self.sha {
            Sha::Plain(sha) => (sha.finalize().into(), None),
            Sha::Link { from, to } => (chain::link_digest(&from, &to), Some(to)),
        };
        let digest = ChunkDigest {
            sha256,
            crc32c: self.crc,
        };
        (digest, to)
    }
}

/// Digest of a whole buffer in one pass.
pub fn digest(data: &[u8]) -> ChunkDigest {
    let mut h = ChunkHasher::new();
    h.update(data);
    h.finish()
}

/// The per-session key for chunk tags.
pub fn session_key(secret: &ChunkSecret, nonce: &[u8], upload_id: &str) -> [u8; 32] {
    hkdf32(
        secret.as_bytes(),
        Some(nonce),
        &[CHUNK_KEY_INFO, upload_id.as_bytes()],
    )
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

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_can_read_is_refused_naming_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("uplink-token-mode-{}", std::process::id()));
        std::fs::write(&path, "a-secret").unwrap();
        for (mode, ok) in [
            (0o644, false),
            (0o640, false),
            (0o604, false),
            (0o600, true),
            (0o400, true),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match ClientSecret::read_token_file(&path) {
                Ok(_) => assert!(ok, "mode {mode:o} accepted"),
                Err(e) => {
                    assert!(!ok, "mode {mode:o} refused: {e}");
                    assert!(e.contains(&format!("(mode {mode:o}): chmod 600 it")), "{e}");
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }

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
        let secret = ChunkSecret::from_bytes([7; 32]);
        let key = session_key(&secret, b"nonce-1", "up-1");
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
        let other_key = session_key(&secret, b"nonce-2", "up-1");
        assert!(!verify_chunk_tag(&other_key, &id, &tag));
        assert!(!verify_chunk_tag(&key, &id, &tag[..31]));
    }

    #[test]
    fn session_keys_differ_per_upload() {
        let (s, t) = (
            ChunkSecret::from_bytes([1; 32]),
            ChunkSecret::from_bytes([2; 32]),
        );
        assert_ne!(session_key(&s, b"n", "a"), session_key(&s, b"n", "b"));
        assert_ne!(session_key(&s, b"n", "a"), session_key(&t, b"n", "a"));
    }

    fn secret(text: &str) -> ClientSecret {
        ClientSecret::from_token_text(text).unwrap()
    }

    /// Fixed outputs, computed independently (Python `hmac`/`hashlib`, and
    /// `openssl kdf ... HKDF` for the bearer): the derivation cannot drift without this
    /// test failing, and a change of it would lock every deployed token out.
    #[test]
    fn derivations_match_known_answers() {
        let s = secret("uplink test secret\n");
        assert_eq!(
            bearer_credential(&s),
            "64f0f9ede5d633f792f38eabc18534bf7ec31dee43f9fd007159852d14e059d9"
        );
        let cs = chunk_secret(&s);
        assert_eq!(
            hex::encode(cs.as_bytes()),
            "479d8c720fa40cb010ca7f3b90f160e38a77b6d1e2f57d3ba10e9123dc6c0b7a"
        );
        assert_eq!(
            hex::encode(session_key(&cs, b"nonce-1", "up-1")),
            "cb134f633f68982f913698369d23b6c9e1025389294da7e05403b51b1bc47f93"
        );
        let c = Credentials::derive(&s);
        assert_eq!(c.bearer(), bearer_credential(&s));
        assert_eq!(c.chunk_secret().as_bytes(), cs.as_bytes());
    }

    #[test]
    fn labels_give_independent_outputs() {
        let s = secret("0123456789abcdef");
        let bearer = bearer_credential(&s);
        let cs = chunk_secret(&s);
        assert_eq!(bearer.len(), 64);
        assert!(
            bearer
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // The credential is not the chunk secret, nor does it contain the raw secret.
        assert_ne!(bearer, hex::encode(cs.as_bytes()));
        assert!(!bearer.contains("0123456789abcdef"));
        assert_ne!(bearer_credential(&secret("0123456789abcdeg")), bearer);
    }

    /// What an observer of requests could try with the bearer credential: none of it
    /// gives the chunk secret or a session key the server would accept.
    #[test]
    fn the_bearer_does_not_reveal_the_chunk_secret() {
        let s = secret("a secret that stays home");
        let bearer = bearer_credential(&s);
        let cs = chunk_secret(&s);
        let mut decoded = [0u8; 32];
        hex::decode_to_slice(&bearer, &mut decoded).unwrap();
        let guesses = [
            ChunkSecret::from_bytes(decoded),
            chunk_secret(&secret(&bearer)),
            ChunkSecret::from_bytes(hkdf32(bearer.as_bytes(), None, &[CHUNK_SECRET_INFO])),
        ];
        let real = session_key(&cs, b"nonce", "up");
        for g in &guesses {
            assert_ne!(g.as_bytes(), cs.as_bytes());
            assert_ne!(session_key(g, b"nonce", "up"), real);
        }
        // The old scheme keyed sessions with the sent token itself.
        assert_ne!(
            hkdf32(bearer.as_bytes(), Some(b"nonce"), &[CHUNK_KEY_INFO, b"up"]),
            real
        );
    }

    #[test]
    fn token_text_is_trimmed_and_must_not_be_empty() {
        assert_eq!(
            bearer_credential(&secret("  tok\n")),
            bearer_credential(&secret("tok"))
        );
        assert!(ClientSecret::from_token_text(" \n\t").is_none());
        assert_eq!(format!("{:?}", secret("tok")), "ClientSecret(..)");
        assert_eq!(
            format!("{:?}", Credentials::derive(&secret("tok"))),
            "Credentials(..)"
        );
    }
}
