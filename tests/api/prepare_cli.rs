//! `pegabridge prepare` as a user runs it.

use crate::helpers::{pegabridge, stderr, stdout};
use std::fs;

const DOC: &str = "<html>\n<head>\n  <title>t</title>\n</head>\n<body></body>\n</html>\n";

#[test]
fn one_bad_file_does_not_stop_the_batch_and_makes_the_exit_code_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("nested")).unwrap();
    fs::write(src.join("a.html"), DOC).unwrap();
    fs::write(src.join("nested/b.htm"), DOC).unwrap();
    fs::write(src.join("bad.html"), b"<html><body>caf\xe9</body></html>").unwrap();
    fs::write(src.join("notes.txt"), "not a template").unwrap();

    let out = pegabridge(tmp.path(), &["prepare", "src", "--out", "out"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("2 changed, 0 already prepared, 1 failed"));
    assert!(
        stderr(&out).contains("bad.html: not valid UTF-8"),
        "{}",
        stderr(&out)
    );
    assert!(tmp.path().join("out/nested/b.htm").is_file());
    assert!(tmp.path().join("out/a.html").is_file());
    assert!(
        !tmp.path().join("out/bad.html").exists(),
        "nothing half-written"
    );
    assert!(!tmp.path().join("out/notes.txt").exists());
}

#[test]
fn in_place_rewrites_only_templates_that_change() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("a.html"), DOC).unwrap();
    let first = pegabridge(tmp.path(), &["prepare", ".", "--in-place"]);
    assert!(first.status.success());
    let prepared = fs::read_to_string(tmp.path().join("a.html")).unwrap();
    assert!(prepared.contains("<meta name=\"InteractionId\""));

    let before = fs::metadata(tmp.path().join("a.html"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = pegabridge(tmp.path(), &["prepare", "a.html", "--in-place"]);
    assert!(stdout(&second).contains("0 changed, 1 already prepared, 0 failed"));
    let after = fs::metadata(tmp.path().join("a.html"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "an unchanged template is not rewritten");
    let leftovers: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left behind");
}

#[test]
fn an_output_mode_is_required_and_only_one() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("a.html"), DOC).unwrap();
    let none = pegabridge(tmp.path(), &["prepare", "a.html"]);
    assert_eq!(none.status.code(), Some(2));
    let both = pegabridge(
        tmp.path(),
        &["prepare", "a.html", "--in-place", "--out", "o"],
    );
    assert_eq!(both.status.code(), Some(2));
    assert_eq!(fs::read_to_string(tmp.path().join("a.html")).unwrap(), DOC);
}

#[test]
fn a_missing_path_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = pegabridge(tmp.path(), &["prepare", "nope", "--in-place"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("nope: no such file or directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn updated_defaults_are_reported_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = "<html><head><meta name=\"UniqueOfferId\" content=\"{{$UniqueOfferId|default:'OLD'}}\"></head></html>";
    fs::write(tmp.path().join("a.html"), doc).unwrap();
    let out = pegabridge(tmp.path(), &["prepare", "a.html", "--in-place"]);
    assert!(
        stdout(&out).contains(
            "updated UniqueOfferId (was `{{$UniqueOfferId|default:'OLD'}}`), added InteractionId"
        ),
        "{}",
        stdout(&out)
    );
}
