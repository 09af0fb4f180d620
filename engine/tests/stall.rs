//! Stall detection, in virtual time: a body that stops moving is given up within the
//! stall window and its bytes go again; a body that moves, however slowly, is left alone;
//! and the upload resumes as soon as the link does.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use uplink_engine::sim::{Change, Link, Scenario, Sim};
use uplink_engine::{Action, Config, Engine, Event, JobSpec, Time};

mod common;
use common::{MIB, add, secs};

/// What a run showed, action by action: retries (time, why) and acknowledged bytes over time.
#[derive(Default)]
struct Seen {
    retries: Vec<(Time, String)>,
    acked: Vec<(Time, u64)>,
}

fn run_watched(link: Link, changes: Vec<(Time, Change)>) -> (Seen, uplink_engine::sim::Report) {
    let seen = Rc::new(RefCell::new(Seen::default()));
    let sink = Rc::clone(&seen);
    let sc = Scenario {
        link,
        config: Config::default(),
        changes,
        read_rate: 2e9,
        time_limit: secs(3600.0),
        seed: 5,
    };
    let report = Sim::new(sc)
        .observe(move |t, a| match a {
            Action::Retrying { why, .. } => sink.borrow_mut().retries.push((t, why.clone())),
            Action::Progress { acked_bytes, .. } => sink.borrow_mut().acked.push((t, *acked_bytes)),
            _ => {}
        })
        .run();
    for (id, j) in &report.jobs {
        assert!(j.completed_at.is_some(), "job {id} did not complete: {j:?}");
    }
    let seen = seen.take();
    (seen, report)
}

#[test]
fn a_cut_link_is_noticed_within_five_seconds_and_the_upload_resumes_within_two_of_its_return() {
    // 100 Mbit/s, 50 ms; 30 s of blackhole from 4 s into a 256 MiB upload.
    let (cut, back) = (secs(4.0), secs(34.0));
    let changes = vec![
        (Time::ZERO, add(1, 256 * MIB)),
        (cut, Change::Blackhole(true)),
        (back, Change::Blackhole(false)),
    ];
    let (seen, _) = run_watched(Link::new(100.0, 50), changes);

    let first_stall = seen
        .retries
        .iter()
        .find(|(_, why)| why.contains("stalled"))
        .map(|(t, _)| *t)
        .expect("a stall is reported");
    assert!(
        first_stall > cut,
        "no stall before the cut: {:?}",
        seen.retries
    );
    assert!(
        first_stall <= cut + Duration::from_secs(5),
        "stall noticed {:?} after the cut",
        first_stall.since(cut)
    );
    // While the link is cut, the bytes go again at least every stall window and a second
    // (cheap probes), so a returning link is used at once.
    let probes = seen
        .retries
        .iter()
        .filter(|(t, why)| *t > cut && *t < back && why.contains("stalled"))
        .count();
    assert!(probes >= 4, "{probes} stalls during 30 s of blackhole");
    let acked_at_cut = seen
        .acked
        .iter()
        .take_while(|(t, _)| *t <= back)
        .map(|(_, b)| *b)
        .max()
        .unwrap_or(0);
    let resumed = seen
        .acked
        .iter()
        .find(|(t, b)| *t > back && *b > acked_at_cut)
        .map(|(t, _)| *t)
        .expect("acknowledgements after the link returned");
    eprintln!(
        "stall noticed {:?} after the cut, {probes} probes, first acknowledgement {:?} after the return",
        first_stall.since(cut),
        resumed.since(back)
    );
    assert!(
        resumed <= back + Duration::from_secs(2),
        "first acknowledgement {:?} after the link returned",
        resumed.since(back)
    );
}

#[test]
fn a_link_that_turns_slow_costs_one_round_of_stalls_then_chunks_fit_it() {
    // 40 Mbit/s, then 0.25 Mbit/s: the chunks in flight were sized for the fast link, and
    // the streams' shares fall below 8 KiB/s. They are stalled once; the estimate learns
    // the slow link, and the chunks after that are sized and judged for it.
    let changes = vec![
        (Time::ZERO, add(1, 24 * MIB)),
        (secs(2.0), Change::Link(Link::new(0.25, 50))),
    ];
    let (seen, report) = run_watched(Link::new(40.0, 50), changes);
    let stalls: Vec<_> = seen
        .retries
        .iter()
        .filter(|(_, why)| why.contains("stalled"))
        .collect();
    assert!(!stalls.is_empty(), "the first chunks were cut off");
    let last = stalls.last().map(|(t, _)| *t).unwrap_or(Time::ZERO);
    let end = report.jobs[&1].completed_at.expect("completed");
    assert!(
        last.since(secs(2.0)) < end.since(secs(2.0)) / 4,
        "stalls kept coming until {last:?} of {end:?}: {stalls:?}"
    );
}

#[test]
fn a_slow_link_shared_by_many_files_is_not_a_stall() {
    // 0.5 Mbit/s shared by twelve photos: each stream moves well under 8 KiB/s, and yet
    // every one of them is moving.
    let changes = (0..12).map(|j| (Time::ZERO, add(j, 200_000))).collect();
    let (seen, _) = run_watched(Link::new(0.5, 100), changes);
    let stalls = seen
        .retries
        .iter()
        .filter(|(_, why)| why.contains("stalled"))
        .count();
    assert_eq!(stalls, 0, "{:?}", seen.retries);
}

/// One 4 MiB chunk out on a fresh engine; returns its request id.
fn one_chunk_out(e: &mut Engine) -> u64 {
    let cfg_chunk = 4 * MIB;
    e.handle(
        Time::ZERO,
        Event::JobAdded {
            job: 1,
            spec: JobSpec {
                size: cfg_chunk,
                priority: 0,
                has_session: true,
                growing: false,
            },
        },
    );
    for _ in 0..100 {
        match e.poll_action() {
            Some(Action::FetchState { req, .. }) => {
                e.handle(Time::ZERO, Event::SessionReady { req, acked: vec![] })
            }
            Some(Action::Read { job, offset, .. }) => e.handle(
                Time::ZERO,
                Event::ReadDone {
                    job,
                    offset,
                    saving: None,
                },
            ),
            Some(Action::PutChunk { req, .. }) => return req,
            Some(_) => {}
            None => break,
        }
    }
    panic!("no chunk was sent");
}

fn engine() -> Engine {
    let cfg = Config {
        chunk_size: Some(4 * MIB),
        single_request_max: 0,
        ..Config::default()
    };
    Engine::new(cfg, 9)
}

fn abandoned(e: &mut Engine, req: u64) -> bool {
    std::iter::from_fn(|| e.poll_action()).any(|a| a == Action::Abandon { req })
}

#[test]
fn a_body_that_did_not_move_for_the_window_is_abandoned() {
    let mut e = engine();
    let req = one_chunk_out(&mut e);
    let wake = e.poll_timeout().expect("a timer for the stall window");
    assert_eq!(wake, secs(5.0), "judged when the window ends");
    e.handle(
        wake,
        Event::RequestProgress {
            req,
            bytes: 0,
            all: false,
            moved_at: Time::ZERO,
        },
    );
    e.handle_timeout(wake);
    assert!(abandoned(&mut e, req));
}

#[test]
fn a_moving_body_is_left_alone_and_its_deadline_moves_with_it() {
    let mut e = engine();
    let req = one_chunk_out(&mut e);
    // 64 KiB every 5 s (13 KiB/s): slow, but moving, for far longer than any deadline
    // sized for 4 MiB would allow without progress.
    for i in 1..=60u64 {
        let t = secs(5.0 * i as f64);
        e.handle(
            t,
            Event::RequestProgress {
                req,
                bytes: i * 64 * 1024,
                all: false,
                moved_at: t,
            },
        );
        e.handle_timeout(t);
        assert!(!abandoned(&mut e, req), "abandoned at {t:?}");
    }
}

#[test]
fn without_progress_reports_only_the_deadline_watches() {
    let mut e = engine();
    let req = one_chunk_out(&mut e);
    e.handle_timeout(secs(5.0));
    e.handle_timeout(secs(10.0));
    assert!(!abandoned(&mut e, req), "judged without a report");
}

#[test]
fn a_body_all_handed_on_is_judged_by_when_it_last_moved_not_by_its_bytes() {
    let mut e = engine();
    let req = one_chunk_out(&mut e);
    // The whole body went into the transport's buffers at once; the bytes stop there, but
    // the driver keeps saying the connection moves them.
    for t in [1.0, 5.0, 10.0, 15.0] {
        let t = secs(t);
        let progress = Event::RequestProgress {
            req,
            bytes: 4 * MIB,
            all: true,
            moved_at: t,
        };
        e.handle(t, progress);
        e.handle_timeout(t);
        assert!(!abandoned(&mut e, req), "judged by its bytes at {t:?}");
    }
    // Then the connection goes silent: five seconds later the request is stalled.
    e.handle_timeout(secs(19.0));
    assert!(!abandoned(&mut e, req));
    e.handle_timeout(secs(20.0));
    assert!(
        abandoned(&mut e, req),
        "silent for 5 s after the body was handed on"
    );
}

#[test]
fn while_the_link_looks_cut_even_a_changed_server_state_is_read_again_within_a_second() {
    // After a cut, requests from before it may land late and the server then holds other
    // chunk boundaries; fetching its state again must not wait out a grown backoff.
    let mut e = engine();
    let req = one_chunk_out(&mut e);
    let mut t = secs(5.0);
    let mut req = req;
    // Several stalls in a row (the backoff grows with each).
    for _ in 0..6 {
        e.handle(
            t,
            Event::RequestProgress {
                req,
                bytes: 0,
                all: false,
                moved_at: Time::ZERO,
            },
        );
        e.handle_timeout(t);
        assert!(abandoned(&mut e, req));
        t = e.poll_timeout().expect("a retry");
        e.handle_timeout(t);
        req = next_put(&mut e, t);
        t = t + Duration::from_secs(5);
    }
    e.handle(
        t,
        Event::RequestFailed {
            req,
            failure: uplink_engine::Failure::StateChanged,
        },
    );
    let delay = std::iter::from_fn(|| e.poll_action())
        .find_map(|a| match a {
            Action::Retrying { delay, .. } => Some(delay),
            _ => None,
        })
        .expect("a retry is reported");
    assert!(
        delay <= Duration::from_secs(1),
        "state fetched again after {delay:?}"
    );
}

/// Answers reads until the engine sends a chunk; returns that request.
fn next_put(e: &mut Engine, t: Time) -> u64 {
    for _ in 0..100 {
        match e.poll_action() {
            Some(Action::PutChunk { req, .. }) => return req,
            Some(Action::Read { job, offset, .. }) => e.handle(
                t,
                Event::ReadDone {
                    job,
                    offset,
                    saving: None,
                },
            ),
            Some(_) => {}
            None => break,
        }
    }
    panic!("the chunk did not go again");
}
