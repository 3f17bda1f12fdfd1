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
#[derive(Debug, Clone, Copy, Default)]
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
        vec![
            ("Events in per second".into(), rate(|s| s.total)),
            ("Events delivered per second".into(), rate(|s| s.delivered)),
            ("Pending".into(), level(|s| s.pending)),
            ("In flight".into(), level(|s| s.inflight)),
            ("Dead letters".into(), level(|s| s.dead)),
            ("Mail queue".into(), level(|s| s.mail_queued)),
        ]
    }
}
