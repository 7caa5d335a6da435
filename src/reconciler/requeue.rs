//! When a request is looked at again: the back-off after a failure, the jitter that spreads
//! refreshes so that requests created together do not call IBM Cloud in lock-step, and the pause
//! of the watches after they fail to reach the API server.

use std::{
    hash::{Hash, Hasher},
    time::{Duration, SystemTime},
};

use kube::runtime::reflector::ObjectRef;

use crate::{backoff::Backoff, crd::IngestionKeyRequest};

/// Transient failures (IBM Cloud or the API server unavailable) retry soon.
pub(super) const TRANSIENT: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// Failures a person must fix retry late (a change to the request or its API key Secret
/// triggers a reconcile anyway).
pub(super) const PERMANENT: Backoff =
    Backoff::new(Duration::from_secs(300), Duration::from_secs(3600));

/// Watches that cannot reach the API server pause from 250 ms, doubling, to at most 1 s; the
/// first answer resets the pause. Short, so that a watch resumes (and relists after `410 Gone`)
/// within a second or two of the API server answering again (the kube client may fail one more
/// attempt on a connection it had given up on), for about three connection attempts a second
/// during an outage. kube's default (800 ms to 30 s, reset after 120 s) left
/// requests created after an API server restart unseen for minutes.
pub(super) const WATCH: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));

/// [`WATCH`] as the controller's back-off of its watch streams (reset by the controller on every
/// event that is not an error).
#[derive(Default)]
pub(super) struct WatchBackoff {
    failures: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        Some(WATCH.after(self.failures))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Spreads requeues by up to +-10% so that many requests created together do not refresh in
/// lock-step against IBM Cloud.
pub(super) fn jitter(delay: Duration, key: &ObjectRef<IngestionKeyRequest>) -> Duration {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    SystemTime::now().hash(&mut hasher);
    let unit = (hasher.finish() % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
    delay.mul_f64(1.0 + unit * 0.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_pause_briefly_and_start_again_from_the_shortest_pause() {
        use kube::runtime::utils::Backoff as _;
        let mut backoff = WatchBackoff::default();
        let pauses: Vec<Duration> = backoff.by_ref().take(8).collect();
        assert_eq!(pauses[0], Duration::from_millis(250));
        assert_eq!(pauses[7], Duration::from_secs(1), "capped: {pauses:?}");
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(TRANSIENT.after(1), Duration::from_secs(1));
        assert_eq!(TRANSIENT.after(4), Duration::from_secs(8));
        assert_eq!(TRANSIENT.after(40), Duration::from_secs(300));
        assert_eq!(PERMANENT.after(1), Duration::from_secs(300));
        assert_eq!(PERMANENT.after(10), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let key = ObjectRef::<IngestionKeyRequest>::new("a").within("b");
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(100), &key);
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
    }
}
