//! `GET /metrics` in Prometheus format: outbox gauges read at scrape time, delivery counters
//! and the latency from commit to delivery.

use super::schedule::Verdict;
use crate::store::{Claimed, OutboxStats};
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};

/// The delivery metrics.
pub struct Metrics {
    registry: Registry,
    delivered: IntCounter,
    retried: IntCounter,
    dead: IntCounter,
    restarts: IntCounter,
    latency: Histogram,
    pending: IntGauge,
    inflight: IntGauge,
    dead_now: IntGauge,
    oldest_pending: IntGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("pegabridge".into()), None).expect("a valid prefix");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "delivery_latency_seconds",
                "Time from an event's commit to its delivery",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(latency.clone()))
            .expect("unique metric");
        Self {
            delivered: counter("delivered_total", "Events delivered to Pega"),
            retried: counter("retried_total", "Event attempts that will be retried"),
            dead: counter("dead_total", "Events that became dead letters"),
            restarts: counter(
                "worker_restarts_total",
                "Times the delivery worker panicked and was restarted",
            ),
            pending: gauge("outbox_pending", "Events waiting for delivery"),
            inflight: gauge("outbox_in_flight", "Events claimed by a worker"),
            dead_now: gauge("outbox_dead", "Dead letters in the outbox"),
            oldest_pending: gauge(
                "outbox_oldest_pending_age_seconds",
                "Age of the oldest event not yet delivered",
            ),
            latency,
            registry,
        }
    }

    /// Counts an attempt's outcome for its events.
    pub fn record(&self, verdict: &Verdict, batch: &[Claimed], now_ms: i64) {
        let n = batch.len() as u64;
        match verdict {
            Verdict::Delivered => {
                self.delivered.inc_by(n);
                for c in batch {
                    self.latency
                        .observe((now_ms - c.created_ms).max(0) as f64 / 1000.0);
                }
            }
            Verdict::Retry(_) => self.retried.inc_by(n),
            Verdict::Dead => self.dead.inc_by(n),
        }
    }

    /// Counts a restart of the delivery worker.
    pub fn worker_restarted(&self) {
        self.restarts.inc();
    }

    /// The text exposition, with the outbox gauges set from `stats`.
    pub fn render(&self, stats: &OutboxStats) -> String {
        self.pending.set(stats.pending);
        self.inflight.set(stats.inflight);
        self.dead_now.set(stats.dead);
        self.oldest_pending.set(stats.oldest_pending_age_secs);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
