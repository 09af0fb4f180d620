//! One job driven by hand, action by action: how the core retries the calls that end an
//! upload. (The simulator covers whole transfers; these pin single decisions.)

use std::time::Duration;

use uplink_engine::{Action, Config, Engine, Event, Failure, JobSpec, ReqId, Time};

const MIB: u64 = 1 << 20;

/// Answers every action the engine has out with success, until it asks for `Complete`;
/// returns that request's id.
fn drive_to_complete(e: &mut Engine, now: Time) -> ReqId {
    for _ in 0..10_000 {
        let Some(action) = e.poll_action() else {
            panic!("the engine went quiet before asking to complete");
        };
        match action {
            Action::CreateSession { req, .. } => e.handle(now, Event::RequestDone { req }),
            Action::Read { job, offset, .. } => e.handle(
                now,
                Event::ReadDone {
                    job,
                    offset,
                    saving: None,
                },
            ),
            Action::PutChunk { req, .. } => e.handle(now, Event::RequestDone { req }),
            Action::Complete { req, .. } => return req,
            _ => {}
        }
    }
    panic!("no Complete within 10,000 actions");
}

/// Job 1 of `size` bytes; `has_session`: resumed (the server may hold some of it).
fn add_job(e: &mut Engine, size: u64, has_session: bool) {
    e.handle(
        Time::ZERO,
        Event::JobAdded {
            job: 1,
            spec: JobSpec {
                size,
                priority: 0,
                has_session,
                growing: false,
            },
        },
    );
}

fn big_job(e: &mut Engine, size: u64) {
    add_job(e, size, false);
}

#[test]
fn a_complete_that_failed_transiently_is_sent_again_after_its_backoff() {
    let mut e = Engine::new(Config::default(), 3);
    big_job(&mut e, 32 * MIB);
    let req = drive_to_complete(&mut e, Time::ZERO);
    e.handle(
        Time::ZERO,
        Event::RequestFailed {
            req,
            failure: Failure::transient("network", "connection reset"),
        },
    );
    let retrying = std::iter::from_fn(|| e.poll_action())
        .find(|a| matches!(a, Action::Retrying { .. }))
        .expect("a Retrying report");
    let Action::Retrying { delay, .. } = retrying else {
        unreachable!()
    };
    let wake = e
        .poll_timeout()
        .expect("the engine asks to be woken for the retry");
    assert_eq!(wake, Time::ZERO + delay, "woken when the backoff ends");
    e.handle_timeout(wake);
    assert!(
        std::iter::from_fn(|| e.poll_action()).any(|a| matches!(a, Action::Complete { .. })),
        "complete is sent again"
    );
}

#[test]
fn complete_allows_the_server_time_to_hash_a_big_file() {
    // 30 GB: a server that lost its running hash reads it all back before answering.
    let cfg = Config {
        chunk_size: Some(32 * MIB),
        ..Config::default()
    };
    let mut e = Engine::new(cfg, 3);
    big_job(&mut e, 30_000_000_000);
    drive_to_complete(&mut e, Time::ZERO);
    let deadline = e.poll_timeout().expect("complete has a deadline");
    assert!(
        deadline.since(Time::ZERO) >= Duration::from_secs(180),
        "complete of 30 GB may take minutes, deadline after {:?}",
        deadline.since(Time::ZERO)
    );
}

#[test]
fn a_permanent_refusal_of_complete_fails_the_job_with_the_servers_code() {
    let mut e = Engine::new(Config::default(), 3);
    big_job(&mut e, 8 * MIB);
    let req = drive_to_complete(&mut e, Time::ZERO);
    e.handle(
        Time::ZERO,
        Event::RequestFailed {
            req,
            failure: Failure::permanent("server_merkle_mismatch", "root differs"),
        },
    );
    let failed = std::iter::from_fn(|| e.poll_action()).find_map(|a| match a {
        Action::JobFailed { job, code, .. } => Some((job, code)),
        _ => None,
    });
    assert_eq!(failed, Some((1, "server_merkle_mismatch".to_string())));
    assert_eq!(e.poll_timeout(), None, "nothing left to wake for");
}

#[test]
fn a_conflict_with_chunks_the_server_got_meanwhile_refetches_the_state_and_goes_on() {
    let mut e = Engine::new(Config::default(), 5);
    add_job(&mut e, 64 * MIB, true);
    let fetch = match e.poll_action() {
        Some(Action::FetchState { req, .. }) => req,
        other => panic!("a resumed job fetches the server's state first, got {other:?}"),
    };
    e.handle(
        Time::ZERO,
        Event::SessionReady {
            req: fetch,
            acked: vec![],
        },
    );
    // Read what it asks; the first chunk sent is refused as a conflict.
    let mut conflict = None;
    for _ in 0..1000 {
        match e.poll_action() {
            Some(Action::Read { job, offset, .. }) => e.handle(
                Time::ZERO,
                Event::ReadDone {
                    job,
                    offset,
                    saving: None,
                },
            ),
            Some(Action::PutChunk { req, .. }) => {
                conflict = Some(req);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    let req = conflict.expect("a chunk is sent");
    e.handle(
        Time::ZERO,
        Event::RequestFailed {
            req,
            failure: Failure::StateChanged,
        },
    );
    let after: Vec<Action> = std::iter::from_fn(|| e.poll_action()).collect();
    assert!(
        !after.iter().any(|a| matches!(a, Action::JobFailed { .. })),
        "a conflict is not the end of the job: {after:?}"
    );
    assert!(
        after.iter().any(|a| matches!(a, Action::Retrying { .. })),
        "the pause is reported"
    );
    // The first conflict since an acknowledgement is news, not trouble: the state is
    // fetched again at once (the same session).
    let refetch = after
        .iter()
        .find_map(|a| match a {
            Action::FetchState { req, .. } => Some(*req),
            Action::CreateSession { .. } => panic!("the session is kept"),
            _ => None,
        })
        .expect("the state is fetched again at once");
    let wake = Time::ZERO;
    // The server now holds the first 8 MiB (landed from the run before): never sent again.
    e.handle(
        wake,
        Event::SessionReady {
            req: refetch,
            acked: std::iter::once(0..8 * MIB).collect(),
        },
    );
    for _ in 0..10_000 {
        match e.poll_action() {
            Some(Action::Read { job, offset, .. }) => e.handle(
                wake,
                Event::ReadDone {
                    job,
                    offset,
                    saving: None,
                },
            ),
            Some(Action::PutChunk { req, offset, .. }) => {
                assert!(
                    offset >= 8 * MIB,
                    "re-sent bytes the server holds: {offset}"
                );
                e.handle(wake, Event::RequestDone { req });
            }
            Some(Action::Complete { req, .. }) => {
                e.handle(wake, Event::RequestDone { req });
            }
            Some(Action::JobCompleted { job }) => {
                assert_eq!(job, 1);
                return;
            }
            Some(Action::JobFailed { code, message, .. }) => panic!("{code}: {message}"),
            Some(_) => {}
            None => panic!("the engine went quiet before completing"),
        }
    }
    panic!("no completion within 10,000 actions");
}

#[test]
fn chunks_whose_bytes_another_request_holds_wait_a_second_and_the_backoff_does_not_grow() {
    let mut e = Engine::new(Config::default(), 5);
    big_job(&mut e, 32 * MIB);
    let mut now = Time::ZERO;
    let mut busy_answers = 0;
    for _ in 0..100_000 {
        match e.poll_action() {
            Some(Action::CreateSession { req, .. }) => e.handle(now, Event::RequestDone { req }),
            Some(Action::Read { job, offset, .. }) => e.handle(
                now,
                Event::ReadDone {
                    job,
                    offset,
                    saving: None,
                },
            ),
            // A crashed run's chunk is still being written for the first 20 tries.
            Some(Action::PutChunk { req, .. }) if busy_answers < 20 => {
                busy_answers += 1;
                e.handle(
                    now,
                    Event::RequestFailed {
                        req,
                        failure: Failure::Busy { retry_after: None },
                    },
                );
            }
            Some(Action::PutChunk { req, .. }) | Some(Action::Complete { req, .. }) => {
                e.handle(now, Event::RequestDone { req })
            }
            Some(Action::Retrying {
                attempt,
                delay,
                waiting,
                ..
            }) => {
                assert_eq!(attempt, 0, "busy bytes are not a failure");
                assert_eq!(delay, Duration::from_secs(1));
                assert!(!waiting);
            }
            Some(Action::JobCompleted { job }) => {
                assert_eq!((job, busy_answers), (1, 20));
                assert!(
                    now <= Time::ZERO + Duration::from_secs(25),
                    "done by {now:?}: one second per busy answer at most"
                );
                return;
            }
            Some(Action::JobFailed { code, message, .. }) => panic!("{code}: {message}"),
            Some(_) => {}
            None => {
                now = e.poll_timeout().expect("a waiting chunk wakes the engine");
                e.handle_timeout(now);
            }
        }
    }
    panic!("no completion within 100,000 actions");
}

#[test]
fn a_chunk_whose_path_is_gone_goes_again_at_once_on_another_lane_and_nothing_counts_as_failed() {
    let mut e = Engine::new(Config::default(), 7);
    big_job(&mut e, 64 * MIB);
    let t = Time::from_micros(1_000_000);
    // Create the session, read the first chunk, and see it sent.
    let (req, offset, lane) = loop {
        match e.poll_action() {
            Some(Action::CreateSession { req, .. }) => e.handle(t, Event::RequestDone { req }),
            Some(Action::Read { job, offset, .. }) => e.handle(
                t,
                Event::ReadDone {
                    job,
                    offset,
                    saving: None,
                },
            ),
            Some(Action::PutChunk {
                req, offset, lane, ..
            }) => break (req, offset, lane),
            Some(_) => {}
            None => panic!("no chunk was sent"),
        }
    };
    e.handle(
        t,
        Event::RequestFailed {
            req,
            failure: Failure::Moved,
        },
    );
    let again = std::iter::from_fn(|| e.poll_action()).find_map(|a| match a {
        Action::PutChunk {
            offset: o, lane: l, ..
        } if o == offset => Some(l),
        _ => None,
    });
    assert!(
        again.is_some_and(|l| l != lane),
        "sent again at the same moment on another lane: {again:?} (was {lane})"
    );
    let view = e.job(1).expect("job");
    assert_eq!(view.failures, 0, "a move is not a failure");
    assert!(!view.waiting);
}
