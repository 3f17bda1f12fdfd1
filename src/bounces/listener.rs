//! pegabridge's own SMTP listener for the bounce domain (`[bounces] listen`): it takes mail
//! only for addresses at that domain (never a relay), refuses a forged or unknown return path
//! at `RCPT`, bounds connections (`max_connections`, more are answered `421`), each command
//! and line of data (`timeout_secs`), command lines (512 bytes) and messages
//! (`max_message_bytes`, announced with `SIZE`), offers STARTTLS with a configured
//! certificate, and records each message through [`Ingest`] before answering `250` (a store
//! failure answers `451`: the sender tries again).

use super::ingest::{Ingest, Ingested};
use super::ReturnPaths;
use crate::config::bounces::BounceSettings;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Recipients of one message, at most.
const MAX_RECIPIENTS: usize = 100;
/// The longest command line (RFC 5321: 512 with its CRLF).
const MAX_COMMAND: usize = 512;
/// The longest line of data (RFC 5321: 1000 with its CRLF; longer ones are taken, bounded).
const MAX_LINE: usize = 64 * 1024;

/// `pegabridge_bounce_reports_total{kind, outcome}` in `registry` (`kind` `smtp` for what
/// was refused before any message).
fn reports_counter(registry: &prometheus::Registry) -> prometheus::IntCounterVec {
    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "bounce_reports_total",
            "Messages to the bounce domain's listener by kind (dsn, feedback, auto_reply, unreadable, smtp) and outcome (recorded, duplicate, unmatched, ignored, refused)",
        ),
        &["kind", "outcome"],
    )
    .expect("valid metric");
    crate::delivery::metrics::register(registry, counter)
}

/// The listener's settings and parts.
pub struct Listener {
    paths: ReturnPaths,
    ingest: Ingest,
    max_message: usize,
    timeout: Duration,
    connections: Arc<tokio::sync::Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    reports: prometheus::IntCounterVec,
    hostname: String,
}

/// Why a session ended early.
enum End {
    /// The client asked for STARTTLS: go on over TLS.
    Starttls,
    /// Closed (QUIT, a timeout, an error).
    Closed,
}

impl Listener {
    pub fn new(
        settings: &BounceSettings,
        ingest: Ingest,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => {
                let config = crate::config::tls::server_config(
                    &std::fs::read(cert)?,
                    &std::fs::read(key)?,
                    None,
                )?;
                Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
            }
            _ => None,
        };
        Ok(Self {
            paths: ReturnPaths::new(settings),
            ingest,
            max_message: settings.max_message_bytes,
            timeout: Duration::from_secs(settings.timeout_secs.max(1)),
            connections: Arc::new(tokio::sync::Semaphore::new(settings.max_connections.max(1))),
            tls,
            reports: reports_counter(registry),
            hostname: settings.domain.clone(),
        })
    }

    /// Serves `listener` until `stop`.
    pub async fn serve(
        self: Arc<Self>,
        listener: &TcpListener,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((mut tcp, _)) = accepted else {
                continue;
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                self.reports.with_label_values(&["smtp", "refused"]).inc();
                let timeout = self.timeout;
                tokio::spawn(async move {
                    let busy = tcp.write_all(b"421 4.7.0 Too many connections, try later\r\n");
                    let _ = tokio::time::timeout(timeout, busy).await;
                });
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                let mut conn = BufReader::new(tcp);
                if !matches!(me.session(&mut conn, false).await, End::Starttls) {
                    return;
                }
                let Some(acceptor) = &me.tls else { return };
                // Commands sent ahead of the handshake are not taken (RFC 3207).
                if !conn.buffer().is_empty() {
                    return;
                }
                let handshake = acceptor.accept(conn.into_inner());
                let Ok(Ok(tls)) = tokio::time::timeout(me.timeout, handshake).await else {
                    return;
                };
                let mut conn = BufReader::new(tls);
                me.session(&mut conn, true).await;
            });
        }
    }

    /// Writes `line` (with its CRLF), within the timeout.
    async fn say<S: AsyncWrite + Unpin>(&self, conn: &mut S, line: &str) -> bool {
        let write = async {
            conn.write_all(line.as_bytes()).await?;
            conn.write_all(b"\r\n").await?;
            conn.flush().await
        };
        matches!(tokio::time::timeout(self.timeout, write).await, Ok(Ok(())))
    }

    /// One line of at most `max` bytes (longer: `None` after reading up to `max`), within the
    /// timeout; `Err` when the client is gone or too slow.
    async fn line<S: AsyncRead + Unpin>(
        &self,
        conn: &mut BufReader<S>,
        max: usize,
    ) -> Result<Option<Vec<u8>>, ()> {
        let mut line = Vec::new();
        let mut bounded = (&mut *conn).take(max as u64);
        let read = bounded.read_until(b'\n', &mut line);
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => Err(()),
            Ok(Ok(_)) if line.ends_with(b"\n") => Ok(Some(line)),
            Ok(Ok(_)) => Ok(None),
        }
    }

    /// One SMTP session on `conn`.
    async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut BufReader<S>,
        tls: bool,
    ) -> End {
        let host = &self.hostname;
        if !tls
            && !self
                .say(conn, &format!("220 {host} ESMTP pegabridge"))
                .await
        {
            return End::Closed;
        }
        let mut from: Option<String> = None;
        let mut rcpts: Vec<String> = Vec::new();
        loop {
            let line = match self.line(conn, MAX_COMMAND).await {
                Err(()) => {
                    let _ = self
                        .say(conn, "421 4.4.2 Timeout or connection error")
                        .await;
                    return End::Closed;
                }
                Ok(None) => {
                    if !self.say(conn, "500 5.5.2 Line too long").await {
                        return End::Closed;
                    }
                    continue;
                }
                Ok(Some(line)) => String::from_utf8_lossy(&line).trim_end().to_owned(),
            };
            let upper = line.to_ascii_uppercase();
            let verb = upper
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            let answer: String = match verb.as_str() {
                "EHLO" | "HELO" => {
                    from = None;
                    rcpts.clear();
                    self.hello(&verb, tls)
                }
                "STARTTLS" if self.tls.is_some() && !tls => {
                    if !self.say(conn, "220 2.0.0 Ready to start TLS").await {
                        return End::Closed;
                    }
                    return End::Starttls;
                }
                "MAIL" | "RCPT" => self.envelope(&verb, &line, &mut from, &mut rcpts),
                "DATA" if rcpts.is_empty() => "503 5.5.1 RCPT first".into(),
                "DATA" => {
                    if !self.say(conn, "354 End data with <CR><LF>.<CR><LF>").await {
                        return End::Closed;
                    }
                    let answer = match self.data(conn).await {
                        Err(()) => return End::Closed,
                        Ok(None) => format!(
                            "552 5.3.4 Message too big (at most {} bytes)",
                            self.max_message
                        ),
                        Ok(Some(raw)) => self.take(&raw, &rcpts).await,
                    };
                    from = None;
                    rcpts.clear();
                    answer
                }
                "RSET" => {
                    from = None;
                    rcpts.clear();
                    "250 2.0.0 Ok".into()
                }
                "NOOP" => "250 2.0.0 Ok".into(),
                "QUIT" => {
                    let _ = self.say(conn, "221 2.0.0 Bye").await;
                    return End::Closed;
                }
                _ => "502 5.5.2 Command not implemented".into(),
            };
            if !self.say(conn, &answer).await {
                return End::Closed;
            }
        }
    }

    /// The answer to EHLO or HELO.
    fn hello(&self, verb: &str, tls: bool) -> String {
        let host = &self.hostname;
        if verb == "HELO" {
            return format!("250 {host}");
        }
        let mut lines = vec![
            format!("250-{host}"),
            format!("250-SIZE {}", self.max_message),
            "250-8BITMIME".into(),
        ];
        if self.tls.is_some() && !tls {
            lines.push("250-STARTTLS".into());
        }
        lines.push("250 ENHANCEDSTATUSCODES".into());
        lines.join("\r\n")
    }

    /// `MAIL FROM` and `RCPT TO`.
    fn envelope(
        &self,
        verb: &str,
        line: &str,
        from: &mut Option<String>,
        rcpts: &mut Vec<String>,
    ) -> String {
        if verb == "MAIL" {
            let upper = line.to_ascii_uppercase();
            return match address_of(line, "FROM:") {
                None => "501 5.5.4 Syntax: MAIL FROM:<address>".into(),
                Some(_) if size_of(&upper).is_some_and(|n| n > self.max_message) => format!(
                    "552 5.3.4 Message too big (at most {} bytes)",
                    self.max_message
                ),
                Some(a) => {
                    *from = Some(a);
                    rcpts.clear();
                    "250 2.1.0 Ok".into()
                }
            };
        }
        match (address_of(line, "TO:"), &from) {
            (_, None) => "503 5.5.1 MAIL first".into(),
            (None, _) => "501 5.5.4 Syntax: RCPT TO:<address>".into(),
            (Some(_), _) if rcpts.len() >= MAX_RECIPIENTS => "452 4.5.3 Too many recipients".into(),
            (Some(a), _) => self.recipient(a, rcpts),
        }
    }

    /// `RCPT TO`: an address at the bounce domain; a return path must be one of ours.
    fn recipient(&self, address: String, rcpts: &mut Vec<String>) -> String {
        if !self.paths.is_ours(&address) {
            self.reports.with_label_values(&["smtp", "refused"]).inc();
            return "550 5.7.1 Relaying denied: only the bounce domain's mail is taken".into();
        }
        let local = address
            .split('@')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if local.starts_with("b-") && self.paths.read(&address).is_none() {
            self.reports.with_label_values(&["smtp", "refused"]).inc();
            return "550 5.1.1 No such return path".into();
        }
        rcpts.push(address);
        "250 2.1.5 Ok".into()
    }

    /// The message's data, dot-unstuffed, or `None` when it grew beyond the bound (read to
    /// its end and dropped).
    async fn data<S: AsyncRead + Unpin>(
        &self,
        conn: &mut BufReader<S>,
    ) -> Result<Option<Vec<u8>>, ()> {
        let mut raw = Vec::new();
        let mut over = false;
        loop {
            let Some(line) = self.line(conn, MAX_LINE).await? else {
                over = true;
                continue;
            };
            if line == b".\r\n" || line == b".\n" {
                return Ok((!over).then_some(raw));
            }
            let line = line.strip_prefix(b".").unwrap_or(&line);
            if raw.len() + line.len() > self.max_message {
                over = true;
                raw.clear();
            }
            if !over {
                raw.extend_from_slice(line);
            }
        }
    }

    /// Records the message; the answer to its data.
    async fn take(&self, raw: &[u8], rcpts: &[String]) -> String {
        match self.ingest.ingest(raw, rcpts).await {
            Ok((kind, outcome)) => {
                self.reports
                    .with_label_values(&[kind, outcome.kind()])
                    .inc();
                match outcome {
                    Ingested::Recorded { .. } => "250 2.0.0 Recorded".into(),
                    _ => "250 2.0.0 Taken".into(),
                }
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "a report could not be recorded: the sender is asked to try again"
                );
                "451 4.3.0 Try again later".into()
            }
        }
    }
}

/// The address of `MAIL FROM:<a>` or `RCPT TO:<a>` (`<>` is the null sender: empty).
fn address_of(line: &str, keyword: &str) -> Option<String> {
    let rest = line.get(5..)?.trim_start();
    if !rest.to_ascii_uppercase().starts_with(keyword) {
        return None;
    }
    let rest = rest[keyword.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].trim().to_owned())
}

/// `SIZE=n` of `MAIL FROM`.
fn size_of(upper: &str) -> Option<usize> {
    upper
        .split_whitespace()
        .find_map(|p| p.strip_prefix("SIZE="))
        .and_then(|n| n.parse().ok())
}
