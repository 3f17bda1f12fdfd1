//! What an activity's caller may leave out: `os` and `browser` from the user agent (woothee),
//! the `google_*` fields from the URL's utm parameters, and `machine_generated` from known
//! image proxies and link scanners.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

static PARSER: LazyLock<woothee::parser::Parser> = LazyLock::new(woothee::parser::Parser::new);

/// What a user agent tells about the activity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agent {
    /// Operating system, as the seed names them ("Windows"); empty when unknown.
    pub os: String,
    /// Browser ("Chrome"); empty when unknown.
    pub browser: String,
    /// Why it is a machine's (a known proxy, scanner or crawler), if it is.
    pub reason: Option<crate::engagement::Reason>,
}

impl Agent {
    /// A known proxy, scanner or crawler.
    pub fn machine(&self) -> bool {
        self.reason.is_some()
    }
}

/// Most user agents [`agent`] keeps read.
const CACHED_AGENTS: usize = 1024;

/// Longer user agents are read but not kept: the cache holds at most
/// `CACHED_AGENTS x CACHED_AGENT_BYTES` (512 KiB) of them, whatever callers send.
const CACHED_AGENT_BYTES: usize = 512;

/// User agents already read. Mail is opened through few of them (the big webmails' image
/// proxies, a handful of mail apps), and reading one costs more than the rest of an open's
/// checks. When full, it starts again empty.
static AGENTS: LazyLock<Mutex<HashMap<String, Agent>>> = LazyLock::new(Mutex::default);

/// Reads a user agent: from the cache when it was read for an accepted activity before.
pub fn agent(user_agent: &str) -> Agent {
    let cached = AGENTS.lock().ok().and_then(|m| m.get(user_agent).cloned());
    cached.unwrap_or_else(|| read_agent(user_agent))
}

/// Keeps a user agent of an accepted (committed) activity for the next reads; input that was
/// refused never reaches the cache. Long ones are not kept (see [`CACHED_AGENT_BYTES`]).
pub fn remember(user_agent: &str) {
    if user_agent.is_empty() || user_agent.len() > CACHED_AGENT_BYTES {
        return;
    }
    let known = AGENTS
        .lock()
        .ok()
        .is_some_and(|m| m.contains_key(user_agent));
    if known {
        return;
    }
    let agent = read_agent(user_agent);
    if let Ok(mut m) = AGENTS.lock() {
        if m.len() >= CACHED_AGENTS {
            m.clear();
        }
        m.insert(user_agent.to_owned(), agent);
    }
}

/// Reads a user agent, with one parse.
fn read_agent(user_agent: &str) -> Agent {
    let named = crate::engagement::agents::machine(user_agent);
    let Some(r) = PARSER.parse(user_agent) else {
        return Agent {
            reason: named,
            ..Agent::default()
        };
    };
    let known = |s: &str| {
        if s == "UNKNOWN" {
            String::new()
        } else {
            s.to_owned()
        }
    };
    // woothee names Windows by version ("Windows 10"); the seed uses the family.
    let os = if r.os.starts_with("Windows") {
        "Windows".to_owned()
    } else {
        known(r.os)
    };
    let reason = named.or((r.category == "crawler").then_some(crate::engagement::Reason::Bot));
    Agent {
        os,
        browser: known(r.name),
        reason,
    }
}

/// The Google Analytics fields of a URL: source, medium, term, content, campaign.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Utm {
    pub source: String,
    pub medium: String,
    pub term: String,
    pub content: String,
    pub campaign: String,
}

/// The utm parameters of `url` (empty when absent or when the URL does not parse).
pub fn utm(url: &str) -> Utm {
    let mut utm = Utm::default();
    let Ok(parsed) = url::Url::parse(url) else {
        return utm;
    };
    for (k, v) in parsed.query_pairs() {
        let slot = match k.as_ref() {
            "utm_source" => &mut utm.source,
            "utm_medium" => &mut utm.medium,
            "utm_term" => &mut utm.term,
            "utm_content" => &mut utm.content,
            "utm_campaign" => &mut utm.campaign,
            _ => continue,
        };
        *slot = v.into_owned();
    }
    utm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os_and_browser(user_agent: &str) -> (String, String) {
        let a = agent(user_agent);
        (a.os, a.browser)
    }

    fn machine_generated(user_agent: &str) -> bool {
        agent(user_agent).machine()
    }

    #[test]
    fn the_seeds_user_agents_give_its_os_and_browser() {
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/81.0.4044.138 Safari/537.36";
        assert_eq!(os_and_browser(chrome), ("Windows".into(), "Chrome".into()));
        let ie = "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; yie11; rv:11.0) like Gecko";
        assert_eq!(
            os_and_browser(ie),
            ("Windows".into(), "Internet Explorer".into())
        );
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.0 Mobile/15E148 Safari/604.1";
        assert_eq!(os_and_browser(iphone).1, "Safari");
        assert_eq!(os_and_browser("???"), (String::new(), String::new()));
    }

    #[test]
    fn a_cached_user_agent_reads_as_a_fresh_one_also_past_the_cache_size() {
        let proxy = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
        remember(proxy);
        for i in 0..CACHED_AGENTS + 10 {
            let ua = format!("Mozilla/5.0 (Windows NT 10.0) Chrome/{i}.0 Safari/537.36");
            remember(&ua);
            assert_eq!(agent(&ua), read_agent(&ua));
            assert_eq!(agent(&ua).browser, "Chrome");
            assert!(agent(proxy).machine() && !agent(&ua).machine());
        }
        assert!(AGENTS.lock().unwrap().len() <= CACHED_AGENTS);
        let long = format!("Mozilla/5.0 {}", "x".repeat(CACHED_AGENT_BYTES));
        remember(&long);
        assert!(
            !AGENTS.lock().unwrap().contains_key(&long),
            "long agents are not kept"
        );
        let refused = "Mozilla/5.0 (refused) Never/1.0";
        let _ = agent(refused);
        assert!(
            !AGENTS.lock().unwrap().contains_key(refused),
            "reading does not fill the cache"
        );
    }

    #[test]
    fn image_proxies_and_scanners_are_machines_and_people_are_not() {
        assert!(machine_generated(
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
        ));
        assert!(machine_generated(
            "Googlebot/2.1 (+http://www.google.com/bot.html)"
        ));
        assert!(!machine_generated(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/81.0 Safari/537.36"
        ));
        assert!(!machine_generated(""));
    }

    #[test]
    fn utm_parameters_become_the_google_fields() {
        let u = utm(
            "https://shop.example/?utm_source=pega&utm_medium=email&utm_campaign=spring%20sale&x=1",
        );
        assert_eq!(u.source, "pega");
        assert_eq!(u.medium, "email");
        assert_eq!(u.campaign, "spring sale");
        assert_eq!(u.term, "");
        assert_eq!(utm("not a url"), Utm::default());
    }
}
