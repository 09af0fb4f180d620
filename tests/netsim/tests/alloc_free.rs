//! The per-packet path never allocates: a counting global allocator watches the forwarder
//! threads (found by name via /proc) while impaired traffic flows and settings change live.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use common::{ms, up, wait_until};
use netsim::probe::{TcpSink, TcpSource, udp_blast};
use netsim::{DirSel, Impair, PathSel, SimOpts, addr};

static WATCHED: [AtomicI32; 8] = [const { AtomicI32::new(0) }; 8];
static ALLOCS: AtomicU64 = AtomicU64::new(0);

struct Counting;

fn watched() -> bool {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    WATCHED.iter().any(|t| t.load(Ordering::Relaxed) == tid)
}

// SAFETY: every method forwards to the system allocator unchanged; the bookkeeping only
// touches atomics and makes no allocation itself.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if watched() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if watched() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn forwarder_tids() -> Vec<i32> {
    let mut v = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("netsim-p") {
            v.push(t.file_name().to_string_lossy().parse().unwrap());
        }
    }
    v
}

#[test]
fn forwarding_path_does_not_allocate() {
    let sim = up(
        "nt-alloc",
        SimOpts::symmetric(
            Impair::default()
                .delay(ms(5))
                .jitter(ms(2))
                .loss(0.01)
                .rate_bps(100_000_000),
        )
        .path2(Impair::default().reorder(true).jitter(ms(3)).drop_udp(true)),
    );
    // Give the threads a moment to name themselves and finish their one-time setup (buffers
    // are allocated before the loop starts), then start counting.
    let mut tids = Vec::new();
    assert!(wait_until(Duration::from_secs(3), || {
        tids = forwarder_tids();
        tids.len() == 4
    }));
    std::thread::sleep(ms(100));
    for (slot, t) in WATCHED.iter().zip(&tids) {
        slot.store(*t, Ordering::Relaxed);
    }
    let sink = TcpSink::start(&sim, addr::SERVER_V4[0].into(), 0).unwrap();
    let src = TcpSource::start(
        &sim,
        sink.addr(),
        Duration::from_secs(3),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || sink.total() > 2_000_000));
    sim.apply("path=1 dir=up burst-loss=1%:30% queue=20p")
        .unwrap();
    sim.blackhole(PathSel::P1, true);
    std::thread::sleep(ms(200));
    sim.blackhole(PathSel::P1, false);
    let s2 = TcpSink::start(&sim, addr::SERVER_V4[1].into(), 0).unwrap();
    let src2 = TcpSource::start(
        &sim,
        s2.addr(),
        Duration::from_secs(3),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || s2.total() > 1_000_000));
    let b = udp_blast(
        &sim,
        SocketAddr::new(addr::SERVER_V4[1].into(), 7100),
        2000,
        200,
        100,
        ms(1),
        Duration::from_secs(5),
        ms(100),
    )
    .unwrap();
    assert_eq!(b.received, 0, "path 2 drops UDP");
    drop((src, src2));
    let fwd = sim.stats(PathSel::All, DirSel::Both).tx_packets;
    for slot in &WATCHED {
        slot.store(0, Ordering::Relaxed);
    }
    assert!(fwd > 2000, "traffic flowed: {fwd}");
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        0,
        "allocations on the forwarding threads"
    );
}
