//! Nothing secret is written anywhere a user or an operator reads: the token text, the
//! bearer credential derived from it and the chunk secret appear in no log line of the
//! server or the daemon (at `trace`, every module), in no CLI output, and in no file of
//! the server's data dir or the daemon's state store. A full run: uploads over HTTP/2
//! and HTTP/3, and a daemon holding a wrong secret turned away with 401.

use uplink_e2e::*;
use uplink_proto::integrity::{ClientSecret, Credentials};

const LOG: [(&str, &str); 1] = [("UPLINK_LOG", "trace")];

/// The strings that must never be written out, for one token text.
fn secrets_of(token: &str) -> Vec<String> {
    let secret = ClientSecret::from_token_text(token).expect("token");
    let c = Credentials::derive(&secret);
    vec![
        token.to_string(),
        c.bearer().to_string(),
        hex::encode(c.chunk_secret().as_bytes()),
    ]
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn no_secret_reaches_a_log_the_cli_or_a_store() {
    let dir = workdir();
    let d = dir.path();
    let server = Server::start_env(&d.join("server"), &[], &LOG);

    // A daemon with the right secret: one file (its first requests over HTTP/2, then the
    // HTTP/3 the server advertises), then another.
    let home = d.join("device");
    std::fs::create_dir_all(&home).expect("device dir");
    let mut cmd = Daemon::command(&home, &server);
    cmd.envs(LOG);
    let daemon = Daemon::start_cmd(&home, cmd);
    let mut cli = Vec::new();
    let mut protocols = Vec::new();
    for (i, size) in [(1, 9 << 20), (2, 300_000)] {
        let file = home.join(format!("capture-{i}.bin"));
        seeded_file(&file, size, i);
        let record = send_wait(&daemon.socket, &file);
        assert_eq!(record["state"], "completed", "{record}");
        protocols.push(record["protocol"].as_str().unwrap_or_default().to_string());
        cli.push(record.to_string());
    }
    assert!(
        protocols.iter().any(|p| p == "h3"),
        "no upload went over HTTP/3: {protocols:?}"
    );
    for args in [&["status", "--json"][..], &["ls", "--json"]] {
        let out = uplink(&daemon.socket, args);
        cli.push(String::from_utf8_lossy(&out.stdout).into_owned());
        cli.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }

    // A daemon holding a wrong secret: turned away, and its secret is not written either.
    const WRONG: &str = "a-wrong-secret-0123456789";
    let stranger = d.join("stranger");
    std::fs::create_dir_all(&stranger).expect("stranger dir");
    let wrong_token = stranger.join("token");
    write_secret(&wrong_token, WRONG);
    let mut cmd = Daemon::command_as(&stranger, &server, None, &wrong_token);
    cmd.envs(LOG);
    let intruder = Daemon::start_cmd(&stranger, cmd);
    let file = stranger.join("x.bin");
    seeded_file(&file, 100_000, 3);
    let out = uplink(
        &intruder.socket,
        &["send", &file.to_string_lossy(), "--wait", "--json"],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("unauthorized"), "{text}");
    cli.push(text);
    cli.push(String::from_utf8_lossy(&out.stderr).into_owned());
    drop(intruder);
    drop(daemon);

    // Where to look: every log, every CLI output, the server's data and both state dirs.
    let mut places: Vec<(String, Vec<u8>)> = cli
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("CLI output {i}"), s.into_bytes()))
        .collect();
    let mut log_lines = 0;
    let mut stored = 0;
    for f in files_under(d) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // The token files themselves are where the secret belongs.
        if name == "token" || f.extension().is_some_and(|e| e == "bin") {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap_or_default();
        if name.ends_with(".log") {
            log_lines += bytes.iter().filter(|&&b| b == b'\n').count();
        } else {
            stored += 1;
        }
        places.push((f.display().to_string(), bytes));
    }
    assert!(
        log_lines > 1000,
        "only {log_lines} log lines: was trace on?"
    );
    let mut found = Vec::new();
    let mut secrets = secrets_of(TOKEN);
    secrets.extend(secrets_of(WRONG));
    for (place, bytes) in &places {
        for s in &secrets {
            if contains(bytes, s) {
                found.push(format!("{place} holds {}…", &s[..6]));
            }
        }
    }
    eprintln!(
        "secrets: {} log lines, {} stored files and {} CLI outputs searched for {} secrets",
        log_lines,
        stored,
        places.len() - stored,
        secrets.len()
    );
    assert!(
        found.is_empty(),
        "secrets written out:\n{}",
        found.join("\n")
    );
}

/// Key files, like token files, are refused when group or others may read them: the
/// server's TLS key (`--key`) and the daemon's checkpoint key in its state dir.
#[test]
fn key_files_others_can_read_are_refused() {
    let dir = workdir();
    let d = dir.path();
    let server = Server::start(&d.join("server"));
    let tls = server.data_dir.join("tls");
    let key = d.join("open.key");
    std::fs::copy(tls.join("key.pem"), &key).expect("copy key");
    chmod(&key, 0o644);
    let out = std::process::Command::new(bin("uplink-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(d.join("server-2"))
        .arg("--token-file")
        .arg(&server.token_file)
        .arg("--cert")
        .arg(tls.join("cert.pem"))
        .arg("--key")
        .arg(&key)
        .output()
        .expect("run uplink-server");
    assert!(
        !out.status.success(),
        "a server started with a 0644 TLS key"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS key") && err.contains("(mode 644): chmod 600 it"),
        "{err}"
    );

    let home = d.join("device");
    std::fs::create_dir_all(&home).expect("home");
    let mut daemon = Daemon::start(&home, &server);
    daemon.proc.kill9();
    let ckey = daemon.state_dir.join("checkpoint.key");
    assert!(ckey.exists(), "the daemon made its checkpoint key");
    chmod(&ckey, 0o640);
    let out = Daemon::command(&home, &server)
        .output()
        .expect("run uplinkd");
    assert!(
        !out.status.success(),
        "a daemon started with a 0640 checkpoint key"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checkpoint key") && err.contains("(mode 640): chmod 600 it"),
        "{err}"
    );
}
