//! The job store on a real sled database in a temp dir: picking cost, retention, paging,
//! and the index agreeing with the records across a reopen and an upgrade.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::engine::reader::FileIdentity;

const T0: u64 = 1_700_000_000_000;
const DAY_MS: u64 = 86_400_000;

fn job_id(n: u64) -> String {
    // Like the daemon's ids: creation time first, so key order is creation order.
    format!("{:012x}{:012x}", T0 + n, n)
}

fn job(n: u64, state: JobState) -> JobRecord {
    JobRecord {
        job_id: job_id(n),
        state,
        path: format!("/data/capture-{n}.bin"),
        size: 1 << 20,
        target: format!("capture-{n}.bin"),
        metadata: BTreeMap::from([("n".to_string(), n.to_string())]),
        identity: FileIdentity {
            dev: 1,
            ino: n,
            size: 1 << 20,
            mtime_ns: 0,
        },
        chunk_size: 4 << 20,
        upload_id: None,
        nonce: None,
        bytes_acked: 0,
        chunks_total: 1,
        chunks_acked: 0,
        chunks_sent: 0,
        chunks_resent: 0,
        bytes_resent: 0,
        bytes_on_wire: 0,
        protocol: String::new(),
        streams: 0,
        time_to_first_ack_ms: None,
        created_at_ms: T0 + n,
        finished_at_ms: state.is_terminal().then_some(T0 + n + 1),
        server_sha256: String::new(),
        merkle_root: String::new(),
        location: String::new(),
        error_code: String::new(),
        error_message: String::new(),
        attempts: 0,
        used_0rtt: false,
        waiting: None,
        live: false,
        growing: false,
        rewritten: Vec::new(),
        overwrite: false,
    }
}

fn finished(n: u64, state: JobState, at_ms: u64) -> JobRecord {
    let mut j = job(n, state);
    j.finished_at_ms = Some(at_ms);
    j
}

fn week() -> Duration {
    Duration::from_millis(7 * DAY_MS)
}

/// The index, checked against a full decode of every record: placements, both index
/// trees and the counts all say what the records say.
fn assert_index_matches_records(db: &JobDb) {
    let mut expected: BTreeMap<Vec<u8>, Placement> = BTreeMap::new();
    for entry in db.jobs.iter() {
        let (key, value) = entry.unwrap();
        let job: JobRecord = serde_json::from_slice(&value).unwrap();
        expected.insert(key.to_vec(), Placement::of(&job));
    }
    let placements: BTreeMap<Vec<u8>, Placement> = db
        .placements
        .iter()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.to_vec(), Placement::decode(&v).unwrap())
        })
        .collect();
    assert_eq!(placements, expected);
    let tree_entries = |tree: &sled::Tree| -> BTreeMap<Vec<u8>, Vec<u8>> {
        tree.iter()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    };
    let want = |terminal: bool| -> BTreeMap<Vec<u8>, Vec<u8>> {
        expected
            .values()
            .filter(|p| p.state.is_terminal() == terminal)
            .map(|p| (p.key.clone(), vec![index::state_byte(p.state)]))
            .collect()
    };
    assert_eq!(tree_entries(&db.active), want(false));
    assert_eq!(tree_entries(&db.finished), want(true));
    for s in index::ALL_STATES {
        let n = expected.values().filter(|p| p.state == s).count() as u64;
        assert_eq!(db.count(s).unwrap(), n, "count of {s:?}");
    }
}

#[test]
fn picking_the_next_job_decodes_one_record_however_many_are_stored() {
    const JOBS: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let db = JobDb::open(dir.path()).unwrap();
    for n in 0..JOBS {
        db.write(&job(n, JobState::Queued), None).unwrap();
    }
    let retention = Retention {
        keep: 1000,
        max_age: week(),
    };
    // Each round does what the run loop does: pick, mark running, finish, trim history.
    let mut pick_decodes = Vec::new();
    let mut round_decodes = Vec::new();
    for n in 0..JOBS {
        let before = db.decodes();
        let mut next = db.next_active().unwrap().expect("a queued job");
        pick_decodes.push(db.decodes() - before);
        assert_eq!(next.job_id, job_id(n), "jobs run in creation order");
        next.state = JobState::Running;
        db.write(&next, None).unwrap();
        next.state = JobState::Completed;
        next.finished_at_ms = Some(T0 + JOBS + n);
        db.write(&next, None).unwrap();
        db.prune(&retention, T0 + JOBS + n).unwrap();
        round_decodes.push(db.decodes() - before);
    }
    assert!(db.next_active().unwrap().is_none());
    let first: u64 = pick_decodes[..100].iter().sum();
    let last: u64 = pick_decodes[pick_decodes.len() - 100..].iter().sum();
    let total: u64 = pick_decodes.iter().sum();
    let most = pick_decodes.iter().max().copied().unwrap_or(0);
    let round_most = round_decodes.iter().max().copied().unwrap_or(0);
    println!(
        "{JOBS} jobs: record decodes per pick: first 100 picks {first}, last 100 picks {last}, \
         all {JOBS} picks {total}, most in one pick {most}, most in one pick+run+finish+trim round {round_most} \
         (a walk of every record per pick would decode {})",
        JOBS * (JOBS + 1) / 2
    );
    assert!(most <= 3, "a pick decoded {most} records");
    assert!(round_most <= 3, "a round decoded {round_most} records");
    assert_eq!(first, last, "picking got costlier as history grew");
    // History was trimmed to the retention count as jobs finished.
    assert_eq!(db.count(JobState::Completed).unwrap(), 1000);
    assert_eq!(db.count(JobState::Queued).unwrap(), 0);
    assert_index_matches_records(&db);
}

#[test]
fn retention_trims_finished_jobs_by_age_and_count_but_never_active_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = JobDb::open(dir.path()).unwrap();
    let now = T0 + 30 * DAY_MS;
    // Active jobs created long before any limit: age never applies to them.
    let active: Vec<u64> = (0..5).collect();
    for &n in &active {
        let state = if n == 0 {
            JobState::Running
        } else {
            JobState::Queued
        };
        db.write(&job(n, state), None).unwrap();
    }
    // Ten finished jobs, finished 10, 9, ..., 1 days ago, of every terminal kind.
    let kinds = [JobState::Completed, JobState::Failed, JobState::Cancelled];
    let done: Vec<u64> = (10..20).collect();
    for (i, &n) in done.iter().enumerate() {
        let age_days = 10 - i as u64;
        db.write(&finished(n, kinds[i % 3], now - age_days * DAY_MS), None)
            .unwrap();
    }
    // Checkpoints for everyone (finished ones as an older daemon left them behind).
    for n in active.iter().chain(&done) {
        db.checkpoints
            .insert(job_id(*n), b"sealed".as_slice())
            .unwrap();
    }
    let gone = |n: u64| {
        db.get(&job_id(n)).unwrap().is_none() && db.checkpoints.get(job_id(n)).unwrap().is_none()
    };
    let kept = |n: u64| {
        db.get(&job_id(n)).unwrap().is_some() && db.checkpoints.get(job_id(n)).unwrap().is_some()
    };

    // Age: a week. The jobs finished 10, 9 and 8 days ago go; 7 days ago is still kept.
    let by_age = Retention {
        keep: 1000,
        max_age: week(),
    };
    assert_eq!(db.prune(&by_age, now).unwrap(), 3);
    assert!(done[..3].iter().all(|&n| gone(n)));
    assert!(done[3..].iter().all(|&n| kept(n)));

    // Count: keep 4, the most recently finished.
    let by_count = Retention {
        keep: 4,
        max_age: week(),
    };
    assert_eq!(db.prune(&by_count, now).unwrap(), 3);
    assert!(done[..6].iter().all(|&n| gone(n)));
    assert!(done[6..].iter().all(|&n| kept(n)));
    // Idempotent once within limits.
    assert_eq!(db.prune(&by_count, now).unwrap(), 0);

    // Even keeping none and a zero age, active jobs and their checkpoints stay.
    let nothing = Retention {
        keep: 0,
        max_age: Duration::ZERO,
    };
    assert_eq!(db.prune(&nothing, now).unwrap(), 4);
    assert!(done.iter().all(|&n| gone(n)));
    assert!(active.iter().all(|&n| kept(n)));
    assert_eq!(db.count(JobState::Running).unwrap(), 1);
    assert_eq!(db.count(JobState::Queued).unwrap(), 4);
    assert_index_matches_records(&db);
}

#[test]
fn a_finished_job_drops_its_checkpoint_in_the_same_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = JobDb::open(dir.path()).unwrap();
    let mut j = job(1, JobState::Running);
    db.write(&j, Some(b"sealed")).unwrap();
    assert!(db.checkpoints.get(job_id(1)).unwrap().is_some());
    j.state = JobState::Failed;
    j.finished_at_ms = Some(T0 + 5);
    db.write(&j, None).unwrap();
    assert!(db.checkpoints.get(job_id(1)).unwrap().is_none());
    assert_index_matches_records(&db);
}

#[test]
fn the_index_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = JobDb::open(dir.path()).unwrap();
        for n in 0..30 {
            db.write(&job(n, JobState::Queued), None).unwrap();
        }
        // Move some along, the way jobs go: running, then an end of each kind.
        for n in 0..12 {
            let mut j = db.get(&job_id(n)).unwrap().unwrap();
            j.state = JobState::Running;
            db.write(&j, None).unwrap();
            if n < 9 {
                j.state =
                    [JobState::Completed, JobState::Failed, JobState::Cancelled][n as usize % 3];
                j.finished_at_ms = Some(T0 + 100 + n);
                db.write(&j, None).unwrap();
            }
        }
        db.db.flush().unwrap();
    }
    let db = JobDb::open(dir.path()).unwrap();
    assert_eq!(db.decodes(), 0, "a reopen must not walk the records");
    assert_eq!(db.count(JobState::Queued).unwrap(), 18);
    assert_eq!(db.count(JobState::Running).unwrap(), 3);
    assert_eq!(db.count(JobState::Completed).unwrap(), 3);
    assert_eq!(db.count(JobState::Failed).unwrap(), 3);
    assert_eq!(db.count(JobState::Cancelled).unwrap(), 3);
    // The running ones (left by the last process) come first: they were created first.
    let next = db.next_active().unwrap().unwrap();
    assert_eq!(next.job_id, job_id(9));
    assert_eq!(next.state, JobState::Running);
    assert_index_matches_records(&db);
}

#[test]
fn a_store_from_before_the_index_is_indexed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What an older daemon left: records only, with the since-removed `sealed` field.
        let old = sled::open(dir.path().join("jobs.sled")).unwrap();
        let jobs = old.open_tree("jobs").unwrap();
        for (n, state) in [
            (0, JobState::Completed),
            (1, JobState::Running),
            (2, JobState::Queued),
            (3, JobState::Failed),
        ] {
            let mut v = serde_json::to_value(job(n, state)).unwrap();
            v["sealed"] = serde_json::Value::Bool(true);
            jobs.insert(job_id(n), serde_json::to_vec(&v).unwrap())
                .unwrap();
        }
        old.flush().unwrap();
    }
    let db = JobDb::open(dir.path()).unwrap();
    assert_eq!(db.decodes(), 4, "indexing reads each record once");
    assert_index_matches_records(&db);
    assert_eq!(db.next_active().unwrap().unwrap().job_id, job_id(1));
    drop(db);
    let db = JobDb::open(dir.path()).unwrap();
    assert_eq!(db.decodes(), 0, "indexed once, not at every open");
}

#[test]
fn pages_list_every_job_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = JobDb::open(dir.path()).unwrap();
    for n in 0..25 {
        let state = match n % 5 {
            0 => JobState::Completed,
            1 => JobState::Failed,
            _ => JobState::Queued,
        };
        // Finished in the reverse of creation order, to tell the two orders apart.
        let mut j = job(n, state);
        if state.is_terminal() {
            j.finished_at_ms = Some(T0 + 1000 - n);
        }
        db.write(&j, None).unwrap();
    }
    let walk = |listing: Listing, size: usize| -> (Vec<String>, usize) {
        let mut ids = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut pages = 0;
        loop {
            let page = db.page(listing, after.as_deref(), size).unwrap();
            pages += 1;
            assert!(page.jobs.len() <= size);
            ids.extend(page.jobs.into_iter().map(|j| j.job_id));
            match page.next {
                Some(next) => after = Some(next),
                None => return (ids, pages),
            }
            assert!(pages < 100, "paging does not end");
        }
    };
    let before = db.decodes();
    let (all, pages) = walk(Listing::All, 5);
    assert_eq!(all, (0..25).map(job_id).collect::<Vec<_>>());
    assert_eq!(pages, 5, "the last full page says nothing follows");
    assert_eq!(db.decodes() - before, 25, "each listed record decoded once");

    let (queued, _) = walk(Listing::State(JobState::Queued), 4);
    let want: Vec<String> = (0..25).filter(|n| n % 5 >= 2).map(job_id).collect();
    assert_eq!(queued, want);
    let (completed, _) = walk(Listing::State(JobState::Completed), 2);
    let want: Vec<String> = (0..25).rev().filter(|n| n % 5 == 0).map(job_id).collect();
    assert_eq!(
        completed, want,
        "finished jobs list in the order they finished"
    );
    let (running, pages) = walk(Listing::State(JobState::Running), 3);
    assert!(running.is_empty());
    assert_eq!(pages, 1);
}

#[test]
fn an_unreadable_record_is_taken_out_of_the_queue_not_picked_forever() {
    let dir = tempfile::tempdir().unwrap();
    let db = JobDb::open(dir.path()).unwrap();
    db.write(&job(0, JobState::Queued), None).unwrap();
    db.write(&job(1, JobState::Queued), None).unwrap();
    db.jobs.insert(job_id(0), b"{not json".as_slice()).unwrap();
    assert_eq!(db.next_active().unwrap().unwrap().job_id, job_id(1));
    assert_eq!(db.count(JobState::Queued).unwrap(), 1);
    assert!(db.placements.get(job_id(0)).unwrap().is_none());
}

/// Many durable writes at once (a CLI enqueuing a capture's photos 32 at a time, jobs
/// ending together) all complete: sled's own concurrent flushes deadlocked here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_concurrent_durable_writes_all_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(JobDb::open(tmp.path()).unwrap());
    let writes = (0..64).map(|n| {
        let db = std::sync::Arc::clone(&db);
        tokio::spawn(async move { db.put(&job(n, JobState::Queued)).await })
    });
    let all = futures_util::future::join_all(writes);
    let results = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the writes hung");
    assert!(results.into_iter().all(|r| matches!(r, Ok(Ok(())))));
    assert_eq!(db.count(JobState::Queued).unwrap(), 64);
}

#[test]
fn a_second_open_waits_for_the_last_holder_to_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let first = JobDb::open(dir.path()).unwrap();
    first.write(&job(1, JobState::Queued), None).unwrap();
    // The holder closes a moment later (a daemon restarting, sled's flusher finishing).
    let closer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    let second = JobDb::open(dir.path()).expect("opens once the lock is free");
    assert!(second.get(&job_id(1)).unwrap().is_some());
    closer.join().unwrap();
}
