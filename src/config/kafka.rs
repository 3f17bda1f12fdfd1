//! `[kafka]`: events delivered to a Kafka topic that Pega reads through a Kafka data set,
//! beside or instead of `[pega] endpoint`. One event per record (the seed's JSON, or a
//! CaptureResponse body), keyed so one interaction's or customer's events stay in order.

use super::pega::Format;
use super::secret::Secret;
use super::tls::TlsSettings;
use serde::Deserialize;
use std::path::Path;

/// `[kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    pub topic: String,
    /// The record's value: the seed's event (`seed`) or a CaptureResponse body
    /// (`capture-response`, shaped by `[pega.capture_response]`); one event per record.
    #[serde(default)]
    pub format: Format,
    /// What keys a record (and so picks its partition): `interaction_id`, `customer_id`,
    /// `external_id`, or another field of the event.
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default)]
    pub compression: Compression,
    /// Only `all`: a record counts as delivered once every in-sync replica has it.
    #[serde(default = "default_acks")]
    pub acks: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (Kafka's `security.protocol`).
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// A private CA and a client certificate (`[kafka.tls]`).
    #[serde(default)]
    pub tls: TlsSettings,
    /// `[kafka.sasl]`: with `sasl_plaintext` or `sasl_ssl`.
    pub sasl: Option<SaslSettings>,
    /// Per produce request, retries by the client included, and per connection attempt.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Records per produce round at most: a partition's records of a round go in one request
    /// (halved while the broker finds it too large).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_client_id")]
    pub client_id: String,
}

/// `[kafka] compression`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    Lz4,
    None,
}

/// `[kafka] security_protocol`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// `[kafka.sasl]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslSettings {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

impl std::fmt::Debug for SaslSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslSettings")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// `[kafka.sasl] mechanism`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

fn default_key() -> String {
    "interaction_id".into()
}
fn default_acks() -> String {
    "all".into()
}
fn default_timeout() -> u64 {
    10
}
fn default_batch() -> usize {
    2000
}
fn default_client_id() -> String {
    "pegabridge".into()
}

impl KafkaSettings {
    /// Relative TLS files are read from the configuration's folder.
    pub fn resolve(&mut self, base: &Path) {
        self.tls.resolve(base);
    }

    /// Every problem of `[kafka]`, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.brokers.is_empty() {
            problems.push("kafka.brokers: at least one `host:port` is required".into());
        }
        for b in &self.brokers {
            let port = b.rsplit_once(':').and_then(|(h, p)| {
                (!h.is_empty()).then_some(())?;
                p.parse::<u16>().ok()
            });
            if port.is_none() {
                problems.push(format!("kafka.brokers: `{b}` is not `host:port`"));
            }
        }
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.topic.is_empty() || self.topic.len() > 249 || !self.topic.chars().all(legal) {
            problems.push(format!(
                "kafka.topic: `{}` is not a topic name (1 to 249 of a-z, A-Z, 0-9, `.`, `_`, `-`)",
                self.topic
            ));
        }
        if self.key.trim().is_empty() {
            problems.push(
                "kafka.key: interaction_id, customer_id, external_id or an event field".into(),
            );
        }
        if self.acks != "all" {
            problems.push(format!(
                "kafka.acks: `{}`: only \"all\" is supported (a record counts as delivered once every in-sync replica has it)",
                self.acks
            ));
        }
        if self.timeout_secs == 0 {
            problems.push("kafka.timeout_secs: must be at least 1".into());
        }
        if self.batch_size == 0 {
            problems.push("kafka.batch_size: must be at least 1".into());
        }
        match (&self.sasl, self.security_protocol.sasl()) {
            (None, true) => problems.push(
                "kafka.sasl: required with security_protocol sasl_plaintext or sasl_ssl".into(),
            ),
            (Some(_), false) => problems.push(
                "kafka.sasl: set security_protocol to sasl_ssl (or sasl_plaintext) to use it"
                    .into(),
            ),
            (Some(s), true) => {
                if s.mechanism == SaslMechanism::Plain && !self.security_protocol.tls() {
                    problems.push("kafka.sasl: PLAIN over sasl_plaintext would send the password in clear: use sasl_ssl, or SCRAM-SHA-256/512".into());
                }
                if s.username.is_empty() {
                    problems.push("kafka.sasl.username: required".into());
                }
            }
            (None, false) => {}
        }
        let files_set = self.tls.ca_file.is_some() || self.tls.client_cert.is_some();
        if files_set && !self.security_protocol.tls() {
            problems.push(
                "kafka.tls: set security_protocol to ssl (or sasl_ssl) to use these files".into(),
            );
        }
        if let Err(mut e) = self.tls.pem("kafka.tls") {
            problems.append(&mut e);
        }
        problems
    }
}
