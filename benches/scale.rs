//! Scale benchmark: N requests sharing 2 API keys, against the real API server and the simulator.
//! Prints figures (time to all Ready, IBM calls, token exchanges, reconcile latency, operator
//! memory); asserts nothing about time, only the promise of "one token exchange per API key" (README).
//!
//! `make bench` (or `cargo bench --bench scale`); `IKO_BENCH_REQUESTS` sets N (default 200).

#[path = "../tests/fixtures/mod.rs"]
mod fixtures;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use fixtures::{Env, MANAGER_KEY, READER_KEY, ready_reason};
use kube::api::ListParams;
use serde_json::json;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let count: usize = std::env::var("IKO_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let env = Env::with_operator_args("bench", &["--concurrency", "32"]).await;
    env.api_key_secret("key-a", MANAGER_KEY).await;
    env.api_key_secret("key-b", READER_KEY).await;
    env.sim.reset_calls();

    let started = Instant::now();
    for i in 0..count {
        let spec = if i % 2 == 0 {
            json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "key-a"}, "secret": {"name": format!("s{i}")}})
        } else {
            json!({"instance": {"name": "my-cloud-logs"}, "apiKeySecretRef": {"name": "key-b"},
                   "resourceKey": {"role": "Reader", "credentialField": "apikey"}, "secret": {"name": format!("s{i}")}})
        };
        env.create_request(&format!("r{i}"), spec).await;
    }
    let created = started.elapsed();
    let requests = env.requests();
    support::wait_for(
        &format!("{count} requests to be Ready"),
        Duration::from_secs(600),
        || async {
            let list = requests
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            list.iter()
                .filter(|r| ready_reason(r).as_deref() == Some("KeySynced"))
                .count()
                == count
        },
    )
    .await;
    let all_ready = started.elapsed();

    let calls = env.sim.calls();
    let total_calls: u64 = calls
        .iter()
        .filter(|(k, _)| !k.starts_with("POST /identity"))
        .map(|(_, v)| v)
        .sum();
    let tokens = calls.get("POST /identity/token").copied().unwrap_or(0);
    let metrics = env.operator.metrics().await;
    let rss_kib = operator_rss_kib(&env);

    println!("requests:                      {count} (2 API keys)");
    println!(
        "created in:                    {:.2}s",
        created.as_secs_f64()
    );
    println!(
        "all Ready after:               {:.2}s ({:.1} requests/s)",
        all_ready.as_secs_f64(),
        count as f64 / all_ready.as_secs_f64()
    );
    println!("IAM token exchanges:           {tokens}");
    println!(
        "Resource Controller calls:     {total_calls} ({:.2} per request)",
        total_calls as f64 / count as f64
    );
    for (endpoint, n) in &calls {
        println!("  {endpoint:<48} {n}");
    }
    if let Some(line) = metrics
        .lines()
        .find(|l| l.starts_with("ingestion_key_operator_reconcile_duration_seconds_sum"))
    {
        println!("reconcile duration {line}");
    }
    if let Some(line) = metrics
        .lines()
        .find(|l| l.starts_with("ingestion_key_operator_reconcile_duration_seconds_count"))
    {
        println!("reconcile duration {line}");
    }
    println!("operator RSS:                  {} MiB", rss_kib / 1024);
    assert_eq!(tokens, 2, "one token exchange per distinct API key");
    for i in 0..count {
        env.secret_value(&format!("s{i}"), "logdna-agent-key").await; // remembered for the leak check
    }
    env.finish().await;
}

fn operator_rss_kib(env: &Env) -> u64 {
    let Some(pid) = env.operator.pid() else {
        return 0;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}
