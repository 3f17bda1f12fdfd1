//! Whether an open or a click was a person: the evidence a tracked request (or an activity)
//! carries, judged into a [`Verdict`] with its [`Reason`]. Pega's adaptive models learn from
//! what pegabridge sends: an image proxy's fetch or a link scanner's visit must not arrive as
//! an Impression or a Clicked of a person.
//!
//! Evidence, strongest first: the request's method (`HEAD`: link checkers) and prefetch
//! headers; a user agent of a known image proxy, security scanner, headless browser or bot
//! ([`agents`]); Apple Mail Privacy Protection, the bare `Mozilla/5.0` coming from an address
//! of Apple's Private Relay egress list ([`relay`]).

pub mod agents;
pub mod client;
pub mod relay;

use std::net::IpAddr;

/// Why an open or a click was judged a machine's, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Nothing says it was not a person.
    Person,
    /// A `HEAD` request (link checkers look before they fetch).
    Head,
    /// A prefetch (`Purpose: prefetch`, `Sec-Purpose: prefetch`).
    Prefetch,
    /// A mail provider's image proxy (Gmail, Yahoo) fetching for its user.
    ImageProxy,
    /// Apple Mail Privacy Protection: every image of every message, opened or not.
    AppleMailPrivacy,
    /// A security gateway or link scanner (Safe Links, Mimecast, Proofpoint, Barracuda...).
    Scanner,
    /// A headless browser.
    Headless,
    /// A crawler, bot or HTTP library.
    Bot,
    /// Fetched within seconds of the message being sent (`[engagement] too_soon_secs`):
    /// security gateways open and follow everything on delivery.
    TooSoon,
    /// Several links of one message from one client within about a second.
    Burst,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::TooSoon,
        Reason::Burst,
        Reason::Person,
        Reason::Head,
        Reason::Prefetch,
        Reason::ImageProxy,
        Reason::AppleMailPrivacy,
        Reason::Scanner,
        Reason::Headless,
        Reason::Bot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Person => "person",
            Reason::Head => "head",
            Reason::Prefetch => "prefetch",
            Reason::ImageProxy => "image_proxy",
            Reason::AppleMailPrivacy => "apple_mail_privacy",
            Reason::Scanner => "scanner",
            Reason::Headless => "headless",
            Reason::Bot => "bot",
            Reason::TooSoon => "too_soon",
            Reason::Burst => "burst",
        }
    }

    /// Whether it names a machine.
    pub fn is_machine(self) -> bool {
        self != Reason::Person
    }
}

/// What a request tells about who made it.
#[derive(Debug, Clone, Default)]
pub struct Evidence<'a> {
    /// A `HEAD` request.
    pub head: bool,
    /// A prefetch header was present.
    pub prefetch: bool,
    pub user_agent: &'a str,
    /// The client's address (see [`client::client_address`]), when known.
    pub client: Option<IpAddr>,
    /// Seconds from the message being sent (its link made) to this fetch, when known.
    pub since_sent: Option<i64>,
    /// Fetches closer than this to the sending are a machine's.
    pub too_soon_secs: i64,
}

/// The judgement: a machine's or a person's, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub machine: bool,
    pub reason: Reason,
}

impl Verdict {
    pub fn of(reason: Reason) -> Self {
        Self {
            machine: reason.is_machine(),
            reason,
        }
    }
}

/// What the tracked routes judge requests with (built once at start-up).
#[derive(Debug)]
pub struct Judge {
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<client::Cidr>,
    /// Apple's Private Relay egress ranges, when configured.
    pub relay: Option<relay::Watched>,
    /// Repeated fetches seen recently.
    pub repeats: Repeats,
    /// Recent fetches, for bursts.
    pub recent: Bursts,
    /// `[engagement] too_soon_secs`.
    pub too_soon_secs: i64,
}

/// Recent tracked fetches by message and client: several links of one message fetched by
/// one client within [`BURST_WINDOW`] are a machine's (a scanner follows every link at once).
#[derive(Debug, Default)]
pub struct Bursts {
    seen: std::sync::Mutex<std::collections::VecDeque<Seen>>,
}

/// A fetch remembered: when, of which personal broadcast, by which client, which link.
type Seen = (std::time::Instant, (i64, i64), IpAddr, i64);

/// How close fetches of one burst are.
pub const BURST_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
/// Distinct links (the pixel counts as one) that make a burst.
pub const BURST_LINKS: usize = 3;
/// How long fetches are remembered for bursts.
const BURST_MEMORY: std::time::Duration = std::time::Duration::from_secs(30);
/// Most fetches remembered.
const BURST_MAX: usize = 100_000;

impl Bursts {
    /// Remembers a fetch of `link` (the pixel: -1) of personal broadcast `pb` by `client`.
    pub fn saw(&self, at: std::time::Instant, pb: (i64, i64), client: IpAddr, link: i64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        while seen.front().is_some_and(|f| {
            at.saturating_duration_since(f.0) > BURST_MEMORY || seen.len() >= BURST_MAX
        }) {
            seen.pop_front();
        }
        seen.push_back((at, pb, client, link));
    }

    /// Whether the fetch at `at` is part of a burst: [`BURST_LINKS`] distinct links of `pb`
    /// from `client` within [`BURST_WINDOW`] of it, before or after.
    pub fn is_burst(&self, at: std::time::Instant, pb: (i64, i64), client: IpAddr) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let near = |t: std::time::Instant| {
            t.saturating_duration_since(at)
                .max(at.saturating_duration_since(t))
                <= BURST_WINDOW
        };
        let links: std::collections::HashSet<i64> = seen
            .iter()
            .filter(|f| f.1 == pb && f.2 == client && near(f.0))
            .map(|f| f.3)
            .collect();
        links.len() >= BURST_LINKS
    }
}

impl Judge {
    /// The verdict on `evidence` (its client's address already resolved).
    pub fn judge(&self, evidence: &Evidence<'_>) -> Verdict {
        let ranges = self.relay.as_ref().map(relay::Watched::ranges);
        classify(evidence, ranges.as_deref())
    }
}

/// Tracked fetches seen within a window, by (token, client): a repeat records nothing new.
#[derive(Debug)]
pub struct Repeats {
    window: std::time::Duration,
    seen: std::sync::Mutex<std::collections::HashMap<(u64, IpAddr), std::time::Instant>>,
}

/// Most fetches remembered (when full, the expired ones go, then all).
const MAX_REMEMBERED: usize = 100_000;

impl Repeats {
    pub fn new(window: std::time::Duration) -> Self {
        Self {
            window,
            seen: std::sync::Mutex::default(),
        }
    }

    /// Whether `token` fetched by `client` was seen within the window; remembers it now.
    pub fn is_repeat(&self, token: &str, client: IpAddr, now: std::time::Instant) -> bool {
        use std::hash::{Hash, Hasher};
        if self.window.is_zero() {
            return false;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        token.hash(&mut h);
        let key = (h.finish(), client);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            let window = self.window;
            seen.retain(|_, t| now.duration_since(*t) < window);
            if seen.len() >= MAX_REMEMBERED {
                seen.clear();
            }
        }
        match seen.insert(key, now) {
            Some(before) => now.duration_since(before) < self.window,
            None => false,
        }
    }
}

/// Judges `evidence`; `relay` is Apple's Private Relay egress list, when configured.
pub fn classify(evidence: &Evidence<'_>, relay: Option<&relay::Ranges>) -> Verdict {
    if evidence.head {
        return Verdict::of(Reason::Head);
    }
    if evidence.prefetch {
        return Verdict::of(Reason::Prefetch);
    }
    if let Some(reason) = agents::machine(evidence.user_agent) {
        return Verdict::of(reason);
    }
    if evidence
        .since_sent
        .is_some_and(|s| s < evidence.too_soon_secs)
    {
        return Verdict::of(Reason::TooSoon);
    }
    if agents::is_bare_mozilla(evidence.user_agent) {
        let from_relay = evidence
            .client
            .zip(relay)
            .is_some_and(|(ip, ranges)| ranges.contains(ip));
        if from_relay {
            return Verdict::of(Reason::AppleMailPrivacy);
        }
    }
    Verdict::of(Reason::Person)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_links_of_one_message_from_one_client_within_a_second_are_a_burst() {
        let b = Bursts::default();
        let t0 = std::time::Instant::now();
        let (scanner, person): (IpAddr, IpAddr) = (
            "198.51.100.1".parse().unwrap(),
            "203.0.113.1".parse().unwrap(),
        );
        let ms = std::time::Duration::from_millis;
        for (i, link) in [1, 2, 3].into_iter().enumerate() {
            b.saw(t0 + ms(100 * i as u64), (7, 1), scanner, link);
        }
        b.saw(t0, (7, 1), person, 1);
        b.saw(t0 + ms(5000), (7, 1), person, 2);
        b.saw(t0 + ms(9000), (7, 1), person, 3);
        assert!(
            b.is_burst(t0, (7, 1), scanner),
            "judged with the fetches after it too"
        );
        assert!(
            !b.is_burst(t0, (7, 1), person),
            "a person's clicks seconds apart"
        );
        assert!(!b.is_burst(t0, (8, 1), scanner), "another message");
    }

    #[test]
    fn a_fetch_soon_after_sending_is_a_machines() {
        let e = |since| {
            Evidence {
            user_agent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
            since_sent: Some(since),
            too_soon_secs: 10,
            ..Evidence::default()
        }
        };
        assert_eq!(classify(&e(3), None).reason, Reason::TooSoon);
        assert_eq!(classify(&e(600), None).reason, Reason::Person);
    }

    #[test]
    fn a_fetch_repeated_by_the_same_client_within_the_window_is_a_repeat() {
        let r = Repeats::new(std::time::Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = (
            "203.0.113.1".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
        );
        let t0 = std::time::Instant::now();
        assert!(!r.is_repeat("tok", a, t0));
        assert!(r.is_repeat("tok", a, t0 + std::time::Duration::from_secs(1)));
        assert!(!r.is_repeat("tok", b, t0), "another client");
        assert!(!r.is_repeat("other", a, t0), "another link");
        assert!(
            !r.is_repeat("tok", a, t0 + std::time::Duration::from_secs(120)),
            "after the window"
        );
    }

    #[test]
    fn the_method_and_prefetch_headers_outrank_the_user_agent() {
        let person = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)";
        let head = Evidence {
            head: true,
            user_agent: person,
            ..Evidence::default()
        };
        assert_eq!(classify(&head, None).reason, Reason::Head);
        let prefetch = Evidence {
            prefetch: true,
            user_agent: person,
            ..Evidence::default()
        };
        assert_eq!(classify(&prefetch, None).reason, Reason::Prefetch);
        let get = Evidence {
            user_agent: person,
            ..Evidence::default()
        };
        assert_eq!(
            classify(&get, None),
            Verdict {
                machine: false,
                reason: Reason::Person
            }
        );
    }

    #[test]
    fn the_bare_mozilla_is_apple_mail_privacy_only_from_apples_relay() {
        let ranges = relay::Ranges::parse(
            "172.224.226.0/27,GB,GB-EN,London,\n2a02:26f7:b3c0:4000::/64,DE,DE-BE,Berlin,\n",
        )
        .unwrap();
        let from = |ip: &str| Evidence {
            user_agent: "Mozilla/5.0",
            client: Some(ip.parse().unwrap()),
            ..Evidence::default()
        };
        assert_eq!(
            classify(&from("172.224.226.9"), Some(&ranges)).reason,
            Reason::AppleMailPrivacy
        );
        assert_eq!(
            classify(&from("2a02:26f7:b3c0:4000::17"), Some(&ranges)).reason,
            Reason::AppleMailPrivacy
        );
        assert_eq!(
            classify(&from("203.0.113.9"), Some(&ranges)).reason,
            Reason::Person
        );
        assert_eq!(
            classify(&from("172.224.226.9"), None).reason,
            Reason::Person,
            "no list: no verdict on the address"
        );
    }
}
