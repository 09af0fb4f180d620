//! Following jobs until they end: live progress bars, or JSON lines.
//!
//! The follower survives a daemon restart: if the event stream breaks it reconnects
//! (for up to a minute) and resynchronises from the snapshots a new Watch begins with.

use std::collections::{BTreeMap, HashSet};
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

/// Follows `ids` until every one has ended; returns their final records in `ids` order.
pub async fn follow(
    socket: &Path,
    ids: &[String],
    render: Render,
) -> Result<Vec<grpc::Job>, ClientError> {
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut ended: HashSet<String> = HashSet::new();
    let bars = Bars::new(render == Render::Bars);
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
        tries = 0;
        loop {
            let ev = match stream.message().await {
                Ok(Some(ev)) => ev,
                // The daemon went away (restart): reconnect and resync.
                Ok(None) | Err(_) => break,
            };
            if !want.contains(ev.job_id.as_str()) {
                continue;
            }
            if render == Render::Json {
                println!("{}", json::event(&ev));
            }
            bars.show(&ev);
            if event_ends(&ev) {
                ended.insert(ev.job_id.clone());
                if ended.len() == want.len() {
                    break;
                }
            }
        }
    }
    let mut client = connect(socket).await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let job = client
            .get_job(grpc::GetJobRequest { job_id: id.clone() })
            .await?
            .into_inner();
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

fn event_ends(ev: &grpc::JobEvent) -> bool {
    match &ev.kind {
        Some(Kind::Completed(_) | Kind::Failed(_) | Kind::Cancelled(_)) => true,
        Some(Kind::Snapshot(j)) => is_terminal(j.state),
        _ => false,
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
