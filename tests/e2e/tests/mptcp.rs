//! The seed's Wi-Fi + cellular bonding on Linux: HTTP/2 over MPTCP through netsim's two
//! paths (50 Mbit/s and 50 ms RTT each). The client namespace announces its path-2
//! address as a subflow endpoint (`ip mptcp endpoint add … subflow`), as a host with two
//! networks would; both ends allow two subflows. One upload then runs over both paths at
//! once, and when path 1 dies mid-upload the connections carry on over path 2 and the
//! file arrives intact. The single-path rate is measured in the same run, before the
//! endpoint exists.

use std::process::Command;
use std::time::Duration;

use netsim::{DirSel, Impair, PathSel, Sim, SimOpts, addr};
use uplink_e2e::*;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 96 * MIB;

/// `ip ARGS` inside namespace `ns`.
fn ip_in(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ip"])
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Uploads `file` through `daemon` over HTTP/2 (running `during` once 8 MiB are
/// acknowledged): seconds from enqueue to completed.
fn upload(daemon: &Daemon, file: &std::path::Path, during: impl FnOnce()) -> f64 {
    let lines = upload_through(daemon, file, 8 * MIB, during);
    let record = lines.last().cloned().unwrap_or_default();
    assert_eq!(record["protocol"], "h2");
    record["total_seconds"].as_f64().unwrap_or(0.0)
}

#[test]
fn one_http2_upload_uses_both_paths_and_survives_losing_one() {
    let imp = Impair::default()
        .delay(Duration::from_millis(25))
        .rate_bps(50_000_000);
    let sim = Sim::up("e2e-mp", SimOpts::symmetric(imp).path2(imp)).expect("netsim");
    let (client, server_ns) = (sim.client_ns(), sim.server_ns());
    for ns in [&client, &server_ns] {
        ip_in(
            ns,
            &[
                "mptcp",
                "limits",
                "set",
                "subflows",
                "2",
                "add_addr_accepted",
                "2",
            ],
        );
    }
    let dir = workdir();
    let server = Server::start_opts(dir.path(), Some(&sim), &["--no-h3"]);
    let files: Vec<_> = ["single.bin", "both.bin", "cut.bin"]
        .iter()
        .map(|n| {
            let f = dir.path().join(n);
            random_file(&f, SIZE);
            f
        })
        .collect();

    for d in ["single", "both"] {
        std::fs::create_dir_all(dir.path().join(d)).expect("daemon dir");
    }
    // One path: no subflow endpoint yet.
    let single = {
        let daemon = Daemon::start_in(&dir.path().join("single"), &server, &sim);
        upload(&daemon, &files[0], || {})
    };

    // Both paths: the client announces path 2; new connections add a subflow over it.
    let path2 = addr::CLIENT_V4[1].to_string();
    ip_in(
        &client,
        &[
            "mptcp",
            "endpoint",
            "add",
            &path2,
            "dev",
            addr::IFACE[1],
            "subflow",
        ],
    );
    let daemon = Daemon::start_in(&dir.path().join("both"), &server, &sim);
    let p2_before = sim.stats(PathSel::P2, DirSel::Up).tx_bytes;
    let both = upload(&daemon, &files[1], || {});
    let p2 = sim.stats(PathSel::P2, DirSel::Up).tx_bytes - p2_before;
    let rate = |secs: f64| SIZE as f64 * 8.0 / secs / 1e6;
    eprintln!(
        "single path {single:.2} s ({:.1} Mbit/s); both paths {both:.2} s ({:.1} Mbit/s): {:.2}x; \
         path 2 carried {:.0} % of the file",
        rate(single),
        rate(both),
        single / both,
        p2 as f64 * 100.0 / SIZE as f64
    );
    assert!(
        p2 >= SIZE / 4,
        "path 2 carried only {p2} bytes of {SIZE}: the upload did not use both paths"
    );

    // Path 1 dies mid-upload: the connections carry on over path 2.
    let cut = upload(&daemon, &files[2], || {
        sim.set_link(PathSel::P1, false).expect("path 1 down");
    });
    eprintln!("with path 1 cut after 8 MiB: {cut:.2} s");
}
