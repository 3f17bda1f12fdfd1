//! The mail worker: keeps up to `[mail] max_sessions` sends with the relay at once, starting
//! the next as soon as one ends (a stuck session holds one slot, not the others), and records
//! what became of each, grouped as they end: accepted (its `broadcasts` event queued with the
//! time of acceptance), retried (4xx, no answer), a hard bounce (the recipient refused at
//! `RCPT`), a soft bounce once the recipient's temporary refusals run out, or a dead send
//! when the sender's or the relay's problem outlasts the retries (nobody bounced). When most
//! sends fail for such a problem, sending pauses with one probe at a time ([`MailStatus`]).
//! At least once: a crash between the relay's acceptance and the commit sends again, with the
//! same `Message-ID`.

use super::status::{Ended, MailStatus};
use super::{Composer, Refusal, Relay};
use crate::config::mail::MailSettings;
use crate::config::pega::RetrySettings;
use crate::delivery::breaker::Admit;
use crate::delivery::schedule::backoff;
use crate::mapping::Mappings;
use crate::outbox::now_ms;
use crate::store::{ClaimedSend, SendOutcome, Storage};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// One send's end, as the worker records it.
#[derive(Debug)]
pub struct Sent {
    pub send: ClaimedSend,
    pub outcome: SendOutcome,
    /// The relay's answer when it failed for the sender's or the relay's reason.
    pub problem: Option<String>,
    /// Whether it was the breaker's probe.
    pub probe: bool,
    pub took: Duration,
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
    status: Arc<MailStatus>,
}

impl MailWorker {
    pub fn new(
        store: Storage,
        intake: crate::intake::Intake,
        settings: &MailSettings,
        tracking: Option<&crate::config::mail::TrackingSettings>,
        bounces: Option<&crate::config::bounces::BounceSettings>,
        mappings: Mappings,
        status: Arc<MailStatus>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            store,
            intake,
            relay: Relay::new(settings)?,
            composer: Composer::new(settings, tracking)?.with_return_paths(bounces),
            mappings,
            retry: settings.retry.clone(),
            sessions: settings.max_sessions.max(1),
            lease_secs: settings.lease_secs,
            status,
        })
    }

    /// Claims as many due sends as there are free sessions and the breaker admits; returns
    /// them, each with whether it is the probe, and when to look again if the breaker holds
    /// sending back.
    async fn claim(
        &self,
        free: usize,
    ) -> anyhow::Result<(Vec<(ClaimedSend, bool)>, Option<tokio::time::Instant>)> {
        let (limit, probe) = match self.status.admit() {
            Admit::Go => (free, false),
            Admit::Probe => (1, true),
            Admit::NotBefore(at) => return Ok((Vec::new(), Some(at))),
        };
        let claimed = self
            .store
            .backend()
            .claim_sends(limit, self.lease_secs)
            .await;
        let claimed = match claimed {
            Ok(c) => c,
            Err(e) => {
                if probe {
                    self.status.cancel_probe();
                }
                return Err(e.into());
            }
        };
        if probe && claimed.is_empty() {
            self.status.cancel_probe();
        }
        Ok((claimed.into_iter().map(|c| (c, probe)).collect(), None))
    }

    /// Records sends that ended, in one store call.
    async fn record(&self, ended: Vec<Sent>) -> anyhow::Result<()> {
        let outcomes = ended
            .into_iter()
            .map(|s| {
                let kind = match &s.outcome {
                    SendOutcome::Accepted { .. } => Ended::Sent,
                    SendOutcome::Retry { .. } => Ended::Retried,
                    SendOutcome::Bounced { .. } => Ended::Bounced,
                    SendOutcome::GaveUp { .. } => Ended::SoftBounced,
                    SendOutcome::Dead { .. } => Ended::Dead,
                };
                self.status
                    .ended(kind, s.problem.as_deref(), s.probe, s.took);
                (s.send, s.outcome)
            })
            .collect();
        self.intake.send_outcomes(outcomes).await?;
        Ok(())
    }

    /// Sends `send` (built, handed to the relay, judged).
    pub async fn send(&self, send: ClaimedSend, probe: bool) -> Sent {
        let started = std::time::Instant::now();
        let (outcome, problem) = match self.message(&send) {
            Err(e) => (self.again(&send, String::new(), e), None),
            Ok(message) => match self.relay.send(&message).await {
                Ok(()) => (
                    SendOutcome::Accepted {
                        at: crate::event::now(),
                    },
                    None,
                ),
                Err(refusal) => self.refused(&send, refusal),
            },
        };
        Sent {
            send,
            outcome,
            problem,
            probe,
            took: started.elapsed(),
        }
    }

    /// What a refusal makes of a send: only the recipient's own refusal is a bounce; the
    /// sender's or the relay's problem is returned for the breaker.
    fn refused(&self, send: &ClaimedSend, refusal: Refusal) -> (SendOutcome, Option<String>) {
        let code_of = |code: u16, text: &str| enhanced(text).unwrap_or_else(|| code.to_string());
        match (meaning(&refusal), refusal) {
            (Meaning::HardBounce, Refusal::Recipient { code, text }) => {
                tracing::warn!(uuid = %send.uuid, code, "the relay refused the recipient: hard bounce");
                let outcome = SendOutcome::Bounced {
                    code: code_of(code, &text),
                    reason: text,
                };
                (outcome, None)
            }
            (Meaning::RecipientLater, Refusal::Recipient { code, text }) => {
                (self.again(send, code_of(code, &text), text), None)
            }
            (_, other) => {
                let why = other.to_string();
                (self.sender_problem(send, why.clone()), Some(why))
            }
        }
    }

    /// A failure that is not the recipient's: retried on the schedule; once it runs out the
    /// send is dead (no bounce, nobody suppressed).
    fn sender_problem(&self, send: &ClaimedSend, why: String) -> SendOutcome {
        let attempt = send.attempts + 1;
        if attempt >= self.retry.max_attempts {
            tracing::error!(uuid = %send.uuid, send_id = send.id, error = %why, "sending failed for good for a reason of the sender or the relay: dead send (no bounce; `pegabridge sends replay` once fixed)");
            return SendOutcome::Dead { reason: why };
        }
        let delay = backoff(attempt, &self.retry, fastrand::f64());
        tracing::warn!(uuid = %send.uuid, send_id = send.id, error = %why, retry_in_ms = delay.as_millis() as u64, "sending failed (the sender's or the relay's problem, not the recipient's): retrying");
        SendOutcome::Retry {
            next_at_ms: now_ms() + delay.as_millis() as i64,
            error: why,
        }
    }

    /// A retry on the schedule of `[mail.retry]`, or a soft bounce once it runs out.
    fn again(&self, send: &ClaimedSend, code: String, why: String) -> SendOutcome {
        let attempt = send.attempts + 1;
        if attempt >= self.retry.max_attempts {
            tracing::warn!(uuid = %send.uuid, send_id = send.id, error = %why, "sending failed for good: soft bounce");
            return SendOutcome::GaveUp { code, reason: why };
        }
        let delay = backoff(attempt, &self.retry, fastrand::f64());
        tracing::warn!(uuid = %send.uuid, send_id = send.id, error = %why, retry_in_ms = delay.as_millis() as u64, "sending failed: retrying");
        SendOutcome::Retry {
            next_at_ms: now_ms() + delay.as_millis() as i64,
            error: why,
        }
    }

    /// The message of `send`.
    pub fn message(&self, send: &ClaimedSend) -> Result<lettre::Message, String> {
        let mapping = self
            .mappings
            .get(&send.mapping)
            .ok_or_else(|| format!("the mapping `{}` is not loaded", send.mapping))?;
        let event: Map<String, Value> =
            serde_json::from_str(&send.event).map_err(|e| format!("the stored event: {e}"))?;
        let options = match event.get("broadcast_manual_options") {
            Some(Value::Object(o)) => o.clone(),
            _ => Map::new(),
        };
        let ids = (send.broadcast_id, send.customer_id);
        self.composer
            .personal(&mapping, &send.email, &send.uuid, &options, ids)
            .map_err(|e| e.to_string())
    }

    /// Sends until `stop`: up to `max_sessions` at once, the next started as soon as one
    /// ends; woken when a trigger commits sends, and every `poll` for retries falling due.
    /// Supervised by [`crate::app`]: after a panic it is called again (sends it had claimed
    /// are taken up again when their lease ends).
    pub async fn run(self: &Arc<Self>, wake: &Notify, stop: tokio_util::sync::CancellationToken) {
        let poll = Duration::from_millis(500);
        // Each send its own task: sessions go on while outcomes are recorded and more claimed.
        let mut flying = tokio::task::JoinSet::new();
        loop {
            let mut until = tokio::time::Instant::now() + poll;
            let free = self.sessions - flying.len();
            if free > 0 && !stop.is_cancelled() {
                match self.claim(free).await {
                    Ok((claimed, later)) => {
                        if let Some(at) = later {
                            until = until.min(at);
                        }
                        for (send, probe) in claimed {
                            let worker = self.clone();
                            flying.spawn(async move { worker.send(send, probe).await });
                        }
                        self.status.in_flight(flying.len());
                    }
                    Err(e) => tracing::error!(error = format!("{e:#}"), "claiming sends failed"),
                }
            }
            if flying.is_empty() {
                if stop.is_cancelled() {
                    break;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = wake.notified() => {}
                    () = tokio::time::sleep_until(until) => {}
                }
                continue;
            }
            let has_room = flying.len() < self.sessions;
            tokio::select! {
                Some(done) = flying.join_next() => {
                    let mut ended = vec![done];
                    while let Some(more) = flying.try_join_next() {
                        ended.push(more);
                    }
                    let ended: Vec<Sent> = ended
                        .into_iter()
                        .filter_map(|done| {
                            // A send that panicked stays leased: taken up again after its lease.
                            done.map_err(|e| tracing::error!(error = %e, "a send failed to finish")).ok()
                        })
                        .collect();
                    self.status.in_flight(flying.len());
                    if let Err(e) = self.record(ended).await {
                        // Their leases run out and they are sent again (at least once).
                        tracing::error!(error = format!("{e:#}"), "recording sends failed");
                    }
                }
                () = wake.notified(), if has_room => {}
                () = tokio::time::sleep_until(until), if has_room => {}
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
