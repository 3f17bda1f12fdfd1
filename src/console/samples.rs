//! The figures the overview charts: sampled every [`EVERY`] by a supervised task, an hour of
//! them kept.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// How often a sample is taken.
pub const EVERY: Duration = Duration::from_secs(10);
/// Samples kept: an hour.
const KEPT: usize = 360;

/// One sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Unix seconds.
    pub at: i64,
    pub pending: i64,
    pub inflight: i64,
    pub dead: i64,
    /// Events ever recorded (all statuses) and delivered, by the outbox's counters.
    pub total: i64,
    pub delivered: i64,
    pub mail_queued: i64,
    /// The first sink's delivery latencies so far (sum in seconds, count), its concurrency
    /// limit and breaker state (0 closed, 1 open, 2 probing).
    pub latency: (f64, u64),
    pub limit: i64,
    pub breaker: i64,
}

/// The samples of the last hour.
#[derive(Debug, Default)]
pub struct Samples(Mutex<VecDeque<Sample>>);

impl Samples {
    pub fn push(&self, s: Sample) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() == KEPT {
            all.pop_front();
        }
        all.push_back(s);
    }

    /// The charts: (title, points of (Unix seconds, value)).
    pub fn charts(&self) -> Vec<(String, Vec<(i64, f64)>)> {
        let all: Vec<Sample> = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        let level = |f: fn(&Sample) -> i64| -> Vec<(i64, f64)> {
            all.iter().map(|s| (s.at, f(s) as f64)).collect()
        };
        let rate = |f: fn(&Sample) -> i64| -> Vec<(i64, f64)> {
            all.windows(2)
                .map(|w| {
                    let secs = (w[1].at - w[0].at).max(1) as f64;
                    (w[1].at, (f(&w[1]) - f(&w[0])).max(0) as f64 / secs)
                })
                .collect()
        };
        let latency: Vec<(i64, f64)> = all
            .windows(2)
            .map(|w| {
                let n = w[1].latency.1.saturating_sub(w[0].latency.1);
                let sum = w[1].latency.0 - w[0].latency.0;
                (w[1].at, if n == 0 { 0.0 } else { sum / n as f64 * 1000.0 })
            })
            .collect();
        vec![
            ("Events in per second".into(), rate(|s| s.total)),
            ("Events delivered per second".into(), rate(|s| s.delivered)),
            ("Pending".into(), level(|s| s.pending)),
            ("In flight".into(), level(|s| s.inflight)),
            ("Dead letters".into(), level(|s| s.dead)),
            ("Mail queue".into(), level(|s| s.mail_queued)),
            ("Delivery latency, mean (ms)".into(), latency),
            ("Concurrency limit".into(), level(|s| s.limit)),
            (
                "Breaker (0 closed, 1 open, 2 probing)".into(),
                level(|s| s.breaker),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_means_come_from_consecutive_samples_and_an_hour_is_kept() {
        let samples = Samples::default();
        for i in 0..400 {
            samples.push(Sample {
                at: i * 10,
                total: i * 100,
                delivered: i * 50,
                latency: (i as f64 * 2.0, i as u64 * 100),
                pending: 7,
                ..Sample::default()
            });
        }
        let charts = samples.charts();
        let get = |name: &str| {
            charts
                .iter()
                .find(|(n, _)| n.starts_with(name))
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(get("Pending").len(), 360, "an hour of samples");
        assert!(get("Events in")
            .iter()
            .all(|(_, v)| (*v - 10.0).abs() < 1e-9));
        assert!(get("Events delivered")
            .iter()
            .all(|(_, v)| (*v - 5.0).abs() < 1e-9));
        assert!(
            get("Delivery latency")
                .iter()
                .all(|(_, v)| (*v - 20.0).abs() < 1e-9),
            "2 s over 100 deliveries: 20 ms"
        );
    }
}
