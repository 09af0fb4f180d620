//! Test harness: starts the real `uplink-server`, `uplinkd` and `uplink` binaries (built by
//! `cargo build --workspace` into the same target dir) on loopback, in a temp dir per test.
//! Every process is killed when its guard drops, also when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary: next to the running executable (a bench binary) or one
/// level up from it (a test executable in `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own executable path");
    let here = exe.parent().expect("target dir");
    let candidates = [Some(here.join(name)), here.parent().map(|p| p.join(name))];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing near {}: run `cargo build --workspace` first",
                exe.display()
            )
        })
}

/// A temp dir that other uids can traverse (tests drop privileges in places).
pub fn workdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("uplink-e2e-")
        .tempdir()
        .expect("tempdir");
    chmod(d.path(), 0o755);
    let mut d = d;
    if std::env::var_os("UPLINK_E2E_KEEP").is_some() {
        // Debugging: keep the logs and data of every test.
        eprintln!("keeping {}", d.path().display());
        d.disable_cleanup(true);
    }
    d
}

pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A process killed (SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub ready: String,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` and waits for its `ready` line on stdout.
    pub fn start(mut cmd: Command, log: &Path) -> Proc {
        let log_file = std::fs::File::create(log).expect("log file");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.contains(" ready ") {
                    let _ = tx.send(line);
                    break;
                }
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(ready) => Proc {
                child,
                ready,
                log: log.to_path_buf(),
            },
            Err(_) => {
                let _ = child.kill();
                let mut s = String::new();
                let _ = std::fs::File::open(log).and_then(|mut f| f.read_to_string(&mut s));
                panic!("process did not become ready; log:\n{s}");
            }
        }
    }

    pub fn field(&self, key: &str) -> String {
        self.ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.ready))
            .to_string()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn term(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `uplink-server`.
pub struct Server {
    /// The network namespace it runs in (netsim's server side), if any.
    pub netns: Option<String>,
    pub proc: Proc,
    pub addr: String,
    pub ca: PathBuf,
    pub data_dir: PathBuf,
    pub token_file: PathBuf,
    pub dir: PathBuf,
    /// Extra flags it was started with (kept across restarts).
    pub extra: Vec<String>,
    /// Its open-files limit (`ulimit -n`), if the test set one.
    pub nofile: Option<u64>,
}

/// The secret in the servers' (and daemons') token file; it never goes on the wire.
pub const TOKEN: &str = "e2e-token-0123456789abcdef";

/// What both sides derive from [`TOKEN`]: the bearer credential and the chunk secret.
pub fn credentials() -> uplink_proto::integrity::Credentials {
    let secret = uplink_proto::integrity::ClientSecret::from_token_text(TOKEN).expect("token");
    uplink_proto::integrity::Credentials::derive(&secret)
}

/// The bearer credential for [`TOKEN`], as plain HTTP clients (curl, aioquic) send it.
pub fn bearer() -> String {
    credentials().bearer().to_string()
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        Self::start_opts(dir, None, &[])
    }

    /// Starts the server inside netsim's server namespace, on the service address.
    pub fn start_in(dir: &Path, sim: &netsim::Sim) -> Server {
        Self::start_opts(dir, Some(sim), &[])
    }

    /// On loopback, or in `sim`'s server namespace, with extra flags (e.g. `--no-h3`).
    pub fn start_opts(dir: &Path, sim: Option<&netsim::Sim>, extra: &[&str]) -> Server {
        std::fs::create_dir_all(dir).expect("server dir");
        let token_file = dir.join("token");
        std::fs::write(&token_file, TOKEN).expect("token");
        chmod(&token_file, 0o644);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        match sim {
            Some(sim) => {
                let listen = format!("{}:0", netsim::addr::SERVICE_V4);
                Self::start_at(
                    dir,
                    &listen,
                    &token_file,
                    Some(sim.server_ns()),
                    extra,
                    None,
                )
            }
            None => Self::start_at(dir, "127.0.0.1:0", &token_file, None, extra, None),
        }
    }

    /// On loopback under `ulimit -n nofile` (what a systemd service or a shell gives it),
    /// with extra flags.
    pub fn start_limited(dir: &Path, nofile: u64, extra: &[&str]) -> Server {
        std::fs::create_dir_all(dir).expect("server dir");
        let token_file = dir.join("token");
        std::fs::write(&token_file, TOKEN).expect("token");
        let extra = extra.iter().map(|s| s.to_string()).collect();
        Self::start_at(dir, "127.0.0.1:0", &token_file, None, extra, Some(nofile))
    }

    /// The number of file descriptors the server process has open now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.proc.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn start_at(
        dir: &Path,
        listen: &str,
        token_file: &Path,
        netns: Option<String>,
        extra: Vec<String>,
        nofile: Option<u64>,
    ) -> Server {
        let data_dir = dir.join("server-data");
        let mut cmd = match nofile {
            // The shell sets the limit, then becomes the server (same pid).
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin("uplink-server"));
                c
            }
            None => in_netns(netns.as_deref(), "uplink-server"),
        };
        cmd.args(&extra);
        cmd.arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--token-file")
            .arg(token_file);
        let proc = Proc::start(cmd, &dir.join("server.log"));
        let addr = proc.field("addr");
        let ca = PathBuf::from(proc.field("ca"));
        Server {
            netns,
            proc,
            addr,
            ca,
            data_dir,
            token_file: token_file.to_path_buf(),
            dir: dir.to_path_buf(),
            extra,
            nofile,
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and data dir.
    pub fn restart_after(&mut self, down: Duration) {
        self.proc.kill9();
        std::thread::sleep(down);
        self.start_again();
    }

    /// Starts a killed server again on the same port and data dir.
    pub fn start_again(&mut self) {
        let again = Self::start_at(
            &self.dir,
            &self.addr,
            &self.token_file,
            self.netns.clone(),
            self.extra.clone(),
            self.nofile,
        );
        *self = again;
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bearer credential as the README tells plain HTTP clients to get it:
    /// `uplink-server --token-file FILE --print-bearer`.
    pub fn bearer(&self) -> String {
        let out = Command::new(bin("uplink-server"))
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--print-bearer")
            .output()
            .expect("run uplink-server --print-bearer");
        assert!(out.status.success(), "--print-bearer failed: {out:?}");
        String::from_utf8(out.stdout)
            .expect("bearer is text")
            .trim_end()
            .to_string()
    }

    pub fn object(&self, name: &str) -> PathBuf {
        self.data_dir.join("objects").join(name)
    }
}

/// A running `uplinkd`.
pub struct Daemon {
    pub proc: Proc,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
}

impl Daemon {
    pub fn command(dir: &Path, server: &Server) -> Command {
        Self::command_in(dir, server, None)
    }

    /// The daemon inside a network namespace (netsim's client side); its socket is a
    /// file in `dir`, so the CLI reaches it from outside.
    pub fn command_in(dir: &Path, server: &Server, netns: Option<&str>) -> Command {
        let mut cmd = in_netns(netns, "uplinkd");
        cmd.arg("--endpoint")
            .arg(server.url())
            .arg("--token-file")
            .arg(&server.token_file)
            .arg("--ca-file")
            .arg(&server.ca)
            .arg("--state-dir")
            .arg(dir.join("daemon-state"))
            .arg("--socket")
            .arg(dir.join("uplinkd.sock"));
        cmd
    }

    pub fn start(dir: &Path, server: &Server) -> Daemon {
        Self::start_cmd(dir, Self::command(dir, server))
    }

    /// On netsim's client side (its socket is still a file in `dir`).
    pub fn start_in(dir: &Path, server: &Server, sim: &netsim::Sim) -> Daemon {
        Self::start_cmd(dir, Self::command_in(dir, server, Some(&sim.client_ns())))
    }

    pub fn start_cmd(dir: &Path, cmd: Command) -> Daemon {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let proc = Proc::start(cmd, &dir.join(format!("uplinkd-{n}.log")));
        Daemon {
            proc,
            socket: dir.join("uplinkd.sock"),
            state_dir: dir.join("daemon-state"),
        }
    }

    /// The lines of this daemon's log that contain `pattern` (escape codes removed), for a
    /// failing test to show what the daemon decided.
    pub fn log_lines(&self, pattern: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.proc.log).unwrap_or_default();
        text.lines()
            .map(strip_ansi)
            .filter(|l| l.contains(pattern))
            .collect()
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A command for a workspace binary, run inside `netns` if given.
pub fn in_netns(netns: Option<&str>, name: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin(name));
            c
        }
        None => Command::new(bin(name)),
    }
}

/// Runs the `uplink` CLI against `socket`.
pub fn uplink(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("uplink"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run uplink")
}

/// Runs the `uplink` CLI as another uid.
pub fn uplink_as(uid: u32, socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("uplink"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .uid(uid)
        .gid(uid)
        .env("HOME", "/")
        .output()
        .expect("run uplink")
}

/// `uplink send FILE --wait --json`: the job's final record (the CLI must succeed).
pub fn send_wait(socket: &Path, file: &Path) -> serde_json::Value {
    let out = uplink(
        socket,
        &[
            "send",
            file.to_str().expect("utf-8 path"),
            "--wait",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "send --wait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out).pop().expect("final record")
}

/// `uplink status --json`.
pub fn daemon_status(socket: &Path) -> serde_json::Value {
    let out = uplink(socket, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    json_lines(&out).pop().expect("status")
}

/// A wire call the server refused with `status` and the stable `code`.
pub fn refused_with(
    r: Result<impl std::fmt::Debug, uplinkd::server_api::CallError>,
    status: u16,
    code: &str,
) {
    match r {
        Err(uplinkd::server_api::CallError::Server {
            status: s, code: c, ..
        }) => assert_eq!((s, c.as_str()), (status, code)),
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}

/// Writes `size` pseudo-random (incompressible) bytes.
pub fn random_file(path: &Path, size: u64) {
    let mut w =
        std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).expect("create"));
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ size;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    w.flush().expect("flush");
}

/// Writes `size` bytes of an ASCII point cloud (`v x y z` lines with jittered numbers):
/// what a capture app writes as PLY text, and what LZ4 shrinks to about half.
pub fn point_cloud_file(path: &Path, size: u64) {
    let mut w =
        std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).expect("create"));
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut written = 0u64;
    while written < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let line = format!(
            "v {:.3} {:.3} {:.3}\n",
            (x % 1000) as f32 / 100.0,
            ((x >> 16) % 1000) as f32 / 100.0,
            ((x >> 32) % 300) as f32 / 100.0
        );
        let n = (line.len() as u64).min(size - written) as usize;
        w.write_all(&line.as_bytes()[..n]).expect("write");
        written += n as u64;
    }
    w.flush().expect("flush");
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Parses the JSON lines a `--json` command printed.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Polls `f` every 20 ms until it returns Some, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A wire-protocol client for `server` (the daemon's own, used here to poke the server
/// directly: bad chunks, replays, state).
pub fn server_client(server: &Server) -> uplinkd::server_api::ServerClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls =
        uplinkd::transport::tls::client_config(Some(&server.ca), &[uplink_proto::wire::ALPN_H2])
            .expect("tls");
    let ep = uplinkd::transport::Endpoint::parse(&server.url()).expect("endpoint");
    let alt = uplinkd::transport::alt_svc::AltSvcCache::load(None, &ep.authority);
    let pool = uplinkd::transport::h2::H2Pool::new(ep, tls, 1);
    let transport = uplinkd::transport::Transport::new(pool, None, alt);
    uplinkd::server_api::ServerClient::new(transport, credentials())
}

/// `uplink send FILE --json` (no waiting): the new job's id.
pub fn enqueue(socket: &Path, file: &Path) -> String {
    let out = uplink(socket, &["send", &file.to_string_lossy(), "--json"]);
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out)[0]["job_id"]
        .as_str()
        .expect("job id")
        .to_string()
}

/// Waits (up to 2 minutes) until the daemon has checkpointed at least `bytes` of the job;
/// returns its record then.
pub fn wait_acked(socket: &Path, job: &str, bytes: u64) -> serde_json::Value {
    wait_for(Duration::from_secs(120), || {
        job_record(socket, job).filter(|j| j["bytes_acked"].as_u64().unwrap_or(0) >= bytes)
    })
    .unwrap_or_else(|| panic!("job {job} never reached {bytes} acknowledged bytes"))
}

/// How long after now the job's acknowledged bytes next grow (up to 2 minutes): the time
/// an upload loses once a fault is over, for the log. `None` if it finished meanwhile.
pub fn next_ack_after(socket: &Path, job: &str) -> Option<Duration> {
    let start = Instant::now();
    let acked = |j: &serde_json::Value| j["bytes_acked"].as_u64().unwrap_or(0);
    let before = job_record(socket, job).map(|j| acked(&j)).unwrap_or(0);
    wait_for(Duration::from_secs(120), || {
        job_record(socket, job).filter(|j| acked(j) > before || j["state"] == "completed")
    })
    .filter(|j| acked(j) > before)
    .map(|_| start.elapsed())
}

/// `uplink watch JOB --json` until the job ends: its final record.
pub fn wait_done(socket: &Path, job: &str) -> serde_json::Value {
    let out = uplink(socket, &["watch", job, "--json"]);
    let last = json_lines(&out).pop().expect("watch printed nothing");
    assert_eq!(last["job_id"], job);
    last
}

/// The job record of `job_id` as `uplink ls --json` reports it.
pub fn job_record(socket: &Path, job_id: &str) -> Option<serde_json::Value> {
    let out = uplink(socket, &["ls", "--json"]);
    json_lines(&out).into_iter().find(|j| j["job_id"] == job_id)
}

/// Where `scripts/test` installs the foreign clients (`.deps/` at the workspace root).
pub fn deps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps")
}

/// The Python with the foreign clients (aioquic, grpcio): `UPLINK_PYTHON`, else the venv
/// `scripts/test` made. A missing one fails the test — never a skip.
pub fn interop_python() -> PathBuf {
    if let Some(p) = std::env::var_os("UPLINK_PYTHON") {
        return PathBuf::from(p);
    }
    let p = deps_dir().join("venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run `scripts/test` (the README's test command), which installs \
         the Python clients the tests use, or set UPLINK_PYTHON",
        p.display()
    );
    p
}

/// `node_modules` with @grpc/grpc-js, installed by `scripts/test`.
pub fn interop_node_modules() -> PathBuf {
    let p = deps_dir().join("node/node_modules");
    assert!(
        p.join("@grpc/grpc-js").is_dir(),
        "{} lacks @grpc/grpc-js: run `scripts/test` (the README's test command)",
        p.display()
    );
    p
}

/// A file of the interop folder (foreign-client scripts).
pub fn interop_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name)
}

/// The `proto/` folder a foreign client generates its code from.
pub fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/proto")
}

/// A memory cgroup with a limit, for running a process under it (as systemd's
/// `MemoryMax=` or a container would). cgroup v2 where the memory controller lives there,
/// else the v1 memory hierarchy. Removed on drop, its processes killed first.
pub struct MemCgroup {
    pub dir: PathBuf,
}

impl MemCgroup {
    pub fn new(name: &str, limit: u64) -> MemCgroup {
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_memory = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, limit_file) = if v2_memory {
            // Children of the root get the memory controller only when the root hands it down.
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+memory");
            (v2.join(name), "memory.max")
        } else {
            (v2.join("memory").join(name), "memory.limit_in_bytes")
        };
        std::fs::create_dir_all(&dir).expect("create the cgroup (tests run as root)");
        std::fs::write(dir.join(limit_file), limit.to_string()).expect("set the memory limit");
        MemCgroup { dir }
    }

    /// `cmd`, started inside this cgroup (it joins before `exec`, so all it allocates counts).
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"))
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| rustix::process::Pid::from_raw(p.parse().ok()?))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Enqueues `file`, follows it with `uplink watch JOB --json`, runs `during` once `acked`
/// bytes are acknowledged, and returns every line watch printed: the job's events, then
/// its final record (last). Asserts that the job completed and the server holds the
/// file's exact bytes.
pub fn upload_through(
    daemon: &Daemon,
    file: &Path,
    acked: u64,
    during: impl FnOnce(),
) -> Vec<serde_json::Value> {
    let job = enqueue(&daemon.socket, file);
    let watcher = {
        let (socket, job) = (daemon.socket.clone(), job.clone());
        std::thread::spawn(move || uplink(&socket, &["watch", &job, "--json"]))
    };
    wait_acked(&daemon.socket, &job, acked);
    during();
    let out = watcher.join().expect("watch thread");
    let lines = json_lines(&out);
    let record = lines.last().cloned().unwrap_or_default();
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["server_sha256"], sha256_file(file).as_str());
    lines
}
