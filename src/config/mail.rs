//! `[mail]`: sending each personal broadcast through an SMTP relay. Without the section,
//! pegabridge sends nothing (a personal broadcast counts as sent when it is committed).

use super::secret::Secret;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: only for a relay on the same host or a test server.
    None,
}

/// `[mail] tls`: how the relay's connection is secured, and with which files.
#[derive(Debug, Clone, Default)]
pub struct MailTls {
    pub mode: SmtpTls,
    /// A private CA's roots and a client certificate (`[mail.tls] ca_file`, `client_cert`,
    /// `client_key`), read at load like `[pega.tls]`'s.
    pub files: super::tls::TlsSettings,
}

/// `[mail.tls]` as a table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailTlsTable {
    #[serde(default)]
    mode: SmtpTls,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for MailTls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = MailTls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#""starttls", "tls", "none" or a table with `mode`, `ca_file`, `client_cert`, `client_key`"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MailTls, E> {
                use serde::de::IntoDeserializer;
                let mode = SmtpTls::deserialize(v.into_deserializer())?;
                Ok(MailTls {
                    mode,
                    files: super::tls::TlsSettings::default(),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<MailTls, A::Error> {
                let t =
                    MailTlsTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(MailTls {
                    mode: t.mode,
                    files: super::tls::TlsSettings {
                        ca_file: t.ca_file,
                        client_cert: t.client_cert,
                        client_key: t.client_key,
                    },
                })
            }
        }
        d.deserialize_any(Form)
    }
}

/// `[mail]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// `tls = "starttls" | "tls" | "none"`, or `[mail.tls]` with `mode` and the files of a
    /// private CA (`ca_file`) and a client certificate (`client_cert`, `client_key`).
    #[serde(default)]
    pub tls: MailTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The sender address (`From`), e.g. `offers@example.com`.
    pub from: String,
    pub reply_to: Option<String>,
    /// The domain of every `Message-ID` (`<uuid@domain>`): one you control; by default the
    /// domain of `from`.
    #[serde(default)]
    pub message_id_domain: String,
    /// SMTP sessions open at once, at most.
    #[serde(default = "default_sessions")]
    pub max_sessions: usize,
    /// Per SMTP command.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// How long a claimed send is reserved for its instance: after a crash, its sends are
    /// taken up again after this long.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// DKIM signing (`[mail.dkim]`).
    pub dkim: Option<DkimSettings>,
    /// The platform behind the relay, if any (see [`Platform`]).
    pub platform: Option<Platform>,
    /// Amazon SES: the configuration set whose event destination posts to pegabridge.
    pub ses_configuration_set: Option<String>,
    /// When a send the relay did not take (4xx, no answer) is tried again; exhausted, it is
    /// a soft bounce (`[mail.retry]`, the same keys as `[pega.retry]`).
    #[serde(default)]
    pub retry: super::pega::RetrySettings,
    /// When most sends of the last `window_secs` fail for the sender's or the relay's reason
    /// (connection, TLS, AUTH, `MAIL FROM`, policy, content), sending pauses: one probe every
    /// `probe_interval_secs` until the relay takes one (`[mail.breaker]`, the keys of
    /// `[pega.breaker]`).
    #[serde(default = "default_breaker")]
    pub breaker: super::pega::BreakerSettings,
}

fn default_breaker() -> super::pega::BreakerSettings {
    super::pega::BreakerSettings {
        window_secs: 60,
        min_requests: 10,
        failure_ratio: 0.5,
        probe_interval_secs: 30,
    }
}

fn default_port() -> u16 {
    587
}
fn default_sessions() -> usize {
    8
}
fn default_timeout() -> u64 {
    30
}
fn default_lease() -> u64 {
    120
}

/// The mail platform whose SMTP relay `[mail]` is: its metadata header then carries the
/// `pegabridge` key, so the platform's events join back to the personal broadcast.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Sendgrid,
    Mailgun,
    Postmark,
    Ses,
    Sparkpost,
    Mandrill,
}

/// The DKIM key's algorithm.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    #[default]
    Rsa,
    Ed25519,
}

/// `[mail.dkim]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSettings {
    /// The signing domain (`d=`): the key is published at `SELECTOR._domainkey.DOMAIN`.
    pub domain: String,
    pub selector: String,
    /// The private key, PEM (PKCS#1 for RSA; the raw 32-byte seed in base64 for Ed25519).
    pub key_file: PathBuf,
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
}

impl MailSettings {
    /// Relative key files are read from the configuration's folder; an unset
    /// `message_id_domain` is `from`'s domain.
    pub fn resolve(&mut self, base: &Path) {
        if self.message_id_domain.trim().is_empty() {
            if let Ok(from) = self.from.parse::<lettre::message::Mailbox>() {
                self.message_id_domain = from.email.domain().to_owned();
            }
        }
        self.tls.files.resolve(base);
        if let Some(d) = &mut self.dkim {
            if d.key_file.is_relative() {
                d.key_file = base.join(&d.key_file);
            }
        }
    }

    /// Every problem of `[mail]`, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.host.trim().is_empty() {
            problems.push("mail.host: required".into());
        }
        if self.from.parse::<lettre::message::Mailbox>().is_err() {
            problems.push(format!(
                "mail.from: `{}` is not an email address",
                self.from
            ));
        }
        if let Some(r) = &self.reply_to {
            if r.parse::<lettre::message::Mailbox>().is_err() {
                problems.push(format!("mail.reply_to: `{r}` is not an email address"));
            }
        }
        if self.message_id_domain.trim().is_empty()
            || self.message_id_domain.contains(['<', '>', '@', ' '])
        {
            problems.push("mail.message_id_domain: a domain name you control is required".into());
        }
        if self.lease_secs <= self.timeout_secs {
            problems.push(format!(
                "mail.lease_secs ({}) must be longer than mail.timeout_secs ({})",
                self.lease_secs, self.timeout_secs
            ));
        }
        if self.max_sessions == 0 {
            problems.push("mail.max_sessions: must be at least 1".into());
        }
        if self.username.is_some() != self.password.is_some() {
            problems.push("mail.username and mail.password go together".into());
        }
        if self.tls.mode == SmtpTls::None && self.password.is_some() {
            problems.push(
                "mail.tls: \"none\" would send mail.password in clear: use \"starttls\" or \"tls\" (a relay with a private CA: [mail.tls] ca_file)".into(),
            );
        }
        if self.breaker.window_secs == 0 || self.breaker.probe_interval_secs == 0 {
            problems.push(
                "mail.breaker.window_secs and probe_interval_secs: must be at least 1".into(),
            );
        }
        if let Err(mut e) = self.tls.files.pem("mail.tls") {
            problems.append(&mut e);
        }
        if let Some(d) = &self.dkim {
            if let Err(e) = d.key() {
                problems.push(e);
            }
        }
        problems.extend(
            self.retry
                .problems()
                .into_iter()
                .map(|p| p.replace("pega.retry", "mail.retry")),
        );
        problems
    }
}

impl DkimSettings {
    /// The signing key, read and checked.
    pub fn key(&self) -> Result<lettre::message::dkim::DkimSigningKey, String> {
        self.signing_key(&self.read()?)
    }

    /// The key file's text.
    pub fn read(&self) -> Result<String, String> {
        std::fs::read_to_string(&self.key_file).map_err(|e| {
            format!(
                "mail.dkim.key_file: cannot read {}: {e}",
                self.key_file.display()
            )
        })
    }

    /// The signing key in `text` (the key file's).
    pub fn signing_key(&self, text: &str) -> Result<lettre::message::dkim::DkimSigningKey, String> {
        use lettre::message::dkim::{DkimSigningAlgorithm, DkimSigningKey};
        let algorithm = match self.algorithm {
            DkimAlgorithm::Rsa => DkimSigningAlgorithm::Rsa,
            DkimAlgorithm::Ed25519 => DkimSigningAlgorithm::Ed25519,
        };
        // The key itself never appears in the error.
        DkimSigningKey::new(text.trim(), algorithm).map_err(|_| {
            format!(
                "mail.dkim.key_file: {} is not a {:?} private key lettre can sign with",
                self.key_file.display(),
                self.algorithm
            )
        })
    }
}

/// `[tracking]`: opens, clicks and one-click unsubscribes through pegabridge's own links.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingSettings {
    /// Where pegabridge's `/t/...` routes are reached from the internet, e.g.
    /// `https://mail.example.com`.
    pub base_url: String,
    /// Signs every link (HMAC-SHA256): a forged or altered link records nothing. At least 32
    /// characters; changing it breaks the links of mail already sent.
    pub secret: Secret,
}

impl TrackingSettings {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match url::Url::parse(&self.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => problems.push(format!(
                "tracking.base_url: `{}` is not an http(s) URL",
                self.base_url
            )),
        }
        if self.secret.expose().len() < 32 {
            problems.push("tracking.secret: at least 32 characters are required".into());
        }
        problems
    }
}
