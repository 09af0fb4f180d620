//! Tenants: `uplink-server --clients DIR` serves many clients, each with its own secret.
//! Each sees only its own uploads (another's id is 404, whatever the method) and its own
//! object names; nothing is overwritten unless asked; quotas answer with stable codes;
//! and a rotated secret keeps an upload in progress going. The real server, daemons, CLI
//! and `curl` as the foreign client.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use uplink_e2e::*;

const MIB: u64 = 1024 * 1024;

/// A clients dir with `alice` and `bob`; returns it.
fn clients_dir(dir: &Path) -> PathBuf {
    let clients = dir.join("clients");
    std::fs::create_dir_all(&clients).expect("clients dir");
    write_secret(&clients.join("alice.token"), "alice-secret-1");
    write_secret(&clients.join("bob.token"), "bob-secret-1");
    clients
}

/// A device of one tenant: its own daemon, state and copy of the secret.
fn device(dir: &Path, server: &Server, name: &str, secret: &str) -> (Daemon, PathBuf) {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).expect("device dir");
    let token = home.join("token");
    write_secret(&token, secret);
    let cmd = Daemon::command_as(&home, server, None, &token);
    (Daemon::start_cmd(&home, cmd), token)
}

/// The bearer credential of a secret file (what a plain HTTP client sends).
fn bearer_of(token_file: &Path) -> String {
    let out = Command::new(bin("uplink-server"))
        .arg("--token-file")
        .arg(token_file)
        .arg("--print-bearer")
        .output()
        .expect("run uplink-server --print-bearer");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `curl` against the server: (status, body).
fn curl(server: &Server, bearer: &str, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "20", "-X", method])
        .arg("--cacert")
        .arg(&server.ca)
        .arg("-H")
        .arg(format!("Authorization: Bearer {bearer}"))
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("{}{path}", server.url()))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `uplink send FILE [flags] --wait --json`: the final record.
fn send(daemon: &Daemon, file: &Path, flags: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "send",
        file.to_str().expect("utf-8 path"),
        "--wait",
        "--json",
    ];
    args.extend_from_slice(flags);
    let out = uplink(&daemon.socket, &args);
    json_lines(&out).pop().expect("send printed no record")
}

#[test]
fn tenants_see_only_their_own_uploads_and_objects() {
    let dir = workdir();
    let clients = clients_dir(dir.path());
    let server = Server::start_tenants(dir.path(), &clients, &[]);
    let objects = server.data_dir.join("objects");
    let object_sha = |object: &str| {
        let path = objects.join(object);
        path.exists().then(|| sha256_file(&path))
    };
    tenants_are_isolated(dir.path(), &server, &clients, &object_sha);
}

/// The same with the sessions and objects in an S3-compatible store (moto).
#[test]
fn tenants_see_only_their_own_uploads_and_objects_on_an_object_store() {
    let dir = workdir();
    let clients = clients_dir(dir.path());
    let s3 = S3Server::start(dir.path(), "tenants");
    let server = Server::start_tenants_env(
        dir.path(),
        &clients,
        &["--store", "s3://tenants/t"],
        &s3.env(),
    );
    let object_sha = |object: &str| s3.object_sha(&format!("t/objects/{object}")).map(|o| o.0);
    tenants_are_isolated(dir.path(), &server, &clients, &object_sha);
}

/// Alice and bob, each with a device, upload the same names; `object_sha` reads a stored
/// object (`<tenant>/<name>`) where the server keeps them.
fn tenants_are_isolated(
    dir: &Path,
    server: &Server,
    clients: &Path,
    object_sha: &dyn Fn(&str) -> Option<String>,
) {
    let (alice, _) = device(dir, server, "alice", "alice-secret-1");
    let (bob, _) = device(dir, server, "bob", "bob-secret-1");
    let alice_bearer = bearer_of(&clients.join("alice.token"));
    let bob_bearer = bearer_of(&clients.join("bob.token"));

    // The same object name from both: two objects, each in its tenant's place.
    let a_file = dir.join("alice").join("scan.bin");
    let b_file = dir.join("bob").join("scan.bin");
    seeded_file(&a_file, 6 * MIB, 1);
    seeded_file(&b_file, 3 * MIB, 2);
    let a = send(&alice, &a_file, &[]);
    let b = send(&bob, &b_file, &[]);
    assert_eq!(
        (a["state"].as_str(), b["state"].as_str()),
        (Some("completed"), Some("completed"))
    );
    let holds = |object: &str, file: &Path| {
        assert_eq!(object_sha(object), Some(sha256_file(file)), "{object}")
    };
    holds("alice/scan.bin", &a_file);
    holds("bob/scan.bin", &b_file);

    // Alice's upload id is nothing to bob: every method answers 404 unknown_upload.
    let id = a["upload_id"].as_str().expect("upload id").to_string();
    let path = format!("/v1/uploads/{id}");
    let (status, _) = curl(server, &alice_bearer, "GET", &path, &[]);
    assert_eq!(status, 200, "alice reads her own upload");
    for (method, p) in [
        ("GET", path.clone()),
        ("GET", format!("{path}/chunks")),
        ("DELETE", path.clone()),
        ("POST", format!("{path}/complete")),
    ] {
        let body = [
            "-H",
            "content-type: application/json",
            "--data",
            "{\"merkle_root\":\"00\"}",
        ];
        let extra: &[&str] = if method == "POST" { &body } else { &[] };
        let (status, body) = curl(server, &bob_bearer, method, &p, extra);
        assert_eq!(
            (status, code_of(&body).as_str()),
            (404, "unknown_upload"),
            "{method} {p}: {body}"
        );
    }
    let (status, _) = curl(server, &alice_bearer, "GET", &path, &[]);
    assert_eq!(status, 200, "bob's DELETE removed nothing");

    // An existing name is not overwritten unless asked.
    seeded_file(&a_file, 2 * MIB, 3);
    let again = send(&alice, &a_file, &[]);
    assert_eq!(again["state"], "failed", "{again}");
    assert_eq!(again["error_code"], "server_object_exists", "{again}");
    assert_ne!(object_sha("alice/scan.bin"), Some(sha256_file(&a_file)));
    let replaced = send(&alice, &a_file, &["--overwrite"]);
    assert_eq!(replaced["state"], "completed", "{replaced}");
    holds("alice/scan.bin", &a_file);
    holds("bob/scan.bin", &b_file);

    // The same for a whole object PUT (curl -T).
    let photo = dir.join("photo.jpg");
    seeded_file(&photo, 200_000, 4);
    let photo_arg = photo.to_str().expect("utf-8 path");
    let put = |extra: &[&str]| {
        let mut args = vec!["-T", photo_arg];
        args.extend_from_slice(extra);
        curl(server, &bob_bearer, "PUT", "/v1/objects/photo.jpg", &args)
    };
    assert_eq!(put(&[]).0, 201);
    let (status, body) = put(&[]);
    assert_eq!(
        (status, code_of(&body).as_str()),
        (409, "object_exists"),
        "{body}"
    );
    assert_eq!(put(&["-H", "X-Overwrite: 1"]).0, 201);
    assert_eq!(object_sha("bob/photo.jpg"), Some(sha256_file(&photo)));
    assert_eq!(object_sha("alice/photo.jpg"), None);

    // No credential, or a made-up one: 401.
    let (status, body) = curl(server, "0123", "GET", &path, &[]);
    assert_eq!((status, code_of(&body).as_str()), (401, "unauthorized"));
}

#[test]
fn a_token_file_others_can_read_is_refused_by_server_and_daemon() {
    let dir = workdir();
    let token = dir.path().join("token");
    std::fs::write(&token, "a-secret-0123456789").expect("token");
    chmod(&token, 0o644);
    let server = Command::new(bin("uplink-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--token-file")
        .arg(&token)
        .output()
        .expect("run uplink-server");
    let daemon = Command::new(bin("uplinkd"))
        .args(["--endpoint", "https://127.0.0.1:1", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(dir.path().join("d.sock"))
        .arg("--token-file")
        .arg(&token)
        .output()
        .expect("run uplinkd");
    for (who, out) in [("uplink-server", server), ("uplinkd", daemon)] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{who} started with a 0644 secret");
        assert!(
            err.contains("is readable by others (mode 644): chmod 600 it"),
            "{who}: {err}"
        );
    }
}

#[test]
fn quotas_answer_with_stable_codes() {
    let dir = workdir();
    let clients = clients_dir(dir.path());
    // Bob has a quota of his own: more bytes than the server's, one upload at a time.
    std::fs::write(
        clients.join("bob.quota"),
        "# bob pays for more\nbytes = 20000000\nsessions = 1\n",
    )
    .expect("bob.quota");
    let server = Server::start_tenants(
        dir.path(),
        &clients,
        &["--quota-sessions", "2", "--quota-bytes", "10000000"],
    );
    let alice = bearer_of(&clients.join("alice.token"));
    let bob = bearer_of(&clients.join("bob.token"));
    let create = |bearer: &str, name: &str, size: u64| {
        let json = format!("{{\"size\":{size},\"name\":\"{name}\"}}");
        curl(
            &server,
            bearer,
            "POST",
            "/v1/uploads",
            &[
                "-H",
                "content-type: application/json",
                "--data",
                &json,
                "-D",
                "-",
            ],
        )
    };
    assert_eq!(create(&alice, "a", 4_000_000).0, 201);
    // Past the byte quota (4 MB open + 7 MB > 10 MB): 413, not retryable.
    let (status, body) = create(&alice, "b", 7_000_000);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("quota_exceeded"), "{body}");
    assert_eq!(create(&alice, "b", 5_000_000).0, 201);
    // Past the session quota: 429 with Retry-After (one finishing makes room).
    let (status, body) = create(&alice, "c", 1);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_sessions"), "{body}");
    assert!(body.to_ascii_lowercase().contains("retry-after:"), "{body}");
    // A whole-object PUT opens no upload: at the session quota it still goes, as long as
    // its bytes fit (9 MB open + 0.9 MB of 10 MB), and past them it is refused. (The one
    // refused is under the 256 KiB the server reads of a refused body: past that the rest
    // of the stream is reset, and curl, still sending, may report the reset instead.)
    let put = |name: &str, size: u64| {
        let file = dir.path().join(name);
        seeded_file(&file, size, 5);
        let path = format!("/v1/objects/{name}");
        curl(
            &server,
            &alice,
            "PUT",
            &path,
            &["-T", file.to_str().expect("utf-8 path")],
        )
    };
    assert_eq!(put("first.jpg", 900_000).0, 201);
    let (status, body) = put("second.jpg", 200_000);
    assert_eq!(
        (status, code_of(&body).as_str()),
        (413, "quota_exceeded"),
        "{body}"
    );
    // Bob's quota is his own: 15 MB is past the server's 10 MB but within his 20 MB,
    // and his second upload is past his one session.
    assert_eq!(create(&bob, "a", 15_000_000).0, 201);
    let (status, body) = create(&bob, "b", 1);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_sessions"), "{body}");
}

#[test]
fn a_rotated_secret_keeps_an_upload_in_progress_going() {
    let dir = workdir();
    let clients = clients_dir(dir.path());
    let server = Server::start_tenants(dir.path(), &clients, &[]);
    let (alice, device_token) = device(dir.path(), &server, "alice", "alice-secret-1");
    let old_bearer = bearer_of(&clients.join("alice.token"));
    // A capture in progress: the upload follows the file as it grows.
    let file = dir.path().join("alice").join("capture.bin");
    std::fs::File::create(&file).expect("create");
    let out = uplink(
        &alice.socket,
        &["send", file.to_str().expect("utf-8"), "--growing", "--json"],
    );
    let job = json_lines(&out)[0]["job_id"]
        .as_str()
        .expect("job id")
        .to_string();
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .expect("open");
    let mut x = 7u64;
    let mut append = |mib: u64| {
        let mut buf = vec![0u8; (mib * MIB) as usize];
        fill_random(&mut buf, &mut x);
        writer.write_all(&buf).expect("append");
    };
    let reloads = |n: usize| {
        wait_for(Duration::from_secs(10), || {
            let log = std::fs::read_to_string(&server.proc.log).unwrap_or_default();
            (log.matches("clients reloaded").count() >= n).then_some(())
        })
        .unwrap_or_else(|| panic!("the server did not reload its clients {n} time(s)"));
    };
    append(8);
    wait_acked(&alice.socket, &job, 4 * MIB);

    // Rotation starts: the server takes the new secret and still accepts the old one; the
    // device gets the new secret in its token file.
    std::fs::rename(clients.join("alice.token"), clients.join("alice.previous")).expect("mv");
    write_secret(&clients.join("alice.token"), "alice-secret-2");
    server.hangup();
    reloads(1);
    write_secret(&device_token, "alice-secret-2");
    append(8);
    wait_acked(&alice.socket, &job, 12 * MIB);

    // Rotation ends: the old secret stops working, mid-upload.
    std::fs::remove_file(clients.join("alice.previous")).expect("rm previous");
    server.hangup();
    reloads(2);
    let nobody = format!("/v1/uploads/{}", "0".repeat(32));
    let (status, _) = curl(&server, &old_bearer, "GET", &nobody, &[]);
    assert_eq!(status, 401, "the old secret is refused once its grace ends");
    append(8);
    wait_acked(&alice.socket, &job, 20 * MIB);

    let out = uplink(&alice.socket, &["seal", &job, "--wait", "--json"]);
    let record = json_lines(&out).pop().expect("seal printed nothing");
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(
        sha256_file(&server.data_dir.join("objects/alice/capture.bin")),
        sha256_file(&file)
    );
    assert!(
        !alice.log_lines("token file holds a new secret").is_empty(),
        "the daemon switched secrets at the server's refusal"
    );
}

#[test]
fn a_secret_file_others_can_read_is_refused_at_start() {
    let dir = workdir();
    let clients = clients_dir(dir.path());
    chmod(&clients.join("bob.token"), 0o644);
    let out = Command::new(bin("uplink-server"))
        .arg("--clients")
        .arg(&clients)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .expect("run uplink-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bob.token is readable by others (mode 644)"),
        "{err}"
    );
}

/// Creates that arrive together all pass the early quota check; each is counted again as
/// it joins the server's uploads, so together they never open more than the quota.
#[tokio::test(flavor = "multi_thread")]
async fn creates_sent_at_once_never_open_more_uploads_than_the_quota() {
    let dir = workdir();
    let server = Server::start_opts(dir.path(), None, &["--quota-sessions", "2"]);
    let api = std::sync::Arc::new(server_client(&server));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let api = std::sync::Arc::clone(&api);
            tokio::spawn(async move {
                let req = uplink_proto::wire::CreateUpload {
                    deferred_length: false,
                    size: 10,
                    name: format!("burst-{i}.bin"),
                    metadata: Default::default(),
                    overwrite: false,
                };
                api.create(&format!("burst-{i}"), &req).await
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        match t.await.expect("create task") {
            Ok(_) => admitted += 1,
            refused => refused_with(refused, 429, "too_many_sessions"),
        }
    }
    assert_eq!(admitted, 2, "uploads opened by 16 creates at once, quota 2");
}
