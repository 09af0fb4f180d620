//! Shared pieces of the benchmarks: run a job, take medians, print tables.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

pub use uplink_e2e::peak_rss;
use uplink_e2e::{json_lines, uplink};

/// `uplink send FILE --wait --json`, returning the final job record.
pub fn send(socket: &Path, file: &Path, target: &str) -> serde_json::Value {
    let out = uplink(
        socket,
        &[
            "send",
            file.to_str().unwrap_or_default(),
            "--target",
            target,
            "--wait",
            "--json",
        ],
    );
    let record = json_lines(&out).pop().unwrap_or_default();
    assert_eq!(
        record["state"],
        "completed",
        "upload failed: {record} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    record
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Seconds a command takes; panics if it fails.
pub fn time_cmd(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

/// A `curl --http2 -T` PUT of `file` to the server's single-request endpoint; seconds.
/// `bearer` is the derived credential (`uplink-server --print-bearer`), not the token file's secret.
pub fn curl_put(netns: Option<&str>, ca: &Path, url: &str, bearer: &str, file: &Path) -> f64 {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    cmd.args(["-sS", "--fail", "--http2", "--cacert"])
        .arg(ca)
        .args([
            "-H",
            &format!("Authorization: Bearer {bearer}"),
            "-o",
            "/dev/null",
            "-T",
        ])
        .arg(file)
        .arg(url);
    time_cmd(&mut cmd)
}

/// CPU seconds (user + system) a process has used so far; 0 if it is gone.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5); here 0-based after the name: 11, 12.
    (ticks(11) + ticks(12)) / rustix::param::clock_ticks_per_second() as f64
}
