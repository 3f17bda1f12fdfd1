//! How many POSTs may be in flight: a fixed number (`[pega] concurrency = N`), or, by
//! default, a limit that adapts to the endpoint (the idea of Vector's Adaptive Request
//! Concurrency). Once per observation window (about one round trip), the limit
//!
//! - goes down by a tenth (never below `min_concurrency`) when the window saw backpressure
//!   (429, 503, 408, a timeout or a refused connection), round trips well above their
//!   moving average (more than the mean plus [`RTT_DEVIATIONS`] deviations, and
//!   [`RTT_RISE`] times the mean), or round trips showing a queue at the endpoint (more
//!   than [`QUEUE_RATIO`] times the unloaded round trip plus [`QUEUE_SLACK`]);
//! - goes up when the limit was in use and round trips stayed flat: doubling until the first
//!   decrease (so a fast endpoint is reached in a few round trips), by one after that;
//! - stays as it is otherwise (a limit not in use says nothing about the endpoint).
//!
//! The round-trip average is an exponentially weighted mean of each window's mean. The
//! unloaded round trip is the mean of the last window with at most [`LIGHT`] POSTs in
//! flight, or a loaded window's mean when that is lower: the round trip with nothing queued.
//! The moving average follows round trips that rise slowly as the limit grows, so it alone
//! let the limit grow to wherever the endpoint's queue stopped growing smoothly: on a fast
//! endpoint, tens of POSTs waiting in its queue for no more throughput, and all of them
//! failing at once when it goes down. Measured against the unloaded round trip (the idea of
//! TCP Vegas and of Netflix's gradient limiter), more in flight than the endpoint works on
//! at once shows as a longer round trip, and the limit stops there.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A window's round trips count as rising above this many deviations over the mean...
pub const RTT_DEVIATIONS: f64 = 2.5;
/// ...and this many times the mean (small jitter on a loopback endpoint is not a signal).
pub const RTT_RISE: f64 = 1.5;
/// A window's round trips show a queue at the endpoint above this many times the unloaded
/// round trip...
pub const QUEUE_RATIO: f64 = 2.0;
/// ...plus this (a millisecond of scheduling on either side is not a queue worth a smaller
/// limit: a loopback endpoint answers in a tenth of that).
pub const QUEUE_SLACK: Duration = Duration::from_millis(1);
/// A window with at most this many POSTs in flight measures the unloaded round trip.
pub const LIGHT: usize = 2;
/// The weight of a new window in the moving average.
const ALPHA: f64 = 0.3;
/// The decrease factor.
const DECREASE: f64 = 0.9;

/// Why the limit last went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decrease {
    TooManyRequests,
    Unavailable,
    RequestTimeout,
    /// No answer within `timeout_secs`.
    Timeout,
    /// No answer: the TLS handshake or session failed.
    Tls,
    /// No answer: the endpoint's name did not resolve.
    Dns,
    /// No answer: the connection was refused or could not be made.
    Refused,
    /// No answer, for another reason (a reset connection).
    Failed,
    RoundTripRise,
    /// Round trips well above the unloaded round trip: POSTs wait in the endpoint's queue.
    Queue,
    /// The endpoint came back after the circuit breaker opened: start again from the minimum.
    Recovered,
}

impl Decrease {
    pub const ALL: [Decrease; 11] = [
        Decrease::TooManyRequests,
        Decrease::Unavailable,
        Decrease::RequestTimeout,
        Decrease::Timeout,
        Decrease::Tls,
        Decrease::Dns,
        Decrease::Refused,
        Decrease::Failed,
        Decrease::RoundTripRise,
        Decrease::Queue,
        Decrease::Recovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decrease::TooManyRequests => "429",
            Decrease::Unavailable => "503",
            Decrease::RequestTimeout => "408",
            Decrease::Timeout => "timeout",
            Decrease::Tls => "tls",
            Decrease::Dns => "dns",
            Decrease::Refused => "refused",
            Decrease::Failed => "failed",
            Decrease::RoundTripRise => "rtt",
            Decrease::Queue => "queue",
            Decrease::Recovered => "recovered",
        }
    }
}

/// What one POST tells the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// An answer that says nothing against more concurrency (2xx, or a 4xx about the events).
    Fine,
    /// The endpoint pushes back.
    Backpressure(Decrease),
}

impl Signal {
    /// The signal of an HTTP answer (`None`: no answer at all).
    pub fn of(code: Option<u16>) -> Signal {
        match code {
            Some(429) => Signal::Backpressure(Decrease::TooManyRequests),
            Some(503) => Signal::Backpressure(Decrease::Unavailable),
            Some(408) => Signal::Backpressure(Decrease::RequestTimeout),
            Some(_) => Signal::Fine,
            None => Signal::Backpressure(Decrease::Timeout),
        }
    }

    /// The signal of a POST without an answer, by what failed.
    pub fn of_failure(failure: &super::client::ClientError) -> Signal {
        use super::client::ClientError;
        Signal::Backpressure(match failure {
            ClientError::Timeout(_) => Decrease::Timeout,
            ClientError::Tls(_) => Decrease::Tls,
            ClientError::Dns(_) => Decrease::Dns,
            ClientError::Connect(_) => Decrease::Refused,
            ClientError::Token(_) | ClientError::Other(_) => Decrease::Failed,
        })
    }
}

/// What `/metrics` shows of the limiter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub limit: usize,
    pub in_flight: usize,
    /// The moving average of round trips, once one is known.
    pub rtt: Option<Duration>,
    pub last_decrease: Option<Decrease>,
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_flight: usize,
    /// Adaptive: the bounds; fixed: both the limit.
    min: usize,
    max: usize,
    adaptive: bool,
    /// Doubling until the first decrease.
    slow_start: bool,
    window_start: Instant,
    window_sum: f64,
    window_count: u32,
    window_backpressure: Option<Decrease>,
    window_full: bool,
    /// The most POSTs in flight at once during the window.
    window_peak: usize,
    mean: Option<f64>,
    /// The unloaded round trip, once one is known.
    unloaded: Option<f64>,
    variance: f64,
    last_decrease: Option<Decrease>,
}

/// The limit on POSTs in flight (cheap to clone).
#[derive(Debug, Clone)]
pub struct Limiter {
    state: Arc<Mutex<State>>,
    freed: Arc<Notify>,
}

/// A place for one POST; report what happened with [`Permit::done`] (dropping it without
/// reporting frees the place and tells nothing).
#[derive(Debug)]
pub struct Permit {
    limiter: Limiter,
    started: Instant,
    done: bool,
}

impl Limiter {
    /// A fixed limit of `n`.
    pub fn fixed(n: usize) -> Self {
        Self::new(n.max(1), n.max(1), false)
    }

    /// An adaptive limit between `min` and `max`, starting at `min`.
    pub fn adaptive(min: usize, max: usize) -> Self {
        Self::new(min.max(1), max.max(min.max(1)), true)
    }

    fn new(min: usize, max: usize, adaptive: bool) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                limit: if adaptive { min } else { max },
                in_flight: 0,
                min,
                max,
                adaptive,
                slow_start: true,
                window_start: Instant::now(),
                window_sum: 0.0,
                window_count: 0,
                window_backpressure: None,
                window_full: false,
                window_peak: 0,
                mean: None,
                unloaded: None,
                variance: 0.0,
                last_decrease: None,
            })),
            freed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        Snapshot {
            limit: s.limit,
            in_flight: s.in_flight,
            rtt: s.mean.map(Duration::from_secs_f64),
            last_decrease: s.last_decrease,
        }
    }

    /// Waits for a place under the limit.
    pub async fn acquire(&self) -> Permit {
        loop {
            let freed = self.freed.notified();
            {
                let mut s = self.lock();
                if s.in_flight < s.limit {
                    s.in_flight += 1;
                    s.window_peak = s.window_peak.max(s.in_flight);
                    if s.in_flight >= s.limit {
                        s.window_full = true;
                    }
                    return Permit {
                        limiter: self.clone(),
                        started: Instant::now(),
                        done: false,
                    };
                }
                s.window_full = true;
            }
            freed.await;
        }
    }

    /// Starts again from the minimum with the moving average forgotten (the endpoint came
    /// back after an outage: no thundering herd).
    pub fn restart(&self) {
        let mut s = self.lock();
        if s.adaptive {
            s.limit = s.min;
            s.slow_start = false;
            s.mean = None;
            s.unloaded = None;
            s.variance = 0.0;
            s.last_decrease = Some(Decrease::Recovered);
            s.window_start = Instant::now();
            s.window_sum = 0.0;
            s.window_count = 0;
            s.window_backpressure = None;
            s.window_full = false;
            s.window_peak = s.in_flight;
        }
    }

    fn finish(&self, rtt: Option<Duration>, signal: Signal) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if let Some(rtt) = rtt {
            s.observe(rtt, signal, Instant::now());
        }
        drop(s);
        self.freed.notify_waiters();
    }
}

impl State {
    fn observe(&mut self, rtt: Duration, signal: Signal, now: Instant) {
        if !self.adaptive {
            return;
        }
        match signal {
            Signal::Backpressure(why) => {
                // A timeout's round trip is the timeout, not the endpoint's speed.
                self.window_backpressure.get_or_insert(why);
            }
            Signal::Fine => {
                self.window_sum += rtt.as_secs_f64();
                self.window_count += 1;
            }
        }
        let window = self
            .mean
            .map_or(rtt.as_secs_f64(), |m| m.max(rtt.as_secs_f64() / 4.0));
        if now.duration_since(self.window_start).as_secs_f64() < window {
            return;
        }
        self.end_window(now);
    }

    fn end_window(&mut self, now: Instant) {
        let current =
            (self.window_count > 0).then(|| self.window_sum / f64::from(self.window_count));
        let rising = match (current, self.mean) {
            (Some(c), Some(m)) => c > m + RTT_DEVIATIONS * self.variance.sqrt() && c > m * RTT_RISE,
            _ => false,
        };
        if let Some(c) = current {
            self.unloaded = Some(match self.unloaded {
                Some(u) if self.window_peak > LIGHT => u.min(c),
                _ => c,
            });
        }
        let queued = match (current, self.unloaded) {
            (Some(c), Some(u)) => c > u * QUEUE_RATIO + QUEUE_SLACK.as_secs_f64(),
            _ => false,
        };
        if let Some(why) = self.window_backpressure {
            self.decrease(why);
        } else if rising {
            self.decrease(Decrease::RoundTripRise);
        } else if queued {
            self.decrease(Decrease::Queue);
        } else if self.window_full && current.is_some() {
            let step = if self.slow_start { self.limit } else { 1 };
            self.limit = (self.limit + step).min(self.max);
        }
        if let Some(c) = current {
            match self.mean {
                None => self.mean = Some(c),
                Some(m) => {
                    let diff = c - m;
                    let mean = m + ALPHA * diff;
                    self.variance = (1.0 - ALPHA) * (self.variance + ALPHA * diff * diff);
                    self.mean = Some(mean);
                }
            }
        }
        self.window_start = now;
        self.window_sum = 0.0;
        self.window_count = 0;
        self.window_backpressure = None;
        self.window_full = self.in_flight >= self.limit;
        self.window_peak = self.in_flight;
    }

    fn decrease(&mut self, why: Decrease) {
        self.slow_start = false;
        self.limit = ((self.limit as f64 * DECREASE) as usize).max(self.min);
        self.last_decrease = Some(why);
    }
}

impl Permit {
    /// Reports the POST's outcome and frees its place.
    pub fn done(mut self, signal: Signal) {
        self.done = true;
        self.limiter.finish(Some(self.started.elapsed()), signal);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.limiter.finish(None, Signal::Fine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_without_an_answer_is_named_by_what_failed() {
        use crate::delivery::client::ClientError;
        for (failure, reason) in [
            (ClientError::Tls("TLS: UnknownIssuer".into()), "tls"),
            (ClientError::Dns("DNS: pega.example".into()), "dns"),
            (ClientError::Connect("connection refused".into()), "refused"),
            (
                ClientError::Timeout("timed out after 5 s".into()),
                "timeout",
            ),
            (ClientError::Other("connection reset".into()), "failed"),
        ] {
            let Signal::Backpressure(d) = Signal::of_failure(&failure) else {
                panic!("{failure}: backpressure")
            };
            assert_eq!(d.as_str(), reason, "{failure}");
        }
    }

    /// Feeds `limiter` one window: POSTs of `rtt` with `signal`, the limit in use, at most
    /// [`LIGHT`] in flight.
    fn window(l: &Limiter, at: &mut Instant, rtt: Duration, signal: Signal) {
        loaded(l, at, rtt, signal, LIGHT);
    }

    /// [`window`] with up to `peak` in flight.
    fn loaded(l: &Limiter, at: &mut Instant, rtt: Duration, signal: Signal, peak: usize) {
        let mut s = l.lock();
        s.window_full = true;
        s.window_peak = peak;
        *at += rtt.max(Duration::from_millis(1)) * 2;
        s.observe(rtt, signal, *at);
    }

    #[test]
    fn the_limit_doubles_while_round_trips_stay_flat_then_grows_by_one_after_a_decrease() {
        let l = Limiter::adaptive(1, 256);
        let mut at = Instant::now();
        let rtt = Duration::from_millis(50);
        let mut limits = Vec::new();
        for _ in 0..10 {
            window(&l, &mut at, rtt, Signal::Fine);
            limits.push(l.limit());
        }
        assert_eq!(limits, [2, 4, 8, 16, 32, 64, 128, 256, 256, 256]);
        window(&l, &mut at, rtt, Signal::of(Some(429)));
        assert_eq!(l.limit(), 230);
        assert_eq!(l.snapshot().last_decrease, Some(Decrease::TooManyRequests));
        window(&l, &mut at, rtt, Signal::Fine);
        assert_eq!(l.limit(), 231, "additive after the first decrease");
    }

    #[test]
    fn rising_round_trips_and_timeouts_bring_the_limit_down_to_no_less_than_the_minimum() {
        let l = Limiter::adaptive(4, 64);
        let mut at = Instant::now();
        for _ in 0..6 {
            window(&l, &mut at, Duration::from_millis(20), Signal::Fine);
        }
        assert_eq!(l.limit(), 64);
        window(&l, &mut at, Duration::from_millis(200), Signal::Fine);
        assert_eq!(l.snapshot().last_decrease, Some(Decrease::RoundTripRise));
        assert_eq!(l.limit(), 57);
        for _ in 0..40 {
            window(&l, &mut at, Duration::from_secs(1), Signal::of(None));
        }
        assert_eq!(l.limit(), 4);
        assert_eq!(l.snapshot().last_decrease, Some(Decrease::Timeout));
    }

    /// The round trip of an endpoint that works on `parallel` POSTs at once, `service` each,
    /// with `in_flight` sent: the rest wait in its queue.
    fn queued(service: Duration, parallel: usize, in_flight: usize) -> Duration {
        service * in_flight.div_ceil(parallel).max(1) as u32
    }

    /// Feeds `n` windows with the limit in use, each of the round trip `rtt` gives for that
    /// many in flight; the limit after each.
    fn drive(
        l: &Limiter,
        at: &mut Instant,
        n: usize,
        rtt: impl Fn(usize) -> Duration,
    ) -> Vec<usize> {
        (0..n)
            .map(|_| {
                let limit = l.limit();
                loaded(l, at, rtt(limit), Signal::Fine, limit);
                l.limit()
            })
            .collect()
    }

    #[test]
    fn the_limit_stops_where_posts_start_waiting_in_the_endpoints_queue() {
        let l = Limiter::adaptive(1, 256);
        let mut at = Instant::now();
        let service = Duration::from_micros(200);
        let limits = drive(&l, &mut at, 300, |n| queued(service, 4, n));
        // Unloaded 0.2 ms: a queue shows above 2 x 0.2 + 1 = 1.4 ms, beyond 28 in flight.
        let settled = &limits[100..];
        assert!(
            settled.iter().all(|l| (20..=32).contains(l)),
            "settled where the queue starts: {settled:?}"
        );
        assert!(limits.contains(&28), "{limits:?}");
        assert_eq!(l.snapshot().last_decrease, Some(Decrease::Queue));
        assert_eq!(
            l.snapshot().rtt.map(|r| r < Duration::from_micros(1_500)),
            Some(true)
        );
    }

    #[test]
    fn an_endpoint_that_got_slower_is_measured_again_when_few_posts_are_in_flight() {
        let l = Limiter::adaptive(1, 256);
        let mut at = Instant::now();
        drive(&l, &mut at, 100, |n| {
            queued(Duration::from_micros(200), 4, n)
        });
        // Now each POST takes 20 ms, still four at once. Against the unloaded 0.2 ms every
        // window shows a queue, down to so few in flight that the round trip is measured again.
        let limits = drive(&l, &mut at, 400, |n| {
            queued(Duration::from_millis(20), 4, n)
        });
        // Measured again at 20 ms: a queue shows above 2 x 20 + 1 = 41 ms, beyond 8.
        let settled = &limits[300..];
        assert!(
            settled.iter().all(|l| (7..=9).contains(l)),
            "measured again and back to where the queue starts: {settled:?}"
        );
        assert!(settled.contains(&8), "{settled:?}");
    }

    #[test]
    fn a_slow_endpoint_without_a_queue_gets_the_maximum() {
        let l = Limiter::adaptive(1, 256);
        let mut at = Instant::now();
        // 50 ms, and a little more with more in flight (the client's own work).
        let slow = |n: usize| Duration::from_millis(50) + Duration::from_micros(10) * n as u32;
        drive(&l, &mut at, 40, slow);
        assert_eq!(l.limit(), 256);
    }

    #[test]
    fn an_unused_limit_does_not_grow_and_a_fixed_one_never_moves() {
        let l = Limiter::adaptive(1, 256);
        let mut at = Instant::now();
        for _ in 0..5 {
            let mut s = l.lock();
            at += Duration::from_millis(100);
            s.observe(Duration::from_millis(50), Signal::Fine, at);
        }
        assert_eq!(l.limit(), 1);
        let fixed = Limiter::fixed(4);
        window(
            &fixed,
            &mut at,
            Duration::from_millis(50),
            Signal::of(Some(503)),
        );
        assert_eq!(fixed.limit(), 4);
    }

    #[tokio::test]
    async fn no_more_than_the_limit_are_in_flight() {
        let l = Limiter::fixed(2);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let third = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        assert_eq!(l.snapshot().in_flight, 2);
        a.done(Signal::Fine);
        let _c = third.await.unwrap();
        assert_eq!(l.snapshot().in_flight, 2);
    }
}
