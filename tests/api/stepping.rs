//! The worker driven one round at a time (`try_deliver_next`), on both backends, against the
//! stand-in Pega over real HTTP: what each round did is asserted, and nothing waits for time
//! to pass: a retry is made due by advancing tokio's paused clock past its delay (the
//! outbox's clock follows tokio's), not by sleeping. The last test runs the worker as `serve`
//! does (`Worker::run`) and polls the store until what it waits for is recorded.

use crate::backend::each_backend;
use crate::pega::{start_pega, Pega};
use crate::store::{common, open_store};
use pegabridge::config::Settings;
use pegabridge::delivery::metrics::Metrics;
use pegabridge::delivery::{Step, Worker};
use pegabridge::recording::NewRecipient;
use pegabridge::store::{Done, Replay, Storage};
use std::sync::Arc;

/// Moves the clock past any retry delay of these tests (paused only while it moves, so the
/// HTTP exchanges run on real time and no timeout fires early).
async fn later() {
    later_by(5).await;
}

async fn later_by(secs: u64) {
    tokio::time::pause();
    tokio::time::advance(std::time::Duration::from_secs(secs)).await;
    tokio::time::resume();
}

/// A worker for `pega` on `store`: retries after 1 s, 3 attempts, and `more` `[pega]` keys.
fn worker(store: &Storage, pega: &Pega, more: &str) -> (Worker, tempfile::TempDir) {
    worker_at(store, &pega.url, &format!("timeout_secs = 2\n{more}"))
}

/// Like [`worker`], for a receiver at `url` (its path `/prweb/api/interactions`).
fn worker_at(store: &Storage, url: &str, more: &str) -> (Worker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pegabridge.toml");
    std::fs::write(
        &config,
        format!(
            "[pega]\nendpoint = \"{url}/prweb/api/interactions\"\n{more}\n\n[pega.retry]\nbase_ms = 1000\nmax_delay_secs = 60\nmax_attempts = 3\njitter = 0.0\n\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pega-secret\"\n",
        ),
    )
    .unwrap();
    let settings = Settings::load(Some(&config)).unwrap();
    let worker = Worker::new(
        store.clone(),
        Arc::new(settings.pega.clone()),
        Arc::new(Metrics::new()),
    )
    .unwrap()
    .expect("an endpoint is configured");
    (worker, dir)
}

async fn queue(store: &Storage, n: usize) {
    let recipients = (0..n)
        .map(|i| NewRecipient {
            email: format!("s{i}@x.nl"),
            external_id: format!("S-{i}"),
            idempotency_key: None,
            manual_options: pegabridge::event::ManualOptions::new(
                &common().broadcast_manual_options,
            ),
            shared: std::sync::Arc::new(common()),
        })
        .collect();
    store
        .record_trigger("m".into(), None, recipients)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_round_delivers_what_is_due_and_the_next_finds_nothing() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let pega = start_pega().await;
        let (worker, _config) = worker(&store, &pega, "concurrency = 2");
        queue(&store, 5).await;
        let step = worker.try_deliver_next().await.unwrap();
        assert_eq!(step.delivered, 5, "{step:?}");
        assert_eq!(pega.mock.event_count(), 5);
        assert!(worker.try_deliver_next().await.unwrap().is_empty());
        assert_eq!(pega.mock.event_count(), 5, "nothing posted twice");
    })
    .await;
}

#[tokio::test]
async fn a_refused_post_is_retried_in_the_next_round_then_delivered() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let pega = start_pega().await;
        let (worker, _config) = worker(&store, &pega, "");
        pega.mock.control(|b| b.fail_next = 1);
        queue(&store, 1).await;
        let first = worker.try_deliver_next().await.unwrap();
        assert_eq!((first.retried, first.delivered), (1, 0), "{first:?}");
        assert_eq!(pega.mock.event_count(), 0);
        let row = &store.outbox().deliveries(None, 10).await.unwrap()[0];
        assert!(
            row.last_error.is_some(),
            "the failure is shown while it stands"
        );
        assert!(
            worker.try_deliver_next().await.unwrap().is_empty(),
            "not due before its delay"
        );
        later().await;
        let second = worker.try_deliver_next().await.unwrap();
        assert_eq!(second.delivered, 1, "{second:?}");
        assert_eq!(pega.mock.event_count(), 1);
        let row = &store.outbox().deliveries(None, 10).await.unwrap()[0];
        assert_eq!(row.attempts, 2);
        assert_eq!(row.last_error, None, "delivered: no \"last error\" left");
    })
    .await;
}

#[tokio::test]
async fn exhausted_retries_make_a_dead_letter_that_a_replay_sends_once() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let pega = start_pega().await;
        let (worker, _config) = worker(&store, &pega, "");
        pega.mock.control(|b| b.fail_next = 3);
        queue(&store, 1).await;
        let mut rounds = Vec::new();
        for _ in 0..3 {
            rounds.push(worker.try_deliver_next().await.unwrap());
            later().await;
        }
        assert_eq!(
            rounds
                .iter()
                .map(|s| (s.retried, s.dead))
                .collect::<Vec<_>>(),
            [(1, 0), (1, 0), (0, 1)]
        );
        assert!(worker.try_deliver_next().await.unwrap().is_empty());
        // Replayed twice before the worker runs: sent once.
        assert_eq!(
            store
                .outbox()
                .replay(Replay::Status(Done::Dead))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .outbox()
                .replay(Replay::Status(Done::Dead))
                .await
                .unwrap(),
            0
        );
        let uuid = store.outbox().deliveries(None, 1).await.unwrap()[0]
            .uuid
            .clone();
        assert_eq!(
            store.outbox().replay(Replay::Uuid(uuid)).await.unwrap(),
            0,
            "pending"
        );
        assert_eq!(worker.try_deliver_next().await.unwrap().delivered, 1);
        assert!(worker.try_deliver_next().await.unwrap().is_empty());
        assert_eq!(pega.mock.event_count(), 1);
    })
    .await;
}

#[tokio::test]
async fn metrics_outside_the_activity_list_are_filtered_in_their_round() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let pega = start_pega().await;
        let (worker, _config) = worker(&store, &pega, "activities = [\"opens\"]");
        queue(&store, 2).await;
        let step = worker.try_deliver_next().await.unwrap();
        assert_eq!(
            step,
            Step {
                filtered: 2,
                ..Step::default()
            }
        );
        assert_eq!(pega.mock.requests(), 0);
        assert_eq!(store.outbox().outbox_stats().await.unwrap().filtered, 2);
    })
    .await;
}

#[tokio::test]
async fn paused_delivery_claims_nothing_until_resumed() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let pega = start_pega().await;
        let (worker, _config) = worker(&store, &pega, "");
        queue(&store, 3).await;
        store.outbox().set_paused(true).await.unwrap();
        assert!(worker.try_deliver_next().await.unwrap().is_empty());
        assert_eq!(pega.mock.requests(), 0);
        store.outbox().set_paused(false).await.unwrap();
        assert_eq!(worker.try_deliver_next().await.unwrap().delivered, 3);
    })
    .await;
}

#[tokio::test]
async fn a_retry_after_pauses_every_post_to_the_endpoint_not_only_the_refused_one() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let pega = start_pega().await;
        let (worker, _config) = worker(&store, &pega, "concurrency = 1\nlease_secs = 10");
        pega.mock.control(|b| {
            b.fail_next = 1;
            b.fail_status = Some(429);
            b.retry_after = Some(30);
        });
        queue(&store, 3).await;
        let first = worker.try_deliver_next().await.unwrap();
        assert_eq!((first.retried, first.deferred), (1, 2), "{first:?}");
        assert_eq!(pega.mock.requests(), 1, "the others waited for the pause");
        later().await;
        assert!(worker.try_deliver_next().await.unwrap().is_empty());
        assert_eq!(pega.mock.requests(), 1);
        let deferred = store.outbox().deliveries(None, 10).await.unwrap();
        assert!(
            deferred.iter().filter(|d| d.attempts == 0).count() == 2,
            "deferring counts no attempt: {deferred:?}"
        );
        later_by(30).await;
        assert_eq!(worker.try_deliver_next().await.unwrap().delivered, 3);
        assert_eq!(pega.mock.requests(), 4);
    })
    .await;
}

#[tokio::test]
async fn a_failing_endpoint_gets_one_probe_per_interval_until_it_answers() {
    use pegabridge::delivery::breaker::BreakerState;
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let pega = start_pega().await;
        let more = "concurrency = 4\n[pega.breaker]\nmin_requests = 4\nprobe_interval_secs = 10";
        let (worker, _config) = worker(&store, &pega, more);
        pega.mock.control(|b| b.fail_rate = 1.0);
        queue(&store, 4).await;
        assert_eq!(worker.try_deliver_next().await.unwrap().retried, 4);
        assert_eq!(worker.breaker_state(), BreakerState::Open);
        // Due again, but the endpoint is down: no request before the probe.
        later_by(2).await;
        let waiting = worker.try_deliver_next().await.unwrap();
        assert_eq!(
            (waiting.deferred, pega.mock.requests()),
            (1, 4),
            "{waiting:?}"
        );
        later_by(10).await;
        let probe = worker.try_deliver_next().await.unwrap();
        assert_eq!(
            (probe.retried, pega.mock.requests()),
            (1, 5),
            "one probe: {probe:?}"
        );
        for _ in 0..3 {
            worker.try_deliver_next().await.unwrap();
        }
        assert_eq!(pega.mock.requests(), 5, "nothing more within the interval");
        // Back: the next probe closes the breaker, and the rest follows.
        pega.mock.control(|b| b.fail_rate = 0.0);
        later_by(10).await;
        let mut delivered = 0;
        for _ in 0..10 {
            delivered += worker.try_deliver_next().await.unwrap().delivered;
            if delivered == 4 {
                break;
            }
            later().await;
        }
        assert_eq!(delivered, 4);
        assert_eq!(worker.breaker_state(), BreakerState::Closed);
        assert_eq!(pega.mock.event_count(), 4);
    })
    .await;
}

#[tokio::test]
async fn failures_in_a_row_narrow_the_next_round_until_a_success_comes_back() {
    use pegabridge::delivery::breaker::BreakerState;
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let pega = start_pega().await;
        // A breaker that does not open here: only the failures in a row narrow the rounds.
        let more = "concurrency = 8\n[pega.breaker]\nmin_requests = 100000";
        let (worker, _config) = worker(&store, &pega, more);
        let full = worker.round_limit();
        let narrow = full / 8;
        queue(&store, 3 * full).await;
        let first = worker.try_deliver_next().await.unwrap();
        assert_eq!(first.delivered, full, "{first:?}");
        // Down: the round under way was sized while it answered, so all of it is posted.
        pega.mock.control(|b| b.fail_rate = 1.0);
        let failed = worker.try_deliver_next().await.unwrap();
        assert_eq!(failed.retried, full, "{failed:?}");
        assert_eq!(worker.breaker_state(), BreakerState::Closed);
        // Then one POST at a time: the next round is one batch per round's share of a place.
        let before = pega.mock.requests();
        let narrowed = worker.try_deliver_next().await.unwrap();
        assert_eq!(narrowed.retried, narrow, "{narrowed:?}");
        assert_eq!(pega.mock.requests() - before, narrow as u64);
        // Back: a narrow round answered, then full rounds again.
        pega.mock.control(|b| b.fail_rate = 0.0);
        let back = worker.try_deliver_next().await.unwrap();
        assert_eq!(back.delivered, narrow, "{back:?}");
        let again = worker.try_deliver_next().await.unwrap();
        assert_eq!(
            again.delivered,
            full - 2 * narrow,
            "the rest of the due events: {again:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_adaptive_limit_grows_on_a_slow_endpoint_and_never_exceeds_its_maximum() {
    let (store, _dir, _db) = open_store().await;
    let pega = start_pega().await;
    pega.mock
        .control(|b| b.delay = std::time::Duration::from_millis(20));
    let (worker, _config) = worker(&store, &pega, "max_concurrency = 32");
    queue(&store, 800).await;
    let mut delivered = 0;
    while delivered < 800 {
        let step = worker.try_deliver_next().await.unwrap();
        assert!(!step.is_empty(), "stalled at {delivered}");
        delivered += step.delivered;
    }
    assert_eq!(pega.mock.event_count(), 800);
    assert!(
        pega.mock.max_in_flight() <= 32,
        "{}",
        pega.mock.max_in_flight()
    );
    assert!(
        pega.mock.max_in_flight() > 8,
        "the limit grew: {} at once at most",
        pega.mock.max_in_flight()
    );
    assert!(
        worker.concurrency_limit() > 8,
        "{}",
        worker.concurrency_limit()
    );
}

#[tokio::test]
async fn with_the_capture_response_format_each_event_is_one_cdh_body_and_unmapped_metrics_stay_home(
) {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let pega = start_pega().await;
        pega.mock.control(|b| b.capture_response = true);
        let more = "format = \"capture-response\"\n[pega.capture_response]\ncontainer_name = \"EmailOffers\"";
        let (worker, _config) = worker(&store, &pega, more);
        let mut event = common();
        event.external_id = "C-17".into();
        event.broadcast_manual_options = serde_json::from_value(serde_json::json!({
            "UniqueOfferId": "Sales/Cards/Platinum/EmailT1",
            "InteractionId": serde_json::from_str::<serde_json::Value>("-563481321460449721").unwrap(),
        }))
        .unwrap();
        let sent = store
            .record_trigger(
                "m".into(),
                None,
                vec![NewRecipient {
                    email: "c17@x.nl".into(),
                    external_id: "C-17".into(),
                    idempotency_key: None,
                    manual_options: pegabridge::event::ManualOptions::new(&event.broadcast_manual_options),
                    shared: std::sync::Arc::new(event),
                }],
            )
            .await
            .unwrap();
        let (b, c) = (sent.broadcast_id, sent.recipients[0].customer_id);
        let activities = pegabridge::activity::parse(serde_json::json!([
            {"metric": "opens", "broadcast_id": b, "customer_id": c},
            {"metric": "bounces", "broadcast_id": b, "customer_id": c, "bounce_type": "soft"},
        ]))
        .unwrap();
        store
            .record_activities(activities, pegabridge::intake::Unknown::Refuse)
            .await
            .unwrap();
        let step = worker.try_deliver_next().await.unwrap();
        assert_eq!((step.delivered, step.filtered), (2, 1), "{step:?}");
        let bodies = pega.mock.events();
        let outcomes: Vec<&str> = bodies
            .iter()
            .map(|b| b["RankedResults"][0]["Outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.contains(&"Pending") && outcomes.contains(&"Impression"));
        let r = &bodies[0]["RankedResults"][0];
        assert_eq!(bodies[0]["ContainerName"], "EmailOffers");
        assert_eq!(
            (r["Issue"].as_str(), r["Group"].as_str(), r["Name"].as_str(), r["Treatment"].as_str()),
            (Some("Sales"), Some("Cards"), Some("Platinum"), Some("EmailT1"))
        );
        assert_eq!(r["InteractionID"], "-563481321460449721", "digit for digit");
        assert_eq!(r["SubjectID"], "C-17");
    })
    .await;
}

/// A real store whose outbox refuses to record the next `fail` rounds' outcomes (a database
/// restarting, a full disk): everything else goes to the real one. It notes the size of each
/// batch of activities it is given (each one transaction).
#[derive(Debug)]
pub(crate) struct Hiccup {
    real: Storage,
    fail: std::sync::atomic::AtomicUsize,
    batches: std::sync::Mutex<Vec<usize>>,
}

impl Hiccup {
    /// `real`, failing nothing.
    pub(crate) fn over(real: Storage) -> Self {
        Self {
            real,
            fail: std::sync::atomic::AtomicUsize::new(0),
            batches: std::sync::Mutex::default(),
        }
    }

    /// The sizes of the batches of activities recorded so far, in order.
    pub(crate) fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl pegabridge::store::OutboxStore for Hiccup {
    async fn claim(
        &self,
        lane: pegabridge::store::Lane,
        limit: usize,
        lease_secs: u64,
    ) -> Result<Vec<pegabridge::store::Claimed>, StoreError> {
        self.real.outbox().claim(lane, limit, lease_secs).await
    }
    async fn set_lanes(&self, lanes: pegabridge::store::Lanes) -> Result<(), StoreError> {
        self.real.outbox().set_lanes(lanes).await
    }
    async fn complete(&self, outcomes: Vec<pegabridge::store::Outcome>) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::unavailable("the database is restarting"));
        }
        self.real.outbox().complete(outcomes).await
    }
    async fn deliveries(
        &self,
        status: Option<pegabridge::store::Status>,
        limit: usize,
    ) -> Result<Vec<pegabridge::store::Delivery>, StoreError> {
        self.real.outbox().deliveries(status, limit).await
    }
    async fn delivery(
        &self,
        uuid: String,
        lane: Option<pegabridge::store::Lane>,
    ) -> Result<
        Option<(
            pegabridge::store::Delivery,
            serde_json::Value,
            Vec<pegabridge::store::Attempt>,
        )>,
        StoreError,
    > {
        self.real.outbox().delivery(uuid, lane).await
    }
    async fn purge(
        &self,
        which: pegabridge::store::Purge,
        before: i64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.real.outbox().purge(which, before, limit).await
    }
    async fn replay(&self, which: Replay) -> Result<usize, StoreError> {
        self.real.outbox().replay(which).await
    }
    async fn set_paused(&self, paused: bool) -> Result<(), StoreError> {
        self.real.outbox().set_paused(paused).await
    }
    async fn is_paused(&self) -> Result<bool, StoreError> {
        self.real.outbox().is_paused().await
    }
    async fn outbox_stats(&self) -> Result<pegabridge::store::OutboxStats, StoreError> {
        self.real.outbox().outbox_stats().await
    }
    async fn pending_events(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        self.real.outbox().pending_events().await
    }
}

#[async_trait::async_trait]
impl pegabridge::store::Store for Hiccup {
    async fn record_trigger(
        &self,
        mapping: String,
        key: Option<String>,
        recipients: Vec<NewRecipient>,
        queue: pegabridge::store::Queue,
        sending: bool,
    ) -> Result<
        (
            pegabridge::recording::TriggerAnswer,
            Vec<pegabridge::store::Claimed>,
        ),
        StoreError,
    > {
        self.real
            .backend()
            .record_trigger(mapping, key, recipients, queue, sending)
            .await
    }
    async fn claim_sends(
        &self,
        limit: usize,
        lease_secs: u64,
    ) -> Result<Vec<pegabridge::store::ClaimedSend>, StoreError> {
        self.real.backend().claim_sends(limit, lease_secs).await
    }
    async fn complete_sends(
        &self,
        outcomes: Vec<(
            pegabridge::store::ClaimedSend,
            pegabridge::store::SendOutcome,
        )>,
        queue: pegabridge::store::Queue,
    ) -> Result<Vec<pegabridge::store::Claimed>, StoreError> {
        self.real.backend().complete_sends(outcomes, queue).await
    }
    async fn record_activities(
        &self,
        activities: Vec<pegabridge::activity::Activity>,
        unknown: pegabridge::intake::Unknown,
        queue: pegabridge::store::Queue,
    ) -> Result<
        (
            Vec<pegabridge::intake::ActivityOutcome>,
            Vec<pegabridge::store::Claimed>,
        ),
        StoreError,
    > {
        self.batches.lock().unwrap().push(activities.len());
        self.real
            .backend()
            .record_activities(activities, unknown, queue)
            .await
    }
    async fn sends(
        &self,
        status: Option<pegabridge::store::SendStatus>,
        limit: usize,
    ) -> Result<Vec<pegabridge::store::SendRow>, StoreError> {
        self.real.backend().sends(status, limit).await
    }
    async fn send(&self, uuid: String) -> Result<Option<pegabridge::store::SendRow>, StoreError> {
        self.real.backend().send(uuid).await
    }
    async fn replay_sends(
        &self,
        which: pegabridge::store::SendReplay,
    ) -> Result<usize, StoreError> {
        self.real.backend().replay_sends(which).await
    }
    async fn send_queue(&self) -> Result<pegabridge::store::SendQueue, StoreError> {
        self.real.backend().send_queue().await
    }
    async fn find_personal(
        &self,
        q: String,
    ) -> Result<Vec<pegabridge::outbox::PersonalFound>, StoreError> {
        self.real.backend().find_personal(q).await
    }
    async fn personal_events(
        &self,
        broadcast_id: i64,
        customer_id: i64,
    ) -> Result<Vec<(String, pegabridge::store::Lane)>, StoreError> {
        self.real
            .backend()
            .personal_events(broadcast_id, customer_id)
            .await
    }
    async fn writable(&self, min_free_bytes: u64) -> Result<(), StoreError> {
        self.real.backend().writable(min_free_bytes).await
    }
    async fn ping(&self) -> bool {
        self.real.backend().ping().await
    }
    async fn listen(&self, notify: Arc<tokio::sync::Notify>) -> Result<(), StoreError> {
        self.real.backend().listen(notify).await
    }
}

use pegabridge::store::StoreError;

#[tokio::test]
async fn a_store_hiccup_while_recording_outcomes_retries_the_recording_not_the_post() {
    each_backend(|| async {
        let (real, _dir, _db) = open_store().await;
        let hiccup = Arc::new(Hiccup::over(real.clone()));
        hiccup.fail.store(2, std::sync::atomic::Ordering::SeqCst);
        let store = Storage::over(hiccup.clone());
        let pega = start_pega().await;
        let (worker, _config) = worker(&store, &pega, "concurrency = 2");
        queue(&real, 3).await;
        // The POST goes through; recording its outcome fails twice, then is retried through.
        let step = worker.try_deliver_next().await.unwrap();
        assert_eq!(step.delivered, 3, "{step:?}");
        assert_eq!(hiccup.fail.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(pega.mock.event_count(), 3);
        // Recorded: nothing is claimed again, even once every lease has run out.
        later_by(3600).await;
        assert!(worker.try_deliver_next().await.unwrap().is_empty());
        assert_eq!(pega.mock.event_count(), 3, "no duplicate");
        let stats = real.outbox().outbox_stats().await.unwrap();
        assert_eq!((stats.delivered, stats.pending, stats.inflight), (3, 0, 0));
    })
    .await;
}

#[tokio::test]
async fn an_event_older_than_max_event_age_is_a_dead_letter_and_a_replay_sends_it() {
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let pega = start_pega().await;
        let (worker, _config) = worker(&store, &pega, "max_event_age_secs = 60");
        pega.mock.control(|b| b.fail_next = 1);
        queue(&store, 1).await;
        // Refused once (Pega down), then due again only after the model stopped listening.
        let first = worker.try_deliver_next().await.unwrap();
        assert_eq!(first.retried, 1, "{first:?}");
        later_by(120).await;
        let late = worker.try_deliver_next().await.unwrap();
        assert_eq!((late.dead, late.delivered), (1, 0), "{late:?}");
        assert_eq!(pega.mock.event_count(), 0, "not sent late");
        let row = &store.outbox().deliveries(None, 10).await.unwrap()[0];
        assert_eq!(row.status, pegabridge::store::Status::Dead);
        assert!(
            row.last_error
                .as_deref()
                .unwrap()
                .contains("max_event_age_secs (60 s)"),
            "{:?}",
            row.last_error
        );
        // An operator's replay sends it after all: its age counts from the replay.
        assert_eq!(
            store
                .outbox()
                .replay(Replay::Status(Done::Dead))
                .await
                .unwrap(),
            1
        );
        let again = worker.try_deliver_next().await.unwrap();
        assert_eq!(again.delivered, 1, "{again:?}");
        assert_eq!(pega.mock.event_count(), 1);
    })
    .await;
}

/// The worker as `serve` runs it (`Worker::run`) is a pipeline: a POST still waiting for its
/// answer holds its own place only. The other events are posted, answered and recorded as
/// delivered meanwhile (with rounds, nothing of the round was recorded until its slowest POST
/// was answered). On both backends, against a receiver that holds the first POST until told.
#[tokio::test]
async fn a_slow_post_holds_its_own_place_and_the_others_are_recorded_meanwhile() {
    use axum::routing::post;
    use pegabridge::outbox::Status;
    use std::sync::atomic::{AtomicUsize, Ordering};
    each_backend(|| async {
        let (store, _dir, _db) = open_store().await;
        let release = Arc::new(tokio::sync::Notify::new());
        let posts = Arc::new(AtomicUsize::new(0));
        let (held, seen) = (release.clone(), posts.clone());
        let app = axum::Router::new().route(
            "/prweb/api/interactions",
            post(
                move |axum::Json(events): axum::Json<Vec<serde_json::Value>>| {
                    let (held, seen) = (held.clone(), seen.clone());
                    async move {
                        assert_eq!(events.len(), 1, "batch_size = 1");
                        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                            held.notified().await;
                        }
                        axum::http::StatusCode::OK
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let (worker, _config) = worker_at(&store, &url, "concurrency = 4\ntimeout_secs = 30");
        queue(&store, 6).await;

        let wake = tokio::sync::Notify::new();
        let (_handoff, handed) =
            pegabridge::store::handoff::Handoff::new(10, 60, Arc::new(tokio::sync::Notify::new()));
        let mut inbox = pegabridge::delivery::Inbox::new(handed);
        let stop = tokio_util::sync::CancellationToken::new();
        let statuses = || async {
            let rows = store.outbox().deliveries(None, 100).await.unwrap();
            let delivered = rows
                .iter()
                .filter(|d| d.status == Status::Delivered)
                .count();
            let inflight = rows.iter().filter(|d| d.status == Status::Inflight).count();
            (delivered, inflight)
        };
        let run = worker.run(&wake, &mut inbox, stop.clone());
        let check = async {
            // Waits (at most 30 s) until five of the six are recorded delivered.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while statuses().await.0 < 5 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{:?}",
                    statuses().await
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            assert_eq!(
                statuses().await,
                (5, 1),
                "the held POST's event is still in flight while the others are delivered"
            );
            assert_eq!(posts.load(Ordering::SeqCst), 6);
            release.notify_one();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while statuses().await.0 < 6 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{:?}",
                    statuses().await
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            stop.cancel();
        };
        tokio::join!(run, check);
        assert_eq!(statuses().await, (6, 0));
    })
    .await;
}
