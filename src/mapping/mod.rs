//! Mappings (`mappings/NAME.toml`): where in a Pega trigger the recipients and the manual
//! fields are, their rules, and which template and campaign the send uses. Loaded and checked
//! once at start-up; `apply` turns a trigger into personal broadcasts.

pub mod apply;
pub mod bulk;
pub mod path;

use crate::config::secret::Secret;
use crate::config::{describe, ExpandEnv, Settings};
use crate::template::fields::{manual_fields, ManualField};
use crate::template::Variable;
use anyhow::Context;
use figment::providers::{Format, Toml};
use figment::Figment;
use path::FieldPath;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// A mapping file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    /// A file in the templates folder.
    pub template: String,
    /// The subject of the send (rendered with the manual fields when the mail is sent).
    pub subject: String,
    /// The sender's display name in `From` (rendered like the subject); `[mail] from` gives
    /// the address.
    #[serde(default)]
    pub from_name: Option<String>,
    /// Whether pegabridge tracks opens and clicks of this mapping's mail (`[tracking]`; off
    /// when the relay tracks them itself).
    #[serde(default = "yes")]
    pub tracking: bool,
    /// Campaign fields of every event.
    pub campaign_id: i64,
    pub campaign_name: String,
    pub campaign_object_id: i64,
    pub content_id: i64,
    pub content_name: String,
    /// QUICKMAIL, SINGLEMAIL, CAMPAIGNMAIL, ...
    pub broadcast_event_type: String,
    pub sub_type: String,
    #[serde(default)]
    pub mailing_type: String,
    #[serde(default)]
    pub test_mailing: bool,
    /// How Pega authenticates its triggers.
    pub auth: TriggerAuth,
    /// Where the recipient is.
    pub recipient: RecipientSpec,
    /// Manual fields, by name.
    #[serde(default)]
    pub variables: BTreeMap<String, VariableSpec>,
    /// A path whose value identifies a recipient's send, so a repeated trigger is not sent
    /// twice (e.g. `InteractionID`). The `Idempotency-Key` header works for whole triggers.
    pub idempotency_key: Option<FieldPath>,
}

fn yes() -> bool {
    true
}

/// Trigger authentication.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TriggerAuth {
    /// `Authorization: Bearer TOKEN`.
    Bearer { token: Secret },
    /// `Authorization: Basic ...`.
    Basic { username: String, password: Secret },
}

/// `[recipient]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientSpec {
    /// An array: one personal broadcast per element.
    pub each: Option<FieldPath>,
    /// The email address (required).
    pub email: FieldPath,
    /// The customer's external id.
    pub external_id: Option<FieldPath>,
}

/// `[variables.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableSpec {
    /// Where the value is.
    pub path: FieldPath,
    /// A missing value is an error (422).
    #[serde(default)]
    pub required: bool,
    /// A regular expression the value (as text) must match in full.
    pub pattern: Option<String>,
    /// The value when the trigger has none (any JSON type).
    pub default: Option<toml::Value>,
}

/// A loaded, checked mapping.
#[derive(Debug)]
pub struct Mapping {
    /// The file stem: `POST /webhooks/NAME`.
    pub name: String,
    /// The file as written.
    pub file: MappingFile,
    /// Compiled patterns, by variable name.
    pub patterns: HashMap<String, regex::Regex>,
    /// The template's text.
    pub template_html: String,
    /// The manual fields the template uses.
    pub template_fields: Vec<ManualField>,
    /// What one trigger may expand to.
    pub limits: apply::TriggerLimits,
}

impl Mapping {
    /// Every path the mapping reads a recipient's values at (not `[recipient] each`).
    pub fn paths(&self) -> impl Iterator<Item = &FieldPath> {
        let f = &self.file;
        std::iter::once(&f.recipient.email)
            .chain(&f.recipient.external_id)
            .chain(&f.idempotency_key)
            .chain(f.variables.values().map(|v| &v.path))
    }
}

/// Every mapping, by name.
#[derive(Debug, Default, Clone)]
pub struct Mappings(HashMap<String, Arc<Mapping>>);

/// What loading found: mappings, and warnings that do not stop the server.
#[derive(Debug, Default)]
pub struct Loaded {
    pub mappings: Mappings,
    pub warnings: Vec<String>,
}

impl Mappings {
    /// The mapping called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Mapping>> {
        self.0.get(name).cloned()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The mapping names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.0.keys().cloned().collect();
        names.sort();
        names
    }

    /// Mappings whose trigger credentials are empty or an example value.
    pub fn weak_credentials(&self) -> Vec<String> {
        let mut weak: Vec<String> = self
            .0
            .values()
            .filter(|m| match &m.file.auth {
                TriggerAuth::Bearer { token } => crate::config::is_weak(token.expose()),
                TriggerAuth::Basic { password, .. } => crate::config::is_weak(password.expose()),
            })
            .map(|m| {
                format!(
                    "mapping `{}`: auth is empty or an example value (change-me...)",
                    m.name
                )
            })
            .collect();
        weak.sort();
        weak
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Loads and checks every mapping and its template from the configured folders: what
    /// `serve`, `preview` and `config check` run.
    pub fn load_configured(settings: &Settings) -> anyhow::Result<Loaded> {
        Self::load(
            &settings.resolve(&settings.mappings.dir),
            &settings.resolve(&settings.templates.dir),
            &settings.variables,
            settings.server.trigger_limits(),
        )
    }

    /// Loads every `*.toml` in `dir`; every problem, with file and key, is in the error.
    pub fn load(
        dir: &Path,
        templates: &Path,
        configured: &[Variable],
        limits: apply::TriggerLimits,
    ) -> anyhow::Result<Loaded> {
        let mut loaded = Loaded::default();
        let mut errors = Vec::new();
        if !dir.is_dir() {
            return Ok(loaded);
        }
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for path in files {
            match load_one(&path, templates, configured, limits) {
                Ok((mapping, warnings)) => {
                    loaded.warnings.extend(warnings);
                    loaded
                        .mappings
                        .0
                        .insert(mapping.name.clone(), Arc::new(mapping));
                }
                Err(e) => errors.push(format!("{}: {e:#}", path.display())),
            }
        }
        if !errors.is_empty() {
            anyhow::bail!("{}", errors.join("\n"));
        }
        Ok(loaded)
    }
}

fn load_one(
    path: &Path,
    templates: &Path,
    configured: &[Variable],
    limits: apply::TriggerLimits,
) -> anyhow::Result<(Mapping, Vec<String>)> {
    // The same reader as the main configuration: `${VAR}` expansion, file and key in errors.
    let file: MappingFile = Figment::from(ExpandEnv(Toml::file_exact(path)))
        .extract()
        .map_err(|e| anyhow::anyhow!(describe(e)))?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .context("file name is not UTF-8")?
        .to_owned();
    let template_path = inside(templates, &file.template)?;
    let template_html = std::fs::read_to_string(&template_path)
        .with_context(|| format!("key `template`: cannot read {}", template_path.display()))?;
    let template_fields = manual_fields(&template_html);
    let mut patterns = HashMap::new();
    let mut warnings = Vec::new();
    for (var, spec) in &file.variables {
        if let Some(p) = &spec.pattern {
            let re = regex::Regex::new(&format!("^(?:{p})$"))
                .with_context(|| format!("key `variables.{var}.pattern`: invalid pattern"))?;
            patterns.insert(var.clone(), re);
        }
        let used = template_fields.iter().any(|f| &f.name == var)
            || configured.iter().any(|v| v.name.as_ref() == var);
        if !used {
            warnings.push(format!(
                "{}: variables.{var} is not used by template {} nor configured in [[variables]]",
                path.display(),
                file.template
            ));
        }
    }
    Ok((
        Mapping {
            name,
            file,
            patterns,
            template_html,
            template_fields,
            limits,
        },
        warnings,
    ))
}

/// `template`, resolved inside the templates folder: a relative path without `..`, and (with
/// symbolic links followed) still inside the folder.
fn inside(templates: &Path, template: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::path::Component;
    let relative = Path::new(template);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        anyhow::bail!(
            "key `template`: `{template}` must be a path inside the templates folder ({}), without `..` or a leading `/`",
            templates.display()
        );
    }
    let path = templates.join(relative);
    if let (Ok(real), Ok(folder)) = (path.canonicalize(), templates.canonicalize()) {
        if !real.starts_with(&folder) {
            anyhow::bail!(
                "key `template`: `{template}` leads outside the templates folder ({})",
                templates.display()
            );
        }
    }
    Ok(path)
}
