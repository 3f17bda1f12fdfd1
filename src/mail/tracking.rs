//! Tracked mail: every `http(s)` link of a sent message goes through `{base_url}/t/c/TOKEN`,
//! a 1x1 pixel `{base_url}/t/o/TOKEN` marks opens, and `{base_url}/t/u/TOKEN` unsubscribes
//! (RFC 8058 one-click). A token carries what it is for (broadcast, customer, link number,
//! the original URL and the link's text) and an HMAC-SHA256 of it under `[tracking] secret`,
//! so it needs no storage (a link keeps working for as long as the secret is kept) and a
//! forged or altered token is refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use lol_html::{element, text, HtmlRewriter, Settings};
use sha2::Sha256;

/// The kind of a tracked URL (`/t/c/`, `/t/o/`, `/t/u/`): a token is good only for its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Click,
    Open,
    Unsubscribe,
}

impl Kind {
    /// Its segment of the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Click => "c",
            Kind::Open => "o",
            Kind::Unsubscribe => "u",
        }
    }
}

impl Target {
    /// The kind of URL that carries it.
    pub fn kind(&self) -> Kind {
        match self {
            Target::Click { .. } => Kind::Click,
            Target::Open { .. } => Kind::Open,
            Target::Unsubscribe { .. } => Kind::Unsubscribe,
        }
    }
}

/// What a token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Click {
        broadcast_id: i64,
        customer_id: i64,
        link_id: i64,
        url: String,
        alt: String,
    },
    Open {
        broadcast_id: i64,
        customer_id: i64,
    },
    Unsubscribe {
        broadcast_id: i64,
        customer_id: i64,
    },
}

/// Bytes of the HMAC kept in a token (128 bits).
const TAG: usize = 16;

/// Makes and checks tokens (the secret stays out of `Debug`).
#[derive(Clone)]
pub struct Tokens {
    key: Vec<u8>,
    base: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(settings: &crate::config::mail::TrackingSettings) -> Self {
        Self {
            key: settings.secret.expose().as_bytes().to_vec(),
            base: settings.base_url.trim_end_matches('/').to_owned(),
        }
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(data);
        mac.finalize().into_bytes()[..TAG].to_vec()
    }

    /// The token of `target`, stamped with the time it is made (the message is sent right
    /// after: a fetch seconds later is a scanner's, see `engagement`).
    pub fn token(&self, target: &Target) -> String {
        let mut body = match target {
            Target::Click {
                broadcast_id,
                customer_id,
                link_id,
                url,
                alt,
            } => serde_json::json!(["c", broadcast_id, customer_id, link_id, url, alt]),
            Target::Open {
                broadcast_id,
                customer_id,
            } => serde_json::json!(["o", broadcast_id, customer_id]),
            Target::Unsubscribe {
                broadcast_id,
                customer_id,
            } => serde_json::json!(["u", broadcast_id, customer_id]),
        };
        if let Some(items) = body.as_array_mut() {
            if !matches!(target, Target::Unsubscribe { .. }) {
                items.push(serde_json::json!(crate::event::now()));
            }
        }
        let data = body.to_string().into_bytes();
        let tag = self.mac(&data);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&data),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The URL of `target`.
    pub fn url(&self, target: &Target) -> String {
        let kind = target.kind().as_str();
        format!("{}/t/{kind}/{}", self.base, self.token(target))
    }

    /// What `token` is for, if it is one of ours, unaltered, of `kind`.
    pub fn check(&self, kind: Kind, token: &str) -> Option<Target> {
        self.check_issued(kind, token).map(|(target, _)| target)
    }

    /// [`Tokens::check`], with when the token was made (Unix seconds; tokens made before
    /// pegabridge stamped them have none).
    pub fn check_issued(&self, kind: Kind, token: &str) -> Option<(Target, Option<i64>)> {
        let (data, tag) = token.split_once('.')?;
        let data = URL_SAFE_NO_PAD.decode(data).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(&data);
        // Constant time.
        mac.verify_truncated_left(&tag).ok()?;
        if tag.len() != TAG {
            return None;
        }
        let v: Vec<serde_json::Value> = serde_json::from_slice(&data).ok()?;
        let id = |i: usize| v.get(i).and_then(serde_json::Value::as_i64);
        let text = |i: usize| v.get(i).and_then(|s| s.as_str()).map(str::to_owned);
        let found = match (v.first()?.as_str()?, kind) {
            ("c", Kind::Click) => Target::Click {
                broadcast_id: id(1)?,
                customer_id: id(2)?,
                link_id: id(3)?,
                url: text(4)?,
                alt: text(5)?,
            },
            ("o", Kind::Open) => Target::Open {
                broadcast_id: id(1)?,
                customer_id: id(2)?,
            },
            ("u", Kind::Unsubscribe) => Target::Unsubscribe {
                broadcast_id: id(1)?,
                customer_id: id(2)?,
            },
            _ => return None,
        };
        let stamp = match found {
            Target::Click { .. } => id(6),
            _ => id(3),
        };
        Some((found, stamp))
    }
}

/// A link of the HTML: its text (or title).
#[derive(Debug, Default, Clone)]
struct Link {
    alt: String,
}

/// Whether a link is tracked: `http(s)` links only (not `mailto:`, anchors or template
/// leftovers), and never the unsubscribe link.
fn tracked(href: &str, unsubscribe: &str) -> bool {
    // As written in HTML (a rendered value is escaped: `https:&#x2F;&#x2F;...`).
    let href = html_unescape(href.trim());
    let lower = href.to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://")) && href != unsubscribe
}

/// The HTML with its links going through `tokens`, and the open pixel at the end of the body.
pub fn rewrite(
    html: &str,
    tokens: &Tokens,
    (broadcast_id, customer_id): (i64, i64),
    unsubscribe: &str,
) -> String {
    // First the links' texts (the text of a link comes after its start tag).
    let links = std::cell::RefCell::new(Vec::<Link>::new());
    let _ = lol_html::rewrite_str(
        html,
        Settings {
            element_content_handlers: vec![
                element!("a[href]", |el| {
                    let title = el.get_attribute("title").unwrap_or_default();
                    links.borrow_mut().push(Link { alt: title });
                    Ok(())
                }),
                text!("a[href]", |t| {
                    if let Some(last) = links.borrow_mut().last_mut() {
                        let piece = t.as_str().trim();
                        if !piece.is_empty() && last.alt.len() < 200 {
                            if !last.alt.is_empty() {
                                last.alt.push(' ');
                            }
                            last.alt.push_str(&html_unescape(piece));
                        }
                    }
                    Ok(())
                }),
            ],
            ..Settings::new()
        },
    );
    let links = links.into_inner();
    let next = std::cell::Cell::new(0usize);
    let pixel_url = tokens.url(&Target::Open {
        broadcast_id,
        customer_id,
    });
    let pixel = format!(
        r#"<img src="{pixel_url}" width="1" height="1" alt="" style="border:0;width:1px;height:1px">"#
    );
    let placed = std::rc::Rc::new(std::cell::Cell::new(false));
    let mut out = Vec::with_capacity(html.len() + 1024);
    let mut rewriter = HtmlRewriter::new(
        Settings {
            element_content_handlers: vec![
                element!("a[href]", |el| {
                    let i = next.get();
                    next.set(i + 1);
                    let href = el.get_attribute("href").unwrap_or_default();
                    if tracked(&href, unsubscribe) {
                        let alt = links.get(i).map(|l| l.alt.clone()).unwrap_or_default();
                        let url = tokens.url(&Target::Click {
                            broadcast_id,
                            customer_id,
                            link_id: i as i64 + 1,
                            url: html_unescape(href.trim()),
                            alt,
                        });
                        el.set_attribute("href", &url)?;
                    }
                    Ok(())
                }),
                element!("body", |el| {
                    let pixel = pixel.clone();
                    let placed = placed.clone();
                    if let Some(handlers) = el.end_tag_handlers() {
                        let handler: lol_html::EndTagHandler<'static> = Box::new(move |end| {
                            end.before(&pixel, lol_html::html_content::ContentType::Html);
                            placed.set(true);
                            Ok(())
                        });
                        handlers.push(handler);
                    }
                    Ok(())
                }),
            ],
            ..Settings::new()
        },
        |c: &[u8]| out.extend_from_slice(c),
    );
    let written = rewriter
        .write(html.as_bytes())
        .and_then(|()| rewriter.end());
    if written.is_err() {
        return html.to_owned();
    }
    let mut html = String::from_utf8(out).unwrap_or_default();
    if !placed.get() {
        html.push_str(&pixel);
    }
    html
}

/// The text of an attribute or text chunk as written in HTML: the common entities read back.
fn html_unescape(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&#x2F;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::Secret;

    fn tokens() -> Tokens {
        Tokens::new(&crate::config::mail::TrackingSettings {
            base_url: "https://mail.example/".into(),
            secret: Secret::new("a tracking secret of more than 32 chars"),
        })
    }

    #[test]
    fn a_token_says_what_it_is_for_and_an_altered_one_says_nothing() {
        let t = tokens();
        let click = Target::Click {
            broadcast_id: 7,
            customer_id: 9,
            link_id: 2,
            url: "https://shop.example/o?utm_source=mail".into(),
            alt: "See your offer".into(),
        };
        let token = t.token(&click);
        assert_eq!(t.check(Kind::Click, &token), Some(click));
        assert_eq!(
            t.check(Kind::Open, &token),
            None,
            "a click token is not an open"
        );
        let (data, tag) = token.split_once('.').unwrap();
        let mut forged = URL_SAFE_NO_PAD.decode(data).unwrap();
        forged[5] ^= 1;
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(forged));
        assert_eq!(t.check(Kind::Click, &forged), None);
        assert_eq!(t.check(Kind::Click, "nonsense"), None);
        let other = Tokens::new(&crate::config::mail::TrackingSettings {
            base_url: "https://mail.example".into(),
            secret: Secret::new("another secret, also more than 32 chars"),
        });
        assert_eq!(other.check(Kind::Click, &token), None, "another secret");
    }

    #[test]
    fn http_links_are_tracked_and_mailto_anchors_and_the_unsubscribe_link_are_not() {
        let t = tokens();
        let html = r##"<html><body><a href="https://shop.example/a?x=1&amp;y=2" title="">Shop <b>now</b></a>
            <a href="mailto:help@x.example">mail</a><a href="#top">top</a>
            <a href="https://mail.example/t/u/abc">unsubscribe</a></body></html>"##;
        let out = rewrite(html, &t, (7, 9), "https://mail.example/t/u/abc");
        let first = out
            .split('"')
            .find(|s| s.starts_with("https://mail.example/t/c/"))
            .unwrap();
        let token = first.trim_start_matches("https://mail.example/t/c/");
        match t.check(Kind::Click, token).unwrap() {
            Target::Click {
                url, alt, link_id, ..
            } => {
                assert_eq!(url, "https://shop.example/a?x=1&y=2");
                assert_eq!(alt, "Shop now");
                assert_eq!(link_id, 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(out.contains(r#"href="mailto:help@x.example""#));
        assert!(out.contains("href=\"#top\""));
        assert!(out.contains(r#"href="https://mail.example/t/u/abc""#));
        assert_eq!(out.matches("/t/c/").count(), 1);
        let pixel = out.find("/t/o/").unwrap();
        assert!(pixel < out.find("</body>").unwrap(), "{out}");
    }

    #[test]
    fn a_rendered_unsubscribe_link_is_left_as_it_is_and_rendered_links_are_tracked() {
        let t = tokens();
        let unsubscribe = "https://mail.example/t/u/abc";
        let mut values = serde_json::Map::new();
        values.insert("unsubscribe_url".into(), unsubscribe.into());
        values.insert("OfferUrl".into(), "https://shop.example/o".into());
        let template = r#"<body><a href="{{$OfferUrl}}">offer</a> <a href="{{$unsubscribe_url}}">unsubscribe</a></body>"#;
        let html = crate::template::render::render(template, &values)
            .unwrap()
            .html;
        let out = rewrite(&html, &t, (1, 2), unsubscribe);
        assert_eq!(out.matches("/t/c/").count(), 1, "{out}");
        assert!(out.contains("t&#x2F;u&#x2F;abc"), "{out}");
    }
}
