//! Enqueue refuses bad input with a clear, stable error; the socket serves its owner only.

use std::process::Command;

use uplink_e2e::*;

const NOBODY: u32 = 65534;

fn refused(out: &std::process::Output, code: &str) {
    assert!(!out.status.success(), "expected a refusal, got success");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(code), "expected {code} in: {err}");
}

#[tokio::test]
async fn each_bad_input_gets_its_error_code() {
    let dir = workdir();
    let d = dir.path();
    let server = Server::start(d);
    let daemon = Daemon::start(d, &server);
    let mut client = uplink::connect(&daemon.socket).await.expect("connect");
    let enqueue_code = |path: String| {
        let mut c = client.clone();
        async move {
            let status = c
                .enqueue(uplink::grpc::EnqueueRequest {
                    path,
                    ..Default::default()
                })
                .await
                .expect_err("must be refused");
            uplink::error_code(&status).unwrap_or_default()
        }
    };
    std::fs::write(d.join("empty"), b"").unwrap();
    let status = Command::new("mkfifo").arg(d.join("fifo")).status().unwrap();
    assert!(status.success());
    std::fs::File::create(d.join("huge"))
        .unwrap()
        .set_len(100_000_000_001)
        .unwrap();
    let p = |n: &str| d.join(n).to_string_lossy().into_owned();
    assert_eq!(
        enqueue_code("relative/capture.ply".into()).await,
        "path_not_absolute"
    );
    assert_eq!(enqueue_code(p("missing")).await, "file_not_found");
    assert_eq!(enqueue_code(p("")).await, "is_a_directory");
    assert_eq!(enqueue_code(p("fifo")).await, "not_a_regular_file");
    assert_eq!(enqueue_code("/dev/null".into()).await, "not_a_regular_file");
    assert_eq!(enqueue_code(p("empty")).await, "file_empty");
    assert_eq!(enqueue_code(p("huge")).await, "file_too_large");
    // The CLI shows the code and the sentence.
    refused(
        &uplink(&daemon.socket, &["send", &p("missing")]),
        "file_not_found",
    );
    let jobs = client
        .list_jobs(uplink::grpc::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(jobs.is_empty(), "no refused input became a job");
}

#[test]
fn an_unreadable_file_is_refused() {
    // Root reads everything, so daemon and CLI run as an unprivileged uid here.
    let dir = workdir();
    let d = dir.path();
    let server = Server::start(d);
    let secret = d.join("secret.bin");
    std::fs::write(&secret, b"private").unwrap();
    chmod(&secret, 0o600);
    let state = d.join("daemon-state");
    std::fs::create_dir(&state).unwrap();
    rustix::fs::chown(&state, Some(rustix::process::Uid::from_raw(NOBODY)), None).unwrap();
    chmod(&server.ca, 0o644);
    // Its own copy of the secret, owned by the uid it runs as (a secret is 0600).
    let token = d.join("daemon-token");
    write_secret(&token, TOKEN);
    rustix::fs::chown(&token, Some(rustix::process::Uid::from_raw(NOBODY)), None).unwrap();
    let mut cmd = Daemon::command_as(d, &server, None, &token);
    std::os::unix::process::CommandExt::uid(&mut cmd, NOBODY);
    std::os::unix::process::CommandExt::gid(&mut cmd, NOBODY);
    cmd.env("HOME", "/");
    // The daemon creates its socket in the work dir.
    rustix::fs::chown(d, Some(rustix::process::Uid::from_raw(NOBODY)), None).unwrap();
    let socket = d.join("uplinkd.sock");
    let _daemon = Daemon::start_cmd(d, cmd);
    refused(
        &uplink_as(NOBODY, &socket, &["send", secret.to_str().unwrap()]),
        "permission_denied",
    );
}

#[test]
fn another_uid_cannot_use_the_socket() {
    let dir = workdir();
    let server = Server::start(dir.path());
    let daemon = Daemon::start(dir.path(), &server);
    // The file mode keeps others out...
    let out = uplink_as(NOBODY, &daemon.socket, &["status"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach uplinkd"),
        "{out:?}"
    );
    // ...and if the mode is loosened by mistake, the peer-uid check still refuses.
    chmod(&daemon.socket, 0o666);
    refused(
        &uplink_as(NOBODY, &daemon.socket, &["status"]),
        "peer_not_owner",
    );
    // The owner is served.
    let ok = uplink(&daemon.socket, &["status"]);
    assert!(ok.status.success(), "{ok:?}");
}

#[test]
fn a_refused_file_among_many_is_named_and_the_others_are_still_enqueued_in_order() {
    let dir = workdir();
    let d = dir.path();
    let server = Server::start(d);
    let daemon = Daemon::start(d, &server);
    let good: Vec<_> = (0..40)
        .map(|i| d.join(format!("photo-{i:02}.jpg")))
        .collect();
    for f in &good {
        random_file(f, 4096);
    }
    let missing = d.join("missing.jpg");
    let mut args = vec!["send".to_string(), "--json".to_string()];
    args.extend(good[..20].iter().map(|p| p.display().to_string()));
    args.push(missing.display().to_string());
    args.extend(good[20..].iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = uplink(&daemon.socket, &args);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.jpg") && err.contains("file_not_found"),
        "{err}"
    );
    let printed: Vec<String> = json_lines(&out)
        .iter()
        .map(|j| j["path"].as_str().unwrap_or_default().to_string())
        .collect();
    let expected: Vec<String> = good.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(printed, expected, "every good file, in the order given");
}
