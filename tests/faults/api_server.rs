use std::time::{Duration, Instant};

use ingestion_key_operator::crd::ROTATE_ANNOTATION;
use serde_json::json;
use test_support::{self as support, ControlPlane, WAIT, env::Env, wait_for};

/// A control plane of the test's own (it stops its servers, which other tests must not see)
/// with the operator binary watching one namespace on it.
async fn on_own_control_plane(prefix: &str) -> (&'static ControlPlane, Env) {
    let assets = support::assets_dir().expect("control-plane binaries");
    let cp: &'static ControlPlane = Box::leak(Box::new(
        ControlPlane::start(&assets).expect("a control plane of this test's own"),
    ));
    let ns = cp.namespace(prefix).await;
    // A raised IBM budget: the batches of these tests should measure the control plane's faults,
    // not wait behind the default 10 calls a second.
    let args = ["--ibm-max-rps", "100"];
    let env = Env::on(cp, ns, cp.kubeconfig_path(), &args, None, None).await;
    (cp, env)
}

/// kube-apiserver stopped for 10 s and started again on the same etcd and port, as in an upgrade,
/// in the middle of a batch of 200 new requests and of a rotation. The operator is not restarted.
/// A request created once the API server answers again must be served within seconds: the
/// watches come back with `410 Gone` and must relist at once, not after a back-off grown during
/// the outage (it took over 90 s when every 410 counted as one more failure). Every request of
/// the batch ends with exactly one key, and the rotation completes with its old key deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_created_after_an_api_server_restart_are_served_within_seconds() {
    let (cp, env) = on_own_control_plane("restart").await;
    env.serve_first_request("before").await;
    let first_key = env.sim_keys_of("before");
    let rotate = json!({
        "metadata": {"annotations": {ROTATE_ANNOTATION: "during-restart"}},
        "spec": {"rotation": {"gracePeriod": "2s"}},
    });
    env.patch_request("before", rotate).await;
    let batch: Vec<String> = (0..200).map(|i| format!("batch-{i}")).collect();
    for name in &batch {
        env.create_at(name).await;
    }

    let restart =
        tokio::task::spawn_blocking(move || cp.restart_apiserver(Duration::from_secs(10)));
    // The operator's readiness while the API server is down.
    let readyz = format!("http://{}/readyz", env.operator.admin);
    let mut not_ready_seen = false;
    while !restart.is_finished() {
        let answer = reqwest::get(&readyz).await.map(|r| r.status().as_u16());
        not_ready_seen |= answer.is_ok_and(|status| status == 503);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    restart
        .await
        .expect("restart task")
        .expect("kube-apiserver restarted");
    let answering = Instant::now();
    assert!(not_ready_seen, "/readyz reported the outage");
    env.create_at("after").await;
    env.wait_ready("after").await;
    let served = answering.elapsed();
    for name in &batch {
        env.wait_ready(name).await;
    }
    let batch_ready = answering.elapsed();
    println!(
        "after the API server restart: a new request Ready in {served:?}, the batch of 200 in {batch_ready:?}"
    );
    // Queued behind the batch of 200 relisted at the same moment (and sharing 2 cores with the
    // rest of the fault tier): seconds, where waiting on a grown back-off took minutes. The
    // relist itself is timed on its own in watch_expiry.rs.
    assert!(
        served < Duration::from_secs(30),
        "served {served:?} after the restart: the watches waited instead of relisting"
    );
    for name in batch.iter().chain(["after".to_owned()].iter()) {
        assert_eq!(env.active_keys_of(name), 1, "{name}: one key");
    }
    // The rotation: a second key, and once its grace is over, the first one deleted.
    wait_for("the rotation to retire the first key", WAIT, || async {
        let keys = env.sim_keys_of("before");
        keys.len() == 2 && test_support::env::active(&keys) == 1
    })
    .await;
    let first_guid = &first_key[0].0;
    assert_eq!(
        env.sim.key(first_guid).map(|k| k.state).as_deref(),
        Some("removed"),
        "the replaced key is deleted"
    );
    env.assert_no_key_name_twice();
    env.finish().await;
}

/// etcd paused (SIGSTOP) for 15 s while 20 new requests are being served, then resumed: writes
/// hang or fail meanwhile, and whatever the operator retries must not become a second key. Every
/// request ends Ready with exactly one active key, and no key name repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_pause_during_reconciles_loses_and_duplicates_nothing() {
    let (cp, env) = on_own_control_plane("etcd-pause").await;
    env.serve_first_request("before").await;
    // Slow IBM Cloud calls keep the batch's reconciles in flight when etcd stops.
    env.sim.set_faults(ibm_cloud_sim::Faults {
        latency_ms: 700,
        ..ibm_cloud_sim::Faults::default()
    });
    let names: Vec<String> = (0..20).map(|i| format!("batch-{i}")).collect();
    for name in &names {
        env.create_at(name).await;
    }
    let mut ready_before = 0;
    for name in &names {
        let request = env.requests().get(name).await.expect("read request");
        ready_before +=
            usize::from(test_support::env::ready_reason(&request).as_deref() == Some("KeySynced"));
    }
    assert!(
        ready_before < names.len(),
        "the pause must meet reconciles in flight"
    );
    let etcd = cp.pid_of("etcd").expect("etcd runs");
    support::signal(etcd, "-STOP");
    tokio::time::sleep(Duration::from_secs(15)).await;
    support::signal(etcd, "-CONT");
    env.sim.clear_faults();
    let resumed = Instant::now();
    for name in &names {
        env.wait_ready(name).await;
    }
    println!(
        "20 requests ({ready_before} Ready when etcd stopped) all Ready {:?} after it resumed from a 15 s pause",
        resumed.elapsed()
    );
    for name in names.iter().chain(std::iter::once(&"before".to_owned())) {
        assert_eq!(env.active_keys_of(name), 1, "{name}: exactly one key");
    }
    env.assert_no_key_name_twice();
    env.finish().await;
}
