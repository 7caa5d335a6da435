//! Scale benchmark: N requests in one `kubectl apply`, over 4 namespaces and 2 API keys, against
//! the real API server and an IBM Cloud simulator that also holds 250 unrelated instances. For
//! each N it prints one row of figures: time to all Ready (seen by a watch) against a baseline of
//! the same run (N Secrets + N ConfigMaps in one `kubectl apply`), Resource Controller calls per
//! request, Kubernetes writes per request, operator RSS, apply -> Ready latency of single
//! requests, and the refresh at `refreshInterval: 1m` (IBM calls per minute, operator CPU).
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

/// One row of the table.
struct Row {
    requests: usize,
    all_ready: Duration,
    baseline: Duration,
    rc_calls: u64,
    tokens: u64,
    request_writes: f64,
    secret_writes: f64,
    events: f64,
    rss_idle_kib: u64,
    rss_loaded_kib: u64,
    /// After the refresh window: the steady state with every request in sync.
    rss_steady_kib: u64,
    p50: Duration,
    p90: Duration,
    refresh_calls_per_minute: f64,
    refresh_cpu_percent: f64,
    /// CPU seconds while the batch ran: the operator, and the control plane's servers.
    batch_cpu: (f64, f64),
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

fn kubectl_apply(env: &Env, manifest: &str) -> Duration {
    let started = Instant::now();
    let mut child = env
        .cp
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

fn baseline_objects(i: usize, namespace: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("b{i}"), "namespace": namespace},
               "stringData": {"logdna-agent-key": format!("value-{i}")}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("b{i}"), "namespace": namespace},
               "data": {"k": format!("value-{i}")}}),
    ]
}

/// Counts watch events on the requests and on the operator's Secrets (each one a write), and
/// when each request first became Ready.
#[derive(Default)]
struct Observed {
    request_events: u64,
    secret_events: u64,
    ready_at: BTreeMap<String, Instant>,
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
                sink.lock().unwrap().secret_events += 1;
            }
        }
    });
    observed
}

async fn event_count(env: &Env, namespaces: &[String]) -> usize {
    let mut total = 0;
    for namespace in namespaces {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(env.client.clone(), namespace);
        total += api
            .list(&Default::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
    }
    total
}

async fn measure(count: usize, max_rps: u32, refresh_window: Duration) -> Row {
    let cp = support::control_plane();
    let mut namespaces = vec![cp.namespace("bench").await];
    for _ in 1..NAMESPACES {
        namespaces.push(cp.namespace("bench").await);
    }
    let rps = max_rps.to_string();
    let concurrency = env_or("IKO_BENCH_CONCURRENCY", 32u16).to_string();
    let mut args = vec![
        "--concurrency",
        concurrency.as_str(),
        "--ibm-max-rps",
        rps.as_str(),
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

    let baseline = kubectl_apply(&env, &manifest(&namespaces, count, baseline_objects));
    env.sim.reset_calls();
    let events_before = event_count(&env, &namespaces).await;
    let requests = manifest(&namespaces, count, request_object);
    let (operator_before, servers_before) = (cpu_ticks(&env), control_plane_ticks());
    let started = Instant::now();
    kubectl_apply(&env, &requests);
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
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let refresh_cpu_percent = cpu as f64 / ticks_per_second / window.as_secs_f64() * 100.0;
    assert_eq!(tokens, 2, "one token exchange per distinct API key");
    Row {
        requests: count,
        all_ready,
        baseline,
        rc_calls,
        tokens,
        request_writes: request_events as f64 / count as f64,
        secret_writes: secret_events as f64 / count as f64,
        events: events as f64 / count as f64,
        rss_idle_kib,
        rss_loaded_kib,
        rss_steady_kib,
        p50,
        p90,
        refresh_calls_per_minute,
        refresh_cpu_percent,
        batch_cpu,
    }
}

fn proc_field(env: &Env, file: &str) -> Option<String> {
    let pid = env.operator.pid()?;
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()
}

fn rss_kib(env: &Env) -> u64 {
    proc_field(env, "status")
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// utime + stime of the operator, in clock ticks.
fn cpu_ticks(env: &Env) -> u64 {
    env.operator.pid().map_or(0, pid_cpu_ticks)
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

/// docs/performance.md: the table of this run, and how to read it.
fn document(table: &str) -> String {
    format!(
        "# Performance\n\nWritten by `make bench` (`benches/scale.rs`, release build); run it again to refresh the figures. \
Targets and what they mean: the issue \"Cost that grows linearly\".\n\n## Figures\n\n{table}\n## How to read them\n\n\
- **IBM calls.** A new request costs one `POST /v2/resource_keys`. The instance lookup (by name) and the IAM token are shared: \
cached per API key and selector (`--instance-cache-ttl`, default 5m) and per API key. Nothing lists the instance's keys: a request \
that never started a creation cannot have a key of its UID-bearing default name, and after a crash the pending record names the \
key to look up with `GET /v2/resource_keys?name=`. A refresh reads the recorded key (`GET /v2/resource_keys/{{id}}`): one call. \
When a batch lasts longer than `refreshInterval` (5000 requests here), the refreshes that fall inside it are counted too; the creations are exactly one per request (`POST /v2/resource_keys` = N).\n\
- **Writes.** A new request causes 3 writes to itself (finalizer, pending creation before the POST, Ready with the recorded key), \
1 Secret create and 2 Events (`ResourceKeyCreated`, `SecretCreated`). The request's creation by `kubectl apply` is the fourth \
watch event counted. Crash safety needs the pending record before the POST; the key is recorded in the final status write, since \
the pending record finds it after a crash. An in-sync refresh writes nothing.\n\
- **Time.** The batch runs on the same 2 cores as etcd and kube-apiserver. The CPU column shows where the time goes: the control \
plane's servers do most of the work (about 6 writes per request, against 2 per pair of baseline objects), the operator little.\n\
- **Memory.** Measured as VmRSS of the operator (a glibc build, like `cargo run`; the image is a static musl build with its own \
allocator). The requests' cache keeps no managedFields and no `kubectl.kubernetes.io/last-applied-configuration`: together \
they were about 7 KiB per request. Only Warning events keep a recorder (kube's Recorder caches the last Event it sent, for \
series); one kept for every Normal event cost about 13 KiB per request. The rest is the cached request, the requeue queue, and \
the allocator's high-water mark after the burst (`MALLOC_ARENA_MAX=2` lowers it by about 5 MiB at 1000 requests).\n"
    )
}

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

fn table(rows: &[Row], max_rps: u32, refresh_window: Duration) -> String {
    let concurrency: u16 = env_or("IKO_BENCH_CONCURRENCY", 32);
    let mut out = String::new();
    out.push_str("| requests | all Ready after | CPU s during the batch: operator / control plane | baseline (N Secrets + N ConfigMaps) | ratio | Resource Controller calls | per request | IAM token exchanges | writes per request (request / Secret / events) | create -> Ready p50 / p90 | RSS idle -> all Ready -> steady (MiB) | RSS per request (all Ready) | refresh: RC calls per minute | refresh: operator CPU |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let slope = (r.rss_loaded_kib.saturating_sub(r.rss_idle_kib)) as f64 / r.requests as f64;
        out.push_str(&format!(
            "| {} | {:.1} s | {:.1} / {:.1} | {:.1} s | {:.2} | {} | {:.3} | {} | {:.2} / {:.2} / {:.2} | {:.0} ms / {:.0} ms | {} -> {} -> {} | {:.1} KiB | {:.0} | {:.1} % of one core |\n",
            r.requests,
            r.all_ready.as_secs_f64(),
            r.batch_cpu.0,
            r.batch_cpu.1,
            r.baseline.as_secs_f64(),
            r.all_ready.as_secs_f64() / r.baseline.as_secs_f64(),
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
            slope,
            r.refresh_calls_per_minute,
            r.refresh_cpu_percent,
        ));
    }
    out.push_str(&format!(
        "\nMachine: {}. Operator: `--concurrency {concurrency} --ibm-max-rps {max_rps}` (the default budget is 10/s; the call counts hold under any budget). Each run: {NAMESPACES} namespaces, 2 API keys, {UNRELATED_INSTANCES} unrelated instances in the simulator, `refreshInterval: 1m`. \"writes per request\": watch events on the requests (creation included) and on the operator's Secrets, and Events, per request of the batch. Latency: {SINGLE_SAMPLES} single requests created one at a time (API create call to Ready seen by a watch). Refresh: RC calls and operator CPU over {}s once every request was in sync.\n",
        machine(),
        refresh_window.as_secs()
    ));
    out
}
