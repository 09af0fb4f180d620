//! Twenty `kill -9`s of `uplinkd` at random moments during one 1 GiB upload: after each
//! restart the daemon goes on from what it and the server hold, and the file arrives
//! intact with at most the chunks in flight plus those acknowledged since the last
//! checkpoint re-sent per crash.

use std::time::{Duration, Instant};

use netsim::{Impair, Sim, SimOpts};
use uplink_e2e::*;

const GIB: u64 = 1 << 30;
const KILLS: u64 = 20;
/// Per crash: the requests in flight (12 streams) and the acknowledgements after the last
/// checkpoint (10).
const RESENT_PER_CRASH: u64 = 12 + 10;

/// A small deterministic generator: the seed is printed, so a failing run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

#[test]
fn twenty_kill_9s_during_one_upload_and_it_arrives_intact() {
    // 200 Mbit/s: 1 GiB takes over 40 s, so twenty crashes fall inside the upload.
    let imp = Impair::default()
        .delay(Duration::from_millis(5))
        .rate_bps(200_000_000);
    let sim = Sim::up("e2e-crash", SimOpts::symmetric(imp)).expect("netsim");
    let dir = workdir();
    let server = Server::start_in(dir.path(), &sim);
    let ns = sim.client_ns();
    let start = || {
        Daemon::start_cmd(
            dir.path(),
            Daemon::command_in(dir.path(), &server, Some(&ns)),
        )
    };
    let file = dir.path().join("capture.bin");
    random_file(&file, GIB);
    let local_sha = sha256_file(&file);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("kill schedule seed {seed}");
    let mut rng = Lcg(seed);

    let mut daemon = start();
    let job = enqueue(&daemon.socket, &file);
    let t0 = Instant::now();
    let mut kills = 0;
    while kills < KILLS && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(rng.next_ms(200, 1200)));
        let record = job_record(&daemon.socket, &job);
        if record.as_ref().is_some_and(|r| r["state"] == "completed") {
            break;
        }
        daemon.proc.kill9();
        kills += 1;
        daemon = start();
    }
    let record = wait_done(&daemon.socket, &job);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["server_sha256"], local_sha.as_str());
    assert_eq!(sha256_file(&server.object("capture.bin")), local_sha);
    assert!(
        kills >= KILLS / 2,
        "only {kills} crashes fell inside the upload"
    );
    let resent = record["chunks_resent"].as_u64().unwrap_or(0);
    let acked = record["chunks_acked"].as_u64().unwrap_or(0);
    eprintln!("{kills} crashes: {acked} chunks, {resent} re-sent");
    assert!(
        resent <= kills * RESENT_PER_CRASH,
        "{resent} chunks re-sent over {kills} crashes"
    );
}
