//! HTTP/3 discovery: the `Alt-Svc` header (RFC 7838) and a small cache of what it said,
//! kept in the state dir so a restarted daemon tries HTTP/3 at once.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What an `Alt-Svc` header offers for HTTP/3 on the same host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H3Offer {
    pub port: u16,
    pub max_age: Duration,
}

/// Finds an `h3` alternative on the same host in an `Alt-Svc` value, e.g.
/// `h3=":8443"; ma=3600, h2=":443"`. `clear` or no `h3` entry gives `None`.
pub fn parse(value: &str) -> Option<H3Offer> {
    for entry in value.split(',') {
        let mut params = entry.split(';').map(str::trim);
        let Some(first) = params.next() else { continue };
        let Some(authority) = first.strip_prefix("h3=") else {
            continue;
        };
        let authority = authority.trim_matches('"');
        // Same host only: ":port".
        let Some(port) = authority
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&p| p != 0)
        else {
            continue;
        };
        let mut max_age = Duration::from_secs(86_400);
        for p in params {
            if let Some(ma) = p.strip_prefix("ma=").and_then(|v| v.parse::<u64>().ok()) {
                max_age = Duration::from_secs(ma);
            }
        }
        return Some(H3Offer { port, max_age });
    }
    None
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    authority: String,
    port: u16,
    expires_unix: u64,
}

/// The cached offer for one endpoint.
pub struct AltSvcCache {
    path: Option<PathBuf>,
    authority: String,
    entry: std::sync::Mutex<Option<Entry>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AltSvcCache {
    /// Loads the cache file (if any) for `authority`.
    pub fn load(path: Option<PathBuf>, authority: &str) -> AltSvcCache {
        let entry = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
            .filter(|e| e.authority == authority && e.expires_unix > now_unix());
        AltSvcCache {
            path,
            authority: authority.to_string(),
            entry: std::sync::Mutex::new(entry),
        }
    }

    /// The HTTP/3 port, while the offer is fresh.
    pub fn port(&self) -> Option<u16> {
        let e = self.entry.lock().unwrap_or_else(|p| p.into_inner());
        e.as_ref()
            .filter(|e| e.expires_unix > now_unix())
            .map(|e| e.port)
    }

    /// Records an offer; returns true when it is new (worth connecting for).
    pub fn learn(&self, offer: H3Offer) -> bool {
        let fresh = Entry {
            authority: self.authority.clone(),
            port: offer.port,
            // `ma` is the server's number: any u64 must not overflow the clock.
            expires_unix: now_unix().saturating_add(offer.max_age.as_secs()),
        };
        let mut e = self.entry.lock().unwrap_or_else(|p| p.into_inner());
        // An expired entry counts as none: the offer is new even on the same port.
        let live = e.as_ref().filter(|old| old.expires_unix > now_unix());
        let is_new = live.is_none_or(|old| old.port != fresh.port);
        // Re-write only when it changes noticeably (every response carries the header).
        let stale = live.is_none_or(|old| fresh.expires_unix > old.expires_unix.saturating_add(60));
        if is_new || stale {
            if let Some(p) = &self.path
                && let Ok(json) = serde_json::to_vec(&fresh)
            {
                let tmp = p.with_extension("tmp");
                if std::fs::write(&tmp, json)
                    .and_then(|()| std::fs::rename(&tmp, p))
                    .is_err()
                {
                    tracing::debug!(path = %p.display(), "cannot save the Alt-Svc cache");
                }
            }
            *e = Some(fresh);
        }
        is_new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_h3_entry_and_its_max_age() {
        assert_eq!(
            parse(r#"h3=":8443"; ma=3600"#),
            Some(H3Offer {
                port: 8443,
                max_age: Duration::from_secs(3600)
            })
        );
        assert_eq!(
            parse(r#"h2=":443", h3=":4433""#),
            Some(H3Offer {
                port: 4433,
                max_age: Duration::from_secs(86400)
            })
        );
    }

    #[test]
    fn other_hosts_drafts_and_clear_are_ignored() {
        assert_eq!(parse("clear"), None);
        assert_eq!(parse(r#"h3-29=":443""#), None);
        assert_eq!(parse(r#"h3="other.example:443""#), None);
        assert_eq!(parse(r#"h3=":0""#), None, "port 0 is no port");
    }

    #[test]
    fn a_max_age_at_the_end_of_time_is_kept_not_overflowed() {
        let c = AltSvcCache::load(None, "a:1");
        let forever = parse(r#"h3=":8443"; ma=18446744073709551615"#).unwrap();
        assert!(c.learn(forever));
        assert!(!c.learn(forever), "the same offer again is not new");
        assert_eq!(c.port(), Some(8443));
    }

    #[test]
    fn the_cache_survives_a_restart_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("altsvc.json");
        let c = AltSvcCache::load(Some(path.clone()), "a:1");
        assert_eq!(c.port(), None);
        assert!(c.learn(H3Offer {
            port: 9,
            max_age: Duration::from_secs(100)
        }));
        assert!(!c.learn(H3Offer {
            port: 9,
            max_age: Duration::from_secs(100)
        }));
        assert_eq!(AltSvcCache::load(Some(path.clone()), "a:1").port(), Some(9));
        assert_eq!(
            AltSvcCache::load(Some(path), "b:1").port(),
            None,
            "per endpoint"
        );
    }
}
