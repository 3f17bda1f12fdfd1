//! The streaming rewrite: one `<meta name="NAME" content="EXPR">` per manual field in the
//! template's `<head>`, every other byte unchanged.
//!
//! Placement rules:
//! - Missing tags go at the end of the first `<head>`, one per line at the indentation of the
//!   head's children (compact when the head is on one line). An existing tag for a field keeps
//!   its place; its `content` is updated when it differs, and further tags for the same field
//!   are removed, so there is exactly one.
//! - A document with `<html>` (or `<body>`) but no `<head>` gets a `<head>` before its first
//!   child element.
//! - A fragment (no `<html>`, `<head>` or `<body>`) gets the tags at its very top, one per line;
//!   a fragment that starts with a doctype is refused (the tags cannot go before it).
//!
//! Rewriting stops as soon as the head is done and copies the rest of the input as it is.

use super::charset::{self, CharsetError};
use super::plan::Plan;
use encoding_rs::Encoding;
use lol_html::html_content::{ContentType, Element};
use lol_html::{
    comments, doctype, element, end_tag, AsciiCompatibleEncoding, HtmlRewriter, Settings,
};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::LazyLock;

static HEAD_END: LazyLock<regex::bytes::Regex> =
    LazyLock::new(|| regex::bytes::Regex::new(r"(?i-u)</head\s*>").expect("valid regex"));

/// Bytes handed to the rewriter at a time (at least); small, so that it stops soon after
/// `</head>`.
const CHUNK: usize = 8 * 1024;

/// What happened to one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldStatus {
    /// The tag was there with the expected content.
    Present,
    /// The tag was missing and was added.
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
    /// Extra tags for the same field that were removed.
    pub duplicates_removed: usize,
}

/// Where the tags went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Into the document's `<head>`.
    Head,
    /// Into a `<head>` this rewrite created.
    CreatedHead,
    /// At the top of a fragment.
    FragmentTop,
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
}

impl Rewrite {
    /// Whether the output differs from the input.
    pub fn changed(&self) -> bool {
        self.placement == Placement::CreatedHead
            || self
                .fields
                .iter()
                .any(|f| f.status != FieldStatus::Present || f.duplicates_removed > 0)
    }
}

/// Why a template could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The bytes cannot be read in a known charset.
    #[error(transparent)]
    Charset(#[from] CharsetError),
    /// A fragment whose first construct is a doctype.
    #[error("has a doctype but no <html>, <head> or <body> element: there is no place for the <meta> tags")]
    DoctypeFragment,
    /// The HTML rewriter failed.
    #[error("HTML rewriter: {0}")]
    Html(#[from] lol_html::errors::RewritingError),
}

#[derive(Default)]
struct State {
    found: Vec<Option<FieldStatus>>,
    duplicates: Vec<usize>,
    xhtml: bool,
    doctype: bool,
    html_seen: bool,
    head_seen: bool,
    /// Where the tags went; once set, the rewrite is done and the rest is copied as it is.
    placement: Option<Placement>,
    /// The line layout where the head's first child starts (set once that child is seen).
    first_child: Option<Line>,
}

type Shared = Rc<RefCell<State>>;
type Output = Rc<RefCell<Vec<u8>>>;

/// Rewrites `input` so that it carries every field of `plan` exactly once.
pub fn rewrite(input: &[u8], plan: &Plan) -> Result<Rewrite, RewriteError> {
    let encoding = charset::detect(input)?;
    let state: Shared = Rc::new(RefCell::new(State {
        found: vec![None; plan.fields().len()],
        duplicates: vec![0; plan.fields().len()],
        ..State::default()
    }));
    // Shared with the `</head>` handler, which reads the layout before the end tag from what
    // was written so far (the handler must outlive the borrow of `input`).
    let output: Output = Rc::new(RefCell::new(Vec::with_capacity(input.len() + 256)));
    let mut consumed = 0;
    {
        let settings = settings(&state, &output, plan, input, encoding);
        let sink = output.clone();
        let mut rewriter = HtmlRewriter::new(settings, move |c: &[u8]| {
            sink.borrow_mut().extend_from_slice(c)
        });
        // Cut right after each `</head>` too: the rewriter is usually done there.
        let mut head_ends = HEAD_END.find_iter(input).map(|m| m.end()).peekable();
        while consumed < input.len() {
            while head_ends.next_if(|&e| e <= consumed).is_some() {}
            let end = head_ends
                .peek()
                .map_or(usize::MAX, |&e| e)
                .min(chunk_end(input, consumed));
            rewriter.write(&input[consumed..end])?;
            consumed = end;
            if state.borrow().placement.is_some() {
                break;
            }
        }
        rewriter.end()?;
    }
    let mut output = Rc::try_unwrap(output)
        .expect("the rewriter is gone")
        .into_inner();
    output.extend_from_slice(&input[consumed..]);

    let mut st = state.borrow_mut();
    if st.placement.is_none() {
        output = prepend_to_fragment(&mut st, plan, encoding, output)?;
    }
    let fields = plan
        .fields()
        .iter()
        .zip(st.found.iter().zip(&st.duplicates))
        .map(|(field, (status, dups))| FieldOutcome {
            name: field.name.clone(),
            status: status.clone().unwrap_or(FieldStatus::Inserted),
            duplicates_removed: *dups,
        })
        .collect();
    Ok(Rewrite {
        output,
        fields,
        placement: st.placement.expect("set above"),
        encoding,
    })
}

/// A fragment (no `<html>`, `<head>` or `<body>`): the missing tags go on top, one per line.
fn prepend_to_fragment(
    st: &mut State,
    plan: &Plan,
    encoding: &'static Encoding,
    output: Vec<u8>,
) -> Result<Vec<u8>, RewriteError> {
    if st.doctype {
        return Err(RewriteError::DoctypeFragment);
    }
    st.placement = Some(Placement::FragmentTop);
    let missing = missing_tags(st, plan);
    if missing.is_empty() {
        return Ok(output);
    }
    let nl = first_line_break(&output);
    let top: String = missing.iter().map(|tag| format!("{tag}{nl}")).collect();
    let mut prepended = encoding.encode(&top).0.into_owned();
    prepended.extend_from_slice(&output);
    Ok(prepended)
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

/// Where the chunk starting at `from` ends: just after a `>` at least [`CHUNK`] bytes on.
///
/// When the rewriter stops early, `end()` finishes the bytes it was given; a chunk that ends
/// inside a multi-byte character would come out with a replacement character. `>` (0x3E) is
/// never part of a multi-byte character in any ASCII-compatible encoding (UTF-8, Shift_JIS,
/// GBK, Big5, EUC), so cutting after it is always safe.
fn chunk_end(input: &[u8], from: usize) -> usize {
    let target = from + CHUNK;
    if target >= input.len() {
        return input.len();
    }
    input[target..]
        .iter()
        .position(|&b| b == b'>')
        .map_or(input.len(), |p| target + p + 1)
}

/// The tags for fields not found yet, marking them inserted.
fn missing_tags(st: &mut State, plan: &Plan) -> Vec<String> {
    let mut tags = Vec::new();
    for (i, field) in plan.fields().iter().enumerate() {
        if st.found[i].is_none() {
            st.found[i] = Some(FieldStatus::Inserted);
            tags.push(field.tag(st.xhtml));
        }
    }
    tags
}

fn settings<'h>(
    state: &Shared,
    output: &'h Output,
    plan: &'h Plan,
    input: &'h [u8],
    encoding: &'static Encoding,
) -> Settings<'h, 'static> {
    let [doctype_state, element_state, comment_state] = std::array::from_fn(|_| state.clone());
    let head_state = state.clone();
    Settings {
        encoding: AsciiCompatibleEncoding::new(encoding).expect("charset::detect checks this"),
        document_content_handlers: vec![doctype!(move |d| {
            let mut st = doctype_state.borrow_mut();
            st.doctype = true;
            let public = d.public_id().unwrap_or_default();
            st.xhtml |= public.to_ascii_uppercase().contains("XHTML");
            Ok(())
        })],
        // One `*` handler dispatching on the tag name: compiling a selector costs more than
        // the rewrite of a typical template's head, and the rewrite stops at `</head>`.
        element_content_handlers: vec![
            element!("*", move |el| {
                let mut st = element_state.borrow_mut();
                if st.placement.is_some() {
                    return Ok(());
                }
                let tag = el.tag_name();
                match tag.as_str() {
                    "html" if !st.html_seen => {
                        st.html_seen = true;
                        st.xhtml |= el.has_attribute("xmlns");
                    }
                    "head" if !st.head_seen => start_head(&mut st, el, &head_state, output, plan)?,
                    // The first element after <html> is its first child; a <body> first means
                    // there is no head either.
                    _ if !st.head_seen && (st.html_seen || tag == "body") => {
                        let tags = missing_tags(&mut st, plan);
                        let line = Line::at(input, el.source_location().bytes().start);
                        el.before(&head_block(&tags, &line), ContentType::Html);
                        st.placement = Some(Placement::CreatedHead);
                    }
                    tag => {
                        if st.head_seen && st.first_child.is_none() {
                            st.first_child =
                                Some(Line::at(input, el.source_location().bytes().start));
                        }
                        if tag == "meta" {
                            visit_meta(&mut st, plan, el, output);
                        }
                    }
                }
                Ok(())
            }),
            comments!("head", move |c| {
                let mut st = comment_state.borrow_mut();
                if st.placement.is_none() && st.first_child.is_none() {
                    st.first_child = Some(Line::at(input, c.source_location().bytes().start));
                }
                Ok(())
            }),
        ],
        ..Settings::new()
    }
}

/// The first `<head>`: tags go in when it closes.
fn start_head(
    st: &mut State,
    el: &mut Element,
    state: &Shared,
    output: &Output,
    plan: &Plan,
) -> lol_html::HandlerResult {
    st.head_seen = true;
    if !el.can_have_content() || el.is_self_closing() {
        return Ok(());
    }
    let (state, output, plan) = (state.clone(), output.clone(), plan.clone());
    el.on_end_tag(end_tag!(move |end| {
        let mut st = state.borrow_mut();
        let tags = missing_tags(&mut st, &plan);
        let written = output.borrow();
        let closing = Line::at(&written, written.len());
        let block = head_insertion(&tags, st.first_child.as_ref(), &closing);
        end.before(&block, ContentType::Html);
        st.placement = Some(Placement::Head);
        Ok(())
    }))
}

/// A `<meta name>`: in the head, or anywhere in a fragment before any structure is seen.
fn visit_meta(st: &mut State, plan: &Plan, el: &mut Element, output: &Output) {
    let in_scope = st.placement.is_none() && (st.head_seen || !st.html_seen);
    if !in_scope {
        return;
    }
    let Some(name) = el.get_attribute("name") else {
        return;
    };
    let Some(i) = plan.fields().iter().position(|f| f.name == name) else {
        return;
    };
    if st.found[i].is_some() {
        el.remove();
        drop_line_start(&mut output.borrow_mut());
        st.duplicates[i] += 1;
        return;
    }
    let field = &plan.fields()[i];
    let current = el.get_attribute("content").unwrap_or_default();
    if current == field.attribute {
        st.found[i] = Some(FieldStatus::Present);
    } else {
        el.set_attribute("content", &field.attribute)
            .expect("`content` is a valid attribute name");
        st.found[i] = Some(FieldStatus::Updated { previous: current });
    }
}

/// When a removed tag stood on a line of its own, also removes that line's break and
/// indentation (already written), so no blank line is left behind.
fn drop_line_start(written: &mut Vec<u8>) {
    let indent = written
        .iter()
        .rev()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let end = written.len() - indent;
    let newline = match &written[..end] {
        [.., b'\r', b'\n'] => 2,
        [.., b'\n'] => 1,
        _ => return,
    };
    written.truncate(end - newline);
}

/// What goes right before `</head>`: one tag per line when the head is laid out in lines.
fn head_insertion(tags: &[String], first_child: Option<&Line>, closing: &Line) -> String {
    let Some(closing_indent) = closing.indent.as_deref() else {
        return tags.concat();
    };
    if tags.is_empty() {
        return String::new();
    }
    let nl = closing.newline();
    let child = first_child
        .and_then(|l| l.indent.clone())
        .unwrap_or_else(|| format!("{closing_indent}  "));
    let first = child.strip_prefix(closing_indent).unwrap_or(&child);
    let mut out = String::from(first);
    for (i, tag) in tags.iter().enumerate() {
        if i > 0 {
            out.push_str(nl);
            out.push_str(&child);
        }
        out.push_str(tag);
    }
    out.push_str(nl);
    out.push_str(closing_indent);
    out
}

/// A whole `<head>` for a document that has none, placed before its first child element.
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
    use super::Line;

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
}
