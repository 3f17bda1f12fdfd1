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
    comments, doctype, element, end_tag, text, AsciiCompatibleEncoding, HtmlRewriter, Settings,
};
use std::cell::RefCell;
use std::rc::Rc;

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
    done: bool,
    placement: Option<Placement>,
    /// Whitespace after the last line break of the text just before the current point, if the
    /// current point starts a line (within `<head>`).
    head_tail: Option<String>,
    /// The same, before `<html>`'s first child.
    html_tail: Option<String>,
    /// The indentation of the head's first child.
    child_indent: Option<String>,
    /// The template's line breaks are `\r\n`.
    crlf: bool,
}

impl State {
    fn newline(&self) -> &'static str {
        if self.crlf {
            "\r\n"
        } else {
            "\n"
        }
    }

    fn track(&mut self, tail: Option<String>, chunk: &str) -> Option<String> {
        self.crlf |= chunk.contains("\r\n");
        next_tail(tail, chunk)
    }
}

type Shared = Rc<RefCell<State>>;

/// Rewrites `input` so that it carries every field of `plan` exactly once.
pub fn rewrite(input: &[u8], plan: &Plan) -> Result<Rewrite, RewriteError> {
    let encoding = charset::detect(input)?;
    let state: Shared = Rc::new(RefCell::new(State {
        found: vec![None; plan.fields().len()],
        duplicates: vec![0; plan.fields().len()],
        ..State::default()
    }));
    let mut output = Vec::with_capacity(input.len() + 256);
    let mut consumed = 0;
    {
        let settings = settings(&state, plan, encoding);
        let mut rewriter = HtmlRewriter::new(settings, |c: &[u8]| output.extend_from_slice(c));
        while consumed < input.len() {
            let end = chunk_end(input, consumed);
            rewriter.write(&input[consumed..end])?;
            consumed = end;
            if state.borrow().done {
                break;
            }
        }
        rewriter.end()?;
    }
    output.extend_from_slice(&input[consumed..]);

    let mut st = state.borrow_mut();
    if st.placement.is_none() {
        if st.doctype {
            return Err(RewriteError::DoctypeFragment);
        }
        let missing = missing_tags(&mut st, plan);
        if !missing.is_empty() {
            let nl = first_line_break(input);
            let mut top = String::new();
            for tag in &missing {
                top.push_str(tag);
                top.push_str(nl);
            }
            let mut encoded = encoding.encode(&top).0.into_owned();
            encoded.extend_from_slice(&output);
            output = encoded;
        }
        st.placement = Some(Placement::FragmentTop);
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
    plan: &'h Plan,
    encoding: &'static Encoding,
) -> Settings<'h, 'static> {
    let [s1, s2, s3, s4, s5, s6, s7, s8, s9] = std::array::from_fn(|_| state.clone());
    let plan_for_head = plan.clone();
    Settings {
        encoding: AsciiCompatibleEncoding::new(encoding).expect("charset::detect checks this"),
        document_content_handlers: vec![doctype!(move |d| {
            let mut st = s1.borrow_mut();
            st.doctype = true;
            let public = d.public_id().unwrap_or_default();
            st.xhtml |= public.to_ascii_uppercase().contains("XHTML");
            Ok(())
        })],
        element_content_handlers: vec![
            element!("html", move |el| {
                let mut st = s2.borrow_mut();
                st.html_seen = true;
                st.xhtml |= el.has_attribute("xmlns");
                Ok(())
            }),
            text!("html", move |t| {
                let mut st = s3.borrow_mut();
                if !st.head_seen && !st.done {
                    let tail = st.html_tail.take();
                    st.html_tail = st.track(tail, t.as_str());
                }
                Ok(())
            }),
            element!("html > *, body", move |el| {
                let mut st = s4.borrow_mut();
                if !st.head_seen && !st.done && el.tag_name() != "head" {
                    let tags = missing_tags(&mut st, plan);
                    let block = head_block(&tags, st.html_tail.as_deref(), st.newline());
                    el.before(&block, ContentType::Html);
                    st.placement = Some(Placement::CreatedHead);
                    st.done = true;
                }
                Ok(())
            }),
            element!("head", move |el| {
                let mut st = s5.borrow_mut();
                if st.head_seen || st.done {
                    return Ok(());
                }
                st.head_seen = true;
                st.head_tail = None;
                let (state, plan) = (s5.clone(), plan_for_head.clone());
                if el.can_have_content() && !el.is_self_closing() {
                    el.on_end_tag(end_tag!(move |end| {
                        let mut st = state.borrow_mut();
                        let tags = missing_tags(&mut st, &plan);
                        let block = head_insertion(
                            &tags,
                            st.child_indent.as_deref(),
                            st.head_tail.as_deref(),
                            st.newline(),
                        );
                        end.before(&block, ContentType::Html);
                        st.placement = Some(Placement::Head);
                        st.done = true;
                        Ok(())
                    }))?;
                }
                Ok(())
            }),
            text!("head", move |t| {
                let mut st = s6.borrow_mut();
                if !st.done {
                    let tail = st.head_tail.take();
                    st.head_tail = st.track(tail, t.as_str());
                }
                Ok(())
            }),
            element!("head *", move |el| {
                let mut st = s7.borrow_mut();
                if st.done {
                    return Ok(());
                }
                start_of_child(&mut st);
                if el.can_have_content() && !el.is_self_closing() {
                    let state = s7.clone();
                    el.on_end_tag(end_tag!(move |_| {
                        state.borrow_mut().head_tail = None;
                        Ok(())
                    }))?;
                }
                Ok(())
            }),
            comments!("head", move |_| {
                let mut st = s8.borrow_mut();
                if !st.done {
                    start_of_child(&mut st);
                }
                Ok(())
            }),
            element!("meta[name]", move |el| {
                visit_meta(&mut s9.borrow_mut(), plan, el);
                Ok(())
            }),
        ],
        ..Settings::new()
    }
}

/// A `<meta name>`: in the head, or anywhere in a fragment before any structure is seen.
fn visit_meta(st: &mut State, plan: &Plan, el: &mut Element) {
    let in_scope = !st.done && (st.head_seen || (!st.html_seen && st.placement.is_none()));
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

fn start_of_child(st: &mut State) {
    if st.child_indent.is_none() {
        st.child_indent = st.head_tail.clone();
    }
    st.head_tail = None;
}

/// Tracks whether the text so far ends with a line break followed by whitespace only.
fn next_tail(tail: Option<String>, chunk: &str) -> Option<String> {
    if chunk.is_empty() {
        return tail;
    }
    match chunk.rfind('\n') {
        Some(nl) => {
            let after = &chunk[nl + 1..];
            after
                .chars()
                .all(|c| c == ' ' || c == '\t' || c == '\r')
                .then(|| after.trim_start_matches('\r').to_owned())
        }
        None if chunk.chars().all(|c| c == ' ' || c == '\t') => tail.map(|t| t + chunk),
        None => None,
    }
}

/// What goes right before `</head>`: one tag per line when the head is laid out in lines.
fn head_insertion(
    tags: &[String],
    child_indent: Option<&str>,
    closing: Option<&str>,
    nl: &str,
) -> String {
    let Some(closing) = closing else {
        return tags.concat();
    };
    if tags.is_empty() {
        return String::new();
    }
    let child = child_indent.map_or_else(|| format!("{closing}  "), str::to_owned);
    let first = child.strip_prefix(closing).unwrap_or(&child);
    let mut out = String::from(first);
    for (i, tag) in tags.iter().enumerate() {
        if i > 0 {
            out.push_str(nl);
            out.push_str(&child);
        }
        out.push_str(tag);
    }
    out.push_str(nl);
    out.push_str(closing);
    out
}

/// A whole `<head>` for a document that has none, placed before its first child element.
fn head_block(tags: &[String], indent: Option<&str>, nl: &str) -> String {
    let Some(indent) = indent else {
        return format!("<head>{}</head>", tags.concat());
    };
    let mut out = format!("<head>{nl}");
    for tag in tags {
        out.push_str(&format!("{indent}  {tag}{nl}"));
    }
    out.push_str(&format!("{indent}</head>{nl}{indent}"));
    out
}
