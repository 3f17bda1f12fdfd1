//! The seam between the delivery worker and where events go. The worker keeps the leases,
//! the concurrency limit, the breaker, retries and dead letters; a [`Sink`] only delivers a
//! batch and says what happened. The first sink is Pega's REST service ([`RestSink`]: the
//! seed's JSON array, or CDH's CaptureResponse, one event per POST); a new sink (a Kafka
//! topic, say) is a new file implementing [`Sink`], chosen in [`from_settings`].

use super::capture::Unmappable;
use super::client::{ClientError, PegaClient, Sent};
use crate::config::pega::{Format, PegaSettings};
use crate::outbox::Claimed;

/// Where a batch of events goes.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// What it delivers to, for logs (never a credential).
    fn describe(&self) -> String;

    /// Delivers one batch: the answer (or why there was none), or, before anything is sent,
    /// why the batch cannot be expressed in the sink's format (a dead letter).
    async fn deliver(&self, batch: &[Claimed]) -> Result<Sent, Unmappable>;

    /// Reaches the destination without delivering anything (`config check --connect`).
    async fn probe(&self) -> Result<String, ClientError>;

    /// Whether one event can be expressed in the sink's format; one that cannot becomes a
    /// dead letter by itself before its batch is delivered.
    fn check(&self, _event: &Claimed) -> Result<(), Unmappable> {
        Ok(())
    }
}

/// A sink shared with others (`/health` probes the Kafka sink the worker delivers through).
pub struct Shared(pub std::sync::Arc<dyn Sink>);

#[async_trait::async_trait]
impl Sink for Shared {
    fn describe(&self) -> String {
        self.0.describe()
    }
    async fn deliver(&self, batch: &[Claimed]) -> Result<Sent, Unmappable> {
        self.0.deliver(batch).await
    }
    async fn probe(&self) -> Result<String, ClientError> {
        self.0.probe().await
    }
    fn check(&self, event: &Claimed) -> Result<(), Unmappable> {
        self.0.check(event)
    }
}

/// What `/health` says of a sink: how its last delivery went (the worker tells), and whether
/// it can be reached now (a probe, at most every [`SinkHealth::PROBE_EVERY`]).
pub struct SinkHealth {
    sink: std::sync::Arc<dyn Sink>,
    last_failure: std::sync::Mutex<Option<String>>,
    probed: tokio::sync::Mutex<Option<(std::time::Instant, Result<String, String>)>>,
}

impl SinkHealth {
    /// The longest a probe's answer is reused.
    pub const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    pub fn new(sink: std::sync::Arc<dyn Sink>) -> Self {
        Self {
            sink,
            last_failure: std::sync::Mutex::new(None),
            probed: tokio::sync::Mutex::new(None),
        }
    }

    /// A delivery's result: `Some(why)` when it failed (a probe's earlier answer is then
    /// not reused: the next `/health` asks again).
    pub fn observed(&self, failure: Option<String>) {
        if failure.is_some() {
            if let Ok(mut probed) = self.probed.try_lock() {
                *probed = None;
            }
        }
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = failure;
    }

    /// Why the last delivery failed, if it did.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What the sink delivers to.
    pub fn describe(&self) -> String {
        self.sink.describe()
    }

    /// Whether the sink can be reached now: a probe's answer, or why not (reused for
    /// [`SinkHealth::PROBE_EVERY`], so `/health` polled often costs one probe).
    pub async fn reach(&self) -> Result<String, String> {
        let mut probed = self.probed.lock().await;
        if let Some((at, answer)) = &*probed {
            if at.elapsed() < Self::PROBE_EVERY {
                return answer.clone();
            }
        }
        let answer = self.sink.probe().await.map_err(|e| e.to_string());
        *probed = Some((std::time::Instant::now(), answer.clone()));
        answer
    }
}

/// Pega's REST service: one POST per batch, in the configured format.
pub struct RestSink {
    client: PegaClient,
    format: Format,
    capture: crate::config::pega::CaptureSettings,
    endpoint: String,
}

impl RestSink {
    pub fn new(settings: &PegaSettings) -> anyhow::Result<Option<Self>> {
        let Some(client) = PegaClient::new(settings)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            client,
            format: settings.format,
            capture: settings.capture_response.clone(),
            endpoint: crate::config::without_credentials(
                settings.endpoint.as_deref().unwrap_or_default(),
            ),
        }))
    }

    /// The body of a POST of `batch` in the configured format.
    fn body(&self, batch: &[Claimed]) -> Result<String, Unmappable> {
        match self.format {
            Format::Seed => Ok(array(batch)),
            // One event per POST (batch_size = 1 is checked with the settings).
            Format::CaptureResponse => super::capture::body(&self.capture, &batch[0].payload),
        }
    }
}

#[async_trait::async_trait]
impl Sink for RestSink {
    fn describe(&self) -> String {
        self.endpoint.clone()
    }

    async fn deliver(&self, batch: &[Claimed]) -> Result<Sent, Unmappable> {
        let body = self.body(batch)?;
        Ok(self.client.send(body.as_bytes()).await)
    }

    async fn probe(&self) -> Result<String, ClientError> {
        let status = self.client.probe().await?;
        Ok(format!(
            "{} answered HTTP {status} (no event sent)",
            self.endpoint
        ))
    }
}

/// The batch's events as one JSON array, as the seed's examples show.
fn array(batch: &[Claimed]) -> String {
    let size = batch.iter().map(|c| c.payload.len() + 1).sum::<usize>() + 1;
    let mut body = String::with_capacity(size);
    body.push('[');
    for (i, c) in batch.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&c.payload);
    }
    body.push(']');
    body
}
