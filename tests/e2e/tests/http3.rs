//! HTTP/3 on `uplink-server`, checked with clients that are not ours: aioquic (Python,
//! installed by `scripts/test`) for HTTP/3 and 0-RTT, curl for the HTTP/2 side's `Alt-Svc`.

use std::path::Path;
use std::process::Command;

use uplink_e2e::*;

/// The aioquic version `scripts/test` installs (tests/e2e/interop/requirements.txt).
const AIOQUIC: &str = "aioquic==1.7.2";

fn python() -> std::path::PathBuf {
    interop_python()
}

/// Runs tests/e2e/interop/h3_put.py; fails the test (never skips) when aioquic is missing.
fn h3_client(server: &Server, mode: &str) -> serde_json::Value {
    let probe = Command::new(python())
        .args(["-c", "import aioquic"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "this test needs the aioquic HTTP/3 client: `{} -m pip install {AIOQUIC}` \
             (scripts/test installs it; set UPLINK_PYTHON to use another interpreter): {other:?}",
            python().display()
        ),
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/h3_put.py");
    let port = server.addr.rsplit(':').next().expect("port").to_string();
    let out = Command::new(python())
        .arg(&script)
        .arg(mode)
        .args([
            "--port",
            &port,
            "--secret",
            TOKEN,
            "--bearer",
            &server.bearer(),
            "--ca",
        ])
        .arg(&server.ca)
        .output()
        .expect("run h3_put.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "h3_put.py {mode} failed: {stderr}\nserver log:\n{}",
        std::fs::read_to_string(server.dir.join("server.log")).unwrap_or_default()
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "h3_put.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `curl --http2` with the server's CA and the bearer credential.
fn curl(server: &Server, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["--http2", "-sS", "--max-time", "10", "--cacert"])
        .arg(&server.ca)
        .args(["-H", &format!("Authorization: Bearer {}", server.bearer())])
        .args(args)
        .output()
        .expect("curl is needed (.ci/run installs it)");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn foreign_http3_client_uploads_a_chunk() {
    let dir = workdir();
    let server = Server::start(dir.path());
    assert!(
        server.proc.ready.ends_with(" h3=1"),
        "ready line: {}",
        server.proc.ready
    );
    let got = h3_client(&server, "put");
    let id = got["upload_id"].as_str().expect("upload_id");
    assert_eq!(got["stored"]["duplicate"], false, "{got}");

    // The server's state and chunk list, read over HTTP/2 by another client: the chunk
    // HTTP/3 delivered.
    let get = |path: String| -> serde_json::Value {
        serde_json::from_str(&curl(&server, &[&format!("{}{path}", server.url())]))
            .expect("JSON answer")
    };
    let state = get(format!("/v1/uploads/{id}"));
    assert_eq!(state["received_bytes"], 300_000, "{state}");
    assert_eq!(
        state["ranges"],
        serde_json::json!([[0, 300_000]]),
        "{state}"
    );
    assert_eq!(state["chunk_count"], 1, "{state}");
    let page = get(format!("/v1/uploads/{id}/chunks?from=0&limit=10"));
    assert_eq!(page["chunks"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["chunks"][0]["offset"], 0);
    assert_eq!(page["next_from"], serde_json::Value::Null);
    assert_eq!(
        page["chunks"][0]["sha256"],
        got["page"]["chunks"][0]["sha256"]
    );
    // Past the only chunk, the page is empty.
    let past = get(format!("/v1/uploads/{id}/chunks?from=1"));
    assert_eq!(past["chunks"], serde_json::json!([]), "{past}");
}

#[test]
fn http2_responses_advertise_http3_on_the_same_port() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let port = server.addr.rsplit(':').next().expect("port");
    let head = curl(
        &server,
        &["-I", "-D", "-", &format!("{}/v1/ping", server.url())],
    );
    let alt = head
        .lines()
        .find_map(|l| l.strip_prefix("alt-svc: "))
        .unwrap_or_else(|| panic!("no alt-svc header in:\n{head}"));
    assert_eq!(alt.trim(), format!("h3=\":{port}\"; ma=86400"));
    // And the advertised UDP port is really taken, by the server.
    assert!(
        std::net::UdpSocket::bind(&server.addr).is_err(),
        "nothing listens on UDP {}",
        server.addr
    );
}

#[test]
fn no_h3_serves_http2_only_and_advertises_nothing() {
    let dir = workdir();
    let token = dir.path().join("token");
    write_secret(&token, TOKEN);
    let mut cmd = Command::new(bin("uplink-server"));
    cmd.args(["--listen", "127.0.0.1:0", "--no-h3", "--data-dir"])
        .arg(dir.path().join("server-data"))
        .arg("--token-file")
        .arg(&token);
    let proc = Proc::start(cmd, &dir.path().join("server.log"));
    assert!(proc.ready.ends_with(" h3=0"), "ready line: {}", proc.ready);
    let addr = proc.field("addr");
    let out = Command::new("curl")
        .args(["--http2", "-sS", "-I", "--cacert", &proc.field("ca")])
        .arg(format!("https://{addr}/v1/ping"))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/2 204"), "{head}");
    assert!(!head.contains("alt-svc"), "{head}");
    assert!(
        std::net::UdpSocket::bind(&addr).is_ok(),
        "UDP {addr} is bound although --no-h3"
    );
}

/// A resuming client sends complete, DELETE and a chunk PUT as 0-RTT and holds back the
/// server's handshake flight, so the server judges them before the handshake is done:
/// the chunk PUT runs (a replay-safe duplicate), complete and DELETE get 425 too_early and
/// change nothing; once the handshake is done the same requests run.
#[test]
fn zero_rtt_complete_and_delete_are_too_early() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let got = h3_client(&server, "zero-rtt");
    assert_eq!(
        got["early_data_accepted"], true,
        "the server must accept 0-RTT: {got}"
    );
    for req in ["complete", "delete"] {
        assert_eq!(got[req]["status"], 425, "{req}: {got}");
        assert_eq!(got[req]["body"]["code"], "too_early", "{req}: {got}");
    }
    assert_eq!(got["put"]["status"], 200, "{got}");
    assert_eq!(got["put"]["body"]["duplicate"], true, "{got}");
    // Refused means untouched: the upload is still there and not completed.
    assert_eq!(got["state_after"]["completed"], serde_json::Value::Null);
    assert_eq!(got["state_after"]["received_bytes"], 300_000);
    // After the handshake, complete is judged on its merits (the root was wrong on purpose).
    assert_eq!(got["complete_after_handshake"]["status"], 422, "{got}");
    assert_eq!(
        got["complete_after_handshake"]["body"]["code"], "merkle_mismatch",
        "{got}"
    );
    // A connection with a full handshake may delete with its very first request.
    assert_eq!(got["delete_1rtt"]["status"], 204, "{got}");
    let out = Command::new("curl")
        .args(["--http2", "-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--cacert")
        .arg(&server.ca)
        .args(["-H", &format!("Authorization: Bearer {}", server.bearer())])
        .arg(format!(
            "{}/v1/uploads/{}",
            server.url(),
            got["upload_id"].as_str().unwrap()
        ))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}
