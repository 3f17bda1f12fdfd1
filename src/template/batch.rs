//! Many templates at once: finding them, rewriting them in parallel, writing the results
//! atomically, and counting what happened. One bad file never stops the batch.

use super::charset;
use super::fields::{manual_fields, ManualField};
use super::{rewrite, Plan, Rewrite};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// A template found under the given paths.
#[derive(Debug, Clone)]
pub struct Source {
    /// Where it is.
    pub path: PathBuf,
    /// Its path below the folder it was found in (its file name when given directly).
    pub relative: PathBuf,
}

/// Where prepared templates go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Nowhere: only look (`check`).
    DryRun,
    /// Over the originals, only where something changed.
    InPlace,
    /// Into this folder, keeping relative paths; every template is written.
    Dir(PathBuf),
}

/// What happened to one template.
#[derive(Debug)]
pub struct FileReport {
    /// The template.
    pub path: PathBuf,
    /// The rewrite, or why it failed.
    pub result: Result<Processed, String>,
}

/// A template that was read and rewritten.
#[derive(Debug)]
pub struct Processed {
    /// What the rewrite did.
    pub rewrite: Rewrite,
    /// The manual fields the template uses (`{{$X}}`), configured ones included; scanned for
    /// dry runs (`check`) only.
    pub manual_fields: Vec<ManualField>,
}

/// Counts over a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Templates whose tags were added or updated.
    pub changed: usize,
    /// Templates that already carried every tag.
    pub unchanged: usize,
    /// Templates that could not be read, rewritten or written.
    pub failed: usize,
}

impl Summary {
    /// Counts the reports.
    pub fn of(reports: &[FileReport]) -> Self {
        let mut s = Self::default();
        for r in reports {
            match &r.result {
                Ok(p) if p.rewrite.changed() => s.changed += 1,
                Ok(_) => s.unchanged += 1,
                Err(_) => s.failed += 1,
            }
        }
        s
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} changed, {} already prepared, {} failed",
            self.changed, self.unchanged, self.failed
        )
    }
}

/// Every `*.html`/`*.htm` under `paths` (files are taken as given), sorted per argument.
pub fn find(paths: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    let mut sources = Vec::new();
    for root in paths {
        if root.is_file() {
            let name = root.file_name().map(PathBuf::from).unwrap_or_default();
            sources.push(Source {
                path: root.clone(),
                relative: name,
            });
            continue;
        }
        if !root.is_dir() {
            bail!("{}: no such file or directory", root.display());
        }
        let mut found = Vec::new();
        for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
            let entry = entry.with_context(|| format!("reading {}", root.display()))?;
            if entry.file_type().is_file() && is_template(entry.path()) {
                found.push(Source {
                    path: entry.path().to_owned(),
                    relative: entry.path().strip_prefix(root)?.to_owned(),
                });
            }
        }
        sources.extend(found);
    }
    Ok(sources)
}

fn is_template(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"))
}

/// Rewrites every source in parallel (with a progress bar on a terminal) and writes results.
pub fn run(sources: &[Source], plan: &Plan, dest: &Destination) -> Vec<FileReport> {
    let bar = if std::io::stderr().is_terminal() && sources.len() > 1 {
        ProgressBar::new(sources.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} templates {elapsed}")
                .expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let reports = sources
        .par_iter()
        .map(|source| {
            let result = process(source, plan, dest).map_err(|e| format!("{e:#}"));
            bar.inc(1);
            FileReport {
                path: source.path.clone(),
                result,
            }
        })
        .collect();
    bar.finish_and_clear();
    reports
}

/// Reads, rewrites and writes one template.
pub fn process(source: &Source, plan: &Plan, dest: &Destination) -> anyhow::Result<Processed> {
    let input = std::fs::read(&source.path).context("cannot read")?;
    let rewrite = rewrite(&input, plan)?;
    // Only `check` reports the other manual fields: `prepare` does not decode and scan.
    let manual_fields = match dest {
        Destination::DryRun => manual_fields(&charset::decode(&input, rewrite.encoding)),
        _ => Vec::new(),
    };
    match dest {
        Destination::DryRun => {}
        Destination::InPlace if rewrite.changed() => {
            write_atomically(&source.path, &rewrite.output, &source.path)?
        }
        Destination::InPlace => {}
        Destination::Dir(dir) => {
            write_atomically(&dir.join(&source.relative), &rewrite.output, &source.path)?
        }
    }
    Ok(Processed {
        rewrite,
        manual_fields,
    })
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader (or a crash) never sees half a template. The file gets the permissions of `source`
/// (the template it was prepared from), not the temporary file's 0600.
pub fn write_atomically(path: &Path, bytes: &[u8], source: &Path) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    if let Ok(meta) = std::fs::metadata(source) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
