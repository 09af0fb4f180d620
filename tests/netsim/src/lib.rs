//! netsim — a packet-level network emulator for uplink's tests and benchmarks.
//!
//! Two network namespaces, `NAME-c` (client) and `NAME-s` (server), joined by two independent
//! paths (think Wi-Fi and cellular). Each path is a pair of TUN devices whose packets are
//! forwarded in user space by this crate, with per-direction delay, jitter, loss (random or
//! Gilbert-Elliott bursts), a rate limit behind a bounded tail-drop queue, a blackhole and
//! "drop UDP only". Everything can be changed while traffic flows.
//!
//! ```no_run
//! use netsim::{Sim, SimOpts, Impair, PathSel, DirSel, addr};
//! use std::time::Duration;
//! let sim = Sim::up("demo", SimOpts::symmetric(Impair::default().delay(Duration::from_millis(25))))?;
//! let listener = sim.in_server(|| std::net::TcpListener::bind((addr::SERVICE_V4, 8443)))??;
//! sim.blackhole(PathSel::P1, true);          // radio silence on path 1
//! sim.set_link(PathSel::P1, false)?;         // client loses "Wi-Fi": traffic moves to path 2
//! sim.set(PathSel::All, DirSel::Up, |i| i.rate_bps = 10_000_000);
//! # drop(listener);
//! # Ok::<(), anyhow::Error>(())
//! ```
//! See README.md for addresses and the CLI.

pub mod config;
mod fwd;
mod netns;
pub mod probe;
mod sim;
mod sys;

pub use config::{BurstLoss, Change, DirSel, Impair, PathSel, Queue};
pub use fwd::DirStats;
pub use netns::{
    RUN_DIR, check_name, cleanup, client_ns, control, ctl_path, log_path, pid_path, run_in_ns,
    server_ns, spawn_in_ns, tmp_ifnames,
};
pub use sim::{ShutdownHook, Sim, SimOpts};
pub use sys::{block_term_signals, process_alive, terminate_self, wait_for_signal};

/// Addresses inside the namespaces (they exist nowhere else).
///
/// | | path 1 (`sim1`) | path 2 (`sim2`) |
/// |---|---|---|
/// | client (`NAME-c`) | 10.77.1.1, fd00:77:1::1 | 10.77.2.1, fd00:77:2::1 |
/// | server (`NAME-s`) | 10.77.1.2, fd00:77:1::2 | 10.77.2.2, fd00:77:2::2 |
///
/// The server also owns the *service address* 10.77.0.2 / fd00:77::2 (on its `lo`), which the
/// client reaches via path 1 (route metric 100) or, when path 1's link is down, via path 2
/// (metric 200) — the address a handover test should connect to.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const CLIENT_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 77, 1, 1), Ipv4Addr::new(10, 77, 2, 1)];
    pub const SERVER_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 77, 1, 2), Ipv4Addr::new(10, 77, 2, 2)];
    pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    pub const CLIENT_V6: [Ipv6Addr; 2] = [
        Ipv6Addr::new(0xfd00, 0x77, 1, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0xfd00, 0x77, 2, 0, 0, 0, 0, 1),
    ];
    pub const SERVER_V6: [Ipv6Addr; 2] = [
        Ipv6Addr::new(0xfd00, 0x77, 1, 0, 0, 0, 0, 2),
        Ipv6Addr::new(0xfd00, 0x77, 2, 0, 0, 0, 0, 2),
    ];
    pub const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);
    /// Interface names of path 1 and 2 inside both namespaces.
    pub const IFACE: [&str; 2] = ["sim1", "sim2"];
}
