//! Thin wrappers over the few OS calls that need `unsafe`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result, bail};

/// Create a TUN device (IFF_TUN | IFF_NO_PI, non-blocking fd) named `name` in the current
/// network namespace. The device lives as long as the returned file.
pub fn create_tun(name: &str) -> Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} must be 1..=15 bytes");
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .context(
            "cannot open /dev/net/tun (netsim needs the tun module and root / CAP_NET_ADMIN)",
        )?;
    // SAFETY: ifreq is a plain C struct (arrays and a union of integers/pointers) for which the
    // all-zero bit pattern is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a valid, initialised
    // ifreq that outlives the call, and the fd is an open /dev/net/tun file.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("TUNSETIFF {name}"));
    }
    Ok(file)
}

/// Move the calling thread into the network namespace named `ns` (from `ip netns add`).
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns takes an fd we own (valid for the call) and a constant; it changes only
    // the calling thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setns into {ns}"));
    }
    Ok(())
}

/// A pipe whose write end is dropped to tell every poller of the read end to stop.
pub fn stop_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the 2-element array we pass.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if r < 0 {
        return Err(io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both fds were just returned by pipe2 and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((r, w))
}

/// Wait up to `timeout_ms` for `fd` to become readable (or hung up). Returns true if it did.
pub fn poll_readable(fds: &[&dyn AsRawFd], timeout_ms: i32) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs alive during the call.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if r <= 0 {
        return vec![false; fds.len()];
    }
    pfds.iter().map(|p| p.revents != 0).collect()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Send `sig` to `pid`. Returns false if the process does not exist.
pub fn kill(pid: i32, sig: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill takes two integers; pid > 0 so it targets exactly one process.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// True if `pid` exists and at least one of its threads has not exited yet (a zombie group
/// leader whose other threads still run counts as alive: it still holds its fds).
pub fn process_alive(pid: i32) -> bool {
    if !kill(pid, 0) {
        return false;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            })
            .unwrap_or(false)
    })
}

/// Block SIGTERM, SIGINT and SIGHUP in the calling thread (and threads it spawns later), so
/// `wait_for_signal` can receive them synchronously.
pub fn block_term_signals() -> Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it; pthread_sigmask
    // reads it and writes no old mask (null).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            bail!("pthread_sigmask failed: {r}");
        }
        Ok(set)
    }
}

/// Wait for SIGTERM or SIGINT (SIGHUP is swallowed). Returns the signal number.
pub fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised sigset_t; `sig` is a valid out-pointer.
        let r = unsafe { libc::sigwait(set, &mut sig) };
        if r == 0 && sig != libc::SIGHUP {
            return sig;
        }
    }
}

/// Send SIGTERM to this process (wakes a thread blocked in `wait_for_signal`).
pub fn terminate_self() {
    kill(std::process::id() as i32, libc::SIGTERM);
}
