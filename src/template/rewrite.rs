//! The rewrite: one `<meta name="NAME" content="EXPR">` per manual field in the `<head>` that
//! an HTML5 parser (a browser, a mail client) builds from the rendered template, every other
//! byte unchanged.
//!
//! A scan follows the HTML5 tree construction's insertion modes as far as the head matters
//! (before html, before head, in head, after head; see [`Mode`]), over the template as it will
//! render: template-language comments and statements are invisible ([`super::syntax`]). It
//! notes where the head starts, where the parser ends it (`</head>`, but also a `<div>`, text
//! or `&nbsp;` before it), and every field tag a parser would put in the head. The output is the
//! input with a few splices: missing tags inserted, stale `content` values replaced, extra
//! tags removed.
//!
//! Placement:
//! - Missing tags go right after the `<head>` start tag (after a leading `<meta charset>` or
//!   `http-equiv` tag, so the charset stays first): there the parser is always still in the
//!   head, whatever follows. One per line at the indentation of the head's children, or on the
//!   head's line when it is written on one line. `<head/>` is a head start tag to HTML
//!   parsers (the `/` is ignored), so the tags go right after it.
//! - Without a `<head>` tag, a parser makes one: when the document starts its head's content
//!   without the tag (`<html><meta ...><title>`), the tags go before the first of it; when it
//!   has none (`<html><body>`), a `<head>` with the tags goes before the first element.
//! - A fragment (no `<html>`, `<head>` or `<body>` before its content) gets the tags at its
//!   very top, after a byte order mark or a doctype.
//! - An existing tag (name compared case-insensitively, content after entity decoding) that a
//!   parser puts in the head keeps its place; its `content` is updated when it differs; further
//!   ones are removed. One that a parser puts in the body (after the head was ended by body
//!   content), found before the textual `</head>`, is removed and the field's tag inserted in
//!   the head instead.
//!
//! The scan stops where the body starts (or at the textual `</head>` after it); the rest is
//! copied as it is.

use super::charset::{self, CharsetError};
use super::plan::Plan;
use super::syntax::Invisible;
use encoding_rs::Encoding;
use lol_html::html_content::{Element, TextType};
use lol_html::{doc_text, doctype, element, end_tag, AsciiCompatibleEncoding, HtmlRewriter};
use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;
use std::sync::LazyLock;

static HEAD_END: LazyLock<regex::bytes::Regex> =
    LazyLock::new(|| regex::bytes::Regex::new(r"(?i-u)</head\s*>").expect("valid regex"));

/// Bytes handed to the scanner at a time (at least); small, so that it stops soon after the
/// head.
const CHUNK: usize = 8 * 1024;

/// What happened to one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldStatus {
    /// The tag was there with the expected content.
    Present,
    /// The tag was missing (or only outside the head) and was added.
    Inserted,
    /// The tag was there with other content (`previous`, as written in the file) and was updated.
    Updated { previous: String },
}

/// The outcome for one configured field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldOutcome {
    /// The field's name.
    pub name: String,
    /// Inserted, updated or present.
    pub status: FieldStatus,
    /// Extra tags for the same field in the head that were removed.
    pub duplicates_removed: usize,
    /// Tags for the field that a parser puts outside the head (line numbers, from 1): removed,
    /// and the field's tag inserted in the head.
    pub outside_head: Vec<usize>,
}

/// Where the tags went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Into the document's `<head>` (written, or implied by its content).
    Head,
    /// Into a `<head>` this rewrite created.
    CreatedHead,
    /// At the top of a fragment.
    FragmentTop,
}

/// What ended the head early: body content before the textual `</head>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadEnd {
    /// The line (from 1) of what ended it.
    pub line: usize,
    /// What it was: `<div>`, or the start of the text.
    pub what: String,
}

/// A rewritten template.
#[derive(Debug)]
pub struct Rewrite {
    /// The new bytes, in the template's own encoding.
    pub output: Vec<u8>,
    /// One entry per configured field, in configuration order.
    pub fields: Vec<FieldOutcome>,
    /// Where the tags are.
    pub placement: Placement,
    /// The encoding the template was read in.
    pub encoding: &'static Encoding,
    /// Set when the head ends before the textual `</head>` (body content inside it).
    pub head_ended_early: Option<HeadEnd>,
}

impl Rewrite {
    /// Whether the output differs from the input.
    pub fn changed(&self) -> bool {
        self.placement == Placement::CreatedHead
            || self.fields.iter().any(|f| {
                f.status != FieldStatus::Present
                    || f.duplicates_removed > 0
                    || !f.outside_head.is_empty()
            })
    }
}

/// Why a template could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The bytes cannot be read in a known charset.
    #[error(transparent)]
    Charset(#[from] CharsetError),
    /// The HTML scanner failed.
    #[error("HTML rewriter: {0}")]
    Html(#[from] lol_html::errors::RewritingError),
}

/// The HTML5 insertion modes that matter for the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    BeforeHtml,
    BeforeHead,
    InHead,
    AfterHead,
    /// The body has started: the head is final.
    InBody,
}

/// A field tag found by the scan.
#[derive(Debug)]
struct FieldTag {
    field: usize,
    /// The start tag's bytes.
    range: Range<usize>,
    /// Where a parser puts it.
    in_head: bool,
    /// The `content` value as written, with its byte range (quotes excluded) if it has one.
    content: Option<(String, Range<usize>)>,
}

#[derive(Debug, Default)]
struct Scan {
    mode: Mode,
    xhtml: bool,
    doctype_end: Option<usize>,
    html_start: Option<Range<usize>>,
    /// The end of the `<head>` start tag, when there is one.
    head_start_end: Option<usize>,
    /// Without a `<head>` tag: the first element of the implied head.
    implied_first: Option<usize>,
    /// Whether the head's first element child was seen, and it if it is a charset declaration.
    first_child_seen: bool,
    charset_first: Option<Range<usize>>,
    /// Where the body starts (what ended the head), and what it was.
    body_at: Option<(usize, String)>,
    /// The body started with a `<body>` tag (not with other content).
    body_tag: bool,
    /// The textual `</head>` after the body started, if any: scanned up to it.
    scan_until: usize,
    tags: Vec<FieldTag>,
}

impl Scan {
    fn done(&self, consumed: usize) -> bool {
        self.mode == Mode::InBody && consumed >= self.scan_until
    }
}

type Shared<'i> = Rc<RefCell<ScanState<'i>>>;

struct ScanState<'i> {
    scan: Scan,
    /// Set by the head's end tag handler (which must be `'static`), applied at the next event.
    head_end_tag: Rc<std::cell::Cell<Option<usize>>>,
    invisible: Invisible<'i>,
    input: &'i [u8],
    plan: Plan,
}

/// Rewrites `input` so that its head carries every field of `plan` exactly once.
pub fn rewrite(input: &[u8], plan: &Plan) -> Result<Rewrite, RewriteError> {
    let encoding = charset::detect(input)?;
    let state: Shared = Rc::new(RefCell::new(ScanState {
        scan: Scan::default(),
        head_end_tag: Rc::default(),
        invisible: Invisible::new(input),
        input,
        plan: plan.clone(),
    }));
    {
        let settings = settings(&state, encoding);
        let mut scanner = HtmlRewriter::new(settings, |_: &[u8]| {});
        // Cut right after a `</head>` too: the scan is usually done there. (Looked for within
        // the chunk only: a search to the end of a long document would cost more than the
        // whole scan.)
        let mut consumed = 0;
        let mut finished = false;
        while consumed < input.len() {
            // After `</head>` only the next tag is needed (usually `<body>`): a small chunk.
            let size = {
                let mut st = state.borrow_mut();
                apply_head_end(&mut st);
                match st.scan.mode {
                    Mode::AfterHead => 1,
                    _ => CHUNK,
                }
            };
            let end = chunk_end(input, consumed, size);
            let end = HEAD_END
                .find(&input[consumed..end])
                .map_or(end, |m| consumed + m.end());
            scanner.write(&input[consumed..end])?;
            consumed = end;
            if state.borrow().scan.done(consumed) {
                finished = true;
                break;
            }
        }
        if !finished {
            scanner.end()?;
        }
    }
    let ScanState { scan, .. } = Rc::try_unwrap(state)
        .ok()
        .expect("the scanner is gone")
        .into_inner();
    Ok(splice(input, plan, encoding, scan))
}

fn settings<'h, 'i: 'h>(
    state: &Shared<'i>,
    encoding: &'static Encoding,
) -> lol_html::Settings<'h, 'static> {
    let [doctype_state, text_state, element_state] = std::array::from_fn(|_| state.clone());
    lol_html::Settings {
        encoding: AsciiCompatibleEncoding::new(encoding).expect("charset::detect checks this"),
        document_content_handlers: vec![
            doctype!(move |d| {
                let mut st = doctype_state.borrow_mut();
                if st.scan.mode == Mode::BeforeHtml {
                    st.scan.doctype_end = Some(d.source_location().bytes().end);
                }
                let public = d.public_id().unwrap_or_default();
                st.scan.xhtml |= public.to_ascii_uppercase().contains("XHTML");
                Ok(())
            }),
            doc_text!(move |t| {
                if t.text_type() != TextType::Data {
                    return Ok(());
                }
                let mut st = text_state.borrow_mut();
                apply_head_end(&mut st);
                if st.scan.mode == Mode::InBody {
                    return Ok(());
                }
                let range = t.source_location().bytes();
                if let Some(at) = st.invisible.first_visible(range) {
                    let what = text_sample(&st.input[at..]);
                    start_body(&mut st, at, what, false);
                }
                Ok(())
            }),
        ],
        // One `*` handler dispatching on the tag name: compiling selectors costs more than
        // the scan of a typical template's head.
        element_content_handlers: vec![element!("*", move |el| {
            let head_end = on_element(&element_state, el);
            if head_end {
                let cell = element_state.borrow().head_end_tag.clone();
                el.on_end_tag(end_tag!(move |end| {
                    cell.set(Some(end.source_location().bytes().start));
                    Ok(())
                }))?;
            }
            Ok(())
        })],
        ..lol_html::Settings::new()
    }
}

/// Elements a parser keeps in the head (in head, or from after head back into it).
fn is_head_content(tag: &str) -> bool {
    matches!(
        tag,
        "meta"
            | "title"
            | "link"
            | "style"
            | "script"
            | "base"
            | "basefont"
            | "bgsound"
            | "noscript"
            | "noframes"
            | "template"
    )
}

/// Follows one start tag through the insertion modes; `true` when it is the head whose end
/// tag must be watched.
fn on_element(state: &Shared<'_>, el: &mut Element) -> bool {
    let mut guard = state.borrow_mut();
    let st = &mut *guard;
    apply_head_end(st);
    let range = el.source_location().bytes();
    if st.scan.mode == Mode::InBody && range.start >= st.scan.scan_until {
        return false;
    }
    if st.invisible.covers(range.start) {
        return false;
    }
    let tag = el.tag_name();
    match (st.scan.mode, tag.as_str()) {
        (Mode::BeforeHtml, "html") => {
            st.scan.mode = Mode::BeforeHead;
            st.scan.html_start = Some(range);
            st.scan.xhtml |= el.has_attribute("xmlns");
        }
        // Another `<html>` only adds attributes; another `<head>` is ignored.
        (_, "html") => st.scan.xhtml |= el.has_attribute("xmlns"),
        (Mode::BeforeHtml | Mode::BeforeHead, "head") => {
            st.scan.mode = Mode::InHead;
            st.scan.head_start_end = Some(range.end);
            return el.can_have_content();
        }
        (Mode::InHead | Mode::AfterHead, "head") => {}
        (Mode::InBody, "meta") => {
            note_field_tag(st, el, range, false);
        }
        (Mode::InBody, _) => {}
        (mode, tag) if is_head_content(tag) => {
            if matches!(mode, Mode::BeforeHtml | Mode::BeforeHead) {
                st.scan.mode = Mode::InHead;
                st.scan.implied_first = Some(range.start);
            }
            if !st.scan.first_child_seen {
                st.scan.first_child_seen = true;
                if tag == "meta" && declares_charset(el) {
                    st.scan.charset_first = Some(range.clone());
                }
            }
            if tag == "meta" {
                note_field_tag(st, el, range, true);
            }
        }
        (_, tag) => {
            let what = format!("<{tag}>");
            start_body(st, range.start, what, tag == "body");
        }
    }
    false
}

/// The head's `</head>`, once seen, moves the scan to after head (unless it is inside a
/// template comment).
fn apply_head_end(st: &mut ScanState<'_>) {
    if let Some(at) = st.head_end_tag.take() {
        if st.scan.mode == Mode::InHead && !st.invisible.covers(at) {
            st.scan.mode = Mode::AfterHead;
        }
    }
}

/// Body content at `at`: the head is final. The scan goes on to the textual `</head>`, if
/// one follows, to find field tags a parser puts in the body.
fn start_body(st: &mut ScanState<'_>, at: usize, what: String, body_tag: bool) {
    st.scan.mode = Mode::InBody;
    st.scan.body_at = Some((at, what));
    st.scan.body_tag = body_tag;
    st.scan.scan_until = HEAD_END.find_at(st.input, at).map_or(at, |m| m.end());
}

fn declares_charset(el: &Element) -> bool {
    el.has_attribute("charset")
        || el
            .get_attribute("http-equiv")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("content-type"))
}

/// Records a `<meta>` that is one of the plan's fields.
fn note_field_tag(st: &mut ScanState<'_>, el: &Element, range: Range<usize>, in_head: bool) {
    let Some(name) = el.get_attribute("name") else {
        return;
    };
    let Some(field) = st
        .plan
        .fields()
        .iter()
        .position(|f| f.name.eq_ignore_ascii_case(&name))
    else {
        return;
    };
    let content = el
        .attributes()
        .iter()
        .find(|a| a.name() == "content")
        .and_then(|a| Some((a.value(), a.value_source_location()?.bytes())));
    st.scan.tags.push(FieldTag {
        field,
        range,
        in_head,
        content,
    });
}

/// A short sample of text, for messages.
fn text_sample(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]);
    let line = text.lines().next().unwrap_or_default().trim_end();
    let mut sample: String = line.chars().take(20).collect();
    if sample.len() < line.len() {
        sample.push_str("...");
    }
    format!("text `{sample}`")
}

/// One change to the input.
struct Edit {
    range: Range<usize>,
    bytes: Vec<u8>,
}

/// The output: the input with the scan's edits spliced in.
fn splice(input: &[u8], plan: &Plan, encoding: &'static Encoding, scan: Scan) -> Rewrite {
    let encode = |text: &str| encoding.encode(text).0.into_owned();
    let mut edits: Vec<Edit> = Vec::new();
    let mut fields: Vec<FieldOutcome> = plan
        .fields()
        .iter()
        .map(|f| FieldOutcome {
            name: f.name.clone(),
            status: FieldStatus::Inserted,
            duplicates_removed: 0,
            outside_head: Vec::new(),
        })
        .collect();
    let mut seen = vec![false; fields.len()];
    for tag in &scan.tags {
        let outcome = &mut fields[tag.field];
        if !tag.in_head {
            outcome.outside_head.push(line_of(input, tag.range.start));
            edits.push(removal(input, tag.range.clone()));
            continue;
        }
        if seen[tag.field] {
            outcome.duplicates_removed += 1;
            edits.push(removal(input, tag.range.clone()));
            continue;
        }
        seen[tag.field] = true;
        let wanted = &plan.fields()[tag.field];
        match &tag.content {
            Some((raw, _)) if decode_entities(raw) == wanted.expression => {
                outcome.status = FieldStatus::Present;
            }
            content => {
                outcome.status = FieldStatus::Updated {
                    previous: content.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
                };
                edits.push(content_edit(
                    input,
                    tag,
                    &encode(&format!("\"{}\"", wanted.attribute)),
                ));
            }
        }
    }
    let missing: Vec<String> = plan
        .fields()
        .iter()
        .zip(&seen)
        .filter(|(_, seen)| !**seen)
        .map(|(f, _)| f.tag(scan.xhtml))
        .collect();
    let (placement, insertion) = insertion(input, &scan, &missing);
    if let Some((at, text)) = insertion {
        if !missing.is_empty() {
            edits.push(Edit {
                range: at..at,
                bytes: encode(&text),
            });
        }
    }
    edits.sort_by_key(|e| (e.range.start, e.range.end));
    let extra: usize = edits.iter().map(|e| e.bytes.len()).sum();
    let mut output = Vec::with_capacity(input.len() + extra);
    let mut at = 0;
    for e in &edits {
        output.extend_from_slice(&input[at..e.range.start]);
        output.extend_from_slice(&e.bytes);
        at = e.range.end;
    }
    output.extend_from_slice(&input[at..]);
    let head_ended_early = match &scan.body_at {
        Some((pos, what)) if scan.scan_until > *pos && !scan.body_tag => Some(HeadEnd {
            line: line_of(input, *pos),
            what: what.clone(),
        }),
        _ => None,
    };
    Rewrite {
        output,
        fields,
        placement,
        encoding,
        head_ended_early,
    }
}

/// Where the missing tags go, and the text to insert there.
fn insertion(input: &[u8], scan: &Scan, tags: &[String]) -> (Placement, Option<(usize, String)>) {
    // After a leading charset declaration, so that it stays first.
    if let Some(charset) = &scan.charset_first {
        let line = Line::at(input, charset.start);
        return (
            Placement::Head,
            Some((charset.end, after(input, charset.end, tags, line.indent))),
        );
    }
    if let Some(end) = scan.head_start_end {
        return (Placement::Head, Some((end, after(input, end, tags, None))));
    }
    if let Some(first) = scan.implied_first {
        if scan.html_start.is_some() {
            return (Placement::Head, Some((first, before(input, first, tags))));
        }
    }
    let body_first = scan.html_start.is_some() || scan.body_tag;
    if body_first {
        let at = match (&scan.body_at, &scan.html_start) {
            (Some((at, _)), _) => *at,
            (None, Some(html)) => html.end,
            (None, None) => input.len(),
        };
        return (
            Placement::CreatedHead,
            Some((at, head_block(tags, &Line::at(input, at)))),
        );
    }
    // A fragment: at its very top, after a byte order mark or a doctype.
    let nl = first_line_break(input);
    if let Some(end) = scan.doctype_end {
        let text: String = tags.iter().map(|t| format!("{nl}{t}")).collect();
        return (Placement::FragmentTop, Some((end, text)));
    }
    let top = if input.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let text: String = tags.iter().map(|t| format!("{t}{nl}")).collect();
    (Placement::FragmentTop, Some((top, text)))
}

/// The tags to insert at `at`, laid out like what follows: one per line at the indentation of
/// the next line (or `indent`, or, before `</head>`, that of `</head>` and two spaces), or all
/// on the line when what follows is on it.
fn after(input: &[u8], at: usize, tags: &[String], indent: Option<String>) -> String {
    let rest = &input[at..];
    let ws = rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    let Some(last_break) = rest[..ws].iter().rposition(|&b| b == b'\n') else {
        return tags.concat();
    };
    let nl = if last_break > 0 && rest[..ws].contains(&b'\r') {
        "\r\n"
    } else {
        "\n"
    };
    let next = String::from_utf8_lossy(&rest[last_break + 1..ws]).into_owned();
    let closes = rest[ws..]
        .get(..6)
        .is_some_and(|t| t.eq_ignore_ascii_case(b"</head"));
    let child = indent.unwrap_or(if closes { format!("{next}  ") } else { next });
    tags.iter().map(|t| format!("{nl}{child}{t}")).collect()
}

/// The tags to insert before the element at `at`, each followed by its line's layout.
fn before(input: &[u8], at: usize, tags: &[String]) -> String {
    let line = Line::at(input, at);
    match line.indent.as_deref() {
        Some(indent) => {
            let nl = line.newline();
            tags.iter().map(|t| format!("{t}{nl}{indent}")).collect()
        }
        None => tags.concat(),
    }
}

/// Removes a tag; when it stood on a line of its own, the line break and indentation before
/// it go too, so no blank line is left.
fn removal(input: &[u8], range: Range<usize>) -> Edit {
    let before = &input[..range.start];
    let indent = before
        .iter()
        .rev()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let mut start = range.start - indent;
    match &before[..start] {
        [.., b'\r', b'\n'] => start -= 2,
        [.., b'\n'] => start -= 1,
        _ => start = range.start,
    }
    Edit {
        range: start..range.end,
        bytes: Vec::new(),
    }
}

/// Replaces a tag's `content` value with `quoted` (a double-quoted value), or adds the
/// attribute when it has none.
fn content_edit(input: &[u8], tag: &FieldTag, quoted: &[u8]) -> Edit {
    if let Some((_, value)) = &tag.content {
        let quote = value
            .start
            .checked_sub(1)
            .map(|i| input[i])
            .filter(|q| *q == b'"' || *q == b'\'');
        let range = match quote {
            Some(_) => value.start - 1..value.end + 1,
            None => value.clone(),
        };
        return Edit {
            range,
            bytes: quoted.to_vec(),
        };
    }
    // No `content`: add it before the tag's end (`>` or `/>`, after any space before `/`).
    let tag_bytes = &input[tag.range.clone()];
    let mut end = tag.range.end - 1;
    if tag_bytes.ends_with(b"/>") {
        end -= 1;
        while end > tag.range.start && matches!(input[end - 1], b' ' | b'\t') {
            end -= 1;
        }
    }
    let mut bytes = b" content=".to_vec();
    bytes.extend_from_slice(quoted);
    Edit {
        range: end..end,
        bytes,
    }
}

/// The value as a parser reads it: character references decoded (numeric ones and the named
/// ones a personalization expression may need).
fn decode_entities(raw: &str) -> String {
    if !raw.contains('&') {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest[1..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '#')
            .map_or(rest.len(), |e| e + 1);
        let name = &rest[1..end];
        let decoded = match name.strip_prefix('#') {
            Some(num) => {
                let code = match num.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => num.parse().ok(),
                };
                code.and_then(char::from_u32)
            }
            None => named_entity(name),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end..];
                rest = rest.strip_prefix(';').unwrap_or(rest);
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn named_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "lbrace" | "lcub" => '{',
        "rbrace" | "rcub" => '}',
        "dollar" => '$',
        "verbar" | "vert" | "VerticalLine" => '|',
        "colon" => ':',
        "lpar" => '(',
        "rpar" => ')',
        "percnt" => '%',
        "num" => '#',
        "equals" => '=',
        "bsol" => '\\',
        "sol" => '/',
        "period" => '.',
        "comma" => ',',
        "lowbar" => '_',
        "hyphen" | "dash" => '-',
        _ => return None,
    })
}

/// The line (from 1) of byte `pos`.
fn line_of(input: &[u8], pos: usize) -> usize {
    memchr::memchr_iter(b'\n', &input[..pos.min(input.len())]).count() + 1
}

/// How the line holding a position looks: if only spaces and tabs stand between the last line
/// break and the position, `indent` holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Line {
    indent: Option<String>,
    crlf: bool,
}

impl Line {
    /// The layout at byte `pos` of `bytes`.
    fn at(bytes: &[u8], pos: usize) -> Self {
        let before = &bytes[..pos.min(bytes.len())];
        let start = before
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |i| i + 1);
        match start.checked_sub(1).map(|i| (i, before[i])) {
            Some((i, b'\n')) => Self {
                indent: Some(String::from_utf8_lossy(&before[start..]).into_owned()),
                crlf: i > 0 && before[i - 1] == b'\r',
            },
            _ => Self::default(),
        }
    }

    fn newline(&self) -> &'static str {
        if self.crlf {
            "\r\n"
        } else {
            "\n"
        }
    }
}

/// The template's own line break, judged by its first one.
fn first_line_break(input: &[u8]) -> &'static str {
    match input.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && input[i - 1] == b'\r' => "\r\n",
        _ => "\n",
    }
}

/// Where the chunk starting at `from` ends: just after a `>` at least `size` bytes on.
///
/// `>` (0x3E) is never part of a multi-byte character in any ASCII-compatible encoding
/// (UTF-8, Shift_JIS, GBK, Big5, EUC), so cutting after it never splits a character.
fn chunk_end(input: &[u8], from: usize, size: usize) -> usize {
    let target = from + size;
    if target >= input.len() {
        return input.len();
    }
    input[target..]
        .iter()
        .position(|&b| b == b'>')
        .map_or(input.len(), |p| target + p + 1)
}

/// A whole `<head>` for a document that has none, placed before its first element.
fn head_block(tags: &[String], line: &Line) -> String {
    let Some(indent) = line.indent.as_deref() else {
        return format!("<head>{}</head>", tags.concat());
    };
    let nl = line.newline();
    let mut out = format!("<head>{nl}");
    for tag in tags {
        out.push_str(&format!("{indent}  {tag}{nl}"));
    }
    out.push_str(&format!("{indent}</head>{nl}{indent}"));
    out
}

#[cfg(test)]
mod tests {
    use super::{decode_entities, Line};

    #[test]
    fn the_line_layout_is_read_back_to_the_last_line_break() {
        let text = b"<head>\r\n\t  <title>";
        assert_eq!(
            Line::at(text, 11),
            Line {
                indent: Some("\t  ".into()),
                crlf: true
            }
        );
        assert_eq!(Line::at(b"<head><title>", 6), Line::default());
        assert_eq!(Line::at(b"x\n<title>", 2).indent.as_deref(), Some(""));
    }

    #[test]
    fn character_references_are_decoded_as_a_parser_does() {
        assert_eq!(
            decode_entities("{{$X|default:&#39;NONE&#x27;}}"),
            "{{$X|default:'NONE'}}"
        );
        assert_eq!(
            decode_entities("a &amp; b &lt;c&gt; &quot;"),
            "a & b <c> \""
        );
        assert_eq!(decode_entities("&unknown; & &#;"), "&unknown; & &#;");
        assert_eq!(decode_entities("&apos;x&apos"), "'x'");
    }
}
