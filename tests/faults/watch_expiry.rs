use std::time::{Duration, Instant};

use test_support::proxy::{Link, TcpProxy};
use test_support::{self as support, ControlPlane, WAIT, env::Env, wait_for};

const OUTAGE: Duration = Duration::from_secs(10);

/// The operator cut off from the API server (its connections refused by a proxy) while a request
/// is created and a managed Secret is edited, and etcd compacted meanwhile: with kube-apiserver's
/// watch cache off, the watches resume from a compacted resourceVersion and get `410 Gone`. The
/// operator must relist at once and miss neither change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_expired_by_an_etcd_compaction_relist_and_miss_nothing() {
    let assets = support::assets_dir().expect("control-plane binaries");
    let cp: &'static ControlPlane = Box::leak(Box::new(
        ControlPlane::start_with(&assets, &["--watch-cache=false"])
            .expect("a control plane without a watch cache"),
    ));
    let proxy = TcpProxy::start(cp.api_server_addr()).await;
    let ns = cp.namespace("compaction").await;
    let kubeconfig = cp.kubeconfig_through("operator", proxy.addr());
    let env = Env::on(cp, ns, &kubeconfig, &[], None, None).await;
    let served = env.serve_first_request("before").await;

    proxy.set(Link::Refused);
    let cut = Instant::now();
    let readyz = format!("http://{}/readyz", env.operator.admin);
    wait_for("/readyz to report the lost API server", WAIT, || async {
        reqwest::get(&readyz)
            .await
            .is_ok_and(|r| r.status().as_u16() == 503)
    })
    .await;
    // The gap: a new request, and the managed Secret edited behind the operator's back.
    env.create_at("during").await;
    env.tamper("logdna-agent-key", "logdna-agent-key").await;
    let revision = cp.compact_etcd().await.expect("etcd compacted");
    // An outage of 10 s, as long as an API server upgrade: long enough for a back-off that grows
    // with every failed attempt to postpone the relist.
    tokio::time::sleep(OUTAGE.saturating_sub(cut.elapsed())).await;
    proxy.set(Link::Open);
    let reopened = Instant::now();

    env.wait_ready("during").await;
    env.wait_secret_value("logdna-agent-key", "logdna-agent-key", &served)
        .await;
    let recovered = reopened.elapsed();
    println!(
        "etcd compacted at revision {revision} while the operator was cut off: the new request and \
         the edited Secret were both handled {recovered:?} after the API server was reachable again"
    );
    assert!(
        env.operator.logs().contains("watch expired (410 Gone)"),
        "the watches resumed from a compacted revision and got 410 Gone"
    );
    assert!(
        recovered < Duration::from_secs(5),
        "handled {recovered:?} after the API server was reachable: the relist waited"
    );
    assert_eq!(
        env.active_keys_of("before"),
        1,
        "one key for the request from before"
    );
    assert_eq!(
        env.active_keys_of("during"),
        1,
        "one key for the request made in the gap"
    );
    env.finish().await;
}
