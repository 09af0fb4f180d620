//! Start/stop: `netsim up`/`set`/`down` from the CLI, teardown on panic, recovery from a killed
//! forwarder and from leftovers. Nothing may be left behind: no namespace, link or process.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ms, ns_exists, up, wait_until};
use netsim::probe::{UdpEcho, UdpPinger};
use netsim::{SimOpts, addr};

const BIN: &str = env!("CARGO_BIN_EXE_netsim");

fn netsim(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run netsim binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn assert_nothing_left(name: &str, pids: &[i32]) {
    for ns in [format!("{name}-c"), format!("{name}-s")] {
        assert!(!ns_exists(&ns), "namespace {ns} left behind");
    }
    for ifn in netsim::tmp_ifnames(name) {
        assert!(
            !Path::new("/sys/class/net").join(&ifn).exists(),
            "link {ifn} left behind"
        );
    }
    for p in pids {
        assert!(
            wait_until(Duration::from_secs(3), || !netsim::process_alive(*p)),
            "process {p} left behind"
        );
    }
    for f in [netsim::ctl_path(name), netsim::pid_path(name)] {
        assert!(!f.exists(), "{f:?} left behind");
    }
}

fn pid_of_ready(line: &str) -> i32 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

#[test]
fn cli_up_set_down_leaves_nothing() {
    let name = "nt-cli";
    let (ok, out) = netsim(&[
        "up",
        name,
        "--delay",
        "5ms",
        "--loss",
        "0%",
        "--path2",
        "delay=20ms",
    ]);
    assert!(ok, "netsim up failed (needs root and /dev/net/tun): {out}");
    assert!(out.starts_with("READY"), "{out}");
    let daemon = pid_of_ready(&out);
    assert!(netsim::process_alive(daemon));
    assert!(ns_exists("nt-cli-c") && ns_exists("nt-cli-s"));

    // A process inside the client namespace reaches the server through the forwarder.
    let ping = Command::new("ip")
        .args(["netns", "exec", "nt-cli-c", "bash", "-c"])
        .arg(format!(
            "exec 3<>/dev/tcp/{}/9 2>/dev/null; echo connect-attempted",
            addr::SERVICE_V4
        ))
        .output()
        .expect("ip netns exec");
    assert!(String::from_utf8_lossy(&ping.stdout).contains("connect-attempted"));

    // Live changes over the control socket.
    let (ok, out) = netsim(&[
        "set",
        name,
        "--path",
        "1",
        "--dir",
        "up",
        "--loss",
        "5%",
        "--burst-loss",
        "1%,30%",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = netsim(&["set", name, "--path", "2", "--link", "down"]);
    assert!(ok, "{out}");
    let (ok, status) = netsim(&["status", name]);
    assert!(ok, "{status}");
    assert!(status.contains("loss=5%"), "{status}");
    assert!(status.contains("burst-loss=1%,30%"), "{status}");
    assert!(status.contains("path 2 link down"), "{status}");
    assert!(status.contains("delay=20ms"), "{status}");
    let (ok, out) = netsim(&["set", name, "--rate", "10mbps"]);
    assert!(
        !ok && out.contains("unit"),
        "bad units must be refused: {out}"
    );

    // A long-running process in the server namespace is stopped by `down` too.
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", "nt-cli-s", "sleep", "120"])
        .spawn()
        .expect("spawn sleeper");
    std::thread::sleep(ms(200));
    let (ok, out) = netsim(&["down", name]);
    assert!(ok, "{out}");
    let status = sleeper.wait().expect("sleeper");
    assert!(!status.success(), "sleeper should have been killed");
    assert_nothing_left(name, &[daemon]);
    assert!(!netsim::log_path(name).exists());
    // `down` twice is fine.
    let (ok, out) = netsim(&["down", name]);
    assert!(ok, "{out}");
}

#[test]
fn panicking_test_tears_down() {
    let name = "nt-panic";
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot2 = slot.clone();
    let r = std::thread::spawn(move || {
        let sim = up(name, SimOpts::default());
        let child = sim
            .client_cmd("sleep")
            .arg("120")
            .spawn()
            .expect("spawn in client ns");
        *slot2.lock().unwrap() = Some(child);
        std::thread::sleep(ms(200));
        panic!("test failure while the sim is up");
    })
    .join();
    assert!(r.is_err());
    assert_nothing_left(name, &[]);
    let mut child = slot.lock().unwrap().take().expect("child was spawned");
    let status = child.wait().expect("wait sleeper");
    assert!(!status.success(), "the process in the namespace was killed");
}

#[test]
fn killed_forwarder_and_leftovers_are_cleaned() {
    let name = "nt-kill";
    let (ok, out) = netsim(&["up", name]);
    assert!(ok, "{out}");
    let daemon = pid_of_ready(&out);
    // SIGKILL: no teardown runs. The TUN devices die with the process' fds...
    assert!(
        Command::new("kill")
            .args(["-KILL", &daemon.to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_until(Duration::from_secs(3), || {
        !netsim::process_alive(daemon)
    }));
    let links = Command::new("ip")
        .args(["-n", "nt-kill-c", "-o", "link"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("sim1"));
    // ...the namespaces remain until `up` (which cleans first) or `down`.
    assert!(ns_exists("nt-kill-c"));
    let (ok, out) = netsim(&["up", name, "--delay", "1ms"]);
    assert!(ok, "up over leftovers: {out}");
    let daemon2 = pid_of_ready(&out);
    // `up` over a *running* daemon of the same name replaces it.
    let (ok, out) = netsim(&["up", name]);
    assert!(ok, "up over a running sim: {out}");
    let daemon3 = pid_of_ready(&out);
    assert!(wait_until(Duration::from_secs(3), || {
        !netsim::process_alive(daemon2)
    }));
    let (ok, out) = netsim(&["down", name]);
    assert!(ok, "{out}");
    assert_nothing_left(name, &[daemon, daemon2, daemon3]);

    // Library: leftover namespaces from a crashed run are removed by Sim::up.
    let lname = "nt-left";
    for ns in ["nt-left-c", "nt-left-s"] {
        assert!(
            Command::new("ip")
                .args(["netns", "add", ns])
                .status()
                .unwrap()
                .success()
        );
    }
    let sim = up(lname, SimOpts::default());
    let echo = UdpEcho::start(&sim, addr::SERVER_V4[0].into(), 0).unwrap();
    let mut p = UdpPinger::new(&sim, echo.addr()).unwrap();
    assert!(p.ping(ms(500)).is_some());
    // A second library sim of the same live name is refused, not clobbered.
    let err = netsim::Sim::up(lname, SimOpts::default())
        .err()
        .expect("must refuse");
    assert!(format!("{err:#}").contains("still running"), "{err:#}");
    drop(echo);
    sim.down().unwrap();
    assert_nothing_left(lname, &[]);
}
