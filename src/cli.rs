//! The command line: `prepare`, `check`, `config check`.
//!
//! Exit codes: 0 success; 1 the command ran and found problems (a template failed or lacks a
//! field); 2 the command could not run (bad arguments or configuration).

use crate::config::Settings;
use crate::template::batch::{self, Destination, Summary};
use crate::template::check::{render_text, summary_line, CheckReport};
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
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
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
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
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
    Check,
}

/// Starts `tracing` on stderr.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref()).context("loading configuration")?;
    match cli.command {
        Command::Prepare(args) => prepare(&settings, args),
        Command::Check(args) => check(&settings, args),
        Command::Config(ConfigCommand::Check) => {
            println!(
                "configuration ok: {} manual fields ({})",
                settings.variables.len(),
                settings
                    .variables
                    .iter()
                    .map(|v| v.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
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
            Ok(p) if !p.rewrite.changed() => println!("unchanged  {path}"),
            Ok(p) => {
                let notes: Vec<String> = p
                    .rewrite
                    .fields
                    .iter()
                    .flat_map(|f| {
                        let status = match &f.status {
                            FieldStatus::Present => None,
                            FieldStatus::Inserted => Some(format!("added {}", f.name)),
                            FieldStatus::Updated { previous } => {
                                Some(format!("updated {} (was `{previous}`)", f.name))
                            }
                        };
                        let dups = (f.duplicates_removed > 0).then(|| {
                            format!("removed {} duplicate {}", f.duplicates_removed, f.name)
                        });
                        status.into_iter().chain(dups)
                    })
                    .collect();
                println!("changed    {path}: {}", notes.join(", "));
            }
        }
    }
    let summary = Summary::of(&reports);
    println!("{}", summary_line(&summary));
    Ok(if summary.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn check(settings: &Settings, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let sources = batch::find(&args.paths)?;
    let plan = settings.plan();
    let report = CheckReport::new(batch::run(&sources, &plan, &Destination::DryRun), &plan);
    match args.format {
        Format::Text => print!("{}", render_text(&report)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
