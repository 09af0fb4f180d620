//! Unit tests of the session store (real files in a temp dir).
use super::*;
use std::io::Write;
use uplink_proto::integrity;
use uplink_proto::wire::{self, CreateUpload};

/// The tenant of these tests.
const T: &str = crate::clients::DEFAULT_TENANT;

fn store(dir: &Path) -> Store {
    Store::open(dir, false).unwrap()
}

fn put(s: &Arc<Session>, offset: u64, data: &[u8]) -> Result<bool, ApiError> {
    put_as(s, offset, data, false)
}

/// A chunk PUT; `replace`: declared as replacing the chunk held there.
fn put_as(s: &Arc<Session>, offset: u64, data: &[u8], replace: bool) -> Result<bool, ApiError> {
    let d = integrity::digest(data);
    match s.begin_chunk(offset, data.len() as u64, &d.sha256, replace)? {
        BeginChunk::Duplicate => Ok(true),
        BeginChunk::Reserved(r) => s
            .store_chunk(r, &[bytes::Bytes::copy_from_slice(data)], &d, None)
            .map(|()| false),
    }
}

fn create(st: &Store, size: u64) -> Arc<Session> {
    create_named(st, "k", size, false, "f.bin")
}

/// A session for `name`, its length `size` or (`deferred`) not known yet.
fn create_named(st: &Store, key: &str, size: u64, deferred: bool, name: &str) -> Arc<Session> {
    let c = st
        .create(
            T,
            Some(key),
            &CreateUpload {
                deferred_length: deferred,
                size,
                name: name.into(),
                metadata: Default::default(),
                overwrite: false,
            },
        )
        .unwrap();
    st.get(T, &c.upload_id).unwrap()
}

#[test]
fn chunks_survive_a_restart_and_assemble_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let st = store(tmp);
    let s = create(&st, 10);
    assert!(!put(&s, 4, b"456789").unwrap());
    let id = s.id.clone();
    drop((s, st));
    let st = store(tmp);
    let s = st.get(T, &id).unwrap();
    assert_eq!(s.state().received_bytes, 6);
    assert!(!put(&s, 0, b"0123").unwrap());
    let root = uplink_proto::merkle::root_of([
        (0, 4, &integrity::sha256(b"0123")),
        (4, 6, &integrity::sha256(b"456789")),
    ])
    .unwrap();
    let done = s.complete(&st, &hex::encode(root), None).unwrap();
    assert_eq!(done.sha256, hex::encode(integrity::sha256(b"0123456789")));
    assert_eq!(
        std::fs::read(st.object_path(T, "f.bin")).unwrap(),
        b"0123456789"
    );
    // Idempotent.
    assert_eq!(s.complete(&st, &hex::encode(root), None).unwrap(), done);
}

#[test]
fn replay_is_a_no_op_and_a_different_chunk_is_a_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let st = store(tmp);
    let s = create(&st, 8);
    assert!(!put(&s, 0, b"abcd").unwrap());
    assert!(put(&s, 0, b"abcd").unwrap());
    assert_eq!(put(&s, 0, b"abcX").unwrap_err().code, code::CHUNK_CONFLICT);
    assert_eq!(put(&s, 2, b"cd").unwrap_err().code, code::CHUNK_CONFLICT);
    assert_eq!(put(&s, 6, b"abc").unwrap_err().code, code::OUT_OF_RANGE);
    let state = s.state();
    assert_eq!((state.chunk_puts, state.duplicate_puts), (4, 1));
}

#[test]
fn a_bad_digest_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let st = store(tmp);
    let s = create(&st, 4);
    let good = integrity::digest(b"abcd");
    let BeginChunk::Reserved(r) = s.begin_chunk(0, 4, &good.sha256, false).unwrap() else {
        panic!()
    };
    let err = s
        .store_chunk(r, &[bytes::Bytes::from_static(b"abce")], &good, None)
        .unwrap_err();
    assert_eq!(err.code, code::CRC32C_MISMATCH);
    assert!(s.state().chunk_count == 0);
    // The reservation was released: the right bytes go through.
    assert!(!put(&s, 0, b"abcd").unwrap());
}

#[test]
fn a_torn_log_line_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let st = store(tmp);
    let s = create(&st, 8);
    put(&s, 0, b"abcd").unwrap();
    let id = s.id.clone();
    drop((s, st));
    let log = tmp.join("sessions").join(&id).join(LOG);
    OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"{\"o\":4,\"l\"")
        .unwrap();
    let st = store(tmp);
    let s = st.get(T, &id).unwrap();
    assert_eq!(s.state().chunk_count, 1);
    put(&s, 4, b"efgh").unwrap();
    drop((s, st));
    let st = store(tmp);
    assert_eq!(st.get(T, &id).unwrap().state().chunk_count, 2);
}

#[test]
fn idempotency_key_finds_the_same_session() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let st = store(tmp);
    let req = CreateUpload {
        deferred_length: false,
        size: 5,
        name: "a".into(),
        metadata: Default::default(),
        overwrite: false,
    };
    let a = st.create(T, Some("job-1"), &req).unwrap();
    assert_eq!(st.create(T, Some("job-1"), &req).unwrap(), a);
    let other = CreateUpload {
        deferred_length: false,
        size: 6,
        ..req.clone()
    };
    assert_eq!(
        st.create(T, Some("job-1"), &other).unwrap_err().code,
        code::IDEMPOTENCY_MISMATCH
    );
    assert_ne!(st.create(T, None, &req).unwrap().upload_id, a.upload_id);
}

#[test]
fn the_same_chunk_may_be_received_twice_at_once_but_other_bytes_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create(&st, 8);
    let d = integrity::digest(b"abcd");
    let BeginChunk::Reserved(first) = s.begin_chunk(0, 4, &d.sha256, false).unwrap() else {
        panic!()
    };
    // A retry of the same bytes (the first attempt's client gave up on it) proceeds.
    let BeginChunk::Reserved(retry) = s.begin_chunk(0, 4, &d.sha256, false).unwrap() else {
        panic!()
    };
    // Other bytes for that range must wait.
    let other = integrity::digest(b"abcX");
    assert_eq!(
        s.begin_chunk(0, 4, &other.sha256, false)
            .err()
            .unwrap()
            .code,
        code::CHUNK_IN_PROGRESS
    );
    s.store_chunk(retry, &[bytes::Bytes::from_static(b"abcd")], &d, None)
        .unwrap();
    s.store_chunk(first, &[bytes::Bytes::from_static(b"abcd")], &d, None)
        .unwrap();
    let state = s.state();
    assert_eq!((state.chunk_count, state.received_bytes), (1, 4));
    // Both reservations are gone.
    assert!(put(&s, 4, b"efgh").is_ok());
}

fn root_of(chunks: &[(u64, &[u8])]) -> String {
    let digests: Vec<_> = chunks
        .iter()
        .map(|(o, d)| (*o, d.len() as u64, integrity::sha256(d)))
        .collect();
    hex::encode(uplink_proto::merkle::root_of(digests.iter().map(|(o, l, s)| (*o, *l, s))).unwrap())
}

/// The open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_completed_session_holds_no_files_and_is_swept_after_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create(&st, 10);
    assert_eq!(st.open_sessions(), 1, "a fresh session has its files open");
    put(&s, 0, b"0123456789").unwrap();
    s.complete(&st, &root_of(&[(0, b"0123456789")]), None)
        .unwrap();
    assert_eq!(st.open_sessions(), 0, "complete closes the files");
    let done_at = lock(&s.meta)
        .completed_at
        .expect("completion time recorded");
    let id = s.id.clone();
    drop(s);

    // Within the retention a repeat of create (same key) finds the completed session.
    assert_eq!(st.sweep(done_at + 59, 60), 0);
    assert!(st.get(T, &id).is_ok());
    assert_eq!(st.sweep(done_at + 60, 60), 1);
    assert!(st.get(T, &id).is_err(), "swept sessions are gone");
    assert!(!tmp.path().join("sessions").join(&id).exists());
    assert_eq!(
        std::fs::read(st.object_path(T, "f.bin")).unwrap(),
        b"0123456789",
        "the object stays"
    );
}

#[test]
fn an_expired_session_is_swept_while_the_server_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create(&st, 10);
    put(&s, 0, b"01234").unwrap();
    let expires = lock(&s.meta).expires_at;
    let id = s.id.clone();
    drop(s);
    assert_eq!(st.sweep(expires - 1, 60), 0);
    assert_eq!(st.sweep(expires, 60), 1);
    assert_eq!(st.session_count(), 0);
    assert_eq!(st.open_sessions(), 0);
    assert!(!tmp.path().join("sessions").join(&id).exists());
}

#[test]
fn idle_files_close_and_reopen_when_the_upload_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create(&st, 10);
    put(&s, 0, b"0123").unwrap();
    let before = open_fds();
    // A sweep soon after the last request leaves the files open.
    st.sweep(now_secs(), 60);
    assert_eq!(st.open_sessions(), 1);
    st.sweep(now_secs() + IDLE_CLOSE_SECS + 1, 60);
    assert_eq!(st.open_sessions(), 0, "idle files are closed");
    assert!(open_fds() < before, "the descriptors were released");
    // The upload goes on where it was; the running hash starts over from the file.
    put(&s, 4, b"456789").unwrap();
    assert_eq!(st.open_sessions(), 1);
    let done = s
        .complete(&st, &root_of(&[(0, b"0123"), (4, b"456789")]), None)
        .unwrap();
    assert_eq!(done.sha256, hex::encode(integrity::sha256(b"0123456789")));
}

#[test]
fn running_out_of_file_descriptors_is_a_retryable_503() {
    let emfile = std::io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
    let e = ApiError::io("creating the upload session", &emfile);
    assert_eq!((e.status, e.code), (503, code::UNAVAILABLE));
    assert_eq!(e.retry_after, Some(1));
    let resp = crate::api::error_response(&e);
    assert_eq!(resp.headers()[uplink_proto::wire::HDR_RETRY_AFTER], "1");
    let other = ApiError::io("x", &std::io::Error::other("boom"));
    assert_eq!((other.status, other.retry_after), (500, None));
}

/// A 100 GB upload in 1 MB chunks is 100,000 records: the state answers in ranges (a few
/// bytes), and the records come in pages the daemon's 4 MiB answer limit takes easily.
/// (The records are what matter here; 1 kB chunks keep the part file's reservation small.)
#[test]
fn a_hundred_thousand_chunks_answer_as_ranges_and_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    const KB: u64 = 1_000;
    let s = create(&st, 100_000 * KB);
    {
        let mut state = lock(&s.state);
        for i in (0..100_000u64).filter(|i| !(50_000..50_003).contains(i)) {
            state.chunks.insert(i * KB, (KB, [i as u8; 32]));
        }
    }
    let state = s.state();
    assert_eq!(state.chunk_count, 99_997);
    assert_eq!(
        state.ranges,
        vec![[0, 50_000 * KB], [50_003 * KB, 100_000 * KB]]
    );
    assert!(serde_json::to_vec(&state).unwrap().len() < 1024);

    let (mut from, mut seen, mut pages) = (Some(0), Vec::new(), 0);
    while let Some(f) = from {
        let page = s.chunk_page(&wire::ChunkPageQuery {
            from: f,
            limit: None,
        });
        assert!(serde_json::to_vec(&page).unwrap().len() < 2 << 20);
        assert!(page.chunks.iter().all(|c| c.offset >= f));
        seen.extend(page.chunks.iter().map(|c| c.offset));
        from = page.next_from;
        pages += 1;
        assert!(pages <= 10, "paging must end");
    }
    assert_eq!(seen.len(), 99_997);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    // A page may start mid-list.
    let tail = s.chunk_page(&wire::ChunkPageQuery {
        from: 99_998 * KB,
        limit: Some(5),
    });
    assert_eq!(tail.chunks.len(), 2);
    assert_eq!(tail.next_from, None);
}

/// Creates make their files without the store-wide lock (their fsyncs must not stall every
/// other request), so racing creates with one idempotency key must still end as one
/// session, and the losers' files must go.
#[test]
fn racing_creates_with_one_key_make_one_session() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Arc::new(store(tmp.path()));
    let req = CreateUpload {
        deferred_length: false,
        size: 10,
        name: "race.bin".into(),
        metadata: Default::default(),
        overwrite: false,
    };
    let ids: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| st.create(T, Some("same-key"), &req).unwrap().upload_id))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let dirs = std::fs::read_dir(tmp.path().join("sessions"))
        .unwrap()
        .count();
    assert_eq!(dirs, 1, "the losers' session dirs were removed");
    assert_eq!(st.session_count(), 1);
}

#[test]
fn without_reservation_a_hundred_gb_upload_takes_only_what_arrives() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path()).reserving_space(false);
    let s = create(&st, wire::MAX_FILE_SIZE);
    assert!(!put(&s, 50_000_000_000, b"middle").unwrap());
    let part = std::fs::metadata(s.dir.join(PART)).unwrap();
    assert_eq!(part.len(), wire::MAX_FILE_SIZE);
    assert!(
        part.blocks() * 512 < 1 << 20,
        "{} bytes allocated for 6 received",
        part.blocks() * 512
    );
    assert_eq!(s.state().received_bytes, 6);
}

#[test]
fn a_request_cut_differently_supersedes_an_abandoned_one_still_receiving() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create(&st, 64);
    let data: Vec<u8> = (0..64u8).collect();
    // A crashed run's request for 0..32 whose body never finished arriving.
    let old = match s
        .begin_chunk(0, 32, &integrity::sha256(&data[..32]), false)
        .unwrap()
    {
        BeginChunk::Reserved(r) => r,
        BeginChunk::Duplicate => panic!("nothing is stored yet"),
    };
    // The restarted run cuts 0..8 and 8..40: neither waits for the abandoned request.
    assert!(!put(&s, 0, &data[..8]).unwrap());
    let new = match s
        .begin_chunk(8, 32, &integrity::sha256(&data[8..40]), false)
        .unwrap()
    {
        BeginChunk::Reserved(r) => r,
        BeginChunk::Duplicate => panic!("not stored yet"),
    };
    // Should the old body arrive after all, it is refused and nothing of it is written.
    let err = s
        .store_chunk(
            old,
            &[bytes::Bytes::copy_from_slice(&data[..32])],
            &integrity::digest(&data[..32]),
            None,
        )
        .unwrap_err();
    assert_eq!(err.code, code::CHUNK_IN_PROGRESS, "{err:?}");
    s.store_chunk(
        new,
        &[bytes::Bytes::copy_from_slice(&data[8..40])],
        &integrity::digest(&data[8..40]),
        None,
    )
    .unwrap();
    assert_eq!(s.state().ranges, vec![[0, 40]]);
    assert_eq!(s.state().chunk_count, 2);
}

/// The bytes a receipt would hand to `store_chunk`, joined.
fn joined(parts: &[bytes::Bytes]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn a_body_cut_off_is_parked_and_a_resumed_put_builds_on_exactly_the_bytes_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create(&st, 100);
    let sha = integrity::sha256(b"0123456789");
    let r = s.receiving(0, 10, &sha, Vec::new());
    assert!(r.push(bytes::Bytes::from_static(b"0123")).is_ok());
    assert!(r.push(bytes::Bytes::from_static(b"456")).is_ok());
    drop(r); // the connection died: what arrived is parked
    assert_eq!(s.parked_bytes(), 7);
    assert_eq!(s.take_over(0, 10, &sha), 7);
    // The client builds on 5 of them (it may know of fewer than the server has).
    let prefix = s.resume_prefix(0, 10, &sha, 5).unwrap();
    assert_eq!(joined(&prefix), b"01234");
    let r = s.receiving(0, 10, &sha, prefix);
    assert!(r.push(bytes::Bytes::from_static(b"56789")).is_ok());
    assert_eq!(joined(&r.finish().ok().unwrap()), b"0123456789");
    // Used once: nothing is left to build on.
    assert_eq!(s.parked_bytes(), 0);
    let gone = s.resume_prefix(0, 10, &sha, 5).unwrap_err();
    assert_eq!(gone.code, code::PARTIAL_GONE);
}

#[test]
fn taking_over_a_body_still_arriving_stops_its_request() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create(&st, 100);
    let sha = integrity::sha256(b"abcdefgh");
    let old = s.receiving(8, 8, &sha, Vec::new());
    assert!(old.push(bytes::Bytes::from_static(b"abc")).is_ok());
    // The client lost that connection (the server did not notice) and asks again.
    assert_eq!(s.take_over(8, 8, &sha), 3);
    assert!(old.push(bytes::Bytes::from_static(b"def")).is_err());
    assert!(old.finish().is_err());
    assert_eq!(joined(&s.resume_prefix(8, 8, &sha, 3).unwrap()), b"abc");
}

#[test]
fn bytes_go_only_to_the_same_chunk_and_finished_or_refused_bodies_are_not_parked() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create(&st, 100);
    let sha = integrity::sha256(b"abcdefgh");
    let other = integrity::sha256(b"ABCDEFGH");
    let r = s.receiving(0, 8, &sha, Vec::new());
    assert!(r.push(bytes::Bytes::from_static(b"abcd")).is_ok());
    // Another chunk at the same offset (other bytes, or another length) sees nothing.
    assert_eq!(s.take_over(0, 8, &other), 0);
    assert_eq!(s.take_over(0, 9, &sha), 0);
    drop(r);
    assert_eq!(
        s.resume_prefix(0, 8, &other, 2).unwrap_err().code,
        code::PARTIAL_GONE
    );
    // More than was parked cannot be built on (and the attempt uses it up).
    assert_eq!(
        s.resume_prefix(0, 8, &sha, 5).unwrap_err().code,
        code::PARTIAL_GONE
    );
    let done = s.receiving(0, 8, &sha, Vec::new());
    assert!(done.push(bytes::Bytes::from_static(b"abcdefgh")).is_ok());
    assert!(done.finish().is_ok());
    let refused = s.receiving(0, 8, &sha, Vec::new());
    assert!(refused.push(bytes::Bytes::from_static(b"abc")).is_ok());
    refused.discard();
    assert_eq!(s.parked_bytes(), 0);
    assert_eq!(s.take_over(0, 8, &sha), 0);
}

#[test]
fn parked_bytes_are_bounded_per_session_oldest_dropped_first() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create(&st, 5 << 27);
    let piece = bytes::Bytes::from(vec![7u8; 64 << 20]);
    let sha = [1u8; 32];
    for i in 0..5u64 {
        let r = s.receiving(i << 27, 128 << 20, &sha, Vec::new());
        assert!(r.push(piece.clone()).is_ok());
    }
    assert_eq!(s.parked_bytes(), super::partials::PARKED_LIMIT);
    // The first one went to make room.
    assert_eq!(s.take_over(0, 128 << 20, &sha), 0);
    assert_eq!(s.take_over(4 << 27, 128 << 20, &sha), 64 << 20);
}

fn create_deferred(st: &Store) -> Arc<Session> {
    create_named(st, "growing", 0, true, "capture.ply")
}

#[test]
fn a_deferred_length_upload_takes_chunks_as_the_file_grows_and_complete_seals_it() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create_deferred(&st);
    assert!(s.state().deferred_length);
    assert_eq!(s.state().size, 0, "no length before complete");
    put(&s, 0, b"ply\n").unwrap();
    put(&s, 4, b"vertex").unwrap();
    // Survives a restart with its length still open.
    let id = s.id.clone();
    drop((s, st));
    let st = store(tmp.path());
    let s = st.get(T, &id).unwrap();
    put(&s, 10, b" 3\n").unwrap();
    let root = root_of(&[(0, b"ply\n"), (4, b"vertex"), (10, b" 3\n")]);
    let err = s.complete(&st, &root, None).unwrap_err();
    assert_eq!(err.code, code::BAD_REQUEST, "the length must be named");
    let err = s.complete(&st, &root, Some(20)).unwrap_err();
    assert_eq!(err.code, code::INCOMPLETE, "bytes 13..20 were never sent");
    let err = s.complete(&st, &root, Some(10)).unwrap_err();
    assert_eq!(err.code, code::LENGTH_MISMATCH, "a chunk lies past 10");
    let done = s.complete(&st, &root, Some(13)).unwrap();
    assert_eq!(done.size, 13);
    assert_eq!(
        done.sha256,
        hex::encode(integrity::sha256(b"ply\nvertex 3\n"))
    );
    assert_eq!(
        std::fs::read(st.object_path(T, "capture.ply")).unwrap(),
        b"ply\nvertex 3\n"
    );
    assert_eq!(s.state().size, 13, "the state reports the sealed length");
    // A repeat of complete answers the same.
    assert_eq!(s.complete(&st, &root, Some(13)).unwrap(), done);
}

#[test]
fn a_declared_length_cannot_be_changed_at_complete_nor_a_deferred_one_given_a_size() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create(&st, 4);
    put(&s, 0, b"0123").unwrap();
    let root = root_of(&[(0, b"0123")]);
    let err = s.complete(&st, &root, Some(5)).unwrap_err();
    assert_eq!(err.code, code::LENGTH_MISMATCH);
    assert_eq!(s.complete(&st, &root, Some(4)).unwrap().size, 4);
    let err = st
        .create(
            T,
            None,
            &CreateUpload {
                deferred_length: true,
                size: 7,
                name: "x.bin".into(),
                metadata: Default::default(),
                overwrite: false,
            },
        )
        .unwrap_err();
    assert_eq!(err.code, code::BAD_REQUEST);
}

#[test]
fn a_declared_replacement_is_taken_before_completion_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create_deferred(&st);
    put(&s, 0, b"ply 0\n").unwrap();
    put(&s, 6, b"points").unwrap();
    // Undeclared, other bytes there are still a conflict; declared but cut differently too.
    assert_eq!(
        put(&s, 0, b"ply 2\n").unwrap_err().code,
        code::CHUNK_CONFLICT
    );
    assert_eq!(
        put_as(&s, 0, b"ply 2", true).unwrap_err().code,
        code::CHUNK_CONFLICT
    );
    assert!(!put_as(&s, 0, b"ply 2\n", true).unwrap());
    let id = s.id.clone();
    drop((s, st));
    let st = store(tmp.path());
    let s = st.get(T, &id).unwrap();
    let root = root_of(&[(0, b"ply 2\n"), (6, b"points")]);
    let done = s.complete(&st, &root, Some(12)).unwrap();
    assert_eq!(
        done.sha256,
        hex::encode(integrity::sha256(b"ply 2\npoints"))
    );
    assert_eq!(
        std::fs::read(st.object_path(T, "capture.ply")).unwrap(),
        b"ply 2\npoints"
    );
    let after = put_as(&s, 0, b"ply 3\n", true).unwrap_err();
    assert_eq!(after.code, code::ALREADY_COMPLETED);
}

#[test]
fn a_replacement_behind_the_running_hash_gives_the_final_bytes_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let s = create_deferred(&st);
    put(&s, 0, b"head").unwrap();
    put(&s, 4, b"body").unwrap();
    s.advance_hash(None);
    assert!(!put_as(&s, 0, b"HEAD", true).unwrap());
    s.advance_hash(None);
    let root = root_of(&[(0, b"HEAD"), (4, b"body")]);
    let done = s.complete(&st, &root, Some(8)).unwrap();
    assert_eq!(done.sha256, hex::encode(integrity::sha256(b"HEADbody")));
}

#[test]
fn object_puts_a_crash_cut_off_are_swept_at_open_and_objects_stay() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(objects.join("alice")).unwrap();
    for (path, body) in [
        (objects.join(".upload-0011223344556677"), "half"),
        (
            objects.join("alice").join(".upload-8899aabbccddeeff"),
            "half",
        ),
        (objects.join("scan.ply"), "whole"),
        (objects.join("alice").join("scan.ply"), "whole"),
        (objects.join("alice").join(".hidden-but-mine"), "kept"),
    ] {
        std::fs::write(path, body).unwrap();
    }
    Store::open(dir.path(), true).unwrap();
    let mut left: Vec<_> = walk(&objects)
        .iter()
        .map(|p| p.strip_prefix(&objects).unwrap().display().to_string())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["alice/.hidden-but-mine", "alice/scan.ply", "scan.ply"]
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_request_in_flight_when_its_session_is_deleted_makes_no_file_again() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let st = store(tmp);
    let s = create(&st, 8);
    assert!(!put(&s, 0, b"abcd").unwrap());
    // Idle: the files are closed, and the next chunk would open them again.
    s.close_if_idle(u64::MAX);
    // A request holding the session (admitted before) is still going when it is deleted.
    let dir = s.dir.clone();
    st.delete(T, &s.id).unwrap();
    assert!(!dir.exists());
    assert_eq!(put(&s, 4, b"efgh").unwrap_err().code, code::UNKNOWN_UPLOAD);
    assert!(!dir.exists(), "the deleted session's directory came back");
}
