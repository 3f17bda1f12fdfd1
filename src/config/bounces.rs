//! `[bounces]`: late bounces and complaints for mail sent through the relay. Every message
//! goes out with its own return path at `domain` (VERP), signed under `secret`, so a delivery
//! status notification or a feedback report mailed back finds its personal broadcast.

use super::secret::Secret;
use serde::Deserialize;

/// `[bounces]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BounceSettings {
    /// The domain of the return paths (its MX points at pegabridge, or at an MTA that pipes
    /// to `pegabridge bounces ingest`), e.g. `bounce.example.com`.
    pub domain: String,
    /// Signs every return path (HMAC-SHA256): a forged one records nothing. At least 32
    /// characters; changing it orphans the bounces of mail already sent.
    pub secret: Secret,
    /// The largest report read (bytes).
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// pegabridge's own SMTP listener for the bounce domain (the domain's MX points at it),
    /// e.g. `0.0.0.0:25`; without it, reports come through `bounces ingest`.
    pub listen: Option<String>,
    /// Connections to the listener at once; more are answered `421` and closed.
    #[serde(default = "default_connections")]
    pub max_connections: usize,
    /// How long the listener waits for each command or line of data.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// STARTTLS on the listener with this certificate chain and key (PEM).
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

fn default_connections() -> usize {
    100
}
fn default_timeout() -> u64 {
    60
}

fn default_max_message() -> usize {
    10 * 1024 * 1024
}

impl BounceSettings {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let d = self.domain.trim();
        if d.is_empty()
            || !d.contains('.')
            || d.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
        {
            problems.push(format!(
                "bounces.domain: `{}` is not a domain name",
                self.domain
            ));
        }
        if self.secret.expose().len() < 32 {
            problems.push("bounces.secret: at least 32 characters are required".into());
        }
        if self.max_message_bytes < 1024 {
            problems.push("bounces.max_message_bytes: at least 1024".into());
        }
        if let Some(listen) = &self.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                problems.push(format!(
                    "bounces.listen: `{listen}` is not an address and port such as 0.0.0.0:25"
                ));
            }
        }
        if self.max_connections == 0 || self.timeout_secs == 0 {
            problems.push("bounces.max_connections and timeout_secs: at least 1".into());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => {
                let cert =
                    super::tls::certificates(c).map_err(|e| format!("bounces.tls_cert: {e}"));
                let key = super::tls::private_key(k).map_err(|e| format!("bounces.tls_key: {e}"));
                match (cert, key) {
                    // The same check the listener's start makes: the key fits the chain.
                    (Ok((chain, _)), Ok(key)) => {
                        if let Err(e) = super::tls::server_config(&chain, &key, None) {
                            problems
                                .push(format!("bounces.tls_key: not usable with tls_cert: {e}"));
                        }
                    }
                    (cert, key) => problems.extend(cert.err().into_iter().chain(key.err())),
                }
            }
            (None, None) => {}
            _ => problems.push("bounces.tls_cert and tls_key go together".into()),
        }
        problems
    }

    /// Relative certificate paths are read from the configuration's folder.
    pub fn resolve(&mut self, base: &std::path::Path) {
        for p in [&mut self.tls_cert, &mut self.tls_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}
