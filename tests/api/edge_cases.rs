//! The edge cases of the template issue, one test each.

use crate::helpers::{default_plan, inserted_block};
use pegabridge::template::charset::CharsetError;
use pegabridge::template::expr::ExpressionFormat;
use pegabridge::template::variable::{Variable, VariableName};
use pegabridge::template::{rewrite, FieldStatus, Placement, Plan, RewriteError};

fn prepare(input: &str) -> String {
    String::from_utf8(rewrite(input.as_bytes(), &default_plan()).unwrap().output).unwrap()
}

#[test]
fn a_document_with_html_but_no_head_gets_a_head_before_its_body() {
    let input = "<html>\n<body><p>x</p></body>\n</html>\n";
    let out = rewrite(input.as_bytes(), &default_plan()).unwrap();
    assert_eq!(out.placement, Placement::CreatedHead);
    let text = String::from_utf8(out.output.clone()).unwrap();
    assert!(
        text.starts_with("<html>\n<head>\n  <meta name=\"UniqueOfferId\""),
        "{text}"
    );
    assert!(text.contains("</head>\n<body>"), "{text}");
    inserted_block(input.as_bytes(), &out.output, true);
}

#[test]
fn a_fragment_gets_the_tags_on_top_one_per_line() {
    let out = rewrite(b"<p>{{ name }}</p>", &default_plan()).unwrap();
    assert_eq!(out.placement, Placement::FragmentTop);
    assert_eq!(
        String::from_utf8(out.output).unwrap(),
        "<meta name=\"UniqueOfferId\" content=\"{{$UniqueOfferId|default:'NONE'}}\">\n\
         <meta name=\"InteractionId\" content=\"{{$InteractionId|default:'0'}}\">\n\
         <p>{{ name }}</p>"
    );
}

#[test]
fn a_prepared_fragment_is_not_prepared_again() {
    let once = prepare("<p>{{ name }}</p>");
    assert_eq!(prepare(&once), once);
}

#[test]
fn a_fragment_with_a_doctype_gets_the_tags_after_it() {
    // Nothing may precede a doctype; after it, an HTML parser makes the head the tags go in.
    let out = rewrite(b"<!DOCTYPE html>\n<p>x</p>", &default_plan()).unwrap();
    assert_eq!(out.placement, Placement::FragmentTop);
    assert_eq!(
        String::from_utf8(out.output).unwrap(),
        "<!DOCTYPE html>\n\
         <meta name=\"UniqueOfferId\" content=\"{{$UniqueOfferId|default:'NONE'}}\">\n\
         <meta name=\"InteractionId\" content=\"{{$InteractionId|default:'0'}}\">\n\
         <p>x</p>"
    );
}

#[test]
fn a_head_inside_a_comment_is_not_the_head() {
    let out = prepare("<!-- <head></head> --><html><head></head></html>");
    assert!(
        out.starts_with("<!-- <head></head> --><html><head><meta"),
        "{out}"
    );
}

#[test]
fn a_head_inside_a_conditional_comment_is_not_the_head() {
    let out =
        prepare("<!--[if mso]><head><title>o</title></head><![endif]--><html><head></head></html>");
    assert!(
        out.contains("<![endif]--><html><head><meta name=\"UniqueOfferId\""),
        "{out}"
    );
}

#[test]
fn a_head_inside_a_script_is_not_the_head() {
    let input = "<script>var s = '<head></head>';</script><html><body></body></html>";
    let out = prepare(input);
    assert!(
        out.starts_with("<script>var s = '<head></head>';</script><html><head><meta"),
        "{out}"
    );
}

#[test]
fn xhtml_documents_get_self_closing_tags() {
    let out = prepare("<html xmlns=\"http://www.w3.org/1999/xhtml\"><head></head></html>");
    assert!(
        out.contains("content=\"{{$InteractionId|default:'0'}}\" />"),
        "{out}"
    );
    let html5 = prepare("<!DOCTYPE html><html><head></head></html>");
    assert!(html5.contains("default:'0'}}\"></head>"), "{html5}");
}

#[test]
fn new_tags_follow_the_indentation_of_the_head() {
    let out = prepare("<html>\n  <head>\n      <title>t</title>\n  </head>\n</html>");
    assert!(
        out.contains("<head>\n      <meta name=\"UniqueOfferId\" content=\"{{$UniqueOfferId|default:'NONE'}}\">\n      <meta name=\"InteractionId\""),
        "{out}"
    );
    assert!(
        out.contains("default:'0'}}\">\n      <title>t</title>"),
        "{out}"
    );
    // An empty head laid out in lines: its children one step deeper than `</head>`.
    let empty = prepare("<html>\n  <head>\n  </head>\n</html>");
    assert!(
        empty.contains("<head>\n    <meta name=\"UniqueOfferId\""),
        "{empty}"
    );
    assert!(empty.contains("default:'0'}}\">\n  </head>"), "{empty}");
}

#[test]
fn a_tag_with_another_default_is_updated_in_place_and_reported() {
    let input = "<html><head><meta data-x=\"1\" name=\"UniqueOfferId\" content=\"{{$UniqueOfferId|default:'OLD'}}\"><title>t</title></head></html>";
    let out = rewrite(input.as_bytes(), &default_plan()).unwrap();
    assert_eq!(
        out.fields[0].status,
        FieldStatus::Updated {
            previous: "{{$UniqueOfferId|default:'OLD'}}".into()
        }
    );
    let text = String::from_utf8(out.output).unwrap();
    assert!(text.starts_with("<html><head><meta name=\"InteractionId\" content=\"{{$InteractionId|default:'0'}}\"><meta data-x=\"1\" name=\"UniqueOfferId\" content=\"{{$UniqueOfferId|default:'NONE'}}\"><title>"), "{text}");
    assert_eq!(text.matches("name=\"UniqueOfferId\"").count(), 1);
}

#[test]
fn a_second_tag_for_the_same_field_is_removed() {
    let input = "<html><head><meta name=\"InteractionId\" content=\"{{$InteractionId|default:'0'}}\"><meta name=\"InteractionId\" content=\"x\"></head></html>";
    let out = rewrite(input.as_bytes(), &default_plan()).unwrap();
    assert_eq!(out.fields[1].duplicates_removed, 1);
    let text = String::from_utf8(out.output).unwrap();
    assert_eq!(text.matches("name=\"InteractionId\"").count(), 1, "{text}");
}

#[test]
fn quotes_and_backslashes_in_a_default_are_escaped_for_smarty_and_html() {
    let var = Variable {
        name: VariableName::parse("Greeting").unwrap(),
        default: r#"it's "5" \ <b> & co"#.into(),
    };
    let plan = Plan::new(&[var], &ExpressionFormat::default());
    let out = rewrite(b"<html><head></head></html>", &plan).unwrap();
    assert_eq!(
        String::from_utf8(out.output).unwrap(),
        r#"<html><head><meta name="Greeting" content="{{$Greeting|default:'it\'s &quot;5&quot; \\ &lt;b> &amp; co'}}"></head></html>"#
    );
}

#[test]
fn a_template_in_a_declared_charset_keeps_its_bytes() {
    let input = b"<html><head><meta charset=\"windows-1252\"><title>Caf\xe9</title></head><body>cr\xe8me</body></html>";
    let out = rewrite(input, &default_plan()).unwrap();
    assert_eq!(out.encoding.name(), "windows-1252");
    inserted_block(input, &out.output, false);
    assert!(out.output.ends_with(b"<body>cr\xe8me</body></html>"));
}

#[test]
fn a_template_that_is_not_utf8_and_declares_nothing_is_refused() {
    let err = rewrite(
        b"<html><head></head><body>caf\xe9</body></html>",
        &default_plan(),
    )
    .unwrap_err();
    match err {
        RewriteError::Charset(CharsetError::InvalidUtf8 { offset }) => assert_eq!(offset, 28),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn a_head_that_ends_on_a_chunk_boundary_keeps_every_later_byte() {
    // The rewriter stops after </head> and copies the rest: tags cut by the 8 KiB chunking
    // must come out whole, whatever the offset.
    for pad in 8100..8200 {
        let input = format!(
            "<html><head><title>{}</title></head><body><a href=\"{{{{ url }}}}\">x</a>{}</body></html>",
            "t".repeat(pad),
            "<p class=\"c\">y€ü</p>".repeat(1000)
        );
        let out = rewrite(input.as_bytes(), &default_plan()).unwrap();
        inserted_block(input.as_bytes(), &out.output, false);
    }
}

#[test]
fn a_removed_tag_on_its_own_line_leaves_no_blank_line() {
    for nl in ["\n", "\r\n"] {
        let input = format!("<html>{nl}  <head>{nl}    <meta name=\"InteractionId\" content=\"{{{{$InteractionId|default:'0'}}}}\">{nl}    <meta name=\"InteractionId\" content=\"x\">{nl}    <title>t</title>{nl}  </head>{nl}</html>");
        let out = rewrite(input.as_bytes(), &default_plan()).unwrap();
        assert_eq!(out.fields[1].duplicates_removed, 1);
        let text = String::from_utf8(out.output).unwrap();
        let lines: Vec<&str> = text.split(nl).collect();
        assert!(lines.iter().all(|l| !l.trim().is_empty()), "{text:?}");
        assert_eq!(text.matches("name=\"InteractionId\"").count(), 1, "{text}");
        assert!(
            text.contains(&format!("default:'0'}}}}\">{nl}    <title>t</title>")),
            "{text:?}"
        );
    }
}
