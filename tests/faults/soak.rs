//! The soak: two replicas with leader election serve 300 requests over 3 namespaces and 2 API
//! keys while rotations are asked for every few seconds, restart targets roll, IBM Cloud is slow,
//! fails 5% of calls and has a burst of 429s, and one replica or the other is SIGKILLed every
//! 5 to 20 s. It runs `SOAK_SECONDS` (default 30; `make soak` runs 300) and then checks that
//! nothing was lost or duplicated, printing the figures.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ibm_cloud_sim::{Faults, RateLimit, SimSecret, Simulator};
use ingestion_key_operator::crd::{IngestionKeyRequest, MANAGED_BY_LABEL, ROTATE_ANNOTATION};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use test_support::env::{Env, MANAGER_KEY, Operator, SECOND_MANAGER_KEY, ready_reason};
use test_support::workloads::{agent_daemonset, complete_rollout};
use test_support::{self as support, wait_for};

const REQUESTS: usize = 300;
/// The data key of every request's Secret (as IBM Cloud Logs agents read it).
const DATA_KEY: &str = "IAM_API_KEY";

fn soak_time() -> Duration {
    let seconds = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(seconds)
}

/// IBM Cloud as the soak has it: slow, and failing 5% of calls with 500.
fn bad_weather() -> Faults {
    Faults {
        error_rate: 0.05,
        error_status: 500,
        latency_ms: 200,
        ..Faults::default()
    }
}

/// A small xorshift generator: the soak's choices, reproducible from the seed it prints.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn seconds_between(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low * 1000 + self.below((high - low) * 1000))
    }
}

/// The spec of request `name`, the `i`th: API key a or b by turns; one in ten restarts an agent
/// DaemonSet of its own (`agent-<name>`) when its credential changes.
fn request_spec(i: usize, name: &str) -> serde_json::Value {
    let mut spec = json!({
        "instance": {"name": "my-cloud-logs"},
        "apiKeySecretRef": {"name": if i.is_multiple_of(2) { "key-a" } else { "key-b" }},
        "resourceKey": {"role": "Sender", "credentialField": "apikey"},
        "secret": {"name": format!("{name}-key"), "key": DATA_KEY},
        "rotation": {"gracePeriod": "2s"},
    });
    if i.is_multiple_of(10) {
        spec["restartTargets"] = json!([{"kind": "DaemonSet", "name": format!("agent-{name}")}]);
    }
    spec
}

/// What the background tasks counted.
#[derive(Default)]
struct Tally {
    rotations_asked: AtomicU64,
    rollouts_played: AtomicU64,
    samples: AtomicU64,
    /// Secrets seen holding the credential of a key already deleted.
    violations: std::sync::Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_replicas_with_rotations_faults_and_random_kills() {
    let soak = soak_time();
    let cp = support::control_plane();
    let mut namespaces = Vec::new();
    for prefix in ["soak-a", "soak-b", "soak-c"] {
        namespaces.push(cp.namespace(prefix).await);
    }
    let mut args: Vec<String> = [
        "--leader-elect",
        "--leader-election-namespace",
        &namespaces[0],
        "--ibm-max-rps",
        "50",
    ]
    .map(String::from)
    .to_vec();
    for ns in &namespaces[1..] {
        args.extend(["--namespace".to_owned(), ns.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = Env::on(
        cp,
        namespaces[0].clone(),
        cp.kubeconfig_path(),
        &args,
        None,
        None,
    )
    .await;
    let mut standby = env.replica(&args);
    standby.wait_ready().await;
    env.keep_secret(SECOND_MANAGER_KEY);

    for ns in &namespaces {
        let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
        for (name, key) in [("key-a", MANAGER_KEY), ("key-b", SECOND_MANAGER_KEY)] {
            test_support::env::create_api_key_secret(&secrets, name, key).await;
        }
    }
    env.sim.set_faults(bad_weather());
    let started = Instant::now();
    let mut requests = Vec::new();
    for i in 0..REQUESTS {
        let ns = &namespaces[i % namespaces.len()];
        let name = format!("r{i}");
        if i.is_multiple_of(10) {
            agent_daemonset(&env.client, ns, &format!("agent-{name}")).await;
        }
        create(&env.client, ns, &name, request_spec(i, &name)).await;
        requests.push((ns.clone(), name));
    }
    // The roll-outs and the sampling go on until the end; the rotations stop with the chaos.
    let (stop, stop_rotations) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let tally = Arc::new(Tally::default());
    let players: Vec<_> = namespaces
        .iter()
        .map(|ns| {
            tokio::spawn(play_rollouts(
                Api::namespaced(env.client.clone(), ns),
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();
    wait_all_ready(&env.client, &requests, Duration::from_secs(300)).await;
    println!(
        "soak: {REQUESTS} requests over 3 namespaces and 2 API keys Ready in {:?} (IBM Cloud slow and failing 5%)",
        started.elapsed()
    );

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut dice = Dice(seed);
    let keys_before = env.sim.keys().len();
    let calls_before: u64 = env.sim.calls().values().sum();
    let rotations = tokio::spawn(ask_rotations(
        env.client.clone(),
        requests.clone(),
        Dice(seed.rotate_left(17) | 1),
        stop_rotations.clone(),
        tally.clone(),
    ));
    let watchers = vec![
        tokio::spawn(sample_secrets(
            env.client.clone(),
            namespaces.clone(),
            env.sim.clone(),
            stop.clone(),
            tally.clone(),
        )),
        tokio::spawn(burst_of_429s(env.sim.clone(), soak / 2)),
    ];

    let (mut kills, mut failovers, mut worst_ready) = (0_u32, 0_u32, Duration::ZERO);
    let deadline = Instant::now() + soak;
    while Instant::now() < deadline {
        let pause = dice.seconds_between(5, 20);
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        if Instant::now() >= deadline {
            break;
        }
        let replica = if dice.below(2) == 0 {
            &mut env.operator
        } else {
            &mut standby
        };
        let was_leader = replica.is_leader().await;
        replica.kill9();
        replica.start_again();
        kills += 1;
        failovers += u32::from(was_leader);
        // A request created right after the kill: how long until a leader serves it.
        let probe = format!("probe-{kills}");
        let killed = Instant::now();
        create(&env.client, &namespaces[0], &probe, request_spec(1, &probe)).await;
        requests.push((namespaces[0].clone(), probe));
        let last = requests.last().cloned().into_iter().collect::<Vec<_>>();
        wait_all_ready(&env.client, &last, Duration::from_secs(120)).await;
        worst_ready = worst_ready.max(killed.elapsed());
        replica_ready(&env.operator, &standby).await;
    }
    stop_rotations.store(true, Ordering::Release);
    rotations.await.expect("the rotation task");
    env.sim.clear_faults();

    // Settled: every request Ready, and once the replaced keys' grace is over, one active key
    // per request.
    wait_all_ready(&env.client, &requests, Duration::from_secs(300)).await;
    let prefixes: Vec<String> = requests
        .iter()
        .map(|(ns, name)| format!("ikr:{ns}:{name}:"))
        .collect();
    let active_per_request = || {
        let keys = env.sim.keys();
        prefixes
            .iter()
            .map(|p| {
                keys.iter()
                    .filter(|k| k.name.starts_with(p.as_str()) && k.state == "active")
                    .count()
            })
            .collect::<Vec<usize>>()
    };
    let settle = Instant::now() + Duration::from_secs(120);
    while Instant::now() < settle && !active_per_request().iter().all(|&n| n == 1) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let unsettled: Vec<String> = requests
        .iter()
        .zip(active_per_request())
        .filter(|(_, n)| *n != 1)
        .map(|((ns, name), n)| format!("{ns}/{name}: {n} active keys"))
        .collect();
    for line in unsettled.iter().take(5) {
        let (ns, name) = line
            .split_once(':')
            .map_or(("", ""), |(r, _)| r.split_once('/').unwrap_or(("", "")));
        let api: Api<IngestionKeyRequest> = Api::namespaced(env.client.clone(), ns);
        if let Ok(request) = api.get(name).await {
            println!(
                "{line}: status {}",
                serde_json::to_string(&request.status).unwrap_or_default()
            );
        }
        let prefix = format!("ikr:{ns}:{name}:");
        for key in env
            .sim
            .keys()
            .iter()
            .filter(|k| k.name.starts_with(&prefix))
        {
            println!("  key {} {} {}", key.name, key.guid, key.state);
        }
    }
    assert!(
        unsettled.is_empty(),
        "one active key per request once the grace is over: {unsettled:?}"
    );

    stop.store(true, Ordering::Release);
    for task in watchers.into_iter().chain(players) {
        task.await.expect("a soak task");
    }
    let keys = env.sim.keys();
    let mut names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    let all = names.len();
    names.sort_unstable();
    names.dedup();
    let rotations_done = keys.len() - keys_before - kills as usize;
    let calls: u64 = env.sim.calls().values().sum::<u64>() - calls_before;
    let lease_transitions = leader_transitions(&env.client, &namespaces[0]).await;
    println!(
        "soak {soak:?} (seed {seed}): {kills} kills, {failovers} of the leader \
         ({lease_transitions} lease transitions in all); {} rotations asked, {rotations_done} done, \
         {} roll-outs played; {:.1} IBM calls per rotation ({calls} calls while the chaos ran); \
         worst time to Ready of a request created after a kill {worst_ready:?}; {} Secret samples",
        tally.rotations_asked.load(Ordering::Relaxed),
        tally.rollouts_played.load(Ordering::Relaxed),
        calls as f64 / rotations_done.max(1) as f64,
        tally.samples.load(Ordering::Relaxed),
    );
    let violations = tally.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "keys deleted while a Secret held their credential: {violations:?}"
    );
    assert_eq!(names.len(), all, "no key name repeats");
    assert!(
        tally.samples.load(Ordering::Relaxed) > 0,
        "the Secrets were sampled"
    );
    for log in [env.operator.logs(), standby.logs()] {
        assert!(!log.contains("panicked"), "no replica panicked");
    }
    drop(standby);
    env.finish().await;
}

async fn create(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let requests = Api::namespaced(client.clone(), ns);
    test_support::env::create_request_in(&requests, name, spec).await;
}

/// Waits until every request in `requests` (namespace, name) reports `KeySynced`.
async fn wait_all_ready(client: &Client, requests: &[(String, String)], within: Duration) {
    let namespaces: std::collections::BTreeSet<&String> =
        requests.iter().map(|(ns, _)| ns).collect();
    wait_for(
        &format!("{} requests to be Ready", requests.len()),
        within,
        || async {
            let mut ready = std::collections::HashSet::new();
            for ns in &namespaces {
                let api: Api<IngestionKeyRequest> = Api::namespaced(client.clone(), ns);
                let Ok(list) = api.list(&ListParams::default()).await else {
                    return false;
                };
                ready.extend(
                    list.items
                        .iter()
                        .filter(|r| ready_reason(r).as_deref() == Some("KeySynced"))
                        .map(|r| (r.namespace().unwrap_or_default(), r.name_any())),
                );
            }
            requests.iter().all(|r| ready.contains(r))
        },
    )
    .await;
}

/// Waits until both replicas answer /readyz again after a restart.
async fn replica_ready(first: &Operator, second: &Operator) {
    first.wait_ready().await;
    second.wait_ready().await;
}

/// Asks a random request for a rotation every 1 to 3 s (a fresh annotation value each time).
async fn ask_rotations(
    client: Client,
    requests: Vec<(String, String)>,
    mut dice: Dice,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(dice.seconds_between(1, 3)).await;
        let (ns, name) = &requests[dice.below(requests.len() as u64) as usize];
        let n = tally.rotations_asked.fetch_add(1, Ordering::Relaxed);
        let api: Api<IngestionKeyRequest> = Api::namespaced(client.clone(), ns);
        let patch = json!({"metadata": {"annotations": {ROTATE_ANNOTATION: format!("soak-{n}")}}});
        if api
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .is_err()
        {
            tally.rotations_asked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Plays the DaemonSet controller of the restart targets: each new generation rolls out.
async fn play_rollouts(api: Api<DaemonSet>, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    while !stop.load(Ordering::Acquire) {
        for ds in api
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let observed = ds.status.as_ref().and_then(|s| s.observed_generation);
            if observed != ds.metadata.generation {
                complete_rollout(&api, &ds.name_any()).await;
                tally.rollouts_played.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Twice a second: the state of every key (first), then every managed Secret. A Secret holding
/// the credential of a key that was already deleted before the Secret was read is a violation:
/// an agent reading it would be locked out.
async fn sample_secrets(
    client: Client,
    namespaces: Vec<String>,
    sim: Simulator,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let managed = ListParams::default().labels(MANAGED_BY_LABEL);
    while !stop.load(Ordering::Acquire) {
        let states: HashMap<String, String> = sim.key_states_by_credential();
        for ns in &namespaces {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            let Ok(list) = api.list(&managed).await else {
                continue;
            };
            for secret in list.items {
                let Some(value) = test_support::env::secret_data(&secret, DATA_KEY) else {
                    continue;
                };
                let fingerprint = SimSecret::new(value).fingerprint();
                if states.get(&fingerprint).is_some_and(|s| s != "active") {
                    let mut violations = tally.violations.lock().unwrap();
                    violations.push(format!("{ns}/{}", secret.name_any()));
                }
            }
        }
        tally.samples.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Half-way through, IBM Cloud answers 429 beyond 5 calls a second for 3 s.
async fn burst_of_429s(sim: Simulator, after: Duration) {
    tokio::time::sleep(after).await;
    sim.set_faults(Faults {
        rate_limit: Some(RateLimit {
            limit: 5,
            window_seconds: 1,
            retry_after_seconds: 1,
        }),
        ..bad_weather()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    sim.set_faults(bad_weather());
}

async fn leader_transitions(client: &Client, ns: &str) -> i32 {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), ns);
    leases
        .get(ingestion_key_operator::cli::LEASE_NAME)
        .await
        .ok()
        .and_then(|l| l.spec?.lease_transitions)
        .unwrap_or(0)
}
