//! One IBM Cloud rate budget for the whole process. IBM's limits are per caller and per account,
//! shared with everything else the account runs, so the operator spaces all of its requests to at
//! most `max_rps`, and after a 429 it sends nothing more with that API key until the time IBM
//! named, however long that is.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tracing::debug;

use crate::lock::lock;

/// Process-wide request spacing plus per-API-key pauses after a 429.
pub struct Budget {
    /// Time between two requests at the full rate.
    interval: Duration,
    /// How far ahead of now slots may be handed out without waiting (a burst of about one
    /// second's worth of requests).
    burst: Duration,
    /// The earliest time the next request may go.
    next_slot: Mutex<Instant>,
    /// API key digest -> the time IBM Cloud asked that caller to wait until.
    paused: Mutex<HashMap<String, SystemTime>>,
    delayed: AtomicU64,
    paused_millis: AtomicU64,
}

/// Counters of what the budget did, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetStats {
    /// Requests that had to wait for a slot of the process-wide budget.
    pub delayed_requests: u64,
    /// Milliseconds requests spent waiting on a pause a 429 asked for.
    pub paused_millis: u64,
}

impl Budget {
    /// `max_rps` requests per second at most (at least one).
    pub fn new(max_rps: u32) -> Self {
        let interval = Duration::from_secs(1) / max_rps.max(1);
        let burst = Duration::from_secs(1).saturating_sub(interval);
        let now = Instant::now();
        Self {
            interval,
            burst,
            // A full burst is available from the start.
            next_slot: Mutex::new(now.checked_sub(burst).unwrap_or(now)),
            paused: Mutex::default(),
            delayed: AtomicU64::new(0),
            paused_millis: AtomicU64::new(0),
        }
    }

    /// Waits for this request's slot in the process-wide budget.
    pub async fn slot(&self) {
        let wait = {
            let mut next = lock(&self.next_slot);
            let now = Instant::now();
            let slot = (*next).max(now.checked_sub(self.burst).unwrap_or(now));
            *next = slot + self.interval;
            slot.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            debug!(
                wait_ms = wait.as_millis() as u64,
                "waiting for a slot of the IBM Cloud request budget"
            );
            self.delayed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    /// Remembers that IBM Cloud asked the caller with this API key to wait until `until`.
    pub fn pause(&self, key_digest: &str, until: SystemTime) {
        let mut paused = lock(&self.paused);
        let entry = paused.entry(key_digest.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// The time this API key is paused until, if that is still ahead.
    pub fn paused_until(&self, key_digest: &str, now: SystemTime) -> Option<SystemTime> {
        let mut paused = lock(&self.paused);
        match paused.get(key_digest) {
            Some(until) if *until > now => Some(*until),
            Some(_) => {
                paused.remove(key_digest);
                None
            }
            None => None,
        }
    }

    /// Waits out a pause (called only for short ones), counting the time.
    pub async fn wait_out(&self, pause: Duration) {
        tokio::time::sleep(pause).await;
        let millis = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        self.paused_millis.fetch_add(millis, Ordering::Relaxed);
    }

    pub fn stats(&self) -> BudgetStats {
        BudgetStats {
            delayed_requests: self.delayed.load(Ordering::Relaxed),
            paused_millis: self.paused_millis.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real time, so only the lower bound is asserted: a budget never lets calls go faster than
    /// its rate (how much slower a loaded machine makes them is not this test's business).
    #[tokio::test]
    async fn requests_are_spaced_to_the_budget_after_a_burst() {
        let budget = Budget::new(100);
        let start = Instant::now();
        for _ in 0..130 {
            budget.slot().await;
        }
        // 100 go at once (one second's worth), the next 30 at 10 ms each.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(290), "{elapsed:?}");
        assert_eq!(budget.stats().delayed_requests, 30);
    }

    #[test]
    fn a_pause_holds_until_its_time_and_only_for_its_key() {
        let budget = Budget::new(10);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        budget.pause("a", now + Duration::from_secs(600));
        budget.pause("a", now + Duration::from_secs(60)); // an earlier time never shortens it
        assert_eq!(
            budget.paused_until("a", now),
            Some(now + Duration::from_secs(600))
        );
        assert_eq!(budget.paused_until("b", now), None);
        assert_eq!(
            budget.paused_until("a", now + Duration::from_secs(601)),
            None
        );
    }
}
