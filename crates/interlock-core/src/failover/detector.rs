//! A phi-accrual failure detector (Hayashibara et al.), one per controller,
//! kept by the leader. Time is an input: the caller passes its monotonic
//! milliseconds, so the detector is a pure value that tests drive directly.
//!
//! phi(t) = -log10(P(the next heartbeat arrives later than t)), with heartbeat
//! intervals modelled as a normal distribution over a sliding window. phi 8
//! means "a gap this long happens once in 10^8 intervals" under what the link
//! has shown so far: a jittery link raises its own bar.

use std::collections::VecDeque;

/// Intervals remembered per controller.
pub const WINDOW: usize = 64;

/// The detector's parameters (from the failover policy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorParams {
    pub expected_interval_ms: u64,
    pub min_std_dev_ms: u64,
    pub acceptable_pause_ms: u64,
    pub threshold: f64,
}

impl DetectorParams {
    pub fn from_policy(policy: &crate::model::FailoverPolicy) -> Self {
        DetectorParams {
            expected_interval_ms: policy.heartbeat_interval_ms,
            min_std_dev_ms: policy.min_std_dev_ms,
            acceptable_pause_ms: policy.acceptable_pause_ms,
            threshold: policy.phi_threshold as f64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PhiDetector {
    intervals: VecDeque<u64>,
    last_ms: u64,
}

impl PhiDetector {
    /// Starts from a first heartbeat at `now_ms`, with a history seeded by
    /// the expected interval (so one beat is enough to judge).
    pub fn new(now_ms: u64, params: &DetectorParams) -> Self {
        let mut intervals = VecDeque::with_capacity(WINDOW);
        let seed = params.expected_interval_ms;
        // Two seeds a quarter-interval either side: mean = expected, some spread.
        intervals.push_back(seed.saturating_sub(seed / 4));
        intervals.push_back(seed + seed / 4);
        PhiDetector { intervals, last_ms: now_ms }
    }

    pub fn heartbeat(&mut self, now_ms: u64) {
        let interval = now_ms.saturating_sub(self.last_ms);
        self.last_ms = now_ms;
        if self.intervals.len() == WINDOW {
            self.intervals.pop_front();
        }
        self.intervals.push_back(interval);
    }

    pub fn last_heartbeat_ms(&self) -> u64 {
        self.last_ms
    }

    /// The suspicion level at `now_ms`.
    pub fn phi(&self, now_ms: u64, params: &DetectorParams) -> f64 {
        let n = self.intervals.len().max(1) as f64;
        let mean = self.intervals.iter().sum::<u64>() as f64 / n;
        let variance = self.intervals.iter().map(|&i| (i as f64 - mean).powi(2)).sum::<f64>() / n;
        let std = variance.sqrt().max(params.min_std_dev_ms as f64);
        let mean = mean + params.acceptable_pause_ms as f64;
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        phi_normal(elapsed, mean, std)
    }

    pub fn suspected(&self, now_ms: u64, params: &DetectorParams) -> bool {
        self.phi(now_ms, params) >= params.threshold
    }
}

/// -log10(1 - CDF(elapsed)) for a normal distribution, using a logistic
/// approximation of the CDF that stays finite far into the tail.
fn phi_normal(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let exponent = y * (1.5976 + 0.070566 * y * y);
    let e = (-exponent).exp();
    if elapsed > mean {
        // -log10(e / (1 + e)), written so that it stays finite when e underflows.
        exponent / std::f64::consts::LN_10 + (1.0 + e).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> DetectorParams {
        DetectorParams { expected_interval_ms: 500, min_std_dev_ms: 100, acceptable_pause_ms: 0, threshold: 8.0 }
    }

    /// (heartbeat gaps fed, then silence, expected suspected?)
    #[test]
    fn suspicion_follows_silence_relative_to_the_links_history() {
        let cases: &[(&str, &[u64], u64, bool)] = &[
            ("regular beats, one interval of silence", &[500; 20], 500, false),
            ("regular beats, one lost beat", &[500; 20], 1000, false),
            ("regular beats, three intervals of silence", &[500; 20], 1500, true),
            ("regular beats, long silence", &[500; 20], 5000, true),
            ("jittery link tolerates a longer gap", &[200, 900, 300, 800, 250, 950, 500, 400], 1500, false),
            ("one beat only: the seed decides", &[], 1500, true),
        ];
        for (name, gaps, silence, want) in cases {
            let p = params();
            let mut now = 1_000;
            let mut d = PhiDetector::new(now, &p);
            for gap in *gaps {
                now += gap;
                d.heartbeat(now);
            }
            let phi = d.phi(now + silence, &p);
            assert_eq!(d.suspected(now + silence, &p), *want, "{name}: phi {phi:.2}");
        }
    }

    #[test]
    fn phi_grows_with_silence_and_never_goes_non_finite() {
        let p = params();
        let d = PhiDetector::new(0, &p);
        let mut last = -1.0;
        for t in (0..100_000).step_by(250) {
            let phi = d.phi(t, &p);
            assert!(phi.is_finite() && phi >= last, "t {t}: {phi} after {last}");
            last = phi;
        }
    }
}
