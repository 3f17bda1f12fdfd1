//! Durable storage: customers, broadcasts, personal broadcasts and the outbox of events.
//! [`Store`] is the one interface; each backend has its own SQL and migrations: embedded
//! SQLite (the default) and PostgreSQL (several instances on one database). Everything that
//! must not be lost is committed before the HTTP answer.

pub mod group;
pub mod handoff;
pub mod postgres;
pub(crate) mod sql;
pub mod sqlite;

pub use crate::outbox::error;
pub use crate::outbox::{
    Attempt, AttemptOutcome, Claimed, ClaimedSend, Completion, Delivery, Done, Lane, Lanes,
    OutboxStats, Outcome, Purge, Replay, SendOutcome, SendQueue, SendReplay, SendRow, SendStatus,
    Status, StoreError,
};
pub use handoff::{Handoff, Queue};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::activity::Activity;
use crate::recording::{ActivityOutcome, NewRecipient, TriggerAnswer, Unknown};
use error::Result;
use std::sync::Arc;
use tokio::sync::Notify;

/// The outbox's side of a backend: claims, outcomes, and what operators see and do.
/// Each backend implements it in its `outbox.rs`.
#[async_trait::async_trait]
pub trait OutboxStore: Send + Sync + std::fmt::Debug {
    /// Claims up to `limit` due events of `lane` (pending and due, or in flight with an
    /// expired lease), leasing them for `lease_secs`. Nothing while delivery is paused. An
    /// ordered lane ([`Lane::ordered`]) is claimed by creation order, up to its first event
    /// that is not yet due or is leased to someone else: a retry is never overtaken.
    async fn claim(&self, lane: Lane, limit: usize, lease_secs: u64) -> Result<Vec<Claimed>>;

    /// The sinks new events are queued to from now on: a row for each.
    async fn set_lanes(&self, lanes: Lanes) -> Result<()>;

    /// Records a delivery round's outcomes.
    async fn complete(&self, outcomes: Vec<Outcome>) -> Result<()>;

    /// Events with `status` (all when `None`), newest first.
    async fn deliveries(&self, status: Option<Status>, limit: usize) -> Result<Vec<Delivery>>;

    /// One event's row for `lane` (its first row when `None`): the row, its payload and its
    /// attempts.
    async fn delivery(
        &self,
        uuid: String,
        lane: Option<Lane>,
    ) -> Result<Option<(Delivery, serde_json::Value, Vec<Attempt>)>>;

    /// Removes up to `limit` events of `which` created before `before` (Unix seconds), with
    /// their attempts; returns how many.
    async fn purge(&self, which: Purge, before: i64, limit: usize) -> Result<usize>;

    /// Makes finished events due again with a fresh schedule; returns how many.
    async fn replay(&self, which: Replay) -> Result<usize>;

    async fn set_paused(&self, paused: bool) -> Result<()>;
    async fn is_paused(&self) -> Result<bool>;

    /// The outbox's counts for `/metrics`, from counters kept with every change (no scan).
    async fn outbox_stats(&self) -> Result<OutboxStats>;

    /// The events waiting in the outbox, oldest first (for operators and tests).
    async fn pending_events(&self) -> Result<Vec<serde_json::Value>>;
}

/// What every backend does (as atuin's `Database`): record triggers, activities and sends
/// through [`crate::recording`], and run the outbox ([`OutboxStore`]). Errors are typed
/// ([`StoreError`]).
#[async_trait::async_trait]
pub trait Store: OutboxStore {
    /// Records a trigger's broadcast, personal broadcasts and events (one transaction), its
    /// new events queued to `queue`; returns the answer and the events leased to this process.
    async fn record_trigger(
        &self,
        mapping: String,
        idempotency_key: Option<String>,
        recipients: Vec<NewRecipient>,
        queue: Queue,
        sending: bool,
    ) -> Result<(TriggerAnswer, Vec<Claimed>)>;

    /// Claims up to `limit` due sends (pending and due, or in flight with an expired lease),
    /// leasing them for `lease_secs`.
    async fn claim_sends(&self, limit: usize, lease_secs: u64) -> Result<Vec<ClaimedSend>>;

    /// Records what became of sends (see [`crate::recording::send_outcomes`]); returns the
    /// events leased to this process.
    async fn complete_sends(
        &self,
        outcomes: Vec<(ClaimedSend, SendOutcome)>,
        queue: Queue,
    ) -> Result<Vec<Claimed>>;

    /// Sends, newest first, of `status` if given (`sends list`, `/admin/sends`).
    async fn sends(&self, status: Option<SendStatus>, limit: usize) -> Result<Vec<SendRow>>;

    /// One send, by its personal broadcast's uuid.
    async fn send(&self, uuid: String) -> Result<Option<SendRow>>;

    /// Dead sends back to pending with a fresh retry schedule; returns how many.
    async fn replay_sends(&self, which: SendReplay) -> Result<usize>;

    /// Personal broadcasts whose uuid, email address, customer (id or external id),
    /// `InteractionId` manual option or one of whose events' uuid is `q`, newest first (at
    /// most `FOUND_AT_MOST`).
    async fn find_personal(&self, q: String) -> Result<Vec<crate::outbox::PersonalFound>>;

    /// The outbox rows (uuid, sink) of a personal broadcast's events, oldest first.
    async fn personal_events(
        &self,
        broadcast_id: i64,
        customer_id: i64,
    ) -> Result<Vec<(String, Lane)>>;

    /// Sends waiting and in flight (through the status index: no scan).
    async fn send_queue(&self) -> Result<SendQueue>;

    /// Records a batch of activities and their events in one transaction (see
    /// [`crate::recording::activities`]).
    async fn record_activities(
        &self,
        activities: Vec<Activity>,
        unknown: Unknown,
        queue: Queue,
    ) -> Result<(Vec<ActivityOutcome>, Vec<Claimed>)>;

    /// Whether the database takes a write (`/ready`); on SQLite also at least
    /// `min_free_bytes` free where the database file is.
    async fn writable(&self, min_free_bytes: u64) -> Result<()>;

    /// Whether the database answers.
    async fn ping(&self) -> bool;

    /// Wakes `notify` when any instance commits events (PostgreSQL `LISTEN`); with SQLite
    /// there is one process, whose handlers wake it themselves.
    async fn listen(&self, notify: Arc<Notify>) -> Result<()>;
}

/// The store the configuration names (`sqlite://...` or `postgres://...`), with this
/// process's hand-off to its worker (cheap to clone).
#[derive(Debug, Clone)]
pub struct Storage {
    backend: Arc<dyn Store>,
    /// Set when this process delivers: new events go to its worker in memory.
    handoff: Option<Handoff>,
    /// Whether pegabridge sends the mail (`[mail]`): a trigger then queues sends, and a
    /// `broadcasts` event is queued when the relay accepts its message.
    sending: bool,
    /// Other workers woken after every commit (a Kafka topic's, whose lane is claimed).
    wakes: Vec<Arc<Notify>>,
    /// The intake's group commit (`[store] group_commit_ms`), when on.
    group: Option<group::Group>,
}

impl Storage {
    /// The backend's outbox: claims, outcomes, listings, replays, the pause flag.
    pub fn outbox(&self) -> &dyn OutboxStore {
        &*self.backend
    }

    /// The backend itself (readiness, `LISTEN`, sends).
    pub fn backend(&self) -> &dyn Store {
        &*self.backend
    }

    /// Opens the store at `url`: SQLite with its `synchronous` setting, or PostgreSQL with a
    /// pool of `pool_size` connections. Runs the migrations.
    pub async fn connect(url: &str, synchronous: &str, pool_size: u32) -> anyhow::Result<Self> {
        // `[store] connect_timeout_secs`'s default.
        let secs = crate::config::StoreSettings::default().connect_timeout_secs;
        let timeout = std::time::Duration::from_secs(secs);
        Self::connect_within(url, synchronous, pool_size, timeout).await
    }

    /// [`Storage::connect`], naming why a database server cannot be reached within
    /// `timeout`.
    pub async fn connect_within(
        url: &str,
        synchronous: &str,
        pool_size: u32,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let backend: Arc<dyn Store> =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                Arc::new(PgStore::connect(url, pool_size, timeout).await?)
            } else {
                Arc::new(SqliteStore::connect(url, synchronous).await?)
            };
        Ok(Self {
            backend,
            handoff: None,
            sending: false,
            wakes: Vec::new(),
            group: None,
        })
    }

    /// A store over `backend` (a backend of one's own: tests wrap a real one to inject
    /// faults).
    pub fn over(backend: Arc<dyn Store>) -> Self {
        Self {
            backend,
            handoff: None,
            sending: false,
            wakes: Vec::new(),
            group: None,
        }
    }

    /// This store, waking `wake` after every commit of events (and [`Storage::wake_all`]).
    pub fn also_waking(mut self, wake: Arc<Notify>) -> Self {
        self.wakes.push(wake);
        self
    }

    /// Wakes the other workers ([`Storage::also_waking`]): events became due (a replay, a
    /// resume).
    pub fn wake_all(&self) {
        for w in &self.wakes {
            w.notify_one();
        }
    }

    /// This store, recording the activities of requests that arrive within `window` of each
    /// other in one transaction ([`group`]); each alone when `window` is zero. With the
    /// server's `connections`, the window is not waited out once each connection in use has
    /// a request queued ([`group::Connections`]).
    pub fn with_group_commit(
        self,
        window: std::time::Duration,
        connections: Option<Arc<group::Connections>>,
    ) -> Self {
        Self {
            group: (!window.is_zero()).then(|| group::Group::new(window, connections)),
            ..self
        }
    }

    /// This store, queuing a send for every mailable recipient of a trigger.
    pub fn with_sending(self, sending: bool) -> Self {
        Self { sending, ..self }
    }

    /// Records what became of sends and hands the events they made over.
    pub async fn complete_sends(&self, outcomes: Vec<(ClaimedSend, SendOutcome)>) -> Result<()> {
        let (reservation, queue) = self.reserve(outcomes.len() * 2);
        let leased = self.backend.complete_sends(outcomes, queue).await?;
        self.hand_over(reservation, leased);
        Ok(())
    }

    /// Opens the store `[store]` names.
    pub async fn open(settings: &crate::config::Settings) -> anyhow::Result<Self> {
        let store = &settings.store;
        let timeout = std::time::Duration::from_secs(store.connect_timeout_secs);
        Self::connect_within(
            &settings.store_url(),
            &store.synchronous,
            store.pool_size,
            timeout,
        )
        .await
    }

    /// `config check --connect`: reaches the store `[store]` names without creating or
    /// migrating anything; says what it found.
    pub async fn check(settings: &crate::config::Settings) -> anyhow::Result<String> {
        let url = settings.store_url();
        let timeout = std::time::Duration::from_secs(settings.store.connect_timeout_secs);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::check(&url, timeout).await
        } else {
            sqlite::check(&url)
        }
    }

    /// This store, handing the events it commits to this process's worker through `handoff`.
    pub fn with_handoff(self, handoff: Handoff) -> Self {
        Self {
            handoff: Some(handoff),
            ..self
        }
    }

    /// The places reserved for a request's `n` new events, and where they go.
    fn reserve(&self, n: usize) -> (Option<handoff::Reservation>, Queue) {
        let reservation = self.handoff.as_ref().map(|h| h.reserve(n));
        let queue = reservation.as_ref().map_or(Queue::Due, |r| r.queue());
        (reservation, queue)
    }

    /// After the commit: the leased events to the worker, or a wake-up for due ones.
    fn hand_over(&self, reservation: Option<handoff::Reservation>, leased: Vec<Claimed>) {
        if let (Some(h), Some(r)) = (&self.handoff, reservation) {
            h.hand_over(r, leased);
        }
        self.wake_all();
    }

    /// Records a trigger (see [`Store::record_trigger`]) and hands its events over.
    pub async fn record_trigger(
        &self,
        mapping: String,
        idempotency_key: Option<String>,
        recipients: Vec<NewRecipient>,
    ) -> Result<TriggerAnswer> {
        let (reservation, queue) = self.reserve(recipients.len());
        let (answer, leased) = (self.backend)
            .record_trigger(mapping, idempotency_key, recipients, queue, self.sending)
            .await?;
        self.hand_over(reservation, leased);
        Ok(answer)
    }

    /// Records activities (see [`Store::record_activities`]), with those of other requests
    /// when group commit is on, and hands their events over.
    pub async fn record_activities(
        &self,
        activities: Vec<Activity>,
        unknown: Unknown,
    ) -> Result<Vec<ActivityOutcome>> {
        match &self.group {
            Some(group) => group.record(self, activities, unknown).await,
            None => self.record_now(activities, unknown).await,
        }
    }

    /// Records activities in a transaction of their own and hands their events over.
    async fn record_now(
        &self,
        activities: Vec<Activity>,
        unknown: Unknown,
    ) -> Result<Vec<ActivityOutcome>> {
        let (reservation, queue) = self.reserve(activities.len());
        let (answers, leased) = (self.backend)
            .record_activities(activities, unknown, queue)
            .await?;
        self.hand_over(reservation, leased);
        Ok(answers)
    }

    /// Removes every event of `which` created before `before`, in transactions of `batch`
    /// (other writes run between them), until done or `stop` says so; returns how many.
    pub async fn purge_all(
        &self,
        which: Purge,
        before: i64,
        batch: usize,
        stop: impl Fn() -> bool,
    ) -> Result<usize> {
        let mut removed = 0;
        loop {
            let n = self.backend.purge(which, before, batch).await?;
            removed += n;
            if n < batch || stop() {
                return Ok(removed);
            }
            tokio::task::yield_now().await;
        }
    }
}
