//! Latency of IBM Cloud requests per endpoint template, as a fixed-bucket histogram (the one
//! `/metrics` shows as `ingestion_key_operator_ibm_request_duration_seconds`).

use std::time::Duration;

/// Upper bounds (seconds) of the buckets: IBM Cloud answers in tens to hundreds of milliseconds;
/// the top buckets catch timeouts.
pub const LATENCY_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Cumulative counts per bucket, plus count and sum, as Prometheus histograms have them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    pub fn observe(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let mut h = LatencyHistogram::default();
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(3));
        assert_eq!(h.buckets[0], 0);
        assert_eq!(h.buckets[2], 1, "0.05");
        assert_eq!(h.buckets[8], 2, "5");
        assert_eq!(h.count, 2);
        assert!((h.sum_seconds - 3.03).abs() < 1e-9);
    }
}
