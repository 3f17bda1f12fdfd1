//! One personal broadcast as a MIME message.

use crate::config::mail::MailSettings;
use crate::mapping::Mapping;
use crate::template::render::{render, render_text};
use lettre::message::dkim::{DkimCanonicalization, DkimCanonicalizationType, DkimConfig};
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::Message;
use serde_json::{Map, Value};

/// Where one message goes, and what it is made of.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub to: &'a str,
    /// The personal broadcast's uuid: the `Message-ID` is `<uuid@[mail] message_id_domain>`,
    /// the same on every retry, so a duplicate after a crash can be recognised.
    pub uuid: &'a str,
    pub manual_options: &'a Map<String, Value>,
    /// `List-Unsubscribe` targets (`<https://...>`, `<mailto:...>`), if any; with an `https`
    /// one, `List-Unsubscribe-Post: List-Unsubscribe=One-Click` too (RFC 8058).
    pub unsubscribe: Vec<String>,
    /// Tracked links and the open pixel, for this personal broadcast (broadcast id,
    /// customer id), when `[tracking]` is on for the mapping.
    pub tracking: Option<(&'a super::tracking::Tokens, (i64, i64))>,
    /// The `pegabridge` key (`"{broadcast_id}-{customer_id}"`) for the platform's metadata
    /// header (`[mail] platform`).
    pub join_key: Option<crate::event::JoinKey>,
}

/// Why a message could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("rendering: {0}")]
    Render(#[from] crate::template::render::RenderError),
    #[error("the recipient `{0}` is not an email address")]
    Recipient(String),
    #[error("the message could not be built: {0}")]
    Build(String),
}

/// Makes the messages of `[mail]`.
pub struct Composer {
    platform: Option<crate::config::mail::Platform>,
    ses_configuration_set: Option<String>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    domain: String,
    /// Signing with and without the `List-Unsubscribe` headers (a header a signature names
    /// must be in the message: verifiers hash an absent one differently).
    dkim: Option<(DkimConfig, DkimConfig)>,
    /// Tracked links, the pixel and one-click unsubscribe (`[tracking]`).
    tokens: Option<super::tracking::Tokens>,
    /// The address of `List-Unsubscribe`'s `mailto:` target (`reply_to`, else `from`).
    unsubscribe_mailbox: String,
    /// Each message's own return path (`[bounces]`), if configured.
    return_paths: Option<crate::bounces::ReturnPaths>,
}

impl std::fmt::Debug for Composer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The DKIM key stays out of Debug output.
        f.debug_struct("Composer")
            .field("from", &self.from.to_string())
            .field("dkim", &self.dkim.is_some())
            .finish_non_exhaustive()
    }
}

/// The headers every DKIM signature covers.
const SIGNED: [&str; 6] = [
    "From",
    "Subject",
    "To",
    "Date",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

impl Composer {
    /// The messages of `[mail]`, tracked as `[tracking]` says (none: untracked).
    pub fn new(
        settings: &MailSettings,
        tracking: Option<&crate::config::mail::TrackingSettings>,
    ) -> anyhow::Result<Self> {
        let from: Mailbox = settings.from.parse()?;
        let reply_to: Option<Mailbox> = settings.reply_to.as_deref().map(str::parse).transpose()?;
        let unsubscribe_mailbox = reply_to.as_ref().unwrap_or(&from).email.to_string();
        let dkim = match &settings.dkim {
            None => None,
            Some(d) => {
                // Read once; lettre's key is not Clone, so it is made twice from the text.
                let text = d.read().map_err(anyhow::Error::msg)?;
                let config = |names: &[&'static str]| -> anyhow::Result<DkimConfig> {
                    let key = d.signing_key(&text).map_err(anyhow::Error::msg)?;
                    let headers = names
                        .iter()
                        .map(|h| HeaderName::new_from_ascii_str(h))
                        .collect();
                    Ok(DkimConfig::new(
                        d.selector.clone(),
                        d.domain.clone(),
                        key,
                        headers,
                        // relaxed/relaxed: relays commonly refold headers.
                        DkimCanonicalization {
                            header: DkimCanonicalizationType::Relaxed,
                            body: DkimCanonicalizationType::Relaxed,
                        },
                    ))
                };
                Some((config(&SIGNED)?, config(&SIGNED[..4])?))
            }
        };
        Ok(Self {
            platform: settings.platform,
            ses_configuration_set: settings.ses_configuration_set.clone(),
            from,
            reply_to,
            domain: settings.message_id_domain.clone(),
            dkim,
            tokens: tracking.map(super::tracking::Tokens::new),
            unsubscribe_mailbox,
            return_paths: None,
        })
    }

    /// Sends every message with its own return path (`[bounces]`): a late bounce or a
    /// feedback report then finds its personal broadcast. `From` and DKIM are unchanged.
    pub fn with_return_paths(
        mut self,
        bounces: Option<&crate::config::bounces::BounceSettings>,
    ) -> Self {
        self.return_paths = bounces.map(crate::bounces::ReturnPaths::new);
        self
    }

    /// The message of one personal broadcast (`ids`: its broadcast id and customer id) as
    /// `serve` sends it: `{{$unsubscribe_url}}` set, links tracked and the pixel placed when
    /// the mapping is tracked, `List-Unsubscribe` (one-click with `[tracking]`), the
    /// platform's metadata header.
    pub fn personal(
        &self,
        mapping: &Mapping,
        to: &str,
        uuid: &str,
        manual_options: &Map<String, Value>,
        ids: (i64, i64),
    ) -> Result<Message, ComposeError> {
        let mut options = manual_options.clone();
        let mut unsubscribe = Vec::new();
        if let Some(tokens) = &self.tokens {
            let url = tokens.url(&super::tracking::Target::Unsubscribe {
                broadcast_id: ids.0,
                customer_id: ids.1,
            });
            // `{{$unsubscribe_url}}` in the template.
            options.insert("unsubscribe_url".into(), Value::String(url.clone()));
            unsubscribe.push(url);
        }
        unsubscribe.push(format!(
            "mailto:{}?subject=unsubscribe",
            self.unsubscribe_mailbox
        ));
        let tracking = match &self.tokens {
            Some(tokens) if mapping.file.tracking => Some((tokens, ids)),
            _ => None,
        };
        let outgoing = Outgoing {
            to,
            uuid,
            manual_options: &options,
            unsubscribe,
            tracking,
            join_key: Some(crate::event::JoinKey {
                broadcast_id: ids.0,
                customer_id: ids.1,
            }),
        };
        self.compose(mapping, &outgoing)
    }

    /// The message of `mapping` for `out`: subject and from name rendered with the manual
    /// fields as text, the HTML with them escaped (as the preview renders it), a plain-text
    /// alternative made from it.
    pub fn compose(&self, mapping: &Mapping, out: &Outgoing<'_>) -> Result<Message, ComposeError> {
        let values = out.manual_options;
        let subject = one_line(&render_text(&mapping.file.subject, values)?.html);
        let html = render(&mapping.template_html, values)?.html;
        // The text part keeps the original links: readable, and clicks there are not counted.
        let text = plain_text(&html);
        let html = match out.tracking {
            Some((tokens, ids)) => {
                let unsubscribe = out
                    .unsubscribe
                    .iter()
                    .find(|u| u.starts_with("http"))
                    .map_or("", String::as_str);
                super::tracking::rewrite(&html, tokens, ids, unsubscribe)
            }
            None => html,
        };
        let to: Mailbox = out
            .to
            .parse()
            .map_err(|_| ComposeError::Recipient(out.to.to_owned()))?;
        let from = match &mapping.file.from_name {
            Some(name) => Mailbox::new(
                Some(one_line(&render_text(name, values)?.html)),
                self.from.email.clone(),
            ),
            None => self.from.clone(),
        };
        let to_address = to.email.clone();
        let mut builder = Message::builder()
            .from(from)
            .to(to)
            .subject(subject)
            .date_now()
            .message_id(Some(format!("<{}@{}>", out.uuid, self.domain)));
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
        }
        if let (Some(paths), Some(key)) = (&self.return_paths, &out.join_key) {
            let sender = paths
                .address(key.broadcast_id, key.customer_id)
                .parse::<lettre::Address>()
                .map_err(|e| ComposeError::Build(format!("the return path: {e}")))?;
            let envelope = lettre::address::Envelope::new(Some(sender), vec![to_address])
                .map_err(|e| ComposeError::Build(e.to_string()))?;
            builder = builder.envelope(envelope);
        }
        if !out.unsubscribe.is_empty() {
            let targets: Vec<String> = out.unsubscribe.iter().map(|u| format!("<{u}>")).collect();
            builder = builder.header(ListUnsubscribe(targets.join(", ")));
            if out.unsubscribe.iter().any(|u| u.starts_with("https://")) {
                builder = builder.header(ListUnsubscribePost);
            }
        }
        let body = MultiPart::alternative()
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text),
            )
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(html),
            );
        let mut message = builder
            .multipart(body)
            .map_err(|e| ComposeError::Build(e.to_string()))?;
        if let (Some(platform), Some(key)) = (self.platform, &out.join_key) {
            for (name, value) in platform_headers(
                platform,
                &key.to_string(),
                self.ses_configuration_set.as_deref(),
            ) {
                message.headers_mut().insert_raw(HeaderValue::new(
                    HeaderName::new_from_ascii(name)
                        .map_err(|e| ComposeError::Build(e.to_string()))?,
                    value,
                ));
            }
        }
        if let Some((all, without_unsubscribe)) = &self.dkim {
            // Both List-Unsubscribe headers when there is an https target; else none.
            let one_click = out.unsubscribe.iter().any(|u| u.starts_with("https://"));
            message.sign(if one_click { all } else { without_unsubscribe });
        }
        Ok(message)
    }
}

/// The headers that carry the `pegabridge` key through `platform`'s relay to its events.
pub fn platform_headers(
    platform: crate::config::mail::Platform,
    key: &str,
    ses_configuration_set: Option<&str>,
) -> Vec<(String, String)> {
    use crate::config::mail::Platform;
    let meta = serde_json::json!({ "pegabridge": key }).to_string();
    match platform {
        Platform::Sendgrid => vec![(
            "X-SMTPAPI".into(),
            serde_json::json!({"unique_args": {"pegabridge": key}}).to_string(),
        )],
        Platform::Mailgun => vec![("X-Mailgun-Variables".into(), meta)],
        Platform::Postmark => vec![("X-PM-Metadata-pegabridge".into(), key.into())],
        Platform::Ses => {
            let mut h = vec![("X-SES-MESSAGE-TAGS".into(), format!("pegabridge={key}"))];
            if let Some(set) = ses_configuration_set {
                h.push(("X-SES-CONFIGURATION-SET".into(), set.into()));
            }
            h
        }
        Platform::Sparkpost => vec![(
            "X-MSYS-API".into(),
            serde_json::json!({"metadata": {"pegabridge": key}}).to_string(),
        )],
        Platform::Mandrill => vec![("X-MC-Metadata".into(), meta)],
    }
}

/// A header value on one line (a subject rendered from a value with a line break in it).
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plain-text alternative: no table borders (layout tables are everywhere in email),
/// hidden elements dropped (`display:none` by the document's CSS, `visibility:hidden`
/// inline: preheaders), table footers kept, an image-only link known by its image's alt text
/// (else its URL), links as numbered footnotes with each URL whole on its line, paragraphs
/// wrapped at 78 columns but never inside a URL, no trailing spaces.
pub fn plain_text(html: &str) -> String {
    let (prepared, longest_url) = for_text(html);
    let width = 78.max(longest_url + 1);
    let config = html2text::config::plain_no_decorate()
        .use_doc_css()
        .no_table_borders()
        .no_link_wrapping()
        .link_footnotes(true);
    let text = config
        .string_from_read(prepared.as_bytes(), width)
        .unwrap_or_else(|_| html2text::from_read(prepared.as_bytes(), width).unwrap_or_default());
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Whether an inline style hides its element from every reader.
fn hidden(style: &str) -> bool {
    let style: String = style
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    style.contains("visibility:hidden") || style.contains("display:none")
}

/// The HTML as the text part is made from it (see [`plain_text`]), and the length of its
/// longest URL written as text.
fn for_text(html: &str) -> (String, usize) {
    use lol_html::{doc_text, element, text};
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    // Per open link: its href, and whether it shows anything.
    let links: Rc<RefCell<Vec<(String, bool)>>> = Rc::default();
    let longest = Cell::new(0usize);
    let shown = |links: &RefCell<Vec<(String, bool)>>| {
        if let Some(last) = links.borrow_mut().last_mut() {
            last.1 = true;
        }
    };
    let result = lol_html::rewrite_str(
        html,
        lol_html::Settings {
            element_content_handlers: vec![
                element!("[style]", |el| {
                    if hidden(&el.get_attribute("style").unwrap_or_default()) {
                        el.remove();
                    }
                    Ok(())
                }),
                element!("tfoot", |el| {
                    el.set_tag_name("tbody")?;
                    Ok(())
                }),
                element!("a[href]", |el| {
                    let href = el.get_attribute("href").unwrap_or_default();
                    let href = html_escape::decode_html_entities(href.trim()).into_owned();
                    links.borrow_mut().push((href, false));
                    let links = links.clone();
                    if let Some(handlers) = el.end_tag_handlers() {
                        let handler: lol_html::EndTagHandler<'static> = Box::new(move |end| {
                            if let Some((href, false)) = links.borrow_mut().pop() {
                                end.before(&href, lol_html::html_content::ContentType::Text);
                            }
                            Ok(())
                        });
                        handlers.push(handler);
                    }
                    Ok(())
                }),
                element!("a[href] img[alt]", |el| {
                    if !el
                        .get_attribute("alt")
                        .unwrap_or_default()
                        .trim()
                        .is_empty()
                    {
                        shown(&links);
                    }
                    Ok(())
                }),
                text!("a[href]", |t| {
                    if !t.as_str().trim().is_empty() {
                        shown(&links);
                    }
                    Ok(())
                }),
            ],
            document_content_handlers: vec![doc_text!(|t| {
                for word in t.as_str().split_whitespace() {
                    if word.starts_with("http://") || word.starts_with("https://") {
                        longest.set(longest.get().max(word.chars().count()));
                    }
                }
                Ok(())
            })],
            ..lol_html::Settings::new()
        },
    );
    match result {
        Ok(prepared) => (prepared, longest.get()),
        Err(_) => (html.to_owned(), 0),
    }
}

/// `List-Unsubscribe` (RFC 2369).
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_part_drops_hidden_preheaders_and_table_borders_and_keeps_links_as_footnotes() {
        let html = r#"<html><body><div style="display:none">Preheader you never see</div>
            <table><tr><td>Hello <b>Ann</b></td><td><a href="https://x.example/offer">Your offer</a></td></tr></table>
            </body></html>"#;
        let text = plain_text(html);
        assert!(!text.contains("Preheader"), "{text}");
        assert!(!text.contains('─') && !text.contains('|'), "{text}");
        assert!(text.contains("[Your offer][1]"), "{text}");
        assert!(text.contains("[1]: https://x.example/offer"), "{text}");
    }

    #[test]
    fn a_rendered_line_break_cannot_start_a_new_header() {
        assert_eq!(one_line("Hi\r\nBcc: x@y.z"), "Hi Bcc: x@y.z");
    }

    #[test]
    fn the_text_part_keeps_urls_whole_footers_and_image_links_and_drops_what_is_hidden() {
        let long = "https://x.example/a/very/long/inline/url/that/is/written/in/the/text/and/is/over/seventy/eight/columns";
        let html = format!(
            r#"<html><body><div style="visibility: hidden">Hidden preheader</div>
            <table><tbody><tr><td>Hello Ann, a paragraph of text long enough to wrap somewhere along the way, as paragraphs do.</td></tr></tbody>
            <tfoot><tr><td>Footer text <a href="https://x.example/unsub">Unsubscribe</a></td></tr></tfoot></table>
            <a href="https://x.example/shop"><img src="a.png" alt="Shop now"></a>
            <a href="https://x.example/noalt?a=1&amp;b=2"><img src="b.png"></a>
            <p>Visit {long} for more.</p></body></html>"#
        );
        let text = plain_text(&html);
        assert!(!text.contains("Hidden preheader"), "{text}");
        assert!(text.contains("Footer text"), "{text}");
        assert!(text.contains("Shop now"), "{text}");
        assert!(text.contains("https://x.example/noalt?a=1&b=2"), "{text}");
        assert!(
            text.lines().any(|l| l.contains(long)),
            "the URL on one line: {text}"
        );
        assert!(text.lines().all(|l| l == l.trim_end()), "{text:?}");
        assert!(text.contains("[1]: https://x.example/unsub"), "{text}");
    }
}
