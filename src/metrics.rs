//! Reconcile metrics in the Prometheus text format. A handful of counters and one histogram do
//! not justify a metrics crate; the format is simple and tested here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::{
    crd::{IngestionKeyRequest, reason},
    histogram::{Histogram, escape_label},
    ibm::BudgetStats,
    lock::lock,
};

const PREFIX: &str = "ingestion_key_operator";
/// Upper bounds (seconds) of the reconcile duration histogram.
const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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
    /// Orphan keys per instance name, from the leader's last audit (`--orphan-audit-interval`).
    orphan_keys: Mutex<BTreeMap<String, u64>>,
}

/// Every known label value starts at 0: a series exists from the first scrape, so that `rate()`
/// and `increase()` see the first event and absence alerts do not fire on a healthy operator.
impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Mutex::new(RESULTS.into_iter().map(|r| (r, 0)).collect()),
            failures: Mutex::new(reason::FAILURES.into_iter().map(|r| (r, 0)).collect()),
            duration: Mutex::new(Histogram::new(&DURATION_BUCKETS)),
            leader: AtomicBool::default(),
            retired_key_deletions: Mutex::new(
                ["deleted", "failed"].into_iter().map(|r| (r, 0)).collect(),
            ),
            rotations: Default::default(),
            orphan_keys: Mutex::default(),
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
        lock(&self.duration).observe(elapsed);
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

    /// The orphan keys the last audit counted on one instance.
    pub fn set_orphan_keys(&self, instance: &str, count: u64) {
        lock(&self.orphan_keys).insert(instance.to_owned(), count);
    }

    /// Drops the series of instances no request uses any more.
    pub fn retain_orphan_instances(&self, in_use: &[String]) {
        lock(&self.orphan_keys).retain(|instance, _| in_use.contains(instance));
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
    pub fn render(
        &self,
        ibm_requests: &[((String, String), u64)],
        budget: BudgetStats,
        requests: &[RequestSample],
    ) -> String {
        self.render_with_latency(ibm_requests, &[], budget, requests)
    }

    /// [`Metrics::render`] plus the latency of IBM Cloud requests by endpoint.
    pub fn render_with_latency(
        &self,
        ibm_requests: &[((String, String), u64)],
        ibm_latency: &[(String, Histogram)],
        budget: BudgetStats,
        requests: &[RequestSample],
    ) -> String {
        let mut out = String::new();
        render_requests(&mut out, requests);
        let by = |label: &str, counts: &BTreeMap<&'static str, u64>| -> Vec<(String, u64)> {
            counts
                .iter()
                .map(|(value, count)| (format!("{label}=\"{value}\""), *count))
                .collect()
        };
        family(
            &mut out,
            ("leader", "gauge"),
            "1 when this replica reconciles (it holds the leader lease), 0 while it stands by.",
            [("", u8::from(self.leader.load(Ordering::Relaxed)))],
        );
        family(
            &mut out,
            ("reconcile_total", "counter"),
            "Reconciles of IngestionKeyRequests, by result.",
            by("result", &lock(&self.reconciles)),
        );
        family(
            &mut out,
            ("key_rotations_total", "counter"),
            "Resource keys replaced by a new one (rotation, move, role change, lost one-time value).",
            [("", self.rotations.load(Ordering::Relaxed))],
        );
        family(
            &mut out,
            ("retired_key_deletions_total", "counter"),
            "Deletions of replaced resource keys after their grace period, by result (failed ones are retried).",
            by("result", &lock(&self.retired_key_deletions)),
        );
        family(
            &mut out,
            ("orphan_keys", "gauge"),
            "Active resource keys of this cluster's naming on an instance in use whose request no longer exists (the leader's last audit, --orphan-audit-interval); `kubectl ingestionkey audit` lists them.",
            lock(&self.orphan_keys)
                .iter()
                .map(|(instance, count)| {
                    (format!("instance=\"{}\"", escape_label(instance)), *count)
                })
                .collect::<Vec<_>>(),
        );
        family(
            &mut out,
            ("reconcile_failures_total", "counter"),
            "Failed reconciles, by condition reason.",
            by("reason", &lock(&self.failures)),
        );
        header(
            &mut out,
            "reconcile_duration_seconds",
            "histogram",
            "Time spent in one reconcile.",
        );
        lock(&self.duration).render(
            &mut out,
            &format!("{PREFIX}_reconcile_duration_seconds"),
            "",
        );
        family(
            &mut out,
            ("ibm_requests_total", "counter"),
            "Requests to IBM Cloud (IAM and Resource Controller), by endpoint and HTTP status.",
            ibm_requests.iter().map(|((endpoint, status), count)| {
                let endpoint = escape_label(endpoint);
                (
                    format!("endpoint=\"{endpoint}\",status=\"{status}\""),
                    *count,
                )
            }),
        );
        header(
            &mut out,
            "ibm_request_duration_seconds",
            "histogram",
            "Time from sending a request to IBM Cloud to its complete answer, by endpoint.",
        );
        let name = format!("{PREFIX}_ibm_request_duration_seconds");
        for (endpoint, histogram) in ibm_latency {
            let labels = format!("endpoint=\"{}\",", escape_label(endpoint));
            histogram.render(&mut out, &name, &labels);
        }
        family(
            &mut out,
            ("ibm_budget_delayed_requests_total", "counter"),
            "IBM Cloud requests that waited for the process-wide rate budget (--ibm-max-rps).",
            [("", budget.delayed_requests)],
        );
        family(
            &mut out,
            ("ibm_rate_limit_paused_seconds_total", "counter"),
            "Seconds IBM Cloud requests waited because IBM Cloud answered 429 for their API key.",
            [("", budget.paused_millis as f64 / 1000.0)],
        );
        out
    }
}

/// What the per-request metrics show of one request, read from its status. A few strings and
/// numbers per request: the cardinality is bounded by the number of requests.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestSample {
    pub namespace: String,
    pub name: String,
    /// The Ready condition: `None` before the first status.
    pub ready: Option<bool>,
    pub reason: String,
    /// When Ready last changed (Unix seconds).
    pub ready_since: Option<f64>,
    /// When IBM Cloud created the key in use (Unix seconds).
    pub key_created: Option<f64>,
    /// When the next scheduled rotation is due (Unix seconds).
    pub next_rotation: Option<f64>,
    /// Replaced keys not deleted yet, and how many of them are past their deletion time.
    pub retiring_keys: usize,
    pub retiring_keys_overdue: usize,
}

fn unix(time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    time.0.as_millisecond() as f64 / 1000.0
}

impl RequestSample {
    pub fn of(request: &IngestionKeyRequest, now: Timestamp) -> Self {
        let status = request.status.clone().unwrap_or_default();
        let ready = status.ready();
        let overdue = status
            .retiring_keys
            .iter()
            .filter(|k| k.delete_after.as_ref().is_some_and(|t| t.0 <= now))
            .count();
        Self {
            namespace: request.metadata.namespace.clone().unwrap_or_default(),
            name: request.metadata.name.clone().unwrap_or_default(),
            ready: ready.map(|c| c.status == "True"),
            reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
            ready_since: ready.map(|c| unix(&c.last_transition_time)),
            key_created: status
                .resource_key
                .as_ref()
                .and_then(|k| k.created_at.as_ref())
                .map(unix),
            next_rotation: status
                .rotation
                .as_ref()
                .and_then(|r| r.next_rotation_time.as_ref())
                .map(unix),
            retiring_keys: status.retiring_keys.len(),
            retiring_keys_overdue: overdue,
        }
    }
}

/// A per-request gauge: its name, its help text, and its value for one request (none: no series).
type RequestGauge = (
    &'static str,
    &'static str,
    fn(&RequestSample) -> Option<f64>,
);

/// The per-request series: one Ready series per request (its status and reason as labels), key
/// age, next rotation, retiring keys. Only the replica that reconciles has requests to show.
pub fn render_requests(out: &mut String, requests: &[RequestSample]) {
    let series = |r: &RequestSample| {
        format!(
            "namespace=\"{}\",name=\"{}\"",
            escape_label(&r.namespace),
            escape_label(&r.name)
        )
    };
    family(
        out,
        ("request_condition", "gauge"),
        "1 for each request's Ready condition, with its status and reason as labels (one series per request).",
        requests.iter().filter_map(|r| {
            let status = if r.ready? { "True" } else { "False" };
            let reason = escape_label(&r.reason);
            let labels = format!(
                "{},condition=\"Ready\",status=\"{status}\",reason=\"{reason}\"",
                series(r)
            );
            Some((labels, 1))
        }),
    );
    let gauges: [RequestGauge; 5] = [
        (
            "request_condition_last_transition_timestamp_seconds",
            "When each request's Ready condition last changed (Unix time).",
            |r| r.ready_since,
        ),
        (
            "resource_key_created_timestamp_seconds",
            "When IBM Cloud created the resource key each request uses (Unix time).",
            |r| r.key_created,
        ),
        (
            "request_next_rotation_timestamp_seconds",
            "When each request's next scheduled rotation is due (Unix time; only with spec.rotation.interval).",
            |r| r.next_rotation,
        ),
        (
            "request_retiring_keys",
            "Replaced resource keys of each request not deleted yet.",
            |r| Some(r.retiring_keys as f64),
        ),
        (
            "request_retiring_keys_overdue",
            "Replaced resource keys of each request whose deletion time has passed (deletion failing or pending).",
            |r| Some(r.retiring_keys_overdue as f64),
        ),
    ];
    for (name, help, value) in gauges {
        let samples = requests.iter().filter_map(|r| Some((series(r), value(r)?)));
        family(out, (name, "gauge"), help, samples);
    }
}

/// One metric family: its HELP and TYPE lines, then a sample per (labels, value); empty labels
/// write the bare name.
fn family<L: AsRef<str>, V: std::fmt::Display>(
    out: &mut String,
    (name, kind): (&str, &str),
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) {
    header(out, name, kind, help);
    for (labels, value) in samples {
        let labels = labels.as_ref();
        let _ = if labels.is_empty() {
            writeln!(out, "{PREFIX}_{name} {value}")
        } else {
            writeln!(out, "{PREFIX}_{name}{{{labels}}} {value}")
        };
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}_{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}_{name} {kind}");
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
            &[],
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
    fn per_request_series_carry_namespace_and_name_and_only_what_is_known() {
        let request: IngestionKeyRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
            "metadata": {"name": "at", "namespace": "ibm-observe"},
            "spec": {"instance": {"name": "x"}, "apiKeySecretRef": {"name": "k"}},
            "status": {
                "conditions": [{"type": "Ready", "status": "False", "reason": "ApiKeySecretNotFound",
                    "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "resourceKey": {"guid": "g", "crn": "c", "name": "n", "createdAt": "2026-01-01T00:00:10Z"},
                "retiringKeys": [
                    {"guid": "a", "name": "a", "crn": "c", "deleteAfter": "2026-01-01T00:00:00Z"},
                    {"guid": "b", "name": "b", "crn": "c"},
                ],
            },
        }))
        .unwrap();
        let now = "2026-06-01T00:00:00Z".parse().unwrap();
        let sample = RequestSample::of(&request, now);
        let text = Metrics::default().render(&[], BudgetStats::default(), &[sample]);
        let labels = "namespace=\"ibm-observe\",name=\"at\"";
        for line in [
            format!(
                "ingestion_key_operator_request_condition{{{labels},condition=\"Ready\",status=\"False\",reason=\"ApiKeySecretNotFound\"}} 1"
            ),
            format!(
                "ingestion_key_operator_request_condition_last_transition_timestamp_seconds{{{labels}}} 1767225600"
            ),
            format!(
                "ingestion_key_operator_resource_key_created_timestamp_seconds{{{labels}}} 1767225610"
            ),
            format!("ingestion_key_operator_request_retiring_keys{{{labels}}} 2"),
            format!("ingestion_key_operator_request_retiring_keys_overdue{{{labels}}} 1"),
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing in:\n{text}"
            );
        }
        assert!(
            !text.contains("ingestion_key_operator_request_next_rotation_timestamp_seconds{"),
            "no schedule, no series"
        );
    }

    #[test]
    fn every_known_label_value_has_a_series_at_zero_from_the_start() {
        let text = Metrics::default().render(&[], BudgetStats::default(), &[]);
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
