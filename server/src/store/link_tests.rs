//! Chunks that come as links of the file's hash (`X-Chunk-SHA256-From`): verified from the
//! state they name, kept across a restart, and the whole file's SHA-256 right whatever
//! state a client names.
use super::*;
use sha2::{Digest, Sha256};
use uplink_proto::integrity::{ChunkDigest, ChunkHasher};
use uplink_proto::wire::CreateUpload;

const T: &str = crate::clients::DEFAULT_TENANT;

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 13 % 251) as u8).collect()
}

/// The state of the file `data` at byte `at`.
fn state_at(data: &[u8], at: usize) -> FileState {
    let mut s = FileState::start();
    s.update(&data[..at]);
    s
}

/// The digest of `bytes` as a link from `from`.
fn link_digest(from: &FileState, bytes: &[u8]) -> ChunkDigest {
    let mut h = ChunkHasher::from_state(*from);
    h.update(bytes);
    h.finish()
}

fn session(st: &Store, size: u64) -> Arc<Session> {
    let req = CreateUpload {
        size,
        deferred_length: false,
        name: "linked.bin".into(),
        metadata: Default::default(),
        overwrite: false,
    };
    let c = st.create(T, None, &req).unwrap();
    assert!(c.sha256_chain, "the data dir offers chained digests");
    st.get(T, &c.upload_id).unwrap()
}

/// Stores `bytes` at `offset` as a link from `from` with digest `d`.
fn put_link(
    s: &Arc<Session>,
    offset: u64,
    bytes: &[u8],
    d: &ChunkDigest,
    from: &FileState,
) -> Result<(), ApiError> {
    match s.begin_chunk(offset, bytes.len() as u64, &d.sha256, false)? {
        BeginChunk::Reserved(r) => {
            let parts = [bytes::Bytes::copy_from_slice(bytes)];
            s.store_chunk(r, &parts, d, Some(from))?;
            s.advance_hash(Some((offset, &parts, *d)));
            Ok(())
        }
        BeginChunk::Duplicate => Ok(()),
    }
}

fn complete(st: &Store, s: &Session, chunks: &[(u64, u64, [u8; 32])]) -> UploadCompleted {
    let root = uplink_proto::merkle::root_of(chunks.iter().map(|(o, l, d)| (*o, *l, d))).unwrap();
    s.complete(st, &hex::encode(root), None).unwrap()
}

#[test]
fn linked_chunks_verify_from_their_state_and_complete_with_the_file_sha256() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Store::open(tmp.path(), false).unwrap();
    let file = data(100_003);
    let s = session(&st, file.len() as u64);
    let cuts = [0usize, 33_333, 66_667, 100_003];
    let mut chunks = Vec::new();
    // Out of order: the last chunk first, so the hash must wait and then jump twice.
    for i in [2, 0, 1] {
        let (a, b) = (cuts[i], cuts[i + 1]);
        let from = state_at(&file, a);
        let d = link_digest(&from, &file[a..b]);
        put_link(&s, a as u64, &file[a..b], &d, &from).unwrap();
        chunks.push((a as u64, (b - a) as u64, d.sha256));
    }
    chunks.sort();
    // The record carries the state it started from, for a resuming client.
    let page = s.chunk_page(&Default::default());
    assert_eq!(
        page.chunks[1].sha256_from.as_deref(),
        Some(state_at(&file, 33_333).encode().as_str())
    );
    let done = complete(&st, &s, &chunks);
    assert_eq!(done.sha256, hex::encode(Sha256::digest(&file)));
    assert_eq!(
        std::fs::read(tmp.path().join("objects/linked.bin")).unwrap(),
        file
    );
}

#[test]
fn a_link_whose_digest_does_not_match_its_state_and_bytes_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Store::open(tmp.path(), false).unwrap();
    let file = data(5000);
    let s = session(&st, file.len() as u64);
    let from = FileState::start();
    let d = link_digest(&from, &file);
    // The same bytes from another state (one at byte 0, as the header is read for this
    // offset, but not the start), or other bytes from this one.
    let other = FileState::parse(&state_at(&file, 64).encode(), 0).unwrap();
    let mut flipped = file.clone();
    flipped[4000] ^= 1;
    let crc_ok = ChunkDigest {
        crc32c: crc32c::crc32c(&flipped),
        ..d
    };
    for (bytes, digest, from) in [(&file, d, &other), (&flipped, crc_ok, &from)] {
        let err = put_link(&s, 0, bytes, &digest, from).unwrap_err();
        assert_eq!(err.code, code::SHA256_MISMATCH, "{err:?}");
    }
    assert_eq!(s.state().chunk_count, 0);
}

/// A client may name any state it likes; the hash jumps only over a link from the state
/// it holds itself, so the answer is the file's SHA-256 all the same.
#[test]
fn a_link_from_a_wrong_state_is_taken_but_the_file_hash_is_still_right() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Store::open(tmp.path(), false).unwrap();
    let file = data(9000);
    let s = session(&st, file.len() as u64);
    let true_from = FileState::start();
    let d0 = link_digest(&true_from, &file[..4000]);
    put_link(&s, 0, &file[..4000], &d0, &true_from).unwrap();
    let mut wrong = FileState::start();
    wrong.update(&[9u8; 4000]);
    let d1 = link_digest(&wrong, &file[4000..]);
    put_link(&s, 4000, &file[4000..], &d1, &wrong).unwrap();
    let done = complete(&st, &s, &[(0, 4000, d0.sha256), (4000, 5000, d1.sha256)]);
    assert_eq!(done.sha256, hex::encode(Sha256::digest(&file)));
}

#[test]
fn links_survive_a_restart_and_the_hash_still_jumps_them() {
    let tmp = tempfile::tempdir().unwrap();
    let file = data(20_000);
    let (id, d0) = {
        let st = Store::open(tmp.path(), false).unwrap();
        let s = session(&st, file.len() as u64);
        let from = FileState::start();
        let d0 = link_digest(&from, &file[..10_000]);
        // Stored, but the running hash never advanced before the "crash".
        match s.begin_chunk(0, 10_000, &d0.sha256, false).unwrap() {
            BeginChunk::Reserved(r) => s
                .store_chunk(
                    r,
                    &[bytes::Bytes::copy_from_slice(&file[..10_000])],
                    &d0,
                    Some(&from),
                )
                .unwrap(),
            BeginChunk::Duplicate => unreachable!(),
        }
        (s.id.clone(), d0)
    };
    let st = Store::open(tmp.path(), false).unwrap();
    let s = st.get(T, &id).unwrap();
    let page = s.chunk_page(&Default::default());
    assert_eq!(
        page.chunks[0].sha256_from.as_deref(),
        Some(FileState::start().encode().as_str())
    );
    assert!(s.state().sha256_chain);
    let from = state_at(&file, 10_000);
    let d1 = link_digest(&from, &file[10_000..]);
    put_link(&s, 10_000, &file[10_000..], &d1, &from).unwrap();
    let done = complete(
        &st,
        &s,
        &[(0, 10_000, d0.sha256), (10_000, 10_000, d1.sha256)],
    );
    assert_eq!(done.sha256, hex::encode(Sha256::digest(&file)));
}
