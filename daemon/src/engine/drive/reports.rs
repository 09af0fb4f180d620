//! What the driver tells users about a job as the core decides: progress, retries and
//! waits, and incidents (a watchdog fired, the endpoint's circuit changed) — as job
//! events for `uplink watch`, log lines, and the job record where it keeps them.

use std::time::Duration;

use uplink_engine::JobId;
use uplink_engine::breaker::State;
use uplink_engine::io::Watchdog;
use uplink_proto::grpc::{self, job_event::Kind};

use super::Driver;
use crate::jobs::{Waiting, now_ms};

impl Driver {
    pub(super) fn progress(&mut self, job: JobId, acked: u64, total: u64, rate: f64) {
        let protocol = self.shared.client.link().protocol.to_string();
        let streams = self.engine.job(job).map_or(0, |v| v.in_flight as u32);
        let Some(a) = self.jobs.get_mut(&job) else {
            return;
        };
        a.record.bytes_acked = acked;
        a.record.protocol = protocol.clone();
        if a.record.waiting.take().is_some()
            && let Err(e) = self.shared.db.stage(&a.record, None)
        {
            tracing::warn!(error = %e, "cannot record that the job moves again");
        }
        a.record.streams = a.record.streams.max(streams);
        let left = total.saturating_sub(acked) as f64;
        self.shared.events.emit(
            &a.record.job_id,
            Kind::Progress(grpc::Progress {
                acked_bytes: acked,
                total_bytes: total,
                rate_bps: rate,
                eta_seconds: if rate > 0.0 { left / rate } else { 0.0 },
                protocol,
                streams,
            }),
        );
    }

    /// A request failed (or moved) and goes again after `delay`.
    pub(super) fn retrying(
        &mut self,
        job: JobId,
        why: String,
        attempt: u32,
        delay: Duration,
        waiting: bool,
    ) {
        // On hold as a whole (nothing of it in flight, or past its quick retries):
        // the record says so, with when it goes again.
        let idle = self.engine.job(job).is_none_or(|v| v.in_flight == 0);
        if let Some(a) = self.jobs.get_mut(&job) {
            let level = if waiting { "waiting" } else { "retrying" };
            tracing::warn!(job_id = %a.record.job_id, %why, ?delay, level, "request failed");
            if waiting || idle {
                a.record.waiting = Some(Waiting {
                    until_ms: now_ms() + delay.as_millis() as u64,
                    why: why.clone(),
                });
                if let Err(e) = self.shared.db.stage(&a.record, None) {
                    tracing::warn!(error = %e, "cannot record that the job waits");
                }
            }
            self.shared.events.emit(
                &a.record.job_id,
                Kind::Retrying(grpc::Retrying {
                    why,
                    attempt,
                    delay_seconds: delay.as_secs_f64(),
                }),
            );
        }
    }

    pub(super) fn watchdog_fired(&mut self, job: JobId, layer: Watchdog, why: String) {
        if let Some(a) = self.jobs.get(&job) {
            tracing::warn!(job_id = %a.record.job_id, watchdog = layer.name(), %why, "watchdog fired");
            self.shared.events.emit(
                &a.record.job_id,
                Kind::Incident(grpc::Incident {
                    kind: layer.name().into(),
                    why,
                }),
            );
        }
    }

    /// The circuit is the endpoint's: every running job hears of it.
    pub(super) fn circuit_changed(&mut self, state: State, why: String) {
        let kind = format!("circuit_{}", state.name().replace('-', "_"));
        tracing::warn!(circuit = state.name(), %why, "endpoint circuit breaker");
        for a in self.jobs.values() {
            self.shared.events.emit(
                &a.record.job_id,
                Kind::Incident(grpc::Incident {
                    kind: kind.clone(),
                    why: why.clone(),
                }),
            );
        }
    }
}
