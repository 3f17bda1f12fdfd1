//! What the mail path is doing, for `/health` and `/metrics`: its breaker (when most sends
//! fail for the sender's or the relay's reason, sending pauses with one probe at a time, as
//! delivery's does) and its counters.

use crate::delivery::breaker::{Admit, BreakerState, Gate, Transition};
use crate::delivery::metrics::register;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How a send ended, as `pegabridge_mail_sends_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Sent,
    Retried,
    Bounced,
    /// Retries ran out on the recipient's temporary refusals: a soft bounce.
    SoftBounced,
    /// Retries ran out on the sender's or the relay's problem: no bounce.
    Dead,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Sent => "sent",
            Ended::Retried => "retried",
            Ended::Bounced => "bounced",
            Ended::SoftBounced => "soft_bounced",
            Ended::Dead => "dead",
        }
    }
}

/// The mail path's breaker and metrics (shared by the worker, `/health` and `/metrics`).
pub struct MailStatus {
    gate: Gate,
    /// The relay's answer that opened the breaker (shown while it is open).
    why: Mutex<Option<String>>,
    sends: IntCounterVec,
    in_flight: IntGauge,
    queued: IntGauge,
    leased: IntGauge,
    relay: Histogram,
    breaker: IntGauge,
}

impl std::fmt::Debug for MailStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailStatus")
            .field("breaker", &self.gate.state())
            .finish_non_exhaustive()
    }
}

impl MailStatus {
    /// Registers the `mail_*` families in `registry`.
    pub fn new(settings: &crate::config::mail::MailSettings, registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            register(registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let relay = Histogram::with_opts(
            HistogramOpts::new(
                "mail_relay_seconds",
                "Time the relay took for one message (session, MAIL FROM to the end of DATA)",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
            ]),
        )
        .expect("valid metric");
        let sends = IntCounterVec::new(
            Opts::new(
                "mail_sends_total",
                "Send attempts by outcome: sent, retried, bounced, soft_bounced, dead",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let max_pause = Duration::from_secs(settings.retry.max_delay_secs.max(1));
        Self {
            gate: Gate::new(settings.breaker.clone(), max_pause),
            why: Mutex::new(None),
            sends: register(registry, sends),
            in_flight: gauge("mail_sends_in_flight", "Messages being handed to the relay now"),
            queued: gauge("mail_sends_queued", "Sends waiting for their (next) attempt"),
            leased: gauge(
                "mail_sends_leased",
                "Sends claimed by a mail worker (in flight, or held by a stopped instance until its lease ends)",
            ),
            relay: register(registry, relay),
            breaker: gauge(
                "mail_breaker_state",
                "The relay's circuit breaker: 0 closed, 1 open, 2 half-open (probing)",
            ),
        }
    }

    /// Whether a send may start now (see [`Gate::admit`]).
    pub fn admit(&self) -> Admit {
        let admit = self.gate.admit(Instant::now());
        self.breaker.set(self.gate.state() as i64);
        admit
    }

    /// The probe admitted found nothing to send.
    pub fn cancel_probe(&self) {
        self.gate.cancel_probe();
        self.breaker.set(self.gate.state() as i64);
    }

    /// Records one send's end: `problem` is the relay's answer when it failed for the
    /// sender's or the relay's reason (what the breaker counts).
    pub fn ended(&self, ended: Ended, problem: Option<&str>, probe: bool, took: Duration) {
        self.sends.with_label_values(&[ended.as_str()]).inc();
        self.relay.observe(took.as_secs_f64());
        let transition = self
            .gate
            .record(Instant::now(), problem.is_some(), probe, None);
        self.breaker.set(self.gate.state() as i64);
        let mut why = self.why.lock().unwrap_or_else(|e| e.into_inner());
        match transition {
            Some(Transition::Opened) => {
                let reason = problem.unwrap_or_default().to_owned();
                tracing::warn!(reason = %reason, "most sends fail for the sender's or the relay's reason: sending paused, one probe at a time");
                *why = Some(reason);
            }
            Some(Transition::Closed) => {
                tracing::info!("the relay takes mail again: sending resumed");
                *why = None;
            }
            None => {
                if let (true, Some(p)) = (probe, problem) {
                    *why = Some(p.to_owned());
                }
            }
        }
    }

    /// Sends handed to the relay now.
    pub fn in_flight(&self, n: usize) {
        self.in_flight.set(n as i64);
    }

    /// Sets the queue gauges (read from the store at scrape time).
    pub fn queue(&self, q: crate::store::SendQueue) {
        self.queued.set(q.pending);
        self.leased.set(q.inflight);
    }

    /// The breaker's state and, while it is open, why (`/health`).
    pub fn breaker(&self) -> (BreakerState, Option<String>) {
        let state = self.gate.state();
        let why = self.why.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (state, why.filter(|_| state != BreakerState::Closed))
    }
}
