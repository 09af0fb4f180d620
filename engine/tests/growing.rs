//! A growing file (a capture still being written): the core reads only whole chunks
//! behind the writer's edge, waits for the seal to send the tail and complete, and fails a
//! file that shrinks.

use uplink_engine::{Action, Config, Engine, Event, JobSpec, Time};

const MIB: u64 = 1 << 20;

fn engine() -> Engine {
    let cfg = Config {
        chunk_size: Some(MIB),
        ..Config::default()
    };
    Engine::new(cfg, 7)
}

fn add_growing(e: &mut Engine, written: u64) {
    let spec = JobSpec {
        size: written,
        priority: 0,
        has_session: false,
        growing: true,
    };
    e.handle(Time::ZERO, Event::JobAdded { job: 1, spec });
}

/// What the engine did while every request it made succeeded: the byte ranges it read,
/// whether it asked to complete, and how the job ended (if it did).
#[derive(Default, Debug)]
struct Seen {
    reads: Vec<(u64, u64)>,
    whole: bool,
    complete: bool,
    failed: Option<String>,
}

fn run(e: &mut Engine, seen: &mut Seen) {
    let now = Time::ZERO;
    for _ in 0..10_000 {
        let Some(action) = e.poll_action() else {
            return;
        };
        match action {
            Action::CreateSession { req, .. } | Action::PutChunk { req, .. } => {
                e.handle(now, Event::RequestDone { req })
            }
            Action::Read { job, offset, len } => {
                seen.reads.push((offset, len));
                let saving = None;
                e.handle(
                    now,
                    Event::ReadDone {
                        job,
                        offset,
                        saving,
                    },
                );
            }
            Action::PutWhole { .. } => seen.whole = true,
            Action::Complete { req, .. } => {
                seen.complete = true;
                e.handle(now, Event::RequestDone { req });
            }
            Action::JobFailed { code, .. } => seen.failed = Some(code),
            _ => {}
        }
    }
    panic!("the engine did not settle within 10,000 actions");
}

#[test]
fn only_whole_chunks_behind_the_edge_are_read_and_nothing_completes_before_the_seal() {
    let mut e = engine();
    let mut seen = Seen::default();
    add_growing(&mut e, 2 * MIB + MIB / 2);
    run(&mut e, &mut seen);
    assert_eq!(
        seen.reads,
        vec![(0, MIB), (MIB, MIB)],
        "the half chunk at the edge waits"
    );
    assert!(!seen.complete && !seen.whole);

    e.handle(
        Time::ZERO,
        Event::JobGrew {
            job: 1,
            size: 3 * MIB + 10,
        },
    );
    run(&mut e, &mut seen);
    assert_eq!(seen.reads.last(), Some(&(2 * MIB, MIB)));
    assert!(
        !seen.complete,
        "every written byte may be acknowledged: still not sealed"
    );

    e.handle(
        Time::ZERO,
        Event::JobSealed {
            job: 1,
            size: 3 * MIB + 10,
        },
    );
    run(&mut e, &mut seen);
    assert_eq!(
        seen.reads.last(),
        Some(&(3 * MIB, 10)),
        "the tail goes at the seal"
    );
    assert!(seen.complete, "then the complete");
    assert_eq!(seen.failed, None);
}

#[test]
fn a_small_or_empty_growing_file_waits_for_data_and_never_goes_as_one_request() {
    let mut e = engine();
    let mut seen = Seen::default();
    add_growing(&mut e, 0);
    run(&mut e, &mut seen);
    assert!(seen.reads.is_empty() && !seen.whole && seen.failed.is_none());
    e.handle(Time::ZERO, Event::JobSealed { job: 1, size: 1000 });
    run(&mut e, &mut seen);
    assert_eq!(seen.reads, vec![(0, 1000)]);
    assert!(seen.complete && !seen.whole);
}

#[test]
fn a_file_that_shrinks_while_growing_fails_as_truncated() {
    let mut e = engine();
    let mut seen = Seen::default();
    add_growing(&mut e, 3 * MIB);
    run(&mut e, &mut seen);
    e.handle(
        Time::ZERO,
        Event::JobGrew {
            job: 1,
            size: 2 * MIB,
        },
    );
    run(&mut e, &mut seen);
    assert_eq!(seen.failed.as_deref(), Some("file_truncated"));
    assert!(!seen.complete);
}

#[test]
fn a_seal_below_what_was_read_fails_as_truncated() {
    let mut e = engine();
    let mut seen = Seen::default();
    add_growing(&mut e, 4 * MIB);
    run(&mut e, &mut seen);
    e.handle(Time::ZERO, Event::JobSealed { job: 1, size: MIB });
    run(&mut e, &mut seen);
    assert_eq!(seen.failed.as_deref(), Some("file_truncated"));
    assert!(!seen.complete);
}

#[test]
fn a_sealed_job_is_a_plain_one_and_growth_reports_after_it_change_nothing() {
    let mut e = engine();
    let mut seen = Seen::default();
    add_growing(&mut e, MIB);
    e.handle(
        Time::ZERO,
        Event::JobSealed {
            job: 1,
            size: 2 * MIB,
        },
    );
    e.handle(
        Time::ZERO,
        Event::JobGrew {
            job: 1,
            size: 5 * MIB,
        },
    );
    run(&mut e, &mut seen);
    assert_eq!(seen.reads, vec![(0, MIB), (MIB, MIB)]);
    assert!(seen.complete);
}

/// Largest chunk read for a 400 MiB job driven over a fast link (every request answered
/// 10 ms after it went, in virtual time), growing or not.
fn largest_chunk(mut growing: bool) -> u64 {
    let mut e = Engine::new(Config::default(), 7);
    let spec = JobSpec {
        size: 400 * MIB,
        priority: 0,
        has_session: false,
        growing,
    };
    e.handle(Time::ZERO, Event::JobAdded { job: 1, spec });
    let mut now = Time::ZERO;
    let mut largest = 0;
    let mut out = std::collections::VecDeque::new();
    for _ in 0..20_000 {
        match e.poll_action() {
            Some(Action::CreateSession { req, .. }) | Some(Action::PutChunk { req, .. }) => {
                out.push_back(req)
            }
            Some(Action::Read { job, offset, len }) => {
                largest = largest.max(len);
                e.handle(
                    now,
                    Event::ReadDone {
                        job,
                        offset,
                        saving: None,
                    },
                );
            }
            Some(Action::JobCompleted { .. }) => break,
            Some(Action::Complete { req, .. }) => e.handle(now, Event::RequestDone { req }),
            Some(_) => {}
            None => match out.pop_front() {
                Some(req) => {
                    now = now + std::time::Duration::from_millis(10);
                    e.handle(now, Event::RequestDone { req });
                }
                None if growing => {
                    e.handle(
                        now,
                        Event::JobSealed {
                            job: 1,
                            size: 400 * MIB,
                        },
                    );
                    growing = false;
                }
                None => break,
            },
        }
    }
    largest
}

#[test]
fn a_growing_file_goes_in_chunks_of_at_most_4_mib_so_little_is_left_at_the_seal() {
    assert!(
        largest_chunk(false) > 4 * MIB,
        "the fast link's tier picks big chunks"
    );
    assert!(largest_chunk(true) <= 4 * MIB);
}

#[test]
fn a_complete_answered_with_resend_sends_those_chunks_again_then_completes() {
    let mut e = engine();
    let mut seen = Seen::default();
    add_growing(&mut e, 3 * MIB);
    e.handle(
        Time::ZERO,
        Event::JobSealed {
            job: 1,
            size: 3 * MIB,
        },
    );
    // Up to the complete, which the driver answers: the header chunk was rewritten.
    let mut complete = None;
    for _ in 0..1000 {
        match e.poll_action() {
            Some(Action::CreateSession { req, .. }) | Some(Action::PutChunk { req, .. }) => {
                e.handle(Time::ZERO, Event::RequestDone { req })
            }
            Some(Action::Read { job, offset, .. }) => {
                let saving = None;
                e.handle(
                    Time::ZERO,
                    Event::ReadDone {
                        job,
                        offset,
                        saving,
                    },
                );
            }
            Some(Action::Complete { req, .. }) => {
                complete = Some(req);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    let req = complete.expect("a complete");
    let failure = uplink_engine::Failure::Resend {
        chunks: vec![(0, MIB)],
    };
    e.handle(Time::ZERO, Event::RequestFailed { req, failure });
    run(&mut e, &mut seen);
    assert_eq!(
        seen.reads,
        vec![(0, MIB)],
        "the rewritten chunk, at its boundaries"
    );
    assert!(seen.complete && seen.failed.is_none());
}
