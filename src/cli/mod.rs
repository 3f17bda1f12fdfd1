//! The command line: `prepare`, `check`, `config check`.
//!
//! Exit codes: 0 success; 1 the command ran and found problems (a template failed or lacks a
//! field); 2 the command could not run (bad arguments or configuration).

mod engagement;
mod init;
mod log_fields;
mod ops;

/// `println!` for command output: a closed pipe (`pegabridge preview | head`) ends the
/// command quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(e.into());
        }
    }};
}
pub(crate) use out;

use crate::config::Settings;
use crate::template::batch::{self, Destination, Summary};
use crate::template::check::{render_text, CheckReport};
use crate::template::rewrite::FieldOutcome;
use crate::template::FieldStatus;
use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// pegabridge: Pega's identifiers through email, and every email interaction back to Pega.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file (default: ./pegabridge.toml if present, else built-in defaults).
    #[arg(long, global = true, env = "PEGABRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// More logging (-v info, -vv debug; `serve` logs at info already); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as text (colours only on a terminal) or as JSON objects for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PEGABRIDGE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add or update the manual-field <meta> tags in templates.
    Prepare(PrepareArgs),
    /// Report templates that lack a field or carry a stale default (exit 1 if any).
    Check(CheckArgs),
    /// Write a starter configuration, mapping, template and example trigger (fresh tokens).
    Init(init::InitArgs),
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Serve Pega's triggers (POST /webhooks/NAME), previews and health.
    Serve,
    /// Show what a trigger would produce, per recipient, without storing or sending anything.
    Preview(PreviewArgs),
    /// Send one rendered message of a trigger to an address through `[mail]` (nothing is
    /// stored, no event is sent): for checking a template and the relay.
    SendTest(SendTestArgs),
    /// Engagement data: `fetch-ranges` downloads Apple's Private Relay egress list.
    #[command(subcommand)]
    Engagement(engagement::EngagementCommand),
    /// Inspect, replay, pause and resume deliveries to Pega.
    #[command(subcommand)]
    Deliveries(ops::DeliveriesCommand),
    /// Inspect and replay the mail's sends (`[mail]`): a dead send (the sender's or the
    /// relay's problem, fixed since) is sent again.
    #[command(subcommand)]
    Sends(ops::SendsCommand),
    /// Late bounces and complaints (`[bounces]`): `ingest` reads one message (a delivery
    /// status notification or a feedback report) on standard input, as an MTA's pipe
    /// transport gives it, and records what it reports.
    #[command(subcommand)]
    Bounces(BouncesCommand),
    /// A local stand-in for the Pega endpoint, to test a setup against.
    MockPega(ops::MockArgs),
    /// Shell completions: `pegabridge completions bash > /etc/bash_completion.d/pegabridge`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `pegabridge bounces ...`.
#[derive(Debug, Subcommand)]
pub enum BouncesCommand {
    /// Reads one message on standard input and records the bounce or complaint it reports.
    /// Exit 0 when it was taken (recorded, a duplicate, or nothing to record: said on
    /// stderr), 75 (EX_TEMPFAIL: the MTA tries again) when the store could not take it.
    Ingest {
        /// The envelope recipient(s) the MTA delivered it to (Postfix's pipe: `${recipient}`):
        /// the return path that names the personal broadcast.
        #[arg(long = "recipient")]
        recipients: Vec<String>,
    },
}

/// `pegabridge preview`.
#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// The mapping (mappings/NAME.toml).
    #[arg(long)]
    pub mapping: String,
    /// A file holding the trigger JSON (`-` for standard input).
    #[arg(long)]
    pub trigger: PathBuf,
    /// Include the whole personalized HTML.
    #[arg(long)]
    pub html: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// `pegabridge send-test`.
#[derive(Debug, Args)]
pub struct SendTestArgs {
    /// The mapping (mappings/NAME.toml).
    #[arg(long)]
    pub mapping: String,
    /// A file holding the trigger JSON (`-` for standard input); its first recipient is used.
    #[arg(long)]
    pub trigger: PathBuf,
    /// Where the message goes instead of the recipient.
    #[arg(long)]
    pub to: String,
}

/// `pegabridge prepare`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("output").required(true).args(["out", "in_place"])))]
pub struct PrepareArgs {
    /// Template files or folders (searched recursively for *.html and *.htm).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Write prepared templates into this folder, keeping relative paths.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rewrite the templates where they are (only those that change).
    #[arg(long)]
    pub in_place: bool,
}

/// `pegabridge check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Template files or folders.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For machines.
    Json,
}

/// `pegabridge config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration exactly as `serve` does; report every problem.
    Check {
        /// Also reach the store (without creating or migrating it) and the Pega endpoint (TLS
        /// handshake, an OAuth2 token, a HEAD request), without sending an event.
        #[arg(long)]
        connect: bool,
        /// Check the built-in defaults when no configuration file is found (otherwise that is
        /// an error: the check would say nothing about the file `serve` will read).
        #[arg(long)]
        allow_defaults: bool,
    },
}

/// Libraries whose debug and trace logs carry what goes over the wire.
const WIRE_LOGGERS: [&str; 7] = [
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
    "sqlx",
    "tower_http",
];

/// Starts `tracing` on stderr.
pub fn init_logging(cli: &Cli) {
    let serving = matches!(cli.command, Command::Serve | Command::MockPega(_));
    let default = match (cli.verbose, serving) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The HTTP, TLS and database libraries log headers and bodies (mail content, personal
    // data, credentials) at debug and trace: they stay at info whatever RUST_LOG says, unless
    // PEGABRIDGE_LOG_WIRE=1 asks for them (for debugging a connection, never in production).
    if std::env::var("PEGABRIDGE_LOG_WIRE").map_or(true, |v| v != "1") {
        for quiet in WIRE_LOGGERS {
            if let Ok(d) = format!("{quiet}=info").parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            builder
                .fmt_fields(log_fields::TextFields)
                .with_ansi(std::io::stderr().is_terminal())
                .try_init()
        }
    };
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::MockPega(args) = cli.command {
        return ops::mock_pega(args);
    }
    if let Command::Init(args) = cli.command {
        return init::init(args);
    }
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        let mut command = Cli::command();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, "pegabridge", &mut script);
        out!("{}", String::from_utf8_lossy(&script).trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    // The operator's commands read only `[store]`: the server's other secrets need not be in
    // their environment.
    let only: Option<&'static [&'static str]> = match cli.command {
        Command::Deliveries(_) | Command::Sends(_) => Some(&["store"]),
        Command::Engagement(_) => Some(&["engagement"]),
        _ => None,
    };
    let settings =
        Settings::load_only(cli.config.as_deref(), only).context("loading configuration")?;
    match cli.command {
        Command::Prepare(args) => prepare(&settings, args),
        Command::Check(args) => check(&settings, args),
        Command::Config(ConfigCommand::Check {
            connect,
            allow_defaults,
        }) => config_check(&settings, connect, allow_defaults),
        Command::Serve => serve(settings),
        Command::Preview(args) => preview(&settings, args),
        Command::SendTest(args) => send_test(&settings, args),
        Command::Deliveries(command) => ops::deliveries(&settings, command),
        Command::Sends(command) => ops::sends(&settings, command),
        Command::Bounces(BouncesCommand::Ingest { recipients }) => {
            ops::bounces_ingest(&settings, &recipients)
        }
        Command::Engagement(command) => engagement::run(&settings, command),
        Command::MockPega(_) | Command::Completions { .. } | Command::Init(_) => {
            unreachable!("handled above")
        }
    }
}

fn config_check(
    settings: &Settings,
    connect: bool,
    allow_defaults: bool,
) -> anyhow::Result<ExitCode> {
    match &settings.source {
        Some(file) => {
            let shown = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
            out!("configuration file: {}", shown.display())
        }
        None if allow_defaults => out!("configuration file: none (built-in defaults)"),
        None => {
            eprintln!("no configuration file: give --config FILE, run where pegabridge.toml is, or pass --allow-defaults to check the built-in defaults");
            return Ok(ExitCode::from(2));
        }
    }
    let loaded = crate::mapping::Mappings::load_configured(settings)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let names: Vec<String> = settings
        .variables
        .iter()
        .map(|v| v.name.to_string())
        .collect();
    out!(
        "configuration ok: {} manual fields ({}), {} mappings",
        names.len(),
        names.join(", "),
        loaded.mappings.len()
    );
    for warning in settings.warnings() {
        eprintln!("warning: {warning}");
    }
    for weak in settings
        .weak_tokens()
        .into_iter()
        .chain(loaded.mappings.weak_credentials())
    {
        eprintln!("warning: {weak}: set a secret before production");
    }
    if connect {
        return check_connections(settings);
    }
    Ok(ExitCode::SUCCESS)
}

/// `config check --connect`: the store opens, the endpoint answers, the mail relay takes a
/// session (EHLO, STARTTLS, AUTH; nothing sent).
fn check_connections(settings: &Settings) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut ok = true;
        match crate::store::Storage::check(settings).await {
            Ok(found) => out!("store ok: {found}"),
            Err(e) => {
                ok = false;
                eprintln!("store: {}: {e:#}", settings.store_display());
            }
        }
        if let Some(kafka) = &settings.kafka {
            let sink =
                crate::delivery::kafka::KafkaSink::new(kafka, &settings.pega.capture_response)?;
            match crate::delivery::sink::Sink::probe(&sink).await {
                Ok(answer) => out!("kafka ok: {answer}"),
                Err(cause) => {
                    ok = false;
                    eprintln!("kafka: {cause}");
                }
            }
        }
        match crate::delivery::sink::RestSink::new(&settings.pega)? {
            None if settings.kafka.is_some() => {}
            None => out!("pega: no endpoint configured"),
            Some(sink) => match crate::delivery::sink::Sink::probe(&sink).await {
                Ok(answer) => out!("pega ok: {answer}"),
                Err(cause) => {
                    ok = false;
                    eprintln!("pega: {cause}");
                }
            },
        }
        if let Some(mail) = &settings.mail {
            match crate::mail::Relay::new(mail)?.probe().await {
                Ok(answer) => out!("mail relay ok: {answer}"),
                Err(refusal) => {
                    ok = false;
                    eprintln!("mail relay: {}:{}: {refusal}", mail.host, mail.port);
                }
            }
        }
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let app = crate::app::Application::build(&settings).await?;
        tracing::info!(
            listen = settings.server.listen.as_str(),
            port = app.port(),
            "pegabridge listening"
        );
        app.run_until_stopped(crate::app::shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A trigger from a file (`-`: standard input).
fn read_trigger(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", path.display()))
}

fn send_test(settings: &Settings, args: SendTestArgs) -> anyhow::Result<ExitCode> {
    let Some(mail) = &settings.mail else {
        eprintln!("send-test: no [mail] section: configure the SMTP relay first");
        return Ok(ExitCode::from(2));
    };
    let loaded = crate::mapping::Mappings::load_configured(settings)?;
    let mapping = loaded
        .mappings
        .get(&args.mapping)
        .with_context(|| format!("no mapping named `{}`", args.mapping))?;
    let trigger = read_trigger(&args.trigger)?;
    let preview = match crate::broadcast::preview(
        &settings.account,
        &settings.plan(),
        &settings.variables,
        &mapping,
        &trigger,
        false,
    ) {
        Ok(p) => p,
        Err(crate::broadcast::TriggerError::Invalid(errors)) => {
            for e in errors {
                eprintln!("invalid: {} ({}): {}", e.field, e.path, e.message);
            }
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let first = preview
        .recipients
        .first()
        .context("the trigger has no recipient")?;
    // What `serve` sends: tracked links, the pixel, List-Unsubscribe (ids 0: its opens,
    // clicks and unsubscribes join no personal broadcast and are recorded nowhere).
    let composer = crate::mail::Composer::new(mail, settings.tracking.as_ref())?
        .with_return_paths(settings.bounces.as_ref());
    let uuid = crate::event::new_uuid();
    let message = composer.personal(&mapping, &args.to, &uuid, &first.manual_options, (0, 0))?;
    let runtime = tokio::runtime::Runtime::new()?;
    // The relay's connection pool lives on the runtime: made and dropped inside it.
    let sent = runtime.block_on(async {
        let relay = crate::mail::Relay::new(mail)?;
        anyhow::Ok(relay.send(&message).await)
    })?;
    match sent {
        Ok(()) => {
            out!(
                "sent to {} through {}:{} (Message-ID <{uuid}@{}>)",
                args.to,
                mail.host,
                mail.port,
                mail.message_id_domain
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => {
            eprintln!(
                "send-test: the relay {}:{} did not accept the message: {refusal}",
                mail.host, mail.port
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn preview(settings: &Settings, args: PreviewArgs) -> anyhow::Result<ExitCode> {
    let loaded = crate::mapping::Mappings::load_configured(settings)?;
    let mapping = loaded
        .mappings
        .get(&args.mapping)
        .with_context(|| format!("no mapping named `{}`", args.mapping))?;
    let trigger = read_trigger(&args.trigger)?;
    let result = crate::broadcast::preview(
        &settings.account,
        &settings.plan(),
        &settings.variables,
        &mapping,
        &trigger,
        args.html,
    );
    let preview = match result {
        Ok(p) => p,
        Err(crate::broadcast::TriggerError::Invalid(errors)) => {
            for e in errors {
                eprintln!("invalid: {} ({}): {}", e.field, e.path, e.message);
            }
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    match args.format {
        Format::Json => out!("{}", serde_json::to_string_pretty(&preview)?),
        Format::Text => out!("{}", render_preview(&preview).trim_end_matches('\n')),
    }
    Ok(ExitCode::SUCCESS)
}

/// The preview for people: aligned name/value columns per recipient, then warnings.
fn render_preview(preview: &crate::broadcast::Preview) -> String {
    let mut out = String::new();
    for (i, r) in preview.recipients.iter().enumerate() {
        out.push_str(&format!(
            "recipient {} <{}>\n",
            i + 1,
            r.event.email_address.as_deref().unwrap_or_default()
        ));
        let width = r
            .manual_options
            .keys()
            .chain(r.meta.keys())
            .map(String::len)
            .max()
            .unwrap_or(0);
        out.push_str("  manual options:\n");
        for (k, v) in &r.manual_options {
            out.push_str(&format!("    {k:<width$}  {v}\n"));
        }
        out.push_str("  meta tags:\n");
        for (k, v) in &r.meta {
            let v = v.as_str().unwrap_or_default();
            out.push_str(&format!(
                "    {k:<width$}  <meta name=\"{k}\" content=\"{v}\">\n"
            ));
        }
        out.push_str("  event:\n");
        let event = serde_json::to_string_pretty(&[&r.event]).unwrap_or_default();
        for line in event.lines() {
            out.push_str(&format!("    {line}\n"));
        }
        for w in &r.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
        if let Some(html) = &r.html {
            out.push_str("  html:\n");
            out.push_str(html);
            out.push('\n');
        }
    }
    out
}

fn prepare(settings: &Settings, args: PrepareArgs) -> anyhow::Result<ExitCode> {
    let dest = match args.out {
        Some(dir) => Destination::Dir(dir),
        None => Destination::InPlace,
    };
    let sources = batch::find(&args.paths)?;
    let plan = settings.plan();
    let reports = batch::run(&sources, &plan, &dest);
    for report in &reports {
        let path = report.path.display();
        match &report.result {
            Err(e) => eprintln!("failed     {path}: {e}"),
            Ok(p) if !p.rewrite.changed() => out!("unchanged  {path}"),
            Ok(p) => out!("changed    {path}: {}", changes(&p.rewrite.fields)),
        }
    }
    let summary = Summary::of(&reports);
    out!("{summary}");
    Ok(if summary.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What `prepare` did to a template's fields, for people: "added X, updated Y (was `...`)".
fn changes(fields: &[FieldOutcome]) -> String {
    let mut notes = Vec::new();
    for f in fields {
        match &f.status {
            FieldStatus::Present => {}
            FieldStatus::Inserted => notes.push(format!("added {}", f.name)),
            FieldStatus::Updated { previous } => {
                notes.push(format!("updated {} (was `{previous}`)", f.name))
            }
        }
        if f.duplicates_removed > 0 {
            notes.push(format!(
                "removed {} duplicate {}",
                f.duplicates_removed, f.name
            ));
        }
    }
    notes.join(", ")
}

fn check(settings: &Settings, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let sources = batch::find(&args.paths)?;
    let plan = settings.plan();
    let report = CheckReport::new(batch::run(&sources, &plan, &Destination::DryRun), &plan);
    match args.format {
        Format::Text => out!("{}", render_text(&report).trim_end_matches('\n')),
        Format::Json => out!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
