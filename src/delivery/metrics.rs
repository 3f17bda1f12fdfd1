//! `GET /metrics` in Prometheus format: outbox gauges read at scrape time, delivery counters
//! and the latency from commit to delivery.

use super::breaker::BreakerState;
use super::concurrency::{Decrease, Snapshot};
use super::schedule::Verdict;
use crate::outbox::Lane;
use crate::store::{Claimed, OutboxStats};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::Arc;

/// The metrics of one sink's delivery (Pega's REST service unprefixed, as they always were;
/// a Kafka topic's with `kafka_`).
pub struct LaneMetrics {
    delivered: IntCounter,
    retried: IntCounter,
    dead: IntCounter,
    latency: Histogram,
    limit: IntGauge,
    requests_in_flight: IntGauge,
    rtt: Gauge,
    last_decrease: IntGaugeVec,
    breaker: IntGauge,
    pauses: IntCounter,
    deferred: IntCounter,
    /// The reason shown by `last_decrease` (an index into `Decrease::ALL`, or none yet): the
    /// labels are set only when it changes, not on every POST.
    shown_decrease: std::sync::atomic::AtomicUsize,
}

/// The metrics: each sink's delivery ([`LaneMetrics`]), the outbox's gauges, and the other
/// parts' counters.
pub struct Metrics {
    registry: Registry,
    pega: Arc<LaneMetrics>,
    kafka: std::sync::OnceLock<Arc<LaneMetrics>>,
    restarts: IntCounter,
    pending: IntGauge,
    inflight: IntGauge,
    dead_now: IntGauge,
    oldest_pending: IntGauge,
    unmatched: prometheus::IntCounterVec,
    /// Restarts of each supervised background task (see [`crate::app`]).
    task_restarts: prometheus::IntCounterVec,
    /// Opens and clicks recorded, by metric, verdict (person, machine) and reason.
    engagement: prometheus::IntCounterVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("pegabridge".into()), None).expect("a valid prefix");
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let counters = |name: &str, help: &str, label: &str| {
            let c = prometheus::IntCounterVec::new(Opts::new(name, help), &[label]);
            register(&registry, c.expect("valid metric"))
        };
        Self {
            pega: Arc::new(LaneMetrics::new(&registry, Lane::Pega)),
            kafka: std::sync::OnceLock::new(),
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
            unmatched: counters(
                "events_unmatched_total",
                "Mail platform events acknowledged without a known pegabridge key",
                "platform",
            ),
            task_restarts: counters(
                "task_restarts_total",
                "Times a background task panicked and was restarted",
                "task",
            ),
            engagement: register(
                &registry,
                prometheus::IntCounterVec::new(
                    Opts::new(
                        "engagement_total",
                        "Opens and clicks recorded, by metric, verdict and reason",
                    ),
                    &["metric", "verdict", "reason"],
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    /// The delivery metrics of the lanes in use (a Kafka topic's once registered).
    pub fn lanes(&self) -> Vec<(Lane, Arc<LaneMetrics>)> {
        let mut all = vec![(Lane::Pega, self.pega.clone())];
        if let Some(k) = self.kafka.get() {
            all.push((Lane::Kafka, k.clone()));
        }
        all
    }

    /// The delivery metrics of `lane` (a Kafka topic's registered on first use).
    pub fn lane(&self, lane: Lane) -> Arc<LaneMetrics> {
        match lane {
            Lane::Pega => self.pega.clone(),
            Lane::Kafka => (self.kafka)
                .get_or_init(|| Arc::new(LaneMetrics::new(&self.registry, Lane::Kafka)))
                .clone(),
        }
    }

    /// Counts a platform's events that joined no personal broadcast.
    pub fn unmatched(&self, platform: &str, n: usize) {
        self.unmatched
            .with_label_values(&[platform])
            .inc_by(n as u64);
    }

    /// Counts a recorded open or click with its verdict.
    pub fn engagement(&self, metric: &str, machine: bool, reason: &str) {
        let verdict = if machine { "machine" } else { "person" };
        self.engagement
            .with_label_values(&[metric, verdict, reason])
            .inc();
    }

    /// The registry, for other parts' families (`mail_*`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The restart counter of the supervised tasks.
    pub fn task_restarts(&self) -> prometheus::IntCounterVec {
        self.task_restarts.clone()
    }

    /// The text exposition, with the outbox gauges set from `stats`.
    pub fn render(&self, stats: &OutboxStats) -> String {
        // `worker_restarts_total` (older than the per-task counter) follows the delivery task's.
        {
            static SYNC: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one_at_a_time = SYNC.lock().unwrap_or_else(|e| e.into_inner());
            let delivery = self.task_restarts.with_label_values(&["delivery"]).get();
            (self.restarts).inc_by(delivery.saturating_sub(self.restarts.get()));
        }
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

impl LaneMetrics {
    /// Registers a lane's metrics in `registry`: Pega's under their names of old, a Kafka
    /// topic's with `kafka_` before them.
    fn new(registry: &Registry, lane: Lane) -> Self {
        let (prefix, to) = match lane {
            Lane::Pega => ("", "Pega"),
            Lane::Kafka => ("kafka_", "the Kafka topic"),
        };
        let name = |n: &str| format!("{prefix}{n}");
        let counter = |n: &str, help: String| {
            register(
                registry,
                IntCounter::new(name(n), help).expect("valid metric"),
            )
        };
        let gauge = |n: &str, help: &str| {
            register(
                registry,
                IntGauge::new(name(n), help).expect("valid metric"),
            )
        };
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                name("delivery_latency_seconds"),
                format!("Time from an event's commit to its delivery to {to}"),
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0,
            ]),
        );
        let rtt = Gauge::new(
            name("delivery_rtt_seconds"),
            "Moving average of the sink's round trips",
        );
        let last_decrease = IntGaugeVec::new(
            Opts::new(
                name("delivery_concurrency_last_decrease"),
                "1 for the reason the concurrency limit last went down",
            ),
            &["reason"],
        );
        Self {
            delivered: counter("delivered_total", format!("Events delivered to {to}")),
            retried: counter(
                "retried_total",
                "Event attempts that will be retried".into(),
            ),
            dead: counter("dead_total", "Events that became dead letters".into()),
            latency: register(registry, latency.expect("valid metric")),
            limit: gauge(
                "delivery_concurrency_limit",
                "Requests allowed in flight now (adaptive unless [pega] concurrency is set; 1 for a Kafka topic)",
            ),
            requests_in_flight: gauge("delivery_requests_in_flight", "Requests in flight now"),
            rtt: register(registry, rtt.expect("valid metric")),
            last_decrease: register(registry, last_decrease.expect("valid metric")),
            breaker: gauge(
                "delivery_breaker_state",
                "The sink's circuit breaker: 0 closed, 1 open, 2 half-open (probing)",
            ),
            pauses: counter(
                "delivery_endpoint_pauses_total",
                "Retry-After answers that paused every POST to the endpoint".into(),
            ),
            deferred: counter(
                "delivery_deferred_total",
                "Events not sent in their round because the sink was paused or down (no attempt counted)".into(),
            ),
            shown_decrease: std::sync::atomic::AtomicUsize::new(usize::MAX),
        }
    }

    /// Shows the concurrency limiter's state.
    pub fn concurrency(&self, s: &Snapshot) {
        self.limit.set(s.limit as i64);
        self.requests_in_flight.set(s.in_flight as i64);
        if let Some(rtt) = s.rtt {
            self.rtt.set(rtt.as_secs_f64());
        }
        let shown = s
            .last_decrease
            .and_then(|last| Decrease::ALL.iter().position(|r| *r == last))
            .unwrap_or(usize::MAX);
        let changed = self
            .shown_decrease
            .swap(shown, std::sync::atomic::Ordering::Relaxed)
            != shown;
        if let (Some(last), true) = (s.last_decrease, changed) {
            for reason in Decrease::ALL {
                self.last_decrease
                    .with_label_values(&[reason.as_str()])
                    .set(i64::from(reason == last));
            }
        }
    }

    /// The concurrency limit shown now, and the breaker's state (0 closed, 1 open, 2
    /// half-open), for the console.
    pub fn shown(&self) -> (i64, i64) {
        (self.limit.get(), self.breaker.get())
    }

    /// The delivery latencies observed so far: their sum (seconds) and count.
    pub fn latency_total(&self) -> (f64, u64) {
        (
            self.latency.get_sample_sum(),
            self.latency.get_sample_count(),
        )
    }

    pub fn breaker(&self, state: BreakerState) {
        self.breaker.set(state as i64);
    }

    pub fn paused(&self) {
        self.pauses.inc();
    }

    pub fn deferred(&self, n: usize) {
        self.deferred.inc_by(n as u64);
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` in `registry` and returns it (names are unique by construction).
pub fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}
