//! `[events.*]`: the mail platforms' webhook settings, checked and parsed at load (keys and
//! pinned certificates become their types here, so a bad one stops the start, not a request).

use crate::config::secret::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::RsaPublicKey;
use serde::Deserialize;
use std::path::PathBuf;
use x509_cert::der::{DecodePem, Encode};

/// `[events.*]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSettings {
    pub sendgrid: Option<SendgridSettings>,
    pub mailgun: Option<MailgunSettings>,
    pub postmark: Option<BasicSettings>,
    pub sparkpost: Option<BasicSettings>,
    pub mandrill: Option<MandrillSettings>,
    pub ses: Option<SesSettings>,
}

/// Basic auth in the webhook URL (platforms that do not sign).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicSettings {
    pub username: String,
    pub password: Secret,
}

impl EventsSettings {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(s) = &self.sendgrid {
            if let Err(e) = s.key() {
                problems.push(e);
            }
        }
        if let Some(m) = &self.mailgun {
            if m.signing_key.expose().is_empty() {
                problems.push("events.mailgun.signing_key: required".into());
            }
        }
        for (name, basic) in [("postmark", &self.postmark), ("sparkpost", &self.sparkpost)] {
            if basic
                .as_ref()
                .is_some_and(|b| b.password.expose().len() < 12)
            {
                problems.push(format!("events.{name}.password: at least 12 characters"));
            }
        }
        if let Some(s) = &self.ses {
            if s.topics.is_empty() {
                problems.push("events.ses.topics: name the SNS topics to accept".into());
            }
            if let Err(e) = pinned_certificate(s) {
                problems.push(e);
            }
        }
        if let Some(m) = &self.mandrill {
            if url::Url::parse(&m.url).is_err() {
                problems.push(format!("events.mandrill.url: `{}` is not a URL", m.url));
            }
        }
        problems
    }
}

/// `[events.sendgrid]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendgridSettings {
    /// The Signed Event Webhook's verification key (base64 DER).
    pub public_key: String,
    /// The oldest signature timestamp taken, in seconds (a replayed request older than this
    /// is refused); 0 turns the check off.
    #[serde(default = "default_age")]
    pub max_age_secs: i64,
}

impl SendgridSettings {
    pub fn key(&self) -> Result<p256::ecdsa::VerifyingKey, String> {
        let der = STANDARD
            .decode(self.public_key.trim())
            .map_err(|_| "events.sendgrid.public_key: not base64".to_owned())?;
        <p256::ecdsa::VerifyingKey as p256::pkcs8::DecodePublicKey>::from_public_key_der(&der)
            .map_err(|_| "events.sendgrid.public_key: not a P-256 public key (base64 DER)".into())
    }
}

/// `[events.mailgun]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailgunSettings {
    pub signing_key: Secret,
    /// The oldest signature timestamp taken, in seconds.
    #[serde(default = "default_age")]
    pub max_age_secs: i64,
}

fn default_age() -> i64 {
    300
}

/// `[events.mandrill]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MandrillSettings {
    pub key: Secret,
    /// The exact URL Mandrill posts to (a trailing slash matters).
    pub url: String,
}

/// `[events.ses]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SesSettings {
    /// Only these SNS topics are accepted.
    pub topics: Vec<String>,
    /// Pin the signing certificate (PEM) instead of fetching it.
    pub certificate_file: Option<PathBuf>,
}

/// The RSA key of a signing certificate (PEM).
pub fn certificate_key(pem: &str) -> Result<RsaPublicKey, String> {
    let cert = x509_cert::Certificate::from_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| e.to_string())?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| format!("not an RSA key: {e}"))
}

/// The key of `[events.ses] certificate_file`, read and parsed once (none when not pinned).
pub fn pinned_certificate(settings: &SesSettings) -> Result<Option<RsaPublicKey>, String> {
    let Some(file) = &settings.certificate_file else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(file)
        .map_err(|e| format!("events.ses.certificate_file: {}: {e}", file.display()))?;
    certificate_key(&pem)
        .map(Some)
        .map_err(|e| format!("events.ses.certificate_file: {e}"))
}
