//! A file that changes during its upload is never completed half old, half new: the job
//! fails with `file_changed`, and the server forgets the session (no object, no state).

use std::io::Write;
use std::time::Duration;

use netsim::{Impair, Sim, SimOpts};
use uplink_e2e::*;

#[test]
fn a_file_appended_to_mid_upload_fails_with_its_code_and_nothing_is_completed() {
    // 100 Mbit/s: 48 MiB take about 4 s, time to change the file while it travels.
    let imp = Impair::default()
        .delay(Duration::from_millis(10))
        .rate_bps(100_000_000);
    let sim = Sim::up("e2e-src", SimOpts::symmetric(imp)).expect("netsim");
    let dir = workdir();
    let server = Server::start_in(dir.path(), &sim);
    let daemon = Daemon::start_in(dir.path(), &server, &sim);
    let file = dir.path().join("capture.bin");
    random_file(&file, 48 << 20);
    let job = enqueue(&daemon.socket, &file);
    // Some of it is on the server, most of it is not.
    let running = wait_for(Duration::from_secs(60), || {
        job_record(&daemon.socket, &job).filter(|j| {
            let acked = j["bytes_acked"].as_u64().unwrap_or(0);
            acked >= 1 << 20 && j["upload_id"].as_str().is_some_and(|u| !u.is_empty())
        })
    })
    .expect("the upload gets under way");
    let upload_id = running["upload_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        running["bytes_acked"].as_u64().unwrap_or(0) < 40 << 20,
        "the test needs the file changed mid-upload: {running}"
    );

    // The capture app writes on.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(b"one more frame"))
        .expect("append");

    let last = wait_done(&daemon.socket, &job);
    assert_eq!(last["state"], "failed", "{last}");
    assert_eq!(last["error_code"], "file_changed", "{last}");
    // Nothing was assembled, and the session is gone from the server.
    assert!(!server.object("capture.bin").exists());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = server_client(&server);
    let gone = wait_for(Duration::from_secs(20), || {
        rt.block_on(api.state(&upload_id)).err()
    });
    assert!(gone.is_some(), "the server still holds {upload_id}");
}
