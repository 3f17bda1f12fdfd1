//! Operator commands: `deliveries ...`, `sends ...` and `bounces ingest` (on the store the
//! configuration names) and `mock-pega`.

use super::out;
use crate::config::secret::Secret;
use crate::config::Settings;
use crate::mock::{Behaviour, MockAuth, MockPega};
use crate::outbox::parse_since;
use crate::store::Replay;
use crate::store::{Done, Status, Storage};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

/// `pegabridge deliveries ...`.
#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Events in the outbox, newest first.
    List {
        /// pending, inflight, delivered, dead or filtered.
        #[arg(long, value_parser = ["pending", "inflight", "delivered", "dead", "filtered"])]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One event: its JSON and every delivery attempt.
    Show {
        uuid: String,
        /// The event's row for this sink (`pega` or `kafka`; default: its first).
        #[arg(long)]
        sink: Option<crate::outbox::Lane>,
    },
    /// Deliver events again (with a fresh retry schedule).
    Replay(ReplayArgs),
    /// Remove finished events and their attempts: dead letters (kept until an operator says
    /// so) or delivered ones (which retention removes after `[store] retention_days` anyway).
    Purge {
        #[arg(long, value_parser = ["dead", "delivered"])]
        status: String,
        /// Only events created before TIME (Unix seconds, or an age such as 7d); default: all.
        #[arg(long)]
        before: Option<String>,
    },
    /// Stop delivering (events keep queueing).
    Pause,
    /// Start delivering again.
    Resume,
}

/// Which events to replay: exactly one of these.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["uuid", "status"])))]
pub struct ReplayArgs {
    /// One event (if it is dead, filtered or delivered; one on its way is left as it is).
    #[arg(conflicts_with_all = ["status", "since"])]
    pub uuid: Option<String>,
    /// Every event with this status: dead, filtered or delivered (events pending or in flight
    /// are on their way already).
    #[arg(long, value_parser = ["dead", "filtered", "delivered"])]
    pub status: Option<String>,
    /// With --status: only events created since TIME (Unix seconds, or an age such as 90m, 2h,
    /// 1d).
    #[arg(long, requires = "status")]
    pub since: Option<String>,
}

/// `pegabridge sends ...`.
#[derive(Debug, Subcommand)]
pub enum SendsCommand {
    /// Sends, newest first, with their last failure (the stage and the relay's answer).
    List {
        #[arg(long, value_parser = ["pending", "inflight", "sent", "bounced", "failed", "dead"])]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One send, by its personal broadcast's uuid.
    Show { uuid: String },
    /// Send dead sends again (fresh retry schedule): one, or every dead send (since TIME).
    /// Bounced and failed sends are not: their customers got a bounce.
    Replay {
        #[arg(conflicts_with_all = ["dead", "since"], required_unless_present = "dead")]
        uuid: Option<String>,
        /// Every dead send.
        #[arg(long)]
        dead: bool,
        /// With --dead: only sends created since TIME (Unix seconds, or an age such as 2h).
        #[arg(long, requires = "dead")]
        since: Option<String>,
    },
}

/// Runs a `sends` command.
pub fn sends(settings: &Settings, command: SendsCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = Storage::open(settings).await?;
        eprintln!("store: {}", settings.store_display());
        match command {
            SendsCommand::List { status, limit } => {
                let status = status
                    .map(|s| s.parse::<crate::store::SendStatus>())
                    .transpose()
                    .map_err(anyhow::Error::msg)?;
                let rows = store.backend().sends(status, limit).await?;
                out!(
                    "{:<36}  {:<8}  {:>8}  {:<32}  last error",
                    "uuid",
                    "status",
                    "attempts",
                    "to"
                );
                for r in rows {
                    let error = r.last_error.unwrap_or_default().replace('\n', " ");
                    let error: String = error.chars().take(80).collect();
                    out!(
                        "{:<36}  {:<8}  {:>8}  {:<32}  {error}",
                        r.uuid,
                        r.status.as_str(),
                        r.attempts,
                        r.email
                    );
                }
            }
            SendsCommand::Show { uuid } => {
                let Some(row) = store.backend().send(uuid.clone()).await? else {
                    eprintln!("no send with uuid {uuid}");
                    return Ok(ExitCode::from(1));
                };
                out!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "send": row }))?
                );
            }
            SendsCommand::Replay { uuid, since, .. } => {
                let which = match uuid {
                    Some(u) => crate::store::SendReplay::Uuid(u),
                    None => crate::store::SendReplay::Dead {
                        since: since
                            .map(|t| parse_since(&t, crate::event::now()))
                            .transpose()?,
                    },
                };
                let n = store.backend().replay_sends(which).await?;
                out!("{n} sends will be sent again");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `pegabridge bounces ingest`: one message from standard input.
pub fn bounces_ingest(settings: &Settings, recipients: &[String]) -> anyhow::Result<ExitCode> {
    use std::io::Read;
    let Some(bounces) = &settings.bounces else {
        eprintln!("bounces ingest: no [bounces] section: configure the bounce domain first");
        return Ok(ExitCode::from(2));
    };
    let limit = bounces.max_message_bytes;
    let mut raw = Vec::new();
    std::io::stdin()
        .take(limit as u64 + 1)
        .read_to_end(&mut raw)?;
    if raw.len() > limit {
        // Taken and dropped: refusing it would bounce a bounce.
        eprintln!("bounces ingest: ignored: larger than bounces.max_message_bytes ({limit})");
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = match crate::store::Storage::open(settings).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bounces ingest: the store: {e:#}");
                return Ok(ExitCode::from(75));
            }
        };
        let intake = crate::intake::Intake::new(store);
        let ingest =
            crate::bounces::ingest::Ingest::new(crate::bounces::ReturnPaths::new(bounces), intake);
        match ingest.ingest(&raw, recipients).await {
            Ok((kind, outcome)) => {
                eprintln!("bounces ingest: {kind}: {}: {outcome:?}", outcome.kind());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("bounces ingest: not recorded, try again: {e:#}");
                Ok(ExitCode::from(75))
            }
        }
    })
}

/// `pegabridge mock-pega`.
#[derive(Debug, Args)]
pub struct MockArgs {
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: String,
    #[arg(long)]
    pub username: String,
    #[arg(long, env = "MOCK_PEGA_PASSWORD")]
    pub password: String,
    /// The status failures answer with.
    #[arg(long, default_value_t = 503)]
    pub fail_status: u16,
    /// Fail this fraction of requests (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Fail the first N requests.
    #[arg(long, default_value_t = 0)]
    pub fail_first: u32,
    /// Wait this long before each answer.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Send `Retry-After: SECS` with the failures.
    #[arg(long)]
    pub retry_after: Option<u64>,
    /// Allow N requests per second; answer the others 429 with `Retry-After: 1`.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// What to expect: the seed's arrays of events, or CDH CaptureResponse bodies.
    #[arg(long, value_parser = ["seed", "capture-response"], default_value = "seed")]
    pub format: String,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Require client certificates issued by this CA (PEM): mutual TLS.
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<std::path::PathBuf>,
}

/// Runs a `deliveries` command.
pub fn deliveries(settings: &Settings, command: DeliveriesCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = Storage::open(settings).await?;
        eprintln!("store: {}", settings.store_display());
        match command {
            DeliveriesCommand::List { status, limit } => {
                let status = status.map(|s| s.parse::<Status>()).transpose()?;
                let rows = store.outbox().deliveries(status, limit).await?;
                out!(
                    "{:<36}  {:<5}  {:<12}  {:<9}  {:>8}  last error",
                    "uuid",
                    "sink",
                    "metric",
                    "status",
                    "attempts"
                );
                for r in rows {
                    let error = r.last_error.unwrap_or_default().replace('\n', " ");
                    let error: String = error.chars().take(60).collect();
                    out!(
                        "{:<36}  {:<5}  {:<12}  {:<9}  {:>8}  {error}",
                        r.uuid,
                        r.sink.as_str(),
                        r.metric,
                        r.status,
                        r.attempts
                    );
                }
            }
            DeliveriesCommand::Show { uuid, sink } => {
                let Some((row, event, attempts)) =
                    store.outbox().delivery(uuid.clone(), sink).await?
                else {
                    eprintln!("no event with uuid {uuid}");
                    return Ok(ExitCode::from(1));
                };
                let shown =
                    serde_json::json!({"delivery": row, "event": event, "attempts": attempts});
                out!("{}", serde_json::to_string_pretty(&shown)?);
            }
            DeliveriesCommand::Replay(args) => {
                let done = args.status.map(|s| s.parse::<Done>()).transpose()?;
                let which = match (args.uuid, done, args.since) {
                    (Some(u), _, _) => Replay::Uuid(u),
                    (None, Some(status), Some(t)) => Replay::Since {
                        since: parse_since(&t, crate::event::now())?,
                        status,
                    },
                    (None, Some(s), None) => Replay::Status(s),
                    _ => unreachable!("clap requires a uuid or a status"),
                };
                out!(
                    "{} events will be delivered again",
                    store.outbox().replay(which).await?
                );
            }
            DeliveriesCommand::Purge { status, before } => {
                let which = if status == "dead" {
                    crate::store::Purge::Dead
                } else {
                    crate::store::Purge::Delivered
                };
                let now = crate::event::now();
                let before = match before {
                    Some(t) => parse_since(&t, now)?,
                    None => now + 1,
                };
                let removed = store.purge_all(which, before, 1000, || false).await?;
                out!("{removed} {status} events removed");
            }
            DeliveriesCommand::Pause => {
                store.outbox().set_paused(true).await?;
                out!("delivery paused");
            }
            DeliveriesCommand::Resume => {
                store.outbox().set_paused(false).await?;
                out!("delivery resumed");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs the stand-in until ctrl-c.
pub fn mock_pega(args: MockArgs) -> anyhow::Result<ExitCode> {
    let mock = MockPega::new(
        MockAuth::Basic {
            username: args.username,
            password: Secret::new(args.password),
        },
        Behaviour {
            fail_next: args.fail_first,
            fail_rate: args.fail_rate,
            fail_status: Some(args.fail_status),
            delay: Duration::from_millis(args.delay_ms),
            retry_after: args.retry_after,
            rate_limit: args.rate_limit,
            capture_response: args.format == "capture-response",
            print: true,
        },
    );
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            let ca = args.client_ca.as_deref().map(read).transpose()?;
            let config = crate::mock::tls_config(&read(cert)?, &read(key)?, ca.as_deref())
                .context("--tls-cert / --tls-key / --client-ca")?;
            eprintln!("mock Pega listening on https://{}", listener.local_addr()?);
            let listener = crate::mock::TlsListener::new(listener, config)?;
            axum::serve(listener, mock.router())
                .with_graceful_shutdown(crate::app::shutdown_signal())
                .await?;
        } else {
            eprintln!("mock Pega listening on http://{}", listener.local_addr()?);
            axum::serve(listener, mock.router())
                .with_graceful_shutdown(crate::app::shutdown_signal())
                .await?;
        }
        Ok(ExitCode::SUCCESS)
    })
}
