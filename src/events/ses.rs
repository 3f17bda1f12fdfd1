//! Amazon SES events through SNS: SNS posts JSON (as `text/plain`) signed with RSA, signature
//! version 1 (SHA-1) or 2 (SHA-256), over its canonical fields; the signing certificate is
//! pinned (`certificate_file`) or fetched, only from `https://sns.<region>.amazonaws.com/...pem`.
//! Only the configured topics are taken, and a `SubscriptionConfirmation` is confirmed for
//! those only. The SES event is a JSON string in `Message`; sender metadata is the message
//! tag `pegabridge` (`mail.tags`).

use super::{to, Malformed, Refused, Translated};
use crate::config::events::{certificate_key, SesSettings as Settings};
use crate::quote::cut;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;

/// Whether `url` is an SNS endpoint of AWS (`https://sns.<region>.amazonaws.com/...`).
pub fn aws_sns_url(url: &str, path_suffix: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    let host = u.host_str().unwrap_or("");
    let region_ok = host
        .strip_prefix("sns.")
        .and_then(|h| {
            h.strip_suffix(".amazonaws.com")
                .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
        })
        .is_some_and(|r| {
            !r.is_empty()
                && r.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    u.scheme() == "https" && u.port().is_none() && region_ok && u.path().ends_with(path_suffix)
}

/// The canonical string SNS signs.
pub fn canonical(m: &Value) -> Option<String> {
    let kind = m["Type"].as_str()?;
    let keys: &[&str] = match kind {
        "Notification" => &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ],
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ],
        _ => return None,
    };
    let mut out = String::new();
    for k in keys {
        match m[*k].as_str() {
            Some(v) => {
                out.push_str(k);
                out.push('\n');
                out.push_str(v);
                out.push('\n');
            }
            // Only Subject may be absent.
            None if *k == "Subject" => {}
            None => return None,
        }
    }
    Some(out)
}

/// Verifies an SNS message's signature with `key`.
pub fn verify_signature(m: &Value, key: &RsaPublicKey) -> Result<(), Refused> {
    let text = canonical(m).ok_or_else(|| Refused("not a complete SNS message".into()))?;
    use base64::Engine;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(m["Signature"].as_str().unwrap_or(""))
        .map_err(|_| Refused("the signature is not base64".into()))?;
    let sig =
        Signature::try_from(sig.as_slice()).map_err(|_| Refused("not an RSA signature".into()))?;
    let ok = match m["SignatureVersion"].as_str() {
        Some("1") => VerifyingKey::<sha1::Sha1>::new(key.clone()).verify(text.as_bytes(), &sig),
        Some("2") => VerifyingKey::<sha2::Sha256>::new(key.clone()).verify(text.as_bytes(), &sig),
        _ => return Err(Refused("unknown SignatureVersion".into())),
    };
    ok.map_err(|_| Refused("the signature does not match".into()))
}

/// Signing certificates fetched, by URL (bounded).
#[derive(Debug, Default)]
pub struct Certificates {
    /// The key of `certificate_file`, read once at start-up.
    pinned: Option<RsaPublicKey>,
    /// Each URL's certificate, or why fetching it failed and when (bounded).
    fetched: Mutex<HashMap<String, Fetched>>,
    /// Held while a certificate is fetched: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// Fetches attempted (for tests and operators).
    attempts: std::sync::atomic::AtomicUsize,
}

/// A fetched certificate's key, or a failure remembered for [`RETRY_FAILED`].
#[derive(Debug, Clone)]
enum Fetched {
    Key(RsaPublicKey),
    Failed(String, std::time::Instant),
}

/// How long a failed fetch is remembered: the URL is not fetched again before.
const RETRY_FAILED: std::time::Duration = std::time::Duration::from_secs(60);

/// Most certificate URLs remembered.
const MAX_REMEMBERED: usize = 64;

impl Certificates {
    /// The certificates for `settings`: its pinned one read and parsed now.
    pub fn new(settings: Option<&Settings>) -> Result<Self, String> {
        let pinned = match settings {
            Some(s) => crate::config::events::pinned_certificate(s)?,
            None => None,
        };
        Ok(Self {
            pinned,
            ..Self::default()
        })
    }

    /// How many fetches were attempted.
    pub fn attempts(&self) -> usize {
        self.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What is remembered of `url`, if anything still counts.
    fn remembered(&self, url: &str) -> Option<Result<RsaPublicKey, Refused>> {
        let fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        match fetched.get(url)? {
            Fetched::Key(k) => Some(Ok(k.clone())),
            Fetched::Failed(why, at) if at.elapsed() < RETRY_FAILED => Some(Err(Refused(format!(
                "fetching the signing certificate failed ({why}); not tried again for {} s",
                RETRY_FAILED.as_secs()
            )))),
            Fetched::Failed(..) => None,
        }
    }

    /// The key to check `m` with: the pinned one, or the certificate at its
    /// `SigningCertURL` (an AWS SNS URL only), fetched once; a failed fetch is remembered, so
    /// a URL is fetched at most once per [`RETRY_FAILED`], one fetch at a time.
    pub async fn key(&self, m: &Value) -> Result<RsaPublicKey, Refused> {
        let url = m["SigningCertURL"].as_str().unwrap_or("");
        if !aws_sns_url(url, ".pem") {
            return Err(Refused(format!(
                "SigningCertURL `{}` is not an AWS SNS certificate",
                cut(url)
            )));
        }
        if let Some(pinned) = &self.pinned {
            return Ok(pinned.clone());
        }
        if let Some(known) = self.remembered(url) {
            return known;
        }
        let _one_at_a_time = self.fetching.lock().await;
        if let Some(known) = self.remembered(url) {
            return known;
        }
        (self.attempts).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fetched = match fetch_key(url).await {
            Ok(key) => Fetched::Key(key),
            Err(why) => Fetched::Failed(why, std::time::Instant::now()),
        };
        let mut cache = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_REMEMBERED {
            cache.clear();
        }
        cache.insert(url.to_owned(), fetched);
        drop(cache);
        self.remembered(url).expect("just remembered")
    }
}

/// The key of the certificate at `url`.
async fn fetch_key(url: &str) -> Result<RsaPublicKey, String> {
    // Without the URL: it is the caller's (and may be long).
    let res = get(url).await.map_err(|e| e.without_url().to_string())?;
    let pem = res.text().await.map_err(|e| e.without_url().to_string())?;
    certificate_key(&pem)
}

/// Whether `m`'s topic is configured.
pub fn topic_allowed(settings: &Settings, m: &Value) -> Result<(), Refused> {
    let topic = m["TopicArn"].as_str().unwrap_or("");
    if settings.topics.iter().any(|t| t == topic) {
        Ok(())
    } else {
        Err(Refused(format!(
            "topic `{}` is not in events.ses.topics",
            cut(topic)
        )))
    }
}

/// Confirms a subscription (a GET of its `SubscribeURL`, an AWS SNS URL only).
pub async fn confirm(m: &Value) -> Result<(), Refused> {
    let url = m["SubscribeURL"].as_str().unwrap_or("");
    if !aws_sns_url(url, "/") {
        return Err(Refused(format!(
            "SubscribeURL `{}` is not an AWS SNS URL",
            cut(url)
        )));
    }
    get(url)
        .await
        .map_err(|e| Refused(format!("confirming the subscription: {e}")))?;
    Ok(())
}

/// A GET of an AWS SNS URL: bounded in time, no redirects followed.
async fn get(url: &str) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::builder()
        .user_agent(crate::USER_AGENT)
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(url)
        .send()
        .await?
        .error_for_status()
}

/// The SES event of a verified notification.
pub fn translate(m: &Value) -> Result<Vec<Translated>, Malformed> {
    let bad = |message: String| Malformed { index: 0, message };
    let text = m["Message"]
        .as_str()
        .ok_or_else(|| bad("`Message` is missing".into()))?;
    let e: Value = serde_json::from_str(text)
        .map_err(|err| bad(format!("`Message` is not an SES event: {err}")))?;
    let kind = e["eventType"]
        .as_str()
        .or(e["notificationType"].as_str())
        .ok_or_else(|| bad("`eventType` is missing".into()))?;
    let id = m["MessageId"].as_str().unwrap_or("").to_owned();
    let key = e["mail"]["tags"]["pegabridge"][0]
        .as_str()
        .map(str::to_owned);
    let at = |v: &Value| {
        v.as_str()
            .and_then(super::unix_time)
            .map(Value::from)
            .unwrap_or(Value::Null)
    };
    let activity = match kind {
        "Open" => Some(to::open(
            at(&e["open"]["timestamp"]),
            e["open"]["userAgent"].clone(),
            Value::Null,
        )),
        "Click" => {
            let url = e["click"]["link"]
                .as_str()
                .ok_or_else(|| bad("a click needs `click.link`".into()))?;
            Some(to::click(
                at(&e["click"]["timestamp"]),
                url,
                e["click"]["userAgent"].clone(),
            ))
        }
        "Bounce" => {
            let b = &e["bounce"];
            let r = &b["bouncedRecipients"][0];
            Some(to::bounce(
                at(&b["timestamp"]),
                b["bounceType"].as_str() == Some("Permanent"),
                r["status"].clone(),
                r["diagnosticCode"].clone(),
            ))
        }
        "Complaint" => Some(to::plain("complaints", at(&e["complaint"]["timestamp"]))),
        "Subscription" => Some(to::plain(
            "unsubscribes",
            at(&e["subscription"]["timestamp"]),
        )),
        _ => None,
    };
    Ok(vec![Translated { id, key, activity }])
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_aws_sns_hosts_are_trusted() {
        use super::aws_sns_url;
        assert!(aws_sns_url(
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
            ".pem"
        ));
        assert!(!aws_sns_url(
            "http://sns.eu-west-1.amazonaws.com/x.pem",
            ".pem"
        ));
        assert!(!aws_sns_url(
            "https://sns.eu-west-1.amazonaws.com.evil.example/x.pem",
            ".pem"
        ));
        assert!(!aws_sns_url(
            "https://evil.example/sns.eu-west-1.amazonaws.com/x.pem",
            ".pem"
        ));
        assert!(!aws_sns_url(
            "https://sns.eu-west-1.amazonaws.com:8443/x.pem",
            ".pem"
        ));
        assert!(!aws_sns_url(
            "https://sns.eu-west-1.amazonaws.com/x.txt",
            ".pem"
        ));
    }
}
