//! Recording a trigger: broadcast, customers, personal broadcasts and their `broadcasts`
//! events in the outbox, in one piece of the writer's work (checks before writes).

use super::SqliteStore;
use crate::event::now;
use crate::store::{
    duplicate_of, earlier_answer, Claimed, NewRecipient, Queue, RecipientAnswer, TriggerAnswer,
};
use rusqlite::{params, Connection, OptionalExtension};

impl SqliteStore {
    /// Records a trigger and answers with its broadcast and recipients. A repeated
    /// idempotency key (the whole trigger's, or every recipient's) returns the first answer
    /// and records nothing. Also returns the events leased to this process.
    pub async fn record_trigger(
        &self,
        mapping: String,
        idempotency_key: Option<String>,
        recipients: Vec<NewRecipient>,
        queue: Queue,
    ) -> anyhow::Result<(TriggerAnswer, Vec<Claimed>)> {
        self.call(move |c| {
            let queue = super::outbox::effective(c, queue)?;
            let mut leased = Vec::new();
            let answer = record(
                c,
                &mapping,
                idempotency_key.as_deref(),
                recipients,
                (queue, &mut leased),
            )?;
            Ok((answer, leased))
        })
        .await
    }
}

fn record(
    c: &Connection,
    mapping: &str,
    idempotency_key: Option<&str>,
    recipients: Vec<NewRecipient>,
    (queue, leased): (Queue, &mut Vec<Claimed>),
) -> anyhow::Result<TriggerAnswer> {
    if let Some(key) = idempotency_key {
        let stored: Option<String> = c
            .prepare_cached("SELECT response FROM broadcasts WHERE idempotency_key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?;
        if let Some(response) = stored {
            return Ok(serde_json::from_str(&response)?);
        }
    }
    let earlier = recipients
        .iter()
        .map(|r| match &r.idempotency_key {
            Some(k) => earlier_send(c, k),
            None => Ok(None),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(answer) = earlier_answer(&earlier) {
        return Ok(answer);
    }

    let ts = now();
    let broadcast_id: i64 = c
        .prepare_cached(
            "INSERT INTO broadcasts (mapping, created_at, idempotency_key) VALUES (?1, ?2, ?3) RETURNING id",
        )?
        .query_row(params![mapping, ts, idempotency_key], |r| r.get(0))?;
    let mut answers: Vec<RecipientAnswer> = Vec::new();
    for (r, before) in recipients.into_iter().zip(earlier) {
        if let Some(duplicate) = duplicate_of(before, &answers, None) {
            answers.push(duplicate);
            continue;
        }
        let (customer_id, mailable) = customer(c, &r.email, &r.external_id, ts)?;
        if let Some(duplicate) = duplicate_of(None, &answers, Some(customer_id)) {
            answers.push(duplicate);
            continue;
        }
        let (answer, event) =
            insert_personal(c, r, broadcast_id, (customer_id, mailable), ts, queue)?;
        answers.push(answer);
        leased.extend(event);
    }
    let answer = TriggerAnswer {
        broadcast_id,
        recipients: answers,
    };
    if idempotency_key.is_some() {
        c.prepare_cached("UPDATE broadcasts SET response = ?1 WHERE id = ?2")?
            .execute(params![serde_json::to_string(&answer)?, broadcast_id])?;
    }
    Ok(answer)
}

/// One personal broadcast and, when the customer is mailable, its event in the outbox (a
/// suppressed send is recorded but neither sent nor reported). Returns the event if leased.
fn insert_personal(
    c: &Connection,
    r: NewRecipient,
    broadcast_id: i64,
    (customer_id, mailable): (i64, bool),
    ts: i64,
    queue: Queue,
) -> anyhow::Result<(RecipientAnswer, Option<Claimed>)> {
    let status = if mailable { "queued" } else { "suppressed" };
    let uuid = crate::event::new_uuid();
    let mut event = r.event;
    event.broadcast_id = broadcast_id;
    event.customer_id = customer_id;
    event.uuid = uuid.clone();
    event.broadcast_timestamp = ts;
    event.metric_timestamp = ts;
    let payload = serde_json::to_string(&event)?;
    c.prepare_cached(
        "INSERT INTO personal_broadcasts (broadcast_id, customer_id, uuid, email, status, manual_options, event, idempotency_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        broadcast_id,
        customer_id,
        uuid,
        r.email,
        status,
        serde_json::to_string(&r.manual_options)?,
        payload,
        r.idempotency_key
    ])?;
    let leased = if mailable {
        let new = super::outbox::NewEvent {
            uuid: &uuid,
            metric: "broadcasts",
            external_id: None,
        };
        super::outbox::enqueue(c, new, |_| Ok(payload), queue)?.1
    } else {
        None
    };
    let answer = RecipientAnswer {
        customer_id,
        uuid,
        email_address: r.email,
        status: status.into(),
    };
    Ok((answer, leased))
}

/// The earlier send of a recipient with this idempotency key: (broadcast id, its answer).
fn earlier_send(c: &Connection, key: &str) -> anyhow::Result<Option<(i64, RecipientAnswer)>> {
    Ok(c
        .prepare_cached(
            "SELECT broadcast_id, customer_id, uuid, email, status FROM personal_broadcasts WHERE idempotency_key = ?1",
        )?
        .query_row([key], |r| {
            Ok((
                r.get(0)?,
                RecipientAnswer {
                    customer_id: r.get(1)?,
                    uuid: r.get(2)?,
                    email_address: r.get(3)?,
                    status: r.get(4)?,
                },
            ))
        })
        .optional()?)
}

/// Whether a customer may be mailed (the seed: hard bounces > 0, soft bounces > 4, a
/// complaint or an unsubscribe make a customer not mailable).
const MAILABLE: &str =
    "bounce_count_hard = 0 AND bounce_count_soft <= 4 AND complaints = 0 AND unsubscribed = 0";

/// The customer with this external id (or, without one, this email), created if new, and
/// whether it is mailable.
/// The lookup of a customer by external id or by email. Both go through an index: the
/// external ids' index is partial (`WHERE external_id <> ''`), which SQLite uses only when the
/// query says the same (a plain `external_id = ?1` scanned the whole table: quadratic bulk
/// triggers).
fn customer_query(by_external_id: bool) -> String {
    let by = if by_external_id {
        "external_id = ?1 AND external_id <> ''"
    } else {
        "email = ?1"
    };
    format!("SELECT id, {MAILABLE} FROM customers WHERE {by} ORDER BY id LIMIT 1")
}

fn customer(
    c: &Connection,
    email: &str,
    external_id: &str,
    ts: i64,
) -> anyhow::Result<(i64, bool)> {
    let sql = customer_query(!external_id.is_empty());
    let key = if external_id.is_empty() {
        email
    } else {
        external_id
    };
    let found: Option<(i64, bool)> = c
        .prepare_cached(&sql)?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some(found) = found {
        return Ok(found);
    }
    let id = c
        .prepare_cached(
            "INSERT INTO customers (email, external_id, created_at) VALUES (?1, ?2, ?3) RETURNING id",
        )?
        .query_row(params![email, external_id, ts], |r| r.get(0))?;
    Ok((id, true))
}

#[cfg(test)]
mod tests {
    use super::customer_query;

    #[test]
    fn customers_are_found_through_an_index() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        super::super::migrate::run(&c).unwrap();
        for (by_external_id, index) in [(true, "customers_external_id"), (false, "customers_email")]
        {
            let plan: Vec<String> = c
                .prepare(&format!(
                    "EXPLAIN QUERY PLAN {}",
                    customer_query(by_external_id)
                ))
                .unwrap()
                .query_map(["x"], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains(&format!("USING INDEX {index}")), "{plan}");
            assert!(!plan.contains("SCAN"), "{plan}");
        }
    }
}
