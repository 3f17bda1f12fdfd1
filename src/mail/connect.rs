//! The relay's connection: TCP with `TCP_NODELAY` (lettre's own connect leaves Nagle's
//! algorithm on, and the small final `.` of each message's data then waits for the relay's
//! delayed ACK, about 40 ms a message per session), TLS by rustls (from the first byte, or
//! after `STARTTLS`, which is run here), handed to lettre's session as an existing stream.

use super::transport::{Refusal, Stage};
use crate::config::mail::{MailSettings, SmtpTls};
use rustls::pki_types::ServerName;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How sessions with the relay are connected (made once).
#[derive(Clone)]
pub struct Connector {
    host: String,
    port: u16,
    mode: SmtpTls,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The TLS client of `[mail]`: Mozilla's roots and `[mail.tls] ca_file`'s, the client
/// certificate of `[mail.tls]`, if any.
fn client_config(settings: &MailSettings) -> anyhow::Result<rustls::ClientConfig> {
    crate::config::tls::client_config(&settings.tls.files, "mail.tls")
}

impl Connector {
    pub fn new(settings: &MailSettings) -> anyhow::Result<Self> {
        let tls = match settings.tls.mode {
            SmtpTls::None => None,
            SmtpTls::Starttls | SmtpTls::Tls => {
                let name = ServerName::try_from(settings.host.clone())
                    .map_err(|e| anyhow::anyhow!("mail.host: not a name TLS can check: {e}"))?;
                let connector =
                    tokio_rustls::TlsConnector::from(Arc::new(client_config(settings)?));
                Some((connector, name))
            }
        };
        Ok(Self {
            host: settings.host.clone(),
            port: settings.port,
            mode: settings.tls.mode,
            tls,
            timeout: Duration::from_secs(settings.timeout_secs.max(1)),
        })
    }

    /// A connected stream, encrypted as configured (after `STARTTLS`, lettre is given a
    /// greeting to start from, as after a new connection: it then says EHLO again, as RFC 3207
    /// requires).
    pub async fn connect(&self, hello: &str) -> Result<RelayStream, Refusal> {
        let refused = |stage, code, text: String| Refusal::Session { stage, code, text };
        let addr = (self.host.as_str(), self.port);
        let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(refused(Stage::Connect, None, format!("connection: {e}"))),
            Err(_) => return Err(self.late(Stage::Connect)),
        };
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            return Ok(RelayStream::plain(tcp));
        };
        let mut tcp = tcp;
        if self.mode == SmtpTls::Starttls {
            self.starttls(&mut tcp, hello).await?;
        }
        let handshake = connector.connect(name.clone(), tcp);
        let stage = if self.mode == SmtpTls::Starttls {
            Stage::Starttls
        } else {
            Stage::Connect
        };
        let tls = match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(refused(stage, None, format!("TLS: {e}"))),
            Err(_) => return Err(self.late(stage)),
        };
        let greeting = (self.mode == SmtpTls::Starttls).then(|| b"220 TLS started\r\n".to_vec());
        Ok(RelayStream {
            inner: Inner::Tls(Box::new(tls)),
            greeting: greeting.unwrap_or_default(),
            read: 0,
        })
    }

    fn late(&self, stage: Stage) -> Refusal {
        Refusal::Session {
            stage,
            code: None,
            text: format!(
                "no answer within {} s ([mail] timeout_secs)",
                self.timeout.as_secs()
            ),
        }
    }

    /// The greeting, EHLO and `STARTTLS`, in clear.
    async fn starttls(&self, tcp: &mut TcpStream, hello: &str) -> Result<(), Refusal> {
        let step = async {
            let (code, text) = reply(tcp).await?;
            if code != 220 {
                return Err((Stage::Connect, Some(code), text));
            }
            tcp.write_all(format!("EHLO {hello}\r\n").as_bytes())
                .await
                .map_err(|e| (Stage::Connect, None, e.to_string()))?;
            let (code, text) = reply(tcp).await?;
            if code != 250 {
                return Err((Stage::Connect, Some(code), text));
            }
            if !text.to_ascii_uppercase().contains("STARTTLS") {
                let why = "the relay does not offer STARTTLS ([mail] tls = \"starttls\")";
                return Err((Stage::Starttls, None, why.into()));
            }
            tcp.write_all(b"STARTTLS\r\n")
                .await
                .map_err(|e| (Stage::Starttls, None, e.to_string()))?;
            let (code, text) = reply(tcp)
                .await
                .map_err(|(_, c, t)| (Stage::Starttls, c, t))?;
            if code != 220 {
                return Err((Stage::Starttls, Some(code), text));
            }
            Ok(())
        };
        match tokio::time::timeout(self.timeout, step).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((stage, code, text))) => Err(Refusal::Session { stage, code, text }),
            Err(_) => Err(self.late(Stage::Starttls)),
        }
    }
}

/// The longest reply read in clear (a greeting or EHLO's extensions).
const MAX_REPLY: usize = 16 * 1024;

/// One SMTP reply, read exactly (nothing after it: the TLS handshake follows): its code and
/// its text, lines joined.
async fn reply(tcp: &mut TcpStream) -> Result<(u16, String), (Stage, Option<u16>, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tcp
            .read(&mut byte)
            .await
            .map_err(|e| (Stage::Connect, None, e.to_string()))?;
        if n == 0 {
            return Err((
                Stage::Connect,
                None,
                "the relay closed the connection".into(),
            ));
        }
        buf.push(byte[0]);
        if buf.len() > MAX_REPLY {
            return Err((Stage::Connect, None, "an overlong reply".into()));
        }
        if !buf.ends_with(b"\r\n") {
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        let last = text.trim_end().rsplit("\r\n").next().unwrap_or_default();
        if last.len() >= 3 && last.as_bytes().get(3) != Some(&b'-') {
            let code = last[..3].parse().unwrap_or(0);
            let joined = crate::delivery::client::safe_text(text.trim_end().as_bytes());
            return Ok((code, joined));
        }
    }
}

#[derive(Debug)]
enum Inner {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection to the relay as lettre reads it: after `STARTTLS`, a greeting first.
#[derive(Debug)]
pub struct RelayStream {
    inner: Inner,
    greeting: Vec<u8>,
    read: usize,
}

impl RelayStream {
    fn plain(tcp: TcpStream) -> Self {
        Self {
            inner: Inner::Plain(tcp),
            greeting: Vec::new(),
            read: 0,
        }
    }
}

impl AsyncRead for RelayStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read < self.greeting.len() {
            let n = buf.remaining().min(self.greeting.len() - self.read);
            let start = self.read;
            buf.put_slice(&self.greeting[start..start + n]);
            self.read += n;
            return Poll::Ready(Ok(()));
        }
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RelayStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, data),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl lettre::transport::smtp::client::AsyncTokioStream for RelayStream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match &self.inner {
            Inner::Plain(s) => s.peer_addr(),
            Inner::Tls(s) => s.get_ref().0.peer_addr(),
        }
    }
}
