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
        problems
    }
}
