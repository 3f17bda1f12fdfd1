//! The maintained table of user agents that are not people: image proxies, security scanners,
//! headless browsers and bots, each with its [`Reason`]. Matched case-insensitively as
//! substrings, in one pass (Aho-Corasick). A real mail client's user agent matches none
//! (`tests` hold both kinds, as they arrive).

use super::Reason;
use std::sync::LazyLock;

/// `(substring, reason)`; the first match in this order wins when several overlap.
pub const TABLE: &[(&str, Reason)] = &[
    // Mail providers' image proxies: they fetch for their users, often before anyone looks.
    ("googleimageproxy", Reason::ImageProxy),
    ("ggpht.com", Reason::ImageProxy),
    ("yahoomailproxy", Reason::ImageProxy),
    ("yahoo! slurp", Reason::ImageProxy),
    ("apple mail privacy", Reason::AppleMailPrivacy),
    // Security gateways and link scanners.
    ("microsoft-urlanalyzer", Reason::Scanner),
    ("safelinks", Reason::Scanner),
    ("safe links", Reason::Scanner),
    ("microsoft office existence discovery", Reason::Scanner),
    ("mimecast", Reason::Scanner),
    ("proofpoint", Reason::Scanner),
    ("barracuda", Reason::Scanner),
    ("ironport", Reason::Scanner),
    ("symantec", Reason::Scanner),
    ("messagelabs", Reason::Scanner),
    ("trendmicro", Reason::Scanner),
    ("trend micro", Reason::Scanner),
    ("forcepoint", Reason::Scanner),
    ("fortimail", Reason::Scanner),
    ("sophos", Reason::Scanner),
    ("fireeye", Reason::Scanner),
    ("checkpoint", Reason::Scanner),
    ("urlscan", Reason::Scanner),
    // Headless browsers (sandboxes that render a link).
    ("headlesschrome", Reason::Headless),
    ("phantomjs", Reason::Headless),
    ("puppeteer", Reason::Headless),
    ("playwright", Reason::Headless),
    // Crawlers, bots and HTTP libraries.
    ("bot", Reason::Bot),
    ("crawler", Reason::Bot),
    ("spider", Reason::Bot),
    ("python-requests", Reason::Bot),
    ("python-urllib", Reason::Bot),
    ("aiohttp", Reason::Bot),
    ("curl/", Reason::Bot),
    ("wget/", Reason::Bot),
    ("go-http-client", Reason::Bot),
    ("okhttp", Reason::Bot),
    ("java/", Reason::Bot),
    ("apache-httpclient", Reason::Bot),
    ("libwww-perl", Reason::Bot),
    ("node-fetch", Reason::Bot),
    ("axios/", Reason::Bot),
];

static MATCHER: LazyLock<aho_corasick::AhoCorasick> = LazyLock::new(|| {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .match_kind(aho_corasick::MatchKind::LeftmostFirst)
        .build(TABLE.iter().map(|(p, _)| p))
        .expect("the table's patterns are valid")
});

/// The reason `user_agent` is a machine's, if the table knows it.
pub fn machine(user_agent: &str) -> Option<Reason> {
    if user_agent.trim().is_empty() {
        return None;
    }
    MATCHER
        .find_iter(user_agent)
        .map(|m| m.pattern().as_usize())
        .min()
        .map(|i| TABLE[i].1)
}

/// Whether `user_agent` is the bare `Mozilla/5.0` Apple's privacy proxy sends.
pub fn is_bare_mozilla(user_agent: &str) -> bool {
    user_agent.trim() == "Mozilla/5.0"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real user agents of machines, as they arrive at a tracked link or pixel.
    const MACHINES: &[(&str, Reason)] = &[
        ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)", Reason::ImageProxy),
        ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", Reason::ImageProxy),
        ("Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)", Reason::ImageProxy),
        ("Microsoft-URLAnalyzer", Reason::Scanner),
        ("Microsoft Office Existence Discovery", Reason::Scanner),
        ("Mozilla/5.0 (compatible; SafeLinks/1.0)", Reason::Scanner),
        ("Mimecast-URL-Protect/1.0", Reason::Scanner),
        ("Proofpoint URL Defense", Reason::Scanner),
        ("Barracuda Sentinel (EE)", Reason::Scanner),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.109 Safari/537.36", Reason::Headless),
        ("curl/8.5.0", Reason::Bot),
        ("python-requests/2.31.0", Reason::Bot),
        ("Go-http-client/1.1", Reason::Bot),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Reason::Bot),
        ("okhttp/4.12.0", Reason::Bot),
    ];

    /// Real mail clients: none is a machine by its user agent.
    const PEOPLE: &[&str] = &[
        // Apple Mail on macOS and iOS.
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
        // The Gmail app's web view (Android).
        "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230805.001; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36",
        // Outlook desktop, and Outlook on the web in Edge.
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17029; Pro)",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
        // Thunderbird.
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.5.2",
        // Apple's privacy proxy looks like this: only its address tells (see `relay`).
        "Mozilla/5.0",
    ];

    #[test]
    fn machines_are_known_by_their_user_agent_and_mail_clients_are_not() {
        for (ua, reason) in MACHINES {
            assert_eq!(machine(ua), Some(*reason), "{ua}");
        }
        for ua in PEOPLE {
            assert_eq!(machine(ua), None, "{ua}");
        }
        assert!(is_bare_mozilla("Mozilla/5.0"));
        assert!(!is_bare_mozilla(PEOPLE[0]));
    }
}
