//! The real binaries as processes: `uplink-server` and `uplinkd`, each killed when its
//! guard drops, and where their logs go.

use std::io::{BufRead, BufReader, Read};

use crate::write_secret;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// Peak resident set size of a process (VmHWM), bytes; 0 if unknown.
pub fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
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
        terminate(&mut self.child, Duration::from_secs(15));
    }
}

/// Stops `child` with SIGTERM, waiting up to `grace` for it to exit; SIGKILL after that.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
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
    /// Started with `--clients DIR` (tenants) instead of `--token-file`.
    pub clients: Option<PathBuf>,
    /// Environment variables set for it (kept across restarts).
    pub env: Vec<(String, String)>,
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
        let token_file = Self::token_in(dir);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        match sim {
            Some(sim) => {
                let listen = format!("{}:0", netsim::addr::SERVICE_V4);
                Self::start_at(
                    dir,
                    &listen,
                    Some(&token_file),
                    Some(sim.server_ns()),
                    extra,
                    None,
                    vec![],
                )
            }
            None => Self::start_at(
                dir,
                "127.0.0.1:0",
                Some(&token_file),
                None,
                extra,
                None,
                vec![],
            ),
        }
    }

    /// On loopback, serving the tenants of `clients` (`--clients DIR`), with extra flags.
    /// `token_file` stays the one daemons of this test use by default.
    pub fn start_tenants(dir: &Path, clients: &Path, extra: &[&str]) -> Server {
        Self::start_tenants_env(dir, clients, extra, &[])
    }

    /// [`Self::start_tenants`] with environment variables.
    pub fn start_tenants_env(
        dir: &Path,
        clients: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        std::fs::create_dir_all(dir).expect("server dir");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--clients".to_string(), clients.display().to_string()]);
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut s = Self::start_at(dir, "127.0.0.1:0", None, None, extra, None, env);
        s.clients = Some(clients.to_path_buf());
        s
    }

    /// Makes `dir` and writes the test's token file there (0600); returns its path.
    fn token_in(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("server dir");
        let token_file = dir.join("token");
        write_secret(&token_file, TOKEN);
        token_file
    }

    /// On loopback with `--token-file`, extra flags and environment variables (e.g.
    /// `UPLINK_LOG`).
    pub fn start_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_on(dir, "127.0.0.1:0", extra, env)
    }

    /// At `listen` (e.g. another node's address) with `--token-file`, extra flags and
    /// environment variables.
    pub fn start_on(dir: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let token_file = Self::token_in(dir);
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_at(dir, listen, Some(&token_file), None, extra, None, env)
    }

    /// Sends the server SIGHUP (it reads its clients again).
    pub fn hangup(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.proc.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::HUP);
        }
    }

    /// On loopback under `ulimit -n nofile` (what a systemd service or a shell gives it),
    /// with extra flags.
    pub fn start_limited(dir: &Path, nofile: u64, extra: &[&str]) -> Server {
        let token_file = Self::token_in(dir);
        let extra = extra.iter().map(|s| s.to_string()).collect();
        Self::start_at(
            dir,
            "127.0.0.1:0",
            Some(&token_file),
            None,
            extra,
            Some(nofile),
            vec![],
        )
    }

    /// The number of file descriptors the server process has open now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.proc.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Without a `token_file`, `extra` names the clients (`--clients DIR`).
    fn start_at(
        dir: &Path,
        listen: &str,
        token_file: Option<&Path>,
        netns: Option<String>,
        extra: Vec<String>,
        nofile: Option<u64>,
        env: Vec<(String, String)>,
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
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&data_dir);
        if let Some(token_file) = token_file {
            cmd.arg("--token-file").arg(token_file);
        }
        let proc = Proc::start(cmd, &dir.join("server.log"));
        let addr = proc.field("addr");
        let ca = PathBuf::from(proc.field("ca"));
        Server {
            netns,
            proc,
            addr,
            ca,
            data_dir,
            token_file: token_file.map_or_else(|| dir.join("token"), Path::to_path_buf),
            dir: dir.to_path_buf(),
            extra,
            nofile,
            clients: None,
            env,
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
        let token_file = self.clients.is_none().then_some(self.token_file.as_path());
        let mut again = Self::start_at(
            &self.dir,
            &self.addr,
            token_file,
            self.netns.clone(),
            self.extra.clone(),
            self.nofile,
            self.env.clone(),
        );
        again.clients = self.clients.take();
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

    /// How the server came by the whole-file SHA-256 of the upload it completed last:
    /// (bytes taken on chunk links, bytes it hashed a second time), from its log.
    pub fn file_hash_tally(&self) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(&self.proc.log).unwrap_or_default();
        let line = text
            .lines()
            .map(strip_ansi)
            .rfind(|l| l.contains("whole-file SHA-256"))?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.parse::<u64>().ok())
        };
        Some((field("linked=")?, field("hashed_again=")?))
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
        Self::command_as(dir, server, netns, &server.token_file)
    }

    /// With its own token file (a tenant's device).
    pub fn command_as(
        dir: &Path,
        server: &Server,
        netns: Option<&str>,
        token_file: &Path,
    ) -> Command {
        let mut cmd = in_netns(netns, "uplinkd");
        cmd.arg("--endpoint")
            .arg(server.url())
            .arg("--token-file")
            .arg(token_file)
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
