//! The SMTP relay, command by command (lettre's connection), so every answer is known by the
//! stage it came at: only a refusal at `RCPT` is about the recipient; a failure of the
//! connection, TLS, `AUTH`, `MAIL FROM` or `DATA` is the sender's (a rotated password must not
//! turn every customer into a hard bounce). Every stage is bounded by `[mail] timeout_secs`; at
//! most `max_sessions` sends at once; sessions are kept for the next message (`RSET` only after
//! a refused transaction). When the relay offers `PIPELINING` (RFC 2920), `MAIL FROM`, every
//! `RCPT TO` and `DATA` go in one write and their answers are read in order: two round trips
//! a message instead of four.

use crate::config::mail::{MailSettings, SmtpTls};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::ClientId;
use lettre::Message;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};

/// Where in the SMTP session an answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Connecting, the greeting, EHLO (and implicit TLS).
    Connect,
    Starttls,
    Auth,
    MailFrom,
    Rcpt,
    Data,
    /// The end of the message's data (the relay's final answer).
    Message,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Starttls => "starttls",
            Stage::Auth => "auth",
            Stage::MailFrom => "mail_from",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Message => "message",
        }
    }
}

/// Why the relay did not accept a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An answer at `RCPT`: about the recipient (a 5xx with an address status is a bounce).
    #[error("{code} {text}")]
    Recipient { code: u16, text: String },
    /// A failure of the session or the message: the sender's or the relay's problem, never
    /// the recipient's. `code` is the relay's answer, if it gave one.
    #[error("{} at {}", text, stage.as_str())]
    Session {
        stage: Stage,
        code: Option<u16>,
        text: String,
    },
}

/// The relay of `[mail]` (cheap to share).
pub struct Relay {
    host: String,
    port: u16,
    tls: SmtpTls,
    /// TCP with `TCP_NODELAY`, TLS as configured (made once).
    connector: super::connect::Connector,
    credentials: Option<Credentials>,
    timeout: Duration,
    hello: ClientId,
    sessions: Semaphore,
    /// Sessions kept for the next message.
    idle: Mutex<Vec<Session>>,
    max_idle: usize,
}

/// An open session, and what its relay offers.
struct Session {
    conn: AsyncSmtpConnection,
    /// The relay announced `PIPELINING` in its answer to `EHLO`.
    pipelining: bool,
    /// When it was last used (a session idle for longer than [`IDLE_CHECK`] is asked `NOOP`
    /// before it is used again).
    since: std::time::Instant,
}

/// A kept session idle for longer than this is checked with `NOOP` before its next message
/// (a relay may have closed it); one used more recently is used straight away.
const IDLE_CHECK: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// A failure at `stage` from lettre's error.
fn failed(stage: Stage, e: &lettre::transport::smtp::Error) -> Refusal {
    let code = e.status().and_then(|c| c.to_string().parse::<u16>().ok());
    // The whole cause chain, each text once (lettre repeats its source's text).
    let text = crate::delivery::client::safe_text(crate::quote::cut_chain(e).as_bytes());
    match (stage, code) {
        (Stage::Rcpt, Some(code)) => Refusal::Recipient { code, text },
        _ => Refusal::Session { stage, code, text },
    }
}

impl Relay {
    pub fn new(settings: &MailSettings) -> anyhow::Result<Self> {
        let credentials = match (&settings.username, &settings.password) {
            (Some(user), Some(password)) => {
                Some(Credentials::new(user.clone(), password.expose().to_owned()))
            }
            _ => None,
        };
        let sessions = settings.max_sessions.max(1);
        Ok(Self {
            host: settings.host.clone(),
            port: settings.port,
            tls: settings.tls.mode,
            connector: super::connect::Connector::new(settings)?,
            credentials,
            timeout: Duration::from_secs(settings.timeout_secs.max(1)),
            hello: ClientId::default(),
            sessions: Semaphore::new(sessions),
            idle: Mutex::new(Vec::new()),
            max_idle: sessions,
        })
    }

    /// Runs `step` within the timeout; a late or failed step is a refusal at `stage`.
    async fn within<T>(
        &self,
        stage: Stage,
        step: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, Refusal> {
        match tokio::time::timeout(self.timeout, step).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(failed(stage, &e)),
            Err(_) => Err(Refusal::Session {
                stage,
                code: None,
                text: format!(
                    "no answer within {} s ([mail] timeout_secs)",
                    self.timeout.as_secs()
                ),
            }),
        }
    }

    /// A new session: connected, greeted, encrypted as configured, authenticated.
    async fn open(&self) -> Result<AsyncSmtpConnection, Refusal> {
        let hello = self.hello.to_string();
        let stream = self.connector.connect(&hello).await?;
        let stage = match self.tls {
            SmtpTls::Starttls => Stage::Starttls,
            _ => Stage::Connect,
        };
        let connect = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello);
        let mut conn = self.within(stage, connect).await?;
        if let Some(credentials) = &self.credentials {
            let mechanisms = [Mechanism::Plain, Mechanism::Login];
            self.within(Stage::Auth, conn.auth(&mechanisms, credentials))
                .await?;
        }
        Ok(conn)
    }

    /// A new session and whether its relay offers `PIPELINING` (lettre keeps only the
    /// extensions it uses, so `EHLO` is asked again, once per session).
    async fn open_session(&self) -> Result<Session, Refusal> {
        let mut conn = self.open().await?;
        let hello = self
            .within(Stage::Connect, conn.command(Ehlo::new(self.hello.clone())))
            .await?;
        let pipelining = hello.message().any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
        });
        Ok(Session {
            conn,
            pipelining,
            since: std::time::Instant::now(),
        })
    }

    /// A kept session that still answers, or a new one.
    async fn session(&self) -> Result<Session, Refusal> {
        loop {
            let kept = self.idle.lock().await.pop();
            let Some(mut session) = kept else {
                return self.open_session().await;
            };
            if session.since.elapsed() < IDLE_CHECK {
                return Ok(session);
            }
            let alive = tokio::time::timeout(self.timeout, session.conn.test_connected()).await;
            if alive.unwrap_or(false) {
                return Ok(session);
            }
        }
    }

    /// Keeps a session whose last command was answered, for the next message; after a
    /// refused transaction, `RSET` first.
    async fn keep(&self, mut session: Session, reset: bool) {
        if reset {
            let answered = self.within(Stage::Data, session.conn.command(Rset)).await;
            if answered.is_err() {
                return;
            }
        }
        if !session.conn.has_broken() {
            session.since = std::time::Instant::now();
            let mut idle = self.idle.lock().await;
            if idle.len() < self.max_idle {
                idle.push(session);
            }
        }
    }

    /// Opens a session as sending does (connect, greeting, EHLO, STARTTLS, AUTH) and quits
    /// without sending (`config check --connect`); says what was done.
    pub async fn probe(&self) -> Result<String, Refusal> {
        let mut conn = self.open().await?;
        let _ = tokio::time::timeout(self.timeout, conn.quit()).await;
        let tls = match self.tls {
            SmtpTls::Starttls => "STARTTLS",
            SmtpTls::Tls => "TLS",
            SmtpTls::None => "no TLS",
        };
        let auth = if self.credentials.is_some() {
            ", authenticated"
        } else {
            ""
        };
        Ok(format!("{}:{} ({tls}{auth})", self.host, self.port))
    }

    /// Sends `message`; `Ok` once the relay accepted it (250).
    pub async fn send(&self, message: &Message) -> Result<(), Refusal> {
        let _session = self.sessions.acquire().await.expect("never closed");
        let mut session = self.session().await?;
        let (result, in_step) = if session.pipelining {
            self.pipelined(&mut session.conn, message).await
        } else {
            (self.transaction(&mut session.conn, message).await, true)
        };
        match &result {
            // The relay answered: the session is still good.
            Ok(()) => self.keep(session, false).await,
            Err(Refusal::Recipient { .. }) if in_step => self.keep(session, true).await,
            Err(_) => session.conn.abort().await,
        }
        result
    }

    /// The message's options for `MAIL FROM`, and its text.
    fn prepared(
        message: &Message,
    ) -> (
        Vec<lettre::transport::smtp::extension::MailParameter>,
        Vec<u8>,
    ) {
        let body = message.formatted();
        let mut options = Vec::new();
        if !body.is_ascii() {
            options.push(lettre::transport::smtp::extension::MailParameter::Body(
                lettre::transport::smtp::extension::MailBodyParameter::EightBitMime,
            ));
        }
        (options, body)
    }

    /// `MAIL FROM`, `RCPT TO`, `DATA` and the message, each known by its stage.
    async fn transaction(
        &self,
        conn: &mut AsyncSmtpConnection,
        message: &Message,
    ) -> Result<(), Refusal> {
        let envelope: &Envelope = message.envelope();
        let (options, body) = Self::prepared(message);
        self.within(
            Stage::MailFrom,
            conn.command(Mail::new(envelope.from().cloned(), options)),
        )
        .await?;
        for to in envelope.to() {
            self.within(Stage::Rcpt, conn.command(Rcpt::new(to.clone(), vec![])))
                .await?;
        }
        self.within(Stage::Data, conn.command(Data)).await?;
        self.within(Stage::Message, conn.message(&body)).await?;
        Ok(())
    }

    /// The same with `PIPELINING`: `MAIL FROM`, every `RCPT TO` and `DATA` written at once,
    /// then their answers read in order, each known by its stage; then the message. Also says
    /// whether the session is still in step (every answer of the group was read and no data
    /// is expected): only then may it be kept.
    async fn pipelined(
        &self,
        conn: &mut AsyncSmtpConnection,
        message: &Message,
    ) -> (Result<(), Refusal>, bool) {
        let envelope: &Envelope = message.envelope();
        let (options, body) = Self::prepared(message);
        let mut group = Mail::new(envelope.from().cloned(), options).to_string();
        for to in envelope.to() {
            group.push_str(&Rcpt::new(to.clone(), vec![]).to_string());
        }
        group.push_str(&Data.to_string());
        // lettre writes the group and reads the first answer (`MAIL FROM`'s).
        if let Err(refusal) = self.within(Stage::MailFrom, conn.command(group)).await {
            return (Err(refusal), false);
        }
        let mut refused = None;
        for _ in envelope.to() {
            match self.within(Stage::Rcpt, conn.read_response()).await {
                Ok(_) => {}
                Err(r @ Refusal::Recipient { .. }) => {
                    refused.get_or_insert(r);
                }
                Err(r) => return (Err(r), false),
            }
        }
        let data = self.within(Stage::Data, conn.read_response()).await;
        match (refused, data) {
            (None, Ok(_)) => {}
            // The relay refused the recipient and so the data (no valid recipient): in step.
            (Some(recipient), Err(Refusal::Session { code: Some(_), .. })) => {
                return (Err(recipient), true);
            }
            // It waits for data it will not get (another recipient was taken): not in step.
            (Some(recipient), _) => return (Err(recipient), false),
            (None, Err(refusal)) => return (Err(refusal), false),
        }
        let sent = self.within(Stage::Message, conn.message(&body)).await;
        (sent.map(drop), true)
    }
}
