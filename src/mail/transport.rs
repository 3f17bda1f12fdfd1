//! The SMTP relay: lettre's pooled transport, with at most `[mail] max_sessions` sends at
//! once (lettre's pool bounds idle connections, not concurrency).

use crate::config::mail::{MailSettings, SmtpTls};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Why the relay did not accept a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A 4xx answer: try again later.
    #[error("{code} {text}")]
    Transient { code: u16, text: String },
    /// A 5xx answer: the relay will not take it (for a recipient: a hard bounce).
    #[error("{code} {text}")]
    Permanent { code: u16, text: String },
    /// No answer: the relay is down, unreachable, or the TLS handshake failed.
    #[error("{0}")]
    Unreachable(String),
}

/// The relay of `[mail]` (cheap to share).
pub struct Relay {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    sessions: Semaphore,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(settings: &MailSettings) -> anyhow::Result<Self> {
        let builder = match settings.tls {
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host)?
            }
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host)?,
            SmtpTls::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            }
        };
        let mut builder = builder
            .port(settings.port)
            .timeout(Some(Duration::from_secs(settings.timeout_secs.max(1))))
            .pool_config(PoolConfig::new().max_size(settings.max_sessions.max(1) as u32));
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(Self {
            transport: builder.build(),
            sessions: Semaphore::new(settings.max_sessions.max(1)),
        })
    }

    /// Sends `message`; `Ok` once the relay accepted it (250).
    pub async fn send(&self, message: &Message) -> Result<(), Refusal> {
        let _session = self.sessions.acquire().await.expect("never closed");
        match self.transport.send(message.clone()).await {
            Ok(_) => Ok(()),
            Err(e) => Err(refusal(&e)),
        }
    }
}

fn refusal(e: &lettre::transport::smtp::Error) -> Refusal {
    let code = e.status().map(|c| {
        let text = c.to_string();
        text.parse::<u16>().unwrap_or(0)
    });
    // The whole cause chain, each text once (lettre repeats its source's text).
    let text = crate::delivery::client::safe_text(crate::quote::cut_chain(e).as_bytes());
    match code {
        Some(code) if e.is_transient() => Refusal::Transient { code, text },
        Some(code) if e.is_permanent() => Refusal::Permanent { code, text },
        _ => Refusal::Unreachable(text),
    }
}
