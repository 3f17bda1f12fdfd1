//! Settings: `pegabridge.toml` (or `--config FILE`), then `PEGABRIDGE_SECTION__KEY`
//! environment overrides; `${VAR}` in any string reads the environment. Unknown keys are
//! errors that name the file and the key.

pub mod bounces;
pub mod engagement;
mod env;
pub mod events;
pub mod kafka;
pub mod mail;
pub mod pega;
pub mod secret;
pub mod tls;

use crate::template::expr::ExpressionFormat;
use crate::template::variable::{pega_defaults, Variable};
use crate::template::Plan;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub use env::{expand, ExpandEnv};

/// The file read when `--config` is not given (if it exists).
pub const DEFAULT_FILE: &str = "pegabridge.toml";

/// Everything pegabridge is configured with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The manual fields every template carries (`[[variables]]`).
    #[serde(default = "pega_defaults")]
    pub variables: Vec<Variable>,
    /// Template preparation (`[templates]`).
    #[serde(default)]
    pub templates: TemplateSettings,
    /// Where mapping files are (`[mappings]`).
    #[serde(default)]
    pub mappings: MappingSettings,
    /// The HTTP server (`[server]`).
    #[serde(default)]
    pub server: ServerSettings,
    /// The database (`[store]`).
    #[serde(default)]
    pub store: StoreSettings,
    /// The common fields of every event (`[account]`).
    #[serde(default)]
    pub account: crate::event::Account,
    /// `POST /activities` (`[activities]`).
    #[serde(default)]
    pub activities: pega::ActivitySettings,
    /// Delivery to Pega (`[pega]`).
    #[serde(default)]
    pub pega: pega::PegaSettings,
    /// Delivery to a Kafka topic (`[kafka]`), beside or instead of `[pega] endpoint`.
    #[serde(default)]
    pub kafka: Option<kafka::KafkaSettings>,
    /// The operator API (`[admin]`).
    #[serde(default)]
    pub admin: pega::AdminSettings,
    /// Sending the mail (`[mail]`; without it nothing is sent).
    #[serde(default)]
    pub mail: Option<mail::MailSettings>,
    /// Tracked links, the open pixel and one-click unsubscribe (`[tracking]`).
    #[serde(default)]
    pub tracking: Option<mail::TrackingSettings>,
    /// Late bounces and complaints: return paths per message (`[bounces]`).
    #[serde(default)]
    pub bounces: Option<bounces::BounceSettings>,
    /// Mail platforms' event webhooks (`[events.sendgrid]`, `[events.mailgun]`, ...).
    #[serde(default)]
    pub events: events::EventsSettings,
    #[serde(default)]
    pub engagement: engagement::EngagementSettings,
    /// Where relative paths are resolved from: the config file's folder.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The configuration file read (none: built-in defaults).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[templates]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateSettings {
    /// The folder of templates mappings refer to.
    pub dir: PathBuf,
    /// The personalization expression with `%name%` and `%default%`.
    pub expression: ExpressionFormat,
}

impl Default for TemplateSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("templates"),
            expression: ExpressionFormat::default(),
        }
    }
}

/// `[mappings]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingSettings {
    /// The folder of `NAME.toml` mapping files.
    pub dir: PathBuf,
}

impl Default for MappingSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("mappings"),
        }
    }
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// The address to listen on.
    pub listen: String,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` are believed (CIDRs); the client's
    /// address is otherwise the socket's peer.
    pub trusted_proxies: Vec<crate::engagement::client::Cidr>,
    /// The largest request body accepted, in bytes.
    pub body_limit: usize,
    /// How long requests in flight may take to finish on shutdown, in seconds.
    pub shutdown_grace_secs: u64,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection is kept, in seconds.
    pub header_timeout_secs: u64,
    /// How long a request may take from its headers to its answer, in seconds.
    pub request_timeout_secs: u64,
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Recipients one trigger may have.
    pub max_recipients: usize,
    /// Bytes of manual options (as JSON) one recipient may carry.
    pub max_options_bytes: usize,
    /// Bytes of manual options all recipients of one trigger may carry together.
    pub max_trigger_options_bytes: usize,
    /// ...and at most this many times the trigger's own size (1 MiB at least): a value copied
    /// into every recipient counts once per copy.
    pub max_trigger_expansion: usize,
    /// Requests whose sender is known only once their body is read (mail platforms that sign
    /// the body: SendGrid, Mailgun, Mandrill, SES): how many may be read at once (more are
    /// answered 503 at once)...
    pub max_unverified_bodies: usize,
    /// ...and how long the body of one may take to arrive, in seconds (408 after it).
    pub unverified_body_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        let limits = TriggerLimits::default();
        Self {
            listen: "127.0.0.1:8080".into(),
            trusted_proxies: Vec::new(),
            body_limit: 1024 * 1024,
            shutdown_grace_secs: 10,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            max_connections: 1024,
            max_recipients: limits.max_recipients,
            max_options_bytes: limits.max_options_bytes,
            max_trigger_options_bytes: limits.max_trigger_options_bytes,
            max_trigger_expansion: limits.max_trigger_expansion,
            max_unverified_bodies: 64,
            unverified_body_secs: 10,
        }
    }
}

impl ServerSettings {
    /// What one trigger may expand to.
    pub fn trigger_limits(&self) -> TriggerLimits {
        TriggerLimits {
            max_recipients: self.max_recipients,
            max_options_bytes: self.max_options_bytes,
            max_trigger_options_bytes: self.max_trigger_options_bytes,
            max_trigger_expansion: self.max_trigger_expansion,
        }
    }

    /// Settings `serve` could not use.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "server.listen: `{}` is not an address and port (e.g. 127.0.0.1:8080 or [::]:8080)",
                self.listen
            ));
        }
        for (key, value) in [
            ("server.body_limit", self.body_limit as u64),
            ("server.header_timeout_secs", self.header_timeout_secs),
            ("server.request_timeout_secs", self.request_timeout_secs),
            ("server.max_connections", self.max_connections as u64),
            ("server.max_recipients", self.max_recipients as u64),
            ("server.max_options_bytes", self.max_options_bytes as u64),
            (
                "server.max_trigger_options_bytes",
                self.max_trigger_options_bytes as u64,
            ),
            (
                "server.max_trigger_expansion",
                self.max_trigger_expansion as u64,
            ),
            (
                "server.max_unverified_bodies",
                self.max_unverified_bodies as u64,
            ),
            ("server.unverified_body_secs", self.unverified_body_secs),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be at least 1"));
            }
        }
        problems
    }
}

impl StoreSettings {
    /// Settings the store could not open with.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("sqlite://")
            || self.url.starts_with("postgres://")
            || self.url.starts_with("postgresql://"))
        {
            problems.push(format!(
                "store.url: must start with sqlite:// or postgres:// (got `{}`)",
                self.url.split("://").next().unwrap_or_default()
            ));
        }
        if !matches!(self.synchronous.as_str(), "full" | "normal") {
            problems.push(format!(
                "store.synchronous: `{}` is not one of `full`, `normal`",
                self.synchronous
            ));
        }
        if self.pool_size == 0 {
            problems.push("store.pool_size: must be at least 1".into());
        }
        if self.connect_timeout_secs == 0 {
            problems.push("store.connect_timeout_secs: must be at least 1".into());
        }
        if self.group_commit_ms > 1000 {
            problems.push(format!(
                "store.group_commit_ms: at most 1000 (got {}): every answer may wait that long",
                self.group_commit_ms
            ));
        }
        problems
    }
}

/// `[store]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `sqlite://FILE` (relative to the config file's folder).
    pub url: String,
    /// SQLite `synchronous`: `full` (default) survives a crash of the machine, `normal` only a
    /// crash of the process. With group commit both measured the same rate.
    pub synchronous: String,
    /// PostgreSQL connections per instance for the work (at least 2; `LISTEN` has one more).
    pub pool_size: u32,
    /// PostgreSQL: how long connecting may take before the cause is named (refused, unknown
    /// host, no answer).
    pub connect_timeout_secs: u64,
    /// SQLite: `/ready` fails when the database's filesystem has less free space than this (in
    /// MiB): SQLite may still commit small writes into its journal's old space, so a failed
    /// write alone comes too late.
    pub min_free_mb: u64,
    /// Delivered events (and their attempts) older than this many days are removed in the
    /// background; 0 keeps them. Dead letters stay until replayed or purged.
    pub retention_days: u64,
    /// Activities of requests that arrive within this many milliseconds of each other are
    /// recorded in one transaction (group commit); no request's answer waits longer than this
    /// plus the commits before it. 0 records each request alone.
    pub group_commit_ms: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://pegabridge.db".into(),
            synchronous: "full".into(),
            pool_size: 10,
            connect_timeout_secs: 5,
            min_free_mb: 64,
            retention_days: 7,
            group_commit_ms: 5,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` names a file that is not there.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// Syntax, types, unknown keys, unset environment variables.
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Loads `path`, or `./pegabridge.toml` when it exists, or the built-in defaults; then
    /// applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_only(path, None)
    }

    /// [`Settings::load`] keeping only the top-level tables named in `only` (the others are
    /// their defaults, and their `${VAR}`s need not be set); all when `None`.
    pub fn load_only(
        path: Option<&Path>,
        only: Option<&'static [&'static str]>,
    ) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) if !p.is_file() => return Err(ConfigError::Missing(p.to_owned())),
            Some(p) => Some(p.to_owned()),
            None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
        };
        let mut figment = Figment::new();
        if let Some(file) = &file {
            figment = figment.merge(env::Only(&Toml::file_exact(file), only));
        }
        let overrides = Env::prefixed("PEGABRIDGE_")
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        figment = figment.merge(env::Only(&overrides, only));
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        settings.base_dir = file
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_owned)
            .unwrap_or_default();
        settings.source = file.clone();
        let base = settings.base_dir.clone();
        settings.pega.tls.resolve(&base);
        if let Some(ses) = &mut settings.events.ses {
            if let Some(f) = &mut ses.certificate_file {
                if f.is_relative() {
                    *f = base.join(&*f);
                }
            }
        }
        if let Some(b) = &mut settings.bounces {
            b.resolve(&base);
        }
        if let Some(mail) = &mut settings.mail {
            mail.resolve(&base);
        }
        if let Some(kafka) = &mut settings.kafka {
            kafka.resolve(&base);
        }
        if let Some(f) = &mut settings.engagement.apple_relay_ranges {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        settings.validate(only.is_none())?;
        Ok(settings)
    }

    /// Every problem of the loaded settings, all reported at once; `files` also reads the
    /// files they name (an operator's command on a part of them, such as downloading the
    /// relay list, does not need them yet).
    fn validate(&self, files: bool) -> Result<(), ConfigError> {
        let mut problems = self.pega.problems();
        problems.extend(self.server.problems());
        problems.extend(self.store.problems());
        if let Some(mail) = &self.mail {
            problems.extend(mail.problems());
        }
        if let Some(kafka) = &self.kafka {
            problems.extend(kafka.problems());
            let capture = pega::Format::CaptureResponse;
            if kafka.format == capture && self.pega.format != capture {
                problems.extend(self.pega.capture_response.problems());
            }
            if self.pega.lease_secs <= kafka.timeout_secs {
                problems.push(format!(
                    "pega.lease_secs ({}) must be longer than kafka.timeout_secs ({}): a produce must fit in its events' lease",
                    self.pega.lease_secs, kafka.timeout_secs
                ));
            }
        }
        if let Some(t) = &self.tracking {
            problems.extend(t.problems());
        }
        if let Some(b) = &self.bounces {
            problems.extend(b.problems());
        }
        problems.extend(self.events.problems());
        if files {
            problems.extend(self.engagement.problems());
        }
        let mut seen = HashSet::new();
        for v in &self.variables {
            if !seen.insert(v.name.as_ref()) {
                problems.push(format!("variables: `{}` is configured twice", v.name));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let file = self.source.as_ref().map_or_else(
            || "built-in defaults".to_owned(),
            |f| f.display().to_string(),
        );
        let lines: Vec<String> = problems.iter().map(|p| format!("{file}: {p}")).collect();
        Err(ConfigError::Invalid(lines.join("\n")))
    }

    /// The tags `prepare` writes and `check` expects.
    pub fn plan(&self) -> Plan {
        Plan::new(&self.variables, &self.templates.expression)
    }

    /// `[store] url` with a relative SQLite file resolved against the config file's folder.
    pub fn store_url(&self) -> String {
        let url = &self.store.url;
        match url.strip_prefix("sqlite://") {
            Some(path) if !path.starts_with('/') && !path.starts_with(':') => {
                format!("sqlite://{}", self.resolve(Path::new(path)).display())
            }
            _ => url.clone(),
        }
    }

    /// Tokens that are empty or the examples' placeholders (`change-me...`): fine on a laptop,
    /// a hole in production. One line per token, naming its key.
    /// Settings that work but lose something a user would expect: said by `config check` and
    /// at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(t) = &self.tracking {
            if t.base_url.starts_with("http://") {
                warnings.push(format!(
                    "tracking.base_url `{}` is http: mail clients offer one-click unsubscribe (RFC 8058) only for https links, so List-Unsubscribe-Post is left out",
                    t.base_url
                ));
            }
        }
        if let Some(m) = &self.mail {
            if m.reply_to.is_none() {
                warnings.push("mail.reply_to is not set: replies go to mail.from, and List-Unsubscribe's mailto: target is mail.from".into());
            }
        }
        warnings
    }

    pub fn weak_tokens(&self) -> Vec<String> {
        let mut weak = Vec::new();
        for (key, token) in [
            ("activities.token", self.activities.token.as_ref()),
            ("admin.token", self.admin.token.as_ref()),
        ] {
            if let Some(t) = token {
                if is_weak(t.expose()) {
                    weak.push(format!("{key} is empty or an example value (change-me...)"));
                }
            }
        }
        weak
    }

    /// `[store] url` for messages, without its credentials.
    pub fn store_display(&self) -> String {
        without_credentials(&self.store_url())
    }

    /// A configured path, resolved against the config file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// A URL for messages: any `user:password@` removed (text that is not a URL as it is).
pub fn without_credentials(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => text.to_owned(),
    }
}

/// A URL a server sent us (a redirect's `Location`), for messages: credentials, query and
/// fragment removed (they may carry tokens).
pub fn without_secrets(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let hidden = u.query().is_some() || u.fragment().is_some();
            u.set_query(None);
            u.set_fragment(None);
            let mut shown = u.to_string();
            if hidden {
                shown.push_str("?…");
            }
            shown
        }
        // A relative location: its query cut the same way.
        Err(_) => match text.split_once(['?', '#']) {
            Some((path, _)) => format!("{path}?…"),
            None => text.to_owned(),
        },
    }
}

/// An empty token or one of the examples' placeholders.
pub fn is_weak(token: &str) -> bool {
    token.trim().is_empty() || token.starts_with("change-me")
}

/// Every error figment found, one per line, each naming key and file; an unknown key also
/// its line in the file and the closest valid key.
pub(crate) fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| match &e.kind {
            figment::error::Kind::UnknownField(field, expected) => unknown_key(&e, field, expected),
            _ => {
                let mut line = e.to_string();
                if !e.path.is_empty() && !line.contains(&e.path.join(".")) {
                    line.push_str(&format!(" (key `{}`)", e.path.join(".")));
                }
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `FILE:LINE: unknown key `a.b`; did you mean `c`?` (the line when the key is in a file).
fn unknown_key(e: &figment::Error, field: &str, expected: &[&str]) -> String {
    let table: Vec<&str> = e.path.iter().map(String::as_str).collect();
    let table = table.strip_suffix(&[field]).unwrap_or(&table);
    let key = table
        .iter()
        .chain([&field])
        .copied()
        .collect::<Vec<_>>()
        .join(".");
    let file = e.metadata.as_ref().and_then(|m| match &m.source {
        Some(figment::Source::File(path)) => Some(path.clone()),
        _ => None,
    });
    let place = match &file {
        Some(path) => match line_of(path, table, field) {
            Some(n) => format!("{}:{n}", path.display()),
            None => path.display().to_string(),
        },
        None => "environment".to_owned(),
    };
    let closest = expected
        .iter()
        .map(|k| (strsim::levenshtein(field, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min();
    let hint = match closest {
        Some((_, k)) => format!("; did you mean `{k}`?"),
        None if expected.is_empty() => String::new(),
        None => format!("; the keys here are {}", expected.join(", ")),
    };
    format!("{place}: unknown key `{key}`{hint}")
}

/// The line (1-based) of `key` in the table `table` of the TOML file at `path`.
fn line_of(path: &Path, table: &[&str], key: &str) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let wanted = table.join(".");
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim()
                .to_owned();
            continue;
        }
        let Some((k, _)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_matches('"');
        // `a.b = 1` inside `[x]` is key `b` of table `x.a`.
        let (prefix, last) = match k.rsplit_once('.') {
            Some((p, l)) => (
                format!("{current}.{p}").trim_start_matches('.').to_owned(),
                l,
            ),
            None => (current.clone(), k),
        };
        if last == key && prefix == wanted {
            return Some(i + 1);
        }
    }
    None
}

/// What one trigger may expand to (`[server]` limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerLimits {
    /// `server.max_recipients`.
    pub max_recipients: usize,
    /// `server.max_options_bytes`: manual options of one recipient, as JSON.
    pub max_options_bytes: usize,
    /// `server.max_trigger_options_bytes`: manual options of all recipients together.
    pub max_trigger_options_bytes: usize,
    /// `server.max_trigger_expansion`: manual options of all recipients together, at most this
    /// many times the trigger's own size (or 1 MiB, if more): a value copied into every
    /// recipient counts once per copy, so a small trigger cannot make a large write.
    pub max_trigger_expansion: usize,
}

impl Default for TriggerLimits {
    fn default() -> Self {
        Self {
            max_recipients: 100_000,
            max_options_bytes: 16 * 1024,
            max_trigger_options_bytes: 32 * 1024 * 1024,
            max_trigger_expansion: 16,
        }
    }
}
