//! One exponential back-off for every place that retries: a failed reconcile, a failed deletion
//! of a retiring key, and an IBM Cloud call. Pure arithmetic that saturates: no attempt count or
//! base can overflow it.

use std::time::Duration;

/// `base * 2^(attempt - 1)`, capped at `cap`; attempt 0 waits nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The wait after `attempt` failures (1 = the first failure waits `base`).
    pub fn after(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.base.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_and_caps() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(backoff.after(0), Duration::ZERO);
        assert_eq!(backoff.after(1), Duration::from_secs(1));
        assert_eq!(backoff.after(4), Duration::from_secs(8));
        assert_eq!(backoff.after(40), Duration::from_secs(300));
        assert_eq!(backoff.after(u32::MAX), Duration::from_secs(300));
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.after(u32::MAX), Duration::MAX);
    }
}
