//! Namespaces, TUN devices, forwarder threads, control socket and teardown.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::addr;
use crate::config::{Change, DirSel, Impair, PathSel};
use crate::fwd::{self, DirShared, DirStats, DirTask};
use crate::netns::{
    RUN_DIR, check_name, cleanup, client_ns, ctl_path, ip, ip_batch, kill_ns_processes, ns_cmd,
    ns_exists, run_in_ns, server_ns, spawn_in_ns, tmp_ifname,
};
use crate::sys;

/// Options for [`Sim::up`].
#[derive(Clone, Debug)]
pub struct SimOpts {
    /// Impairments of path 1, applied to both directions.
    pub path1: Impair,
    /// Impairments of path 2 (both directions); `None` = same as path 1.
    pub path2: Option<Impair>,
    /// MTU of the TUN devices (default 1500).
    pub mtu: u32,
    /// Packet buffers per direction (default 8192): bounds what can be queued + in flight.
    pub slots: usize,
    /// Seed for loss/jitter dice (default: from the clock).
    pub seed: Option<u64>,
}

impl Default for SimOpts {
    fn default() -> Self {
        SimOpts {
            path1: Impair::default(),
            path2: None,
            mtu: 1500,
            slots: 8192,
            seed: None,
        }
    }
}

impl SimOpts {
    /// Both paths, both directions get `imp`.
    pub fn symmetric(imp: Impair) -> SimOpts {
        SimOpts {
            path1: imp,
            ..SimOpts::default()
        }
    }
    pub fn path2(mut self, imp: Impair) -> SimOpts {
        self.path2 = Some(imp);
        self
    }
}

struct PathShared {
    link_up: Arc<AtomicBool>,
    /// [up (client → server), down (server → client)]
    dirs: [Arc<DirShared>; 2],
}

struct Inner {
    name: String,
    paths: [PathShared; 2],
    mtu: u32,
}

/// Callback run by the control socket's `shutdown` command (daemon mode).
pub type ShutdownHook = Box<dyn Fn() + Send + Sync>;

/// A running emulated network. Dropping it tears everything down (also on panic).
pub struct Sim {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
    stop_w: Option<OwnedFd>,
    stop_r: Arc<OwnedFd>,
    ctl_path: PathBuf,
    torn_down: bool,
}

fn client_path_script(p: usize) -> String {
    client_route_script(p, "replace", "")
}

/// The client's routes to the service over path `p`; `extra` is appended to each.
fn client_route_script(p: usize, verb: &str, extra: &str) -> String {
    let i = p + 1;
    let metric = 100 * i;
    format!(
        "route {verb} {svc4}/32 dev sim{i} metric {metric} src {c4}{extra}\n\
         route {verb} {svc6}/128 dev sim{i} metric {metric} src {c6}{extra}\n",
        svc4 = addr::SERVICE_V4,
        svc6 = addr::SERVICE_V6,
        c4 = addr::CLIENT_V4[p],
        c6 = addr::CLIENT_V6[p],
    )
}

fn client_addr_script(p: usize) -> String {
    let i = p + 1;
    format!(
        "addr replace {c4} peer {s4} dev sim{i}\n\
         addr replace {c6} peer {s6} dev sim{i} nodad\n",
        c4 = addr::CLIENT_V4[p],
        s4 = addr::SERVER_V4[p],
        c6 = addr::CLIENT_V6[p],
        s6 = addr::SERVER_V6[p],
    )
}

impl Inner {
    fn each(&self, path: PathSel, dir: DirSel, f: &dyn Fn(&DirShared)) {
        for &p in path.indices() {
            for &d in dir.indices() {
                f(&self.paths[p].dirs[d]);
            }
        }
    }

    fn set_link(&self, path: PathSel, up: bool) -> Result<()> {
        let ns = client_ns(&self.name);
        for &p in path.indices() {
            let i = p + 1;
            if up {
                let script = format!(
                    "link set dev sim{i} up\n{}{}",
                    client_addr_script(p),
                    client_path_script(p)
                );
                ip_batch(Some(&ns), &script)?;
                self.paths[p].link_up.store(true, Ordering::SeqCst);
            } else {
                self.paths[p].link_up.store(false, Ordering::SeqCst);
                ip_batch(Some(&ns), &format!("link set dev sim{i} down\n"))?;
            }
        }
        Ok(())
    }

    fn apply(&self, c: &Change) -> Result<()> {
        // Validate against a scratch copy first, so a bad value changes nothing.
        c.apply_to(&mut Impair::default())?;
        if !c.edits.is_empty() || c.reset {
            self.each(c.path, c.dir, &|d| {
                d.update(|imp| {
                    let _ = c.apply_to(imp);
                })
            });
        }
        if let Some(up) = c.link {
            self.set_link(c.path, up)?;
        }
        Ok(())
    }

    fn status(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sim {} client-ns {} server-ns {} mtu {}",
            self.name,
            client_ns(&self.name),
            server_ns(&self.name),
            self.mtu
        );
        for (p, path) in self.paths.iter().enumerate() {
            let _ = writeln!(
                s,
                "path {} link {} client {} / {} server {} / {}",
                p + 1,
                if path.link_up.load(Ordering::SeqCst) {
                    "up"
                } else {
                    "down"
                },
                addr::CLIENT_V4[p],
                addr::CLIENT_V6[p],
                addr::SERVER_V4[p],
                addr::SERVER_V6[p],
            );
            for (d, dir) in path.dirs.iter().enumerate() {
                let st = dir.counters.snapshot();
                let _ = writeln!(
                    s,
                    "  {}: {}\n    rx {} pkts {} B, tx {} pkts {} B, drops loss {} queue {} \
                     blackhole {} udp {} link {} pool {}, write errors {}",
                    if d == 0 { "up  " } else { "down" },
                    dir.get(),
                    st.rx_packets,
                    st.rx_bytes,
                    st.tx_packets,
                    st.tx_bytes,
                    st.drop_loss,
                    st.drop_queue,
                    st.drop_blackhole,
                    st.drop_udp,
                    st.drop_link,
                    st.drop_pool,
                    st.write_errors
                );
            }
        }
        s
    }
}

impl Sim {
    /// Create namespaces `NAME-c` and `NAME-s`, two paths between them, and start forwarding.
    /// Leftovers of a crashed earlier run of the same name are removed first. Returns when
    /// traffic can flow. Needs root and /dev/net/tun: fails with a clear message otherwise.
    pub fn up(name: &str, opts: SimOpts) -> Result<Sim> {
        Self::up_with_hook(name, opts, None)
    }

    /// Like [`Sim::up`], with a callback for the control socket's `shutdown` command.
    pub fn up_with_hook(name: &str, opts: SimOpts, hook: Option<ShutdownHook>) -> Result<Sim> {
        check_name(name)?;
        if !sys::is_root() {
            bail!("netsim needs root (CAP_NET_ADMIN) to create namespaces and TUN devices");
        }
        if !Path::new("/dev/net/tun").exists() {
            bail!("netsim needs /dev/net/tun (load the tun module / pass the device through)");
        }
        if !(576..=65_000).contains(&opts.mtu) {
            bail!("mtu {} out of range 576..=65000", opts.mtu);
        }
        cleanup(name).context("cleaning up an earlier run")?;
        fs::create_dir_all(RUN_DIR).with_context(|| format!("create {RUN_DIR}"))?;
        let (stop_r, stop_w) = sys::stop_pipe()?;
        let mk_path = |imp: Impair| PathShared {
            link_up: Arc::new(AtomicBool::new(true)),
            dirs: [Arc::new(DirShared::new(imp)), Arc::new(DirShared::new(imp))],
        };
        let inner = Arc::new(Inner {
            name: name.to_string(),
            paths: [
                mk_path(opts.path1),
                mk_path(opts.path2.unwrap_or(opts.path1)),
            ],
            mtu: opts.mtu,
        });
        // From here on, dropping `sim` undoes whatever was already made.
        let mut sim = Sim {
            inner,
            threads: Vec::new(),
            stop_w: Some(stop_w),
            stop_r: Arc::new(stop_r),
            ctl_path: ctl_path(name),
            torn_down: false,
        };
        sim.build(&opts, hook)?;
        Ok(sim)
    }

    fn build(&mut self, opts: &SimOpts, hook: Option<ShutdownHook>) -> Result<()> {
        let name = self.inner.name.clone();
        let (cns, sns) = (client_ns(&name), server_ns(&name));
        ip(&["netns", "add", &cns])?;
        ip(&["netns", "add", &sns])?;
        // [path][side]: side 0 = client, 1 = server.
        let mut tuns = Vec::new();
        let mut move_script = String::new();
        for p in 0..2 {
            let c = tmp_ifname(&name, 'c', p);
            let s = tmp_ifname(&name, 's', p);
            let fc = sys::create_tun(&c)?;
            let fs_ = sys::create_tun(&s)?;
            let _ = writeln!(move_script, "link set dev {c} netns {cns}");
            let _ = writeln!(move_script, "link set dev {s} netns {sns}");
            tuns.push((fc, fs_));
        }
        ip_batch(None, &move_script)?;
        let mtu = opts.mtu;
        let mut cscript = String::from("link set dev lo up\n");
        let mut sscript = format!(
            "link set dev lo up\naddr add {}/32 dev lo\naddr add {}/128 dev lo\n",
            addr::SERVICE_V4,
            addr::SERVICE_V6
        );
        for p in 0..2 {
            let i = p + 1;
            for (script, side) in [(&mut cscript, 'c'), (&mut sscript, 's')] {
                let _ = write!(
                    script,
                    "link set dev {} name sim{i}\nlink set dev sim{i} mtu {mtu}\n\
                     link set dev sim{i} addrgenmode none\nlink set dev sim{i} up\n",
                    tmp_ifname(&name, side, p)
                );
            }
            cscript.push_str(&client_addr_script(p));
            cscript.push_str(&client_path_script(p));
            let _ = write!(
                sscript,
                "addr replace {s4} peer {c4} dev sim{i}\naddr replace {s6} peer {c6} dev sim{i} nodad\n",
                s4 = addr::SERVER_V4[p],
                c4 = addr::CLIENT_V4[p],
                s6 = addr::SERVER_V6[p],
                c6 = addr::CLIENT_V6[p],
            );
        }
        ip_batch(Some(&cns), &cscript)?;
        ip_batch(Some(&sns), &sscript)?;

        let seed = opts.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                ^ u64::from(std::process::id()) << 32
        });
        for (p, (fc, fs_)) in tuns.into_iter().enumerate() {
            let fc2 = fc.try_clone().context("dup tun fd")?;
            let fs2 = fs_.try_clone().context("dup tun fd")?;
            let path = &self.inner.paths[p];
            for (d, input, output) in [(0usize, fc, fs2), (1usize, fs_, fc2)] {
                let task = DirTask {
                    input,
                    output,
                    shared: path.dirs[d].clone(),
                    link_up: path.link_up.clone(),
                    stop: self.stop_r.clone(),
                    slots: opts.slots,
                    mtu,
                    seed: seed.wrapping_add((p * 2 + d) as u64 * 0x1234_5678_9abc),
                };
                let h = std::thread::Builder::new()
                    .name(format!(
                        "netsim-p{}{}",
                        p + 1,
                        if d == 0 { "up" } else { "dn" }
                    ))
                    .spawn(move || fwd::run(task))
                    .context("spawn forwarder thread")?;
                self.threads.push(h);
            }
        }
        self.start_control(hook)?;
        Ok(())
    }

    fn start_control(&mut self, hook: Option<ShutdownHook>) -> Result<()> {
        let _ = fs::remove_file(&self.ctl_path);
        let listener = UnixListener::bind(&self.ctl_path)
            .with_context(|| format!("bind {:?}", self.ctl_path))?;
        listener.set_nonblocking(true)?;
        let inner = self.inner.clone();
        let stop = self.stop_r.clone();
        let h = std::thread::Builder::new()
            .name("netsim-ctl".into())
            .spawn(move || {
                loop {
                    let ready = sys::poll_readable(&[&listener, &*stop], 1000);
                    if ready.get(1) == Some(&true) {
                        return;
                    }
                    if ready.first() != Some(&true) {
                        continue;
                    }
                    if let Ok((conn, _)) = listener.accept() {
                        handle_conn(&inner, conn, hook.as_deref());
                    }
                }
            })
            .context("spawn control thread")?;
        self.threads.push(h);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// Client namespace name, `NAME-c`.
    pub fn client_ns(&self) -> String {
        client_ns(&self.inner.name)
    }
    /// Server namespace name, `NAME-s`.
    pub fn server_ns(&self) -> String {
        server_ns(&self.inner.name)
    }
    pub fn mtu(&self) -> u32 {
        self.inner.mtu
    }

    /// Edit the impairments of the selected path(s)/direction(s) in place, live.
    pub fn set(&self, path: PathSel, dir: DirSel, f: impl Fn(&mut Impair)) {
        self.inner.each(path, dir, &|d| d.update(&f));
    }

    /// Gives the client's TCP connections to the service over path 1 the congestion
    /// control `algo` (`ip route change … congctl ALGO`), the way a host default would
    /// (the namespace's sysctl is not writable here). Not `lock`ed: a socket may still
    /// choose its own. Lasts until path 1's link is taken down.
    pub fn set_client_congctl(&self, algo: &str) -> Result<()> {
        let script = client_route_script(0, "change", &format!(" congctl {algo}"));
        ip_batch(Some(&self.client_ns()), &script)
    }

    /// Apply a textual change, same language as `netsim set` / the control socket,
    /// e.g. `"path=1 dir=up delay=100ms loss=2%"` or `"path=1 link=down"`.
    pub fn apply(&self, spec: &str) -> Result<()> {
        self.inner.apply(&Change::parse(spec)?)
    }

    /// Current settings of one direction of one path (`path` P1 or P2, `dir` Up or Down;
    /// for `All`/`Both` the first is returned).
    pub fn impair(&self, path: PathSel, dir: DirSel) -> Impair {
        self.inner.paths[path.indices()[0]].dirs[dir.indices()[0]].get()
    }

    /// Drop everything on the selected path(s), both directions (link stays up).
    pub fn blackhole(&self, path: PathSel, on: bool) {
        self.set(path, DirSel::Both, |i| i.blackhole = on);
    }

    /// Take the path's client-side interface down (the client OS sees its "Wi-Fi" vanish: the
    /// routes via it go, new connections use the other path; the forwarder drops the path's
    /// packets both ways) or bring it back with its addresses and routes.
    pub fn set_link(&self, path: PathSel, up: bool) -> Result<()> {
        self.inner.set_link(path, up)
    }

    /// Counters summed over the selection.
    pub fn stats(&self, path: PathSel, dir: DirSel) -> DirStats {
        let mut t = DirStats::default();
        for &p in path.indices() {
            for &d in dir.indices() {
                let s = self.inner.paths[p].dirs[d].counters.snapshot();
                t.rx_packets += s.rx_packets;
                t.rx_bytes += s.rx_bytes;
                t.tx_packets += s.tx_packets;
                t.tx_bytes += s.tx_bytes;
                t.drop_loss += s.drop_loss;
                t.drop_queue += s.drop_queue;
                t.drop_blackhole += s.drop_blackhole;
                t.drop_udp += s.drop_udp;
                t.drop_link += s.drop_link;
                t.drop_pool += s.drop_pool;
                t.write_errors += s.write_errors;
            }
        }
        t
    }

    /// Human-readable settings and counters.
    pub fn status(&self) -> String {
        self.inner.status()
    }

    /// `ip netns exec NAME-c PROGRAM` — add args, then spawn/output it.
    pub fn client_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        ns_cmd(&self.client_ns(), program)
    }
    /// `ip netns exec NAME-s PROGRAM`.
    pub fn server_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        ns_cmd(&self.server_ns(), program)
    }

    /// Run `f` on a thread inside the client namespace and return its result. Sockets created
    /// by `f` stay in that namespace wherever they are used afterwards.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        run_in_ns(&self.client_ns(), f)
    }
    /// Like [`Sim::in_client`], in the server namespace.
    pub fn in_server<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        run_in_ns(&self.server_ns(), f)
    }
    /// Spawn a long-running thread inside the client namespace.
    pub fn spawn_in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<Result<T>> {
        spawn_in_ns(self.client_ns(), f)
    }
    /// Spawn a long-running thread inside the server namespace.
    pub fn spawn_in_server<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<Result<T>> {
        spawn_in_ns(self.server_ns(), f)
    }

    /// Tear down now and report errors (Drop does the same but can only print them).
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        drop(self.stop_w.take());
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
        let _ = fs::remove_file(&self.ctl_path);
        let name = self.inner.name.clone();
        let mut errors = Vec::new();
        for ns in [client_ns(&name), server_ns(&name)] {
            if ns_exists(&ns) {
                kill_ns_processes(&ns);
                if let Err(e) = ip(&["netns", "del", &ns]) {
                    errors.push(e.to_string());
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(errors.join("; ")))
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("netsim: teardown of {}: {e:#}", self.inner.name);
        }
    }
}

fn handle_conn(inner: &Inner, conn: UnixStream, hook: Option<&(dyn Fn() + Send + Sync)>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    if BufReader::new(read_half.take(4096))
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    let line = line.trim();
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let reply = match cmd {
        "ping" => Ok(format!("pid={}", std::process::id())),
        "status" => Ok(inner.status()),
        "set" => Change::parse(rest)
            .and_then(|c| inner.apply(&c))
            .map(|()| String::new()),
        "shutdown" => match hook {
            Some(h) => {
                h();
                Ok(String::new())
            }
            None => Err(anyhow!(
                "this sim is owned by a library user; it ends with its guard"
            )),
        },
        _ => Err(anyhow!(
            "unknown command {cmd:?} (ping, status, set SPEC, shutdown)"
        )),
    };
    let mut conn = conn;
    let text = match reply {
        Ok(body) if body.is_empty() => "ok\n".to_string(),
        Ok(body) => format!("{}\nok\n", body.trim_end()),
        Err(e) => format!("err: {e:#}\n"),
    };
    let _ = conn.write_all(text.as_bytes());
}
