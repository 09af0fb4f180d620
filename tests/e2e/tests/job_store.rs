//! The job store seen from outside: `uplink ls` pages through more jobs than one page,
//! finished jobs are trimmed to the retention setting, and Status reports only what the
//! daemon measures.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use uplink_e2e::*;

const JOBS: usize = 120;

fn ls(socket: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["ls", "--json"];
    args.extend_from_slice(extra);
    let out = uplink(socket, &args);
    assert!(
        out.status.success(),
        "ls failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out)
        .iter()
        .map(|j| j["job_id"].as_str().expect("job id").to_string())
        .collect()
}

/// Each job exactly once, in id (= creation) order.
fn assert_once_in_order(ids: &[String]) {
    let mut sorted = ids.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted.as_slice(), "listed out of order or twice");
}

#[tokio::test]
async fn ls_pages_through_every_job_once_and_old_ones_are_trimmed() {
    let dir = workdir();
    let d = dir.path();
    let server = Server::start(d);
    let mut daemon = Daemon::start(d, &server);
    let mut client = uplink::connect(&daemon.socket).await.expect("connect");
    let mut enqueued = BTreeSet::new();
    for n in 0..JOBS {
        let file = d.join(format!("f{n}.bin"));
        random_file(&file, 1024 + n as u64);
        let job = client
            .enqueue(uplink::grpc::EnqueueRequest {
                path: file.to_string_lossy().into_owned(),
                ..Default::default()
            })
            .await
            .expect("enqueue")
            .into_inner();
        enqueued.insert(job.job_id);
    }

    // More jobs than the daemon's default page (100): two requests, each job once.
    let first = client
        .list_jobs(uplink::grpc::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.jobs.len(), 100, "default page size");
    assert!(!first.next_page_token.is_empty());
    let all = ls(&daemon.socket, &[]);
    assert_eq!(all.len(), JOBS);
    assert_once_in_order(&all);
    assert_eq!(all.iter().cloned().collect::<BTreeSet<_>>(), enqueued);
    // A small page size walks many pages to the same list; --limit stops early.
    assert_eq!(ls(&daemon.socket, &["--page-size", "7"]), all);
    assert_eq!(ls(&daemon.socket, &["--limit", "5"]), all[..5]);
    assert_eq!(
        ls(&daemon.socket, &["--page-size", "3", "--limit", "8"]),
        all[..8]
    );
    // A token the daemon did not hand out is refused with its code.
    let bad = client
        .list_jobs(uplink::grpc::ListJobsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .expect_err("a made-up token must be refused");
    assert_eq!(uplink::error_code(&bad).as_deref(), Some("bad_page_token"));

    // Every job completes (they are small); then the state filter sees them all.
    let done = wait_for(Duration::from_secs(120), || {
        let done = ls(
            &daemon.socket,
            &["--state", "completed", "--page-size", "9"],
        );
        (done.len() == JOBS).then_some(done)
    })
    .expect("all jobs complete");
    assert_eq!(done.iter().cloned().collect::<BTreeSet<_>>(), enqueued);
    assert!(ls(&daemon.socket, &["--state", "queued"]).is_empty());

    // Status: counts from the index; the buffer pool is the engine's (sized by the memory
    // the system has left: one of the seed's 15, 8, 4, 2), all returned once jobs end.
    let out = uplink(&daemon.socket, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let status = json_lines(&out).pop().expect("status line");
    assert_eq!(status["jobs_queued"], 0, "{status}");
    assert_eq!(status["jobs_running"], 0, "{status}");
    assert_eq!(status["chunks_in_flight"], 0, "{status}");
    let engine = &status["engine"];
    assert!(
        [2, 4, 8, 15].contains(&engine["buffers"].as_u64().unwrap_or(0)),
        "{status}"
    );
    assert_eq!(engine["buffers_in_use"], 0, "{status}");
    assert_eq!(engine["jobs_active"], 0, "{status}");
    let text = uplink(&daemon.socket, &["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("buffers 0/"));
    // Nothing is active, so watching "every unfinished job" has nothing to follow.
    let watch = uplink(&daemon.socket, &["watch", "--json"]);
    assert!(watch.status.success(), "{watch:?}");
    assert!(String::from_utf8_lossy(&watch.stderr).contains("no unfinished jobs"));
    // A finished job can still be followed by id: its record is read, not replayed.
    let last = done.last().unwrap();
    let followed = uplink(&daemon.socket, &["watch", last, "--json"]);
    assert!(followed.status.success(), "{followed:?}");
    let lines = json_lines(&followed);
    assert_eq!(lines.last().unwrap()["job_id"], last.as_str());
    assert_eq!(lines.last().unwrap()["state"], "completed");

    // Restarted with a smaller retention, the daemon keeps the 50 that finished last.
    daemon.proc.term();
    let mut refused = Daemon::command(d, &server);
    refused.args(["--keep-finished-jobs", "0"]);
    let refused = refused.output().expect("run uplinkd");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("keep_finished_jobs 0 must lie in"),
        "{refused:?}"
    );
    let mut cmd = Daemon::command(d, &server);
    cmd.args(["--keep-finished-jobs", "50"]);
    let daemon = Daemon::start_cmd(d, cmd);
    let kept = wait_for(Duration::from_secs(30), || {
        let kept = ls(&daemon.socket, &[]);
        (kept.len() == 50).then_some(kept)
    })
    .expect("history trimmed to 50 at startup");
    assert_once_in_order(&kept);
    let finish_order = ls(&daemon.socket, &["--state", "completed"]);
    assert_eq!(finish_order.len(), 50);
    assert_eq!(
        finish_order,
        done[JOBS - 50..],
        "the jobs that finished last are kept"
    );
}
