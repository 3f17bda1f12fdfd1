//! The worker: `try_deliver_next` does one round (claim, post, record) and says what happened;
//! `run` delivers the events this process's requests hand over, and claims from the store
//! when woken, when a retry may be due and while there is a backlog.

use super::breaker::{Admit, BreakerState, Gate, Transition};
use super::client::Sent;
use super::concurrency::{Limiter, Signal};
use super::metrics::{LaneMetrics, Metrics};
use super::schedule::Response;
use super::schedule::{verdict, Verdict};
use super::sink::Sink;
use crate::config::pega::{Format, PegaSettings};
use crate::event::Metric;
use crate::outbox::{now_ms, Lane};
use crate::store::handoff;
use crate::store::Storage;
use crate::store::{Attempt, AttemptOutcome, Claimed, Completion, Outcome};
use futures::{FutureExt, StreamExt};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What this process's requests hand the worker: the hand-off's receiving end, and the
/// events taken from it (or claimed) but not yet posted. Kept across the worker's restarts.
#[derive(Debug)]
pub struct Inbox {
    pub handed: handoff::Receiver,
    pub queue: VecDeque<Claimed>,
}

impl Inbox {
    pub fn new(handed: handoff::Receiver) -> Self {
        Self {
            handed,
            queue: VecDeque::new(),
        }
    }
}

/// Called at every turn of the worker's loop: lets tests make the worker panic (fault
/// injection).
pub type FaultHook = Arc<dyn Fn() + Send + Sync>;

/// The first wait before recording a round's outcomes again, and the longest.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(50);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(2);

/// The longest an outcome waits for others to be recorded with (one transaction, and one
/// flush of the WAL, for all of them): at a moderate rate each POST's outcome used to cost a
/// commit of its own. Nobody waits for it: the POSTs go on meanwhile. (10 ms until the cost
/// bench measured 50 ms about 7% cheaper per event at 500/s; a crash repeats at most this
/// much of the deliveries, with their uuids.)
const GATHER: Duration = Duration::from_millis(50);

/// Batches claimed per round for each slot of concurrency: enough to keep the slots busy
/// between two store calls.
const ROUND_BATCHES: usize = 8;

/// What one round did (counts of events).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    pub delivered: usize,
    pub retried: usize,
    pub dead: usize,
    pub filtered: usize,
    /// Not posted: their lease ran out (or nearly) before their turn; left to a claim.
    pub lapsed: usize,
    /// Not posted: the endpoint was paused (`Retry-After`) or down (the circuit breaker);
    /// made due again for when it may be posted to, no attempt counted.
    pub deferred: usize,
}

/// What became of one batch.
enum Posted {
    /// None of it was posted: every lease ran out (or nearly).
    Lapsed(usize),
    /// Not posted now: due again later.
    Deferred(Outcome),
    /// Posted (`lapsed` of the batch were left out).
    Sent {
        lapsed: usize,
        verdict: Verdict,
        outcome: Outcome,
    },
}

impl Step {
    /// Nothing was due.
    pub fn is_empty(&self) -> bool {
        *self == Step::default()
    }
}

/// The delivery worker of one sink (one outbox lane).
pub struct Worker {
    store: Storage,
    lane: Lane,
    sink: Box<dyn Sink>,
    settings: Arc<PegaSettings>,
    enabled: HashSet<Metric>,
    metrics: Arc<LaneMetrics>,
    fault: Option<FaultHook>,
    limiter: Limiter,
    gate: Gate,
    /// What `/health` shows of the sink (a Kafka topic's).
    health: Option<Arc<super::sink::SinkHealth>>,
}

impl Worker {
    /// The worker of Pega's REST service (`[pega]`); `None` when no endpoint is configured.
    pub fn new(
        store: Storage,
        settings: Arc<PegaSettings>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(sink) = super::sink::RestSink::new(&settings)? else {
            return Ok(None);
        };
        let limiter = match settings.concurrency {
            Some(n) => Limiter::fixed(n),
            None => Limiter::adaptive(settings.min_concurrency, settings.max_concurrency),
        };
        let format = settings.format;
        Ok(Some(Self::over(
            store,
            Lane::Pega,
            Box::new(sink),
            (settings, format, limiter),
            metrics.lane(Lane::Pega),
        )))
    }

    /// The worker of a Kafka topic (`[kafka]`), `None` without one: `[pega]`'s retries,
    /// breaker, lease, activities and `max_event_age_secs`, `[kafka]`'s batch size and format,
    /// one round at a time (the lane is ordered). Returns the sink's health for `/health`.
    pub fn kafka(
        store: Storage,
        settings: &crate::config::Settings,
        metrics: &Metrics,
    ) -> anyhow::Result<Option<(Self, Arc<super::sink::SinkHealth>)>> {
        let Some(kafka) = &settings.kafka else {
            return Ok(None);
        };
        let sink: Arc<dyn Sink> = Arc::new(super::kafka::KafkaSink::new(
            kafka,
            &settings.pega.capture_response,
        )?);
        let policy = Arc::new(PegaSettings {
            batch_size: kafka.batch_size,
            concurrency: Some(1),
            timeout_secs: kafka.timeout_secs,
            ..settings.pega.clone()
        });
        let health = Arc::new(super::sink::SinkHealth::new(sink.clone()));
        let mut worker = Self::over(
            store,
            Lane::Kafka,
            Box::new(super::sink::Shared(sink)),
            (policy, kafka.format, Limiter::fixed(1)),
            metrics.lane(Lane::Kafka),
        );
        worker.health = Some(health.clone());
        Ok(Some((worker, health)))
    }

    /// A worker delivering `lane` through `sink` with `policy` (the sink's format decides
    /// which metrics are sent).
    fn over(
        store: Storage,
        lane: Lane,
        sink: Box<dyn Sink>,
        (settings, format, limiter): (Arc<PegaSettings>, Format, Limiter),
        metrics: Arc<LaneMetrics>,
    ) -> Self {
        // With CDH's format, only the metrics with an outcome are sent.
        let enabled = (settings.activities.iter().copied())
            .filter(|m| {
                format == Format::Seed
                    || super::capture::outcome(&settings.capture_response, *m).is_some()
            })
            .collect();
        let max_pause = Duration::from_secs(settings.retry.max_delay_secs);
        let gate = Gate::new(settings.breaker.clone(), max_pause);
        metrics.concurrency(&limiter.snapshot());
        Self {
            store,
            lane,
            sink,
            settings,
            enabled,
            metrics,
            fault: None,
            limiter,
            gate,
            health: None,
        }
    }

    /// Runs `hook` at every turn of the worker's loop (tests use it to make the worker panic).
    #[doc(hidden)]
    pub fn set_fault_hook(&mut self, hook: FaultHook) {
        self.fault = Some(hook);
    }

    /// Most events in one round ever: [`ROUND_BATCHES`] batches for each POST that may be
    /// in flight.
    pub fn round_limit(&self) -> usize {
        let s = &self.settings;
        s.batch_size.max(1) * s.max_in_flight() * ROUND_BATCHES
    }

    /// The events of the next round: [`ROUND_BATCHES`] batches for each POST the limit allows
    /// now; one batch (the probe) while the endpoint is down.
    fn round_size(&self) -> usize {
        let batch = self.settings.batch_size.max(1);
        if self.gate.state() != BreakerState::Closed {
            return batch;
        }
        batch * self.places() * ROUND_BATCHES
    }

    /// One round from the store: claim the due events (up to the round's size) and deliver
    /// them.
    pub async fn try_deliver_next(&self) -> anyhow::Result<Step> {
        let claimed = self
            .store
            .outbox()
            .claim(self.lane, self.round_size(), self.settings.lease_secs)
            .await?;
        self.deliver_round(claimed).await
    }

    /// The endpoint's circuit breaker state.
    pub fn breaker_state(&self) -> BreakerState {
        self.gate.state()
    }

    /// What the sink delivers to (never a credential).
    pub fn sink_name(&self) -> String {
        self.sink.describe()
    }

    /// The concurrency limit now.
    pub fn concurrency_limit(&self) -> usize {
        self.limiter.limit()
    }

    /// Delivers leased events: posts the batches with no more in flight than the limiter
    /// allows, then records every outcome in one store call.
    async fn deliver_round(&self, events: Vec<Claimed>) -> anyhow::Result<Step> {
        let (send, mut outcomes, mut step) = self.sort(events);
        // Built up front: a lazily mapped stream here trips the compiler's Send inference
        // (rust-lang/rust#102211) when the worker is spawned.
        let batch_size = self.settings.batch_size.max(1);
        let posts: Vec<_> = send.chunks(batch_size).map(|b| self.deliver(b)).collect();
        let delivered: Vec<Posted> = futures::stream::iter(posts)
            .buffer_unordered(self.settings.max_in_flight())
            .collect()
            .await;
        for posted in delivered {
            self.settle(posted, &mut step, &mut outcomes);
        }
        if !outcomes.is_empty() {
            self.record(outcomes).await?;
        }
        Ok(step)
    }

    /// Sorts events taken for delivery: those to post, and the outcomes of those that are
    /// not (metrics not sent to this sink, too old, or not expressible in its format).
    fn sort(&self, events: Vec<Claimed>) -> (Vec<Claimed>, Vec<Outcome>, Step) {
        let (send, skip): (Vec<Claimed>, Vec<Claimed>) = events
            .into_iter()
            .partition(|c| self.enabled.contains(&c.metric));
        let (send, stale) = self.split_stale(send);
        let (send, unmappable) = self.split_unmappable(send);
        let step = Step {
            filtered: skip.len(),
            dead: stale.len() + unmappable.len(),
            ..Step::default()
        };
        let mut outcomes = Vec::new();
        for (c, why) in unmappable {
            let Posted::Sent { outcome, .. } = dead_letter(std::slice::from_ref(&c), 0, &why)
            else {
                unreachable!("a dead letter is sent");
            };
            outcomes.push(outcome);
        }
        if !stale.is_empty() {
            outcomes.push(self.too_old(&stale));
        }
        if !skip.is_empty() {
            outcomes.push(Outcome {
                ids: skip.iter().map(|c| c.id).collect(),
                attempt: None,
                completion: Completion::Filtered,
            });
        }
        (send, outcomes, step)
    }

    /// Counts what became of a batch into `step` and keeps its outcome to record.
    fn settle(&self, posted: Posted, step: &mut Step, outcomes: &mut Vec<Outcome>) {
        match posted {
            Posted::Lapsed(n) => step.lapsed += n,
            Posted::Deferred(outcome) => {
                step.deferred += outcome.ids.len();
                self.metrics.deferred(outcome.ids.len());
                outcomes.push(outcome);
            }
            Posted::Sent {
                lapsed,
                verdict,
                outcome,
            } => {
                step.lapsed += lapsed;
                let n = outcome.ids.len();
                match verdict {
                    Verdict::Delivered => step.delivered += n,
                    Verdict::Retry(_) => step.retried += n,
                    Verdict::Dead => step.dead += n,
                }
                outcomes.push(outcome);
            }
        }
    }

    /// The events the sink can express, and those it cannot (each a dead letter of its own,
    /// not its whole batch).
    fn split_unmappable(
        &self,
        events: Vec<Claimed>,
    ) -> (Vec<Claimed>, Vec<(Claimed, super::capture::Unmappable)>) {
        let mut send = Vec::with_capacity(events.len());
        let mut unmappable = Vec::new();
        for c in events {
            match self.sink.check(&c) {
                Ok(()) => send.push(c),
                Err(why) => unmappable.push((c, why)),
            }
        }
        (send, unmappable)
    }

    /// The events still young enough to send, and those older than `max_event_age_secs`.
    fn split_stale(&self, events: Vec<Claimed>) -> (Vec<Claimed>, Vec<Claimed>) {
        let Some(age) = self.settings.max_event_age_secs else {
            return (events, Vec::new());
        };
        let oldest = now_ms() - (age as i64).saturating_mul(1000);
        events.into_iter().partition(|c| c.created_ms >= oldest)
    }

    /// Dead letters for events that came due too late to teach Pega anything.
    fn too_old(&self, stale: &[Claimed]) -> Outcome {
        let age = self.settings.max_event_age_secs.unwrap_or_default();
        let detail = format!(
            "older than [pega] max_event_age_secs ({age} s) when it came due: not sent (a replay sends it)"
        );
        tracing::warn!(n = stale.len(), events = ?uuids(stale), max_event_age_secs = age, "events too old to send: dead letters");
        self.metrics.record(&Verdict::Dead, stale, now_ms());
        Outcome {
            ids: stale.iter().map(|c| c.id).collect(),
            attempt: Some(Attempt {
                at_ms: now_ms(),
                http_status: None,
                duration_ms: 0,
                outcome: AttemptOutcome::Dead,
                detail,
            }),
            completion: Completion::Dead,
        }
    }

    /// Records a round's outcomes. The POSTs are done: when the store cannot take the record
    /// now (a database restarting, a full disk), the recording is retried, not the POSTs, so
    /// a store hiccup sends nothing twice. Gives up only when the leases have run out (other
    /// workers may then have claimed the events) or on an error that retrying cannot fix.
    async fn record(&self, outcomes: Vec<Outcome>) -> Result<(), crate::store::StoreError> {
        let started = tokio::time::Instant::now();
        let lease = Duration::from_secs(self.settings.lease_secs);
        let mut delay = RECORD_RETRY_FIRST;
        let mut warned = false;
        loop {
            match self.store.outbox().complete(outcomes.clone()).await {
                Ok(()) => {
                    if warned {
                        tracing::info!("delivery outcomes recorded after the store came back");
                    }
                    return Ok(());
                }
                Err(e) if e.is_unavailable() && started.elapsed() + delay < lease => {
                    if !warned {
                        tracing::warn!(
                            error = %e,
                            events = outcomes.iter().map(|o| o.ids.len()).sum::<usize>(),
                            "recording delivery outcomes failed: retrying the recording (not the POSTs)"
                        );
                        warned = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RECORD_RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Delivers one batch through the sink, in phases: wait for a place under the limit and
    /// the endpoint's gate ([`Worker::admit`]), leave out events whose lease has not time
    /// enough left ([`Worker::live`]), deliver, and judge the answer ([`Worker::judge`]).
    async fn deliver(&self, batch: &[Claimed]) -> Posted {
        let (permit, probe) = match self.admit(batch).await {
            Ok(admitted) => admitted,
            Err(deferred) => return Posted::Deferred(deferred),
        };
        let live = self.live(batch);
        let lapsed = batch.len() - live.len();
        if live.is_empty() {
            if probe {
                self.gate.cancel_probe();
            }
            return Posted::Lapsed(lapsed);
        }
        let at_ms = now_ms();
        match self.sink.deliver(&live).await {
            Ok(sent) => self.judge(&live, lapsed, at_ms, sent, permit, probe),
            Err(unmappable) => {
                if probe {
                    self.gate.cancel_probe();
                }
                drop(permit);
                dead_letter(&live, lapsed, &unmappable)
            }
        }
    }

    /// A place under the concurrency limit and the endpoint gate's leave, with whether this
    /// batch is the breaker's probe. A short pause (`Retry-After`) is waited out when every
    /// lease has time for it; a longer one, or an open breaker (unless this batch is its
    /// probe), defers the batch to when the endpoint may be posted to (`Err`).
    async fn admit(
        &self,
        batch: &[Claimed],
    ) -> Result<(super::concurrency::Permit, bool), Outcome> {
        let permit = self.limiter.acquire().await;
        loop {
            let now = tokio::time::Instant::now();
            match self.gate.admit(now) {
                Admit::Go => return Ok((permit, false)),
                Admit::Probe => {
                    self.metrics.breaker(BreakerState::HalfOpen);
                    tracing::info!("probing the Pega endpoint");
                    return Ok((permit, true));
                }
                Admit::NotBefore(t) => {
                    let wait_ms = t.duration_since(now).as_millis() as i64;
                    let lease = batch.iter().map(|c| c.lease_until_ms).min().unwrap_or(0);
                    let closed = self.gate.state() == BreakerState::Closed;
                    if closed && now_ms() + wait_ms < lease - self.margin_ms() {
                        tokio::time::sleep_until(t).await;
                        continue;
                    }
                    return Err(Outcome {
                        ids: batch.iter().map(|c| c.id).collect(),
                        attempt: None,
                        completion: Completion::Retry {
                            next_at_ms: now_ms() + wait_ms,
                        },
                    });
                }
            }
        }
    }

    /// The time a lease must have left for a POST: `timeout_secs`, at most half the lease.
    fn margin_ms(&self) -> i64 {
        let s = &self.settings;
        (s.timeout_secs * 1000).min(s.lease_secs * 500) as i64
    }

    /// The events of `batch` whose lease has time left for a POST: one whose lease runs out
    /// first may be claimed and posted by another worker, so it is left alone, to be claimed
    /// again itself.
    fn live<'b>(&self, batch: &'b [Claimed]) -> std::borrow::Cow<'b, [Claimed]> {
        let now = now_ms();
        let margin = self.margin_ms();
        let has_time = |c: &Claimed| c.lease_until_ms - now > margin;
        if batch.iter().all(has_time) {
            return batch.into();
        }
        batch
            .iter()
            .filter(|c| has_time(c))
            .cloned()
            .collect::<Vec<_>>()
            .into()
    }

    /// What a delivery's answer means for its events (and for the limiter and the gate).
    fn judge(
        &self,
        batch: &[Claimed],
        lapsed: usize,
        at_ms: i64,
        sent: Sent,
        permit: super::concurrency::Permit,
        probe: bool,
    ) -> Posted {
        self.observe(&sent, permit, probe);
        let attempt_no = batch.iter().map(|c| c.attempts).max().unwrap_or(0) + 1;
        let verdict = verdict(
            &sent.response,
            attempt_no,
            &self.settings.retry,
            fastrand::f64(),
        );
        let (completion, outcome) = match &verdict {
            Verdict::Delivered => (Completion::Delivered, AttemptOutcome::Delivered),
            Verdict::Retry(after) => (
                Completion::Retry {
                    next_at_ms: at_ms + after.as_millis() as i64,
                },
                AttemptOutcome::Retry,
            ),
            Verdict::Dead => (Completion::Dead, AttemptOutcome::Dead),
        };
        let http_status = match sent.response {
            Response::Status { code, .. } => Some(code),
            Response::Failed | Response::Accepted | Response::Refused => None,
        };
        self.metrics.record(&verdict, batch, now_ms());
        log_verdict(&verdict, batch, attempt_no, http_status, &sent.detail);
        let record = Outcome {
            ids: batch.iter().map(|c| c.id).collect(),
            attempt: Some(Attempt {
                at_ms,
                http_status,
                duration_ms: sent.duration.as_millis() as i64,
                outcome,
                detail: sent.detail,
            }),
            completion,
        };
        Posted::Sent {
            lapsed,
            verdict,
            outcome: record,
        }
    }

    /// Tells the limiter and the gate what a POST's answer says about the endpoint.
    fn observe(&self, sent: &Sent, permit: super::concurrency::Permit, probe: bool) {
        let (code, retry_after) = match sent.response {
            Response::Status { code, retry_after } => (Some(code), retry_after),
            // A broker's answer: as a 2xx (taken) or a 4xx (refused for good) to the limiter.
            Response::Accepted => (Some(200), None),
            Response::Refused => (Some(400), None),
            Response::Failed => (None, None),
        };
        permit.done(match &sent.failure {
            Some(failure) => Signal::of_failure(failure),
            None => Signal::of(code),
        });
        self.metrics.concurrency(&self.limiter.snapshot());
        let failed = code.is_none_or(|c| c == 408 || c >= 500);
        if let Some(health) = &self.health {
            health.observed(failed.then(|| sent.detail.clone()));
        }
        let pause = match code {
            Some(429 | 503) => retry_after.map(Duration::from_secs),
            _ => None,
        };
        if let Some(pause) = pause {
            self.metrics.paused();
            tracing::warn!(
                status = code,
                pause_secs = pause.as_secs(),
                "Pega asked to wait (Retry-After): pausing every POST to the endpoint"
            );
        }
        match self
            .gate
            .record(tokio::time::Instant::now(), failed, probe, pause)
        {
            Some(Transition::Opened) => {
                self.metrics.breaker(BreakerState::Open);
                tracing::error!(
                    probe_every_secs = self.settings.breaker.probe_interval_secs,
                    cause = sent.detail.as_str(),
                    "the Pega endpoint is failing: circuit breaker open, probing it with one request at a time"
                );
            }
            Some(Transition::Closed) => {
                self.limiter.restart();
                self.metrics.breaker(BreakerState::Closed);
                self.metrics.concurrency(&self.limiter.snapshot());
                tracing::info!(
                    "the Pega endpoint answers again: circuit breaker closed, concurrency starts again from the minimum"
                );
            }
            None if probe => self.metrics.breaker(self.gate.state()),
            None => {}
        }
    }

    /// Delivers until `stop`: the events handed over by this process's requests as they
    /// come (`inbox`), and events claimed from the store when woken (`wake`: events committed
    /// due, a replay, a resume), every `poll_ms` (retries falling due, leases run out) and
    /// while the queue runs low and claims come back full.
    ///
    /// An ordered lane (Kafka) is delivered in rounds, one at a time: a round's outcomes are
    /// recorded before the next is claimed, so no event overtakes an earlier one. The others
    /// are a pipeline ([`Worker::stream`]): a batch is posted as soon as a place under the
    /// limit frees, and outcomes are recorded as they come, grouped while a recording runs.
    ///
    /// Supervised by [`crate::app`]: after a panic it is called again with the same inbox;
    /// the events being posted when it panicked stay leased and are claimed again when their
    /// lease runs out. On shutdown, call [`Worker::release`].
    pub async fn run(
        &self,
        wake: &Notify,
        inbox: &mut Inbox,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if self.lane.ordered() {
            self.rounds(wake, inbox, &stop).await;
        } else {
            self.stream(wake, inbox, &stop).await;
        }
    }

    /// How many POSTs may be under way now: the limit, narrowed by failures in a row, or
    /// the probe alone while the endpoint is down ([`super::breaker::Gate::places`]).
    fn places(&self) -> usize {
        self.gate.places(self.limiter.limit())
    }

    /// Claims up to `want` due events from the store; `true` when the claim came back full
    /// (there may be more).
    async fn refill(&self, want: usize) -> (Vec<Claimed>, bool) {
        if want == 0 {
            return (Vec::new(), true);
        }
        match (self.store.outbox())
            .claim(self.lane, want, self.settings.lease_secs)
            .await
        {
            Ok(claimed) => {
                let full = claimed.len() == want;
                (claimed, full)
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "claiming events failed");
                (Vec::new(), false)
            }
        }
    }

    /// The pipeline: events are taken into `inbox.queue` (handed over, or claimed when it
    /// runs below a quarter of its bound), posted a batch at a time as soon as a place
    /// under the limit is free, and their outcomes recorded as they come: one recording at a
    /// time, taking every outcome that arrived while the previous one ran or within
    /// [`GATHER`] of the first (no round waits for its slowest POST). On `stop`, the POSTs
    /// under way finish and are recorded.
    async fn stream(
        &self,
        wake: &Notify,
        inbox: &mut Inbox,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        let Inbox { handed, queue } = inbox;
        let poll = Duration::from_millis(self.settings.poll_ms.max(10));
        let batch = self.settings.batch_size.max(1);
        let mut posts = futures::stream::FuturesUnordered::new();
        let mut recording = futures::stream::FuturesUnordered::new();
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut gathering: Option<tokio::time::Instant> = None;
        // Only its `lapsed` is read: events whose lease ran out are claimed again.
        let mut step = Step::default();
        let mut claim = true;
        let mut last_claim = Instant::now();
        while !stop.is_cancelled() {
            if let Some(fault) = &self.fault {
                fault();
            }
            // The most events taken but not yet posted: a round's.
            let bound = self.round_size();
            while queue.len() < bound {
                let Ok(next) = handed.try_recv() else { break };
                self.take(next.events, queue, &mut outcomes);
            }
            if wake.notified().now_or_never().is_some() || last_claim.elapsed() >= poll {
                claim = true;
            }
            let paused = self.gate.not_before(tokio::time::Instant::now());
            if claim && paused.is_none() && queue.len() < bound.div_ceil(4) {
                last_claim = Instant::now();
                let claimed;
                (claimed, claim) = self.refill(bound - queue.len()).await;
                self.take(claimed, queue, &mut outcomes);
            }
            while paused.is_none() && !queue.is_empty() && posts.len() < self.places() {
                let events: Vec<Claimed> = queue.drain(..batch.min(queue.len())).collect();
                posts.push(async move { self.deliver(&events).await });
            }
            // Outcomes wait for others (one transaction and one flush for all) until
            // `GATHER` after the first, or until a round's worth came: the most events the
            // worker takes at once (under a small fixed `concurrency`, fewer would mean a
            // commit every few events).
            let now = tokio::time::Instant::now();
            if recording.is_empty() && !outcomes.is_empty() {
                let since = *gathering.get_or_insert(now);
                let n: usize = outcomes.iter().map(|o| o.ids.len()).sum();
                if n >= self.round_limit() || now >= since + GATHER {
                    let group = std::mem::take(&mut outcomes);
                    recording.push(self.record(group));
                    gathering = None;
                }
            }
            let gathered = gathering.map_or(now, |t| t + GATHER);
            let wait = paused.unwrap_or(now + poll);
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep_until(gathered), if gathering.is_some() && recording.is_empty() => {}
                Some(posted) = posts.next() => {
                    let lapsed = step.lapsed;
                    self.settle(posted, &mut step, &mut outcomes);
                    claim |= step.lapsed > lapsed;
                }
                Some(recorded) = recording.next() => unrecorded(recorded),
                next = handed.recv(), if queue.len() < bound && !handed.is_closed() => {
                    if let Some(next) = next {
                        self.take(next.events, queue, &mut outcomes);
                    }
                }
                () = wake.notified() => claim = true,
                () = tokio::time::sleep_until(wait) => claim = true,
            }
        }
        while let Some(posted) = posts.next().await {
            self.settle(posted, &mut step, &mut outcomes);
        }
        while let Some(recorded) = recording.next().await {
            unrecorded(recorded);
        }
        if !outcomes.is_empty() {
            unrecorded(self.record(outcomes).await);
        }
    }

    /// Takes events into the queue: those to post; the others' outcomes are kept to record.
    fn take(
        &self,
        events: Vec<Claimed>,
        queue: &mut VecDeque<Claimed>,
        outcomes: &mut Vec<Outcome>,
    ) {
        let (send, sorted, _) = self.sort(events);
        queue.extend(send);
        outcomes.extend(sorted);
    }

    /// Rounds, one at a time (an ordered lane): the queue and the events handed over, then
    /// the store's due events, up to a round.
    async fn rounds(
        &self,
        wake: &Notify,
        inbox: &mut Inbox,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        let Inbox { handed, queue } = inbox;
        let poll = Duration::from_millis(self.settings.poll_ms.max(10));
        let mut claim = true;
        let mut last_claim = Instant::now();
        loop {
            if stop.is_cancelled() {
                break;
            }
            if let Some(fault) = &self.fault {
                fault();
            }
            // A paused endpoint, or an open breaker before its next probe: nothing to post.
            if let Some(t) = self.gate.not_before(tokio::time::Instant::now()) {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(t) => {}
                }
                claim = true;
                continue;
            }
            if wake.notified().now_or_never().is_some() || last_claim.elapsed() >= poll {
                claim = true;
            }
            let limit = self.round_size();
            while queue.len() < limit {
                let Ok(next) = handed.try_recv() else { break };
                queue.extend(next.events);
            }
            if claim && queue.len() < limit {
                last_claim = Instant::now();
                let claimed;
                (claimed, claim) = self.refill(limit - queue.len()).await;
                queue.extend(claimed);
            }
            if !queue.is_empty() {
                let events: Vec<Claimed> = queue.drain(..limit.min(queue.len())).collect();
                match self.deliver_round(events).await {
                    Ok(step) if step.lapsed > 0 => claim = true,
                    Ok(_) => {}
                    // The events stay leased: claimed again when their lease runs out.
                    Err(e) => tracing::error!(error = format!("{e:#}"), "delivery round failed"),
                }
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                next = handed.recv(), if !handed.is_closed() => {
                    if let Some(next) = next {
                        queue.extend(next.events);
                    }
                }
                () = wake.notified() => claim = true,
                () = tokio::time::sleep(poll) => claim = true,
            }
        }
    }

    /// On shutdown: makes the events taken or handed over but not posted due again (no
    /// attempt counted).
    pub async fn release(&self, inbox: Inbox) {
        let Inbox {
            mut queue,
            mut handed,
        } = inbox;
        handed.close();
        while let Ok(leased) = handed.try_recv() {
            queue.extend(leased.events);
        }
        if queue.is_empty() {
            return;
        }
        let release = Outcome {
            ids: queue.iter().map(|c| c.id).collect(),
            attempt: None,
            completion: Completion::Retry {
                next_at_ms: now_ms(),
            },
        };
        if let Err(e) = self.store.outbox().complete(vec![release]).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not release handed-over events: they are claimed again when their lease runs out"
            );
        }
    }
}

/// Logs a recording of outcomes that failed (its events stay leased: claimed again when
/// their lease runs out).
fn unrecorded(recorded: Result<(), crate::store::StoreError>) {
    if let Err(e) = recorded {
        tracing::error!(
            error = format!("{e:#}"),
            "recording delivery outcomes failed"
        );
    }
}

/// A batch the sink cannot express (its format): a dead letter, fixed by the configuration
/// and a replay.
fn dead_letter(batch: &[Claimed], lapsed: usize, why: &super::capture::Unmappable) -> Posted {
    tracing::error!(events = ?uuids(batch), error = %why, "an event cannot be posted in the configured format: dead letter (fix the configuration, then replay it)");
    Posted::Sent {
        lapsed,
        verdict: Verdict::Dead,
        outcome: Outcome {
            ids: batch.iter().map(|c| c.id).collect(),
            attempt: Some(Attempt {
                at_ms: now_ms(),
                http_status: None,
                duration_ms: 0,
                outcome: AttemptOutcome::Dead,
                detail: why.to_string(),
            }),
            completion: Completion::Dead,
        },
    }
}

/// The uuids of a batch, for log lines (the first few).
fn uuids(batch: &[Claimed]) -> Vec<&str> {
    batch.iter().take(5).map(|c| c.uuid.as_str()).collect()
}

/// One log line for a failed delivery (none for a delivered one), naming its events.
fn log_verdict(
    verdict: &Verdict,
    batch: &[Claimed],
    attempt: u32,
    status: Option<u16>,
    cause: &str,
) {
    let events = uuids(batch);
    let n = batch.len();
    match verdict {
        Verdict::Delivered => {}
        Verdict::Retry(after) if status == Some(429) => tracing::warn!(
            n,
            ?events,
            attempt,
            retry_in_ms = after.as_millis() as u64,
            "Pega is rate-limiting (429): retrying later"
        ),
        Verdict::Retry(after) => tracing::warn!(
            n,
            ?events,
            attempt,
            status,
            cause,
            retry_in_ms = after.as_millis() as u64,
            "delivery failed: retrying"
        ),
        Verdict::Dead => tracing::error!(
            n,
            ?events,
            attempt,
            status,
            cause,
            "delivery failed: dead letter (replay it once the cause is fixed)"
        ),
    }
}
