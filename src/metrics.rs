//! Reconcile metrics in the Prometheus text format. A handful of counters and one histogram do
//! not justify a metrics crate; the format is simple and tested here.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::{ibm::BudgetStats, reconciler::reason};

const PREFIX: &str = "ingestion_key_operator";
/// Upper bounds (seconds) of the reconcile duration histogram.
const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The `result` label values of `reconcile_total`.
const RESULTS: [&str; 2] = ["success", "error"];

/// Counters shared by every reconcile; rendered by the admin server.
pub struct Metrics {
    reconciles: Mutex<BTreeMap<&'static str, u64>>,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    duration: Mutex<Histogram>,
    /// Whether this process reconciles (holds the leader lease, or runs without election).
    leader: AtomicBool,
    /// Deletions of replaced keys, by result ("deleted", "failed").
    retired_key_deletions: Mutex<BTreeMap<&'static str, u64>>,
    /// Replacements of a key (rotations, moves, role changes, lost one-time values).
    rotations: std::sync::atomic::AtomicU64,
}

/// Every known label value starts at 0: a series exists from the first scrape, so that `rate()`
/// and `increase()` see the first event and absence alerts do not fire on a healthy operator.
impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Mutex::new(RESULTS.into_iter().map(|r| (r, 0)).collect()),
            failures: Mutex::new(reason::FAILURES.into_iter().map(|r| (r, 0)).collect()),
            duration: Mutex::default(),
            leader: AtomicBool::default(),
            retired_key_deletions: Mutex::new(
                ["deleted", "failed"].into_iter().map(|r| (r, 0)).collect(),
            ),
            rotations: Default::default(),
        }
    }
}

impl Metrics {
    /// Records one reconcile: `failure_reason` is the stable condition reason when it failed.
    pub fn observe_reconcile(&self, elapsed: Duration, failure_reason: Option<&'static str>) {
        let result = if failure_reason.is_some() {
            "error"
        } else {
            "success"
        };
        *lock(&self.reconciles).entry(result).or_default() += 1;
        if let Some(reason) = failure_reason {
            *lock(&self.failures).entry(reason).or_default() += 1;
        }
        let seconds = elapsed.as_secs_f64();
        let mut histogram = lock(&self.duration);
        for (bucket, bound) in histogram.counts.iter_mut().zip(DURATION_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// Records one deletion attempt of a replaced key.
    pub fn observe_retired_key_deletion(&self, deleted: bool) {
        let result = if deleted { "deleted" } else { "failed" };
        *lock(&self.retired_key_deletions).entry(result).or_default() += 1;
    }

    /// Records that a key was replaced by a new one.
    pub fn observe_rotation(&self) {
        self.rotations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Failures recorded for `reason` so far.
    pub fn failures(&self, reason: &str) -> u64 {
        lock(&self.failures).get(reason).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition of these metrics plus the IBM Cloud request counts
    /// (`((endpoint, status), count)`, as the IBM client reports them).
    pub fn render(&self, ibm_requests: &[((String, String), u64)], budget: BudgetStats) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "leader",
            "gauge",
            "1 when this replica reconciles (it holds the leader lease), 0 while it stands by.",
        );
        let leader = u8::from(self.leader.load(Ordering::Relaxed));
        let _ = writeln!(out, "{PREFIX}_leader {leader}");
        header(
            &mut out,
            "reconcile_total",
            "counter",
            "Reconciles of IngestionKeyRequests, by result.",
        );
        for (result, count) in lock(&self.reconciles).iter() {
            let _ = writeln!(
                out,
                "{PREFIX}_reconcile_total{{result=\"{result}\"}} {count}"
            );
        }
        header(
            &mut out,
            "key_rotations_total",
            "counter",
            "Resource keys replaced by a new one (rotation, move, role change, lost one-time value).",
        );
        let rotations = self.rotations.load(Ordering::Relaxed);
        let _ = writeln!(out, "{PREFIX}_key_rotations_total {rotations}");
        header(
            &mut out,
            "retired_key_deletions_total",
            "counter",
            "Deletions of replaced resource keys after their grace period, by result (failed ones are retried).",
        );
        for (result, count) in lock(&self.retired_key_deletions).iter() {
            let _ = writeln!(
                out,
                "{PREFIX}_retired_key_deletions_total{{result=\"{result}\"}} {count}"
            );
        }
        header(
            &mut out,
            "reconcile_failures_total",
            "counter",
            "Failed reconciles, by condition reason.",
        );
        for (reason, count) in lock(&self.failures).iter() {
            let _ = writeln!(
                out,
                "{PREFIX}_reconcile_failures_total{{reason=\"{reason}\"}} {count}"
            );
        }
        header(
            &mut out,
            "reconcile_duration_seconds",
            "histogram",
            "Time spent in one reconcile.",
        );
        let histogram = lock(&self.duration);
        for (count, bound) in histogram.counts.iter().zip(DURATION_BUCKETS) {
            let _ = writeln!(
                out,
                "{PREFIX}_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{PREFIX}_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            histogram.count
        );
        let _ = writeln!(
            out,
            "{PREFIX}_reconcile_duration_seconds_sum {}",
            histogram.sum
        );
        let _ = writeln!(
            out,
            "{PREFIX}_reconcile_duration_seconds_count {}",
            histogram.count
        );
        header(
            &mut out,
            "ibm_requests_total",
            "counter",
            "Requests to IBM Cloud (IAM and Resource Controller), by endpoint and HTTP status.",
        );
        for ((endpoint, status), count) in ibm_requests {
            let endpoint = endpoint.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "{PREFIX}_ibm_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {count}"
            );
        }
        header(
            &mut out,
            "ibm_budget_delayed_requests_total",
            "counter",
            "IBM Cloud requests that waited for the process-wide rate budget (--ibm-max-rps).",
        );
        let _ = writeln!(
            out,
            "{PREFIX}_ibm_budget_delayed_requests_total {}",
            budget.delayed_requests
        );
        header(
            &mut out,
            "ibm_rate_limit_paused_seconds_total",
            "counter",
            "Seconds IBM Cloud requests waited because IBM Cloud answered 429 for their API key.",
        );
        let _ = writeln!(
            out,
            "{PREFIX}_ibm_rate_limit_paused_seconds_total {}",
            budget.paused_millis as f64 / 1000.0
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}_{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}_{name} {kind}");
}

/// Metrics must keep working even if a thread panicked while holding a lock.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_failures_histogram_and_ibm_requests() {
        let metrics = Metrics::default();
        metrics.observe_reconcile(Duration::from_millis(30), None);
        metrics.observe_reconcile(Duration::from_secs(3), Some("InstanceNotFound"));
        metrics.set_leader(true);
        let budget = BudgetStats {
            delayed_requests: 3,
            paused_millis: 1500,
        };
        let text = metrics.render(
            &[(("POST /identity/token".into(), "200".into()), 2)],
            budget,
        );
        assert!(text.contains("ingestion_key_operator_leader 1\n"));
        assert!(text.contains("ingestion_key_operator_ibm_budget_delayed_requests_total 3\n"));
        assert!(text.contains("ingestion_key_operator_ibm_rate_limit_paused_seconds_total 1.5\n"));
        assert!(text.contains("ingestion_key_operator_reconcile_total{result=\"success\"} 1"));
        assert!(text.contains("ingestion_key_operator_reconcile_total{result=\"error\"} 1"));
        assert!(text.contains(
            "ingestion_key_operator_reconcile_failures_total{reason=\"InstanceNotFound\"} 1"
        ));
        assert!(
            text.contains(
                "ingestion_key_operator_reconcile_duration_seconds_bucket{le=\"0.05\"} 1"
            )
        );
        assert!(
            text.contains("ingestion_key_operator_reconcile_duration_seconds_bucket{le=\"5\"} 2")
        );
        assert!(text.contains("ingestion_key_operator_reconcile_duration_seconds_count 2"));
        assert!(text.contains("ingestion_key_operator_ibm_requests_total{endpoint=\"POST /identity/token\",status=\"200\"} 2"));
        assert_eq!(metrics.failures("InstanceNotFound"), 1);
    }

    #[test]
    fn every_known_label_value_has_a_series_at_zero_from_the_start() {
        let text = Metrics::default().render(&[], BudgetStats::default());
        for result in ["success", "error"] {
            assert!(
                text.contains(&format!(
                    "ingestion_key_operator_reconcile_total{{result=\"{result}\"}} 0\n"
                )),
                "{result}: {text}"
            );
        }
        for reason in reason::FAILURES {
            assert!(
                text.contains(&format!(
                    "ingestion_key_operator_reconcile_failures_total{{reason=\"{reason}\"}} 0\n"
                )),
                "{reason}: {text}"
            );
        }
        assert!(!reason::FAILURES.contains(&reason::KEY_SYNCED));
        assert_eq!(
            text.matches("ingestion_key_operator_reconcile_failures_total{")
                .count(),
            reason::FAILURES.len()
        );
    }
}
