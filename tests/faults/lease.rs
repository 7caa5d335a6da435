use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use test_support::{self as support, env::Env, wait_for};

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
