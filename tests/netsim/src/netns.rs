//! Naming and housekeeping of a sim's namespaces: names, run files, running things
//! inside a namespace, and cleaning up what an earlier (crashed) run left behind.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::sys;

/// Where control sockets, pid files and daemon logs live.
pub const RUN_DIR: &str = "/run/netsim";

/// Validate a sim name: 1..=32 of `[A-Za-z0-9_-]` (namespaces are `NAME-c` and `NAME-s`).
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("sim name {name:?} must be 1-32 characters of A-Z a-z 0-9 - _");
    }
    Ok(())
}

pub fn client_ns(name: &str) -> String {
    format!("{name}-c")
}
pub fn server_ns(name: &str) -> String {
    format!("{name}-s")
}
pub fn ctl_path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{name}.sock"))
}
pub fn pid_path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{name}.pid"))
}
pub fn log_path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{name}.log"))
}

/// Temporary root-namespace name of a TUN device (≤ 15 bytes, unique per sim name):
/// `ns` + 8 hex digits of a hash of NAME + `c`/`s` + path number.
pub(crate) fn tmp_ifname(name: &str, side: char, path: usize) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("ns{h:08x}{side}{}", path + 1)
}

/// The four root-namespace names a sim's TUN devices have before they move into the
/// namespaces (they only exist for a moment during `up`).
pub fn tmp_ifnames(name: &str) -> Vec<String> {
    let mut v = Vec::new();
    for side in ['c', 's'] {
        for p in 0..2 {
            v.push(tmp_ifname(name, side, p));
        }
    }
    v
}

/// Run `ip ARGS`, turning a failure into an error that carries ip's stderr.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (iproute2 is required)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run several ip commands in one process: `ip [-n NS] -batch -`.
pub(crate) fn ip_batch(ns: Option<&str>, script: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run `ip` (iproute2 is required)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).context("ip -batch")?;
    }
    let out = child.wait_with_output().context("ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip {}-batch failed: {}\nscript:\n{script}",
            ns.map(|n| format!("-n {n} ")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(crate) fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Kill every process inside namespace `ns` (SIGTERM, then SIGKILL after 2 s).
pub(crate) fn kill_ns_processes(ns: &str) {
    let me = std::process::id() as i32;
    let pids = |ns: &str| -> Vec<i32> {
        ip(&["netns", "pids", ns])
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .filter(|&p| p != me)
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = pids(ns);
    if first.is_empty() {
        return;
    }
    for &p in &first {
        sys::kill(p, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if first.iter().all(|&p| !sys::process_alive(p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in pids(ns) {
        sys::kill(p, libc::SIGKILL);
    }
}

/// Is `pid` a live netsim process for sim `name`?
pub(crate) fn is_netsim_daemon(pid: i32, name: &str) -> bool {
    if !sys::process_alive(pid) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.first()
        .is_some_and(|a| a.ends_with(b"netsim") || a.windows(6).any(|w| w == b"netsim"))
        && args.contains(&name.as_bytes())
}

/// Remove everything a sim called `name` may have left behind: its daemon process (if any),
/// processes inside its namespaces, the namespaces, stray TUN links and run files.
/// Fails if a *library* sim of that name is alive in another process.
pub fn cleanup(name: &str) -> Result<()> {
    check_name(name)?;
    let pidf = pid_path(name);
    if let Some(pid) = fs::read_to_string(&pidf)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        && pid != std::process::id() as i32
        && is_netsim_daemon(pid, name)
    {
        sys::kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while sys::process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if sys::process_alive(pid) {
            sys::kill(pid, libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(50));
        }
    } else if let Ok(reply) = control(name, "ping", Duration::from_secs(2)) {
        bail!("a sim named {name:?} is still running ({reply}); stop it or pick another name");
    }
    let mut errors = Vec::new();
    for ns in [client_ns(name), server_ns(name)] {
        if ns_exists(&ns) {
            kill_ns_processes(&ns);
            if let Err(e) = ip(&["netns", "del", &ns]) {
                errors.push(e.to_string());
            }
        }
    }
    for ifn in tmp_ifnames(name) {
        if Path::new("/sys/class/net").join(&ifn).exists() {
            let _ = ip(&["link", "del", "dev", &ifn]);
        }
    }
    for f in [ctl_path(name), pid_path(name)] {
        let _ = fs::remove_file(f);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

/// Send one command to a running sim's control socket; returns the reply text (without the
/// final `ok` line) or the error it reported.
pub fn control(name: &str, cmd: &str, timeout: Duration) -> Result<String> {
    let path = ctl_path(name);
    let mut s = UnixStream::connect(&path)
        .with_context(|| format!("no sim {name:?} is running (cannot connect {path:?})"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(cmd.as_bytes())?;
    s.write_all(b"\n")?;
    let mut reply = String::new();
    s.take(1 << 20).read_to_string(&mut reply)?;
    let mut lines: Vec<&str> = reply.lines().collect();
    match lines.pop() {
        Some("ok") => Ok(lines.join("\n")),
        Some(l) if l.starts_with("err") => Err(anyhow!("{}", l.trim_start_matches("err: "))),
        _ => Err(anyhow!("no answer from sim {name:?}")),
    }
}

pub(crate) fn ns_cmd(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Run `f` on a scoped thread inside namespace `ns`.
pub fn run_in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            sys::enter_netns(ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// Spawn a thread inside namespace `ns`.
pub fn spawn_in_ns<T: Send + 'static>(
    ns: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<Result<T>> {
    std::thread::spawn(move || {
        sys::enter_netns(&ns)?;
        Ok(f())
    })
}
