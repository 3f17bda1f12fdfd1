//! What an attempt's outcome means, and when to try again: pure functions.

use crate::config::pega::RetrySettings;
use std::time::Duration;

/// The result of one POST, as far as the schedule cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// An HTTP answer, with its `Retry-After` in seconds if any.
    Status { code: u16, retry_after: Option<u64> },
    /// No answer: connection refused, reset, or timed out.
    Failed,
    /// Acknowledged by a sink without HTTP (a Kafka broker's `acks = all`).
    Accepted,
    /// Refused for good by a sink without HTTP (a record the broker will never take).
    Refused,
}

/// What to do with the events of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again after this long.
    Retry(Duration),
    /// Give up: a dead letter.
    Dead,
}

/// Delivered on 2xx; connection errors, timeouts, 408, 429 and 5xx are retried (honouring
/// `Retry-After` between the first delay and the longest one); any other answer, or the
/// schedule running out, makes a dead letter. `attempt` counts from 1; `unit` is a random
/// number in [0, 1) for the jitter.
pub fn verdict(response: &Response, attempt: u32, retry: &RetrySettings, unit: f64) -> Verdict {
    let (retryable, retry_after) = match response {
        Response::Status { code, .. } if (200..300).contains(code) => return Verdict::Delivered,
        Response::Status { code, retry_after } => {
            (*code == 408 || *code == 429 || *code >= 500, *retry_after)
        }
        Response::Failed => (true, None),
        Response::Accepted => return Verdict::Delivered,
        Response::Refused => (false, None),
    };
    if !retryable || attempt >= retry.max_attempts {
        return Verdict::Dead;
    }
    let delay = match retry_after {
        // Never `clamp`: it panics when the bounds are crossed (settings are validated on
        // load, but a worker must not die of them).
        Some(secs) => Duration::from_secs(secs)
            .min(max_delay(retry))
            .max(Duration::from_millis(retry.base_ms).min(max_delay(retry))),
        None => backoff(attempt, retry, unit),
    };
    Verdict::Retry(delay)
}

/// The delay after attempt `attempt` (from 1): base x 2^(attempt-1), capped, +/- jitter.
pub fn backoff(attempt: u32, retry: &RetrySettings, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(40);
    let raw = Duration::from_millis(retry.base_ms).saturating_mul(1u32 << exp.min(31));
    let capped = raw.min(max_delay(retry));
    let factor = 1.0 + retry.jitter.clamp(0.0, 1.0) * (2.0 * unit - 1.0);
    capped.mul_f64(factor.max(0.0))
}

fn max_delay(retry: &RetrySettings) -> Duration {
    Duration::from_secs(retry.max_delay_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossed_bounds_do_not_panic() {
        let r = RetrySettings {
            base_ms: 10_000,
            max_delay_secs: 1,
            ..RetrySettings::default()
        };
        let after = Response::Status {
            code: 429,
            retry_after: Some(5),
        };
        assert_eq!(
            verdict(&after, 1, &r, 0.5),
            Verdict::Retry(Duration::from_secs(1))
        );
    }

    fn retry() -> RetrySettings {
        RetrySettings::default()
    }

    fn status(code: u16) -> Response {
        Response::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn success_is_delivered_and_client_errors_are_dead() {
        assert_eq!(verdict(&status(200), 1, &retry(), 0.5), Verdict::Delivered);
        assert_eq!(verdict(&status(204), 1, &retry(), 0.5), Verdict::Delivered);
        for code in [400, 401, 403, 404, 422] {
            assert_eq!(
                verdict(&status(code), 1, &retry(), 0.5),
                Verdict::Dead,
                "{code}"
            );
        }
    }

    #[test]
    fn outages_and_throttling_are_retried() {
        for r in [
            status(408),
            status(429),
            status(500),
            status(503),
            Response::Failed,
        ] {
            assert!(
                matches!(verdict(&r, 1, &retry(), 0.5), Verdict::Retry(_)),
                "{r:?}"
            );
        }
    }

    #[test]
    fn the_delay_doubles_up_to_the_cap_with_bounded_jitter() {
        let r = retry();
        assert_eq!(backoff(1, &r, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(4, &r, 0.5), Duration::from_secs(8));
        assert_eq!(backoff(30, &r, 0.5), Duration::from_secs(3600));
        assert_eq!(backoff(1, &r, 0.0), Duration::from_millis(800));
        assert!(backoff(1, &r, 0.999) < Duration::from_millis(1201));
    }

    #[test]
    fn the_default_schedule_reaches_past_a_day() {
        let r = retry();
        let total: Duration = (1..r.max_attempts).map(|a| backoff(a, &r, 0.0)).sum();
        assert!(total > Duration::from_secs(24 * 3600), "{total:?}");
        assert_eq!(
            verdict(&Response::Failed, r.max_attempts, &r, 0.5),
            Verdict::Dead
        );
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let r = retry();
        let after = |s| Response::Status {
            code: 503,
            retry_after: Some(s),
        };
        assert_eq!(
            verdict(&after(30), 1, &r, 0.5),
            Verdict::Retry(Duration::from_secs(30))
        );
        assert_eq!(
            verdict(&after(0), 1, &r, 0.5),
            Verdict::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            verdict(&after(86_400), 1, &r, 0.5),
            Verdict::Retry(Duration::from_secs(3600))
        );
    }
}
