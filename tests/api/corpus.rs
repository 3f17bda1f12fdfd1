//! Every real template in tests/corpus (MIT, see the LICENSE files there).

use crate::helpers::{
    default_plan, head_law, inserted_block, pegabridge, root, stdout, templates_under,
};
use pegabridge::template::{rewrite, FieldStatus, Placement};

#[test]
fn preparing_any_corpus_template_only_adds_the_two_tags_to_its_head() {
    let plan = default_plan();
    let templates = templates_under(&root().join("tests/corpus"));
    assert!(
        templates.len() >= 80,
        "corpus is there: {}",
        templates.len()
    );
    for path in templates {
        let input = std::fs::read(&path).unwrap();
        let once = rewrite(&input, &plan).unwrap();
        assert_eq!(once.placement, Placement::Head, "{}", path.display());
        assert!(
            once.fields
                .iter()
                .all(|f| f.status == FieldStatus::Inserted),
            "{}",
            path.display()
        );
        let block = inserted_block(&input, &once.output, false);
        assert_eq!(block.matches("<meta").count(), 2, "{}", path.display());
        let head_end = String::from_utf8_lossy(&once.output)
            .find("</head>")
            .unwrap();
        let tags_at = String::from_utf8_lossy(&once.output)
            .find("InteractionId")
            .unwrap();
        assert!(
            tags_at < head_end,
            "{}: tags are in the head",
            path.display()
        );
        // And an HTML5 parser agrees.
        let text = once.encoding.decode(&once.output).0;
        head_law(&text, &plan);
    }
}

#[test]
fn preparing_a_corpus_template_twice_equals_preparing_it_once() {
    let plan = default_plan();
    for path in templates_under(&root().join("tests/corpus")) {
        let once = rewrite(&std::fs::read(&path).unwrap(), &plan).unwrap();
        let twice = rewrite(&once.output, &plan).unwrap();
        assert!(!twice.changed(), "{}", path.display());
        assert_eq!(once.output, twice.output, "{}", path.display());
    }
}

#[test]
fn the_cli_prepares_the_whole_corpus_and_check_then_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = root().join("tests/corpus");
    let out = tmp.path().join("out");
    let run = pegabridge(
        tmp.path(),
        &[
            "prepare",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(run.status.success(), "{}", stdout(&run));
    let total = templates_under(&corpus).len();
    assert!(stdout(&run).contains(&format!("{total} changed, 0 already prepared, 0 failed")));
    assert_eq!(templates_under(&out).len(), total);

    let check_before = pegabridge(tmp.path(), &["check", corpus.to_str().unwrap()]);
    assert_eq!(check_before.status.code(), Some(1));
    let check_after = pegabridge(tmp.path(), &["check", out.to_str().unwrap()]);
    assert_eq!(
        check_after.status.code(),
        Some(0),
        "{}",
        stdout(&check_after)
    );

    let again = pegabridge(
        tmp.path(),
        &["prepare", out.to_str().unwrap(), "--in-place"],
    );
    assert!(stdout(&again).contains(&format!("0 changed, {total} already prepared, 0 failed")));
}
