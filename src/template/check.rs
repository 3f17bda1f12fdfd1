//! `pegabridge check`: which templates lack a field, carry a stale default, or cannot be read.

use super::batch::FileReport;
use super::fields::ManualField;
use super::{FieldStatus, Plan};
use serde::Serialize;
use std::path::PathBuf;

/// One thing wrong with one template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// No `<meta>` tag for the field.
    Missing { field: String },
    /// The tag is there with other content.
    Stale {
        field: String,
        found: String,
        expected: String,
    },
    /// More than one tag for the field.
    Duplicate { field: String, count: usize },
    /// Tags for the field that a browser puts in the body, not the head.
    OutsideHead {
        field: String,
        lines: Vec<usize>,
        /// What ended the head before them, if it ended before the textual `</head>`.
        head_ended_by: Option<String>,
    },
    /// The template could not be read.
    Unreadable { message: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing { field } => write!(f, "{field}: missing <meta> tag"),
            Problem::Stale {
                field,
                found,
                expected,
            } => write!(
                f,
                "{field}: stale default: found `{found}`, expected `{expected}`"
            ),
            Problem::Duplicate { field, count } => {
                write!(f, "{field}: {count} <meta> tags, expected one")
            }
            Problem::OutsideHead {
                field,
                lines,
                head_ended_by,
            } => {
                let lines: Vec<String> = lines.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{field}: the <meta> tag on line {} is outside the head a browser builds",
                    lines.join(", ")
                )?;
                if let Some(by) = head_ended_by {
                    write!(f, " (the head ends at {by})")?;
                }
                write!(f, "; prepare moves it into the head")
            }
            Problem::Unreadable { message } => write!(f, "cannot check: {message}"),
        }
    }
}

/// The check of one template.
#[derive(Debug, Serialize)]
pub struct FileCheck {
    /// The template.
    pub path: PathBuf,
    /// Whether it has no problem.
    pub ok: bool,
    /// What is wrong.
    pub problems: Vec<Problem>,
    /// Manual fields it uses beyond the configured ones (they become broadcast_manual_options).
    pub other_fields: Vec<ManualField>,
}

/// The whole report (`--format json` prints it).
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// One entry per template.
    pub files: Vec<FileCheck>,
    /// How many templates are ok and how many have problems.
    pub ok: usize,
    /// Templates with at least one problem.
    pub failing: usize,
}

impl CheckReport {
    /// Builds the report from a dry-run batch.
    pub fn new(reports: Vec<FileReport>, plan: &Plan) -> Self {
        let files: Vec<FileCheck> = reports.into_iter().map(|r| file_check(r, plan)).collect();
        let ok = files.iter().filter(|f| f.ok).count();
        let failing = files.len() - ok;
        Self { files, ok, failing }
    }

    /// Whether every template passed.
    pub fn passed(&self) -> bool {
        self.failing == 0
    }
}

fn file_check(report: FileReport, plan: &Plan) -> FileCheck {
    let (problems, other_fields) = match report.result {
        Err(message) => (vec![Problem::Unreadable { message }], Vec::new()),
        Ok(processed) => {
            let problems = processed
                .rewrite
                .fields
                .iter()
                .zip(plan.fields())
                .flat_map(|(outcome, field)| {
                    let name = outcome.name.clone();
                    let status = match &outcome.status {
                        FieldStatus::Present => None,
                        FieldStatus::Inserted => Some(Problem::Missing {
                            field: name.clone(),
                        }),
                        FieldStatus::Updated { previous } => Some(Problem::Stale {
                            field: name.clone(),
                            found: describe_content(previous),
                            expected: field.expression.clone(),
                        }),
                    };
                    let dup = (outcome.duplicates_removed > 0).then(|| Problem::Duplicate {
                        field: name.clone(),
                        count: outcome.duplicates_removed + 1,
                    });
                    let outside =
                        (!outcome.outside_head.is_empty()).then(|| Problem::OutsideHead {
                            field: name,
                            lines: outcome.outside_head.clone(),
                            head_ended_by: processed
                                .rewrite
                                .head_ended_early
                                .as_ref()
                                .map(|e| format!("{} on line {}", e.what, e.line)),
                        });
                    status.into_iter().chain(dup).chain(outside)
                })
                .collect();
            let other = processed
                .manual_fields
                .into_iter()
                .filter(|m| !plan.fields().iter().any(|f| f.name == m.name))
                .collect();
            (problems, other)
        }
    };
    FileCheck {
        path: report.path,
        ok: problems.is_empty(),
        problems,
        other_fields,
    }
}

/// The content as written, with the escaping `prepare` uses undone.
fn describe_content(raw: &str) -> String {
    raw.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&amp;", "&")
}

/// The human-readable report: one line per problem, then the other fields, then a total.
pub fn render_text(report: &CheckReport) -> String {
    let mut out = String::new();
    for file in &report.files {
        let path = file.path.display();
        for p in &file.problems {
            out.push_str(&format!("{path}: {p}\n"));
        }
        if !file.other_fields.is_empty() {
            let names: Vec<String> = file
                .other_fields
                .iter()
                .map(|m| match &m.default {
                    Some(d) => format!("{} (default '{d}')", m.name),
                    None => m.name.clone(),
                })
                .collect();
            out.push_str(&format!(
                "{path}: uses manual fields {}\n",
                names.join(", ")
            ));
        }
    }
    out.push_str(&format!(
        "{} templates checked: {} ok, {} with problems\n",
        report.files.len(),
        report.ok,
        report.failing
    ));
    out
}
