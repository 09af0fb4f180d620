//! The chunk log of a session: one JSON line per verified, durable chunk, appended after
//! the chunk's bytes are synced. On load, the intact prefix is the truth; a torn last line
//! (a crash mid-append) is cut off.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// offset -> (length, sha256) of verified chunks.
pub type ChunkMap = BTreeMap<u64, (u64, [u8; 32])>;

#[derive(Serialize, Deserialize)]
struct LogLine {
    o: u64,
    l: u64,
    s: String,
}

/// The log line (without newline) recording one chunk.
pub fn line(offset: u64, length: u64, sha256: &[u8; 32]) -> String {
    format!(
        r#"{{"o":{offset},"l":{length},"s":"{}"}}"#,
        hex::encode(sha256)
    )
}

/// Reads the log; returns the chunks and the length of its intact prefix.
pub fn read(path: &Path) -> std::io::Result<(ChunkMap, u64)> {
    let mut chunks = BTreeMap::new();
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((chunks, 0)),
        Err(e) => return Err(e),
    };
    let mut good = 0u64;
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
        chunks.insert(rec.o, (rec.l, sha));
        good += n as u64;
    }
    Ok((chunks, good))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_line_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let sha = [7u8; 32];
        std::fs::write(&p, format!("{}\n{}", line(0, 4, &sha), "{\"o\":4")).unwrap();
        let (chunks, good) = read(&p).unwrap();
        assert_eq!(chunks.get(&0), Some(&(4, sha)));
        assert_eq!(
            good as usize,
            line(0, 4, &sha).len() + 1,
            "the torn tail is not counted"
        );
    }
}
