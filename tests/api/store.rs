//! The store through its one interface, on both backends: the counters `/metrics` reads
//! agree with the rows after every kind of change, and databases written by the previous
//! schema keep working after its migration.

use crate::backend::{current, each_backend, fresh_database, Backend, Database};
use pegabridge::event::Common;
use pegabridge::intake::Unknown;
use pegabridge::recording::{ActivityStatus, NewRecipient, RecipientStatus, TriggerAnswer};
use pegabridge::store::{Attempt, Completion, Done, Outcome, Purge, Replay, Status, Storage};
use std::collections::HashMap;

/// A store on the current backend (the guard keeps its database).
pub async fn open_store() -> (Storage, tempfile::TempDir, Option<Database>) {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database().await;
    let url = match &database {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}/store.db", dir.path().display()),
    };
    let store = Storage::connect(&url, "normal", 4).await.unwrap();
    (store, dir, database)
}

pub fn common() -> Common {
    serde_json::from_value(serde_json::json!({
        "portal_id": 1, "portal_name": "p", "brand_id": 1, "brand_name": "b",
        "metric": "broadcasts", "metric_id": 0, "metric_timestamp": 0, "customer_id": 0,
        "external_id": "", "campaign_id": 1, "campaign_name": "c",
        "campaign_object_id": 1, "broadcast_id": 0, "broadcast_timestamp": 0,
        "broadcast_type": "MAIL", "broadcast_event_type": "SINGLEMAIL",
        "broadcast_manual_options": {"OfferID": "O-1"}, "sub_type": "SINGLEMAIL", "content_id": 1,
        "email_domain": "x.nl", "mailing_type": "regular", "test_mailing": false,
        "email_address_override": false, "uuid": "u",
    }))
    .unwrap()
}

fn recipient(n: usize) -> NewRecipient {
    NewRecipient {
        email: format!("c{n}@x.nl"),
        external_id: format!("CUST-{n}"),
        idempotency_key: None,
        manual_options: pegabridge::event::ManualOptions::new(&common().broadcast_manual_options),
        shared: std::sync::Arc::new(common()),
    }
}

/// The answer to a trigger of the mapping `m` for `recipients`, recorded.
async fn triggered(store: &Storage, recipients: Vec<NewRecipient>) -> TriggerAnswer {
    store
        .record_trigger("m".into(), None, recipients)
        .await
        .unwrap()
}

/// `n` recipients triggered with both sinks configured: a row of each event for each.
async fn triggered_to_both_sinks(store: &Storage, n: usize) {
    use pegabridge::store::{Lane, Lanes};
    let both = Lanes::of([Lane::Pega, Lane::Kafka]);
    store.outbox().set_lanes(both).await.unwrap();
    triggered(store, (0..n).map(recipient).collect()).await;
}

/// The statuses as the rows have them.
async fn counted(store: &Storage) -> HashMap<Status, i64> {
    let mut counts = HashMap::new();
    for d in store.outbox().deliveries(None, 100_000).await.unwrap() {
        *counts.entry(d.status).or_insert(0) += 1;
    }
    counts
}

/// The counters `/metrics` reads agree with the rows.
async fn assert_counters_agree(store: &Storage, step: &str) {
    let rows = counted(store).await;
    let stats = store.outbox().outbox_stats().await.unwrap();
    let from_counters = [
        (Status::Pending, stats.pending),
        (Status::Inflight, stats.inflight),
        (Status::Delivered, stats.delivered),
        (Status::Dead, stats.dead),
        (Status::Filtered, stats.filtered),
    ];
    for (status, n) in from_counters {
        assert_eq!(
            n,
            rows.get(&status).copied().unwrap_or(0),
            "{step}: {status} counted {n}, rows {rows:?}"
        );
    }
}

fn outcome(ids: Vec<i64>, completion: Completion) -> Outcome {
    Outcome {
        ids,
        attempt: Some(Attempt {
            at_ms: 0,
            http_status: Some(200),
            duration_ms: 1,
            outcome: pegabridge::store::AttemptOutcome::Retry,
            detail: String::new(),
        }),
        completion,
    }
}

#[tokio::test]
async fn the_counters_follow_every_change_of_status() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let recipients = (0..10).map(recipient).collect();
        let answer = triggered(&store, recipients).await;
        assert_counters_agree(&store, "queued").await;
        assert_eq!(store.outbox().outbox_stats().await.unwrap().pending, 10);
        // A batch of activities writes its events in one statement.
        let opens = (answer.recipients.iter().take(3))
            .map(|r| {
                serde_json::json!({"metric": "opens", "broadcast_id": answer.broadcast_id,
                    "customer_id": r.customer_id})
            })
            .collect();
        let opens = pegabridge::activity::parse(serde_json::Value::Array(opens)).unwrap();
        store
            .record_activities(opens, Unknown::Refuse)
            .await
            .unwrap();
        assert_counters_agree(&store, "activities").await;
        assert_eq!(store.outbox().outbox_stats().await.unwrap().pending, 13);

        let claimed = store
            .outbox()
            .claim(pegabridge::store::Lane::Pega, 8, 60)
            .await
            .unwrap();
        assert_counters_agree(&store, "claimed").await;
        let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
        store
            .outbox()
            .complete(vec![
                outcome(ids[0..3].to_vec(), Completion::Delivered),
                outcome(ids[3..5].to_vec(), Completion::Dead),
                outcome(ids[5..6].to_vec(), Completion::Filtered),
                outcome(ids[6..8].to_vec(), Completion::Retry { next_at_ms: 0 }),
            ])
            .await
            .unwrap();
        assert_counters_agree(&store, "completed").await;
        let stats = store.outbox().outbox_stats().await.unwrap();
        assert_eq!(
            (stats.delivered, stats.dead, stats.filtered, stats.pending),
            (3, 2, 1, 7)
        );

        assert_eq!(
            store
                .outbox()
                .replay(Replay::Status(Done::Dead))
                .await
                .unwrap(),
            2
        );
        assert_counters_agree(&store, "replayed").await;
        let far = pegabridge::event::now() + 10;
        assert_eq!(
            store
                .purge_all(Purge::Delivered, far, 2, || false)
                .await
                .unwrap(),
            3
        );
        assert_counters_agree(&store, "purged").await;
        assert_eq!(store.outbox().outbox_stats().await.unwrap().delivered, 0);
    })
    .await;
}

/// An event's attempts read as its history, in order, on both backends (SQLite keeps the
/// attempt that delivered an event in the event's row, the others in `attempts`): a retry
/// shared by a round of three, a delivery alone and one shared by two, then a replay and the
/// next delivery, the first still there.
#[tokio::test]
async fn an_events_attempts_read_as_its_history_through_a_replay() {
    use pegabridge::store::{AttemptOutcome, Lane};
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        triggered(&store, (0..3).map(recipient).collect()).await;
        let attempt = |at_ms, outcome, http_status, detail: &str| Attempt {
            at_ms,
            http_status: Some(http_status),
            duration_ms: at_ms / 100,
            outcome,
            detail: detail.into(),
        };
        let claimed = store.outbox().claim(Lane::Pega, 10, 60).await.unwrap();
        let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
        assert_eq!(ids.len(), 3);
        let retry = attempt(1000, AttemptOutcome::Retry, 503, "busy");
        store
            .outbox()
            .complete(vec![Outcome {
                ids: ids.clone(),
                attempt: Some(retry.clone()),
                completion: Completion::Retry { next_at_ms: 0 },
            }])
            .await
            .unwrap();
        assert_eq!(
            store
                .outbox()
                .claim(Lane::Pega, 10, 60)
                .await
                .unwrap()
                .len(),
            3
        );
        let alone = attempt(2000, AttemptOutcome::Delivered, 200, "ok");
        let shared = attempt(2100, AttemptOutcome::Delivered, 201, "");
        store
            .outbox()
            .complete(vec![
                Outcome {
                    ids: vec![ids[0]],
                    attempt: Some(alone.clone()),
                    completion: Completion::Delivered,
                },
                Outcome {
                    ids: ids[1..].to_vec(),
                    attempt: Some(shared.clone()),
                    completion: Completion::Delivered,
                },
            ])
            .await
            .unwrap();
        assert_counters_agree(&store, "delivered").await;
        let seen = |a: &Attempt| {
            (
                a.at_ms,
                a.http_status,
                a.duration_ms,
                a.outcome,
                a.detail.clone(),
            )
        };
        let history = |uuid: String| {
            let store = store.clone();
            async move {
                let (row, _, attempts) = store
                    .outbox()
                    .delivery(uuid, Some(Lane::Pega))
                    .await
                    .unwrap()
                    .unwrap();
                (
                    row.status,
                    row.attempts,
                    attempts.iter().map(seen).collect::<Vec<_>>(),
                )
            }
        };
        assert_eq!(
            history(claimed[0].uuid.clone()).await,
            (Status::Delivered, 2, vec![seen(&retry), seen(&alone)])
        );
        for c in &claimed[1..] {
            assert_eq!(
                history(c.uuid.clone()).await,
                (Status::Delivered, 2, vec![seen(&retry), seen(&shared)])
            );
        }
        let replayed = store.outbox().replay(Replay::Uuid(claimed[0].uuid.clone()));
        assert_eq!(replayed.await.unwrap(), 1);
        assert_counters_agree(&store, "replayed").await;
        let again = store.outbox().claim(Lane::Pega, 10, 60).await.unwrap();
        assert_eq!(again.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ids[0]]);
        let next = attempt(3000, AttemptOutcome::Delivered, 200, "again");
        store
            .outbox()
            .complete(vec![Outcome {
                ids: vec![ids[0]],
                attempt: Some(next.clone()),
                completion: Completion::Delivered,
            }])
            .await
            .unwrap();
        assert_eq!(
            history(claimed[0].uuid.clone()).await,
            (
                Status::Delivered,
                1,
                vec![seen(&retry), seen(&alone), seen(&next)]
            )
        );
        assert_counters_agree(&store, "delivered again").await;
    })
    .await;
}

/// A lease that ran out is claimed again, on an ordered lane (together with pending rows
/// after it) and on the others, and the counters still agree with the rows: an expired lease
/// was in flight already (PostgreSQL's claims count their own changes).
#[tokio::test]
async fn an_expired_lease_is_claimed_again_and_the_counters_agree() {
    use pegabridge::store::Lane;
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        triggered_to_both_sinks(&store, 4).await;
        for lane in [Lane::Pega, Lane::Kafka] {
            // Leased for no time: the lease runs out at the next millisecond.
            let leased = store.outbox().claim(lane, 2, 0).await.unwrap();
            assert_eq!(leased.len(), 2, "{lane:?}");
            assert_counters_agree(&store, "leased for no time").await;
            let start = std::time::Instant::now();
            let again = loop {
                let again = store.outbox().claim(lane, 10, 60).await.unwrap();
                if again.len() > 2 || start.elapsed() > std::time::Duration::from_secs(5) {
                    break again;
                }
                // Claimed before the lease ran out (the pending rows, on Pega's lane; nothing
                // on an ordered one): made due again, and tried once more.
                store
                    .outbox()
                    .complete(vec![outcome(
                        again.iter().map(|c| c.id).collect(),
                        Completion::Retry { next_at_ms: 0 },
                    )])
                    .await
                    .unwrap();
            };
            let ids: Vec<i64> = again.iter().map(|c| c.id).collect();
            assert_eq!(
                ids.len(),
                4,
                "{lane:?}: the expired leases and the pending rows"
            );
            assert!(leased.iter().all(|l| ids.contains(&l.id)), "{lane:?}");
            assert_counters_agree(&store, "claimed again").await;
            let stats = store.outbox().outbox_stats().await.unwrap();
            let open = if lane == Lane::Pega { 4 } else { 8 };
            assert_eq!(
                (stats.inflight, stats.pending),
                (open, 8 - open),
                "{lane:?}"
            );
        }
    })
    .await;
}

/// A claim takes what is due and nothing else: leases that ran out and pending events whose
/// attempt is due, not a lease still running nor a retry not yet due, and the counters agree
/// (PostgreSQL reads both kinds of due event through one index in one statement, migration
/// 0014).
#[tokio::test]
async fn a_claim_takes_expired_leases_and_due_events_but_no_running_lease_or_later_retry() {
    use pegabridge::store::Lane;
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        triggered(&store, (0..6).map(recipient).collect()).await;
        let outbox = store.outbox();
        let running = outbox.claim(Lane::Pega, 1, 600).await.unwrap();
        let later = outbox.claim(Lane::Pega, 1, 600).await.unwrap();
        let far = pegabridge::outbox::now_ms() + 3_600_000;
        outbox
            .complete(vec![outcome(
                vec![later[0].id],
                Completion::Retry { next_at_ms: far },
            )])
            .await
            .unwrap();
        // Leased for no time (last: a claim after it could take them again).
        let expired = outbox.claim(Lane::Pega, 2, 0).await.unwrap();
        assert_eq!(expired.len(), 2);
        // The leases of no time run out at the next millisecond.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pegabridge::outbox::now_ms()
            <= expired.iter().map(|c| c.lease_until_ms).max().unwrap()
        {
            assert!(std::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        let claimed: Vec<i64> = outbox
            .claim(Lane::Pega, 100, 600)
            .await
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(
            claimed.len(),
            4,
            "2 expired leases and 2 pending: {claimed:?}"
        );
        for e in &expired {
            assert!(
                claimed.contains(&e.id),
                "the expired lease {} in {claimed:?}",
                e.id
            );
        }
        for not_due in [running[0].id, later[0].id] {
            assert!(!claimed.contains(&not_due), "{not_due} is not due");
        }
        assert_counters_agree(&store, "claimed").await;
        let stats = outbox.outbox_stats().await.unwrap();
        assert_eq!((stats.inflight, stats.pending), (5, 1));
    })
    .await;
}

/// A purged event takes its keys with it: an activity with the caller id of one purged is
/// recorded as new, and the purged one's uuid is found no more (PostgreSQL keeps the keys in
/// `outbox_keys`, migration 0014, which the purge empties too).
#[tokio::test]
async fn a_purged_activitys_caller_id_is_taken_as_new_again() {
    use pegabridge::store::Lane;
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let answer = triggered(&store, vec![recipient(0)]).await;
        let open = |tag: &str| {
            pegabridge::activity::parse(serde_json::json!({
                "id": tag, "metric": "opens", "broadcast_id": answer.broadcast_id,
                "customer_id": answer.recipients[0].customer_id,
            }))
            .unwrap()
        };
        let queued = |outcomes: Vec<pegabridge::recording::ActivityOutcome>| {
            let answers: Vec<_> = outcomes
                .iter()
                .filter_map(|o| o.answer().cloned())
                .collect();
            assert_eq!(answers.len(), 1);
            answers[0].clone()
        };
        let first = queued(
            store
                .record_activities(open("open-1"), Unknown::Refuse)
                .await
                .unwrap(),
        );
        assert_eq!(first.status, ActivityStatus::Queued);
        let claimed = store.outbox().claim(Lane::Pega, 10, 60).await.unwrap();
        store
            .outbox()
            .complete(vec![outcome(
                claimed.iter().map(|c| c.id).collect(),
                Completion::Delivered,
            )])
            .await
            .unwrap();
        let far = pegabridge::event::now() + 10;
        let purged = store.purge_all(Purge::Delivered, far, 10, || false).await;
        assert_eq!(purged.unwrap(), 2, "the send's event and the open's");
        let found = store.outbox().delivery(first.uuid.clone(), None).await;
        assert!(found.unwrap().is_none(), "purged: {}", first.uuid);
        let again = queued(
            store
                .record_activities(open("open-1"), Unknown::Refuse)
                .await
                .unwrap(),
        );
        assert_eq!(again.status, ActivityStatus::Queued, "new, not a duplicate");
        assert_ne!(again.uuid, first.uuid);
        assert_counters_agree(&store, "after the purge").await;
    })
    .await;
}

/// On PostgreSQL the age of the oldest open event is the earliest of each lane's first open
/// event by id (migration 0014 dropped the index of open events by age): a done event older
/// than all does not count, and the oldest may be on either lane.
#[tokio::test]
async fn the_oldest_open_event_on_postgres_is_the_earliest_of_each_lanes_first() {
    use sqlx::Connection;
    // (Only with PEGABRIDGE_SKIP_POSTGRES=1, which postgres_url says on stderr.)
    let Some(server) = crate::backend::postgres_url() else {
        return;
    };
    let db = crate::backend::create_database(&server).await;
    let store = Storage::connect(&db.url, "normal", 2).await.unwrap();
    let now = pegabridge::outbox::now_ms() / 1000;
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    // Inserted oldest first, as the store does; the oldest of all is done.
    for (uuid, sink, status, age) in [
        ("d", "pega", "delivered", 900),
        ("k", "kafka", "pending", 500),
        ("p", "pega", "inflight", 300),
        ("q", "pega", "pending", 100),
    ] {
        sqlx::query("INSERT INTO outbox (uuid, metric, next_attempt_at, created_at, created_ms, status, sink) VALUES ($1, 'opens', 0, $2, 0, $3, $4)")
            .bind(uuid)
            .bind(now - age)
            .bind(status)
            .bind(sink)
            .execute(&mut c)
            .await
            .unwrap();
    }
    let oldest = || async {
        let stats = store.outbox().outbox_stats().await.unwrap();
        stats.oldest_pending_age_secs
    };
    let age = oldest().await;
    assert!((500..510).contains(&age), "{age}");
    sqlx::query("UPDATE outbox SET status = 'delivered' WHERE uuid = 'k'")
        .execute(&mut c)
        .await
        .unwrap();
    let age = oldest().await;
    assert!((300..310).contains(&age), "{age}");
    drop(c);
    drop(store);
    drop(db);
}

/// A trigger whose recipients were partly sent before (keyed: InteractionID) answers those
/// as duplicates of their first send, in their place, and records the others. (PostgreSQL
/// reads every key's earlier send in one statement.)
#[tokio::test]
async fn a_trigger_repeating_some_keyed_recipients_answers_each_in_its_place() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let keyed = |n: usize| NewRecipient {
            idempotency_key: Some(format!("K-{n}")),
            ..recipient(n)
        };
        let first = triggered(&store, vec![keyed(1), keyed(2)]).await;
        let second = triggered(&store, vec![keyed(3), keyed(2), keyed(4)]).await;
        let statuses: Vec<_> = second.recipients.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [
                RecipientStatus::Queued,
                RecipientStatus::Duplicate,
                RecipientStatus::Queued
            ]
        );
        assert_eq!(second.recipients[1].uuid, first.recipients[1].uuid);
        assert_ne!(second.recipients[0].uuid, second.recipients[2].uuid);
        assert_eq!(store.outbox().outbox_stats().await.unwrap().pending, 4);
    })
    .await;
}

/// A bulk trigger is written a chunk at a time on PostgreSQL (its personal broadcasts and
/// events held in memory until a thousand are queued): every recipient's personal broadcast
/// and event arrive, the event's payload read from its personal broadcast.
#[tokio::test]
async fn a_trigger_of_thousands_writes_every_personal_broadcast_and_event() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let recipients = (0..2_500).map(recipient).collect();
        let answer = triggered(&store, recipients).await;
        assert_counters_agree(&store, "queued").await;
        let claimed = store
            .outbox()
            .claim(pegabridge::store::Lane::Pega, 3_000, 60)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2_500);
        let mut uuids: Vec<&str> = answer.recipients.iter().map(|r| r.uuid.as_str()).collect();
        uuids.sort_unstable();
        for c in &claimed {
            let event: serde_json::Value = serde_json::from_str(&c.payload).unwrap();
            assert_eq!(event["uuid"], c.uuid.as_str());
            assert!(uuids.binary_search(&c.uuid.as_str()).is_ok());
        }
    })
    .await;
}

/// A batch of activities is written all or nothing, also when an activity's `id` had the
/// events before it written early (to look the id up among them) and a later one fails. On
/// PostgreSQL an `id` beyond its B-tree's 2,704 bytes fails the batch's last statement (the
/// parser refuses such an id; the store is shown one here to fail late); SQLite takes it.
#[tokio::test]
async fn a_batch_of_activities_that_fails_at_its_end_writes_nothing() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let answer = triggered(&store, vec![recipient(1)]).await;
        let open = serde_json::json!({"metric": "opens", "broadcast_id": answer.broadcast_id,
            "customer_id": answer.recipients[0].customer_id});
        let mut batch = pegabridge::activity::parse(serde_json::json!([open, open, open])).unwrap();
        // The second's id has the first's event written to look it up; the third's fails.
        batch[1].external_id = Some("a-2".into());
        // Random, so that it does not compress below the limit.
        let long: String = (0..300)
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect();
        batch[2].external_id = Some(long);
        let recorded = store.record_activities(batch, Unknown::Refuse).await;
        let events = store.outbox().outbox_stats().await.unwrap().pending;
        if current() == Backend::Postgres {
            assert!(recorded.is_err(), "{recorded:?}");
            assert_eq!(events, 1, "only the trigger's event: no open was kept");
        } else {
            assert!(recorded.is_ok(), "{recorded:?}");
            assert_eq!(events, 4);
        }
        assert_counters_agree(&store, "after the batch").await;
    })
    .await;
}

/// A trigger's customers are found or created a thousand at a time (PostgreSQL: a statement
/// for each kind of key, each key once): every recipient is answered with its own customer,
/// known or new, by external id or by email, a repeat of one within a chunk or across
/// chunks as a duplicate, and a customer who unsubscribed is suppressed.
#[tokio::test]
async fn a_bulk_trigger_answers_every_recipient_with_its_own_customer() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let by_email = |n: usize| NewRecipient {
            external_id: String::new(),
            ..recipient(n)
        };
        let first = triggered(&store, vec![recipient(1), recipient(2), by_email(3)]).await;
        let known = |i: usize| first.recipients[i].customer_id;
        let unsubscribe = serde_json::json!([{"metric": "unsubscribes",
            "broadcast_id": first.broadcast_id, "customer_id": known(1)}]);
        let unsubscribe = pegabridge::activity::parse(unsubscribe).unwrap();
        store
            .record_activities(unsubscribe, Unknown::Refuse)
            .await
            .unwrap();

        // 2,100 recipients: new ones by external id and by email, among them the known.
        let mut recipients: Vec<NewRecipient> = (100..2_200)
            .map(|n| {
                if n % 2 == 0 {
                    recipient(n)
                } else {
                    by_email(n)
                }
            })
            .collect();
        recipients[0] = by_email(3);
        recipients[1] = recipient(2);
        recipients[2] = recipient(1);
        // CUST-1 again in the same chunk, with another email: the same customer.
        recipients[3] = NewRecipient {
            email: "other@x.nl".into(),
            ..recipient(1)
        };
        // A new customer by email twice in one chunk, and a known one in a later chunk.
        recipients[9] = by_email(107);
        recipients[1_500] = by_email(3);
        let answer = triggered(&store, recipients.clone()).await;
        let r = &answer.recipients;
        assert_eq!(r.len(), 2_100);
        assert_eq!(r[0].customer_id, known(2));
        assert_eq!(r[0].status, RecipientStatus::Queued);
        assert_eq!(r[1].customer_id, known(1));
        assert_eq!(r[1].status, RecipientStatus::Suppressed);
        assert_eq!(r[2].customer_id, known(0));
        assert_eq!(r[2].status, RecipientStatus::Queued);
        assert_eq!(r[3].status, RecipientStatus::Duplicate);
        assert_eq!((r[3].customer_id, &r[3].uuid), (known(0), &r[2].uuid));
        assert_eq!(r[9].status, RecipientStatus::Duplicate);
        assert_eq!(
            (r[9].customer_id, &r[9].uuid),
            (r[7].customer_id, &r[7].uuid)
        );
        assert_eq!(r[1_500].status, RecipientStatus::Duplicate);
        assert_eq!(
            (r[1_500].customer_id, &r[1_500].uuid),
            (known(2), &r[0].uuid)
        );
        // Every other recipient is a new customer of its own, queued.
        let known_ids = [known(0), known(1), known(2)];
        let mut new_ids = std::collections::HashSet::new();
        for (i, a) in r.iter().enumerate() {
            if [0, 1, 2, 3, 9, 1_500].contains(&i) {
                continue;
            }
            assert_eq!(a.status, RecipientStatus::Queued, "{i}");
            assert_eq!(a.email_address, recipients[i].email, "{i}");
            assert!(!known_ids.contains(&a.customer_id), "{i}");
            assert!(new_ids.insert(a.customer_id), "{i}: {}", a.customer_id);
        }
        // Found again by a second trigger: the same customers.
        let again = triggered(&store, recipients[4..10].to_vec()).await;
        let ids = |a: &[pegabridge::recording::RecipientAnswer]| -> Vec<i64> {
            a.iter().map(|r| r.customer_id).collect()
        };
        assert_eq!(ids(&again.recipients), ids(&r[4..10]));
    })
    .await;
}

#[tokio::test]
async fn a_recipient_without_a_customer_id_is_not_joined_to_a_customer_who_has_one() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let with_id = triggered(&store, vec![recipient(1)]).await;
        let mut without = recipient(1);
        without.external_id = String::new();
        let first = triggered(&store, vec![without.clone()]).await;
        let again = triggered(&store, vec![without]).await;
        let id = |a: &TriggerAnswer| a.recipients[0].customer_id;
        assert_ne!(id(&with_id), id(&first), "the same email, not the same key");
        assert_eq!(id(&first), id(&again), "found again by email");
        assert_eq!(first.recipients[0].status, RecipientStatus::Queued);
    })
    .await;
}

/// Rows as the previous schema (SQLite 5, PostgreSQL 3) wrote them: a customer with an
/// external id, a personal broadcast with its manual options column, its delivered
/// `broadcasts` event, and an open with a caller's id whose event is pending.
const SQLITE_OLD_ROWS: &str = "
INSERT INTO customers (id, email, external_id, created_at) VALUES (7, 'c1@x.nl', 'CUST-1', 0);
INSERT INTO broadcasts (id, mapping, created_at) VALUES (3, 'm', 0);
INSERT INTO personal_broadcasts (broadcast_id, customer_id, uuid, email, status, manual_options, event)
  VALUES (3, 7, 'pb-3-7', 'c1@x.nl', 'queued', '{}', '{EVENT}');
INSERT INTO outbox (id, uuid, metric, status, next_attempt_at, created_at, created_ms)
  VALUES (40, 'pb-3-7', 'broadcasts', 'delivered', 0, 0, 0),
         (41, 'u-41', 'opens', 'pending', 0, 0, 0);
INSERT INTO outbox_payloads (id, payload) VALUES (40, '{\"metric_id\": 0}'), (41, '{\"metric_id\": 41}');
UPDATE outbox SET external_id = 'open-1' WHERE id = 41;
";

const POSTGRES_OLD_ROWS: &str = "
INSERT INTO customers (id, email, external_id, created_at) VALUES (7, 'c1@x.nl', 'CUST-1', 0);
INSERT INTO broadcasts (id, mapping, created_at) VALUES (3, 'm', 0);
INSERT INTO personal_broadcasts (broadcast_id, customer_id, uuid, email, status, manual_options, event)
  VALUES (3, 7, 'pb-3-7', 'c1@x.nl', 'queued', '{}', '{EVENT}');
INSERT INTO activities (id, external_id, uuid, metric, broadcast_id, customer_id, created_at)
  VALUES (900, 'open-1', 'u-41', 'opens', 3, 7, 0);
INSERT INTO outbox (id, uuid, metric, payload, status, next_attempt_at, created_at, created_ms)
  VALUES (40, 'pb-3-7', 'broadcasts', '{\"metric_id\": 0}', 'delivered', 0, 0, 0),
         (41, 'u-41', 'opens', '{\"metric_id\": 900}', 'pending', 0, 0, 0);
SELECT setval(pg_get_serial_sequence('customers', 'id'), 7);
SELECT setval(pg_get_serial_sequence('broadcasts', 'id'), 3);
SELECT setval(pg_get_serial_sequence('outbox', 'id'), 41);
";

/// The migrations of the previous schema, as files.
fn old_migrations(backend: &str, count: usize) -> Vec<(String, String)> {
    let dir = crate::helpers::root().join("migrations").join(backend);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .take(count)
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// Writes a database at the previous schema with [`SQLITE_OLD_ROWS`] or
/// [`POSTGRES_OLD_ROWS`]; returns its URL.
async fn old_database(dir: &std::path::Path, db: Option<&Database>) -> String {
    let event = serde_json::to_string(&common())
        .unwrap()
        .replace('\'', "''");
    match db {
        None => {
            let path = dir.join("old.db");
            let c = rusqlite::Connection::open(&path).unwrap();
            for (_, sql) in old_migrations("sqlite", 5) {
                c.execute_batch(&sql).unwrap();
            }
            c.execute_batch("PRAGMA user_version = 5").unwrap();
            c.execute_batch(&SQLITE_OLD_ROWS.replace("{EVENT}", &event))
                .unwrap();
            format!("sqlite://{}", path.display())
        }
        Some(db) => {
            let files = dir.join("pg-migrations");
            std::fs::create_dir_all(&files).unwrap();
            for (name, sql) in old_migrations("postgres", 3) {
                std::fs::write(files.join(name), sql).unwrap();
            }
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            sqlx::migrate::Migrator::new(files.as_path())
                .await
                .unwrap()
                .run(&pool)
                .await
                .unwrap();
            sqlx::raw_sql(&POSTGRES_OLD_ROWS.replace("{EVENT}", &event))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            db.url.clone()
        }
    }
}

#[tokio::test]
async fn a_database_of_the_previous_schema_keeps_its_customers_events_and_activity_ids() {
    each_backend(|| async {
        let dir = tempfile::tempdir().unwrap();
        let db = fresh_database().await;
        let url = old_database(dir.path(), db.as_ref()).await;
        let store = Storage::connect(&url, "normal", 4).await.unwrap();

        // The counters start from the rows there were.
        assert_counters_agree(&store, "migrated").await;
        let stats = store.outbox().outbox_stats().await.unwrap();
        assert_eq!((stats.pending, stats.delivered), (1, 1));
        // The customer is found again by its CustomerID.
        let answer = triggered(&store, vec![recipient(1)]).await;
        assert_eq!(answer.recipients[0].customer_id, 7);
        // A resend of the activity is answered with its first metric_id.
        let open = pegabridge::activity::parse(serde_json::json!({
            "id": "open-1", "metric": "opens", "broadcast_id": 3, "customer_id": 7,
        }))
        .unwrap();
        let again = store
            .record_activities(open.clone(), Unknown::Refuse)
            .await
            .unwrap();
        let again: Vec<_> = again.iter().filter_map(|o| o.answer().cloned()).collect();
        let first = if current() == Backend::Postgres {
            900
        } else {
            41
        };
        assert_eq!(
            (again[0].uuid.as_str(), again[0].metric_id, again[0].status),
            ("u-41", first, ActivityStatus::Duplicate)
        );
        // A new activity's metric_id is past every id given out before.
        let mut new = open;
        new[0].external_id = Some("open-2".into());
        let recorded = store.record_activities(new, Unknown::Refuse).await.unwrap();
        let recorded: Vec<_> = recorded
            .iter()
            .filter_map(|o| o.answer().cloned())
            .collect();
        assert_eq!(recorded[0].status, ActivityStatus::Queued);
        assert!(recorded[0].metric_id > first, "{}", recorded[0].metric_id);
        assert_counters_agree(&store, "after new work").await;
    })
    .await;
}

/// With two sinks every event has a row for each, tracked apart; the ordered (Kafka) lane is
/// claimed by creation order and stops at an event waiting for its retry or leased to
/// someone else: nothing later overtakes it. On both backends.
#[tokio::test]
async fn each_sink_has_its_own_row_and_an_ordered_lane_is_never_overtaken() {
    use pegabridge::store::Lane;
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        triggered_to_both_sinks(&store, 6).await;
        let rows = store.outbox().deliveries(None, 100).await.unwrap();
        assert_eq!(rows.len(), 12, "a row per event and sink");
        assert_eq!(rows.iter().filter(|r| r.sink == Lane::Kafka).count(), 6);

        // Pega's lane is claimed as before; the Kafka lane's rows stay pending meanwhile.
        let pega_claimed = store.outbox().claim(Lane::Pega, 100, 60).await.unwrap();
        assert_eq!(pega_claimed.len(), 6);
        let first = store.outbox().claim(Lane::Kafka, 2, 60).await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(first[0].id < first[1].id);
        // The first two are leased: nothing after them is claimed (another instance's).
        assert!(store
            .outbox()
            .claim(Lane::Kafka, 10, 60)
            .await
            .unwrap()
            .is_empty());
        // The first waits for a retry, the second is delivered: still nothing after the first.
        store
            .outbox()
            .complete(vec![
                outcome(
                    vec![first[0].id],
                    Completion::Retry {
                        next_at_ms: i64::MAX / 2,
                    },
                ),
                outcome(vec![first[1].id], Completion::Delivered),
            ])
            .await
            .unwrap();
        assert!(
            store
                .outbox()
                .claim(Lane::Kafka, 10, 60)
                .await
                .unwrap()
                .is_empty(),
            "a later event does not overtake a retry"
        );
        // Once it is due, it comes first, then the rest in order.
        store
            .outbox()
            .complete(vec![outcome(
                vec![first[0].id],
                Completion::Retry { next_at_ms: 0 },
            )])
            .await
            .unwrap();
        let next = store.outbox().claim(Lane::Kafka, 10, 60).await.unwrap();
        let ids: Vec<i64> = next.iter().map(|c| c.id).collect();
        assert_eq!(ids.len(), 5);
        assert_eq!(ids[0], first[0].id);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        // Each lane's row of one event is shown apart.
        let uuid = next[0].uuid.clone();
        let (kafka, ..) = store
            .outbox()
            .delivery(uuid.clone(), Some(Lane::Kafka))
            .await
            .unwrap()
            .unwrap();
        let (pega, ..) = store
            .outbox()
            .delivery(uuid.clone(), Some(Lane::Pega))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((kafka.sink, kafka.attempts), (Lane::Kafka, 2));
        assert_eq!((pega.sink, pega.status), (Lane::Pega, Status::Inflight));
        assert_counters_agree(&store, "two lanes").await;
        // A sink's dead letter replayed alone: the other sink's delivered row is not sent
        // again.
        let pega_ids: Vec<i64> = pega_claimed
            .iter()
            .filter(|c| c.uuid == uuid)
            .map(|c| c.id)
            .collect();
        let kafka_ids: Vec<i64> = next
            .iter()
            .filter(|c| c.uuid == uuid)
            .map(|c| c.id)
            .collect();
        store
            .outbox()
            .complete(vec![
                outcome(pega_ids, Completion::Delivered),
                outcome(kafka_ids, Completion::Dead),
            ])
            .await
            .unwrap();
        let replayed = store
            .outbox()
            .replay(pegabridge::store::Replay::DeadRow {
                uuid: uuid.clone(),
                lane: Lane::Kafka,
            })
            .await
            .unwrap();
        assert_eq!(replayed, 1);
        let row = |lane| {
            let store = store.clone();
            let uuid = uuid.clone();
            async move {
                store
                    .outbox()
                    .delivery(uuid, Some(lane))
                    .await
                    .unwrap()
                    .unwrap()
                    .0
                    .status
            }
        };
        assert_eq!(row(Lane::Kafka).await, Status::Pending);
        assert_eq!(row(Lane::Pega).await, Status::Delivered);
    })
    .await;
}

/// The console's search finds a personal broadcast by its InteractionID, email address,
/// customer (id and external id), its uuid and an event's uuid; its events come in order. On
/// both backends.
#[tokio::test]
async fn an_interaction_is_found_by_what_an_operator_knows_of_it() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let mut r = recipient(5);
        let mut options = r.manual_options.to_map();
        options.insert(
            "InteractionId".into(),
            serde_json::json!("-563481321460449721"),
        );
        r.manual_options = pegabridge::event::ManualOptions::new(&options);
        let answer = store
            .record_trigger("offers".into(), None, vec![r, recipient(6)])
            .await
            .unwrap();
        let (broadcast, customer) = (answer.broadcast_id, answer.recipients[0].customer_id);
        let open = pegabridge::activity::parse(serde_json::json!({
            "metric": "opens", "broadcast_id": broadcast, "customer_id": customer,
        }))
        .unwrap();
        let opened = store
            .record_activities(open, Unknown::Refuse)
            .await
            .unwrap();
        let open_uuid = opened[0].answer().unwrap().uuid.clone();
        let pb_uuid = answer.recipients[0].uuid.clone();
        for q in [
            "-563481321460449721".to_owned(),
            "c5@x.nl".to_owned(),
            "CUST-5".to_owned(),
            customer.to_string(),
            pb_uuid.clone(),
            open_uuid.clone(),
        ] {
            let found = store.backend().find_personal(q.clone()).await.unwrap();
            assert_eq!(found.len(), 1, "{q}: {found:?}");
            assert_eq!(
                (found[0].broadcast_id, found[0].customer_id),
                (broadcast, customer),
                "{q}"
            );
            assert_eq!(
                (found[0].mapping.as_str(), found[0].email.as_str()),
                ("offers", "c5@x.nl")
            );
        }
        assert!(store
            .backend()
            .find_personal("nobody".into())
            .await
            .unwrap()
            .is_empty());
        let events = store
            .backend()
            .personal_events(broadcast, customer)
            .await
            .unwrap();
        let uuids: Vec<&str> = events.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(
            uuids,
            [pb_uuid.as_str(), open_uuid.as_str()],
            "the send, then the open"
        );
    })
    .await;
}

/// `n` opens of the personal broadcast `(b, c)`, with caller's ids `{tag}-0`...
fn opens(b: i64, c: i64, tag: &str, n: usize) -> Vec<pegabridge::activity::Activity> {
    let raws: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"id": format!("{tag}-{i}"), "metric": "opens", "broadcast_id": b, "customer_id": c}))
        .collect();
    pegabridge::activity::parse(serde_json::Value::Array(raws)).unwrap()
}

/// A group commit does not wait out its window once every connection that sent a request
/// lately has one queued: a client sending one request at a time, or a few with a connection
/// each, would wait for nobody. A connection that sent nothing for a while (a client pool's
/// spare) is not counted. SQLite, on tokio's paused clock: a wait for the window shows as
/// its whole length gone by.
#[tokio::test(start_paused = true)]
async fn a_group_commits_at_once_when_each_connection_in_use_has_a_request_queued() {
    use futures::future::join_all;
    use pegabridge::store::group::{Connections, RECENT};
    use tokio::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/store.db", dir.path().display());
    let real = Storage::connect(&url, "normal", 4).await.unwrap();
    let window = std::time::Duration::from_secs(600);
    let connections = Connections::new();
    let store = real
        .clone()
        .with_group_commit(window, Some(connections.clone()));
    let sent = triggered(&real, (0..1).map(recipient).collect()).await;
    let (b, c) = (sent.broadcast_id, sent.recipients[0].customer_id);
    let store = &store;
    let in_use: Vec<_> = (0..3).map(|_| connections.connection()).collect();
    // A request on each connection in use, recorded; how long the three took.
    let three = |tag: &'static str| {
        in_use.iter().for_each(|c| c.request());
        let start = Instant::now();
        let answers = join_all((0..3).map(move |k| {
            store.record_activities(opens(b, c, &format!("{tag}{k}"), 1), Unknown::Refuse)
        }));
        async move {
            for answer in answers.await {
                assert_eq!(answer.unwrap().len(), 1);
            }
            start.elapsed()
        }
    };

    let took = three("a").await;
    assert!(
        took < window,
        "three in use, three requests: at once ({took:?})"
    );

    // A fourth connection sent a request (answered), and could send another.
    let fourth = connections.connection();
    fourth.request();
    let took = three("b").await;
    assert!(
        took >= window,
        "four in use, three requests: the window waited out ({took:?})"
    );

    // The fourth sent nothing since: two periods later it is a spare, no longer counted.
    in_use.iter().for_each(|c| c.request());
    tokio::time::advance(RECENT).await;
    let took = three("c").await;
    assert!(took < window, "the spare is not counted ({took:?})");
    assert_counters_agree(store, "grouped by connections").await;
}

/// Requests that arrive together are recorded in one transaction (group commit), and each
/// is answered with its own outcomes only, in its order; when one of them refuses an unknown
/// personal broadcast, it alone fails and the others are recorded. On both backends.
#[tokio::test]
async fn requests_arriving_together_share_one_commit_and_each_gets_its_own_answer() {
    use futures::future::join_all;
    use pegabridge::store::group::MAX_ACTIVITIES;
    each_backend(|| async {
        let (real, _dir, _db) = open_store().await;
        let counting = std::sync::Arc::new(crate::stepping::Hiccup::over(real.clone()));
        // A window no test waits for: each group below is committed because it is full.
        let store = Storage::over(counting.clone())
            .with_group_commit(std::time::Duration::from_secs(600), None);
        let sent = triggered(&real, (0..4).map(recipient).collect()).await;
        let b = sent.broadcast_id;
        let customers: Vec<i64> = sent.recipients.iter().map(|r| r.customer_id).collect();
        let per = MAX_ACTIVITIES / 4;
        let answers = join_all(customers.iter().enumerate().map(|(k, c)| {
            store.record_activities(opens(b, *c, &format!("r{k}"), per), Unknown::Refuse)
        }))
        .await;
        assert_eq!(counting.batches(), vec![MAX_ACTIVITIES], "one transaction");
        for (k, answer) in answers.into_iter().enumerate() {
            let answer = answer.unwrap();
            assert_eq!(answer.len(), per);
            let mut last = 0;
            for outcome in &answer {
                let a = outcome.answer().unwrap();
                assert_eq!(a.status, ActivityStatus::Queued);
                assert!(a.metric_id > last, "in the request's order");
                last = a.metric_id;
                let (_, event, _) = real
                    .outbox()
                    .delivery(a.uuid.clone(), None)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    event["customer_id"], customers[k],
                    "request {k}'s own event"
                );
            }
        }
        assert_counters_agree(&store, "grouped").await;

        // One request of a full group names a personal broadcast that does not exist.
        let (first, last) = (MAX_ACTIVITIES / 2 - 1, MAX_ACTIVITIES / 2);
        let unknown = opens(b + 1000, customers[0], "bad", 1);
        let answers = join_all([
            store.record_activities(opens(b, customers[1], "g1", first), Unknown::Refuse),
            store.record_activities(unknown, Unknown::Refuse),
            store.record_activities(opens(b, customers[2], "g2", last), Unknown::Refuse),
        ])
        .await;
        assert_eq!(answers[0].as_ref().unwrap().len(), first);
        assert!(
            matches!(
                answers[1],
                Err(pegabridge::store::StoreError::UnknownBroadcast { index: 0, .. })
            ),
            "{:?}",
            answers[1]
        );
        assert_eq!(answers[2].as_ref().unwrap().len(), last);
        // The group's transaction failed; each request was then recorded alone.
        assert_eq!(
            counting.batches()[1..],
            [MAX_ACTIVITIES, first, 1, last],
            "{:?}",
            counting.batches()
        );
        let stats = store.outbox().outbox_stats().await.unwrap();
        assert_eq!(
            stats.pending + stats.inflight,
            (4 + MAX_ACTIVITIES + first + last) as i64
        );
        assert_counters_agree(&store, "after the failed group").await;
    })
    .await;
}
