//! What an SRE looks at, on real parts: the chart's alert rules loaded into a real Prometheus
//! (Debian's package, unpacked by `hack/prometheus-tools.sh`) scraping the operator binary, which
//! runs against the test control plane and the IBM Cloud simulator. A request whose API key
//! Secret is missing must take the not-Ready alert through pending to firing. `promtool check
//! rules` must accept the rendered rules, and every metric the rules and the dashboard query
//! must be one the operator exposes.

use test_support as support;
use test_support::env as fixtures;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use fixtures::{Env, MANAGER_KEY};
use serde_json::{Value, json};
use support::wait_for;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The directory holding `prometheus` and `promtool`.
fn prometheus_tools() -> PathBuf {
    let out = run(&mut Command::new(root().join("hack/prometheus-tools.sh")));
    PathBuf::from(out.trim())
}

/// The chart rendered with its rules (with short `for:` durations, for this test only) and the
/// dashboard, as objects.
fn rendered_chart() -> Vec<Value> {
    let values = json!({"metrics": {
        "prometheusRule": {"enabled": true, "for": {
            "notReady": "3s", "stuck": "1h", "rotationOverdue": "15m", "ibmCloud": "10m", "absent": "5m",
        }},
        "grafanaDashboard": {"enabled": true},
    }});
    let yaml = run(Command::new("python3").args([
        "hack/helm.py",
        "render",
        "charts/ingestion-key-operator",
        "--values-json",
        &values.to_string(),
    ]));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("rendered YAML");
    docs.into_iter().filter(Value::is_object).collect()
}

fn object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The metric names in a PromQL expression (ours all start with the operator's prefix), with
/// histogram suffixes mapped to their family.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let prefix = "ingestion_key_operator_";
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find(prefix) {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric families the operator declares on its metrics page.
fn declared_families(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

struct Prometheus {
    pid: u32,
    url: String,
}

impl Prometheus {
    fn start(tools: &Path, dir: &Path, target: &str, rules: &Path) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let config_text = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": [{"job_name": "ingestion-key-operator", "static_configs": [{"targets": [target]}]}],
        });
        std::fs::write(&config, config_text.to_string()).expect("write prometheus.yml");
        let addr = fixtures::free_port();
        let mut cmd = Command::new(tools.join("prometheus"));
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let pid = support::spawn_supervised("prometheus", &cmd, &dir.join("prometheus.log"))
            .unwrap_or_else(|e| panic!("starting prometheus: {e}"));
        Prometheus {
            pid,
            url: format!("http://{addr}"),
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let reply = reqwest::get(format!("{}{path}", self.url)).await.ok()?;
        reply.json().await.ok()
    }

    /// The states of the alerts named `name`, with their labels.
    async fn alerts(&self, name: &str) -> Vec<(String, Value)> {
        let Some(body) = self.get("/api/v1/alerts").await else {
            return Vec::new();
        };
        body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| {
                (
                    a["state"].as_str().unwrap_or("").to_owned(),
                    a["labels"].clone(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        fixtures::signal(self.pid, "-TERM");
        if !fixtures::wait_gone(self.pid, Duration::from_secs(10)) {
            fixtures::signal(self.pid, "-KILL");
        }
    }
}

#[tokio::test]
async fn the_not_ready_alert_fires_on_a_real_prometheus_and_dashboards_query_real_metrics() {
    let tools = prometheus_tools();
    let chart = rendered_chart();
    let rule = object(&chart, "PrometheusRule");
    let dir = support::control_plane().dir().join("monitoring");
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.yml");
    // A Prometheus rule file is the PrometheusRule's spec (JSON is YAML).
    std::fs::write(&rules, rule["spec"].to_string()).unwrap();
    let check = run(Command::new(tools.join("promtool"))
        .arg("check")
        .arg("rules")
        .arg(&rules));
    assert!(check.contains("SUCCESS: 8 rules found"), "{check}");

    let env = Env::new("monitoring").await;
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    env.create_request(
        "healthy",
        json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "ibmcloud-api-key"},
               "rotation": {"interval": "720h"}}),
    )
    .await;
    env.wait_ready("healthy").await;
    env.create_request(
        "broken",
        json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "no-such-secret"},
               "secret": {"name": "broken-key"}}),
    )
    .await;
    env.wait_reason("broken", "ApiKeySecretNotFound").await;

    let prometheus = Prometheus::start(&tools, &dir, &env.operator.admin.to_string(), &rules);
    let seen = std::sync::Mutex::new(BTreeSet::new());
    wait_for(
        "the not-Ready alert to fire",
        Duration::from_secs(60),
        || async {
            let alerts = prometheus.alerts("IngestionKeyRequestNotReady").await;
            let mut seen = seen.lock().unwrap();
            for (state, labels) in alerts {
                assert_eq!(labels["namespace"], env.ns.as_str());
                assert_eq!(labels["name"], "broken", "only the broken request alerts");
                assert_eq!(labels["reason"], "ApiKeySecretNotFound");
                seen.insert(state);
            }
            seen.contains("firing")
        },
    )
    .await;
    let seen = seen.into_inner().unwrap();
    assert!(seen.contains("pending"), "pending before firing: {seen:?}");
    // The other alerts stay quiet on a healthy operator.
    let body = prometheus.get("/api/v1/alerts").await.expect("alerts");
    let names: BTreeSet<&str> = body["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["labels"]["alertname"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["IngestionKeyRequestNotReady"]),
        "{body}"
    );

    // Every metric the rules and the dashboard query is one the operator declares.
    let page = env.operator.metrics().await;
    let declared = declared_families(&page);
    let mut queried = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            queried.extend(metric_names(r["expr"].as_str().unwrap()));
        }
    }
    let dashboard = object(&chart, "ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(
        dashboard["data"]["ingestion-key-operator.json"]
            .as_str()
            .expect("dashboard JSON"),
    )
    .expect("the dashboard is JSON");
    let mut panels = 0;
    for panel in json["panels"].as_array().unwrap() {
        panels += 1;
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    assert!(panels >= 10, "{panels} panels");
    let missing: Vec<_> = queried.difference(&declared).collect();
    assert!(missing.is_empty(), "queried but not exposed: {missing:?}");
    // And the per-request series carry real values (the healthy request's key and schedule).
    for series in [
        "ingestion_key_operator_resource_key_created_timestamp_seconds",
        "ingestion_key_operator_request_next_rotation_timestamp_seconds",
    ] {
        let query = format!("/api/v1/query?query={series}{{name=\"healthy\"}}");
        let result = prometheus.get(&query).await.expect("query");
        assert_eq!(
            result["data"]["result"].as_array().map(Vec::len),
            Some(1),
            "{series}: {result}"
        );
    }
    // A deleted request's series go with it.
    assert!(page.contains("name=\"broken\""));
    env.delete_request("broken").await;
    wait_for(
        "the deleted request's series to go",
        Duration::from_secs(30),
        || async { !env.operator.metrics().await.contains("name=\"broken\"") },
    )
    .await;
    drop(prometheus);
    env.finish().await;
}
