//! `[kafka]`: a Kafka topic as a sink, for Pega's Kafka data sets. One event per record (the
//! seed's JSON, or a CaptureResponse body), keyed by the configured value and put on the
//! partition Kafka's own producers would pick for that key (murmur2, as the Java client's
//! default partitioner), with the headers `uuid`, `metric`, `metric_timestamp` and
//! `content-type`.
//!
//! The client is rskafka (pure Rust: the default build needs no C library or CMake). It has
//! no idempotent producer, so order is kept here: the Kafka lane is claimed in creation
//! order and delivered one round at a time ([`crate::outbox::Lane::ordered`]), and a
//! partition's records of a round go in one produce request with `acks = all`. A round that
//! fails is produced again whole: a record may then be in the topic twice (same `uuid`),
//! never out of order.

use super::capture::Unmappable;
use super::client::{ClientError, Sent};
use super::schedule::Response;
use super::sink::Sink;
use crate::config::kafka::{Compression, KafkaSettings, SaslMechanism};
use crate::config::pega::{CaptureSettings, Format};
use crate::outbox::Claimed;
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// A Kafka topic.
pub struct KafkaSink {
    settings: KafkaSettings,
    capture: CaptureSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The connection and the topic's partitions, made on first use and again after a
    /// failure (a broker down at start-up is a failed round, retried, not a failed start).
    connected: Mutex<Option<Connected>>,
}

struct Connected {
    client: Client,
    partitions: Vec<i32>,
    by_partition: HashMap<i32, Arc<PartitionClient>>,
}

impl KafkaSink {
    pub fn new(settings: &KafkaSettings, capture: &CaptureSettings) -> anyhow::Result<Self> {
        let tls = if settings.security_protocol.tls() {
            Some(Arc::new(crate::config::tls::client_config(
                &settings.tls,
                "kafka.tls",
            )?))
        } else {
            None
        };
        Ok(Self {
            settings: settings.clone(),
            capture: capture.clone(),
            tls,
            connected: Mutex::new(None),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.settings.timeout_secs)
    }

    /// A client of the brokers, within the timeout.
    async fn client(&self) -> Result<Client, ClientError> {
        let mut builder = ClientBuilder::new(self.settings.brokers.clone())
            .client_id(self.settings.client_id.clone())
            .backoff_config(rskafka::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
                deadline: Some(self.timeout()),
            });
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(tls.clone());
        }
        if let Some(sasl) = &self.settings.sasl {
            let credentials =
                Credentials::new(sasl.username.clone(), sasl.password.expose().to_owned());
            builder = builder.sasl_config(match sasl.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(credentials),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
            });
        }
        // Well past the client's own deadline (checked between attempts, each of which may take a
        // while, and a backoff of up to a second), so its reason (refused, TLS, SASL) is
        // what is said rather than a bare timeout.
        let wait = self.timeout() * 3 + Duration::from_secs(5);
        match tokio::time::timeout(wait, builder.build()).await {
            Err(_) => Err(ClientError::Timeout(format!(
                "no broker of {} answered within {} s",
                self.brokers(),
                wait.as_secs()
            ))),
            Ok(Err(e)) => Err(ClientError::Connect(format!(
                "brokers {}: {e}",
                self.brokers()
            ))),
            Ok(Ok(client)) => Ok(client),
        }
    }

    fn brokers(&self) -> String {
        self.settings.brokers.join(",")
    }

    /// The topic's partitions, from the brokers' metadata.
    async fn partitions(&self, client: &Client) -> Result<Vec<i32>, ClientError> {
        let topics = tokio::time::timeout(self.timeout(), client.list_topics())
            .await
            .map_err(|_| ClientError::Timeout("metadata: no answer in time".into()))?
            .map_err(|e| ClientError::Other(format!("metadata: {e}")))?;
        let topic = &self.settings.topic;
        let found = topics.into_iter().find(|t| &t.name == topic);
        match found {
            Some(t) if !t.partitions.is_empty() => Ok(t.partitions.into_iter().collect()),
            _ => Err(ClientError::Other(format!(
                "the topic `{topic}` does not exist on {} (create it, or let the brokers create topics)",
                self.brokers()
            ))),
        }
    }

    /// The partition clients of this round's partitions, connecting first if needed.
    async fn producers(
        &self,
        wanted: impl Iterator<Item = usize>,
    ) -> Result<(Vec<i32>, HashMap<i32, Arc<PartitionClient>>), ClientError> {
        let mut connected = self.connected.lock().await;
        if connected.is_none() {
            let client = self.client().await?;
            let partitions = self.partitions(&client).await?;
            *connected = Some(Connected {
                client,
                partitions,
                by_partition: HashMap::new(),
            });
        }
        let c = connected.as_mut().expect("connected above");
        let mut chosen = HashMap::new();
        for index in wanted {
            let p = c.partitions[index % c.partitions.len()];
            if let Some(pc) = c.by_partition.get(&p) {
                chosen.insert(p, pc.clone());
                continue;
            }
            let made = c.client.partition_client(
                self.settings.topic.clone(),
                p,
                UnknownTopicHandling::Error,
            );
            let pc = tokio::time::timeout(self.timeout(), made)
                .await
                .map_err(|_| ClientError::Timeout(format!("partition {p}: no leader in time")))?
                .map_err(|e| ClientError::Other(format!("partition {p}: {e}")))?;
            let pc = Arc::new(pc);
            c.by_partition.insert(p, pc.clone());
            chosen.insert(p, pc);
        }
        Ok((c.partitions.clone(), chosen))
    }

    /// Forgets the connection: the next round connects again and reads the metadata anew.
    async fn reset(&self) {
        *self.connected.lock().await = None;
    }

    /// The record of one event: its value in the configured format, its key and headers.
    fn record(&self, c: &Claimed) -> Result<(Option<Vec<u8>>, Record), Unmappable> {
        let value = match self.settings.format {
            Format::Seed => c.payload.clone(),
            Format::CaptureResponse => super::capture::body(&self.capture, &c.payload)?,
        };
        let event: serde_json::Map<String, Value> =
            serde_json::from_str(&c.payload).unwrap_or_default();
        let key = key_of(&self.settings.key, &event).map(String::into_bytes);
        let mut headers = BTreeMap::new();
        headers.insert("uuid".to_owned(), c.uuid.clone().into_bytes());
        headers.insert("metric".to_owned(), c.metric.as_str().as_bytes().to_vec());
        if let Some(t) = event.get("metric_timestamp") {
            headers.insert("metric_timestamp".to_owned(), scalar(t).into_bytes());
        }
        headers.insert("content-type".to_owned(), b"application/json".to_vec());
        let record = Record {
            key: key.clone(),
            value: Some(value.into_bytes()),
            headers,
            timestamp: chrono::Utc::now(),
        };
        Ok((key, record))
    }

    fn compression(&self) -> rskafka::client::partition::Compression {
        use rskafka::client::partition::Compression as C;
        match self.settings.compression {
            Compression::Zstd => C::Zstd,
            Compression::Lz4 => C::Lz4,
            Compression::None => C::NoCompression,
        }
    }
}

/// The key of an event: `interaction_id` (the `InteractionId` manual option), `customer_id`,
/// `external_id`, or any other field of the event; `None` when the event has no such value.
pub fn key_of(key: &str, event: &serde_json::Map<String, Value>) -> Option<String> {
    let value = match key {
        "interaction_id" => event
            .get("broadcast_manual_options")
            .and_then(|o| o.get("InteractionId")),
        field => event.get(field),
    }?;
    let text = scalar(value);
    (!text.is_empty()).then_some(text)
}

/// A JSON scalar as text (a string without its quotes).
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), whose positive value modulo the
/// partition count is the default partitioner's choice for a keyed record.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The index (among the topic's partitions) of a record keyed `key`.
pub fn partition_index(key: &[u8]) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize
}

/// Produces `records` to one partition in their order: in one request, or, when the broker
/// finds the request too large (its `message.max.bytes`), in halves one after the other,
/// down to a single record (which, too large by itself, is refused for good).
async fn produce_in_order(
    producer: &PartitionClient,
    records: Vec<Record>,
    compression: rskafka::client::partition::Compression,
) -> Result<(), rskafka::client::error::Error> {
    let mut chunks = std::collections::VecDeque::from([records]);
    while let Some(mut chunk) = chunks.pop_front() {
        match producer.produce(chunk.clone(), compression).await {
            Ok(_) => {}
            Err(e) if too_large(&e) && chunk.len() > 1 => {
                let second = chunk.split_off(chunk.len() / 2);
                chunks.push_front(second);
                chunks.push_front(chunk);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether the broker refused a request for its size.
fn too_large(e: &rskafka::client::error::Error) -> bool {
    use rskafka::client::error::{Error, ProtocolError};
    matches!(
        e,
        Error::ServerError {
            protocol_error: ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge,
            ..
        }
    )
}

/// Whether a broker's refusal is for good (the record itself), not the broker's state.
fn refused_for_good(e: &rskafka::client::error::Error) -> bool {
    use rskafka::client::error::{Error, ProtocolError};
    matches!(
        e,
        Error::ServerError {
            protocol_error: ProtocolError::MessageTooLarge
                | ProtocolError::RecordListTooLarge
                | ProtocolError::InvalidRecord
                | ProtocolError::CorruptMessage,
            ..
        }
    )
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn describe(&self) -> String {
        format!("kafka://{}/{}", self.brokers(), self.settings.topic)
    }

    fn check(&self, c: &Claimed) -> Result<(), Unmappable> {
        if self.settings.format == Format::CaptureResponse {
            super::capture::body(&self.capture, &c.payload)?;
        }
        Ok(())
    }

    async fn deliver(&self, batch: &[Claimed]) -> Result<Sent, Unmappable> {
        let started = Instant::now();
        let mut records = Vec::with_capacity(batch.len());
        for c in batch {
            let (key, record) = self.record(c)?;
            let index = partition_index(key.as_deref().unwrap_or(c.uuid.as_bytes()));
            records.push((index, record));
        }
        let failed = |failure: ClientError| Sent {
            response: Response::Failed,
            duration: started.elapsed(),
            detail: failure.to_string(),
            failure: Some(failure),
        };
        let (partitions, producers) = match self.producers(records.iter().map(|(i, _)| *i)).await {
            Ok(p) => p,
            Err(e) => {
                self.reset().await;
                return Ok(failed(e));
            }
        };
        // Each partition's records in their order, in one request; partitions at once.
        let mut per_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        for (index, record) in records {
            let p = partitions[index % partitions.len()];
            per_partition.entry(p).or_default().push(record);
        }
        let compression = self.compression();
        let produced = per_partition.into_iter().map(|(p, records)| {
            let producer = producers[&p].clone();
            async move {
                let n = records.len();
                let done = tokio::time::timeout(
                    self.timeout(),
                    produce_in_order(&producer, records, compression),
                )
                .await;
                (p, n, done)
            }
        });
        let mut refused = None;
        for (p, n, done) in futures::future::join_all(produced).await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) if refused_for_good(&e) => {
                    refused = Some(format!("partition {p} refused {n} records: {e}"));
                }
                Ok(Err(e)) => {
                    self.reset().await;
                    return Ok(failed(ClientError::Other(format!("partition {p}: {e}"))));
                }
                Err(_) => {
                    self.reset().await;
                    return Ok(failed(ClientError::Timeout(format!(
                        "partition {p}: no acknowledgement within {} s",
                        self.settings.timeout_secs
                    ))));
                }
            }
        }
        let (response, detail) = match refused {
            Some(why) => (Response::Refused, why),
            None => (
                Response::Accepted,
                format!("{} records acknowledged", batch.len()),
            ),
        };
        Ok(Sent {
            response,
            duration: started.elapsed(),
            detail,
            failure: None,
        })
    }

    async fn probe(&self) -> Result<String, ClientError> {
        let client = self.client().await?;
        let partitions = self.partitions(&client).await?;
        Ok(format!(
            "{}: the topic has {} partitions (metadata read, no record produced)",
            self.describe(),
            partitions.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_is_kafkas() {
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn keys_come_from_the_event() {
        let event: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"customer_id": 17, "external_id": "C-17", "metric": "opens",
                "broadcast_manual_options": {"InteractionId": "-5634"}}"#,
        )
        .unwrap();
        assert_eq!(key_of("interaction_id", &event).as_deref(), Some("-5634"));
        assert_eq!(key_of("customer_id", &event).as_deref(), Some("17"));
        assert_eq!(key_of("external_id", &event).as_deref(), Some("C-17"));
        assert_eq!(key_of("metric", &event).as_deref(), Some("opens"));
        assert_eq!(key_of("campaign_id", &event), None);
    }
}
