//! Scale benchmark: N requests in one `kubectl apply`, over 4 namespaces and 2 API keys, against
//! the real API server and an IBM Cloud simulator that also holds 250 unrelated instances. For
//! each N it prints one row of figures: time to all Ready (seen by a watch) against a baseline of
//! the same run (N Secrets + N ConfigMaps in one `kubectl apply`), Resource Controller calls per
//! request, Kubernetes writes per request, operator RSS, apply -> Ready latency of single
//! requests, and the refresh at `refreshInterval: 1m` (IBM calls per minute, operator CPU).
//! From `IKO_BENCH_RESTART_FROM` requests on (default 5000) it also restarts the operator, then
//! fails it over to a standby, with every request in sync, and prints what each cost in the
//! first `refreshInterval` (API server writes, IBM calls) and how soon the new process had every
//! request in its cache and served a request created meanwhile.
//! Asserts nothing about time; only "one token exchange per API key"
//! (the IAM token is cached and shared by every request using that key).
//!
//! `make bench` (or `cargo bench --bench scale`). `IKO_BENCH_COUNTS` (default `200,1000`) lists
//! the request counts, `IKO_BENCH_MAX_RPS` (default 1000) the operator's `--ibm-max-rps`,
//! `IKO_BENCH_REFRESH_SECONDS` (default 120) the refresh window, `IKO_BENCH_OUT` a file for the
//! markdown table (`make bench` writes docs/performance.md).

use test_support as support;
use test_support::env as fixtures;

use std::{
    collections::{BTreeMap, HashSet},
    io::Write,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fixtures::{ACCOUNT, Env, MANAGER_KEY, READER_KEY, ready_reason};
use futures::StreamExt;
use ibm_cloud_sim::SeedInstance;
use ingestion_key_operator::crd::IngestionKeyRequest;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};

const NAMESPACES: usize = 4;
const UNRELATED_INSTANCES: usize = 250;
const SINGLE_SAMPLES: usize = 21;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a restart (or a failover) cost, all requests in sync.
struct Disruption {
    /// From the new process's start (or the old leader's death) until it had every request in
    /// its cache and under watch (`/readyz`), and until it led.
    cached_after: Duration,
    /// Until a request created while no operator ran was Ready.
    new_request_ready_after: Duration,
    /// Writes to the requests of the batch, their Secrets, and Events about them, in the first
    /// `refreshInterval` after the new process led.
    writes: u64,
    /// Resource Controller calls in that interval, the new request's own aside.
    ibm_calls: u64,
}

/// One row of the table.
struct Row {
    requests: usize,
    all_ready: Duration,
    /// The baseline applied just before the batch and again at the end of the run: the machine's
    /// speed drifts (the same apply took 7 s and 12.7 s in two runs), so the ratio is to their
    /// mean.
    baseline: (Duration, Duration),
    /// The same requests applied in a namespace the operator does not watch.
    floor: Duration,
    rc_calls: u64,
    tokens: u64,
    request_writes: f64,
    secret_writes: f64,
    events: f64,
    rss_idle_kib: u64,
    rss_loaded_kib: u64,
    /// After the refresh window: the steady state with every request in sync.
    rss_steady_kib: u64,
    /// The high-water mark (VmHWM) once the refresh window is over.
    rss_peak_kib: u64,
    p50: Duration,
    p90: Duration,
    refresh_calls_per_minute: f64,
    refresh_cpu_percent: f64,
    /// CPU seconds while the batch ran: the operator, and the control plane's servers.
    batch_cpu: (f64, f64),
    restart: Option<Disruption>,
    failover: Option<Disruption>,
}

async fn run() {
    let counts: Vec<usize> = std::env::var("IKO_BENCH_COUNTS")
        .unwrap_or_else(|_| "200,1000".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let max_rps: u32 = env_or("IKO_BENCH_MAX_RPS", 1000);
    let refresh_window = Duration::from_secs(env_or("IKO_BENCH_REFRESH_SECONDS", 120));
    let mut rows = Vec::new();
    for count in counts {
        rows.push(measure(count, max_rps, refresh_window).await);
    }
    let table = table(&rows, max_rps, refresh_window);
    println!("\n{table}");
    if let Ok(path) = std::env::var("IKO_BENCH_OUT") {
        std::fs::write(&path, document(&table)).expect("write the table");
        println!("written to {path}");
    }
}

/// A manifest of `count` objects spread over the namespaces, as one `kubectl apply` input.
fn manifest(
    namespaces: &[String],
    count: usize,
    object: impl Fn(usize, &str) -> Vec<Value>,
) -> String {
    let items: Vec<Value> = (0..count)
        .flat_map(|i| object(i, &namespaces[i % namespaces.len()]))
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn kubectl_apply(cp: &support::ControlPlane, manifest: &str) -> Duration {
    let started = Instant::now();
    let mut child = cp
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifest.as_bytes())
        .expect("write manifest");
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn request_object(i: usize, namespace: &str) -> Vec<Value> {
    let spec = if i.is_multiple_of(2) {
        json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "key-a"},
               "secret": {"name": format!("s{i}")}, "refreshInterval": "1m"})
    } else {
        json!({"instance": {"name": "my-cloud-logs"}, "apiKeySecretRef": {"name": "key-b"},
               "resourceKey": {"role": "Reader", "credentialField": "apikey"},
               "secret": {"name": format!("s{i}")}, "refreshInterval": "1m"})
    };
    vec![json!({
        "apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
        "metadata": {"name": format!("r{i}"), "namespace": namespace}, "spec": spec,
    })]
}

fn baseline_objects(prefix: &str, i: usize, namespace: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{prefix}{i}"), "namespace": namespace},
               "stringData": {"logdna-agent-key": format!("value-{i}")}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{prefix}{i}"), "namespace": namespace},
               "data": {"k": format!("value-{i}")}}),
    ]
}

/// Counts watch events on the requests and on the operator's Secrets (each one a write), and
/// when each request first became Ready.
#[derive(Default)]
struct Observed {
    request_events: u64,
    secret_events: u64,
    /// Of those, the ones on the batch's own requests (`r<i>`) and Secrets (`s<i>`).
    batch_events: u64,
    ready_at: BTreeMap<String, Instant>,
}

/// `r<digits>` or `s<digits>`: an object of the batch (not a single-sample or a restart one).
fn of_batch(name: &str) -> bool {
    name.len() > 1
        && (name.starts_with('r') || name.starts_with('s'))
        && name[1..].bytes().all(|b| b.is_ascii_digit())
}

fn observe(env: &Env, namespaces: &[String]) -> Arc<Mutex<Observed>> {
    let observed = Arc::new(Mutex::new(Observed::default()));
    let wanted: HashSet<String> = namespaces.iter().cloned().collect();
    let requests: Api<IngestionKeyRequest> = Api::all(env.client.clone());
    let sink = observed.clone();
    let ours = wanted.clone();
    tokio::spawn(async move {
        let stream = watcher(requests, watcher::Config::default()).touched_objects();
        futures::pin_mut!(stream);
        while let Some(Ok(request)) = stream.next().await {
            let namespace = request.metadata.namespace.clone().unwrap_or_default();
            if !ours.contains(&namespace) {
                continue;
            }
            let key = format!(
                "{namespace}/{}",
                request.metadata.name.clone().unwrap_or_default()
            );
            let mut o = sink.lock().unwrap();
            o.request_events += 1;
            if of_batch(request.metadata.name.as_deref().unwrap_or_default()) {
                o.batch_events += 1;
            }
            if ready_reason(&request).as_deref() == Some("KeySynced") {
                o.ready_at.entry(key).or_insert_with(Instant::now);
            }
        }
    });
    let secrets: Api<Secret> = Api::all(env.client.clone());
    let sink = observed.clone();
    tokio::spawn(async move {
        let config = watcher::Config::default()
            .labels("app.kubernetes.io/managed-by=ingestion-key-operator");
        let stream = watcher(secrets, config).touched_objects();
        futures::pin_mut!(stream);
        while let Some(Ok(secret)) = stream.next().await {
            if wanted.contains(secret.metadata.namespace.as_deref().unwrap_or_default()) {
                let mut o = sink.lock().unwrap();
                o.secret_events += 1;
                if of_batch(secret.metadata.name.as_deref().unwrap_or_default()) {
                    o.batch_events += 1;
                }
            }
        }
    });
    observed
}

async fn event_count(env: &Env, namespaces: &[String]) -> usize {
    events_where(env, namespaces, |_| true).await
}

/// Events (`series` repeats included) about requests whose name passes `wanted`.
async fn events_where(env: &Env, namespaces: &[String], wanted: impl Fn(&str) -> bool) -> usize {
    let mut total = 0;
    for namespace in namespaces {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(env.client.clone(), namespace);
        let events = api.list(&Default::default()).await.map(|l| l.items);
        total += events
            .unwrap_or_default()
            .iter()
            .filter(|e| {
                let regarding = e.regarding.as_ref().and_then(|r| r.name.as_deref());
                wanted(regarding.unwrap_or_default())
            })
            .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1) as usize))
            .sum::<usize>();
    }
    total
}

/// Resource Controller calls the simulator counted (IAM's aside).
fn rc_calls_of(env: &Env) -> u64 {
    env.sim
        .calls()
        .iter()
        .filter(|(k, _)| !k.starts_with("POST /identity"))
        .map(|(_, v)| v)
        .sum()
}

/// Creates request `name` (its Secret `<name>-s`) in `namespace`; returns when it was asked.
async fn create_one(env: &Env, namespace: &str, name: &str) -> Instant {
    let mut object = request_object(0, namespace).remove(0);
    object["metadata"]["name"] = json!(name);
    object["spec"]["secret"]["name"] = json!(format!("{name}-s"));
    let request: IngestionKeyRequest = serde_json::from_value(object).expect("request");
    let api: Api<IngestionKeyRequest> = Api::namespaced(env.client.clone(), namespace);
    let asked = Instant::now();
    api.create(&Default::default(), &request)
        .await
        .expect("create");
    asked
}

/// How many times `operator` logged that its caches of requests and Secrets were complete and
/// under watch (a replica that waits for the lease serves `/readyz` at once: that cannot tell).
fn caches_synced(operator: &support::operator::Operator) -> usize {
    operator.logs().matches("caches synced; ready").count()
}

/// After the new process `operator` (a restart, or the standby after a failover) started at
/// `started` and led from `leading_from`: when it had every request cached and under watch (its
/// log says so for the time after `synced_before`), when the request `name` created meanwhile
/// was Ready, and what it wrote and asked IBM Cloud in its first `refreshInterval` (1m).
#[allow(clippy::too_many_arguments)]
async fn disruption(
    env: &Env,
    operator: &support::operator::Operator,
    synced_before: usize,
    observed: &Arc<Mutex<Observed>>,
    namespaces: &[String],
    name: &str,
    started: Instant,
    leading_from: Instant,
) -> Disruption {
    support::wait_for(
        "the new process's caches",
        Duration::from_secs(600),
        || async { caches_synced(operator) > synced_before },
    )
    .await;
    let cached_after = started.elapsed();
    let key = format!("{}/{name}", namespaces[0]);
    support::wait_for(
        "the request created meanwhile to be Ready",
        Duration::from_secs(600),
        || async { observed.lock().unwrap().ready_at.contains_key(&key) },
    )
    .await;
    let new_request_ready_after = observed.lock().unwrap().ready_at[&key].duration_since(started);
    let interval = Duration::from_secs(60);
    tokio::time::sleep(interval.saturating_sub(leading_from.elapsed())).await;
    let batch_writes = observed.lock().unwrap().batch_events;
    let events = events_where(env, namespaces, of_batch).await as u64;
    let calls = env.sim.calls();
    println!("  IBM calls in the first minute: {calls:?}");
    // The new request's own: its key, and the instance lookup of a process that starts cold.
    let own = 1 + calls
        .get("GET /v2/resource_instances")
        .copied()
        .unwrap_or(0);
    Disruption {
        cached_after,
        new_request_ready_after,
        writes: batch_writes + events,
        ibm_calls: rc_calls_of(env).saturating_sub(own),
    }
}

async fn measure(count: usize, max_rps: u32, refresh_window: Duration) -> Row {
    let cp = support::control_plane();
    let mut namespaces = vec![cp.namespace("bench").await];
    for _ in 1..NAMESPACES {
        namespaces.push(cp.namespace("bench").await);
    }
    let rps = max_rps.to_string();
    let concurrency = env_or("IKO_BENCH_CONCURRENCY", 32u16).to_string();
    let lease_namespace = namespaces[0].clone();
    // With leader election, as the chart runs it (the failover needs a Lease).
    let mut args = vec![
        "--concurrency",
        concurrency.as_str(),
        "--ibm-max-rps",
        rps.as_str(),
        "--leader-elect",
        "--leader-election-namespace",
        lease_namespace.as_str(),
    ];
    for namespace in &namespaces[1..] {
        args.push("--namespace");
        args.push(namespace);
    }
    let env = Env::in_namespace(namespaces[0].clone(), cp.kubeconfig_path(), &args).await;
    for i in 0..UNRELATED_INSTANCES {
        let instance = SeedInstance::new(format!("unrelated-{i}"), "logdna");
        env.sim
            .add_instance(ACCOUNT, instance)
            .expect("unrelated instance");
    }
    for namespace in &namespaces {
        for (name, key) in [("key-a", MANAGER_KEY), ("key-b", READER_KEY)] {
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": namespace}, "stringData": {"apikey": key},
            }))
            .unwrap();
            Api::<Secret>::namespaced(env.client.clone(), namespace)
                .create(&Default::default(), &secret)
                .await
                .expect("API key Secret");
        }
    }
    let observed = observe(&env, &namespaces);
    // Idle, with its caches synced.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle_kib = rss_kib(&env);

    let baseline_served = apiserver_served(&env);
    let baseline_before = kubectl_apply(
        cp,
        &manifest(&namespaces, count, |i, ns| baseline_objects("b", i, ns)),
    );
    print_served(
        &format!("{count} baseline objects"),
        &baseline_served,
        &apiserver_served(&env),
    );
    // The floor: the same requests applied where no operator watches, so the API server's own
    // cost of the custom resources shows apart from the operator's work.
    let unwatched = [cp.namespace("bench-floor").await];
    let floor = kubectl_apply(cp, &manifest(&unwatched, count, request_object));
    println!(
        "{count} requests in a namespace no operator watches: kubectl apply took {:.1} s",
        floor.as_secs_f64()
    );
    env.sim.reset_calls();
    let events_before = event_count(&env, &namespaces).await;
    let requests = manifest(&namespaces, count, request_object);
    let (operator_before, servers_before) = (cpu_ticks(&env), control_plane_ticks());
    let served_before = apiserver_served(&env);
    let started = Instant::now();
    let applied = kubectl_apply(cp, &requests);
    support::wait_for(
        &format!("{count} requests to be Ready"),
        Duration::from_secs(1800),
        || async { observed.lock().unwrap().ready_at.len() >= count },
    )
    .await;
    let all_ready = {
        let o = observed.lock().unwrap();
        o.ready_at
            .values()
            .max()
            .map(|t| t.duration_since(started))
            .unwrap_or_default()
    };
    let batch_cpu = (
        (cpu_ticks(&env) - operator_before) as f64 / 100.0,
        (control_plane_ticks() - servers_before) as f64 / 100.0,
    );
    println!(
        "{count} requests: kubectl apply returned after {:.1} s, the last Ready after {:.1} s",
        applied.as_secs_f64(),
        all_ready.as_secs_f64()
    );
    print_served(
        &format!("{count} requests"),
        &served_before,
        &apiserver_served(&env),
    );
    println!(
        "{count} requests: CPU seconds while the batch ran: operator {:.1}, etcd + kube-apiserver + kube-controller-manager {:.1} (2 cores: {:.1} available)",
        batch_cpu.0,
        batch_cpu.1,
        all_ready.as_secs_f64() * 2.0
    );
    // Let the last status writes land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = env.sim.calls();
    let tokens = calls.get("POST /identity/token").copied().unwrap_or(0);
    let rc_calls: u64 = calls
        .iter()
        .filter(|(k, _)| !k.starts_with("POST /identity"))
        .map(|(_, v)| v)
        .sum();
    let (request_events, secret_events) = {
        let o = observed.lock().unwrap();
        (o.request_events, o.secret_events)
    };
    let events = event_count(&env, &namespaces).await - events_before;
    let rss_loaded_kib = rss_kib(&env);
    println!("{count} requests: IBM calls by endpoint: {calls:?}");

    // Single requests, apply -> Ready seen by the watch.
    let mut latencies = Vec::new();
    for i in 0..SINGLE_SAMPLES {
        let name = format!("single{i}");
        let mut object = request_object(i, &namespaces[0]).remove(0);
        object["metadata"]["name"] = json!(name);
        object["spec"]["secret"]["name"] = json!(format!("single-s{i}"));
        let key = format!("{}/{name}", namespaces[0]);
        let request: IngestionKeyRequest = serde_json::from_value(object).expect("request");
        let api: Api<IngestionKeyRequest> = Api::namespaced(env.client.clone(), &namespaces[0]);
        // The create call, not a kubectl process: what is measured is the operator's cost.
        let started = Instant::now();
        api.create(&Default::default(), &request)
            .await
            .expect("create");
        support::wait_for(
            "a single request to be Ready",
            Duration::from_secs(60),
            || async { observed.lock().unwrap().ready_at.contains_key(&key) },
        )
        .await;
        let ready = observed.lock().unwrap().ready_at[&key];
        latencies.push(ready.duration_since(started));
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p90 = latencies[latencies.len() * 9 / 10];

    // The refresh: every request in sync, refreshInterval 1m.
    tokio::time::sleep(Duration::from_secs(30)).await;
    env.sim.reset_calls();
    let cpu_before = cpu_ticks(&env);
    let window_started = Instant::now();
    tokio::time::sleep(refresh_window).await;
    let window = window_started.elapsed();
    let cpu = cpu_ticks(&env) - cpu_before;
    let refresh_calls: u64 = env
        .sim
        .calls()
        .iter()
        .filter(|(k, _)| !k.starts_with("POST /identity"))
        .map(|(_, v)| v)
        .sum();
    let refresh_calls_per_minute = refresh_calls as f64 / window.as_secs_f64() * 60.0;
    let rss_steady_kib = rss_kib(&env);
    let rss_peak_kib = proc_status_kib(&env, "VmHWM:");
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let refresh_cpu_percent = cpu as f64 / ticks_per_second / window.as_secs_f64() * 100.0;
    assert_eq!(tokens, 2, "one token exchange per distinct API key");

    let (mut restart, mut failover) = (None, None);
    if count >= env_or("IKO_BENCH_RESTART_FROM", 5000usize) {
        let mut env = env;
        // Restart: SIGTERM, a request created while no operator runs, start again.
        env.operator.stop();
        let before = observed.lock().unwrap().batch_events;
        let events_before = events_where(&env, &namespaces, of_batch).await as u64;
        create_one(&env, &namespaces[0], "during-restart").await;
        env.sim.reset_calls();
        let synced_before = caches_synced(&env.operator);
        let started = Instant::now();
        env.operator.start_again();
        let mut figures = disruption(
            &env,
            &env.operator,
            synced_before,
            &observed,
            &namespaces,
            "during-restart",
            started,
            started,
        )
        .await;
        figures.writes -= before + events_before;
        println!(
            "{count} requests, restart: {} writes, {} IBM calls in the first minute; cached after {:.1} s; a request created meanwhile Ready after {:.1} s",
            figures.writes,
            figures.ibm_calls,
            figures.cached_after.as_secs_f64(),
            figures.new_request_ready_after.as_secs_f64()
        );
        restart = Some(figures);

        // Failover: a standby, ready; the leader SIGKILLed; a request created at once.
        let standby = env.replica(&args);
        let standby_ready = format!("http://{}/readyz", standby.admin);
        let http = reqwest::Client::new();
        support::wait_for(
            "the standby to be ready",
            Duration::from_secs(600),
            || async {
                http.get(&standby_ready)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
        let before = observed.lock().unwrap().batch_events;
        let events_before = events_where(&env, &namespaces, of_batch).await as u64;
        env.sim.reset_calls();
        let killed = Instant::now();
        env.operator.kill9();
        create_one(&env, &namespaces[0], "during-failover").await;
        support::wait_for("the standby to lead", Duration::from_secs(120), || {
            standby.is_leader()
        })
        .await;
        let leading = killed.elapsed();
        let led_at = Instant::now();
        let mut figures = disruption(
            &env,
            &standby,
            0,
            &observed,
            &namespaces,
            "during-failover",
            killed,
            led_at,
        )
        .await;
        figures.writes -= before + events_before;
        println!(
            "{count} requests, failover: {} writes, {} IBM calls in the first minute; the standby led {:.1} s after the kill, had every request cached {:.1} s after the kill; a request created then Ready after {:.1} s",
            figures.writes,
            figures.ibm_calls,
            leading.as_secs_f64(),
            figures.cached_after.as_secs_f64(),
            figures.new_request_ready_after.as_secs_f64()
        );
        failover = Some(figures);
        drop(standby);
    }
    // Last, so that its objects (Secrets the operator watches) weigh on no other figure.
    let baseline_after = kubectl_apply(
        cp,
        &manifest(&namespaces, count, |i, ns| baseline_objects("c", i, ns)),
    );
    println!(
        "{count} requests: the baseline took {:.1} s before the batch, {:.1} s at the end of the run",
        baseline_before.as_secs_f64(),
        baseline_after.as_secs_f64()
    );
    Row {
        requests: count,
        all_ready,
        baseline: (baseline_before, baseline_after),
        floor,
        rc_calls,
        tokens,
        request_writes: request_events as f64 / count as f64,
        secret_writes: secret_events as f64 / count as f64,
        events: events as f64 / count as f64,
        rss_idle_kib,
        rss_loaded_kib,
        rss_steady_kib,
        rss_peak_kib,
        p50,
        p90,
        refresh_calls_per_minute,
        refresh_cpu_percent,
        batch_cpu,
        restart,
        failover,
    }
}

fn proc_field(env: &Env, file: &str) -> Option<String> {
    let pid = env.operator.pid()?;
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()
}

fn rss_kib(env: &Env) -> u64 {
    proc_status_kib(env, "VmRSS:")
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS:`, `VmHWM:`).
fn proc_status_kib(env: &Env, field: &str) -> u64 {
    proc_field(env, "status")
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// utime + stime of the operator, in clock ticks.
fn cpu_ticks(env: &Env) -> u64 {
    env.operator.pid().map_or(0, pid_cpu_ticks)
}

/// What the API server served, by verb and resource: (requests, seconds spent), from its own
/// `apiserver_request_duration_seconds` (watches left out: they last as long as the client).
fn apiserver_served(env: &Env) -> BTreeMap<String, (f64, f64)> {
    let out = env
        .cp
        .kubectl()
        .args(["get", "--raw", "/metrics"])
        .output()
        .expect("kubectl get --raw /metrics");
    let mut served = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_duration_seconds_") else {
            continue;
        };
        let (which, rest) = match rest.split_once('{') {
            Some((w @ ("sum" | "count"), r)) => (w, r),
            _ => continue,
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let verb = label("verb");
        if verb == "WATCH" || verb == "CONNECT" {
            continue;
        }
        let subresource = label("subresource");
        let key = format!(
            "{verb} {}{}{}",
            label("resource"),
            if subresource.is_empty() { "" } else { "/" },
            subresource
        );
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        let entry = served.entry(key).or_insert((0.0, 0.0));
        if which == "count" {
            entry.0 += value;
        } else {
            entry.1 += value;
        }
    }
    served
}

/// The API server's work during the batch, by verb and resource, the costliest first.
fn print_served(
    label: &str,
    before: &BTreeMap<String, (f64, f64)>,
    after: &BTreeMap<String, (f64, f64)>,
) {
    let mut rows: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(key, (n, secs))| {
            let (n0, s0) = before.get(key).copied().unwrap_or_default();
            (key.clone(), n - n0, secs - s0)
        })
        .filter(|(_, n, _)| *n >= 1.0)
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let total: f64 = rows.iter().map(|r| r.2).sum();
    println!("{label}: the API server served, watches aside ({total:.1} request-seconds):");
    for (key, n, secs) in rows.iter().take(12) {
        println!(
            "  {key:<48} {n:>7.0} requests {secs:>7.2} s ({:.1} ms each)",
            secs / n * 1000.0
        );
    }
}

/// CPU ticks of the control plane's servers (etcd, kube-apiserver, ...).
fn control_plane_ticks() -> u64 {
    support::control_plane()
        .servers()
        .iter()
        .map(|s| pid_cpu_ticks(s.pid))
        .sum()
}

fn pid_cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            // After the command: state is field 3; utime and stime are fields 14 and 15.
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .unwrap_or(0);
    format!("{cpus} CPUs ({model}), {} GiB RAM", memory / 1024 / 1024)
}

/// docs/performance.md: the tables of this run, what is measured elsewhere, and how to read them.
fn document(table: &str) -> String {
    let sections = [
        "# Performance\n\nWritten by `make bench` (`benches/scale.rs`, release build); run it again to refresh the figures. \
Targets and what they mean: the issues \"Cost that grows linearly\" and \"Cost round two\".",
        &format!("## Figures\n\n{table}"),
        "## Writes per new request\n\n\
A new request costs 4 writes after its own creation: one metadata patch of the request that adds the finalizer and \
announces the key creation (the annotation `keysync.dev/key-creation`: name, instance, start time), written before IBM \
Cloud is asked; the Secret; the status with the key, the fingerprint and Ready (which also records, in \
`status.lastKeyCreation`, that the announced creation is done); and one Event, `ResourceKeyCreated`, naming the key \
(name, GUID, role, instance), the Secret it went to and the credential's fingerprint. Before: 6 (the finalizer in a \
write of its own, the pending record in a status write of its own, and an Event per object). What an admin still sees: \
the Event (what key, which Secret, when), the status (the key, the Secret, `lastSyncTime`), and the annotation \
(the last creation started). A crash between the announcement and the status write is found exactly as before: the \
announced name is looked up (`tests/faults`, the soak, and the SIGKILL tests of `tests/cluster/controller.rs`). \
The API key Secret's hold (a finalizer) is one more write, once per API key Secret, not per request. \
`tests/cluster/writes.rs` and the unit test `a_first_sync_costs_these_writes_and_no_more` assert these counts.",
        "## Time\n\n\
The batch and the baseline run on the same 2 cores as etcd and kube-apiserver, and the CPU column shows where the \
time goes: the control plane's servers. The baseline is 2 writes per pair of objects; a request is its creation plus \
4 writes (a metadata patch, a Secret, a status patch, an Event), and a custom resource's creation and patches cost \
the API server more than a ConfigMap's (schema validation, defaulting, conversion to and from JSON). \
The bench prints what the API server served during the batch, by verb and resource, from its own \
`apiserver_request_duration_seconds`. With 1000 requests, before this round's last change: 5112 `GET secrets` (5.1 \
per request, 14.4 of 46.5 request-seconds, the largest item), because every reconcile read the API key Secret and \
the agents' Secret again, and each request is reconciled two or three times (its own writes come back as watch \
events). Now an API key Secret already read, and the agents' Secret as the operator wrote it, are used again while \
the watch on Secrets reports no other version of them (`reconciler/api_key_cache.rs`, `Context::secret_unchanged`): \
1015 `GET secrets` (the one read of the agents' Secret before a key is created), 31.1 request-seconds in all. \
What is left is the writes themselves and kubectl's own reads (a GET of the object and of its namespace per \
object, in the baseline too); `kubectl apply` of the requests returns when the last one is Ready, so the operator \
keeps pace with the creations and the ratio is that of two `kubectl apply` runs on a shared API server. \
The column \"the requests with no operator\" applies the same N requests in a namespace no operator watches: the \
API server's own cost of the custom resources against the baseline's core objects; what the batch takes beyond it \
is the operator's work (its 4 writes and 1 read per request, on the same 2 cores). \
`tests/cluster/controller.rs::a_corrected_api_key_is_used_at_once`, \
`tests/cluster/security.rs::withdrawing_the_opt_in_stops_the_next_sync` and `drift_is_repaired_at_once` fail if \
a kept read outlives a change. At the default \
budget (`--ibm-max-rps 10`) the IBM Cloud calls bound a burst instead: N new requests take about N / 10 seconds \
(1000 in about 100 s, 10,000 in about 17 minutes), whatever the cluster.",
        "## Restart and failover\n\n\
A process that has not synced a request yet (after a restart, or a standby that took over) finds a request in sync \
from its status and its Secret alone: no IBM Cloud call and no write. An in-sync refresh writes nothing, so the \
status does not tell when the last refresh ran; rather than re-reading every key at once, such a request's next \
refresh lands at a point of one `refreshInterval` fixed by its UID (between 5% and 100% of it), so the calls of the \
first interval after a restart are spread as an undisturbed operator's are. An API key changed while no operator ran \
is checked at that refresh. The second table above gives the figures of this run; \
`tests/faults/lease.rs` (`a_failover_reads_no_key_again_and_writes_nothing`) asserts the counts: 0 key reads and no \
changed resourceVersion on any request or Secret.",
        "## Memory: where it goes\n\n\
Measured with heaptrack (Debian's `heaptrack`, the operator started through `IKO_OPERATOR_BIN`) at 1000 requests, \
live heap at the end of the run, by the call stacks that allocated it. Before this round: about 7 MiB live while the \
resident size (VmRSS) grew by 30 KiB per request: most of the resident memory was not live data but memory the \
allocator kept after the burst (glibc makes one arena per thread that meets contention and returns memory to the \
kernel only from the top of each heap). Now the operator limits glibc to two arenas and calls `malloc_trim` every \
10 s (`src/memory.rs`), so the resident size follows the live heap. Per part, live at 1000 requests, before -> after: \
MEMORY_TABLE",
        "## Watching API key Secrets at scale\n\n\
API key Secrets are watched as metadata only. An event on one of them is mapped to the requests that name it through \
an index from (namespace, Secret name) to requests, kept from the requests' watch (`reconciler/api_key_index.rs`; a \
relist builds a new index and swaps it in when the list is complete). Before, each event cloned the whole request \
cache and compared every request: with 50,000 Secrets and 5,000 requests, a relist cost 250 million comparisons; now \
it costs 50,000 lookups. Per-request memory in the context is keyed by UID and goes with the request.",
        "## How to read them\n\n\
- **IBM calls.** A new request costs one `POST /v2/resource_keys`. The instance lookup (by name) and the IAM token are shared: \
cached per API key and selector (`--instance-cache-ttl`, default 5m) and per API key. Nothing lists the instance's keys: a request \
that never started a creation cannot have a key of its UID-bearing default name, and after a crash the announced creation names the \
key to look up with `GET /v2/resource_keys?name=`. A refresh reads the recorded key (`GET /v2/resource_keys/{id}`): one call. \
When a batch lasts longer than `refreshInterval`, the refreshes that fall inside it are counted too; the creations are exactly one per request (`POST /v2/resource_keys` = N).\n\
- **Writes.** \"writes per request\" counts watch events: on the request its creation by `kubectl apply` is one of them.\n\
- **Memory.** VmRSS of the operator (a glibc build, like `cargo run`; the image is a static glibc build, with the same \
allocator settings). \"all Ready\" is sampled 2 s after the last request became Ready, \"steady\" after the refresh \
window, \"peak\" is the high-water mark (VmHWM) of the whole run: size a memory limit from it. The requests' cache keeps no \
managedFields and no `kubectl.kubernetes.io/last-applied-configuration`; only Warning events keep a recorder.",
    ];
    let mut out = sections.join("\n\n");
    out = out.replace("MEMORY_TABLE", MEMORY_BY_PART);
    out.push('\n');
    out
}

/// The heaptrack measurement of \"Memory: where it goes\" (not made by this bench: heaptrack
/// slows the operator down too much for the timings).
const MEMORY_BY_PART: &str = "\
| part | before | after |
|---|---|---|
| the requests' cache (the reflector's copies) | 1.9 MiB | 1.9 MiB |
| objects decoded from the watches, held on kube-runtime's trigger path | 1.8 MiB | 1.8 MiB |
| kube-runtime's scheduler (one queued refresh per request) | 0.6 MiB | 0.6 MiB |
| the API key index | 0.6 MiB | 0.5 MiB (name and namespace only) |
| the per-request memory of the context (API key, last sync, back-off) | 0.7 MiB | 0.3 MiB (the rare refusal boxed) |
| HTTP connections' buffers, TLS roots, the runtime, the rest | 0.9 MiB | 2.1 MiB (buffers in use at the snapshot) |
| **live heap** | **6.2 MiB** | **7.2 MiB** |
| peak heap during the burst | 16.3 MiB | 15.9 MiB |
| peak RSS under heaptrack | 58.5 MiB | 45.5 MiB |

The live data is about 6 KiB per request either way; what changed is what the allocator keeps \
after the burst (the table above: RSS per request).";

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

fn table(rows: &[Row], max_rps: u32, refresh_window: Duration) -> String {
    let concurrency: u16 = env_or("IKO_BENCH_CONCURRENCY", 32);
    let mut out = String::new();
    out.push_str("| requests | all Ready after | CPU s during the batch: operator / control plane | baseline (N Secrets + N ConfigMaps): before the batch / at the end | ratio (to their mean) | the requests with no operator: time, ratio | Resource Controller calls | per request | IAM token exchanges | writes per request (request / Secret / events) | create -> Ready p50 / p90 | RSS idle -> all Ready -> steady, peak (MiB) | RSS per request: all Ready / steady | refresh: RC calls per minute | refresh: operator CPU |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let per_request = |kib: u64| kib.saturating_sub(r.rss_idle_kib) as f64 / r.requests as f64;
        out.push_str(&format!(
            "| {} | {:.1} s | {:.1} / {:.1} | {:.1} s / {:.1} s | {:.2} | {:.1} s, {:.2} | {} | {:.3} | {} | {:.2} / {:.2} / {:.2} | {:.0} ms / {:.0} ms | {} -> {} -> {}, {} | {:.1} / {:.1} KiB | {:.0} | {:.1} % of one core |\n",
            r.requests,
            r.all_ready.as_secs_f64(),
            r.batch_cpu.0,
            r.batch_cpu.1,
            r.baseline.0.as_secs_f64(),
            r.baseline.1.as_secs_f64(),
            r.all_ready.as_secs_f64() / ((r.baseline.0 + r.baseline.1).as_secs_f64() / 2.0),
            r.floor.as_secs_f64(),
            r.floor.as_secs_f64() / ((r.baseline.0 + r.baseline.1).as_secs_f64() / 2.0),
            r.rc_calls,
            r.rc_calls as f64 / r.requests as f64,
            r.tokens,
            r.request_writes,
            r.secret_writes,
            r.events,
            r.p50.as_secs_f64() * 1000.0,
            r.p90.as_secs_f64() * 1000.0,
            mib(r.rss_idle_kib),
            mib(r.rss_loaded_kib),
            mib(r.rss_steady_kib),
            mib(r.rss_peak_kib),
            per_request(r.rss_loaded_kib),
            per_request(r.rss_steady_kib),
            r.refresh_calls_per_minute,
            r.refresh_cpu_percent,
        ));
    }
    out.push_str(&format!(
        "\nMachine: {}. Operator: `--concurrency {concurrency} --ibm-max-rps {max_rps}` (the default budget is 10/s; the call counts hold under any budget). Each run: {NAMESPACES} namespaces, 2 API keys, {UNRELATED_INSTANCES} unrelated instances in the simulator, `refreshInterval: 1m`. \"writes per request\": watch events on the requests (creation included) and on the operator's Secrets, and Events, per request of the batch. Latency: {SINGLE_SAMPLES} single requests created one at a time (API create call to Ready seen by a watch). Refresh: RC calls and operator CPU over {}s once every request was in sync.\n",
        machine(),
        refresh_window.as_secs()
    ));
    let disrupted: Vec<&Row> = rows.iter().filter(|r| r.restart.is_some()).collect();
    if !disrupted.is_empty() {
        out.push_str("\n| requests | | every request in cache and under watch after | a request created meanwhile Ready after | writes to the batch's requests, Secrets and their Events in the first minute | RC calls in the first minute (undisturbed: per minute above) |\n|---|---|---|---|---|---|\n");
        for r in disrupted {
            for (what, d) in [("restart", &r.restart), ("failover", &r.failover)] {
                if let Some(d) = d {
                    out.push_str(&format!(
                        "| {} | {what} | {:.1} s | {:.1} s | {} | {} |\n",
                        r.requests,
                        d.cached_after.as_secs_f64(),
                        d.new_request_ready_after.as_secs_f64(),
                        d.writes,
                        d.ibm_calls,
                    ));
                }
            }
        }
        out.push_str("\nRestart: SIGTERM, one request created while no operator runs, the same binary started again; times from its start. Failover: a standby replica (ready, not leading) and the leader SIGKILLed, one request created at once; times from the kill (the Lease expires after 10 s). \"In cache and under watch\": the new leader logged `caches synced; ready` (every watch listed; a replica waiting for the Lease serves `/readyz` at once, so that cannot tell). IBM calls exclude the new request's own (its key, and the instance lookup of a cold process).\n");
    }
    out
}
