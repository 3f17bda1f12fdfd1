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

/// A link of the HTML: its text (or title, or an image's alt text).
#[derive(Debug, Default, Clone)]
struct Link {
    alt: String,
}

/// Why a link is left as it is (preview names the ones a reader would expect tracked).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Untracked {
    /// `#...` or an empty `href`.
    Anchor,
    /// Not http(s): `mailto:`, `tel:`...
    NotHttp,
    /// A relative link and no `<base>` to resolve it (its target depends on the mail client).
    Relative,
    /// `//host/...` and no `<base>`: the scheme depends on the mail client.
    ProtocolRelative,
    /// Control characters (a line break...) in the URL.
    ControlCharacters,
    /// A template placeholder left in it.
    Placeholder,
}

impl Untracked {
    /// Whether a reader would expect the link to be tracked (a web link we cannot resolve).
    pub fn is_surprising(&self) -> bool {
        matches!(
            self,
            Untracked::Relative | Untracked::ProtocolRelative | Untracked::ControlCharacters
        )
    }
}

/// The URL a browser opens for `href` as written in the HTML (character references decoded
/// once, surrounding spaces dropped, resolved under `base`): only an absolute http(s) URL
/// without control characters is tracked.
pub fn target(href: &str, base: Option<&url::Url>) -> Result<url::Url, Untracked> {
    let decoded = html_escape::decode_html_entities(href);
    let trimmed = decoded.trim_matches(|c: char| c <= ' ');
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Err(Untracked::Anchor);
    }
    if trimmed.contains("{{") || trimmed.contains("{%") || trimmed.contains("}}") {
        return Err(Untracked::Placeholder);
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Untracked::ControlCharacters);
    }
    let url = match url::Url::parse(trimmed) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase) => match base {
            Some(base) => base.join(trimmed).map_err(|_| Untracked::Relative)?,
            None if trimmed.starts_with("//") => return Err(Untracked::ProtocolRelative),
            None => return Err(Untracked::Relative),
        },
        Err(_) => return Err(Untracked::Relative),
    };
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "http" | "https" => Err(Untracked::Relative),
        _ => Err(Untracked::NotHttp),
    }
}

/// The first `<base href>` of the HTML, if it is an absolute http(s) URL.
fn base_of(href: &str) -> Option<url::Url> {
    target(href, None).ok()
}

/// `href="..."` or `href='...'` in a conditional comment's markup (VML buttons).
fn comment_href() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r#"(?i)(\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)')"#).expect("a valid pattern")
    })
}

/// Whether a comment is an Outlook conditional comment (`<!--[if mso]>...<![endif]-->`).
fn conditional(text: &str) -> bool {
    text.trim_start()
        .get(..3)
        .is_some_and(|s| s.eq_ignore_ascii_case("[if"))
}

/// The links of `html` that a reader would expect tracked and that are not: each `href` as
/// written, and why (preview shows them).
pub fn untracked_links(html: &str) -> Vec<(String, Untracked)> {
    let found = std::cell::RefCell::new(Vec::new());
    let base = std::cell::RefCell::new(None::<url::Url>);
    let _ = lol_html::rewrite_str(
        html,
        Settings {
            element_content_handlers: vec![
                element!("base[href]", |el| {
                    let mut base = base.borrow_mut();
                    if base.is_none() {
                        *base = base_of(&el.get_attribute("href").unwrap_or_default());
                    }
                    Ok(())
                }),
                element!("a[href], area[href]", |el| {
                    let href = el.get_attribute("href").unwrap_or_default();
                    if let Err(why) = target(&href, base.borrow().as_ref()) {
                        if why.is_surprising() {
                            found.borrow_mut().push((href, why));
                        }
                    }
                    Ok(())
                }),
            ],
            ..Settings::new()
        },
    );
    found.into_inner()
}

/// The links' texts, in document order of `<a href>` and `<area href>`, and the `<base>`.
fn collect(html: &str) -> (Vec<Link>, Option<url::Url>) {
    let links = std::cell::RefCell::new(Vec::<Link>::new());
    let base = std::cell::RefCell::new(None::<url::Url>);
    let add = |piece: &str| {
        if let Some(last) = links.borrow_mut().last_mut() {
            let piece = html_escape::decode_html_entities(piece.trim()).into_owned();
            if !piece.is_empty() && last.alt.len() < 200 {
                if !last.alt.is_empty() {
                    last.alt.push(' ');
                }
                last.alt.push_str(&piece);
            }
        }
    };
    let _ = lol_html::rewrite_str(
        html,
        Settings {
            element_content_handlers: vec![
                element!("base[href]", |el| {
                    let mut base = base.borrow_mut();
                    if base.is_none() {
                        *base = base_of(&el.get_attribute("href").unwrap_or_default());
                    }
                    Ok(())
                }),
                element!("a[href], area[href]", |el| {
                    let alt = el
                        .get_attribute("title")
                        .or_else(|| el.get_attribute("alt"))
                        .unwrap_or_default();
                    let alt = html_escape::decode_html_entities(&alt).into_owned();
                    links.borrow_mut().push(Link { alt });
                    Ok(())
                }),
                // An image-only link is known by the image's alt text.
                element!("a[href] img[alt]", |el| {
                    add(&el.get_attribute("alt").unwrap_or_default());
                    Ok(())
                }),
                text!("a[href]", |t| {
                    add(t.as_str());
                    Ok(())
                }),
            ],
            ..Settings::new()
        },
    );
    (links.into_inner(), base.into_inner())
}

/// The HTML with its links going through `tokens` (`<a>`, `<area>` and the links of Outlook
/// conditional comments), and the open pixel placed once, at the end of the body that renders.
pub fn rewrite(
    html: &str,
    tokens: &Tokens,
    (broadcast_id, customer_id): (i64, i64),
    unsubscribe: &str,
) -> String {
    let (links, base) = collect(html);
    let next_element = std::cell::Cell::new(0usize);
    let next_id = std::cell::Cell::new(0i64);
    // The tracked URL of `href` (number `link_id`), or none when it is left as it is.
    let track = |href: &str, alt: String| -> Option<String> {
        let url = target(href, base.as_ref()).ok()?;
        if url.as_str() == unsubscribe {
            return None;
        }
        next_id.set(next_id.get() + 1);
        Some(tokens.url(&Target::Click {
            broadcast_id,
            customer_id,
            link_id: next_id.get(),
            url: url.into(),
            alt,
        }))
    };
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
                element!("a[href], area[href]", |el| {
                    let i = next_element.get();
                    next_element.set(i + 1);
                    let href = el.get_attribute("href").unwrap_or_default();
                    let alt = links.get(i).map(|l| l.alt.clone()).unwrap_or_default();
                    if let Some(url) = track(&href, alt) {
                        el.set_attribute("href", &url)?;
                    }
                    Ok(())
                }),
                element!("body", |el| {
                    let pixel = pixel.clone();
                    let placed = placed.clone();
                    if let Some(handlers) = el.end_tag_handlers() {
                        let handler: lol_html::EndTagHandler<'static> = Box::new(move |end| {
                            // Once, however many bodies the markup has.
                            if !placed.replace(true) {
                                end.before(&pixel, lol_html::html_content::ContentType::Html);
                            }
                            Ok(())
                        });
                        handlers.push(handler);
                    }
                    Ok(())
                }),
            ],
            document_content_handlers: vec![lol_html::doc_comments!(|c| {
                let text = c.text();
                if !conditional(&text) {
                    return Ok(());
                }
                let mut changed = false;
                let rewritten = comment_href().replace_all(&text, |m: &regex::Captures<'_>| {
                    let href = m.get(2).or_else(|| m.get(3)).map_or("", |v| v.as_str());
                    match track(href, String::new()) {
                        Some(url) => {
                            changed = true;
                            format!("{}\"{url}\"", &m[1])
                        }
                        None => m[0].to_owned(),
                    }
                });
                if changed {
                    c.set_text(&rewritten)?;
                }
                Ok(())
            })],
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
        // No `</body>`, or one swallowed by a comment left open (an unclosed
        // `<!--[if mso]>`): close the comment first, so the pixel renders.
        if unclosed_comment(&html) {
            html.push_str("<![endif]-->");
        }
        html.push_str(&pixel);
    }
    html
}

/// Whether `html` ends inside a comment (comments do not nest: each ends at the first `-->`).
fn unclosed_comment(html: &str) -> bool {
    let mut rest = html;
    while let Some(open) = rest.find("<!--") {
        match rest[open + 4..].find("-->") {
            Some(close) => rest = &rest[open + 4 + close + 3..],
            None => return true,
        }
    }
    false
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

    /// The targets (in link order) of the tracked links of `out`.
    fn targets(t: &Tokens, out: &str) -> Vec<(i64, String, String)> {
        out.split(['"', '\''])
            .filter_map(|s| s.strip_prefix("https://mail.example/t/c/"))
            .map(|token| match t.check(Kind::Click, token).unwrap() {
                Target::Click {
                    url, alt, link_id, ..
                } => (link_id, url, alt),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_tracked_target_is_the_url_a_browser_opens() {
        let t = tokens();
        let html = r#"<html><head><base href="https://shop.example/dir/"></head><body>
            <a href="https://x.example/&#43;plus">plus</a>
            <a href="https://x.example/s?q=&amp;lt;b&amp;gt;&amp;r=1">escaped</a>
            <a href="offer?id=1&amp;x=2">relative</a>
            <a href=" //cdn.example/p ">protocol-relative</a>
            <map><area href="https://x.example/map" alt="Map area"></map>
            <a href="https://x.example/img"><img src="i.png" alt="Buy now"></a>
            </body></html>"#;
        let out = rewrite(html, &t, (1, 2), "");
        let found = targets(&t, &out);
        let urls: Vec<&str> = found.iter().map(|(_, u, _)| u.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://x.example/+plus",
                "https://x.example/s?q=&lt;b&gt;&r=1",
                "https://shop.example/dir/offer?id=1&x=2",
                "https://cdn.example/p",
                "https://x.example/map",
                "https://x.example/img",
            ]
        );
        let ids: Vec<i64> = found.iter().map(|(i, _, _)| *i).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
        assert_eq!(found[4].2, "Map area");
        assert_eq!(found[5].2, "Buy now", "an image-only link's alt text");
    }

    #[test]
    fn links_a_browser_cannot_resolve_are_left_and_named() {
        let t = tokens();
        let html = "<body><a href=\"//cdn.example/p\">a</a><a href=\"/local\">b</a>\
            <a href=\"https://x.example/a&#10;Location: evil\">c</a><a href=\"mailto:x@y.z\">d</a>\
            <a href=\"#top\">e</a></body>";
        let out = rewrite(html, &t, (1, 2), "");
        assert!(targets(&t, &out).is_empty(), "{out}");
        let named: Vec<Untracked> = untracked_links(html).into_iter().map(|(_, w)| w).collect();
        assert_eq!(
            named,
            [
                Untracked::ProtocolRelative,
                Untracked::Relative,
                Untracked::ControlCharacters
            ]
        );
    }

    #[test]
    fn outlook_conditional_comments_links_are_tracked_in_order() {
        let t = tokens();
        let html = r#"<body><!--[if mso]><v:roundrect href="https://x.example/vml?a=1&amp;b=2" style="width:200px"><center>Go</center></v:roundrect><![endif]-->
            <!--[if !mso]><!--><a href="https://x.example/html">Go</a><!--<![endif]-->
            <!-- an ordinary comment href="https://x.example/not-a-link" --></body>"#;
        let out = rewrite(html, &t, (1, 2), "");
        let found = targets(&t, &out);
        let urls: Vec<(i64, &str)> = found.iter().map(|(i, u, _)| (*i, u.as_str())).collect();
        assert_eq!(
            urls,
            [
                (1, "https://x.example/vml?a=1&b=2"),
                (2, "https://x.example/html")
            ]
        );
        assert!(out.contains("https://x.example/not-a-link"));
    }

    #[test]
    fn the_pixel_is_placed_once_where_it_renders() {
        let t = tokens();
        let two = "<html><body>a</body><body>b</body></html>";
        let out = rewrite(two, &t, (1, 2), "");
        assert_eq!(out.matches("/t/o/").count(), 1, "{out}");
        // An unclosed conditional comment swallows `</body>`: the comment is closed first.
        let open = "<html><body>a<!--[if mso]><table><tr><td></body></html>";
        let out = rewrite(open, &t, (1, 2), "");
        assert_eq!(out.matches("/t/o/").count(), 1, "{out}");
        let pixel = out.find("<img").unwrap();
        assert!(
            out[..pixel].ends_with("<![endif]-->"),
            "the pixel is outside the comment: {out}"
        );
        assert!(!unclosed_comment(&out));
        let none = "<p>no body at all</p>";
        assert_eq!(rewrite(none, &t, (1, 2), "").matches("/t/o/").count(), 1);
    }
}
