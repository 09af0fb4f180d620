//! The circuit breaker and the triple watchdog, in virtual time.
//!
//! The breaker: five failures the endpoint answered open it; nothing goes for 30 s; then
//! one request at a time probes; two successes close it. Silence never opens it.
//! The watchdogs: a job with requests out and nothing moving gets fresh connections and
//! the server's state after 60 s (session), a full re-verification after 300 s without an
//! acknowledgement (global) — after stall detection (5 s), in that order; a slow body, a
//! complete the server takes long to answer and a job waiting its turn are not hung.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use uplink_engine::breaker::State;
use uplink_engine::sim::{Change, Link, Report, Scenario, Sim};
use uplink_engine::{Action, Config, JobSpec, Time, Watchdog};

mod common;
use common::{MIB, add, secs};

/// What a run showed: stalls, watchdog firings, connection resets and acknowledgements,
/// each with its virtual time.
#[derive(Default)]
struct Seen {
    stalls: Vec<Time>,
    watchdogs: Vec<(Time, Watchdog, u64)>,
    reconnects: Vec<Time>,
    fetches_verifying_all: u32,
    acked: Vec<(Time, u64)>,
}

fn run(config: Config, link: Link, changes: Vec<(Time, Change)>) -> (Seen, Report) {
    let seen = Rc::new(RefCell::new(Seen::default()));
    let sink = Rc::clone(&seen);
    let sc = Scenario {
        link,
        config,
        changes,
        read_rate: 2e9,
        time_limit: secs(4.0 * 3600.0),
        seed: 11,
    };
    let report = Sim::new(sc)
        .observe(move |t, a| {
            let mut s = sink.borrow_mut();
            match a {
                Action::Retrying { why, .. } if why.contains("stalled") => s.stalls.push(t),
                Action::Watchdog { layer, job, .. } => s.watchdogs.push((t, *layer, *job)),
                Action::Reconnect => s.reconnects.push(t),
                Action::FetchState {
                    verify_all: true, ..
                } => s.fetches_verifying_all += 1,
                Action::Progress { acked_bytes, .. } => s.acked.push((t, *acked_bytes)),
                _ => {}
            }
        })
        .run();
    for (id, j) in &report.jobs {
        assert!(j.completed_at.is_some(), "job {id} did not complete: {j:?}");
    }
    (seen.take(), report)
}

fn resumed_after(seen: &Seen, t: Time) -> Time {
    let before = seen
        .acked
        .iter()
        .take_while(|(at, _)| *at <= t)
        .map(|(_, b)| *b)
        .max()
        .unwrap_or(0);
    seen.acked
        .iter()
        .find(|(at, b)| *at > t && *b > before)
        .map(|(at, _)| *at)
        .expect("acknowledgements after the event")
}

#[test]
fn a_failing_server_opens_the_breaker_which_probes_one_request_at_a_time_and_closes_after_two_successes()
 {
    // 100 Mbit/s, 50 ms; the server answers every request with a 503 from 3 s to 80 s.
    let (down, up) = (secs(3.0), secs(80.0));
    let changes = vec![
        (Time::ZERO, add(1, 512 * MIB)),
        (down, Change::ServerFailing(true)),
        (up, Change::ServerFailing(false)),
    ];
    let (seen, report) = run(Config::default(), Link::new(100.0, 50), changes);
    let circuit = &report.circuit;
    eprintln!("circuit: {circuit:?}");

    let (opened, until) = match circuit.first() {
        Some((t, State::Open { until })) => (*t, *until),
        other => panic!("the breaker opens first: {other:?}"),
    };
    assert!(opened > down, "not before the server fails");
    assert_eq!(until, opened + Duration::from_secs(30), "open for 30 s");
    assert_eq!(report.sent_while_open, 0, "nothing goes while it is open");
    assert!(
        report.most_out_half_open <= 1,
        "half-open lets one request out at a time, saw {}",
        report.most_out_half_open
    );
    // While the server still fails, every probe opens it again: open, half-open, open...
    let reopened = circuit
        .windows(2)
        .filter(|w| {
            w[1].0 < up
                && matches!(w[0].1, State::HalfOpen { .. })
                && matches!(w[1].1, State::Open { .. })
        })
        .count();
    assert!(reopened >= 1, "a failed probe opens it again: {circuit:?}");
    // Once the server serves, the next probe and one more close it.
    let closed = circuit
        .iter()
        .find(|(t, s)| *t > up && *s == State::Closed)
        .map(|(t, _)| *t)
        .expect("the breaker closes once the server serves");
    assert!(
        closed <= up + Duration::from_secs(31),
        "closed {:?} after the server came back",
        closed.since(up)
    );
    assert!(resumed_after(&seen, up) <= closed + Duration::from_secs(1));
    assert!(
        seen.watchdogs.is_empty(),
        "a server that answers is not hung"
    );
}

#[test]
fn silence_never_opens_the_breaker() {
    // A 60 s blackhole: stalls and retries, but the endpoint never answered anything.
    let changes = vec![
        (Time::ZERO, add(1, 256 * MIB)),
        (secs(4.0), Change::Blackhole(true)),
        (secs(64.0), Change::Blackhole(false)),
    ];
    let (seen, report) = run(Config::default(), Link::new(100.0, 50), changes);
    assert!(!seen.stalls.is_empty());
    assert!(report.circuit.is_empty(), "{:?}", report.circuit);
    assert!(resumed_after(&seen, secs(64.0)) <= secs(66.0));
}

#[test]
fn a_long_blackhole_fires_stall_detection_then_the_session_then_the_global_watchdog() {
    // 100 Mbit/s, 50 ms; the link is dead from 4 s for 400 s.
    let (cut, back) = (secs(4.0), secs(404.0));
    let changes = vec![
        (Time::ZERO, add(1, 256 * MIB)),
        (cut, Change::Blackhole(true)),
        (back, Change::Blackhole(false)),
    ];
    let (seen, report) = run(Config::default(), Link::new(100.0, 50), changes);
    let first_stall = *seen.stalls.first().expect("a stall");
    let sessions: Vec<Time> = seen
        .watchdogs
        .iter()
        .filter(|w| w.1 == Watchdog::Session)
        .map(|w| w.0)
        .collect();
    let globals: Vec<Time> = seen
        .watchdogs
        .iter()
        .filter(|w| w.1 == Watchdog::Global)
        .map(|w| w.0)
        .collect();
    eprintln!(
        "stall {:?}, session {:?}, global {:?} after the cut",
        first_stall.since(cut),
        sessions.iter().map(|t| t.since(cut)).collect::<Vec<_>>(),
        globals.iter().map(|t| t.since(cut)).collect::<Vec<_>>()
    );
    assert!(first_stall <= cut + Duration::from_secs(5));
    let first_session = *sessions.first().expect("the session watchdog fires");
    let first_global = *globals.first().expect("the global watchdog fires");
    // Each layer at its window after the last sign of life (the cut), within a second.
    let near = |t: Time, s: u64| {
        t >= cut + Duration::from_secs(s) && t <= cut + Duration::from_secs(s + 1)
    };
    assert!(near(first_session, 60), "session at {first_session:?}");
    assert!(near(first_global, 300), "global at {first_global:?}");
    assert!(first_stall < first_session && first_session < first_global);
    // The session watchdog repeats every 60 s of silence; the global one restarts its
    // clock when it fires.
    assert!(
        sessions.len() >= 4 && globals.len() == 1,
        "{sessions:?} {globals:?}"
    );
    // Every firing asks for fresh connections, and the global one for a full verification.
    assert_eq!(seen.reconnects.len(), seen.watchdogs.len());
    assert_eq!(seen.fetches_verifying_all, 1);
    // And the upload goes on soon after the link returns: the state fetch the global
    // watchdog asked for is a probe, given up within the stall window while the link
    // looks cut, so it is sent again within a stall window and a retry of the return.
    let resumed = resumed_after(&seen, back);
    eprintln!(
        "first acknowledgement {:?} after the return",
        resumed.since(back)
    );
    assert!(resumed <= back + Duration::from_secs(7));
    assert_eq!(report.jobs[&1].watchdogs.len(), seen.watchdogs.len());
}

#[test]
fn a_slow_body_a_long_complete_and_a_job_waiting_its_turn_are_not_hung() {
    // One stream and 32 MiB chunks; the link falls to 0.5 Mbit/s: a chunk takes ~9 min
    // and moves all along. A second job, lower in priority, waits its turn all that time.
    let config = Config {
        streams: Some(1),
        chunk_size: Some(32 * MIB),
        ..Config::default()
    };
    let changes = vec![
        (Time::ZERO, add(1, 64 * MIB)),
        (
            Time::ZERO,
            Change::AddJob {
                job: 2,
                spec: JobSpec {
                    size: 40 * MIB,
                    priority: 0,
                    has_session: false,
                    growing: false,
                },
                stored: vec![],
                saving: 0.0,
            },
        ),
        (secs(1.0), Change::Link(Link::new(0.5, 50))),
    ];
    let (seen, report) = run(config, Link::new(100.0, 50), changes);
    assert!(
        report.jobs[&1].completed_at > Some(secs(600.0)),
        "the slow link really was slow"
    );
    assert!(seen.watchdogs.is_empty(), "{:?}", seen.watchdogs);
}

#[test]
fn watchdogs_stay_quiet_through_random_ordinary_worlds() {
    // Loss, link changes and short blackholes (< 60 s): every upload completes and no
    // watchdog fires — they are for hangs, not for weather.
    for seed in 0..40u64 {
        let mbit = [1.0, 5.0, 50.0, 300.0][seed as usize % 4];
        let mut link = Link::new(mbit, 20 + seed * 7 % 200);
        link.loss_per_mib = [0.0, 0.01, 0.05][seed as usize % 3];
        let cut = secs(2.0 + (seed % 5) as f64);
        let changes = vec![
            (Time::ZERO, add(1, (8 + seed % 24) * MIB)),
            (Time::ZERO, add(2, 3 * MIB)),
            (cut, Change::Blackhole(true)),
            (
                cut + Duration::from_secs(5 + seed % 50),
                Change::Blackhole(false),
            ),
            (secs(20.0), Change::Link(Link::new(mbit / 3.0, 50))),
        ];
        let (seen, _) = run(Config::default(), link, changes);
        assert!(
            seen.watchdogs.is_empty(),
            "seed {seed}: {:?}",
            seen.watchdogs
        );
    }
}
