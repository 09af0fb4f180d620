//! The chunk log of a session: one JSON line per verified, durable chunk, appended after
//! the chunk's bytes are synced. On load, the intact prefix is the truth; a torn last line
//! (a crash mid-append) is cut off.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};
use uplink_proto::chain::FileState;

use crate::store::Link;

/// offset -> (length, sha256) of verified chunks.
pub type ChunkMap = BTreeMap<u64, (u64, [u8; 32])>;
/// offset -> the file-hash states around the chunks that came as links.
pub type LinkMap = BTreeMap<u64, Link>;

/// What the log holds: the chunks, those of them that came as links, and the length of
/// its intact prefix.
#[derive(Default)]
pub struct Logged {
    pub chunks: ChunkMap,
    pub links: LinkMap,
    pub good_len: u64,
}

#[derive(Serialize, Deserialize)]
struct LogLine {
    o: u64,
    l: u64,
    s: String,
    /// A link's states, from and to (see [`Link`]).
    #[serde(default)]
    f: Option<String>,
    #[serde(default)]
    t: Option<String>,
}

/// The log line (without newline) recording one chunk.
pub fn line(offset: u64, length: u64, sha256: &[u8; 32], link: Option<&Link>) -> String {
    let sha = hex::encode(sha256);
    match link {
        None => format!(r#"{{"o":{offset},"l":{length},"s":"{sha}"}}"#),
        Some(Link { from, to }) => format!(
            r#"{{"o":{offset},"l":{length},"s":"{sha}","f":"{}","t":"{}"}}"#,
            from.encode(),
            to.encode()
        ),
    }
}

/// The link a line names, if its states are both there and stand at the chunk's ends.
fn link_of(rec: &LogLine) -> Option<Link> {
    let from = FileState::parse(rec.f.as_deref()?, rec.o)?;
    let to = FileState::parse(rec.t.as_deref()?, rec.o.checked_add(rec.l)?)?;
    Some(Link { from, to })
}

/// Reads the log, up to its first line that is torn or not understood.
pub fn read(path: &Path) -> std::io::Result<Logged> {
    let mut logged = Logged::default();
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(logged),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(f);
    let mut text = String::new();
    loop {
        text.clear();
        let n = reader.read_line(&mut text)?;
        if n == 0 || !text.ends_with('\n') {
            break;
        }
        let Ok(rec) = serde_json::from_str::<LogLine>(text.trim_end()) else {
            break;
        };
        let Some(sha) = uplink_proto::parse_hex32(&rec.s) else {
            break;
        };
        let link = match (&rec.f, link_of(&rec)) {
            (Some(_), None) => break,
            (_, link) => link,
        };
        // The last line for an offset wins: a plain chunk replacing a link drops it.
        logged.chunks.insert(rec.o, (rec.l, sha));
        match link {
            Some(link) => logged.links.insert(rec.o, link),
            None => logged.links.remove(&rec.o),
        };
        logged.good_len += n as u64;
    }
    Ok(logged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_line_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let sha = [7u8; 32];
        std::fs::write(&p, format!("{}\n{}", line(0, 4, &sha, None), "{\"o\":4")).unwrap();
        let logged = read(&p).unwrap();
        assert_eq!(logged.chunks.get(&0), Some(&(4, sha)));
        assert!(logged.links.is_empty());
        assert_eq!(
            logged.good_len as usize,
            line(0, 4, &sha, None).len() + 1,
            "the torn tail is not counted"
        );
    }

    #[test]
    fn a_link_reads_back_and_a_plain_chunk_after_it_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut to = FileState::start();
        to.update(b"hello");
        let link = Link {
            from: FileState::start(),
            to,
        };
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let text = format!("{}\n", line(0, 5, &a, Some(&link)));
        std::fs::write(&p, &text).unwrap();
        let logged = read(&p).unwrap();
        assert_eq!(logged.links.get(&0), Some(&link));
        std::fs::write(&p, format!("{text}{}\n", line(0, 5, &b, None))).unwrap();
        let logged = read(&p).unwrap();
        assert_eq!(logged.chunks.get(&0), Some(&(5, b)));
        assert!(logged.links.is_empty());
        // States that do not stand at the chunk's ends end the intact prefix there.
        let wrong = line(1, 5, &a, Some(&link));
        std::fs::write(&p, format!("{text}{wrong}\n")).unwrap();
        assert_eq!(read(&p).unwrap().good_len as usize, text.len());
    }
}
