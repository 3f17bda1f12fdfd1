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
    pub fn new(settings: &MailSettings) -> anyhow::Result<Self> {
        let from: Mailbox = settings.from.parse()?;
        let reply_to = settings.reply_to.as_deref().map(str::parse).transpose()?;
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
        })
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
        let mut builder = Message::builder()
            .from(from)
            .to(to)
            .subject(subject)
            .date_now()
            .message_id(Some(format!("<{}@{}>", out.uuid, self.domain)));
        if let Some(r) = &self.reply_to {
            builder = builder.reply_to(r.clone());
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
/// elements hidden by the document's CSS dropped (preheaders), links as numbered footnotes.
pub fn plain_text(html: &str) -> String {
    let config = html2text::config::plain_no_decorate()
        .use_doc_css()
        .no_table_borders()
        .link_footnotes(true);
    config
        .string_from_read(html.as_bytes(), 78)
        .unwrap_or_else(|_| html2text::from_read(html.as_bytes(), 78).unwrap_or_default())
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
}
