//! One fixed-bucket histogram, as Prometheus keeps them, for every duration the operator shows
//! (reconcile time, IBM Cloud request latency), and the one escaper for text-format label values.

use std::{fmt::Write as _, time::Duration};

/// Cumulative counts per upper bound, plus count and sum.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<u64>,
    count: u64,
    sum_seconds: f64,
}

impl Histogram {
    /// `bounds` are the buckets' upper bounds in seconds, ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: vec![0; bounds.len()],
            count: 0,
            sum_seconds: 0.0,
        }
    }

    pub fn observe(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter_mut().zip(self.bounds) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of `name`; `labels` is either empty or
    /// `key="value",` pairs already escaped, each followed by a comma.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (count, bound) in self.buckets.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {count}");
        }
        let count = self.count;
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let plain = labels.trim_end_matches(',');
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(plain), self.sum_seconds);
        let _ = writeln!(out, "{name}_count{} {count}", braces(plain));
    }
}

/// Label values are user-chosen names: escaped as the text format requires.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [0.05, 1.0, 5.0];

    #[test]
    fn buckets_are_cumulative() {
        let mut h = Histogram::new(&BOUNDS);
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(3));
        assert_eq!(h.buckets, [1, 1, 2]);
        assert_eq!(h.count(), 2);
        assert!((h.sum_seconds - 3.03).abs() < 1e-9);
    }

    #[test]
    fn renders_with_and_without_labels() {
        let mut h = Histogram::new(&BOUNDS);
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.render(&mut out, "d", "");
        h.render(&mut out, "e", "endpoint=\"x\",");
        assert!(out.contains("d_bucket{le=\"1\"} 0\n"), "{out}");
        assert!(out.contains("d_bucket{le=\"+Inf\"} 1\n"), "{out}");
        assert!(out.contains("d_sum 2\n"), "{out}");
        assert!(out.contains("d_count 1\n"), "{out}");
        assert!(
            out.contains("e_bucket{endpoint=\"x\",le=\"5\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("e_sum{endpoint=\"x\"} 2\n"), "{out}");
        assert!(out.contains("e_count{endpoint=\"x\"} 1\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
