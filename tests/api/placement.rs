//! Placement a browser agrees with: each case where a textual rule put the tags outside the
//! `<head>` an HTML5 parser builds, prepared and then parsed with html5ever (scraper).

use crate::helpers::{default_plan, head_law, pegabridge, stdout};
use pegabridge::template::{rewrite, FieldStatus, Placement};

const U: &str = "<meta name=\"UniqueOfferId\" content=\"{{$UniqueOfferId|default:'NONE'}}\">";
const I: &str = "<meta name=\"InteractionId\" content=\"{{$InteractionId|default:'0'}}\">";

/// Prepares `input`, checks the law on the result, and returns it.
fn prepared(input: &str) -> String {
    let out = rewrite(input.as_bytes(), &default_plan()).unwrap();
    let text = String::from_utf8(out.output).unwrap();
    head_law(&text, &default_plan());
    let again = rewrite(text.as_bytes(), &default_plan()).unwrap();
    assert!(!again.changed(), "preparing again changes nothing: {text}");
    text
}

#[test]
fn an_omitted_end_of_head_still_gets_the_tags_in_the_head() {
    let out = prepared("<html><head><title>t</title><body><p>x</p></body></html>");
    assert_eq!(
        out,
        format!("<html><head>{U}{I}<title>t</title><body><p>x</p></body></html>")
    );
}

#[test]
fn omitted_end_tags_of_head_and_html_with_a_doctype_are_not_refused() {
    let out = prepared("<!DOCTYPE html>\n<html><head><title>t</title><body><p>x</p>");
    assert!(out.starts_with(&format!("<!DOCTYPE html>\n<html><head>{U}{I}<title>")));
}

#[test]
fn a_field_tag_in_the_body_is_not_taken_for_the_heads() {
    let input =
        "<html><head><title>t</title><body><meta name=\"UniqueOfferId\" content=\"x\"></body>";
    let out = rewrite(input.as_bytes(), &default_plan()).unwrap();
    assert_eq!(out.fields[0].status, FieldStatus::Inserted);
    let text = String::from_utf8(out.output).unwrap();
    assert!(text.contains("<body><meta name=\"UniqueOfferId\" content=\"x\"></body>"));
    head_law(&text, &default_plan());
}

#[test]
fn an_xhtml_self_closed_head_is_a_head_start_tag() {
    let doctype = "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd\">\n";
    let out = prepared(&format!(
        "{doctype}<html xmlns=\"http://www.w3.org/1999/xhtml\"><head/><body><p>x</p></body></html>"
    ));
    assert!(out.contains("<head/><meta name=\"UniqueOfferId\""), "{out}");
    assert!(
        out.contains("default:'0'}}\" /><body>"),
        "XHTML form: {out}"
    );
    let bare = prepared("<html><head/><body><p>x</p></body></html>");
    assert!(
        bare.starts_with("<html><head/><meta"),
        "not above <html>: {bare}"
    );
}

#[test]
fn a_byte_order_mark_stays_at_byte_zero() {
    let out = rewrite("\u{FEFF}<p>Hi</p>".as_bytes(), &default_plan()).unwrap();
    assert_eq!(out.placement, Placement::FragmentTop);
    let text = String::from_utf8(out.output).unwrap();
    assert_eq!(text, format!("\u{FEFF}{U}\n{I}\n<p>Hi</p>"));
    head_law(&text, &default_plan());
}

#[test]
fn tags_that_are_direct_children_of_a_headless_html_are_in_its_head() {
    let input = format!("<html>\n{U}\n{I}\n<body>x</body>\n</html>\n");
    let out = rewrite(input.as_bytes(), &default_plan()).unwrap();
    assert!(!out.changed(), "{:?}", out.fields);
    assert!(out.fields.iter().all(|f| f.status == FieldStatus::Present));
    // One of them missing: added beside the other, in the same implied head.
    let half = format!("<html>\n  <title>t</title>\n  {I}\n<body>x</body>\n</html>\n");
    let out = prepared(&half);
    assert!(out.contains(&format!("<html>\n  {U}\n  <title>")), "{out}");
    assert!(!out.contains("<head>"), "no second head: {out}");
}

#[test]
fn body_content_inside_the_head_ends_it_and_tags_after_it_move_into_the_head() {
    let input = format!(
        "<html>\n<head>\n  <title>t</title>\n  <div style=\"display:none\">Preheader</div>\n  {U}\n</head>\n<body>x</body>\n</html>\n"
    );
    let out = rewrite(input.as_bytes(), &default_plan()).unwrap();
    assert_eq!(out.fields[0].status, FieldStatus::Inserted);
    assert_eq!(out.fields[0].outside_head, vec![5]);
    let ended = out.head_ended_early.clone().expect("the head ended early");
    assert_eq!((ended.line, ended.what.as_str()), (4, "<div>"));
    let text = String::from_utf8(out.output).unwrap();
    assert_eq!(text.matches("name=\"UniqueOfferId\"").count(), 1, "{text}");
    assert!(text.starts_with(&format!("<html>\n<head>\n  {U}\n  {I}\n  <title>")));
    assert!(
        text.contains("</div>\n</head>"),
        "the misplaced tag and its line are gone: {text}"
    );
    head_law(&text, &default_plan());
}

#[test]
fn stray_text_or_a_non_breaking_space_in_the_head_does_not_misplace_the_tags() {
    for stray in ["&nbsp;", "Hello", "\u{a0}"] {
        prepared(&format!(
            "<html><head><title>t</title>{stray}\n</head><body>x</body></html>"
        ));
    }
}

#[test]
fn a_prettifier_nesting_html_and_head_inside_the_head_is_handled() {
    // The shape of kylealwyn/free-html-email-templates templates/albert.html: the body's
    // document nested inside the head, the textual `</head>` at the very end.
    let input = "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n<html xmlns=\"http://www.w3.org/1999/xhtml\">\n <head>\n  <meta content=\"width=device-width\" name=\"viewport\"/>\n  <title>\n   Mail\n  </title>\n  <link href=\"https://fonts.example/css\" rel=\"stylesheet\">\n   <html>\n    <head>\n     <style type=\"text/css\">p { color: red }</style>\n    </head>\n    <body>\n     <table><tr><td>Hello</td></tr></table>\n    </body>\n   </html>\n  </link>\n </head>\n</html>\n";
    let out = prepared(input);
    assert!(out.contains(" <head>\n  <meta name=\"UniqueOfferId\" content=\"{{$UniqueOfferId|default:'NONE'}}\" />\n  <meta name=\"InteractionId\""), "{out}");
}

#[test]
fn existing_tags_are_matched_in_any_case_and_entity_encoding() {
    let lower = "<html><head><meta name=\"uniqueofferid\" content=\"{{$UniqueOfferId|default:'NONE'}}\"><meta NAME=\"INTERACTIONID\" content=\"{{$InteractionId|default:&#39;0&#x27;}}\"></head></html>";
    let out = rewrite(lower.as_bytes(), &default_plan()).unwrap();
    assert!(!out.changed(), "{:?}", out.fields);
    assert_eq!(out.output, lower.as_bytes());
}

#[test]
fn a_head_in_a_template_comment_is_not_the_head() {
    for comment in [
        "{{!-- <html><head></head> --}}",
        "{% comment %}<head><title>old</title></head>{% endcomment %}",
        "{{* <head></head> *}}",
    ] {
        let input = format!(
            "{comment}\n<html>\n<head>\n  <title>t</title>\n</head>\n<body>x</body>\n</html>\n"
        );
        let out = rewrite(input.as_bytes(), &default_plan()).unwrap();
        assert_eq!(out.placement, Placement::Head);
        let text = String::from_utf8(out.output).unwrap();
        assert!(
            text.starts_with(&format!(
                "{comment}\n<html>\n<head>\n  {U}\n  {I}\n  <title>"
            )),
            "{text}"
        );
        // The law holds on what the template renders to: the comment gone.
        head_law(&text.replacen(comment, "", 1), &default_plan());
    }
}

#[test]
fn template_statements_in_the_head_do_not_end_it() {
    let out = prepared(
        "<html><head>{% if dark %}<style>p{}</style>{% endif %}<title>t</title></head><body></body></html>",
    );
    assert!(out.starts_with(&format!("<html><head>{U}{I}{{% if dark %}}")));
    let input = format!(
        "<html><head>{{% if x %}}{U}{{% endif %}}{{{{!-- note --}}}}{I}</head><body></body></html>"
    );
    let out = rewrite(input.as_bytes(), &default_plan()).unwrap();
    assert!(!out.changed(), "{:?}", out.fields);
}

#[test]
fn check_reports_tags_a_browser_would_not_find_in_the_head() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("t.html"),
        format!("<html>\n<head>\n<title>t</title>\n<div>Preheader</div>\n{U}\n{I}\n</head>\n<body></body>\n</html>\n"),
    )
    .unwrap();
    let out = pegabridge(tmp.path(), &["check", "t.html"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("UniqueOfferId: the <meta> tag on line 5 is outside the head a browser builds (the head ends at <div> on line 4)"),
        "{text}"
    );
    assert!(
        text.contains("InteractionId: the <meta> tag on line 6"),
        "{text}"
    );
    let fixed = pegabridge(tmp.path(), &["prepare", "t.html", "--in-place"]);
    assert!(fixed.status.success());
    let again = pegabridge(tmp.path(), &["check", "t.html"]);
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));
}

#[test]
fn charset_refusals_say_what_is_wrong() {
    let mut late = b"<html><head>".to_vec();
    late.extend(std::iter::repeat_n(b' ', 5000));
    late.extend_from_slice(b"<meta charset=\"windows-1252\"></head><p>caf\xe9</p>");
    let err = rewrite(&late, &default_plan()).unwrap_err().to_string();
    assert!(err.contains("declares charset `windows-1252`"), "{err}");
    assert!(err.contains("first 4096 bytes"), "{err}");
    let err = rewrite(b"\xFF\xFE<\0p\0>\0", &default_plan())
        .unwrap_err()
        .to_string();
    assert!(err.contains("UTF-16"), "{err}");
    assert!(!err.contains("not valid UTF-8"), "{err}");
}

#[test]
#[should_panic(expected = "one tag in the head a parser builds")]
fn the_law_fails_for_tags_a_parser_puts_in_the_body() {
    head_law(
        &format!("<html><head><title>t</title><div>x</div>{U}{I}</head></html>"),
        &default_plan(),
    );
}
