//! The ingest server's CPU per GiB, beside nginx taking the same file, in one run, as
//! ratios to one `openssl dgst -sha256` pass over it (the machine is shared and noisy).
//!
//! Loopback, default 1024 MiB of random bytes:
//! - `uplink-server` fed by `uplinkd` over HTTP/3, and over HTTP/2 (`--no-h3`);
//! - `uplink-server` fed by one `curl --http2 -T` (the whole-object PUT);
//! - nginx 1.22 (`dav_methods PUT`, TLS, HTTP/2) fed by the same `curl --http2 -T`:
//!   it stores the body and hashes nothing.
//!
//! Each server takes the file once before it is measured (servers run for long; the
//! first upload into a fresh process also pays for its first touch of every buffer).
//!
//! Needs `nginx` (Debian: `apt-get install nginx-light`) and `openssl` on PATH.
//!
//!   cargo build --release --workspace && target/release/server-cpu [MIB]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uplink_bench::{cpu_secs, curl_put, send, time_cmd};
use uplink_e2e::{Daemon, Server, random_file, uplink, workdir};

/// CPU seconds of a process and its direct children (nginx's workers).
fn cpu_with_children(pid: u32) -> f64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    cpu_secs(pid)
        + children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .map(cpu_secs)
            .sum::<f64>()
}

/// One upload by a fresh daemon, after a first one of the same file that is not
/// measured (a server runs for long: its buffers are in place): (wall seconds, protocol,
/// server CPU seconds).
fn uplink_run(dir: &Path, name: &str, server: &Server, file: &Path) -> (f64, String, f64) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("dir");
    let daemon = Daemon::start(&d, server);
    let warm = uplink(&daemon.socket, &["prewarm"]);
    assert!(warm.status.success(), "{warm:?}");
    let first = send(&daemon.socket, file, &format!("{name}-warm-up"));
    assert_eq!(first["state"], "completed", "{first}");
    let pid = server.proc.child.id();
    let cpu0 = cpu_secs(pid);
    let rec = send(&daemon.socket, file, name);
    assert_eq!(rec["state"], "completed", "{rec}");
    (
        rec["total_seconds"].as_f64().unwrap_or(f64::NAN),
        rec["protocol"].as_str().unwrap_or("").to_string(),
        cpu_secs(pid) - cpu0,
    )
}

/// nginx on a free loopback port with its own self-signed certificate, storing PUT
/// bodies under `dir/www`.
struct Nginx {
    child: Child,
    port: u16,
    cert: std::path::PathBuf,
}

impl Drop for Nginx {
    /// SIGTERM, so the master takes its worker down with it (a SIGKILLed master leaves
    /// the worker running, holding the port); SIGKILL if it has not gone within 5 s.
    fn drop(&mut self) {
        uplink_e2e::terminate(&mut self.child, Duration::from_secs(5));
    }
}

fn start_nginx(dir: &Path) -> Nginx {
    for sub in ["www", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).expect("nginx dir");
    }
    let (cert, key) = (dir.join("nginx.crt"), dir.join("nginx.key"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl req");
    assert!(made.success(), "openssl req failed");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let d = dir.display();
    let conf = format!(
        "user root; worker_processes 1; daemon off; pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
  access_log off;
  client_body_temp_path {d}/tmp;
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    location / {{ root {d}/www; dav_methods PUT; client_max_body_size 0; }}
  }}
}}
",
        cert = cert.display(),
        key = key.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .spawn()
        .expect("start nginx (apt-get install nginx-light)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx { child, port, cert }
}

fn main() {
    let mib = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<u64>().ok())
        .unwrap_or(1024);
    let bytes = mib << 20;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let dir = workdir();
    let d = dir.path();
    let file = d.join("ingest.bin");
    random_file(&file, bytes);
    let _ = Command::new("cat")
        .arg(&file)
        .stdout(Stdio::null())
        .status();
    // openssl is one thread, CPU-bound on a cached file: its wall time is its CPU time.
    let floor = time_cmd(Command::new("openssl").args(["dgst", "-sha256"]).arg(&file));

    let s3 = Server::start_opts(&d.join("srv-h3"), None, &[]);
    let (w3, p3, c3) = uplink_run(d, "h3", &s3, &file);
    let t3 = s3.file_hash_tally();
    drop(s3);
    let s2 = Server::start_opts(&d.join("srv-h2"), None, &["--no-h3"]);
    let (w2, p2, c2) = uplink_run(d, "h2", &s2, &file);
    let t2 = s2.file_hash_tally();
    let pid = s2.proc.child.id();
    let cpu0 = cpu_secs(pid);
    let wc = curl_put(
        None,
        &s2.ca,
        &format!("{}/v1/objects/curl.bin", s2.url()),
        &s2.bearer(),
        &file,
    );
    let cc = cpu_secs(pid) - cpu0;
    drop(s2);

    let nginx = start_nginx(&d.join("nginx"));
    // Warmed up like the others: the same PUT once, not measured.
    curl_put(
        None,
        &nginx.cert,
        &format!("https://127.0.0.1:{}/warm-up.bin", nginx.port),
        "-",
        &file,
    );
    let npid = nginx.child.id();
    let cpu0 = cpu_with_children(npid);
    let wn = curl_put(
        None,
        &nginx.cert,
        &format!("https://127.0.0.1:{}/curl.bin", nginx.port),
        "-",
        &file,
    );
    let cn = cpu_with_children(npid) - cpu0;
    let stored = std::fs::metadata(d.join("nginx/www/curl.bin")).map_or(0, |m| m.len());
    assert_eq!(stored, bytes, "nginx stored {stored} of {bytes} bytes");
    drop(nginx);

    println!(
        "server CPU per GiB, loopback, {mib} MiB     CPU s/GiB   vs openssl   wall s\n{:<42} {:>9.2} {:>11.2}x {:>8.2}",
        "openssl dgst -sha256 (one pass)",
        floor / gib,
        1.0,
        floor
    );
    for (what, cpu, wall) in [
        (format!("uplink-server <- uplinkd ({p3})"), c3, w3),
        (format!("uplink-server <- uplinkd ({p2})"), c2, w2),
        ("uplink-server <- curl --http2 -T".to_string(), cc, wc),
        ("nginx PUT <- curl --http2 -T (no hash)".to_string(), cn, wn),
    ] {
        println!(
            "{what:<42} {:>9.2} {:>11.2}x {wall:>8.2}",
            cpu / gib,
            cpu / floor
        );
    }
    // Chunks sent as links of the file's hash spare the server a second SHA-256 pass.
    for (what, tally) in [(p3, t3), (p2, t2)] {
        match tally {
            Some((linked, again)) => println!(
                "uplink-server ({what}): whole-file SHA-256 took {} MiB on chunk links, hashed {} MiB again",
                linked >> 20,
                again >> 20
            ),
            None => println!("uplink-server ({what}): no whole-file hash in its log"),
        }
    }
}
