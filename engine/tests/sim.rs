//! The engine over a simulated link, in virtual time. Every run also checks the engine's
//! promises (the simulator panics when one breaks): no byte acknowledged twice, nothing
//! sent that was not read, no completion before every byte is stored, streams and buffers
//! within their limits.

use std::time::Duration;

use uplink_engine::sim::{Change, Link, Report, Scenario, Sim};
use uplink_engine::{Config, JobSpec, Time};

mod common;
use common::{MIB, add, secs};
const GIB: u64 = 1 << 30;

fn scenario(link: Link, changes: Vec<(Time, Change)>) -> Scenario {
    Scenario {
        link,
        config: Config::default(),
        changes,
        read_rate: 2e9,
        time_limit: secs(30.0 * 24.0 * 3600.0),
        seed: 1,
    }
}

fn run(sc: Scenario) -> Report {
    let r = Sim::new(sc).run();
    for (id, j) in &r.jobs {
        assert!(
            j.completed_at.is_some() || j.cancelled,
            "job {id} did not complete: {j:?}"
        );
    }
    r
}

/// Payload bytes over the time the link had work, against what it could carry.
fn utilisation(r: &Report, link: &Link) -> f64 {
    let bytes: u64 = r.jobs.values().map(|j| j.size).sum();
    let start = r.jobs.values().map(|j| j.added_at).min().unwrap();
    let end = r
        .jobs
        .values()
        .filter_map(|j| j.completed_at)
        .max()
        .unwrap();
    bytes as f64 / (end.since(start).as_secs_f64() * link.rate)
}

#[test]
fn the_first_acknowledgement_comes_within_three_round_trips() {
    // Prewarmed 100 Mbit/s, 50 ms: create (1 RTT), then a small first chunk.
    let link = Link::new(100.0, 50);
    let r = run(scenario(link, vec![(Time::ZERO, add(1, GIB))]));
    let j = &r.jobs[&1];
    let first = j.first_ack_at.unwrap().since(j.added_at);
    println!(
        "first ack after {first:?} = {:.2} RTT",
        first.as_secs_f64() / 0.05
    );
    assert!(first <= Duration::from_millis(150), "{first:?}");
}

#[test]
fn a_big_file_fills_the_link_and_chunks_grow_with_the_tier() {
    let link = Link::new(100.0, 50);
    let r = run(scenario(link.clone(), vec![(Time::ZERO, add(1, 4 * GIB))]));
    let u = utilisation(&r, &link);
    let j = &r.jobs[&1];
    println!(
        "4 GiB at 100 Mbit/s: {:.1} % of line, {} requests, largest chunk {} MiB",
        u * 100.0,
        j.chunk_requests,
        j.max_chunk / MIB
    );
    assert!(u > 0.9, "utilisation {u}");
    assert_eq!(
        j.max_chunk,
        16 * MIB,
        "the fast tier's chunk (30–200 Mbit/s)"
    );
    assert!(
        j.checkpoints >= j.chunk_requests / 10 - 1,
        "a checkpoint every 10 acks"
    );
}

#[test]
fn many_small_files_go_in_parallel() {
    // A photogrammetry capture: 300 photos of 512 KiB through 100 Mbit/s, 50 ms.
    let link = Link::new(100.0, 50);
    let changes = (0..300).map(|i| (Time::ZERO, add(i, 512 * 1024))).collect();
    let r = run(scenario(link.clone(), changes));
    let u = utilisation(&r, &link);
    println!("300 x 512 KiB: {:.1} % of line", u * 100.0);
    assert!(u >= 0.8, "utilisation {u}");
    assert!(r.max_streams > 1);
}

#[test]
fn tiers_follow_the_link() {
    for (mbit, chunk) in [
        (2.0, MIB),
        (10.0, 4 * MIB),
        (100.0, 16 * MIB),
        (800.0, 32 * MIB),
    ] {
        let link = Link::new(mbit, 40);
        let size = ((mbit * 1e6 / 8.0) * 60.0) as u64; // a minute's worth
        let r = run(scenario(link, vec![(Time::ZERO, add(1, size))]));
        assert_eq!(r.jobs[&1].max_chunk, chunk, "at {mbit} Mbit/s");
    }
}

#[test]
fn memory_pressure_shrinks_the_pool_but_never_stops_the_upload() {
    let link = Link::new(200.0, 20);
    let changes = vec![
        (Time::ZERO, Change::MemoryAvailable(30_000_000)),
        (Time::ZERO, add(1, 2 * GIB)),
    ];
    let r = run(scenario(link, changes));
    println!(
        "at 2 buffers: max streams {}, max buffers {}",
        r.max_streams, r.max_buffers_held
    );
    assert!(r.max_buffers_held <= 2);
    assert!(r.max_streams <= 2);
}

#[test]
fn a_blackhole_is_survived() {
    let link = Link::new(100.0, 50);
    let changes = vec![
        (Time::ZERO, add(1, GIB)),
        (secs(20.0), Change::Blackhole(true)),
        (secs(50.0), Change::Blackhole(false)),
    ];
    let r = run(scenario(link, changes));
    assert!(r.jobs[&1].retries > 0);
}

#[test]
fn a_lost_session_is_recreated_and_the_upload_finishes() {
    let link = Link::new(50.0, 30);
    let changes = vec![
        (Time::ZERO, add(1, GIB)),
        (secs(30.0), Change::ServerForgets(1)),
    ];
    let r = run(scenario(link, changes));
    assert!(r.jobs[&1].completed_at.is_some());
}

#[test]
fn compressible_files_put_fewer_bytes_on_the_wire() {
    let link = Link::new(100.0, 20);
    let mut changes = vec![(Time::ZERO, add(1, 512 * MIB))];
    changes.push((
        Time::ZERO,
        Change::AddJob {
            job: 2,
            spec: JobSpec {
                size: 512 * MIB,
                priority: 0,
                has_session: false,
                growing: false,
            },
            stored: vec![],
            saving: 0.6,
        },
    ));
    let r = run(scenario(link, changes));
    let (raw, packed) = (&r.jobs[&1], &r.jobs[&2]);
    println!(
        "wire bytes: incompressible {} MiB, 60 % compressible {} MiB",
        raw.wire_bytes / MIB,
        packed.wire_bytes / MIB
    );
    assert!(raw.wire_bytes >= 512 * MIB);
    assert!(packed.wire_bytes < 300 * MIB);
}

#[test]
fn higher_priority_goes_first() {
    let link = Link::new(50.0, 30);
    let mut changes: Vec<(Time, Change)> = (0..40).map(|i| (Time::ZERO, add(i, 2 * MIB))).collect();
    changes.push((
        Time::ZERO,
        Change::AddJob {
            job: 99,
            spec: JobSpec {
                size: 2 * MIB,
                priority: 9,
                has_session: false,
                growing: false,
            },
            stored: vec![],
            saving: 0.0,
        },
    ));
    let mut sc = scenario(link, changes);
    sc.config.max_active_jobs = 4;
    let r = run(sc);
    let urgent = r.jobs[&99].completed_at.unwrap();
    let later = r
        .jobs
        .values()
        .filter(|j| j.completed_at.unwrap() < urgent)
        .count();
    assert!(later <= 4, "{later} jobs finished before the urgent one");
}

#[test]
fn a_100_gb_upload_resumes_from_scattered_server_ranges() {
    // Resume: the server holds 60 % of a 100 GB file in 2,000 scattered ranges. The engine
    // asks (one state answer of ranges, not of chunks) and sends only the rest.
    let size = 100_000_000_000u64;
    let mut stored = Vec::new();
    let step = size / 2_000;
    for i in 0..2_000 {
        stored.push(i * step..i * step + step * 6 / 10);
    }
    let link = Link::new(1000.0, 10);
    let changes = vec![(
        Time::ZERO,
        Change::AddJob {
            job: 1,
            spec: JobSpec {
                size,
                priority: 0,
                has_session: true,
                growing: false,
            },
            stored,
            saving: 0.0,
        },
    )];
    let started = std::time::Instant::now();
    let r = run(scenario(link, changes));
    let j = &r.jobs[&1];
    println!(
        "100 GB resume: {} GB sent in {:.0} virtual s, {} requests; {:.2} s of CPU",
        j.wire_bytes / 1_000_000_000,
        j.completed_at.unwrap().as_secs_f64(),
        j.chunk_requests,
        started.elapsed().as_secs_f64()
    );
    assert!(
        j.wire_bytes <= size * 41 / 100,
        "only what the server lacked"
    );
}

#[test]
fn a_100_gb_upload_over_a_flaky_5_mbit_link() {
    let mut link = Link::new(5.0, 80);
    link.loss_per_mib = 0.002;
    let mut changes = vec![(Time::ZERO, add(1, 100_000_000_000))];
    // A blackhole every ~6 hours, and the rate wandering between 2 and 8 Mbit/s.
    for h in 0..48u64 {
        let t = secs(h as f64 * 3600.0);
        let mut l = link.clone();
        l.rate = (2.0 + (h % 7) as f64) * 1e6 / 8.0;
        changes.push((t, Change::Link(l)));
        if h % 6 == 3 {
            changes.push((t, Change::Blackhole(true)));
            changes.push((t + Duration::from_secs(90), Change::Blackhole(false)));
        }
    }
    let started = std::time::Instant::now();
    let r = run(scenario(link, changes));
    let j = &r.jobs[&1];
    println!(
        "100 GB at ~5 Mbit/s: {:.1} virtual hours, {} requests, {} retries; {:.2} s of CPU, {} steps",
        j.completed_at.unwrap().as_secs_f64() / 3600.0,
        j.chunk_requests,
        j.retries,
        started.elapsed().as_secs_f64(),
        r.steps
    );
}

/// Hundreds of random worlds: link speed from a modem to a datacenter, RTT, loss, memory
/// pressure, blackholes, a server that forgets sessions, cancels, resumes from scattered
/// server ranges, many jobs of mixed sizes. In every one the simulator checks the
/// engine's promises as it goes (nothing acknowledged twice, nothing sent unread, no
/// completion before every byte is stored, streams and buffers within their limits), and
/// every job ends: completed, or cancelled when the scenario cancelled it. Network
/// trouble never fails a job.
#[test]
fn random_worlds_keep_every_promise_and_every_job_ends() {
    use uplink_engine::rng::Rng;
    const WORLDS: u64 = 2000;
    let mut changes_total = 0usize;
    for seed in 0..WORLDS {
        let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9) + 11);
        let mbit = [0.5, 2.0, 8.0, 40.0, 150.0, 600.0][rng.between(0, 5) as usize];
        let mut link = Link::new(mbit, rng.between(2, 400));
        link.loss_per_mib = [0.0, 0.0, 0.001, 0.01, 0.05][rng.between(0, 4) as usize];
        // A minute's worth of the link, spread over up to 12 jobs.
        let budget = ((mbit * 1e6 / 8.0) * 60.0) as u64;
        let jobs = rng.between(1, 12);
        let mut changes = Vec::new();
        for job in 0..jobs {
            let size = rng.between(1, (budget / jobs).max(2));
            let at = secs(rng.between(0, 20) as f64);
            let resume = size > 4 * MIB && rng.between(0, 3) == 0;
            let stored = if resume {
                // A few scattered ranges the server already holds.
                (0..rng.between(1, 4))
                    .map(|_| {
                        let a = rng.between(0, size - 1);
                        a..(a + rng.between(1, MIB)).min(size)
                    })
                    .collect()
            } else {
                vec![]
            };
            changes.push((
                at,
                Change::AddJob {
                    job,
                    spec: JobSpec {
                        size,
                        priority: rng.between(0, 2) as u8,
                        has_session: resume,
                        growing: false,
                    },
                    stored,
                    saving: [0.0, 0.05, 0.5][rng.between(0, 2) as usize],
                },
            ));
            if rng.between(0, 9) == 0 {
                changes.push((secs(rng.between(1, 60) as f64), Change::Cancel(job)));
            }
            if rng.between(0, 9) == 0 {
                changes.push((secs(rng.between(1, 60) as f64), Change::ServerForgets(job)));
            }
        }
        if rng.between(0, 3) == 0 {
            let from = rng.between(1, 40) as f64;
            changes.push((secs(from), Change::Blackhole(true)));
            changes.push((
                secs(from + rng.between(1, 45) as f64),
                Change::Blackhole(false),
            ));
        }
        if rng.between(0, 3) == 0 {
            let mb = [20u64, 80, 150, 4000][rng.between(0, 3) as usize];
            changes.push((
                secs(rng.between(0, 30) as f64),
                Change::MemoryAvailable(mb * 1_000_000),
            ));
        }
        if rng.between(0, 3) == 0 {
            let other = [1.0, 20.0, 300.0][rng.between(0, 2) as usize];
            changes.push((
                secs(rng.between(1, 40) as f64),
                Change::Link(Link::new(other, rng.between(5, 200))),
            ));
        }
        changes.sort_by_key(|(t, _)| *t);
        changes_total += changes.len();
        let sc = Scenario {
            link,
            config: Config::default(),
            changes,
            read_rate: 2e9,
            time_limit: secs(7.0 * 24.0 * 3600.0),
            seed,
        };
        let r = Sim::new(sc.clone()).run();
        for (id, j) in &r.jobs {
            assert!(
                j.completed_at.is_some() || j.cancelled,
                "world {seed}: job {id} did not end by {:?} ({} steps): {j:?}\nall: {:?}\nscenario: {sc:?}",
                r.end,
                r.steps,
                r.jobs
                    .iter()
                    .map(|(i, j)| (*i, j.completed_at, j.cancelled, j.wire_bytes))
                    .collect::<Vec<_>>()
            );
            assert!(
                j.failed.is_none() || j.cancelled,
                "world {seed}: job {id} failed for network trouble: {:?}",
                j.failed
            );
        }
    }
    println!("{WORLDS} random worlds, {changes_total} scripted changes: every job ended");
}
