//! Following jobs until they end: live progress bars, or JSON lines.
//!
//! The follower survives a daemon restart: if the event stream breaks it reconnects
//! (for up to a minute) and resynchronises: a new Watch begins with snapshots of the
//! active jobs, and each followed job not among them is read once (it may have ended
//! while no stream was open).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use uplink_proto::grpc::{self, job_event::Kind};

use crate::{ClientError, connect, is_terminal, json};

/// How to show what happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// A progress bar per job on stderr (hidden when stderr is not a terminal).
    Bars,
    /// Every event as a JSON line on stdout, then each job's final record.
    Json,
    /// Nothing.
    Quiet,
}

const RECONNECT_TRIES: u32 = 120;
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Follows `ids` until every one has ended; returns their final records in `ids` order
/// (as their ending event or read carried them: the daemon may trim finished jobs later).
pub async fn follow(
    socket: &Path,
    ids: &[String],
    render: Render,
) -> Result<Vec<grpc::Job>, ClientError> {
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    // Each ended job, with its final record when the ending event carried it.
    let mut ended: HashMap<String, Option<grpc::Job>> = HashMap::new();
    let bars = Bars::new(render == Render::Bars);
    let show = |ev: &grpc::JobEvent| {
        if render == Render::Json {
            println!("{}", json::event(ev));
        }
        bars.show(ev);
    };
    let mut tries = 0u32;
    while ended.len() < want.len() {
        let mut client = match connect(socket).await {
            Ok(c) => c,
            Err(e) if tries < RECONNECT_TRIES => {
                tries += 1;
                tracing_pause(&e).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut stream = match client
            .watch(grpc::WatchRequest {
                job_id: String::new(),
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) if tries < RECONNECT_TRIES => {
                tries += 1;
                tracing_pause(&e).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // The stream is subscribed now, so a job that ends after this read still arrives
        // as an event; one that ended before does not, so read it.
        let mut lost = false;
        for id in ids {
            if ended.contains_key(id) {
                continue;
            }
            let job = match client
                .get_job(grpc::GetJobRequest { job_id: id.clone() })
                .await
            {
                Ok(j) => j.into_inner(),
                Err(e) if e.code() == tonic::Code::NotFound => return Err(e.into()),
                Err(_) => {
                    lost = true;
                    break;
                }
            };
            if is_terminal(job.state) {
                let ev = grpc::JobEvent {
                    job_id: id.clone(),
                    at_ms: crate::now_ms(),
                    kind: Some(Kind::Snapshot(job.clone())),
                };
                show(&ev);
                ended.insert(id.clone(), Some(job));
            }
        }
        if lost {
            if tries >= RECONNECT_TRIES {
                return Err(ClientError::Connect {
                    path: socket.to_path_buf(),
                    message: "the daemon stopped answering".into(),
                });
            }
            tries += 1;
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        }
        tries = 0;
        while ended.len() < want.len() {
            let ev = match stream.message().await {
                Ok(Some(ev)) => ev,
                // The daemon went away (restart): reconnect and resync.
                Ok(None) | Err(_) => break,
            };
            if !want.contains(ev.job_id.as_str()) || ended.contains_key(&ev.job_id) {
                continue;
            }
            show(&ev);
            if let Some(record) = final_record(&ev) {
                ended.insert(ev.job_id.clone(), record.cloned());
            }
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let job = match ended.get(id).cloned().flatten() {
            Some(j) => j,
            // An ending event without its record (not what uplinkd sends): read it.
            None => connect(socket)
                .await?
                .get_job(grpc::GetJobRequest { job_id: id.clone() })
                .await?
                .into_inner(),
        };
        if render == Render::Json {
            println!("{}", json::job(&job));
        }
        out.push(job);
    }
    Ok(out)
}

async fn tracing_pause(_why: &dyn std::fmt::Display) {
    tokio::time::sleep(RECONNECT_PAUSE).await;
}

/// If this event ends its job: `Some`, with the final record when the event carries it.
fn final_record(ev: &grpc::JobEvent) -> Option<Option<&grpc::Job>> {
    match &ev.kind {
        Some(Kind::Completed(grpc::Completed { job }))
        | Some(Kind::Failed(grpc::Failed { job }))
        | Some(Kind::Cancelled(grpc::Cancelled { job })) => Some(job.as_ref()),
        Some(Kind::Snapshot(j)) if is_terminal(j.state) => Some(Some(j)),
        _ => None,
    }
}

struct Bars {
    multi: Option<MultiProgress>,
    bars: std::sync::Mutex<BTreeMap<String, ProgressBar>>,
}

impl Bars {
    fn new(enabled: bool) -> Bars {
        Bars {
            multi: enabled.then(MultiProgress::new),
            bars: Default::default(),
        }
    }

    fn bar(&self, job_id: &str, total: u64, name: &str) -> Option<ProgressBar> {
        let multi = self.multi.as_ref()?;
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        let bar = bars.entry(job_id.to_string()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(total));
            let style = ProgressStyle::with_template(
                "{prefix:>16} [{bar:32}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta:>4} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b
        });
        if !name.is_empty() {
            bar.set_prefix(name.chars().take(16).collect::<String>());
        }
        if total > 0 {
            bar.set_length(total);
        }
        Some(bar.clone())
    }

    fn show(&self, ev: &grpc::JobEvent) {
        match &ev.kind {
            Some(Kind::Snapshot(j)) => {
                if let Some(b) = self.bar(&ev.job_id, j.size, &j.target) {
                    b.set_position(j.bytes_acked);
                    if is_terminal(j.state) {
                        b.finish_with_message(crate::state_name(j.state));
                    }
                }
            }
            Some(Kind::Started(s)) => {
                if let Some(b) = self.bar(&ev.job_id, 0, "") {
                    b.set_position(s.resumed_bytes);
                    b.set_message(format!("{} ×{}", s.protocol, s.streams));
                }
            }
            Some(Kind::Progress(p)) => {
                if let Some(b) = self.bar(&ev.job_id, p.total_bytes, "") {
                    b.set_position(p.acked_bytes);
                    b.set_message(format!("{} ×{}", p.protocol, p.streams));
                }
            }
            Some(Kind::Retrying(r)) => {
                if let Some(b) = self.bar(&ev.job_id, 0, "") {
                    b.set_message(format!(
                        "retry {} in {:.1}s: {}",
                        r.attempt, r.delay_seconds, r.why
                    ));
                }
            }
            Some(Kind::Incident(i)) => {
                if let Some(b) = self.bar(&ev.job_id, 0, "") {
                    b.set_message(format!("{}: {}", i.kind.replace('_', " "), i.why));
                }
            }
            Some(Kind::Completed(c)) => {
                if let (Some(b), Some(j)) = (self.bar(&ev.job_id, 0, ""), &c.job) {
                    b.set_position(j.size);
                    b.finish_with_message(format!(
                        "done sha256 {}…",
                        j.server_sha256.get(..12).unwrap_or("")
                    ));
                }
            }
            Some(Kind::Failed(f)) => {
                if let (Some(b), Some(j)) = (self.bar(&ev.job_id, 0, ""), &f.job) {
                    b.abandon_with_message(format!(
                        "failed: {}: {}",
                        j.error_code, j.error_message
                    ));
                }
            }
            Some(Kind::Cancelled(_)) => {
                if let Some(b) = self.bar(&ev.job_id, 0, "") {
                    b.abandon_with_message("cancelled");
                }
            }
            Some(Kind::Queued(_)) | None => {}
        }
    }
}
