//! Late bounces and complaints (`[bounces]`): each message is sent with its own return path
//! (VERP) `b-BROADCAST-CUSTOMER-TAG@domain`, the tag an HMAC-SHA256 of the rest under
//! `[bounces] secret`; a delivery status notification (RFC 3464) or a feedback report (RFC
//! 5965) mailed back to it is parsed ([`report`]) and recorded through the intake as a
//! `bounces` or `complaints` activity of that personal broadcast ([`ingest`]).

pub mod ingest;
pub mod listener;
pub mod report;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Hex digits of the tag (80 bits).
const TAG_HEX: usize = 20;

/// Makes and reads the return paths of `[bounces]` (the secret stays out of `Debug`).
#[derive(Clone)]
pub struct ReturnPaths {
    key: Vec<u8>,
    domain: String,
}

impl std::fmt::Debug for ReturnPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReturnPaths")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ReturnPaths {
    pub fn new(settings: &crate::config::bounces::BounceSettings) -> Self {
        Self {
            key: settings.secret.expose().as_bytes().to_vec(),
            domain: settings.domain.trim().to_ascii_lowercase(),
        }
    }

    fn tag(&self, local: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(local.as_bytes());
        let bytes = mac.finalize().into_bytes();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()[..TAG_HEX].to_owned()
    }

    /// The return path of personal broadcast (`broadcast_id`, `customer_id`).
    pub fn address(&self, broadcast_id: i64, customer_id: i64) -> String {
        let local = format!("b-{broadcast_id}-{customer_id}");
        format!("{local}-{}@{}", self.tag(&local), self.domain)
    }

    /// Whether `address` is at the bounce domain (any address there takes feedback reports).
    pub fn is_ours(&self, address: &str) -> bool {
        let address = bare(address);
        address
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&self.domain))
    }

    /// The personal broadcast of a return path of ours, if `address` is one, unaltered.
    pub fn read(&self, address: &str) -> Option<(i64, i64)> {
        let address = bare(address).to_ascii_lowercase();
        let (local, domain) = address.rsplit_once('@')?;
        if domain != self.domain {
            return None;
        }
        let mut parts = local.split('-');
        let (b, broadcast, customer, tag) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if b != "b" || parts.next().is_some() || tag.len() != TAG_HEX {
            return None;
        }
        let signed = format!("b-{broadcast}-{customer}");
        // Constant time.
        let expected = self.tag(&signed);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            tag.as_bytes(),
        )) {
            return None;
        }
        Some((broadcast.parse().ok()?, customer.parse().ok()?))
    }
}

/// An address without its angle brackets, `rfc822;` type or spaces.
fn bare(address: &str) -> &str {
    let a = address.trim();
    let a = match a.split_once(';') {
        Some((kind, rest)) if kind.trim().eq_ignore_ascii_case("rfc822") => rest.trim(),
        _ => a,
    };
    a.trim_start_matches('<').trim_end_matches('>').trim()
}

#[cfg(test)]
mod tests {
    use super::ReturnPaths;
    use crate::config::bounces::BounceSettings;
    use crate::config::secret::Secret;

    fn paths(secret: &str) -> ReturnPaths {
        ReturnPaths::new(&BounceSettings {
            domain: "Bounce.Example.com".into(),
            secret: Secret::new(secret),
            max_message_bytes: 1 << 20,
            listen: None,
            max_connections: 1,
            timeout_secs: 1,
            tls_cert: None,
            tls_key: None,
        })
    }

    #[test]
    fn a_return_path_names_its_personal_broadcast_and_a_forged_one_nothing() {
        let p = paths("a bounce secret of more than 32 characters");
        let a = p.address(12, 345);
        assert!(
            a.starts_with("b-12-345-") && a.ends_with("@bounce.example.com"),
            "{a}"
        );
        assert!(a.split('@').next().unwrap().len() <= 64);
        assert_eq!(p.read(&a), Some((12, 345)));
        assert_eq!(
            p.read(&a.to_uppercase()),
            Some((12, 345)),
            "case folded by a relay"
        );
        assert_eq!(p.read(&format!("rfc822; <{a}>")), Some((12, 345)));
        assert_eq!(p.read(&a.replace("b-12-345", "b-12-346")), None, "altered");
        assert_eq!(
            p.read(&a.replace("bounce.example.com", "other.example")),
            None
        );
        assert_eq!(
            paths("another secret, also more than 32 chars").read(&a),
            None
        );
        assert!(p.is_ours("fbl@bounce.example.com"));
        assert!(!p.is_ours("fbl@example.com"));
    }
}
