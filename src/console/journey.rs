//! An interaction's journey: its personal broadcast found by what the operator knows of it,
//! then the trigger, the mail, and every event with its attempts, oldest first.

use super::pages::{Journey, JourneyEvent};
use crate::outbox::Result;
use crate::store::Storage;

/// The most events shown of one personal broadcast.
const EVENTS_AT_MOST: usize = 200;

/// The journeys of the personal broadcasts `q` names (see `Store::find_personal`).
pub async fn find(store: &Storage, q: &str) -> Result<Vec<Journey>> {
    let mut out = Vec::new();
    for p in store.backend().find_personal(q.to_owned()).await? {
        let event: serde_json::Value = serde_json::from_str(&p.event).unwrap_or_default();
        let manual_options = event
            .get("broadcast_manual_options")
            .and_then(serde_json::Value::as_object)
            .cloned()
            .unwrap_or_default();
        let send = store.backend().send(p.uuid.clone()).await?;
        let mut events = Vec::new();
        let rows = store
            .backend()
            .personal_events(p.broadcast_id, p.customer_id)
            .await?;
        for (uuid, lane) in rows.into_iter().take(EVENTS_AT_MOST) {
            if let Some((delivery, event, attempts)) =
                store.outbox().delivery(uuid, Some(lane)).await?
            {
                events.push(JourneyEvent {
                    delivery,
                    event,
                    attempts,
                });
            }
        }
        out.push(Journey {
            mapping: p.mapping,
            triggered_at: p.triggered_at,
            email: p.email,
            manual_options,
            send,
            events,
        });
    }
    Ok(out)
}
