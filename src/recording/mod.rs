//! What a trigger or an activity changes, decided once for both backends: which customer,
//! mailable or not, duplicate or not, and which events the change makes. The backends run
//! the reads and writes ([`Tx`]) inside their own transaction.
//!
//! Everything that can fail for a reason of the request's own (an unknown personal
//! broadcast) is found before the first write: the SQLite backend commits several requests
//! in one transaction, and a failure after a write would roll back the others' work too.

use crate::activity::{Activity, Counts, Detail};
use crate::event::{now, Common, Metric};
use crate::outbox::{Claimed, ClaimedSend, Result, SendOutcome, SendStatus, StoreError};
pub use port::{CountChange, CustomerKey, NewEvent, PersonalRow, Standing, Tx};

pub mod port;
use serde::{Deserialize, Serialize};

/// A personal broadcast to record: what is its own, and what every recipient of its trigger
/// shares (one copy per trigger: a bulk trigger of 100,000 holds 100,000 of these).
#[derive(Debug, Clone)]
pub struct NewRecipient {
    pub email: String,
    pub external_id: String,
    /// The mapping's per-recipient idempotency key, if any (already namespaced).
    pub idempotency_key: Option<String>,
    /// Every manual field of the template plus the mapped variables.
    pub manual_options: crate::event::ManualOptions,
    /// The trigger's `broadcasts` event without anything of a recipient's own.
    pub shared: std::sync::Arc<Common>,
}

impl NewRecipient {
    /// Its `broadcasts` event, complete but for what the store assigns: `broadcast_id`,
    /// `customer_id`, `uuid` and the timestamps.
    pub fn event(&self) -> Common {
        Common {
            external_id: self.external_id.clone(),
            broadcast_manual_options: self.manual_options.to_map(),
            email_domain: crate::event::email_domain(&self.email),
            customer_email_address: Some(self.email.clone()),
            email_address: Some(self.email.clone()),
            ..(*self.shared).clone()
        }
    }
}

/// What became of one recipient of a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Recorded, its `broadcasts` event queued.
    Queued,
    /// Sent by an earlier trigger (per-recipient idempotency key), or the same customer
    /// earlier in this trigger: one mail.
    Duplicate,
    /// Not mailable: recorded, neither sent nor reported.
    Suppressed,
}

impl RecipientStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientStatus::Queued => "queued",
            RecipientStatus::Duplicate => "duplicate",
            RecipientStatus::Suppressed => "suppressed",
        }
    }

    /// The status of a stored value.
    pub fn parse_stored(text: &str) -> Result<Self> {
        match text {
            "queued" => Ok(RecipientStatus::Queued),
            "duplicate" => Ok(RecipientStatus::Duplicate),
            "suppressed" => Ok(RecipientStatus::Suppressed),
            other => Err(StoreError::Other(anyhow::anyhow!(
                "a personal broadcast has the unknown status `{other}`"
            ))),
        }
    }
}

/// One recipient in the answer to a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecipientAnswer {
    pub customer_id: i64,
    pub uuid: String,
    pub email_address: String,
    pub status: RecipientStatus,
}

/// The answer to an accepted trigger (`202`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerAnswer {
    pub broadcast_id: i64,
    pub recipients: Vec<RecipientAnswer>,
}

/// What became of one activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActivityStatus {
    /// Recorded, its event queued.
    Queued,
    /// A resend of an activity with a known `id`: nothing recorded.
    Duplicate,
}

/// The answer for one activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActivityAnswer {
    pub uuid: String,
    pub metric_id: i64,
    pub status: ActivityStatus,
}

/// Whether a customer may be mailed (the seed: a hard bounce, more than four soft bounces,
/// a complaint or an unsubscribe make a customer not mailable).
pub fn mailable(s: &Standing) -> bool {
    s.bounce_count_hard == 0 && s.bounce_count_soft <= 4 && s.complaints == 0 && !s.unsubscribed
}

/// How an activity changes its customer's counts.
pub fn count_change(a: &Activity) -> CountChange {
    match (&a.metric, &a.detail) {
        (Metric::Bounces, Detail::Bounce { hard: true, .. }) => CountChange::HardBounce,
        (Metric::Bounces, _) => CountChange::SoftBounce,
        (Metric::Complaints, _) => CountChange::Complaint,
        (Metric::Unsubscribes, _) => CountChange::Unsubscribe,
        (Metric::Opens | Metric::Clicks | Metric::ShortLinks, _) => CountChange::ResetSoftBounces,
        _ => CountChange::None,
    }
}

/// Records a trigger: its broadcast, customers, personal broadcasts and their `broadcasts`
/// events. A repeated idempotency key (the whole trigger's, or every recipient's) returns the
/// first answer and records nothing. Returns the answer and the events leased to this process.
///
/// When pegabridge sends the mail (`sending`), a mailable recipient's send is queued instead
/// of its `broadcasts` event, which is queued when the relay accepts the message
/// ([`send_outcomes`]).
pub(crate) async fn trigger(
    tx: &mut impl Tx,
    mapping: &str,
    idempotency_key: Option<&str>,
    recipients: Vec<NewRecipient>,
    sending: bool,
) -> Result<(TriggerAnswer, Vec<Claimed>)> {
    if let Some(key) = idempotency_key {
        if let Some(stored) = tx.trigger_answer(key).await? {
            return Ok((serde_json::from_str(&stored)?, Vec::new()));
        }
    }
    // Each recipient's earlier send, when the mapping keys recipients (none held otherwise).
    let mut earlier = Vec::new();
    if recipients.iter().any(|r| r.idempotency_key.is_some()) {
        let keys: Vec<Option<&str>> = (recipients.iter())
            .map(|r| r.idempotency_key.as_deref())
            .collect();
        earlier = tx.earlier_sends(&keys).await?;
    }
    if let Some(answer) = earlier_answer(&earlier) {
        return Ok((answer, Vec::new()));
    }
    let mut earlier = earlier.into_iter();

    let at = now();
    let broadcast_id = tx.insert_broadcast(mapping, at, idempotency_key).await?;
    if !sending {
        tx.ids_ahead(recipients.len()).await?;
    }
    let mut recorded = Recorded {
        broadcast_id,
        at,
        sending,
        answers: Vec::with_capacity(recipients.len()),
        seen: std::collections::HashMap::with_capacity(recipients.len()),
        leased: Vec::new(),
    };
    // Each recipient is dropped once recorded: the answers grow as the recipients go. Their
    // customers are found or created a chunk at a time.
    let mut recipients = recipients.into_iter().peekable();
    while recipients.peek().is_some() {
        let chunk: Vec<(NewRecipient, Option<(i64, RecipientAnswer)>)> = (&mut recipients)
            .take(CUSTOMERS_AT_ONCE)
            .map(|r| (r, earlier.next().flatten()))
            .collect();
        let wanted: Vec<(CustomerKey, &str)> = (chunk.iter())
            .filter(|(_, earlier)| earlier.is_none())
            .map(|(r, _)| (customer_key(r), r.email.as_str()))
            .collect();
        let mut customers = tx.customers(&wanted, at).await?.into_iter();
        for (r, earlier) in chunk {
            match earlier {
                Some((_, original)) => recorded.answers.push(duplicate(original)),
                None => {
                    let customer = customers.next().ok_or_else(|| {
                        StoreError::Other(anyhow::anyhow!("fewer customers than keys"))
                    })?;
                    recorded.recipient(tx, r, customer).await?;
                }
            }
        }
    }
    let answer = TriggerAnswer {
        broadcast_id,
        recipients: recorded.answers,
    };
    if idempotency_key.is_some() {
        tx.set_trigger_answer(broadcast_id, &serde_json::to_string(&answer)?)
            .await?;
    }
    Ok((answer, recorded.leased))
}

/// A trigger as it is recorded: its broadcast, and its recipients' answers so far.
struct Recorded {
    broadcast_id: i64,
    at: i64,
    sending: bool,
    answers: Vec<RecipientAnswer>,
    /// Where each customer already is in the answers.
    seen: std::collections::HashMap<i64, usize>,
    /// The events leased to this process.
    leased: Vec<Claimed>,
}

impl Recorded {
    /// Records a recipient with its customer: its personal broadcast, and its send or its
    /// `broadcasts` event unless it is suppressed; a customer named before is a duplicate.
    async fn recipient(
        &mut self,
        tx: &mut impl Tx,
        r: NewRecipient,
        customer: Standing,
    ) -> Result<()> {
        let (broadcast_id, at) = (self.broadcast_id, self.at);
        if let Some(&i) = self.seen.get(&customer.id) {
            self.answers.push(duplicate(self.answers[i].clone()));
            return Ok(());
        }
        self.seen.insert(customer.id, self.answers.len());
        let status = if mailable(&customer) {
            RecipientStatus::Queued
        } else {
            RecipientStatus::Suppressed
        };
        let uuid = crate::event::new_uuid();
        let mut event = r.event();
        event.broadcast_id = broadcast_id;
        event.customer_id = customer.id;
        event.uuid = uuid.clone();
        event.broadcast_timestamp = at;
        event.metric_timestamp = at;
        let payload = serde_json::to_string(&event)?;
        tx.insert_personal(PersonalRow {
            broadcast_id,
            customer_id: customer.id,
            uuid: &uuid,
            email: &r.email,
            status,
            event: &payload,
            idempotency_key: r.idempotency_key.as_deref(),
        })
        .await?;
        // A suppressed send is recorded but neither sent nor reported.
        if status == RecipientStatus::Queued && self.sending {
            tx.enqueue_send(&uuid, broadcast_id, customer.id).await?;
        } else if status == RecipientStatus::Queued {
            let new = NewEvent {
                uuid: &uuid,
                metric: Metric::Broadcasts,
                external_id: None,
                in_personal_broadcast: true,
                withheld: false,
                personal: (broadcast_id, customer.id),
            };
            let (_, lease) = tx.enqueue(new, |_| Ok(payload)).await?;
            self.leased.extend(lease);
        }
        self.answers.push(RecipientAnswer {
            customer_id: customer.id,
            uuid,
            email_address: r.email,
            status,
        });
        Ok(())
    }
}

/// Recipients of a trigger whose customers are found or created at once (PostgreSQL: in one
/// statement; a round trip costs more there than a row).
const CUSTOMERS_AT_ONCE: usize = 1000;

/// How a recipient's customer is found: by its external id when it has one.
fn customer_key(r: &NewRecipient) -> CustomerKey<'_> {
    match r.external_id.as_str() {
        "" => CustomerKey::Email(&r.email),
        id => CustomerKey::ExternalId(id),
    }
}

/// Bytes reserved for an event's JSON (events are about 1.5 KB).
const PAYLOAD_CAPACITY: usize = 2048;

/// What to do with an activity whose personal broadcast is unknown here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// Fail the whole request ([`StoreError::UnknownBroadcast`]) before anything is written
    /// (`POST /activities`: the caller made a mistake).
    Refuse,
    /// Answer it [`ActivityOutcome::UnknownBroadcast`] and record the others (a platform's
    /// batch, which may carry events of mail sent by others on a shared account).
    Skip,
}

/// What became of one activity of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivityOutcome {
    /// Recorded (its answer says `queued`), or a resend of a known id (`duplicate`): the
    /// answer given the first time.
    Answered(ActivityAnswer),
    /// Its personal broadcast is not known here: nothing recorded (with [`Unknown::Skip`]).
    UnknownBroadcast,
}

impl ActivityOutcome {
    /// The answer, when the activity was recorded or is a duplicate.
    pub fn answer(&self) -> Option<&ActivityAnswer> {
        match self {
            ActivityOutcome::Answered(a) => Some(a),
            ActivityOutcome::UnknownBroadcast => None,
        }
    }
}

/// Records a batch of activities and their events, one outcome per activity, in order. The
/// personal broadcasts are looked up first (one indexed read each); an unknown one fails the
/// batch before any write ([`Unknown::Refuse`]) or is answered as such ([`Unknown::Skip`]).
/// A resend of an activity with a known `id` is answered as before. Linear in the batch.
pub(crate) async fn activities(
    tx: &mut impl Tx,
    activities: &[Activity],
    unknown: Unknown,
) -> Result<(Vec<ActivityOutcome>, Vec<Claimed>)> {
    tx.read_ahead(activities).await?;
    let mut commons = Vec::with_capacity(activities.len());
    for (index, a) in activities.iter().enumerate() {
        let common = tx.broadcast_event(a.broadcast_id, a.customer_id).await?;
        if common.is_none() && unknown == Unknown::Refuse {
            return Err(StoreError::UnknownBroadcast {
                index,
                broadcast_id: a.broadcast_id,
                customer_id: a.customer_id,
            });
        }
        commons.push(common);
    }
    let mut answers = Vec::with_capacity(activities.len());
    let mut leased = Vec::new();
    for (a, common) in activities.iter().zip(commons) {
        let Some(common) = common else {
            answers.push(ActivityOutcome::UnknownBroadcast);
            continue;
        };
        // Checked here, not with the broadcasts: an earlier activity of the same request may
        // have just recorded this id.
        if let Some(id) = &a.external_id {
            if let Some(earlier) = tx.earlier_activity(id).await? {
                answers.push(ActivityOutcome::Answered(earlier));
                continue;
            }
        }
        tx.change_counts(a.customer_id, count_change(a)).await?;
        // Only the first person's open of a personal broadcast is sent, when so configured.
        let repeated_open = a.first_open_only
            && a.metric == Metric::Opens
            && !a.is_machine()
            && !tx.first_human_open(a.broadcast_id, a.customer_id).await?;
        let counts = if a.reports_counts() {
            let s = tx.standing(a.customer_id).await?;
            Counts {
                bounce_count_hard: s.bounce_count_hard,
                bounce_count_soft: s.bounce_count_soft,
                complaints: s.complaints,
            }
        } else {
            Counts::default()
        };
        let at = a.timestamp.unwrap_or_else(now);
        let uuid = crate::event::new_uuid();
        let new = NewEvent {
            uuid: &uuid,
            metric: a.metric,
            external_id: a.external_id.as_deref(),
            in_personal_broadcast: false,
            withheld: a.withheld || repeated_open,
            personal: (common.broadcast_id, common.customer_id),
        };
        let payload = |metric_id| {
            // Sized for a whole event up front: growing the buffer step by step cost a tenth
            // of the serializing.
            let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
            let event = crate::activity::event(common, a, metric_id, at, &uuid, counts);
            serde_json::to_writer(&mut payload, &event)?;
            Ok(String::from_utf8(payload).map_err(anyhow::Error::new)?)
        };
        let (metric_id, lease) = tx.enqueue(new, payload).await?;
        leased.extend(lease);
        answers.push(ActivityOutcome::Answered(ActivityAnswer {
            uuid,
            metric_id,
            status: ActivityStatus::Queued,
        }));
    }
    Ok((answers, leased))
}

/// Records what became of sends: an accepted one gets its personal broadcast's times set to
/// the acceptance and its `broadcasts` event queued; a refused recipient (5xx) becomes a hard
/// bounce, exhausted retries a soft one (each an activity with the SMTP code and text, so the
/// customer's mailability follows); a retry waits. Returns the events leased to this process.
pub(crate) async fn send_outcomes(
    tx: &mut impl Tx,
    outcomes: &[(ClaimedSend, SendOutcome)],
) -> Result<Vec<Claimed>> {
    let mut leased = Vec::new();
    for (send, outcome) in outcomes {
        match outcome {
            SendOutcome::Accepted { at } => {
                let mut event = tx
                    .broadcast_event(send.broadcast_id, send.customer_id)
                    .await?
                    .ok_or_else(|| {
                        StoreError::NotFound(format!("personal broadcast {}", send.uuid))
                    })?;
                event.broadcast_timestamp = *at;
                event.metric_timestamp = *at;
                let payload = serde_json::to_string(&event)?;
                tx.update_broadcast_event(send.broadcast_id, send.customer_id, &payload)
                    .await?;
                let new = NewEvent {
                    uuid: &send.uuid,
                    metric: Metric::Broadcasts,
                    external_id: None,
                    in_personal_broadcast: true,
                    withheld: false,
                    personal: (send.broadcast_id, send.customer_id),
                };
                let (_, lease) = tx.enqueue(new, |_| Ok(payload)).await?;
                leased.extend(lease);
                tx.mark_send(send.id, SendStatus::Sent, None, None).await?;
            }
            SendOutcome::Dead { reason } => {
                tx.mark_send(send.id, SendStatus::Dead, None, Some(reason))
                    .await?;
            }
            SendOutcome::Retry { next_at_ms, error } => {
                tx.mark_send(send.id, SendStatus::Pending, Some(*next_at_ms), Some(error))
                    .await?;
            }
            SendOutcome::Bounced { code, reason } | SendOutcome::GaveUp { code, reason } => {
                let hard = matches!(outcome, SendOutcome::Bounced { .. });
                let status = if hard {
                    SendStatus::Bounced
                } else {
                    SendStatus::Failed
                };
                tx.mark_send(send.id, status, None, Some(&format!("{code} {reason}")))
                    .await?;
                let bounce = Activity {
                    // The send's own id: recording it twice (a crash before the commit)
                    // answers the first.
                    external_id: Some(format!("pegabridge-send:{}", send.uuid)),
                    metric: Metric::Bounces,
                    broadcast_id: send.broadcast_id,
                    customer_id: send.customer_id,
                    timestamp: Some(now()),
                    detail: Detail::Bounce {
                        hard,
                        code: code.clone(),
                        reason: reason.clone(),
                    },
                    withheld: false,
                    first_open_only: false,
                };
                let (_, lease) =
                    activities(tx, std::slice::from_ref(&bounce), Unknown::Refuse).await?;
                leased.extend(lease);
            }
        }
    }
    Ok(leased)
}

/// The first answer again when every recipient of a trigger was sent before (per-recipient
/// idempotency keys): `earlier` holds each recipient's earlier send, if any.
fn earlier_answer(earlier: &[Option<(i64, RecipientAnswer)>]) -> Option<TriggerAnswer> {
    if earlier.is_empty() || earlier.iter().any(Option::is_none) {
        return None;
    }
    let found: Vec<&(i64, RecipientAnswer)> = earlier.iter().flatten().collect();
    Some(TriggerAnswer {
        broadcast_id: found[0].0,
        recipients: found.into_iter().map(|(_, r)| r.clone()).collect(),
    })
}

/// A recipient's answer when it duplicates `original`.
fn duplicate(original: RecipientAnswer) -> RecipientAnswer {
    RecipientAnswer {
        status: RecipientStatus::Duplicate,
        ..original
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(customer_id: i64, status: RecipientStatus) -> RecipientAnswer {
        RecipientAnswer {
            customer_id,
            uuid: format!("u{customer_id}"),
            email_address: format!("c{customer_id}@x.nl"),
            status,
        }
    }

    #[test]
    fn the_first_answer_comes_back_only_when_every_recipient_was_sent_before() {
        use RecipientStatus::Queued;
        let all = [Some((7, answer(1, Queued))), Some((7, answer(2, Queued)))];
        let again = earlier_answer(&all).unwrap();
        assert_eq!(again.broadcast_id, 7);
        assert_eq!(again.recipients, vec![answer(1, Queued), answer(2, Queued)]);
        assert!(earlier_answer(&[Some((7, answer(1, Queued))), None]).is_none());
        assert!(earlier_answer(&[]).is_none());
    }

    #[test]
    fn mailability_follows_the_seed() {
        let ok = Standing::default();
        assert!(mailable(&ok));
        for not in [
            Standing {
                bounce_count_hard: 1,
                ..ok
            },
            Standing {
                bounce_count_soft: 5,
                ..ok
            },
            Standing {
                complaints: 1,
                ..ok
            },
            Standing {
                unsubscribed: true,
                ..ok
            },
        ] {
            assert!(!mailable(&not), "{not:?}");
        }
        assert!(mailable(&Standing {
            bounce_count_soft: 4,
            ..ok
        }));
    }
}
