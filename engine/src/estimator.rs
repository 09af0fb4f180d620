//! Link bandwidth estimate: a one-dimensional Kalman filter over delivery-rate samples.
//!
//! A sample is taken when a request is acknowledged: the bytes the whole link delivered
//! between that request's start and its acknowledgement, divided by the time between (the
//! delivery rate of BBR). Measured across the link rather than per request, it does not
//! depend on how many requests share the link. The filter treats bandwidth as a slowly
//! drifting quantity (process noise grows with time between samples), and each sample as
//! noisy in proportion to its size, so the estimate follows real changes within a few
//! samples while single outliers move it little. The seed trusts it after 3 samples.

use std::time::Duration;

/// Samples before the estimate is used (the seed's 3).
pub const USABLE_AFTER: u32 = 3;
/// Relative standard deviation assumed for one sample.
const SAMPLE_REL_SD: f64 = 0.25;
/// Relative drift of the true bandwidth per second (process noise).
const DRIFT_REL_PER_SEC: f64 = 0.30;

#[derive(Clone, Debug, Default)]
pub struct Estimator {
    /// Bytes per second.
    estimate: f64,
    /// Variance of the estimate.
    variance: f64,
    samples: u32,
    last_sample_at: Option<crate::Time>,
}

impl Estimator {
    pub fn new() -> Estimator {
        Estimator::default()
    }

    /// Feeds one delivery-rate sample (bytes per second) taken at `now`.
    pub fn sample(&mut self, now: crate::Time, rate: f64) {
        if !rate.is_finite() || rate <= 0.0 {
            return;
        }
        let r = (SAMPLE_REL_SD * rate).powi(2);
        if self.samples == 0 {
            self.estimate = rate;
            self.variance = r;
        } else {
            // Predict: the true rate may have drifted since the last sample.
            let dt = self
                .last_sample_at
                .map(|t| now.since(t))
                .unwrap_or(Duration::ZERO)
                .as_secs_f64();
            self.variance += (DRIFT_REL_PER_SEC * self.estimate).powi(2) * dt.max(0.05);
            // Update.
            let gain = self.variance / (self.variance + r);
            self.estimate += gain * (rate - self.estimate);
            self.variance *= 1.0 - gain;
        }
        self.samples = self.samples.saturating_add(1);
        self.last_sample_at = Some(now);
    }

    /// Bytes per second, once enough samples came in.
    pub fn usable(&self) -> Option<f64> {
        (self.samples >= USABLE_AFTER).then_some(self.estimate)
    }

    /// The current estimate whatever the sample count (0 before the first).
    pub fn raw(&self) -> f64 {
        self.estimate
    }

    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// Forget everything (the path changed: the old link's rate says nothing).
    pub fn reset(&mut self) {
        *self = Estimator::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Time;

    fn feed(e: &mut Estimator, t0: f64, samples: &[f64]) -> f64 {
        for (i, s) in samples.iter().enumerate() {
            e.sample(Time::from_micros(((t0 + i as f64 * 0.2) * 1e6) as u64), *s);
        }
        e.raw()
    }

    #[test]
    fn usable_after_three_samples_and_close_to_a_noisy_steady_link() {
        // A replayed trace of a 100 Mbit/s link (12.5 MB/s) with ±20 % noise.
        let trace = [11.0e6, 14.2e6, 12.9e6, 10.4e6, 13.3e6, 12.1e6];
        let mut e = Estimator::new();
        feed(&mut e, 0.0, &trace[..2]);
        assert_eq!(e.usable(), None, "not before 3 samples");
        feed(&mut e, 0.4, &trace[2..3]);
        let est = e.usable().expect("usable after 3");
        assert!(
            (est / 12.5e6 - 1.0).abs() < 0.15,
            "within 15 % after 3: {est}"
        );
        feed(&mut e, 0.6, &trace[3..]);
        assert!((e.raw() / 12.5e6 - 1.0).abs() < 0.1);
    }

    #[test]
    fn follows_a_step_change_within_three_samples() {
        let mut e = Estimator::new();
        feed(&mut e, 0.0, &[25e6; 8]);
        // Wi-Fi to cellular: 200 -> 20 Mbit/s.
        let after = feed(&mut e, 2.0, &[2.5e6, 2.6e6, 2.4e6]);
        assert!(after < 2.5e6 * 1.6, "moved most of the way down: {after}");
    }

    #[test]
    fn one_outlier_moves_a_settled_estimate_little() {
        let mut e = Estimator::new();
        feed(&mut e, 0.0, &[10e6; 10]);
        e.sample(Time::from_micros(2_100_000), 40e6);
        assert!(e.raw() < 10e6 * 2.0, "{}", e.raw());
    }

    #[test]
    fn ignores_nonsense() {
        let mut e = Estimator::new();
        e.sample(Time::ZERO, f64::NAN);
        e.sample(Time::ZERO, -1.0);
        e.sample(Time::ZERO, 0.0);
        assert_eq!(e.samples(), 0);
    }
}
