//! The composition root: [`Application::build`] assembles the parts, each of which builds
//! itself from the settings (the store, the intake, the delivery worker and its sink, the
//! mail worker, the HTTP router), and binds the listener (port 0 in tests);
//! [`Application::run_until_stopped`] serves and runs every background task under
//! [`crate::tasks::supervise`] until the shutdown signal, letting requests in flight finish.

pub use crate::tasks::{supervise, Stop, Tasks};

use crate::config::Settings;
use crate::delivery::metrics::Metrics;
use crate::delivery::{FaultHook, Inbox, Worker};
use crate::http::{serve, AppState, Shared};
use crate::intake::Intake;
use crate::mail::MailWorker;
use crate::mapping::Mappings;
use crate::store::{Handoff, Storage};
use anyhow::Context;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A built, bound server.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    grace: Duration,
    limits: serve::Limits,
    /// The server's connections (the intake's group commit reads how many are in use).
    connections: Arc<crate::store::group::Connections>,
    tasks: Arc<Tasks>,
    delivery: Option<Delivery>,
    mail: Option<Mail>,
    bounces: Option<Bounces>,
    /// The tracked fetches held for judging (`[engagement] hold_secs`).
    held: Option<crate::mail::held::HeldWorker>,
    retention: Retention,
    /// The Kafka topic's worker (`[kafka]`).
    kafka: Option<Delivery>,
    /// The console's sampler (with `[admin] token`).
    sampler: Option<Sampler>,
}

/// What the console's overview charts, sampled (task `console`).
struct Sampler {
    store: Storage,
    samples: Arc<crate::console::samples::Samples>,
    mail: bool,
    metrics: Arc<Metrics>,
    /// The sink charted: Pega's REST service when configured, else the Kafka topic.
    lane: crate::outbox::Lane,
}

impl Sampler {
    /// With `[admin] token` (the console's): samples the sink Pega's REST service, or the
    /// Kafka topic without one.
    fn build(
        settings: &Settings,
        store: &Storage,
        samples: &Arc<crate::console::samples::Samples>,
        metrics: &Arc<Metrics>,
    ) -> Option<Self> {
        settings.admin.token.as_ref()?;
        let lane = if settings.pega.endpoint.is_none() && settings.kafka.is_some() {
            crate::outbox::Lane::Kafka
        } else {
            crate::outbox::Lane::Pega
        };
        Some(Self {
            store: store.clone(),
            samples: samples.clone(),
            mail: settings.mail.is_some(),
            metrics: metrics.clone(),
            lane,
        })
    }

    async fn run(self, tasks: Arc<Tasks>, stop: Stop) {
        supervise("console", tasks, stop, |stop| self.sample(stop)).await;
    }

    async fn sample(&self, stop: Stop) {
        let mut every = tokio::time::interval(crate::console::samples::EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return,
            }
            let Ok(stats) = self.store.outbox().outbox_stats().await else {
                continue;
            };
            let mail_queued = if self.mail {
                (self.store.backend().send_queue().await).map_or(0, |q| q.pending + q.inflight)
            } else {
                0
            };
            let m = self.metrics.lane(self.lane);
            let (latency, (limit, breaker)) = (m.latency_total(), m.shown());
            self.samples.push(crate::console::samples::Sample {
                latency,
                limit,
                breaker,
                at: crate::event::now(),
                pending: stats.pending,
                inflight: stats.inflight,
                dead: stats.dead,
                total: stats.pending
                    + stats.inflight
                    + stats.delivered
                    + stats.dead
                    + stats.filtered,
                delivered: stats.delivered,
                mail_queued,
            });
        }
    }
}

/// A delivery worker, its inbox and what wakes it: Pega's (with `[pega] endpoint`, task
/// `delivery`) or a Kafka topic's (with `[kafka]`, task `kafka`; nothing is handed to it in
/// memory: its lane is claimed in order).
struct Delivery {
    worker: Worker,
    inbox: Inbox,
    wake: Arc<Notify>,
    task: &'static str,
}

/// The workers of the configured sinks.
struct Deliveries {
    pega: Option<Delivery>,
    kafka: Option<Delivery>,
    kafka_health: Option<Arc<crate::delivery::sink::SinkHealth>>,
}

/// The mail worker and what wakes it (with `[mail]`).
struct Mail {
    worker: Arc<MailWorker>,
    wake: Arc<Notify>,
    status: Arc<crate::mail::status::MailStatus>,
}

/// The bounce domain's SMTP listener (`[bounces] listen`).
struct Bounces {
    listener: TcpListener,
    server: Arc<crate::bounces::listener::Listener>,
}

impl Bounces {
    async fn build(
        settings: &Settings,
        intake: &Intake,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(b) = &settings.bounces else {
            return Ok(None);
        };
        let Some(listen) = &b.listen else {
            return Ok(None);
        };
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bounces.listen: cannot listen on {listen}"))?;
        let ingest = crate::bounces::ingest::Ingest::new(
            crate::bounces::ReturnPaths::new(b),
            intake.clone(),
        );
        let server = crate::bounces::listener::Listener::new(b, ingest, metrics.registry())?;
        tracing::info!(listen = %listen, domain = %b.domain, "taking bounces and complaints");
        Ok(Some(Self {
            listener,
            server: Arc::new(server),
        }))
    }

    async fn run(self, tasks: Arc<Tasks>, stop: Stop) {
        let Self { listener, server } = self;
        let listener = &listener;
        supervise("bounces", tasks, stop, |stop| {
            server.clone().serve(listener, stop)
        })
        .await;
    }

    /// The listener's port (tests bind port 0).
    fn port(&self) -> Option<u16> {
        self.listener.local_addr().ok().map(|a| a.port())
    }
}

/// The retention task (`[store] retention_days`).
struct Retention {
    store: Storage,
    days: u64,
}

impl Application {
    /// Loads mappings, opens the store, builds the workers and binds `[server] listen`.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let mappings = load_mappings(settings)?;
        let metrics = Arc::new(Metrics::new());
        let tasks = Arc::new(Tasks::new(metrics.task_restarts()));
        let connections = crate::store::group::Connections::new();
        let store = open_store(settings, connections.clone()).await?;
        let outbox = Arc::new(Notify::new());
        let (store, deliveries) = Delivery::build(settings, store, &metrics, &outbox).await?;
        let Deliveries {
            pega: delivery,
            kafka,
            kafka_health,
        } = deliveries;
        let store = store.with_sending(settings.mail.is_some());
        let intake = Intake::new(store.clone())
            .withholding_machines(withholds_machines(settings))
            .first_opens_only(
                settings.engagement.opens == crate::config::engagement::OpensPolicy::First,
            )
            .counting(metrics.clone());
        let mail = Mail::build(settings, &store, &intake, &mappings, &metrics)?;
        let bounces = Bounces::build(settings, &intake, &metrics).await?;
        for (name, present) in [
            ("delivery", delivery.is_some()),
            ("kafka", kafka.is_some()),
            ("mail", mail.is_some()),
            ("bounces", bounces.is_some()),
            ("retention", settings.store.retention_days > 0),
            ("console", settings.admin.token.is_some()),
        ] {
            if present {
                tasks.register(name);
            }
        }
        let judge = Arc::new(judge(settings)?);
        let hold = Duration::from_secs(settings.engagement.hold_secs);
        let held = (settings.tracking.is_some() && !hold.is_zero())
            .then(|| crate::mail::held::channel(hold, intake.clone(), judge.clone()));
        if held.is_some() {
            tasks.register("engagement");
        }
        let samples = Arc::new(crate::console::samples::Samples::default());
        let sampler = Sampler::build(settings, &store, &samples, &metrics);
        let state = AppState::new(Shared {
            intake,
            judge: judge.clone(),
            held: held.as_ref().map(|(queue, _)| queue.clone()),
            store: store.clone(),
            mappings,
            account: Arc::new(settings.account.clone()),
            variables: settings.variables.clone().into(),
            plan: settings.plan(),
            activity_token: settings.activities.token.clone().map(Arc::new),
            outbox,
            admin_token: settings.admin.token.clone().map(Arc::new),
            metrics,
            tasks: tasks.clone(),
            min_free_bytes: settings.store.min_free_mb.saturating_mul(1024 * 1024),
            mail: mail.as_ref().map(|m| m.wake.clone()),
            mail_status: mail.as_ref().map(|m| m.status.clone()),
            kafka: kafka_health,
            tracking: settings
                .tracking
                .as_ref()
                .map(crate::mail::tracking::Tokens::new),
            platforms: crate::events::platform::Platforms::new(&settings.events)
                .map_err(anyhow::Error::msg)?,
            unverified: crate::http::Unverified::new(&settings.server),
            console: Arc::new(crate::console::Sessions::new()),
            samples: samples.clone(),
        });
        let router = crate::http::router(state, &settings.server);
        let listener = TcpListener::bind(&settings.server.listen)
            .await
            .with_context(|| {
                format!("server.listen: cannot listen on {}", settings.server.listen)
            })?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            listener,
            router,
            port,
            grace: Duration::from_secs(settings.server.shutdown_grace_secs),
            limits: serve::Limits::new(&settings.server),
            connections,
            tasks,
            delivery,
            kafka,
            sampler,
            mail,
            bounces,
            held: held.map(|(_, worker)| worker),
            retention: Retention {
                store,
                days: settings.store.retention_days,
            },
        })
    }

    /// Makes the delivery worker call `hook` at every turn of its loop (tests use it to
    /// make the worker panic).
    #[doc(hidden)]
    pub fn set_delivery_fault_hook(&mut self, hook: FaultHook) {
        if let Some(d) = &mut self.delivery {
            d.worker.set_fault_hook(hook);
        }
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bounce listener's bound port, if `[bounces] listen` is set.
    pub fn bounces_port(&self) -> Option<u16> {
        self.bounces.as_ref().and_then(Bounces::port)
    }

    /// Serves (and delivers) until `shutdown` completes; requests in flight and the delivery
    /// round in progress then get `[server] shutdown_grace_secs` to finish before they are
    /// dropped; the workers then finish their round. Nothing is lost either way: a request is
    /// answered only after its commit, and an event whose delivery was cut short is claimed
    /// again when its lease runs out.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = Stop::new();
        let tasks = self.tasks.clone();
        tasks.start_all();
        let delivery = self
            .delivery
            .map(|d| tokio::spawn(d.run(tasks.clone(), stop.clone())));
        let kafka = self
            .kafka
            .map(|d| tokio::spawn(d.run(tasks.clone(), stop.clone())));
        let mail = self
            .mail
            .map(|m| tokio::spawn(m.run(tasks.clone(), stop.clone())));
        let held = self.held.map(|worker| {
            let (tasks, stop) = (tasks.clone(), stop.clone());
            tokio::spawn(async move {
                let worker = &worker;
                supervise("engagement", tasks, stop, move |stop| worker.run(stop)).await;
            })
        });
        let bounces = self
            .bounces
            .map(|b| tokio::spawn(b.run(tasks.clone(), stop.clone())));
        let retention = tokio::spawn(self.retention.run(tasks.clone(), stop.clone()));
        let sampler = self
            .sampler
            .map(|s| tokio::spawn(s.run(tasks.clone(), stop.clone())));
        let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = fired_tx.send(());
        };
        let serve = serve::serve(
            self.listener,
            self.router,
            self.limits,
            self.connections,
            signal,
        );
        let grace_over = async {
            if fired_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.grace).await;
        };
        tokio::select! {
            () = serve => {},
            () = grace_over => tracing::warn!("shutdown grace period over: dropping requests in flight"),
        }
        // The workers stop last: events handed over by the last requests are posted, or made
        // due again for the next start.
        stop.cancel();
        let _ = retention.await;
        if let Some(s) = sampler {
            let _ = s.await;
        }
        if let Some(b) = bounces {
            let _ = b.await;
        }
        // Held tracked fetches are recorded before the delivery worker stops.
        if let Some(held) = held {
            let _ = tokio::time::timeout(self.grace, held).await;
        }
        for (what, task) in [("mail", mail), ("delivery", delivery), ("kafka", kafka)] {
            let Some(task) = task else { continue };
            if tokio::time::timeout(self.grace, task).await.is_err() {
                tracing::warn!(
                    task = what,
                    "shutdown grace period over: leaving a round unfinished"
                );
            }
        }
        Ok(())
    }
}

/// The store `[store]` names, said in the log (and whether delivery is paused); its group
/// commit knows the server's open `connections`.
async fn open_store(
    settings: &Settings,
    connections: Arc<crate::store::group::Connections>,
) -> anyhow::Result<Storage> {
    let store = Storage::open(settings).await?.with_group_commit(
        Duration::from_millis(settings.store.group_commit_ms),
        Some(connections),
    );
    tracing::info!(store = settings.store_display(), "store opened");
    if store.outbox().is_paused().await.unwrap_or(false) {
        tracing::warn!("delivery is paused (pegabridge deliveries resume)");
    }
    Ok(store)
}

/// What tracked requests are judged with (`[engagement]`, `[server] trusted_proxies`).
fn judge(settings: &Settings) -> anyhow::Result<crate::engagement::Judge> {
    Ok(crate::engagement::Judge {
        trusted_proxies: settings.server.trusted_proxies.clone(),
        relay: match &settings.engagement.apple_relay_ranges {
            Some(f) => {
                Some(crate::engagement::relay::Watched::open(f).map_err(anyhow::Error::msg)?)
            }
            None => None,
        },
        repeats: crate::engagement::Repeats::new(Duration::from_secs(
            settings.engagement.repeat_window_secs,
        )),
        recent: crate::engagement::Bursts::default(),
        too_soon_secs: settings.engagement.too_soon_secs as i64,
    })
}

/// The metrics whose machines' activities are recorded without being sent: all of them
/// under `[engagement] machine = "drop"`; in CDH's format, those without an outcome
/// configured for machines (a machine's open must not be an Impression, nor its click a
/// Clicked).
fn withholds_machines(settings: &Settings) -> Vec<crate::event::Metric> {
    use crate::config::engagement::MachinePolicy;
    use crate::config::pega::Format;
    use crate::event::Metric;
    let engaging = [Metric::Opens, Metric::Clicks, Metric::ShortLinks];
    if settings.engagement.machine == MachinePolicy::Drop {
        return engaging.to_vec();
    }
    if settings.pega.format != Format::CaptureResponse {
        return Vec::new();
    }
    let capture = &settings.pega.capture_response;
    (engaging.into_iter())
        .filter(|m| crate::delivery::capture::machine_outcome(capture, *m).is_none())
        .collect()
}

/// Loads every mapping (and its template), saying what was loaded and what looks wrong.
fn load_mappings(settings: &Settings) -> anyhow::Result<Mappings> {
    let loaded = Mappings::load_configured(settings)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    match &settings.source {
        Some(file) => tracing::info!(config = %file.display(), "configuration read"),
        None => tracing::warn!(
            "no configuration file (no --config, no ./pegabridge.toml here): built-in defaults"
        ),
    }
    let dir = settings.resolve(&settings.mappings.dir);
    if loaded.mappings.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            "no mappings loaded: every trigger will answer 404 (started from the wrong folder?)"
        );
    } else {
        tracing::info!(
            count = loaded.mappings.len(),
            names = loaded.mappings.names().join(", "),
            dir = %dir.display(),
            "mappings loaded"
        );
    }
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    for weak in (settings.weak_tokens().into_iter()).chain(loaded.mappings.weak_credentials()) {
        tracing::warn!("{weak}: set a secret before production");
    }
    Ok(loaded.mappings)
}

impl Delivery {
    /// The workers of `[pega]` (none without an endpoint) and `[kafka]`, with the store
    /// queuing every event to each configured sink and handing Pega's to its worker (see
    /// `store::handoff`), up to two rounds' worth.
    async fn build(
        settings: &Settings,
        store: Storage,
        metrics: &Arc<Metrics>,
        wake: &Arc<Notify>,
    ) -> anyhow::Result<(Storage, Deliveries)> {
        let pega = Arc::new(settings.pega.clone());
        let rest = Worker::new(store.clone(), pega, metrics.clone())?;
        let kafka = Worker::kafka(store.clone(), settings, metrics)?;
        let lanes = crate::outbox::Lanes::of(
            [
                rest.as_ref().map(|_| crate::outbox::Lane::Pega),
                kafka.as_ref().map(|_| crate::outbox::Lane::Kafka),
            ]
            .into_iter()
            .flatten(),
        );
        store.outbox().set_lanes(lanes).await?;
        let mut store = store;
        let mut deliveries = Deliveries {
            pega: None,
            kafka: None,
            kafka_health: None,
        };
        if let Some((worker, health)) = kafka {
            tracing::info!(sink = worker.sink_name(), "delivering to a Kafka topic");
            let kafka_wake = Arc::new(Notify::new());
            store.backend().listen(kafka_wake.clone()).await?;
            store = store.also_waking(kafka_wake.clone());
            // Nothing is handed over: the sender is dropped, the inbox stays empty.
            let (_, handed) = Handoff::new(0, settings.pega.lease_secs, kafka_wake.clone());
            deliveries.kafka = Some(Self {
                worker,
                inbox: Inbox::new(handed),
                wake: kafka_wake,
                task: "kafka",
            });
            deliveries.kafka_health = Some(health);
        }
        let Some(worker) = rest else {
            if deliveries.kafka.is_none() {
                tracing::warn!("no [pega] endpoint nor [kafka]: events wait in the outbox");
            }
            return Ok((store, deliveries));
        };
        tracing::info!(sink = worker.sink_name(), "delivering to Pega");
        store.backend().listen(wake.clone()).await?;
        let capacity = 2 * worker.round_limit();
        let (handoff, handed) = Handoff::new(capacity, settings.pega.lease_secs, wake.clone());
        deliveries.pega = Some(Self {
            worker,
            inbox: Inbox::new(handed),
            wake: wake.clone(),
            task: "delivery",
        });
        Ok((store.with_handoff(handoff), deliveries))
    }

    /// Delivers under supervision until `stop`, then releases what was handed over.
    async fn run(self, tasks: Arc<Tasks>, stop: Stop) {
        let Self {
            worker,
            inbox,
            wake,
            task,
        } = self;
        // Kept across restarts: a panic drops the guard, not the inbox.
        let inbox = tokio::sync::Mutex::new(inbox);
        let (inbox_ref, worker_ref, wake_ref) = (&inbox, &worker, &wake);
        supervise(task, tasks, stop, move |stop| async move {
            let mut inbox = inbox_ref.lock().await;
            worker_ref.run(wake_ref, &mut inbox, stop).await;
        })
        .await;
        worker.release(inbox.into_inner()).await;
    }
}

impl Mail {
    fn build(
        settings: &Settings,
        store: &Storage,
        intake: &Intake,
        mappings: &Mappings,
        metrics: &Metrics,
    ) -> anyhow::Result<Option<Self>> {
        let Some(mail) = &settings.mail else {
            return Ok(None);
        };
        let status = Arc::new(crate::mail::status::MailStatus::new(
            mail,
            metrics.registry(),
        ));
        tracing::info!(relay = %format!("{}:{}", mail.host, mail.port), "sending the mail through the relay");
        let worker = MailWorker::new(
            store.clone(),
            intake.clone(),
            mail,
            settings.tracking.as_ref(),
            settings.bounces.as_ref(),
            mappings.clone(),
            status.clone(),
        )?;
        Ok(Some(Self {
            worker: Arc::new(worker),
            wake: Arc::new(Notify::new()),
            status,
        }))
    }

    async fn run(self, tasks: Arc<Tasks>, stop: Stop) {
        let Self { worker, wake, .. } = self;
        supervise("mail", tasks, stop, |stop| worker.run(&wake, stop)).await;
    }
}

/// How often the retention task looks for old delivered events.
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// Events removed per transaction (small: other writes wait for each).
const RETENTION_BATCH: usize = 1000;

impl Retention {
    /// Removes delivered events older than `days` (none when 0), every [`RETENTION_EVERY`],
    /// in batches of [`RETENTION_BATCH`], until `stop`.
    async fn run(self, tasks: Arc<Tasks>, stop: Stop) {
        if self.days == 0 {
            return;
        }
        supervise("retention", tasks, stop, |stop| self.retain(stop)).await;
    }

    async fn retain(&self, stop: Stop) {
        let mut every = tokio::time::interval(RETENTION_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stop.cancelled() => return,
            }
            let age = i64::try_from(self.days.saturating_mul(86_400)).unwrap_or(i64::MAX);
            let before = crate::event::now().saturating_sub(age);
            let stopping = || stop.is_cancelled();
            let purge = crate::store::Purge::Delivered;
            match (self.store)
                .purge_all(purge, before, RETENTION_BATCH, stopping)
                .await
            {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(
                        removed,
                        days = self.days,
                        "retention: delivered events removed"
                    )
                }
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "retention: removing delivered events failed"
                ),
            }
        }
    }
}

/// Resolves on ctrl-c, SIGTERM or SIGHUP (a closed terminal or a service manager's reload:
/// pegabridge drains and stops; its settings are read at start-up only).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(mut term), Ok(mut hup)) => tokio::select! {
                _ = term.recv() => {},
                _ = hup.recv() => {},
            },
            (Ok(mut term), Err(_)) => {
                term.recv().await;
            }
            _ => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
