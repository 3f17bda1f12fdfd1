//! Shared test helpers: the built binary, temporary folders, the default plan.

use pegabridge::template::expr::ExpressionFormat;
use pegabridge::template::variable::pega_defaults;
use pegabridge::template::Plan;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (tests read fixtures from it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The plan the example configuration gives: UniqueOfferId/NONE and InteractionId/0.
pub fn default_plan() -> Plan {
    Plan::new(&pega_defaults(), &ExpressionFormat::default())
}

/// Runs the `pegabridge` binary in `dir` with no ambient configuration.
pub fn pegabridge(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .args(args)
        .current_dir(dir)
        .env_remove("PEGABRIDGE_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

/// `pegabridge ARGS` in a fresh folder whose `pegabridge.toml` is `toml`.
pub fn with_config(toml: &str, args: &[&str]) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("pegabridge.toml"), toml).unwrap();
    pegabridge(tmp.path(), args)
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every template under `dir`, recursively.
pub fn templates_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = walkdir(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "html" || e == "htm"))
        .collect();
    found.sort();
    found
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Asserts that `output` is `input` with one contiguous block inserted, and that the block
/// holds only manual-field `<meta>` tags (and, when `allow_head`, a `<head>` around them) and
/// whitespace. Returns the block.
pub fn inserted_block(input: &[u8], output: &[u8], allow_head: bool) -> String {
    let prefix = input.iter().zip(output).take_while(|(a, b)| a == b).count();
    let max_suffix = input.len().min(output.len()) - prefix;
    let suffix = input
        .iter()
        .rev()
        .zip(output.iter().rev())
        .take(max_suffix)
        .take_while(|(a, b)| a == b)
        .count();
    assert_eq!(
        prefix + suffix,
        input.len(),
        "bytes of the original were changed, not only added to"
    );
    // The common prefix may reach into the block when the block ends like the text after
    // it (`<meta ...>` before `</head>`): try the block shifted left by a few bytes.
    let end = output.len() - suffix;
    for shift in 0..=prefix.min(64) {
        let (start, stop) = (prefix - shift, end - shift);
        if output[stop..end] != input[start..prefix] {
            continue;
        }
        let block = String::from_utf8_lossy(&output[start..stop]).into_owned();
        if only_tags(&block, allow_head) {
            return block;
        }
    }
    panic!(
        "inserted block holds more than meta tags: {:?}",
        String::from_utf8_lossy(&output[prefix..end])
    );
}

fn only_tags(block: &str, allow_head: bool) -> bool {
    let tag = regex::Regex::new(
        r#"^\s*<meta name="(UniqueOfferId|InteractionId)" content="[^"<]*"( /)?>\s*"#,
    )
    .unwrap();
    let mut rest = block.trim().to_owned();
    if allow_head {
        rest = rest.replace("<head>", "").replace("</head>", "");
    }
    let mut tags = 0;
    while let Some(m) = tag.find(&rest) {
        rest = rest[m.end()..].to_owned();
        tags += 1;
    }
    tags > 0 && rest.trim().is_empty()
}

/// The placement law: an HTML5 parser (html5ever) finds exactly one tag per field of `plan`
/// as a child of the document's head, with the field's expression as its content.
pub fn head_law(html: &str, plan: &Plan) {
    let doc = scraper::Html::parse_document(html);
    let head = doc
        .select(&scraper::Selector::parse("head").expect("a valid selector"))
        .next()
        .expect("a parser always makes a head");
    for field in plan.fields() {
        let tags: Vec<_> = head
            .children()
            .filter_map(scraper::ElementRef::wrap)
            .filter(|e| {
                e.value().name() == "meta"
                    && e.value()
                        .attr("name")
                        .is_some_and(|n| n.eq_ignore_ascii_case(&field.name))
            })
            .collect();
        assert_eq!(
            tags.len(),
            1,
            "{}: one tag in the head a parser builds, in:\n{html}",
            field.name
        );
        assert_eq!(
            tags[0].value().attr("content"),
            Some(field.expression.as_str()),
            "{}: its content",
            field.name
        );
    }
}

/// `target/NAME/bin/python`, a virtual environment made once per machine with `packages`
/// (pinned, from PyPI): made when it does not yet import `imports` (`"aiosmtpd, dkim"`).
/// `Err` says why it could not be had (the caller fails naming it, unless its skip variable
/// is set).
pub fn venv(name: &str, imports: &str, packages: &[&str]) -> Result<PathBuf, String> {
    let imports_ok = |python: &Path| {
        std::process::Command::new(python)
            .args(["-c", &format!("import {imports}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let venv = root().join("target").join(name);
    let python = venv.join("bin/python");
    if imports_ok(&python) {
        return Ok(python);
    }
    let made = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let pip = std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages)
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !pip.status.success() || !imports_ok(&python) {
        return Err(format!(
            "pip install {} failed: {}",
            packages.join(" "),
            String::from_utf8_lossy(&pip.stderr)
        ));
    }
    Ok(python)
}
