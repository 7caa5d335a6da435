use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde_json::json;
use test_support::env::{Env, Operator};
use test_support::proxy::{Link, TcpProxy};
use test_support::{self as support, WAIT, wait_for};

/// A leader whose lease another replica holds (it judged the lease expired while this one was
/// cut off) must stop reconciling and end the process, logged at error level, so that the
/// kubelet restarts it as a standby. Before, it lived on as a zombie: healthy, never leading,
/// never standing for the lease again.
#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_and_exits() {
    let cp = support::control_plane();
    let ns = cp.namespace("lease-lost").await;
    let args = ["--leader-elect", "--leader-election-namespace", ns.as_str()];
    let env = Env::in_namespace(ns.clone(), cp.kubeconfig_path(), &args).await;
    wait_for("the operator to lead", Duration::from_secs(30), || async {
        env.operator.is_leader().await
    })
    .await;
    env.serve_first_request("while-leading").await;

    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &ns);
    let mut lease = leases
        .get(ingestion_key_operator::cli::LEASE_NAME)
        .await
        .expect("the operator's lease");
    let spec = lease.spec.get_or_insert_default();
    spec.holder_identity = Some("another-replica".into());
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_duration_seconds = Some(3600);
    leases
        .replace(
            ingestion_key_operator::cli::LEASE_NAME,
            &PostParams::default(),
            &lease,
        )
        .await
        .expect("another replica takes the lease");
    let taken = Instant::now();

    wait_for("the operator to exit", Duration::from_secs(20), || async {
        env.operator.exited()
    })
    .await;
    println!(
        "the operator exited {:?} after its lease was taken",
        taken.elapsed()
    );
    let logs = env.operator.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("ERROR") && l.contains("lost the leader lease")),
        "the loss is logged at error level"
    );
    env.finish().await;
}

/// A leader cut off from the API server (a proxy in front of it swallows every byte, as a
/// network partition does) while its reconciles still reach IBM Cloud: it must stop acting at
/// its renew deadline, before the standby may take the lease, so that at no moment two replicas
/// make IBM calls. Each replica reaches IBM Cloud through a proxy of its own, which tells when
/// that replica last (and first) sent a request: the old leader's last must come before the new
/// leader's first. Every request ends Ready with one key, served by the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_before_the_standby_takes_over() {
    let (cp, ns) = (support::control_plane(), elected_namespace("fencing").await);
    let args = ["--leader-elect", "--leader-election-namespace", ns.as_str()];
    let sim = test_support::env::simulator().await;
    let (leader_api, leader_ibm, standby_ibm) = (
        TcpProxy::start(cp.api_server_addr()).await,
        TcpProxy::start(sim.addr()).await,
        TcpProxy::start(sim.addr()).await,
    );
    let kubeconfig = cp.kubeconfig_through("fencing-leader", leader_api.addr());
    let leader_url = format!("http://{}", leader_ibm.addr());
    let env = Env::on(
        cp,
        ns.clone(),
        &kubeconfig,
        &args,
        None,
        Some((sim, leader_url)),
    )
    .await;
    wait_for("the first replica to lead", WAIT, || async {
        env.operator.is_leader().await
    })
    .await;
    env.serve_first_request("first").await;
    let standby_url = format!("http://{}", standby_ibm.addr());
    let standby = Operator::start(cp, cp.kubeconfig_path(), &ns, &standby_url, &args, None);
    standby.wait_ready().await;
    assert!(!standby.is_leader().await, "the second replica stands by");

    // A batch in flight when the partition starts: IBM Cloud answers the instance lookup with
    // 503, slowly, so the leader's reconciles keep retrying that read (no API server call
    // between tries) until the leader stops them.
    env.sim.set_faults(ibm_cloud_sim::Faults {
        latency_ms: 300,
        error_rate: 1.0,
        matching: Some("GET /v2/resource_instances".into()),
        ..ibm_cloud_sim::Faults::default()
    });
    let names: Vec<String> = (0..10).map(|i| format!("batch-{i}")).collect();
    let before_batch = leader_ibm.last_sent();
    for name in &names {
        env.create_request(
            name,
            json!({"instance": {"name": "my-log-analysis"}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}, "secret": {"name": format!("{name}-key")}}),
        )
        .await;
    }
    wait_for(
        "the leader to call IBM Cloud for the batch",
        WAIT,
        || async { leader_ibm.last_sent() > before_batch },
    )
    .await;
    leader_api.set(Link::Blackhole);
    let cut = Instant::now();

    wait_for("the standby to lead", WAIT, || async {
        standby.is_leader().await
    })
    .await;
    let took_over = cut.elapsed();
    env.sim.clear_faults();
    wait_for("the cut-off leader to exit", WAIT, || async {
        env.operator.exited()
    })
    .await;
    for name in &names {
        env.wait_ready(name).await;
    }
    let last_of_old = leader_ibm
        .last_sent()
        .expect("the old leader called IBM Cloud");
    let first_of_new = standby_ibm
        .first_sent()
        .expect("the new leader called IBM Cloud");
    println!(
        "partition of the leader: its last IBM call {:?} after it began, the standby led {took_over:?} \
         after it, and the new leader's first IBM call came {:?} after the old leader's last",
        last_of_old.saturating_duration_since(cut),
        first_of_new.saturating_duration_since(last_of_old),
    );
    assert!(
        last_of_old < first_of_new,
        "the old leader called IBM Cloud {:?} after the new leader began",
        last_of_old.saturating_duration_since(first_of_new)
    );
    assert!(
        env.operator
            .logs()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("lost the leader lease")),
        "the cut-off leader says at error level why it stopped"
    );
    for name in names.iter().chain(std::iter::once(&"first".to_owned())) {
        assert_eq!(env.active_keys_of(name), 1, "{name}: exactly one key");
    }
    env.assert_no_key_name_twice();
    drop(standby);
    env.finish().await;
}

/// A failover with 50 requests in sync, then a restart: each new leader reconciles every one of
/// them from their status and Secrets alone, with no IBM Cloud call and no write (before, it
/// re-read every key at once: one call per request after each deploy or failover), and a request
/// created while no leader ran is Ready as soon as the new leader runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_reads_no_key_again_and_writes_nothing() {
    let (cp, ns) = (
        support::control_plane(),
        elected_namespace("failover-cost").await,
    );
    let args = ["--leader-elect", "--leader-election-namespace", ns.as_str()];
    let mut env = Env::in_namespace(ns.clone(), cp.kubeconfig_path(), &args).await;
    let mut standby = env.replica(&args);
    standby.wait_ready().await;
    wait_for("the first replica to lead", WAIT, || async {
        env.operator.is_leader().await
    })
    .await;
    env.serve_first_request("r0").await;
    let names: Vec<String> = (1..50).map(|i| format!("r{i}")).collect();
    for name in &names {
        env.create_at(name).await;
    }
    for name in &names {
        env.wait_ready(name).await;
    }
    let versions_before = resource_versions(&env).await;
    env.sim.reset_calls();

    env.operator.kill9();
    let killed = Instant::now();
    env.create_at("during").await;
    wait_for("the standby to lead", WAIT, || async {
        standby.is_leader().await
    })
    .await;
    env.wait_ready("during").await;
    let ready = killed.elapsed();
    // Every request of before goes through one reconcile in the new leader.
    let reconciled = || async {
        standby
            .metric("ingestion_key_operator_reconcile_total{result=\"success\"}")
            .await
    };
    wait_for("the new leader to reconcile all 51", WAIT, || async {
        reconciled().await >= 51.0
    })
    .await;
    let calls = env.sim.calls();
    let key_reads = calls
        .get("GET /v2/resource_keys/{id}")
        .copied()
        .unwrap_or(0);
    println!(
        "failover: a request created after the leader's death Ready in {ready:?}; the new leader \
         reconciled {} requests with these IBM Cloud calls: {calls:?}",
        reconciled().await
    );
    assert_eq!(key_reads, 0, "no key of a request in sync is read again");
    let mut versions_after = resource_versions(&env).await;
    versions_after.retain(|(name, _)| !name.contains("during"));
    assert_eq!(
        versions_after, versions_before,
        "nothing of before was written"
    );

    // A restart (a deploy): the leader stops, a request is created, the first replica starts
    // again and leads.
    let versions_before = resource_versions(&env).await;
    env.sim.reset_calls();
    standby.stop();
    env.create_at("during-restart").await;
    env.operator.start_again();
    env.operator.wait_ready().await;
    wait_for("the restarted replica to lead", WAIT, || async {
        env.operator.is_leader().await
    })
    .await;
    env.wait_ready("during-restart").await;
    let restarted = || async {
        env.operator
            .metric("ingestion_key_operator_reconcile_total{result=\"success\"}")
            .await
    };
    wait_for("the restarted leader to reconcile all 52", WAIT, || async {
        restarted().await >= 52.0
    })
    .await;
    let calls = env.sim.calls();
    println!(
        "restart: the leader reconciled {} requests with these IBM Cloud calls: {calls:?}",
        restarted().await
    );
    assert_eq!(
        calls
            .get("GET /v2/resource_keys/{id}")
            .copied()
            .unwrap_or(0),
        0,
        "after a restart, no key of a request in sync is read again"
    );
    let mut versions_after = resource_versions(&env).await;
    versions_after.retain(|(name, _)| !name.contains("during-restart"));
    assert_eq!(
        versions_after, versions_before,
        "nothing of before was written after the restart"
    );
    drop(standby);
    env.finish().await;
}

/// (name, resourceVersion) of every request and Secret of the environment's namespace, sorted.
async fn resource_versions(env: &Env) -> Vec<(String, String)> {
    use kube::ResourceExt;
    let params = kube::api::ListParams::default();
    let requests = env.requests().list(&params).await.expect("requests");
    let secrets = env.secrets_api().list(&params).await.expect("Secrets");
    let mut versions: Vec<(String, String)> = requests
        .items
        .iter()
        .map(|r| (r.name_any(), r.resource_version().unwrap_or_default()))
        .chain(secrets.items.iter().map(|s| {
            (
                format!("Secret {}", s.name_any()),
                s.resource_version().unwrap_or_default(),
            )
        }))
        .collect();
    versions.sort();
    versions
}

/// A namespace of the shared control plane for replicas that elect a leader in it.
async fn elected_namespace(prefix: &str) -> String {
    support::control_plane().namespace(prefix).await
}
