//! `pegabridge engagement fetch-ranges`: downloads Apple's Private Relay egress list to the
//! file `[engagement] apple_relay_ranges` names (a running `serve` reads it again when it
//! changes). The file is replaced whole, and only with a list that parses.

use super::out;
use crate::config::Settings;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// `pegabridge engagement ...`.
#[derive(Debug, Subcommand)]
pub enum EngagementCommand {
    /// Download Apple's Private Relay egress ranges (for Apple Mail Privacy Protection).
    FetchRanges(FetchArgs),
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Where the list is published.
    #[arg(long, default_value = crate::engagement::relay::APPLE_RANGES_URL)]
    pub url: String,
    /// The file to write (default: `[engagement] apple_relay_ranges`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The largest list taken (Apple's is a few MB).
const MAX_BYTES: usize = 64 * 1024 * 1024;

pub fn run(settings: &Settings, command: EngagementCommand) -> anyhow::Result<ExitCode> {
    let EngagementCommand::FetchRanges(args) = command;
    let Some(out_file) = args
        .out
        .or_else(|| settings.engagement.apple_relay_ranges.clone())
    else {
        eprintln!("no file to write: give --out FILE or set [engagement] apple_relay_ranges");
        return Ok(ExitCode::from(2));
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let text = runtime.block_on(download(&args.url))?;
    let ranges = crate::engagement::relay::Ranges::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: not the egress list: {e}", args.url))?;
    anyhow::ensure!(!ranges.is_empty(), "{}: the list is empty", args.url);
    let dir = out_file.parent().filter(|d| !d.as_os_str().is_empty());
    let tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(std::path::Path::new(".")))
        .context("making a file beside the list")?;
    std::fs::write(tmp.path(), &text)?;
    tmp.persist(&out_file)
        .with_context(|| format!("writing {}", out_file.display()))?;
    out!(
        "wrote {} ({} ranges after merging)",
        out_file.display(),
        ranges.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn download(url: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .user_agent(crate::USER_AGENT)
        .timeout(std::time::Duration::from_secs(120))
        .build()?;
    let mut res = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", crate::delivery::client::explain(&e)))?
        .error_for_status()
        .map_err(|e| anyhow::anyhow!("{url}: {}", e.without_url()))?;
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        body.extend_from_slice(&chunk);
        anyhow::ensure!(
            body.len() <= MAX_BYTES,
            "{url}: larger than {MAX_BYTES} bytes"
        );
    }
    String::from_utf8(body).context("the list is not UTF-8 text")
}
