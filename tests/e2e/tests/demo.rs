//! The README's first command works: `uplink demo` starts everything, uploads, verifies.

use uplink_e2e::bin;

#[test]
fn uplink_demo_uploads_and_verifies_a_synthetic_capture() {
    let out = std::process::Command::new(bin("uplink"))
        .args(["demo", "--size", "48M"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("verified: the server's copy is identical"),
        "{stdout}"
    );
    assert!(stdout.contains("protocol        h3 with"), "{stdout}");
}

#[test]
fn uplink_demo_capture_uploads_while_writing_and_reports_seal_to_verified() {
    let out = std::process::Command::new(bin("uplink"))
        .args(["demo", "--capture", "--size", "32M", "--rate", "32M"])
        .output()
        .expect("run demo --capture");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo --capture failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("verified: the server's copy is identical"),
        "{stdout}"
    );
    assert!(stdout.contains("seal -> verified"), "{stdout}");
}
