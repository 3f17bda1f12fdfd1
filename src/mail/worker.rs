//! The mail worker: claims due sends, builds each message, hands it to the relay (at most
//! `[mail] max_sessions` at once) and records what became of it: accepted (its `broadcasts`
//! event queued with the time of acceptance), retried (4xx, no answer), a hard bounce (a 5xx
//! refusal of the recipient) or, once retries run out, a soft bounce. At least once: a crash
//! between the relay's acceptance and the commit sends again, with the same `Message-ID`.

use super::{Composer, Outgoing, Refusal, Relay};
use crate::config::mail::MailSettings;
use crate::config::pega::RetrySettings;
use crate::delivery::schedule::backoff;
use crate::mapping::Mappings;
use crate::outbox::now_ms;
use crate::store::{ClaimedSend, SendOutcome, Storage};
use futures::StreamExt;
use serde_json::{Map, Value};
use std::time::Duration;
use tokio::sync::Notify;

/// Sends claimed per round for each SMTP session.
const ROUND_PER_SESSION: usize = 8;

/// What one round did (counts of sends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStep {
    pub sent: usize,
    pub retried: usize,
    pub bounced: usize,
    pub failed: usize,
}

impl SendStep {
    pub fn is_empty(&self) -> bool {
        *self == SendStep::default()
    }
}

/// The mail worker.
pub struct MailWorker {
    store: Storage,
    /// Where the sends' outcomes are recorded (a refused recipient's bounce among them).
    intake: crate::intake::Intake,
    relay: Relay,
    composer: Composer,
    mappings: Mappings,
    retry: RetrySettings,
    sessions: usize,
    lease_secs: u64,
    tokens: Option<super::tracking::Tokens>,
    /// The address of `List-Unsubscribe`'s `mailto:` target.
    unsubscribe_mailbox: String,
}

impl MailWorker {
    pub fn new(
        store: Storage,
        intake: crate::intake::Intake,
        settings: &MailSettings,
        tracking: Option<&crate::config::mail::TrackingSettings>,
        mappings: Mappings,
    ) -> anyhow::Result<Self> {
        let mailbox: lettre::message::Mailbox = settings
            .reply_to
            .as_deref()
            .unwrap_or(&settings.from)
            .parse()?;
        Ok(Self {
            tokens: tracking.map(super::tracking::Tokens::new),
            unsubscribe_mailbox: mailbox.email.to_string(),
            store,
            intake,
            relay: Relay::new(settings)?,
            composer: Composer::new(settings)?,
            mappings,
            retry: settings.retry.clone(),
            sessions: settings.max_sessions.max(1),
            lease_secs: settings.lease_secs,
        })
    }

    /// One round: claim due sends, send them, record the outcomes in one store call.
    pub async fn try_send_next(&self) -> anyhow::Result<SendStep> {
        let claimed = self
            .store
            .backend()
            .claim_sends(self.sessions * ROUND_PER_SESSION, self.lease_secs)
            .await?;
        if claimed.is_empty() {
            return Ok(SendStep::default());
        }
        let sends: Vec<_> = claimed.into_iter().map(|s| self.send(s)).collect();
        let outcomes: Vec<(ClaimedSend, SendOutcome)> = futures::stream::iter(sends)
            .buffer_unordered(self.sessions)
            .collect()
            .await;
        let mut step = SendStep::default();
        for (_, o) in &outcomes {
            match o {
                SendOutcome::Accepted { .. } => step.sent += 1,
                SendOutcome::Retry { .. } => step.retried += 1,
                SendOutcome::Bounced { .. } => step.bounced += 1,
                SendOutcome::GaveUp { .. } | SendOutcome::Dead { .. } => step.failed += 1,
            }
        }
        self.intake.send_outcomes(outcomes).await?;
        Ok(step)
    }

    async fn send(&self, send: ClaimedSend) -> (ClaimedSend, SendOutcome) {
        let outcome = match self.message(&send) {
            Err(e) => self.again(&send, String::new(), e),
            Ok(message) => match self.relay.send(&message).await {
                Ok(()) => SendOutcome::Accepted {
                    at: crate::event::now(),
                },
                Err(refusal) => self.refused(&send, refusal),
            },
        };
        (send, outcome)
    }

    /// What a refusal makes of a send: only the recipient's own refusal is a bounce.
    fn refused(&self, send: &ClaimedSend, refusal: Refusal) -> SendOutcome {
        let code_of = |code: u16, text: &str| enhanced(text).unwrap_or_else(|| code.to_string());
        match (meaning(&refusal), refusal) {
            (Meaning::HardBounce, Refusal::Recipient { code, text }) => {
                tracing::warn!(uuid = %send.uuid, code, "the relay refused the recipient: hard bounce");
                SendOutcome::Bounced {
                    code: code_of(code, &text),
                    reason: text,
                }
            }
            (Meaning::RecipientLater, Refusal::Recipient { code, text }) => {
                self.again(send, code_of(code, &text), text)
            }
            (_, other) => self.sender_problem(send, other.to_string()),
        }
    }

    /// A failure that is not the recipient's: retried on the schedule; once it runs out the
    /// send is dead (no bounce, nobody suppressed).
    fn sender_problem(&self, send: &ClaimedSend, why: String) -> SendOutcome {
        let attempt = send.attempts + 1;
        if attempt >= self.retry.max_attempts {
            tracing::error!(uuid = %send.uuid, error = %why, "sending failed for good for a reason of the sender or the relay: dead send (no bounce)");
            return SendOutcome::Dead { reason: why };
        }
        let delay = backoff(attempt, &self.retry, fastrand::f64());
        tracing::warn!(uuid = %send.uuid, error = %why, retry_in_ms = delay.as_millis() as u64, "sending failed (the sender's or the relay's problem, not the recipient's): retrying");
        SendOutcome::Retry {
            next_at_ms: now_ms() + delay.as_millis() as i64,
            error: why,
        }
    }

    /// A retry on the schedule of `[mail.retry]`, or a soft bounce once it runs out.
    fn again(&self, send: &ClaimedSend, code: String, why: String) -> SendOutcome {
        let attempt = send.attempts + 1;
        if attempt >= self.retry.max_attempts {
            tracing::warn!(uuid = %send.uuid, error = %why, "sending failed for good: soft bounce");
            return SendOutcome::GaveUp { code, reason: why };
        }
        let delay = backoff(attempt, &self.retry, fastrand::f64());
        tracing::info!(uuid = %send.uuid, error = %why, retry_in_ms = delay.as_millis() as u64, "sending failed: retrying");
        SendOutcome::Retry {
            next_at_ms: now_ms() + delay.as_millis() as i64,
            error: why,
        }
    }

    fn message(&self, send: &ClaimedSend) -> Result<lettre::Message, String> {
        let mapping = self
            .mappings
            .get(&send.mapping)
            .ok_or_else(|| format!("the mapping `{}` is not loaded", send.mapping))?;
        let event: Map<String, Value> =
            serde_json::from_str(&send.event).map_err(|e| format!("the stored event: {e}"))?;
        let mut options = match event.get("broadcast_manual_options") {
            Some(Value::Object(o)) => o.clone(),
            _ => Map::new(),
        };
        let ids = (send.broadcast_id, send.customer_id);
        let mut unsubscribe = Vec::new();
        if let Some(tokens) = &self.tokens {
            let url = tokens.url(&super::tracking::Target::Unsubscribe {
                broadcast_id: ids.0,
                customer_id: ids.1,
            });
            // `{{$unsubscribe_url}}` in the template.
            options.insert("unsubscribe_url".into(), Value::String(url.clone()));
            unsubscribe.push(url);
        }
        unsubscribe.push(format!(
            "mailto:{}?subject=unsubscribe",
            self.unsubscribe_mailbox
        ));
        let tracking = match &self.tokens {
            Some(tokens) if mapping.file.tracking => Some((tokens, ids)),
            _ => None,
        };
        let outgoing = Outgoing {
            to: &send.email,
            uuid: &send.uuid,
            manual_options: &options,
            unsubscribe,
            tracking,
            join_key: Some(crate::event::JoinKey {
                broadcast_id: ids.0,
                customer_id: ids.1,
            }),
        };
        self.composer
            .compose(&mapping, &outgoing)
            .map_err(|e| e.to_string())
    }

    /// Sends until `stop`: when woken (a trigger committed sends), every `poll` (retries
    /// falling due), and straight away while rounds come back full. Supervised by
    /// [`crate::app`]: after a panic it is called again.
    pub async fn run(&self, wake: &Notify, stop: tokio_util::sync::CancellationToken) {
        let poll = Duration::from_millis(500);
        loop {
            let busy = match self.try_send_next().await {
                Ok(step) => !step.is_empty(),
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "a mail round failed");
                    false
                }
            };
            if busy {
                continue;
            }
            if stop.is_cancelled() {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}

use crate::events::enhanced_status as enhanced;

/// What a refusal says about the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// The recipient's address does not take mail: a hard bounce.
    HardBounce,
    /// The recipient's mailbox refuses for now (4xx, mailbox full): retried, a soft bounce
    /// when retries run out.
    RecipientLater,
    /// Not about the recipient (the session, the sender, the content, policy): never a bounce.
    NotTheRecipient,
}

/// RFC 3463: at `RCPT`, a permanent refusal with an address status (5.1.x) or a plain 550,
/// 551 or 553 is a hard bounce; mailbox full (5.2.2, 552) and 4xx are the recipient's for now;
/// anything else (5.7.x policy such as relaying denied, 5.3.x, 5.4.x, 5.5.x...) and every
/// refusal at another stage is not about the recipient.
pub fn meaning(refusal: &Refusal) -> Meaning {
    let Refusal::Recipient { code, text } = refusal else {
        return Meaning::NotTheRecipient;
    };
    if *code < 500 {
        return Meaning::RecipientLater;
    }
    match enhanced(text).as_deref() {
        Some(s) if s.starts_with("5.1.") => Meaning::HardBounce,
        Some("5.2.2") => Meaning::RecipientLater,
        Some(_) => Meaning::NotTheRecipient,
        None => match code {
            550 | 551 | 553 => Meaning::HardBounce,
            552 => Meaning::RecipientLater,
            _ => Meaning::NotTheRecipient,
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_recipients_own_refusal_is_a_bounce() {
        use super::{meaning, Meaning};
        use crate::mail::transport::{Refusal, Stage};
        let rcpt = |code: u16, text: &str| Refusal::Recipient {
            code,
            text: text.into(),
        };
        let session = |stage, code: u16, text: &str| Refusal::Session {
            stage,
            code: Some(code),
            text: text.into(),
        };
        for (refusal, expected) in [
            (
                rcpt(550, "5.1.1 <bob@x.example>: no such user"),
                Meaning::HardBounce,
            ),
            (rcpt(550, "mailbox unavailable"), Meaning::HardBounce),
            (rcpt(552, "5.2.2 mailbox full"), Meaning::RecipientLater),
            (rcpt(450, "4.2.0 greylisted"), Meaning::RecipientLater),
            (
                rcpt(554, "5.7.1 <bob@x.example>: Relay access denied"),
                Meaning::NotTheRecipient,
            ),
            (
                session(Stage::MailFrom, 550, "5.7.1 sender not allowed"),
                Meaning::NotTheRecipient,
            ),
            (
                session(Stage::Auth, 535, "5.7.8 authentication failed"),
                Meaning::NotTheRecipient,
            ),
            (
                session(Stage::Connect, 530, "5.7.0 must issue STARTTLS first"),
                Meaning::NotTheRecipient,
            ),
            (
                session(Stage::Message, 554, "5.6.0 content refused"),
                Meaning::NotTheRecipient,
            ),
        ] {
            assert_eq!(meaning(&refusal), expected, "{refusal}");
        }
    }

    #[test]
    fn the_enhanced_status_code_is_found_in_the_answer() {
        assert_eq!(
            super::enhanced("550 5.1.1 <x@y.z>: no such user here").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(super::enhanced("451 try again").as_deref(), None);
    }
}
