//! `pegabridge init`: a commented starter configuration, mapping, template and example trigger
//! in a folder, with fresh random tokens, so `serve` runs there at once (as listmonk's
//! `--new-config`). Nothing is overwritten unless asked.

use super::out;
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `pegabridge init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The folder to write into (made if missing).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite files that are already there.
    #[arg(long)]
    pub force: bool,
}

/// The starter files: where each goes, and its text.
const FILES: [(&str, &str); 4] = [
    ("pegabridge.toml", include_str!("../../pegabridge.toml")),
    (
        "mappings/offer.toml",
        include_str!("../../mappings/offer.toml"),
    ),
    (
        "mappings/example-trigger.json",
        include_str!("../../mappings/example-trigger.json"),
    ),
    (
        "templates/offer.html",
        include_str!("../../templates/offer.html"),
    ),
];

/// The examples' placeholder tokens, each replaced by a fresh random one.
const PLACEHOLDERS: [&str; 3] = [":-change-me-too}", ":-change-me-admin}", ":-change-me}"];

/// A random token of 32 hex digits (128 bits).
fn token() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// `text` with every placeholder token replaced by a fresh one.
fn with_tokens(text: &str) -> String {
    PLACEHOLDERS.iter().fold(text.to_owned(), |t, p| {
        t.replace(p, &format!(":-{}}}", token()))
    })
}

pub fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let existing: Vec<&str> = FILES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| args.dir.join(name).exists())
        .collect();
    if !existing.is_empty() && !args.force {
        eprintln!(
            "{}: already there ({}); nothing written (--force overwrites)",
            args.dir.display(),
            existing.join(", ")
        );
        return Ok(ExitCode::from(2));
    }
    for (name, text) in FILES {
        write(&args.dir.join(name), &with_tokens(text))?;
    }
    out!(
        "wrote {} (pegabridge.toml, mappings/offer.toml, mappings/example-trigger.json, templates/offer.html)",
        args.dir.display()
    );
    out!("the tokens are new random ones (set PEGABRIDGE_*_TOKEN in the environment to override)");
    out!("next: edit [pega] endpoint and [account] in pegabridge.toml, then:");
    out!("  pegabridge config check --connect && pegabridge serve");
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` at `path` (its folder made), readable by its owner only: it holds tokens.
fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_placeholder_token_is_replaced_by_a_fresh_one() {
        let all: String = super::FILES.iter().map(|(_, t)| *t).collect();
        assert!(all.contains("change-me"), "the examples have placeholders");
        let written = super::with_tokens(&all);
        assert!(!written.contains("change-me"), "{written}");
        assert_ne!(super::with_tokens(&all), written, "fresh tokens each time");
    }
}
