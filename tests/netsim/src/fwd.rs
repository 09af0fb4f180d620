//! The per-direction forwarding loop: read IP packets from one TUN device, impair them and write
//! them to the other at their delivery time.
//!
//! One thread per direction. Everything the per-packet path touches is allocated before the loop
//! starts: a slab of fixed-size packet buffers, a free list and a deadline-ordered heap, both with
//! capacity for every slab slot, so neither ever grows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Impair;

/// Counters of one direction (monotonic, relaxed atomics).
#[derive(Default, Debug)]
pub(crate) struct DirCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub drop_loss: AtomicU64,
    pub drop_queue: AtomicU64,
    pub drop_blackhole: AtomicU64,
    pub drop_udp: AtomicU64,
    pub drop_link: AtomicU64,
    pub drop_pool: AtomicU64,
    pub write_errors: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Packets/bytes read from the sending side's TUN.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Packets/bytes written to the receiving side's TUN.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Dropped by random or burst loss.
    pub drop_loss: u64,
    /// Tail-dropped because the rate limiter's queue was full.
    pub drop_queue: u64,
    pub drop_blackhole: u64,
    pub drop_udp: u64,
    /// Dropped because the path's link was down.
    pub drop_link: u64,
    /// Dropped because every packet buffer was in flight (raise `SimOpts::slots`).
    pub drop_pool: u64,
    pub write_errors: u64,
}

impl DirCounters {
    pub fn snapshot(&self) -> DirStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DirStats {
            rx_packets: l(&self.rx_packets),
            rx_bytes: l(&self.rx_bytes),
            tx_packets: l(&self.tx_packets),
            tx_bytes: l(&self.tx_bytes),
            drop_loss: l(&self.drop_loss),
            drop_queue: l(&self.drop_queue),
            drop_blackhole: l(&self.drop_blackhole),
            drop_udp: l(&self.drop_udp),
            drop_link: l(&self.drop_link),
            drop_pool: l(&self.drop_pool),
            write_errors: l(&self.write_errors),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// State shared between a direction's thread and the controller.
#[derive(Debug)]
pub(crate) struct DirShared {
    /// Bumped after every change of `cfg`; the forwarder re-reads `cfg` when it moves.
    pub generation: AtomicU64,
    pub cfg: Mutex<Impair>,
    pub counters: DirCounters,
}

impl DirShared {
    pub fn new(cfg: Impair) -> DirShared {
        DirShared {
            generation: AtomicU64::new(0),
            cfg: Mutex::new(cfg),
            counters: DirCounters::default(),
        }
    }

    pub fn get(&self) -> Impair {
        match self.cfg.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut Impair)) {
        let mut g = match self.cfg.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Everything one forwarding thread needs.
pub(crate) struct DirTask {
    pub input: File,
    pub output: File,
    pub shared: Arc<DirShared>,
    /// The path's link state (false = down: drop everything).
    pub link_up: Arc<AtomicBool>,
    /// Read end of the stop pipe; readable or hung up = stop.
    pub stop: Arc<OwnedFd>,
    pub slots: usize,
    pub mtu: u32,
    pub seed: u64,
}

/// SplitMix64: tiny, fast, good enough for impairment dice.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.next_f64() < p)
    }
}

/// True if the IP packet carries UDP (IPv4 any fragment, IPv6 after common extension headers).
pub(crate) fn is_udp(pkt: &[u8]) -> bool {
    const UDP: u8 = 17;
    match pkt.first().map(|b| b >> 4) {
        Some(4) => pkt.get(9) == Some(&UDP),
        Some(6) => {
            let mut next = match pkt.get(6) {
                Some(n) => *n,
                None => return false,
            };
            let mut off = 40usize;
            for _ in 0..8 {
                match next {
                    UDP => return true,
                    // Hop-by-hop, routing, destination options: length in 8-byte units.
                    0 | 43 | 60 => {
                        let (Some(n), Some(len)) = (pkt.get(off), pkt.get(off + 1)) else {
                            return false;
                        };
                        next = *n;
                        off += (usize::from(*len) + 1) * 8;
                    }
                    // Fragment header: fixed 8 bytes.
                    44 => {
                        let Some(n) = pkt.get(off) else { return false };
                        next = *n;
                        off += 8;
                    }
                    _ => return false,
                }
            }
            false
        }
        _ => false,
    }
}

/// The impairment pipeline's state for one direction (no I/O, so it can be unit-tested).
pub(crate) struct Shaper {
    cfg: Impair,
    mtu: u32,
    queue_limit: u64,
    rng: Rng,
    ge_bad: bool,
    /// When the bottleneck finishes sending everything accepted so far (ns since start).
    link_free_at: u64,
    /// Latest delivery time handed out (FIFO mode keeps delivery times monotonic).
    last_delivery: u64,
}

/// What to do with a packet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Deliver(u64),
    DropLoss,
    DropQueue,
    DropBlackhole,
    DropUdp,
}

impl Shaper {
    pub fn new(cfg: Impair, mtu: u32, seed: u64) -> Shaper {
        Shaper {
            cfg,
            mtu,
            queue_limit: cfg.queue_limit_bytes(mtu),
            rng: Rng(seed),
            ge_bad: false,
            link_free_at: 0,
            last_delivery: 0,
        }
    }

    pub fn set_cfg(&mut self, cfg: Impair) {
        self.cfg = cfg;
        self.queue_limit = cfg.queue_limit_bytes(self.mtu);
        if cfg.burst.is_none() {
            self.ge_bad = false;
        }
    }

    /// Decide the fate of a packet of `len` bytes arriving at `now` (ns).
    pub fn shape(&mut self, pkt: &[u8], now: u64) -> Verdict {
        let cfg = &self.cfg;
        if cfg.blackhole {
            return Verdict::DropBlackhole;
        }
        if cfg.drop_udp && is_udp(pkt) {
            return Verdict::DropUdp;
        }
        let len = pkt.len() as u64;
        // Bottleneck: serialise at the configured rate behind a bounded queue.
        let depart = if cfg.rate_bps > 0 {
            let backlog_ns = self.link_free_at.saturating_sub(now);
            let backlog_bytes =
                (u128::from(backlog_ns) * u128::from(cfg.rate_bps) / 8_000_000_000) as u64;
            if backlog_bytes + len > self.queue_limit {
                return Verdict::DropQueue;
            }
            let tx_ns = (u128::from(len) * 8_000_000_000 / u128::from(cfg.rate_bps)) as u64;
            self.link_free_at = self.link_free_at.max(now) + tx_ns;
            self.link_free_at
        } else {
            now
        };
        // Loss happens on the "air", after the packet used its share of the link.
        if let Some(b) = cfg.burst {
            let flip = if self.ge_bad { b.p_exit } else { b.p_enter };
            if self.rng.chance(flip) {
                self.ge_bad = !self.ge_bad;
            }
            let p = if self.ge_bad { b.loss_bad } else { b.loss_good };
            if self.rng.chance(p) {
                return Verdict::DropLoss;
            }
        }
        if self.rng.chance(cfg.loss) {
            return Verdict::DropLoss;
        }
        let delay = cfg.delay.as_nanos() as i128;
        let jitter = cfg.jitter.as_nanos() as i128;
        let offset = if jitter > 0 {
            ((self.rng.next_f64() * 2.0 - 1.0) * jitter as f64) as i128
        } else {
            0
        };
        let mut at = (i128::from(depart) + (delay + offset).max(0)) as u64;
        if !cfg.reorder {
            at = at.max(self.last_delivery);
        }
        self.last_delivery = self.last_delivery.max(at);
        Verdict::Deliver(at)
    }
}

/// Run one direction until the stop pipe fires.
pub(crate) fn run(task: DirTask) {
    set_timer_slack();
    let DirTask {
        input,
        output,
        shared,
        link_up,
        stop,
        slots,
        mtu,
        seed,
    } = task;
    // Buffers hold one packet each; a TUN read never returns more than the MTU (no GSO).
    let slot_size = (mtu as usize + 64).next_multiple_of(64);
    let slots = slots.clamp(16, u32::MAX as usize);
    let mut slab = vec![0u8; slots * slot_size];
    let mut scratch = vec![0u8; slot_size];
    let mut free: Vec<u32> = (0..slots as u32).rev().collect();
    // (delivery time ns, sequence, slot, length) — min-heap by time, FIFO among equal times.
    let mut heap: BinaryHeap<Reverse<(u64, u64, u32, u32)>> = BinaryHeap::with_capacity(slots);
    let mut seq: u64 = 0;
    let mut seen_gen = shared.generation.load(Ordering::Acquire);
    let mut shaper = Shaper::new(shared.get(), mtu, seed);
    let c = &shared.counters;
    let start = Instant::now();
    let now_ns = || start.elapsed().as_nanos() as u64;
    let mut fds = [
        libc::pollfd {
            fd: input.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let mut consecutive_errors = 0u32;
    loop {
        // 1. Deliver everything that is due.
        let now = now_ns();
        while let Some(Reverse((at, _, slot, len))) = heap.peek().copied() {
            if at > now {
                break;
            }
            heap.pop();
            let off = slot as usize * slot_size;
            let pkt = &slab[off..off + len as usize];
            match (&output).write(pkt) {
                Ok(_) => {
                    bump(&c.tx_packets, 1);
                    bump(&c.tx_bytes, u64::from(len));
                }
                Err(_) => bump(&c.write_errors, 1),
            }
            free.push(slot);
        }
        // 2. Sleep until input arrives, the next delivery is due, or we are told to stop.
        let timeout = heap.peek().map(|Reverse((at, ..))| {
            let ns = at.saturating_sub(now_ns());
            libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            }
        });
        let tp = match &timeout {
            Some(t) => t as *const libc::timespec,
            None => std::ptr::null(),
        };
        fds[0].revents = 0;
        fds[1].revents = 0;
        // SAFETY: `fds` is a valid array of 2 pollfd that outlives the call; `tp` is null or
        // points to `timeout`, which lives until after the call; the sigmask is null.
        let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, tp, std::ptr::null()) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            // The device went away (namespace deleted). Wait for the stop signal without spinning.
            std::thread::sleep(Duration::from_millis(20));
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        // 3. Read a batch of packets and schedule them.
        if shared.generation.load(Ordering::Acquire) != seen_gen {
            seen_gen = shared.generation.load(Ordering::Acquire);
            shaper.set_cfg(shared.get());
        }
        for _ in 0..64 {
            let slot = free.pop();
            let buf = match slot {
                Some(s) => {
                    let off = s as usize * slot_size;
                    &mut slab[off..off + slot_size]
                }
                None => &mut scratch[..],
            };
            let n = match (&input).read(buf) {
                Ok(0) => {
                    if let Some(s) = slot {
                        free.push(s);
                    }
                    break;
                }
                Ok(n) => {
                    consecutive_errors = 0;
                    n
                }
                Err(e) => {
                    if let Some(s) = slot {
                        free.push(s);
                    }
                    if e.kind() != io::ErrorKind::WouldBlock
                        && e.kind() != io::ErrorKind::Interrupted
                    {
                        consecutive_errors += 1;
                        if consecutive_errors > 3 {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    break;
                }
            };
            bump(&c.rx_packets, 1);
            bump(&c.rx_bytes, n as u64);
            let Some(slot) = slot else {
                bump(&c.drop_pool, 1);
                continue;
            };
            if !link_up.load(Ordering::Relaxed) {
                bump(&c.drop_link, 1);
                free.push(slot);
                continue;
            }
            let off = slot as usize * slot_size;
            match shaper.shape(&slab[off..off + n], now_ns()) {
                Verdict::Deliver(at) => {
                    seq += 1;
                    heap.push(Reverse((at, seq, slot, n as u32)));
                }
                v => {
                    let ctr = match v {
                        Verdict::DropLoss => &c.drop_loss,
                        Verdict::DropQueue => &c.drop_queue,
                        Verdict::DropBlackhole => &c.drop_blackhole,
                        _ => &c.drop_udp,
                    };
                    bump(ctr, 1);
                    free.push(slot);
                }
            }
        }
    }
}

fn set_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and only affects this thread's
    // timer slack; no pointers are passed.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BurstLoss, Queue};

    fn udp4() -> Vec<u8> {
        let mut p = vec![0u8; 100];
        p[0] = 0x45;
        p[9] = 17;
        p
    }

    #[test]
    fn detects_udp() {
        assert!(is_udp(&udp4()));
        let mut tcp = udp4();
        tcp[9] = 6;
        assert!(!is_udp(&tcp));
        let mut v6 = vec![0u8; 120];
        v6[0] = 0x60;
        v6[6] = 0; // hop-by-hop
        v6[40] = 17;
        v6[41] = 0;
        assert!(is_udp(&v6));
        assert!(!is_udp(&[]));
    }

    #[test]
    fn rate_and_queue() {
        // 8 Mbit/s = 1 byte/us; 1000-byte packets take 1 ms each; queue 3000 bytes.
        let cfg = Impair::default()
            .rate_bps(8_000_000)
            .queue(Queue::Bytes(3000));
        let mut s = Shaper::new(cfg, 1000, 1);
        let p = vec![0u8; 1000];
        let mut delivered = 0;
        let mut last = 0;
        for _ in 0..10 {
            match s.shape(&p, 0) {
                Verdict::Deliver(at) => {
                    delivered += 1;
                    last = at;
                }
                Verdict::DropQueue => {}
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(delivered, 3);
        assert_eq!(last, 3_000_000);
    }

    #[test]
    fn delay_fifo_and_loss() {
        let cfg = Impair::default()
            .delay(Duration::from_millis(10))
            .jitter(Duration::from_millis(5));
        let mut s = Shaper::new(cfg, 1500, 7);
        let p = udp4();
        let mut prev = 0;
        for i in 0..1000u64 {
            let Verdict::Deliver(at) = s.shape(&p, i * 1000) else {
                panic!()
            };
            assert!(at >= prev, "FIFO");
            assert!(at >= i * 1000 + 5_000_000 && at <= i * 1000 + 15_000_000 + 1_000_000);
            prev = at;
        }
        s.set_cfg(Impair::default().loss(0.25));
        let lost = (0..100_000)
            .filter(|_| s.shape(&p, 0) == Verdict::DropLoss)
            .count();
        assert!((24_000..26_000).contains(&lost), "{lost}");
        let b = BurstLoss {
            p_enter: 0.01,
            p_exit: 0.3,
            loss_bad: 1.0,
            loss_good: 0.0,
        };
        s.set_cfg(Impair::default().burst(Some(b)));
        let lost = (0..200_000)
            .filter(|_| s.shape(&p, 0) == Verdict::DropLoss)
            .count() as f64
            / 200_000.0;
        assert!((lost - b.mean_loss()).abs() < 0.005, "{lost}");
        s.set_cfg(Impair::default().drop_udp(true));
        assert_eq!(s.shape(&p, 0), Verdict::DropUdp);
    }
}
