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
}

/// The sink `[pega]` configures; `None` without an endpoint.
pub fn from_settings(settings: &PegaSettings) -> anyhow::Result<Option<Box<dyn Sink>>> {
    Ok(RestSink::new(settings)?.map(|s| Box::new(s) as Box<dyn Sink>))
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
