//! The core allocates nothing per chunk once an upload is under way: a counting global
//! allocator watches a 64 GiB job on a 1 Gbit/s link after its first thousand chunks.
//! Only the test's own thread counts: the harness's other threads may allocate while it
//! runs (seen once on a loaded machine), and those are not the engine's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use uplink_engine::{Action, Config, Engine, Event, JobSpec, ReqId, Time};

struct Counting;

thread_local! {
    /// Set on the test's thread for the measured window (a const thread-local: reading
    /// it allocates nothing, so the allocator may).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// relaxed atomic and allocates nothing itself.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout` (see above).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const GIB: u64 = 1 << 30;
const RATE_BYTES_PER_SEC: u64 = 125_000_000;

#[test]
fn the_steady_state_allocates_nothing_per_chunk() {
    let mut e = Engine::new(Config::default(), 11);
    e.handle(
        Time::ZERO,
        Event::JobAdded {
            job: 1,
            spec: JobSpec {
                size: 64 * GIB,
                priority: 0,
                has_session: false,
                growing: false,
            },
        },
    );
    // The link: requests finish in order, each after its bytes crossed at 1 Gbit/s plus
    // a 20 ms round trip. Preallocated, so the harness allocates nothing either.
    let mut in_flight: VecDeque<(ReqId, Time)> = VecDeque::with_capacity(64);
    let mut link_free = Time::ZERO;
    let mut now = Time::ZERO;
    let (mut acked, mut counted_chunks) = (0u64, 0u64);
    let warm_up = 1_000;
    for _ in 0..10_000_000 {
        if acked == warm_up && !counting() {
            COUNTING.set(true);
        }
        if acked >= warm_up + 1_000 {
            break;
        }
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
            Some(Action::PutChunk { req, len, .. }) => {
                let start = link_free.max(now);
                let wire = Duration::from_nanos(len * 1_000_000_000 / RATE_BYTES_PER_SEC);
                link_free = start + wire;
                in_flight.push_back((req, link_free + Duration::from_millis(20)));
            }
            Some(Action::JobFailed { code, message, .. }) => panic!("{code}: {message}"),
            Some(Action::Retrying { why, .. }) => panic!("nothing fails on this link: {why}"),
            Some(_) => {}
            None => {
                let wake = e.poll_timeout();
                match in_flight.front().copied() {
                    Some((req, done)) if wake.is_none_or(|w| done <= w) => {
                        in_flight.pop_front();
                        now = now.max(done);
                        e.handle(now, Event::RequestDone { req });
                        acked += 1;
                        if counting() {
                            counted_chunks += 1;
                        }
                    }
                    _ => {
                        now = wake.expect("the engine waits for a request or a timer");
                        e.handle_timeout(now);
                    }
                }
            }
        }
    }
    COUNTING.set(false);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    eprintln!("{allocations} allocations over {counted_chunks} acknowledged chunks");
    assert_eq!(
        counted_chunks, 1_000,
        "the job ran to the end of the window"
    );
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations over {counted_chunks} chunks in the steady state"
    );
}
