//! The worker: `try_deliver_next` does one round (claim, post, record) and says what happened;
//! `run` repeats it, waking when events are committed or a retry falls due.

use super::client::{PegaClient, Sent};
use super::metrics::Metrics;
use super::schedule::Response;
use super::schedule::{verdict, Verdict};
use crate::config::pega::PegaSettings;
use crate::event::Metric;
use crate::store::outbox::now_ms;
use crate::store::Store;
use crate::store::{Attempt, Claimed, Completion, Outcome};
use futures::StreamExt;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

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
}

impl Step {
    /// Nothing was due.
    pub fn is_empty(&self) -> bool {
        *self == Step::default()
    }
}

/// The delivery worker.
pub struct Worker {
    store: Store,
    client: PegaClient,
    settings: Arc<PegaSettings>,
    enabled: HashSet<Metric>,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// A worker for `settings`; `None` when no endpoint is configured.
    pub fn new(
        store: Store,
        settings: Arc<PegaSettings>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(client) = PegaClient::new(&settings)? else {
            return Ok(None);
        };
        let enabled = settings.activities.iter().copied().collect();
        Ok(Some(Self {
            store,
            client,
            settings,
            enabled,
            metrics,
        }))
    }

    /// One round: claim the due events (up to [`ROUND_BATCHES`] batches), post the batches
    /// with at most `concurrency` in flight, then record every outcome in one store call.
    pub async fn try_deliver_next(&self) -> anyhow::Result<Step> {
        let s = &self.settings;
        let batch_size = s.batch_size.max(1);
        let limit = batch_size * s.concurrency.max(1) * ROUND_BATCHES;
        let claimed = self.store.claim(limit, s.lease_secs).await?;
        let (send, skip): (Vec<Claimed>, Vec<Claimed>) = claimed
            .into_iter()
            .partition(|c| Metric::parse(&c.metric).is_some_and(|m| self.enabled.contains(&m)));
        let mut step = Step {
            filtered: skip.len(),
            ..Step::default()
        };
        let mut outcomes = Vec::new();
        if !skip.is_empty() {
            outcomes.push(Outcome {
                ids: skip.iter().map(|c| c.id).collect(),
                attempt: None,
                completion: Completion::Filtered,
            });
        }
        // Built up front: a lazily mapped stream here trips the compiler's Send inference
        // (rust-lang/rust#102211) when the worker is spawned.
        let posts: Vec<_> = send.chunks(batch_size).map(|b| self.deliver(b)).collect();
        let delivered: Vec<(Verdict, Outcome)> = futures::stream::iter(posts)
            .buffer_unordered(s.concurrency.max(1))
            .collect()
            .await;
        for (verdict, outcome) in delivered {
            let n = outcome.ids.len();
            match verdict {
                Verdict::Delivered => step.delivered += n,
                Verdict::Retry(_) => step.retried += n,
                Verdict::Dead => step.dead += n,
            }
            outcomes.push(outcome);
        }
        if !outcomes.is_empty() {
            self.store.complete(outcomes).await?;
        }
        Ok(step)
    }

    /// Posts one batch; says what to record for its events.
    async fn deliver(&self, batch: &[Claimed]) -> (Verdict, Outcome) {
        let body = array(batch);
        let at_ms = now_ms();
        let sent: Sent = self.client.send(body.as_bytes()).await;
        let attempt_no = batch.iter().map(|c| c.attempts).max().unwrap_or(0) + 1;
        let verdict = verdict(
            &sent.response,
            attempt_no,
            &self.settings.retry,
            fastrand::f64(),
        );
        let (completion, outcome) = match &verdict {
            Verdict::Delivered => (Completion::Delivered, "delivered"),
            Verdict::Retry(after) => (
                Completion::Retry {
                    next_at_ms: at_ms + after.as_millis() as i64,
                },
                "retry",
            ),
            Verdict::Dead => (Completion::Dead, "dead"),
        };
        let http_status = match sent.response {
            Response::Status { code, .. } => Some(code),
            Response::Failed => None,
        };
        self.metrics.record(&verdict, batch, now_ms());
        let record = Outcome {
            ids: batch.iter().map(|c| c.id).collect(),
            attempt: Some(Attempt {
                at_ms,
                http_status,
                duration_ms: sent.duration.as_millis() as i64,
                outcome: outcome.into(),
                detail: sent.detail,
            }),
            completion,
        };
        (verdict, record)
    }

    /// Delivers until `shutdown`: a round whenever events are committed (`wake`) or every
    /// `poll_ms` for retries falling due.
    pub async fn run(self, wake: Arc<Notify>, shutdown: impl Future<Output = ()>) {
        let poll = Duration::from_millis(self.settings.poll_ms.max(10));
        tokio::pin!(shutdown);
        loop {
            let step = match self.try_deliver_next().await {
                Ok(step) => step,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "delivery round failed");
                    Step::default()
                }
            };
            if !step.is_empty() {
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// The batch's events as one JSON array, as the seed's examples show.
fn array(batch: &[Claimed]) -> String {
    let mut body = String::from("[");
    for (i, c) in batch.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&c.payload);
    }
    body.push(']');
    body
}
