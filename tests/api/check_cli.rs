//! `pegabridge check`: the lint for CI.

use crate::helpers::{pegabridge, stdout};
use std::fs;

const PREPARED: &str = "<html><head><meta name=\"UniqueOfferId\" content=\"{{$UniqueOfferId|default:'NONE'}}\"><meta name=\"InteractionId\" content=\"{{$InteractionId|default:'0'}}\"></head><body>{{$FirstName|default:'you'}} {{$Segment}}</body></html>";

#[test]
fn check_passes_when_every_template_carries_every_field_with_its_default() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("ok.html"), PREPARED).unwrap();
    let out = pegabridge(tmp.path(), &["check", "ok.html"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("1 templates checked: 1 ok, 0 with problems"));
}

#[test]
fn check_fails_with_one_line_per_problem_naming_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let stale = PREPARED.replace("default:'NONE'", "default:'OLD'");
    fs::write(tmp.path().join("stale.html"), &stale).unwrap();
    fs::write(tmp.path().join("bare.html"), "<html><head></head></html>").unwrap();
    let out = pegabridge(tmp.path(), &["check", "."]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("./bare.html: UniqueOfferId: missing <meta> tag"),
        "{text}"
    );
    assert!(
        text.contains("./bare.html: InteractionId: missing <meta> tag"),
        "{text}"
    );
    assert!(
        text.contains("./stale.html: UniqueOfferId: stale default: found `{{$UniqueOfferId|default:'OLD'}}`, expected `{{$UniqueOfferId|default:'NONE'}}`"),
        "{text}"
    );
    assert!(!text.contains("stale.html: InteractionId"), "{text}");
    assert_eq!(
        fs::read_to_string(tmp.path().join("stale.html")).unwrap(),
        stale,
        "check writes nothing"
    );
}

#[test]
fn check_json_lists_problems_and_the_other_manual_fields() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("ok.html"), PREPARED).unwrap();
    fs::write(tmp.path().join("bare.html"), "<html><head></head></html>").unwrap();
    let out = pegabridge(tmp.path(), &["check", ".", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], 1);
    assert_eq!(report["failing"], 1);
    let files = report["files"].as_array().unwrap();
    let bare = files.iter().find(|f| f["path"] == "./bare.html").unwrap();
    assert_eq!(bare["problems"][0]["kind"], "missing");
    assert_eq!(bare["problems"][0]["field"], "UniqueOfferId");
    let ok = files.iter().find(|f| f["path"] == "./ok.html").unwrap();
    assert_eq!(
        ok["other_fields"],
        serde_json::json!([{"name": "FirstName", "default": "you"}, {"name": "Segment", "default": null}])
    );
}
