//! Back-off between retries: exponential with jitter, or the server's own hint (`Retry-After`,
//! `X-RateLimit-Reset`), always capped (IBM documents `X-RateLimit-Reset` as epoch seconds).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

use crate::backoff::Backoff;

/// Delay before retry number `attempt` (0 = first retry): `initial * 2^attempt`, capped at `max`,
/// with "equal jitter" (half fixed, half random) so that concurrent clients spread out without a
/// retry ever becoming immediate.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let capped = Backoff::new(initial, max).after(attempt.saturating_add(1));
    let half = capped / 2;
    let jitter_nanos = match half.as_nanos() as u64 {
        0 => 0,
        n => next_random() % (n + 1),
    };
    half + Duration::from_nanos(jitter_nanos)
}

/// The longest wait a server hint is taken for: IBM's limits reset within the minute, so a longer
/// hint is a broken header, and a bound keeps every time computed from it from overflowing.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(86_400);

/// The server's requested wait, if any: `Retry-After` (delta seconds or HTTP date), else
/// `X-RateLimit-Reset` (Unix epoch seconds) on a 429. Every RC response carries the rate-limit
/// headers, so `X-RateLimit-Reset` alone only counts when the request was actually limited.
pub fn server_hint(status: u16, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok());
    if let Some(delay) = retry_after.and_then(|v| parse_retry_after(v, now)) {
        return Some(delay);
    }
    if status == 429 {
        return headers
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_epoch_reset(v, now));
    }
    None
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>`; a date in the past means "now". At
/// most [`MAX_SERVER_WAIT`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds.min(MAX_SERVER_WAIT.as_secs()))
    } else if let Ok(seconds) = value.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        Duration::from_secs_f64(seconds.min(MAX_SERVER_WAIT.as_secs_f64()))
    } else {
        let date = httpdate::parse_http_date(value).ok()?;
        date.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_SERVER_WAIT))
}

/// `X-RateLimit-Reset: <epoch seconds>` as a delay from `now`, at most [`MAX_SERVER_WAIT`].
pub fn parse_epoch_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let epoch: u64 = value.trim().parse().ok()?;
    let Some(reset) = UNIX_EPOCH.checked_add(Duration::from_secs(epoch)) else {
        return Some(MAX_SERVER_WAIT);
    };
    Some(
        reset
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_SERVER_WAIT),
    )
}

/// A small xorshift generator seeded from the clock and a counter: good enough for jitter, no
/// `rand` dependency.
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ nanos;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 0..10 {
            let d = backoff(attempt, initial, max);
            let full = (initial * 2u32.pow(attempt)).min(max);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        assert!(backoff(u32::MAX, initial, max) <= max);
        assert_eq!(backoff(3, Duration::ZERO, max), Duration::ZERO);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn rate_limit_reset_only_counts_on_429() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers.insert("X-RateLimit-Reset", "1700000005".parse().unwrap());
        assert_eq!(
            server_hint(429, &headers, now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(server_hint(503, &headers, now), None);
        headers.insert("Retry-After", "2".parse().unwrap());
        assert_eq!(
            server_hint(429, &headers, now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            server_hint(503, &headers, now),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn hints_that_would_overflow_time_are_bounded() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for value in [
            "18446744073709551615",
            "99999999999999999999",
            "1e308",
            "inf",
        ] {
            let wait = parse_retry_after(value, now);
            assert!(
                wait.is_none_or(|w| w <= MAX_SERVER_WAIT),
                "{value}: {wait:?}"
            );
        }
        assert_eq!(
            parse_epoch_reset("18446744073709551615", now),
            Some(MAX_SERVER_WAIT)
        );
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "18446744073709551615".parse().unwrap());
        let hint = server_hint(429, &headers, now).unwrap();
        assert!(now.checked_add(hint).is_some());
    }
}
