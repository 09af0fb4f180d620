//! Who may call the server, and as which tenant.
//!
//! Two ways to name the clients:
//! - `--token-file FILE`: one client, `default`, whose objects live right in `objects/`
//!   (the embedded, single-user setup);
//! - `--clients DIR`: one file per client, `DIR/<id>.token`, holding that client's secret
//!   in the token-file format (the daemon on that device uses the same file). Each client
//!   is a tenant: its uploads and its objects (`objects/<id>/`) are invisible to the
//!   others.
//!
//! Rotation: move `<id>.token` to `<id>.previous`, write the new secret to `<id>.token`,
//! send the server SIGHUP. Both secrets are accepted (bearer and chunk tags) until
//! `<id>.previous` is removed and the server reloaded again, so devices switch to the new
//! secret at their own pace without an upload failing.
//!
//! Quotas: `DIR/<id>.quota` (optional) gives one client its own, over the server's
//! `--quota-bytes` / `--quota-sessions`: lines `bytes = N` and `sessions = N`, `#` starts a
//! comment. Reloaded with the secrets at SIGHUP.
//!
//! Secret files must not be readable by group or others (mode 0600): a secret anyone on
//! the host can read is not a secret, and the server refuses to start with one.
//!
//! A presented bearer is looked up by its SHA-256, so finding the client costs one hash
//! and leaks nothing through timing about the credentials that exist.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use uplink_proto::integrity::{ChunkSecret, ClientSecret, Credentials};

use crate::store::Quota;

/// The tenant of `--token-file`.
pub const DEFAULT_TENANT: &str = "default";

/// One client (tenant) and the secrets it may use.
pub struct Client {
    pub id: String,
    /// The current secret first; during a rotation the previous one after it.
    credentials: Vec<Credentials>,
    /// Its own quota, where it has one.
    quota: Option<Quota>,
}

impl Client {
    /// The chunk secrets a chunk tag may be made with, current first.
    pub fn chunk_secrets(&self) -> impl Iterator<Item = &ChunkSecret> {
        self.credentials.iter().map(Credentials::chunk_secret)
    }
}

/// Where the clients come from (kept to reload on SIGHUP).
#[derive(Debug, Clone)]
pub enum ClientSource {
    TokenFile(PathBuf),
    Dir(PathBuf),
}

impl ClientSource {
    /// Whether each tenant has its own objects directory.
    pub fn per_tenant_objects(&self) -> bool {
        matches!(self, ClientSource::Dir(_))
    }
}

/// Every client the server knows, by credential.
pub struct Clients {
    by_bearer: HashMap<[u8; 32], Arc<Client>>,
}

impl Clients {
    pub fn load(source: &ClientSource) -> Result<Clients, String> {
        match source {
            ClientSource::TokenFile(path) => {
                let creds = Credentials::derive(&ClientSecret::read_token_file(path)?);
                Clients::from_clients(vec![Client {
                    id: DEFAULT_TENANT.to_string(),
                    credentials: vec![creds],
                    quota: None,
                }])
            }
            ClientSource::Dir(dir) => Clients::from_clients(read_dir(dir)?),
        }
    }

    fn from_clients(clients: Vec<Client>) -> Result<Clients, String> {
        let mut by_bearer = HashMap::new();
        for client in clients {
            let client = Arc::new(client);
            for creds in &client.credentials {
                if let Some(other) = by_bearer.insert(digest(creds.bearer()), Arc::clone(&client)) {
                    return Err(format!(
                        "clients {:?} and {:?} share a secret: each client needs its own",
                        other.id, client.id
                    ));
                }
            }
        }
        Ok(Clients { by_bearer })
    }

    /// The client whose bearer credential this is.
    pub fn authenticate(&self, presented: &str) -> Option<Arc<Client>> {
        self.by_bearer.get(&digest(presented)).cloned()
    }

    /// The clients that have a quota of their own, by id.
    pub fn quotas(&self) -> HashMap<String, Quota> {
        self.by_bearer
            .values()
            .filter_map(|c| c.quota.map(|q| (c.id.clone(), q)))
            .collect()
    }

    /// How many clients (not counting a previous secret twice).
    pub fn len(&self) -> usize {
        let mut ids: Vec<&str> = self.by_bearer.values().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}

/// `bytes = N` and `sessions = N` lines, either optional; `#` comments and blank lines.
fn parse_quota(text: &str) -> Result<Quota, String> {
    let mut quota = Quota::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = || format!("line {}: expected `bytes = N` or `sessions = N`", n + 1);
        let (key, value) = line.split_once('=').ok_or_else(bad)?;
        let value = value.trim();
        match key.trim() {
            "bytes" => quota.bytes = Some(value.parse().map_err(|_| bad())?),
            "sessions" => quota.sessions = Some(value.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        }
    }
    Ok(quota)
}

fn digest(bearer: &str) -> [u8; 32] {
    Sha256::digest(bearer.trim().as_bytes()).into()
}

/// A client id: what may name a directory and appear in logs.
pub fn is_valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

fn read_dir(dir: &Path) -> Result<Vec<Client>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read clients dir {}: {e}", dir.display()))?;
    let mut clients = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read clients dir {}: {e}", dir.display()))?
            .path();
        let (Some(id), Some("token")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue; // `<id>.previous` and anything else are read with their client
        };
        if !is_valid_client_id(id) {
            return Err(format!(
                "client file {}: a client id is 1-64 letters, digits, '_' or '-'",
                path.display()
            ));
        }
        let mut credentials = vec![Credentials::derive(&ClientSecret::read_token_file(&path)?)];
        let previous = dir.join(format!("{id}.previous"));
        if previous.exists() {
            credentials.push(Credentials::derive(&ClientSecret::read_token_file(
                &previous,
            )?));
        }
        let quota_file = dir.join(format!("{id}.quota"));
        let quota = match std::fs::read_to_string(&quota_file) {
            Ok(text) => Some(
                parse_quota(&text)
                    .map_err(|e| format!("quota file {}: {e}", quota_file.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", quota_file.display())),
        };
        clients.push(Client {
            id: id.to_string(),
            credentials,
            quota,
        });
    }
    if clients.is_empty() {
        return Err(format!(
            "clients dir {} holds no <id>.token file",
            dir.display()
        ));
    }
    Ok(clients)
}

/// Reads a secret file; with `private`, refuses one that group or others may read.
#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn bearer(secret: &str) -> String {
        let s = ClientSecret::from_token_text(secret).unwrap();
        Credentials::derive(&s).bearer().to_string()
    }

    #[test]
    fn each_client_is_found_by_its_own_bearer_only() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "alice.token", "alice-secret\n", 0o600);
        write(d.path(), "bob.token", "bob-secret", 0o600);
        write(d.path(), "README", "not a client", 0o644);
        let c = Clients::load(&ClientSource::Dir(d.path().into())).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.authenticate(&bearer("alice-secret")).unwrap().id, "alice");
        assert_eq!(c.authenticate(&bearer("bob-secret")).unwrap().id, "bob");
        assert!(c.authenticate(&bearer("carol-secret")).is_none());
        assert!(
            c.authenticate("alice-secret").is_none(),
            "the secret is not the bearer"
        );
    }

    #[test]
    fn a_previous_secret_is_accepted_during_rotation() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "alice.token", "new", 0o600);
        write(d.path(), "alice.previous", "old", 0o600);
        let c = Clients::load(&ClientSource::Dir(d.path().into())).unwrap();
        assert_eq!(c.len(), 1);
        let a = c.authenticate(&bearer("old")).unwrap();
        assert_eq!(a.id, "alice");
        assert_eq!(a.chunk_secrets().count(), 2);
    }

    #[test]
    fn a_secret_readable_by_others_is_refused() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "alice.token", "s", 0o644);
        let e = Clients::load(&ClientSource::Dir(d.path().into()))
            .err()
            .unwrap();
        assert!(e.contains("readable by others (mode 644)"), "{e}");
    }

    #[test]
    fn two_clients_with_one_secret_are_refused() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "alice.token", "same", 0o600);
        write(d.path(), "bob.token", "same", 0o600);
        let e = Clients::load(&ClientSource::Dir(d.path().into()))
            .err()
            .unwrap();
        assert!(e.contains("share a secret"), "{e}");
    }

    #[test]
    fn bad_ids_and_empty_dirs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            Clients::load(&ClientSource::Dir(d.path().into()))
                .err()
                .unwrap()
                .contains("no <id>.token")
        );
        write(d.path(), "a.b.token", "s", 0o600);
        assert!(
            Clients::load(&ClientSource::Dir(d.path().into()))
                .err()
                .unwrap()
                .contains("client id")
        );
    }

    #[test]
    fn a_client_quota_file_gives_that_client_its_own_quota() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "alice.token", "a-secret", 0o600);
        write(d.path(), "bob.token", "b-secret", 0o600);
        write(
            d.path(),
            "bob.quota",
            "# more\nbytes = 5000\n\nsessions=3 # at once\n",
            0o644,
        );
        let clients = Clients::load(&ClientSource::Dir(d.path().into())).unwrap();
        let quotas = clients.quotas();
        assert_eq!(quotas.len(), 1, "alice has none of her own");
        let bob = quotas["bob"];
        assert_eq!((bob.bytes, bob.sessions), (Some(5000), Some(3)));
    }

    #[test]
    fn a_malformed_quota_file_is_refused_with_its_line() {
        for (text, line) in [
            ("bytes = lots", 1),
            ("sessions = 2\nfiles = 9", 2),
            ("bytes 5", 1),
        ] {
            let e = parse_quota(text).unwrap_err();
            assert!(e.contains(&format!("line {line}:")), "{text:?}: {e}");
        }
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "alice.token", "a-secret", 0o600);
        write(d.path(), "alice.quota", "bytes = -1", 0o600);
        let e = Clients::load(&ClientSource::Dir(d.path().into()))
            .err()
            .unwrap();
        assert!(e.contains("alice.quota") && e.contains("line 1"), "{e}");
    }
}
