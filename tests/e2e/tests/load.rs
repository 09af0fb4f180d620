//! Load: 50 devices, each its own `uplinkd` (own state dir and socket), hand 20 files of
//! mixed sizes to one `uplink-server` at once, spread over 5 tenants. Every object arrives
//! intact under its tenant, and the server's memory stays inside its buffer budget plus a
//! fixed base, however many uploads are open. The ingest rate is printed for the note.

use std::path::{Path, PathBuf};
use std::time::Instant;

use uplink_e2e::*;

const DAEMONS: usize = 50;
const FILES_PER_DAEMON: usize = 20;
const TENANTS: usize = 5;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// The server's budget for chunk bodies held in memory (`--max-buffered-bytes`).
const BUFFERED: u64 = 128 * MIB;
/// What the server may use beyond that budget: code, TLS and QUIC state of 50
/// connections, sessions, the allocator's slack. Measured peak on this machine: 228 MiB
/// in total (the printed line).
const BASE: u64 = 256 * MIB;

/// File `j` of a device: mostly photos and depth maps (1 byte to 600 KiB), some 1–3 MiB
/// frames, and one 4 MiB + 1 byte mesh that spans several chunks.
fn size_of_file(j: usize) -> u64 {
    match j {
        0 => 1,
        1..=14 => 4 * KIB + (j as u64 * 41 * KIB),
        15..=18 => MIB + (j as u64 - 15) * 683 * KIB,
        _ => 4 * MIB + 1,
    }
}

/// One device: its daemon, its files, the tenant it belongs to.
struct Device {
    daemon: Daemon,
    files: Vec<PathBuf>,
    tenant: String,
}

fn device(root: &Path, server: &Server, clients: &Path, i: usize) -> Device {
    let home = root.join(format!("device-{i:02}"));
    std::fs::create_dir_all(&home).expect("device dir");
    let tenant = format!("tenant{}", i % TENANTS);
    let token = home.join("token");
    let secret = std::fs::read_to_string(clients.join(format!("{tenant}.token"))).expect("secret");
    write_secret(&token, &secret);
    let files = (0..FILES_PER_DAEMON)
        .map(|j| {
            let f = home.join(format!("d{i:02}-f{j:02}.bin"));
            seeded_file(&f, size_of_file(j), (i * FILES_PER_DAEMON + j) as u64);
            f
        })
        .collect();
    let daemon = Daemon::start_cmd(&home, Daemon::command_as(&home, server, None, &token));
    Device {
        daemon,
        files,
        tenant,
    }
}

#[test]
fn fifty_daemons_twenty_uploads_each_all_intact_server_memory_bounded() {
    let dir = workdir();
    let clients = clients(dir.path());
    let server = Server::start_tenants(
        dir.path(),
        &clients,
        &["--max-buffered-bytes", &BUFFERED.to_string()],
    );
    let objects = server.data_dir.join("objects");
    let object_sha = |tenant: &str, name: &str| {
        let path = objects.join(tenant).join(name);
        path.exists().then(|| sha256_file(&path))
    };
    run_load(dir.path(), &server, &clients, DAEMONS, &object_sha);
}

/// The same against an object store (moto, with every request's signature checked), with
/// fewer devices: moto is one Python process on the same two cores.
#[test]
fn ten_daemons_twenty_uploads_each_into_an_object_store_all_intact_memory_bounded() {
    let dir = workdir();
    let clients = clients(dir.path());
    let s3 = S3Server::start(dir.path(), "load");
    let server = Server::start_tenants_env(
        dir.path(),
        &clients,
        &[
            "--max-buffered-bytes",
            &BUFFERED.to_string(),
            "--store",
            "s3://load/fleet",
        ],
        &s3.env(),
    );
    let stored = std::cell::OnceCell::new();
    let object_sha = |tenant: &str, name: &str| {
        let all = stored.get_or_init(|| s3.object_shas("fleet/objects/"));
        all.get(&format!("fleet/objects/{tenant}/{name}"))
            .map(|(sha, _)| sha.clone())
    };
    run_load(dir.path(), &server, &clients, 10, &object_sha);
}

/// A clients dir of [`TENANTS`] tenants.
fn clients(dir: &Path) -> PathBuf {
    let clients = dir.join("clients");
    std::fs::create_dir_all(&clients).expect("clients dir");
    for t in 0..TENANTS {
        write_secret(
            &clients.join(format!("tenant{t}.token")),
            &format!("load-secret-{t}"),
        );
    }
    clients
}

/// `daemons` devices hand over their files at once; every object must then read back
/// (`object_sha(tenant, name)`) as its file, and the server's peak memory stay bounded.
fn run_load(
    root: &Path,
    server: &Server,
    clients: &Path,
    daemons: usize,
    object_sha: &dyn Fn(&str, &str) -> Option<String>,
) {
    let devices: Vec<Device> = (0..daemons)
        .map(|i| device(root, server, clients, i))
        .collect();
    let total: u64 = (0..FILES_PER_DAEMON).map(size_of_file).sum::<u64>() * daemons as u64;

    // Every device hands over its 20 files at once and follows them to the end.
    let start = Instant::now();
    let outputs: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = devices
            .iter()
            .map(|d| {
                s.spawn(move || {
                    let mut args = vec!["send".to_string()];
                    args.extend(d.files.iter().map(|f| f.display().to_string()));
                    args.extend(["--wait".to_string(), "--json".to_string()]);
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    uplink(&d.daemon.socket, &args)
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().expect("send thread"))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();

    let mut completed = 0;
    for (d, out) in devices.iter().zip(&outputs) {
        let lines = json_lines(out);
        for f in &d.files {
            let path = f.display().to_string();
            let record = lines
                .iter()
                .rev()
                .find(|l| l["path"] == path.as_str() && l["state"].is_string())
                .unwrap_or_else(|| panic!("no final record for {path}: {out:?}"));
            assert_eq!(record["state"], "completed", "{record}");
            let name = f.file_name().expect("file name").to_string_lossy();
            assert_eq!(
                object_sha(&d.tenant, &name),
                Some(sha256_file(f)),
                "{}/{name}",
                d.tenant
            );
            completed += 1;
        }
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(completed, daemons * FILES_PER_DAEMON);

    let peak = peak_rss(server.proc.child.id());
    eprintln!(
        "load: {daemons} daemons x {FILES_PER_DAEMON} uploads, {} MiB in {secs:.1} s \
         ({:.0} MiB/s ingest); server peak RSS {} MiB (budget {} MiB + base {} MiB)",
        total / MIB,
        total as f64 / MIB as f64 / secs,
        peak / MIB,
        BUFFERED / MIB,
        BASE / MIB
    );
    assert!(peak > 0, "server peak RSS unreadable");
    assert!(
        peak < BUFFERED + BASE,
        "server peak RSS {} MiB beyond its budget {} MiB + {} MiB",
        peak / MIB,
        BUFFERED / MIB,
        BASE / MIB
    );
}
