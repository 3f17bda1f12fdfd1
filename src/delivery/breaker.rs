//! Whether the endpoint may be posted to now, for the whole endpoint (every event's own
//! schedule applies on top):
//!
//! - **backpressure**: a 429 or 503 with `Retry-After` pauses every POST for that long
//!   (bounded by `[pega.retry] max_delay_secs`);
//! - **circuit breaker**: when most requests of the last `window_secs` failed (no answer, a
//!   timeout, 408 or 5xx; at least `min_requests` of them), or most of the last
//!   `min_requests` requests did (so a long run of successes still in the window does not
//!   hide an endpoint that just went down), it opens: no POST but one probe
//!   every `probe_interval_secs`, one at a time, until a probe is answered; then it closes and
//!   concurrency starts again from the minimum;
//! - **failures in a row**: while closed, each failure since the last success halves how
//!   many POSTs may be under way ([`Gate::places`]), down to one. The POSTs already under
//!   way when an endpoint goes down all come back failing, so no new one starts while they
//!   do (a fast endpoint has dozens under way); one success brings the limit back.

use crate::config::pega::BreakerSettings;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The breaker's state, as `/metrics` exports it (`pegabridge_delivery_breaker_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    /// A probe is in flight.
    HalfOpen = 2,
}

/// What a POST about to start may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// Go, as the one probe of an open breaker.
    Probe,
    /// Not before this instant.
    NotBefore(Instant),
}

/// A change of state worth telling (logged once, exported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

#[derive(Debug)]
struct State {
    breaker: BreakerState,
    paused_until: Option<Instant>,
    /// Recent requests: when, and whether they failed.
    recent: VecDeque<(Instant, bool)>,
    /// How many of `recent` failed (kept as they come and go: no scan).
    recent_failures: usize,
    /// The last `min_requests` outcomes within the window, and how many of them failed.
    last: VecDeque<(Instant, bool)>,
    last_failures: usize,
    /// Failures since the last success (while closed).
    in_a_row: u32,
    next_probe: Instant,
}

impl State {
    fn forget(&mut self) {
        self.recent.clear();
        self.recent_failures = 0;
        self.last.clear();
        self.last_failures = 0;
        self.in_a_row = 0;
    }
}

/// The endpoint's gate.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    settings: BreakerSettings,
    max_pause: Duration,
}

impl Gate {
    pub fn new(settings: BreakerSettings, max_pause: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                breaker: BreakerState::Closed,
                paused_until: None,
                recent: VecDeque::new(),
                recent_failures: 0,
                last: VecDeque::new(),
                last_failures: 0,
                in_a_row: 0,
                next_probe: Instant::now(),
            }),
            settings,
            max_pause,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        self.lock().breaker
    }

    /// When the next POST may start, if not now (a pause, or an open breaker's next probe).
    pub fn not_before(&self, now: Instant) -> Option<Instant> {
        let s = self.lock();
        let pause = s.paused_until.filter(|t| *t > now);
        let probe = match s.breaker {
            BreakerState::Closed => None,
            BreakerState::Open => Some(s.next_probe).filter(|t| *t > now),
            BreakerState::HalfOpen => Some(now + self.probe_interval()),
        };
        pause.max(probe)
    }

    /// How many POSTs may be under way under a concurrency limit of `limit`: the limit
    /// halved for each failure in a row (at least one), one while the breaker is open.
    pub fn places(&self, limit: usize) -> usize {
        let s = self.lock();
        if s.breaker != BreakerState::Closed {
            return 1;
        }
        limit.checked_shr(s.in_a_row).unwrap_or(0).max(1)
    }

    fn probe_interval(&self) -> Duration {
        Duration::from_secs(self.settings.probe_interval_secs.max(1))
    }

    /// Whether a POST may start at `now`.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut s = self.lock();
        if let Some(until) = s.paused_until.filter(|t| *t > now) {
            return Admit::NotBefore(until);
        }
        match s.breaker {
            BreakerState::Closed => Admit::Go,
            BreakerState::Open if now >= s.next_probe => {
                s.breaker = BreakerState::HalfOpen;
                Admit::Probe
            }
            BreakerState::Open => Admit::NotBefore(s.next_probe),
            BreakerState::HalfOpen => Admit::NotBefore(now + self.probe_interval()),
        }
    }

    /// The probe admitted was not posted after all (its events lapsed): probe again next.
    pub fn cancel_probe(&self) {
        let mut s = self.lock();
        if s.breaker == BreakerState::HalfOpen {
            s.breaker = BreakerState::Open;
        }
    }

    /// Records a POST's outcome: `failed` (no answer, a timeout, 408 or 5xx), whether it was
    /// the probe, and the pause its answer asks for (a 429 or 503 with `Retry-After`).
    pub fn record(
        &self,
        now: Instant,
        failed: bool,
        probe: bool,
        pause: Option<Duration>,
    ) -> Option<Transition> {
        let mut s = self.lock();
        if let Some(pause) = pause {
            let until = now + pause.min(self.max_pause);
            s.paused_until = Some(s.paused_until.map_or(until, |t| t.max(until)));
        }
        if probe {
            if failed {
                s.breaker = BreakerState::Open;
                s.next_probe = now + self.probe_interval();
                return None;
            }
            s.breaker = BreakerState::Closed;
            s.forget();
            return Some(Transition::Closed);
        }
        if s.breaker != BreakerState::Closed {
            // A POST admitted before the breaker opened: its outcome changes nothing.
            return None;
        }
        let window = Duration::from_secs(self.settings.window_secs.max(1));
        let min = self.settings.min_requests.max(1);
        s.recent.push_back((now, failed));
        s.recent_failures += usize::from(failed);
        // Out of the window, or beyond the bound (at most this many outcomes are kept).
        while let Some(&(at, f)) = s.recent.front() {
            if now.duration_since(at) <= window && s.recent.len() <= 10_000 {
                break;
            }
            s.recent.pop_front();
            s.recent_failures -= usize::from(f);
        }
        s.in_a_row = if failed {
            s.in_a_row.saturating_add(1)
        } else {
            0
        };
        s.last.push_back((now, failed));
        s.last_failures += usize::from(failed);
        while let Some(&(at, f)) = s.last.front() {
            if s.last.len() <= min && now.duration_since(at) <= window {
                break;
            }
            s.last.pop_front();
            s.last_failures -= usize::from(f);
        }
        let ratio = self.settings.failure_ratio;
        let total = s.recent.len();
        let window_failing = total >= min && s.recent_failures as f64 > ratio * total as f64;
        let lately_failing = s.last.len() >= min && s.last_failures as f64 > ratio * min as f64;
        if failed && (window_failing || lately_failing) {
            s.breaker = BreakerState::Open;
            s.next_probe = now + self.probe_interval();
            s.forget();
            return Some(Transition::Opened);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate::new(
            BreakerSettings {
                window_secs: 30,
                min_requests: 4,
                failure_ratio: 0.5,
                probe_interval_secs: 5,
            },
            Duration::from_secs(60),
        )
    }

    #[test]
    fn most_requests_failing_opens_the_breaker_then_one_probe_per_interval_closes_it() {
        let g = gate();
        let t = Instant::now();
        assert_eq!(g.record(t, true, false, None), None);
        assert_eq!(g.record(t, false, false, None), None);
        assert_eq!(g.record(t, true, false, None), None);
        assert_eq!(g.record(t, true, false, None), Some(Transition::Opened));
        assert_eq!(g.admit(t), Admit::NotBefore(t + Duration::from_secs(5)));
        let later = t + Duration::from_secs(5);
        assert_eq!(g.admit(later), Admit::Probe);
        assert!(
            matches!(g.admit(later), Admit::NotBefore(_)),
            "one probe at a time"
        );
        assert_eq!(g.record(later, true, true, None), None);
        assert_eq!(g.state(), BreakerState::Open);
        assert_eq!(
            g.admit(later + Duration::from_secs(1)),
            Admit::NotBefore(later + Duration::from_secs(5))
        );
        let again = later + Duration::from_secs(5);
        assert_eq!(g.admit(again), Admit::Probe);
        assert_eq!(g.record(again, false, true, None), Some(Transition::Closed));
        assert_eq!(g.admit(again), Admit::Go);
    }

    #[test]
    fn failures_outside_the_window_or_too_few_requests_keep_it_closed() {
        let g = gate();
        let t = Instant::now();
        for _ in 0..3 {
            g.record(t, true, false, None);
        }
        let later = t + Duration::from_secs(31);
        assert_eq!(g.record(later, false, false, None), None);
        assert_eq!(g.record(later, true, false, None), None);
        assert_eq!(g.state(), BreakerState::Closed);
    }

    #[test]
    fn retry_after_pauses_every_post_for_at_most_the_longest_retry_delay() {
        let g = gate();
        let t = Instant::now();
        g.record(t, false, false, Some(Duration::from_secs(2)));
        assert_eq!(g.admit(t), Admit::NotBefore(t + Duration::from_secs(2)));
        assert_eq!(g.admit(t + Duration::from_secs(2)), Admit::Go);
        g.record(t, false, false, Some(Duration::from_secs(3600)));
        assert_eq!(g.not_before(t), Some(t + Duration::from_secs(60)));
    }

    #[test]
    fn an_endpoint_going_down_after_a_long_run_of_successes_opens_it_within_a_few_requests() {
        let g = gate();
        let t = Instant::now();
        for _ in 0..5_000 {
            assert_eq!(g.record(t, false, false, None), None);
        }
        // The window holds 5,000 successes; the last four requests judge.
        assert_eq!(g.record(t, true, false, None), None);
        assert_eq!(g.record(t, true, false, None), None);
        assert_eq!(g.record(t, true, false, None), Some(Transition::Opened));
    }

    #[test]
    fn each_failure_in_a_row_halves_the_places_and_a_success_restores_them() {
        let g = gate();
        let t = Instant::now();
        for _ in 0..100 {
            g.record(t, false, false, None);
        }
        assert_eq!(g.places(40), 40);
        g.record(t, true, false, None);
        assert_eq!(g.places(40), 20);
        g.record(t, true, false, None);
        assert_eq!(g.places(40), 10);
        g.record(t, false, false, None);
        assert_eq!(g.places(40), 40, "a success in between");
        for _ in 0..4 {
            g.record(t, false, false, None);
        }
        // Half failing, never two in a row: the breaker stays closed, the places halve.
        for _ in 0..70 {
            g.record(t, true, false, None);
            g.record(t, false, false, None);
        }
        g.record(t, true, false, None);
        assert_eq!(g.state(), BreakerState::Closed);
        assert_eq!(g.places(40), 20);
        // Open: the probe alone.
        let g = gate();
        for _ in 0..4 {
            g.record(t, true, false, None);
        }
        assert_eq!(g.state(), BreakerState::Open);
        assert_eq!(g.places(40), 1);
    }
}
