//! Laws of `prepare` on generated HTML: preparing twice is preparing once; every original byte
//! is kept; each field's tag is there exactly once.

use crate::helpers::{default_plan, head_law, inserted_block};
use pegabridge::template::rewrite;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ,.!éü€\n]{0,40}",
        Just("{{ name }}".to_owned()),
        Just("{{#each items}}{{this}}{{/each}}".to_owned()),
        Just("{% if x %}y{% endif %}".to_owned()),
        Just("{{$FirstName|default:'you'}}".to_owned()),
        Just("&amp; &lt;b&gt;".to_owned()),
    ]
}

fn head_child() -> impl Strategy<Value = String> {
    prop_oneof![
        text().prop_map(|t| format!("<title>{t}</title>")),
        Just("<meta charset=\"utf-8\">".to_owned()),
        Just("<meta name=\"viewport\" content=\"width=device-width\">".to_owned()),
        text().prop_map(|t| format!("<style>p {{ color: red; }} /* {t} */</style>")),
        Just("<!--[if mso]><xml><o:x/></xml><![endif]-->".to_owned()),
        text().prop_map(|t| format!("<!-- {t} <head></head> -->")),
        Just("<script>var h = '</head><head>';</script>".to_owned()),
        // Body content where a head's content is expected: a parser ends the head there.
        Just("<div style=\"display:none\">Preheader</div>".to_owned()),
        Just("&nbsp;".to_owned()),
        Just("<html><head>".to_owned()),
        Just("{{!-- <head></head> --}}".to_owned()),
        Just("{% if x %}<style>p {}</style>{% endif %}".to_owned()),
    ]
}

fn body_child() -> impl Strategy<Value = String> {
    prop_oneof![
        text().prop_map(|t| format!("<p>{t}</p>")),
        text().prop_map(|t| format!("<a href=\"https://x.example/?q={{{{ id }}}}\">{t}</a>")),
        Just("<table><tr><td>cell</td></tr></table>".to_owned()),
        Just("<!--[if !mso]><!--><div>not mso</div><!--<![endif]-->".to_owned()),
        text(),
    ]
}

fn indent() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(""),
        Just("\n"),
        Just("\n  "),
        Just("\n    "),
        Just("\r\n\t")
    ]
    .prop_map(str::to_owned)
}

prop_compose! {
    fn document()(
        prefix in prop_oneof![Just(""), Just("\u{FEFF}"), Just("{{!-- <head></head> --}}\n")],
        doctype in prop_oneof![Just(""), Just("<!DOCTYPE html>\n"),
            Just("<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\" \"x\">\n")],
        open in prop_oneof![Just("<head>"), Just("<HEAD>"), Just("<head/>")],
        close in prop_oneof![3 => Just("</head>"), 1 => Just("")],
        head in prop::option::weighted(0.85, prop::collection::vec((indent(), head_child()), 0..6)),
        closing in indent(),
        body in prop::collection::vec((indent(), body_child()), 0..40),
        repeat in 1usize..60,
    ) -> String {
        let head = head.map(|children| {
            let inner: String = children.into_iter().map(|(i, c)| i + &c).collect();
            format!("{open}{inner}{closing}{close}\n")
        }).unwrap_or_default();
        let body: String = body.into_iter().map(|(i, c)| i + &c).collect();
        // Repeating the body makes some documents cross the rewriter's chunk boundaries.
        format!("{prefix}{doctype}<html>\n{head}<body>{}</body>\n</html>\n", body.repeat(repeat))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn preparing_twice_equals_preparing_once(doc in document()) {
        let plan = default_plan();
        let once = rewrite(doc.as_bytes(), &plan).unwrap();
        let twice = rewrite(&once.output, &plan).unwrap();
        prop_assert!(!twice.changed());
        prop_assert_eq!(once.output, twice.output);
    }

    #[test]
    fn preparing_only_adds_tags_and_keeps_every_original_byte(doc in document()) {
        let out = rewrite(doc.as_bytes(), &default_plan()).unwrap();
        let block = inserted_block(doc.as_bytes(), &out.output, true);
        prop_assert_eq!(block.matches("<meta").count(), 2);
    }

    #[test]
    fn each_field_is_there_exactly_once_after_preparing(doc in document()) {
        let out = String::from_utf8(rewrite(doc.as_bytes(), &default_plan()).unwrap().output).unwrap();
        prop_assert_eq!(out.matches("<meta name=\"UniqueOfferId\"").count(), 1);
        prop_assert_eq!(out.matches("<meta name=\"InteractionId\"").count(), 1);
    }

    #[test]
    fn an_html5_parser_finds_each_tag_in_the_head(doc in document()) {
        let out = String::from_utf8(rewrite(doc.as_bytes(), &default_plan()).unwrap().output).unwrap();
        // The law holds on what the template renders to: template comments gone.
        head_law(&out.replace("{{!-- <head></head> --}}", ""), &default_plan());
    }
}
