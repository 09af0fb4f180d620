//! `uplink`: the command-line companion of `uplinkd`.

mod demo;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use uplink::follow::{Render, follow};
use uplink::{ClientError, connect, for_each_job, grpc, json, state_name};

#[derive(Parser, Debug)]
#[command(
    name = "uplink",
    version,
    about = "Hand files to uplinkd and follow their upload"
)]
struct Cli {
    /// The daemon's socket (default: $UPLINK_SOCKET, else the platform default).
    #[arg(long, global = true, env = "UPLINK_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Enqueue files for upload and print their job ids.
    Send {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Follow the jobs until they end (progress bars, or JSON with --json).
        #[arg(long)]
        wait: bool,
        /// One JSON object per line: the job ids, then events, then each final job record.
        #[arg(long)]
        json: bool,
        /// Object name on the server (one file only; default: the file name).
        #[arg(long)]
        target: Option<String>,
        /// Metadata KEY=VALUE (repeatable).
        #[arg(long = "meta", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        /// The files are still being written (a capture in progress): upload what is
        /// written as it grows, complete after `uplink seal`.
        #[arg(long)]
        growing: bool,
        /// Replace objects of the same name on the server (without it, a name the server
        /// already holds fails that job with `server_object_exists`).
        #[arg(long)]
        overwrite: bool,
    },
    /// A growing job's file is finished: send the tail and complete it.
    Seal {
        job: String,
        /// The file's final size in bytes (default: its size now).
        #[arg(long)]
        size: Option<u64>,
        /// A range rewritten behind the upload, OFFSET+LENGTH (repeatable): e.g. a header
        /// patched at the end. Changed chunks there go again; elsewhere they fail the job.
        #[arg(long = "rewritten", value_parser = parse_range)]
        rewritten: Vec<(u64, u64)>,
        /// Follow the job until it ends.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Follow a job (or every unfinished job) until it ends.
    Watch {
        job: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List jobs (every one, oldest first, fetched a page at a time).
    Ls {
        #[arg(long)]
        json: bool,
        /// Only jobs in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Stop after this many jobs.
        #[arg(long)]
        limit: Option<usize>,
        /// Jobs fetched per request (the daemon's default 100, at most 1000).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        page_size: u32,
    },
    /// Cancel a job (and free its space on the server).
    Cancel { job: String },
    /// The daemon's state: endpoint, connections, queue.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Warm the connection to the server (call when a capture starts).
    Prewarm {
        /// Keep the connections warm this many seconds if no job comes (default: the
        /// daemon's setting, 300 s).
        #[arg(long, default_value_t = 0)]
        keep_warm: u32,
    },
    /// Start a local server and daemon, upload a synthetic capture, verify it, report.
    Demo(demo::DemoArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StateArg {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl StateArg {
    fn to_proto(self) -> grpc::JobState {
        match self {
            StateArg::Queued => grpc::JobState::Queued,
            StateArg::Running => grpc::JobState::Running,
            StateArg::Completed => grpc::JobState::Completed,
            StateArg::Failed => grpc::JobState::Failed,
            StateArg::Cancelled => grpc::JobState::Cancelled,
        }
    }
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    s.split_once('+')
        .and_then(|(o, l)| Some((o.parse().ok()?, l.parse().ok()?)))
        .ok_or_else(|| format!("{s:?} is not OFFSET+LENGTH (bytes)"))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli.socket.clone().unwrap_or_else(uplink::default_socket);
    match run(cli.cmd, socket).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uplink: {e}");
            ExitCode::from(2)
        }
    }
}

fn render_for(as_json: bool) -> Render {
    if as_json { Render::Json } else { Render::Bars }
}

/// Prints each job's outcome (unless JSON already did) and picks the exit code.
fn finish(jobs: &[grpc::Job], as_json: bool) -> ExitCode {
    if !as_json {
        for j in jobs {
            print_summary(j);
        }
    }
    exit_for(jobs)
}

fn exit_for(jobs: &[grpc::Job]) -> ExitCode {
    if jobs.iter().all(|j| state_name(j.state) == "completed") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(cmd: Cmd, socket: PathBuf) -> Result<ExitCode, ClientError> {
    match cmd {
        Cmd::Send {
            files,
            wait,
            json: as_json,
            target,
            meta,
            growing,
            overwrite,
        } => {
            if target.is_some() && files.len() > 1 {
                eprintln!("uplink: --target names one object; give one file");
                return Ok(ExitCode::from(2));
            }
            let client = connect(&socket).await?;
            let metadata: HashMap<String, String> = meta.into_iter().collect();
            let mut ids = Vec::new();
            let mut failed = None;
            // Up to 32 enqueues in flight on the one connection (each waits for the
            // daemon's durable write; together they share its disk syncs), printed in order.
            for batch in files.chunks(32) {
                let calls: Vec<_> = batch
                    .iter()
                    .map(|f| {
                        // The daemon wants absolute paths; resolve relative ones against our cwd.
                        let path = std::path::absolute(f).unwrap_or_else(|_| f.clone());
                        let req = grpc::EnqueueRequest {
                            path: path.to_string_lossy().into_owned(),
                            target: target.clone().unwrap_or_default(),
                            metadata: metadata.clone(),
                            growing,
                            overwrite,
                        };
                        let mut c = client.clone();
                        (path, tokio::spawn(async move { c.enqueue(req).await }))
                    })
                    .collect();
                for (path, call) in calls {
                    let result = match call.await {
                        Ok(r) => r.map_err(ClientError::from),
                        Err(e) => Err(ClientError::Rpc(tonic::Status::internal(e.to_string()))),
                    };
                    match result {
                        Ok(resp) => {
                            let id = resp.into_inner().job_id;
                            if as_json {
                                println!("{}", serde_json::json!({"job_id": id, "path": path}));
                            } else {
                                println!("{id}");
                            }
                            ids.push(id);
                        }
                        // Every file that was enqueued is still reported, each refusal with
                        // its file.
                        Err(e) => {
                            eprintln!("uplink: {}: {e}", path.display());
                            failed = Some(());
                        }
                    }
                }
            }
            if failed.is_some() {
                return Ok(ExitCode::from(2));
            }
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            let jobs = follow(&socket, &ids, render_for(as_json)).await?;
            Ok(finish(&jobs, as_json))
        }
        Cmd::Watch { job, json: as_json } => {
            let ids = match job {
                Some(j) => vec![j],
                None => {
                    // Running first, then queued: the order they run in.
                    let mut c = connect(&socket).await?;
                    let mut ids = Vec::new();
                    for state in [grpc::JobState::Running, grpc::JobState::Queued] {
                        let req = grpc::ListJobsRequest {
                            state: state as i32,
                            ..Default::default()
                        };
                        for_each_job(&mut c, req, None, |j| ids.push(j.job_id)).await?;
                    }
                    ids
                }
            };
            if ids.is_empty() {
                eprintln!("uplink: no unfinished jobs");
                return Ok(ExitCode::SUCCESS);
            }
            let jobs = follow(&socket, &ids, render_for(as_json)).await?;
            Ok(finish(&jobs, as_json))
        }
        Cmd::Ls {
            json: as_json,
            state,
            limit,
            page_size,
        } => {
            let mut c = connect(&socket).await?;
            let req = grpc::ListJobsRequest {
                page_size,
                page_token: String::new(),
                state: state.map_or(grpc::JobState::Unspecified, StateArg::to_proto) as i32,
            };
            if !as_json {
                println!(
                    "{:<24} {:<10} {:>12} {:>7}  PATH",
                    "JOB", "STATE", "SIZE", "DONE"
                );
            }
            // Printed as the pages arrive: a long history never sits in memory whole.
            for_each_job(&mut c, req, limit, |j| {
                if as_json {
                    println!("{}", json::job(&j));
                } else {
                    print_row(&j);
                }
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Seal {
            job,
            size,
            rewritten,
            wait,
            json: as_json,
        } => {
            let mut c = connect(&socket).await?;
            let final_size = match size {
                Some(s) => s,
                None => {
                    let j = c
                        .get_job(grpc::GetJobRequest {
                            job_id: job.clone(),
                        })
                        .await?
                        .into_inner();
                    match std::fs::metadata(&j.path) {
                        Ok(m) => m.len(),
                        Err(e) => {
                            eprintln!("uplink: {}: {e}; give --size", j.path);
                            return Ok(ExitCode::from(2));
                        }
                    }
                }
            };
            let rewritten = rewritten
                .into_iter()
                .map(|(offset, length)| grpc::ByteRange { offset, length })
                .collect();
            let req = grpc::SealRequest {
                job_id: job.clone(),
                final_size,
                rewritten,
            };
            let j = c.seal(req).await?.into_inner();
            if !wait {
                match as_json {
                    true => println!("{}", json::job(&j)),
                    false => println!("{} sealed at {} bytes", j.job_id, j.size),
                }
                return Ok(ExitCode::SUCCESS);
            }
            let jobs = follow(&socket, &[job], render_for(as_json)).await?;
            Ok(finish(&jobs, as_json))
        }
        Cmd::Cancel { job } => {
            let mut c = connect(&socket).await?;
            let j = c
                .cancel(grpc::CancelRequest { job_id: job })
                .await?
                .into_inner();
            println!("{} {}", j.job_id, state_name(j.state));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json: as_json } => {
            let mut c = connect(&socket).await?;
            let s = c.status(grpc::StatusRequest {}).await?.into_inner();
            if as_json {
                let eps: Vec<_> = s
                    .endpoints
                    .iter()
                    .map(|e| serde_json::json!({"url": e.url, "protocol": e.protocol, "connected": e.connected,
                        "connections": e.connections, "last_connect_ms": e.last_connect_ms, "circuit": e.circuit,
                        "rtt_ms": e.rtt_ms, "handshake": e.handshake, "warm": e.warm,
                        "tcp_congestion": e.tcp_congestion, "tcp_congestion_note": e.tcp_congestion_note,
                        "quic_congestion": e.quic_congestion, "health": e.health,
                        "circuit_retry_ms": e.circuit_retry_ms}))
                    .collect();
                let engine = s.engine.as_ref().map(|e| serde_json::json!({"tier": e.tier,
                    "estimate_bps": e.estimate_bps, "stream_limit": e.stream_limit, "buffers": e.buffers,
                    "buffers_in_use": e.buffers_in_use, "jobs_active": e.jobs_active, "jobs_pending": e.jobs_pending,
                    "locked_bytes": e.locked_bytes}));
                println!(
                    "{}",
                    serde_json::json!({"version": s.version, "endpoints": eps, "jobs_queued": s.jobs_queued,
                        "jobs_running": s.jobs_running, "chunks_in_flight": s.chunks_in_flight,
                        "state_dir": s.state_dir, "uptime_seconds": s.uptime_seconds, "engine": engine,
                        "heap_allocations": s.heap_allocations, "jobs_growing": s.jobs_growing,
                        "telemetry": telemetry_json(s.telemetry.as_ref())})
                );
            } else {
                println!(
                    "uplinkd {} (up {} s), state in {}",
                    s.version, s.uptime_seconds, s.state_dir
                );
                for e in &s.endpoints {
                    let rtt = if e.rtt_ms > 0.0 {
                        format!("{:.1} ms", e.rtt_ms)
                    } else {
                        "-".into()
                    };
                    println!(
                        "endpoint {} {} {}, {} connection(s), last connect {} ms, rtt {}, last QUIC handshake {}",
                        e.url,
                        if e.protocol.is_empty() {
                            "-"
                        } else {
                            &e.protocol
                        },
                        if e.warm { "warm" } else { "cold" },
                        e.connections,
                        e.last_connect_ms,
                        rtt,
                        if e.handshake.is_empty() {
                            "-"
                        } else {
                            &e.handshake
                        }
                    );
                    let or_dash = |s: &str| {
                        if s.is_empty() {
                            "-".to_string()
                        } else {
                            s.to_string()
                        }
                    };
                    println!(
                        "  congestion control: TCP {}, QUIC {}",
                        or_dash(&e.tcp_congestion),
                        or_dash(&e.quic_congestion)
                    );
                    if !e.tcp_congestion_note.is_empty() {
                        println!("  ({})", e.tcp_congestion_note);
                    }
                    println!("  circuit {}, health {:.0}/100", e.circuit, e.health);
                }
                println!(
                    "jobs: {} queued, {} running ({} growing: waiting for data or seal); {} chunk(s) in flight",
                    s.jobs_queued, s.jobs_running, s.jobs_growing, s.chunks_in_flight
                );
                if let Some(e) = &s.engine {
                    let tier = if e.tier.is_empty() {
                        "no estimate yet".to_string()
                    } else {
                        format!(
                            "tier {} at {:.1} Mbit/s",
                            e.tier,
                            e.estimate_bps * 8.0 / 1e6
                        )
                    };
                    println!(
                        "engine: {tier}; {} stream(s) allowed; buffers {}/{}",
                        e.stream_limit, e.buffers_in_use, e.buffers
                    );
                }
                if let Some(t) = &s.telemetry {
                    for z in &t.thermal {
                        println!("thermal {}: {:.1} °C ({})", z.name, z.temp_c, z.state);
                    }
                    if let Some(b) = &t.battery {
                        let pct = b.percent.map_or("?".to_string(), |p| format!("{p} %"));
                        println!("battery {pct}, {} ({})", b.status, b.level);
                    }
                    if !t.power_source.is_empty() {
                        println!(
                            "power: {} (shown only: uploads are never slowed for it)",
                            t.power_source
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Prewarm { keep_warm } => {
            let mut c = connect(&socket).await?;
            let p = c
                .prewarm(grpc::PrewarmRequest {
                    keep_warm_seconds: keep_warm,
                })
                .await?
                .into_inner();
            println!(
                "{} warm over {} in {} ms{}",
                p.endpoint,
                p.protocol,
                p.connect_ms,
                if p.already_warm {
                    " (was already warm)"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo(args) => demo::run(args).await,
    }
}

fn print_row(j: &grpc::Job) {
    let pct = if j.size > 0 {
        j.bytes_acked as f64 * 100.0 / j.size as f64
    } else {
        0.0
    };
    println!(
        "{:<24} {:<10} {:>12} {:>6.1}%  {}",
        j.job_id,
        state_name(j.state),
        j.size,
        pct,
        j.path
    );
}

fn print_summary(j: &grpc::Job) {
    match state_name(j.state) {
        "completed" => println!(
            "{}: completed {} bytes in {:.2} s ({:.1} MB/s) over {} ×{}; sha256 {}",
            j.path,
            j.size,
            j.total_seconds,
            j.size as f64 / 1e6 / j.total_seconds.max(1e-9),
            j.protocol,
            j.streams,
            j.server_sha256
        ),
        "waiting" => println!(
            "{}: waiting, next attempt in {:.0} s: {}",
            j.path,
            j.next_attempt_ms.saturating_sub(uplink::now_ms()) as f64 / 1000.0,
            j.waiting_why
        ),
        state => println!(
            "{}: {} {}: {}",
            j.path, state, j.error_code, j.error_message
        ),
    }
}

fn telemetry_json(t: Option<&grpc::Telemetry>) -> serde_json::Value {
    let Some(t) = t else {
        return serde_json::Value::Null;
    };
    let zones: Vec<_> = t
        .thermal
        .iter()
        .map(|z| serde_json::json!({"name": z.name, "temp_c": z.temp_c, "critical_c": z.critical_c, "state": z.state}))
        .collect();
    let battery = t
        .battery
        .as_ref()
        .map(|b| serde_json::json!({"percent": b.percent, "status": b.status, "level": b.level}));
    serde_json::json!({"thermal": zones, "power_source": t.power_source, "battery": battery})
}
