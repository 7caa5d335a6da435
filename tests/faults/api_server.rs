use std::time::{Duration, Instant};

use serde_json::json;
use test_support::{self as support, ControlPlane, env::Env};

/// kube-apiserver stopped for 10 s and started again on the same etcd and port, as in an upgrade.
/// The operator is not restarted. A request created once the API server answers again must be
/// served within seconds: the watches come back with `410 Gone` and must relist at once, not
/// after a back-off grown during the outage (it took over 90 s when every 410 counted as one
/// more failure). The request from before keeps exactly one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_created_after_an_api_server_restart_are_served_within_seconds() {
    let assets = support::assets_dir().expect("control-plane binaries");
    // Its own control plane: the test stops the API server, which other tests must not see.
    let cp: &'static ControlPlane = Box::leak(Box::new(
        ControlPlane::start(&assets).expect("a control plane of this test's own"),
    ));
    let ns = cp.namespace("restart").await;
    let env = Env::on(cp, ns, cp.kubeconfig_path(), &[], None).await;
    env.serve_first_request("before").await;

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
    env.create_request(
        "after",
        json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}, "secret": {"name": "after-key"}}),
    )
    .await;
    env.wait_ready("after").await;
    let served = answering.elapsed();
    println!(
        "a request created after the API server restart was Ready {served:?} after the API server answered again"
    );
    assert!(
        served < Duration::from_secs(20),
        "served {served:?} after the restart: the watches waited instead of relisting"
    );
    assert_eq!(
        env.active_keys_of("before"),
        1,
        "one key for the request from before"
    );
    assert_eq!(
        env.active_keys_of("after"),
        1,
        "one key for the new request"
    );
    env.finish().await;
}
