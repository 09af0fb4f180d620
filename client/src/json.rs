//! JSON renderings of jobs and events for `--json` output (one object per line).

use serde_json::{Value, json};
use uplink_proto::grpc::{self, job_event::Kind};

use crate::state_name;

pub fn job(j: &grpc::Job) -> Value {
    json!({
        "job_id": j.job_id,
        "state": state_name(j.state),
        "path": j.path,
        "size": j.size,
        "target": j.target,
        "metadata": j.metadata,
        "bytes_acked": j.bytes_acked,
        "chunks_total": j.chunks_total,
        "chunks_acked": j.chunks_acked,
        "chunks_sent": j.chunks_sent,
        "chunks_resent": j.chunks_resent,
        "bytes_resent": j.bytes_resent,
        "bytes_on_wire": j.bytes_on_wire,
        "chunk_size": j.chunk_size,
        "protocol": j.protocol,
        "streams": j.streams,
        "used_0rtt": j.used_0rtt,
        "time_to_first_ack_ms": j.time_to_first_ack_ms,
        "total_seconds": j.total_seconds,
        "server_sha256": j.server_sha256,
        "merkle_root": j.merkle_root,
        "location": j.location,
        "upload_id": j.upload_id,
        "attempts": j.attempts,
        "error_code": j.error_code,
        "error_message": j.error_message,
        "next_attempt_ms": j.next_attempt_ms,
        "waiting_why": j.waiting_why,
        "growing": j.growing,
        "created_at_ms": j.created_at_ms,
        "finished_at_ms": j.finished_at_ms,
    })
}

pub fn event(e: &grpc::JobEvent) -> Value {
    let (kind, detail) = match &e.kind {
        Some(Kind::Snapshot(j)) => ("snapshot", job(j)),
        Some(Kind::Queued(_)) => ("queued", json!({})),
        Some(Kind::Started(s)) => (
            "started",
            json!({"protocol": s.protocol, "streams": s.streams, "resumed_bytes": s.resumed_bytes}),
        ),
        Some(Kind::Progress(p)) => (
            "progress",
            json!({"acked_bytes": p.acked_bytes, "total_bytes": p.total_bytes, "rate_bps": p.rate_bps,
                   "eta_seconds": p.eta_seconds, "protocol": p.protocol, "streams": p.streams}),
        ),
        Some(Kind::Retrying(r)) => (
            "retrying",
            json!({"why": r.why, "attempt": r.attempt, "delay_seconds": r.delay_seconds}),
        ),
        Some(Kind::Incident(i)) => ("incident", json!({"kind": i.kind, "why": i.why})),
        Some(Kind::Completed(c)) => ("completed", c.job.as_ref().map(job).unwrap_or(Value::Null)),
        Some(Kind::Failed(f)) => ("failed", f.job.as_ref().map(job).unwrap_or(Value::Null)),
        Some(Kind::Cancelled(c)) => ("cancelled", c.job.as_ref().map(job).unwrap_or(Value::Null)),
        None => ("unknown", Value::Null),
    };
    json!({"event": kind, "job_id": e.job_id, "at_ms": e.at_ms, "detail": detail})
}
