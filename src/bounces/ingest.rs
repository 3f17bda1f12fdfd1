//! A report mailed to the bounce domain, judged and recorded: a permanent failure (`5.x.x`,
//! `Action: failed`) is a hard `bounces` activity, mailbox full or a temporary one (`4.x.x`,
//! `Action: delayed`) a soft one, an abuse report a `complaints` activity; the seed's
//! mailability rules follow in the intake. Auto-replies and what cannot be read or joined are
//! acknowledged and recorded nowhere (a log line says why). The same report twice (by its
//! `Message-ID`, else its bytes) is recorded once.

use super::report::{parse, Parsed, RecipientStatus, Report};
use super::ReturnPaths;
use crate::activity::Raw;
use crate::event::Metric;
use crate::intake::{Intake, Unknown};
use sha2::{Digest, Sha256};

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Recorded (or recognised as a report already recorded: `duplicate`).
    Recorded {
        metric: Metric,
        broadcast_id: i64,
        customer_id: i64,
        duplicate: bool,
    },
    /// A report, but of no personal broadcast known here (no return path of ours in it, or
    /// one whose broadcast this store does not hold).
    Unmatched(String),
    /// Nothing to record: an auto-reply, a success, an unreadable message.
    Ignored(String),
}

impl Ingested {
    /// The kind for logs and metrics: `recorded`, `duplicate`, `unmatched`, `ignored`.
    pub fn kind(&self) -> &'static str {
        match self {
            Ingested::Recorded {
                duplicate: false, ..
            } => "recorded",
            Ingested::Recorded { .. } => "duplicate",
            Ingested::Unmatched(_) => "unmatched",
            Ingested::Ignored(_) => "ignored",
        }
    }
}

/// The uuid of a `Message-ID` pegabridge made (`uuid@domain`).
fn uuid_of(message_id: &str) -> Option<&str> {
    let (uuid, _) = message_id.trim_matches(['<', '>']).split_once('@')?;
    uuid::Uuid::parse_str(uuid).ok().map(|_| uuid)
}

/// Whether a status is a refusal of the message or the sender (RFC 3463: 5.7.x security
/// or policy, such as DMARC; 5.6.x content), not of the recipient's address.
fn senders_problem(status: &str) -> bool {
    status.starts_with("5.7.") || status.starts_with("5.6.") || status.starts_with("4.7.")
}

/// How severe a recipient block is, and as what.
fn judge(r: &RecipientStatus) -> Option<(u8, &'static str)> {
    if senders_problem(&r.status) {
        return None;
    }
    let full = r.status.ends_with(".2.2");
    match (r.action.as_str(), r.status.chars().next()) {
        ("failed", Some('5')) if !full => Some((2, "hard")),
        ("failed" | "delayed", Some('4' | '5')) | ("delayed", _) => Some((1, "soft")),
        ("failed", _) => Some((1, "soft")),
        _ => None,
    }
}

/// Reads and records reports against the store of `intake`.
#[derive(Debug, Clone)]
pub struct Ingest {
    paths: ReturnPaths,
    intake: Intake,
}

impl Ingest {
    pub fn new(paths: ReturnPaths, intake: Intake) -> Self {
        Self { paths, intake }
    }

    /// The activity `raw` reports, sent to one of `envelope_to` (the addresses it was
    /// delivered to, when known), or why there is none. Without a return path of ours in it,
    /// the report may still name the original's `Message-ID` (`<uuid@domain>`): `lookup`
    /// finds the personal broadcast of a uuid.
    pub fn activity(
        &self,
        raw: &[u8],
        envelope_to: &[String],
        lookup: Option<(i64, i64)>,
    ) -> Result<Raw, Ingested> {
        self.judged(&parse(raw), raw, envelope_to, lookup)
    }

    /// [`Ingest::activity`] of a report already parsed.
    fn judged(
        &self,
        parsed: &Parsed,
        raw: &[u8],
        envelope_to: &[String],
        lookup: Option<(i64, i64)>,
    ) -> Result<Raw, Ingested> {
        let (metric, join_candidates, bounce) = match &parsed.report {
            Report::Delivery { recipients, sender } => {
                let worst = recipients
                    .iter()
                    .filter_map(|r| judge(r).map(|j| (j, r)))
                    .max_by_key(|((severity, _), _)| *severity);
                let Some(((_, kind), block)) = worst else {
                    if let Some(r) = recipients.iter().find(|r| senders_problem(&r.status)) {
                        tracing::warn!(status = %r.status, diagnostic = ?r.diagnostic, "a late refusal for policy or content (the sender's problem, not the recipient's): no bounce recorded");
                        return Err(Ingested::Ignored(format!(
                            "{} refused for policy or content ({}): the sender's problem, not the recipient's",
                            r.final_recipient.as_deref().unwrap_or("a recipient"),
                            r.status
                        )));
                    }
                    return Err(Ingested::Ignored(
                        "a delivery status without a failure (delivered, relayed)".into(),
                    ));
                };
                let candidates: Vec<String> = sender.iter().cloned().collect();
                (Metric::Bounces, candidates, Some((kind, block.clone())))
            }
            Report::Feedback {
                feedback_type,
                original_mail_from,
                ..
            } => {
                if matches!(feedback_type.as_str(), "not-spam" | "auth-failure") {
                    return Err(Ingested::Ignored(format!(
                        "a feedback report of type {feedback_type}"
                    )));
                }
                let candidates: Vec<String> = original_mail_from.iter().cloned().collect();
                (Metric::Complaints, candidates, None)
            }
            Report::AutoReply => {
                return Err(Ingested::Ignored(
                    "an automatic reply without a report".into(),
                ))
            }
            Report::Unusable(why) => return Err(Ingested::Ignored(why.clone())),
        };
        let joined = envelope_to
            .iter()
            .chain(join_candidates.iter())
            .find_map(|a| self.paths.read(a))
            .or(lookup);
        let Some((broadcast_id, customer_id)) = joined else {
            return Err(Ingested::Unmatched(
                "no return path of ours in the report (forged, or sent before [bounces])".into(),
            ));
        };
        let id = match &parsed.id {
            Some(id) => format!("report:{id}"),
            None => {
                let digest = Sha256::digest(raw);
                let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
                format!("report:sha256:{hex}")
            }
        };
        let mut activity = Raw {
            id: Some(format!("{id}:{broadcast_id}-{customer_id}")),
            timestamp: Some(crate::event::now()),
            ..Raw::new(metric, broadcast_id, customer_id)
        };
        if let Some((kind, block)) = bounce {
            activity.bounce_type = Some(kind.to_owned());
            activity.bounce_code = Some(block.status.clone()).filter(|s| !s.is_empty());
            activity.bounce_reason = Some(
                block
                    .diagnostic
                    .clone()
                    .unwrap_or_else(|| format!("{} {}", block.action, block.status)),
            );
        }
        Ok(activity)
    }

    /// The personal broadcast of the original message the report quotes, by its
    /// `Message-ID`, when pegabridge sent it.
    async fn by_message_id(&self, parsed: &Parsed) -> anyhow::Result<Option<(i64, i64)>> {
        let Some(uuid) = parsed.original_message_id.as_deref().and_then(uuid_of) else {
            return Ok(None);
        };
        let send = self.intake.store().backend().send(uuid.to_owned()).await?;
        Ok(send.map(|s| (s.broadcast_id, s.customer_id)))
    }

    /// Judges and records `raw`; a store failure is an error (the caller answers so that the
    /// sender tries again: a 4xx in SMTP, a temporary exit code for a pipe).
    /// Returns what kind of message it was (see [`Parsed::kind`]) and what became of it.
    pub async fn ingest(
        &self,
        raw: &[u8],
        envelope_to: &[String],
    ) -> anyhow::Result<(&'static str, Ingested)> {
        let parsed = parse(raw);
        let kind = parsed.kind();
        // The store is asked for the quoted original only when no return path of ours joins.
        let mut judged = self.judged(&parsed, raw, envelope_to, None);
        if matches!(judged, Err(Ingested::Unmatched(_))) {
            if let Some(found) = self.by_message_id(&parsed).await? {
                judged = self.judged(&parsed, raw, envelope_to, Some(found));
            }
        }
        let activity = match judged {
            Ok(a) => a,
            Err(outcome) => {
                tracing::info!(kind, outcome = outcome.kind(), detail = ?outcome, "a message to the bounce domain");
                return Ok((kind, outcome));
            }
        };
        let metric = match &parsed.report {
            Report::Feedback { .. } => Metric::Complaints,
            _ => Metric::Bounces,
        };
        let (broadcast_id, customer_id) = (activity.broadcast_id, activity.customer_id);
        let checked = Intake::check(vec![activity])
            .map_err(|e| anyhow::anyhow!("the report's activity: {e:?}"))?;
        let outcomes = self.intake.record(checked, Unknown::Skip).await?;
        let outcome = match outcomes.first().and_then(|o| o.answer()) {
            Some(answer) => Ingested::Recorded {
                metric,
                broadcast_id,
                customer_id,
                duplicate: answer.status == crate::recording::ActivityStatus::Duplicate,
            },
            None => Ingested::Unmatched(format!(
                "personal broadcast {broadcast_id}-{customer_id} is not known here"
            )),
        };
        tracing::info!(
            outcome = outcome.kind(),
            broadcast_id,
            customer_id,
            metric = metric.as_str(),
            "a report to the bounce domain"
        );
        Ok((kind, outcome))
    }
}
