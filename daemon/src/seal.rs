//! AES-256-GCM sealing of checkpoints at rest, with a key kept 0600 in the state dir.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

pub struct Sealer {
    cipher: Aes256Gcm,
}

impl Sealer {
    /// Loads `path`, or creates it with a fresh random key.
    pub fn load_or_create(path: &Path) -> std::io::Result<Sealer> {
        let key: Zeroizing<Vec<u8>> = match std::fs::read(path) {
            Ok(k) => {
                uplink_proto::integrity::check_private_file(path, "checkpoint key")
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
                Zeroizing::new(k)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = Zeroizing::new(vec![0u8; 32]);
                rand::rng().fill_bytes(&mut k);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(&k)?;
                f.sync_all()?;
                k
            }
            Err(e) => return Err(e),
        };
        let key = Key::<Aes256Gcm>::try_from(&key[..]).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key", path.display()),
            )
        })?;
        Ok(Sealer {
            cipher: Aes256Gcm::new(&key),
        })
    }

    /// nonce || ciphertext+tag, with `aad` bound in.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = aes_gcm::aead::Payload {
            msg: plaintext,
            aad,
        };
        // Encryption only fails for messages beyond GCM's 64 GiB limit.
        let ct = self
            .cipher
            .encrypt(&Nonce::from(nonce), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// `None` when the blob was not sealed by this key for this `aad` (or was altered).
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.cipher
            .decrypt(&Nonce::from(nonce), aes_gcm::aead::Payload { msg: ct, aad })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blobs_open_only_with_the_same_key_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::load_or_create(&dir.path().join("k")).unwrap();
        let blob = s.seal(b"checkpoint", b"job-1");
        assert_eq!(s.open(&blob, b"job-1").as_deref(), Some(&b"checkpoint"[..]));
        assert_eq!(s.open(&blob, b"job-2"), None);
        let mut tampered = blob.clone();
        tampered[20] ^= 1;
        assert_eq!(s.open(&tampered, b"job-1"), None);
        let again = Sealer::load_or_create(&dir.path().join("k")).unwrap();
        assert!(again.open(&blob, b"job-1").is_some());
        let other = Sealer::load_or_create(&dir.path().join("k2")).unwrap();
        assert_eq!(other.open(&blob, b"job-1"), None);
    }
}
