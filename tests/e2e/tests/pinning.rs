//! CA-level key pinning (`uplinkd --pin-spki sha256/…`): a daemon pinned to the server's
//! CA uploads; one pinned to the server's leaf key, or to a key not in the chain, is
//! refused at the handshake with an error that names the pin check; a malformed pin
//! stops the daemon at start. The pins are computed the way an operator would, with
//! `openssl`, from the server's PEM files.

use std::path::Path;
use std::process::Command;

use uplink_e2e::*;

/// `sha256/<base64>` of the public key in the PEM certificate `cert` (HPKP's recipe).
fn openssl_pin(cert: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in \"$0\" -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64",
        )
        .arg(cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    format!("sha256/{}", String::from_utf8_lossy(&out.stdout).trim())
}

fn pinned_daemon(dir: &Path, name: &str, server: &Server, pin: &str) -> Daemon {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).expect("daemon dir");
    let mut cmd = Daemon::command(&home, server);
    cmd.args(["--pin-spki", pin]);
    Daemon::start_cmd(&home, cmd)
}

#[test]
fn only_a_chain_through_a_pinned_ca_is_accepted() {
    let dir = workdir();
    let d = dir.path();
    let server = Server::start(&d.join("server"));
    let ca_pin = openssl_pin(&server.ca);
    let leaf_pin = openssl_pin(&server.data_dir.join("tls").join("cert.pem"));
    assert_ne!(ca_pin, leaf_pin);

    // Pinned to the CA: uploads.
    let good = pinned_daemon(d, "ca-pinned", &server, &ca_pin);
    let file = d.join("capture.bin");
    seeded_file(&file, 6 << 20, 1);
    let record = send_wait(&good.socket, &file);
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(
        sha256_file(&server.object("capture.bin")),
        sha256_file(&file)
    );
    let (ok, text) = prewarm_output(&good);
    assert!(ok, "{text}");

    // Pinned to the leaf: refused, and told to pin a CA.
    let leaf = pinned_daemon(d, "leaf-pinned", &server, &leaf_pin);
    let (ok, text) = prewarm_output(&leaf);
    assert!(!ok, "a leaf pin connected: {text}");
    assert!(
        text.contains("SPKI pin check failed") && text.contains("leaf"),
        "{text}"
    );

    // Pinned to a key nobody has: refused, naming the check.
    let stranger = pinned_daemon(
        d,
        "other-pinned",
        &server,
        "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    let (ok, text) = prewarm_output(&stranger);
    assert!(!ok, "an unknown pin connected: {text}");
    assert!(
        text.contains("no CA in the server's chain has a pinned key"),
        "{text}"
    );
    // Its upload does not go anywhere: nothing of it reaches the server.
    let other = d.join("other.bin");
    seeded_file(&other, 100_000, 2);
    let _ = uplink(
        &stranger.socket,
        &["send", &other.to_string_lossy(), "--json"],
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!server.object("other.bin").exists());

    // A malformed pin stops the daemon at start, saying what a pin looks like.
    let home = d.join("bad-pin");
    std::fs::create_dir_all(&home).expect("dir");
    let out = Daemon::command(&home, &server)
        .args(["--pin-spki", "sha1/abc"])
        .output()
        .expect("run uplinkd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sha256/<base64"), "{err}");
}
