//! The chunk records of an upload in the object store: what a chunk object's name says
//! ([`Remote::chunk_key`](super::remote::Remote::chunk_key)), and which of the records,
//! when nodes that did not see each other's chunks stored overlapping ones, make up the
//! file.

use std::collections::BTreeMap;

use uplink_proto::chain::FileState;

use super::Link;

/// offset -> (length, SHA-256).
pub(super) type Chunks = BTreeMap<u64, (u64, [u8; 32])>;
/// offset -> the link of the chunk chosen there, if it came as one.
pub(super) type Links = BTreeMap<u64, Link>;
/// offset -> every (length, digest, last modified, link) stored there, newest first.
pub(super) type Records = BTreeMap<u64, Vec<(u64, [u8; 32], String, Option<Link>)>>;

/// The newest record at each offset.
pub(super) fn newest(records: &Records) -> Chunks {
    records
        .iter()
        .filter_map(|(o, at)| at.first().map(|(l, s, _, _)| (*o, (*l, *s))))
        .collect()
}

/// The links of the records `chunks` chose.
pub(super) fn links_of(records: &Records, chunks: &Chunks) -> Links {
    chunks
        .iter()
        .filter_map(|(o, (l, s))| {
            let at = records.get(o)?;
            let link = at.iter().find(|r| r.0 == *l && r.1 == *s)?.3?;
            Some((*o, link))
        })
        .collect()
}

/// Chunks that tile `[0, size)` end to end, chosen among `records` (which may overlap):
/// where two ways reach the same byte, the newer record wins, since the client that
/// completes holds the acknowledgements of its latest requests. `None` if no tiling exists.
pub(super) fn tiling(records: &Records, size: u64) -> Option<Chunks> {
    // end -> (start, length, sha, last modified) of the record that reaches it.
    let mut reached: BTreeMap<u64, (u64, u64, [u8; 32], &str)> = BTreeMap::new();
    for (&offset, at) in records {
        if offset != 0 && !reached.contains_key(&offset) {
            continue;
        }
        for (length, sha, modified, _) in at {
            let Some(end) = offset.checked_add(*length).filter(|e| *e <= size) else {
                continue;
            };
            let newer = reached.get(&end).is_none_or(|r| r.3 < modified.as_str());
            if newer {
                reached.insert(end, (offset, *length, *sha, modified));
            }
        }
    }
    let mut out = Chunks::new();
    let mut end = size;
    while end > 0 {
        let (start, length, sha, _) = *reached.get(&end)?;
        out.insert(start, (length, sha));
        end = start;
    }
    Some(out)
}

/// A chunk object's name (`Remote::chunk_key`) -> its parts.
pub(super) fn parse_chunk_name(name: &str) -> Option<(u64, u64, [u8; 32], Option<Link>)> {
    let mut it = name.split('.');
    let offset: u64 = it.next()?.parse().ok()?;
    let length: u64 = it.next()?.parse().ok()?;
    let sha = uplink_proto::parse_hex32(it.next()?)?;
    let link = match (it.next(), it.next(), it.next()) {
        (None, _, _) => None,
        (Some(from), Some(to), None) => Some(Link {
            from: FileState::parse(from, offset)?,
            to: FileState::parse(to, offset.checked_add(length)?)?,
        }),
        _ => return None,
    };
    Some((offset, length, sha, link))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(len: u64, sha: u8, modified: &str) -> (u64, [u8; 32], String, Option<Link>) {
        (len, [sha; 32], modified.to_string(), None)
    }

    #[test]
    fn overlapping_records_tile_the_file_by_the_newest_way() {
        // An old 0+16 from one node; a restarted client's 0+8 and 8+8 through another.
        let mut records = Records::new();
        records.insert(
            0,
            vec![
                rec(8, 2, "2026-12-03T10:00:05Z"),
                rec(16, 1, "2026-12-03T10:00:01Z"),
            ],
        );
        records.insert(8, vec![rec(8, 3, "2026-12-03T10:00:06Z")]);
        records.insert(16, vec![rec(4, 4, "2026-12-03T10:00:07Z")]);
        let t = tiling(&records, 20).expect("a tiling");
        let chosen: Vec<(u64, u64, u8)> = t.iter().map(|(o, (l, s))| (*o, *l, s[0])).collect();
        assert_eq!(chosen, [(0, 8, 2), (8, 8, 3), (16, 4, 4)]);
        // The old record newer instead: it wins.
        records.insert(
            0,
            vec![
                rec(16, 1, "2026-12-03T10:00:09Z"),
                rec(8, 2, "2026-12-03T10:00:05Z"),
            ],
        );
        let t = tiling(&records, 20).expect("a tiling");
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), [0, 16]);
        // A gap: none.
        records.remove(&16);
        assert!(tiling(&records, 20).is_none());
        assert!(tiling(&Records::new(), 1).is_none());
    }

    #[test]
    fn chunk_names_round_trip() {
        let sha = [7u8; 32];
        let name = format!("{:020}.{}.{}", 4096u64, 1024u64, hex::encode(sha));
        assert_eq!(parse_chunk_name(&name), Some((4096, 1024, sha, None)));
        assert_eq!(parse_chunk_name("12.3"), None);
        assert_eq!(parse_chunk_name(&format!("{name}.x")), None);
        assert_eq!(parse_chunk_name("x.1.00"), None);
        // A link names the states at both ends; states of other offsets are refused.
        let (mut from, mut to) = (FileState::start(), FileState::start());
        from.update(&[1; 4096]);
        to.update(&[1; 5096]);
        let link = Link { from, to };
        let name = format!("{:020}.{}.{}", 4096u64, 1000u64, hex::encode(sha));
        let linked = format!("{name}.{}.{}", from.encode(), to.encode());
        assert_eq!(
            parse_chunk_name(&linked),
            Some((4096, 1000, sha, Some(link)))
        );
        let swapped = format!("{name}.{}.{}", to.encode(), from.encode());
        assert_eq!(parse_chunk_name(&swapped), None);
        assert_eq!(parse_chunk_name(&format!("{linked}.x")), None);
    }
}
