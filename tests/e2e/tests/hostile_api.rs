//! Hostile calls on the daemon's local gRPC API: bad paths, bad names, oversized metadata
//! and messages, unknown or malformed job ids, bad page tokens, and two thousand Watch
//! streams at once. Each call gets its gRPC status with a stable `uplink-error-code`
//! (or tonic's own refusal of an oversized message), none becomes a job, and the daemon
//! keeps serving: an upload goes through right after.

use std::collections::HashMap;
use std::time::Duration;

use tonic::Code;
use uplink::grpc::{
    CancelRequest, EnqueueRequest, GetJobRequest, ListJobsRequest, SealRequest, StatusRequest,
    WatchRequest,
};
use uplink_e2e::*;

/// Watch streams held open at once.
const WATCHERS: usize = 2000;

fn enqueue(path: &str) -> EnqueueRequest {
    EnqueueRequest {
        path: path.to_string(),
        ..Default::default()
    }
}

/// The gRPC code and `uplink-error-code` of a refusal.
fn refusal<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(s) => (s.code(), uplink::error_code(&s).unwrap_or_default()),
    }
}

#[tokio::test]
async fn hostile_calls_are_refused_with_stable_codes_and_the_daemon_keeps_serving() {
    let dir = workdir();
    let d = dir.path();
    let server = Server::start(d);
    let daemon = Daemon::start(d, &server);
    let mut c = uplink::connect(&daemon.socket).await.expect("connect");
    let file = d.join("capture.bin");
    seeded_file(&file, 300_000, 1);
    let path = file.to_string_lossy().into_owned();
    let mut tried = 0usize;
    let mut wrong = Vec::new();
    let mut check = |case: &str, got: (Code, String), want: (Code, &str)| {
        tried += 1;
        if (got.0, got.1.as_str()) != want {
            wrong.push(format!("{case}: got {got:?}, want {want:?}"));
        }
    };

    // ---- Enqueue ----
    let paths: Vec<(&str, String, (Code, &str))> = vec![
        (
            "an empty path",
            String::new(),
            (Code::InvalidArgument, "path_required"),
        ),
        (
            "a relative path",
            "capture.bin".into(),
            (Code::InvalidArgument, "path_not_absolute"),
        ),
        (
            "a path with a NUL",
            format!("{path}\0x"),
            (Code::InvalidArgument, "bad_path"),
        ),
        (
            "a 64 KiB path",
            format!("/{}", "a/".repeat(32 * 1024)),
            (Code::InvalidArgument, "bad_path"),
        ),
        (
            "a path climbing to a device",
            "/tmp/../dev/zero".into(),
            (Code::InvalidArgument, "not_a_regular_file"),
        ),
        (
            "the root dir",
            "/".into(),
            (Code::InvalidArgument, "is_a_directory"),
        ),
    ];
    for (case, p, want) in paths {
        check(case, refusal(c.enqueue(enqueue(&p)).await), want);
    }
    let targets = [
        ("a target climbing out", "../../etc/passwd".to_string()),
        ("a hidden target", ".ssh".to_string()),
        ("a 256-byte target", "t".repeat(256)),
        ("a target with a slash", "a/b".to_string()),
    ];
    for (case, target) in targets {
        let mut req = enqueue(&path);
        req.target = target;
        check(
            case,
            refusal(c.enqueue(req).await),
            (Code::InvalidArgument, "bad_target"),
        );
    }
    let metadata: Vec<(&str, HashMap<String, String>)> = vec![
        (
            "10,000 metadata entries",
            (0..10_000).map(|i| (format!("k{i}"), "v".into())).collect(),
        ),
        (
            "a 1 MiB metadata value",
            HashMap::from([("k".to_string(), "v".repeat(1 << 20))]),
        ),
        (
            "an empty metadata key",
            HashMap::from([(String::new(), "v".to_string())]),
        ),
    ];
    for (case, metadata) in metadata {
        let mut req = enqueue(&path);
        req.metadata = metadata;
        check(
            case,
            refusal(c.enqueue(req).await),
            (Code::InvalidArgument, "bad_metadata"),
        );
    }
    // Past the largest message the daemon decodes: tonic refuses it, no job.
    let mut req = enqueue(&path);
    req.metadata = HashMap::from([("k".to_string(), "v".repeat(8 << 20))]);
    let got = refusal(c.enqueue(req).await);
    check(
        "an 8 MiB request",
        (got.0, String::new()),
        (Code::OutOfRange, ""),
    );

    // ---- Job ids ----
    let ids = [
        ("an unknown job id", "0".repeat(32)),
        ("an empty job id", String::new()),
        ("a 1 MiB job id", "j".repeat(1 << 20)),
        ("a job id that is a path", "../../jobs".to_string()),
    ];
    let not_found = (Code::NotFound, "job_not_found");
    for (case, id) in &ids {
        let got = c.get_job(GetJobRequest { job_id: id.clone() }).await;
        check(&format!("GetJob: {case}"), refusal(got), not_found);
        let got = c.cancel(CancelRequest { job_id: id.clone() }).await;
        check(&format!("Cancel: {case}"), refusal(got), not_found);
        let got = c
            .seal(SealRequest {
                job_id: id.clone(),
                final_size: 10,
                rewritten: vec![],
            })
            .await;
        check(&format!("Seal: {case}"), refusal(got), not_found);
    }
    let got = c
        .watch(WatchRequest {
            job_id: "0".repeat(32),
        })
        .await;
    check("Watch: an unknown job id", refusal(got), not_found);

    // ---- Pages ----
    for (case, token) in [
        ("a page token that is not one", "garbage"),
        ("a page token of odd length", "abc"),
    ] {
        let got = c
            .list_jobs(ListJobsRequest {
                page_token: token.into(),
                ..Default::default()
            })
            .await;
        check(
            case,
            refusal(got),
            (Code::InvalidArgument, "bad_page_token"),
        );
    }
    let got = c
        .list_jobs(ListJobsRequest {
            state: 99,
            ..Default::default()
        })
        .await;
    check(
        "a state that does not exist",
        refusal(got),
        (Code::InvalidArgument, "bad_state"),
    );

    // Seal on a job that is not growing: a real job, a clear refusal.
    let job = c
        .enqueue(enqueue(&path))
        .await
        .expect("a good enqueue")
        .into_inner()
        .job_id;
    let got = c
        .seal(SealRequest {
            job_id: job.clone(),
            final_size: 300_000,
            rewritten: vec![],
        })
        .await;
    let (code, uplink_code) = refusal(got);
    check(
        "Seal on a job not growing",
        (Code::FailedPrecondition, uplink_code),
        (Code::FailedPrecondition, "not_growing"),
    );
    assert_eq!(code, Code::FailedPrecondition);

    assert!(
        wrong.is_empty(),
        "answered otherwise:\n{}",
        wrong.join("\n")
    );

    // ---- Two thousand Watch streams at once ----
    let mut streams = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let s = c
            .watch(WatchRequest::default())
            .await
            .expect("a Watch stream")
            .into_inner();
        streams.push(s);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), c.status(StatusRequest {}))
        .await
        .expect("Status answers with 2000 watchers open")
        .expect("Status");
    drop(status);
    let rss = peak_rss(daemon.proc.child.id());
    drop(streams);
    eprintln!(
        "hostile API: {tried} calls refused with their codes; {WATCHERS} Watch streams held, daemon peak RSS {} MiB",
        rss >> 20
    );
    assert!(
        rss < 512 << 20,
        "daemon peak RSS {} MiB with {WATCHERS} watchers",
        rss >> 20
    );

    // Only the one good job exists, and it completes; so does one more.
    let jobs = c
        .list_jobs(ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "a refused call became a job: {jobs:?}");
    let socket = daemon.socket.clone();
    let record = tokio::task::spawn_blocking(move || {
        let first = wait_done(&socket, &job);
        let other = dir.path().join("after.bin");
        seeded_file(&other, 2 << 20, 2);
        (first, send_wait(&socket, &other), dir)
    })
    .await
    .expect("wait");
    assert_eq!(record.0["state"], "completed", "{}", record.0);
    assert_eq!(record.1["state"], "completed", "{}", record.1);
}
