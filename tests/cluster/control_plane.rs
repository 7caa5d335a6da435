//! The harness itself, against the real control plane: custom resources (create, read, list,
//! watch: an apiserver built with the unfixed reflect2 dies here), owner-reference garbage
//! collection, namespace deletion, and no servers left behind when the test run is killed.

use test_support as support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use support::{control_plane, process_alive, wait_for};

/// A small CRD of the test's own, independent of the operator's.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "harness.test.dev",
    version = "v1",
    kind = "Widget",
    namespaced
)]
#[kube(status = "WidgetStatus")]
pub struct WidgetSpec {
    pub size: i32,
    pub colour: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct WidgetStatus {
    pub ready: bool,
}

fn widget(name: &str, size: i32) -> Widget {
    Widget::new(
        name,
        WidgetSpec {
            size,
            colour: "blue".into(),
        },
    )
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "data": { "k": "v" },
    }))
    .unwrap()
}

/// `KUBEBUILDER_ASSETS` may lack kube-controller-manager (setup-envtest ships none); the assets
/// that `hack/envtest-assets.sh` builds always have it.
/// The control plane when it runs kube-controller-manager; `None` (the test is skipped, said
/// on stderr) when its binaries have none.
fn with_controller_manager() -> Option<&'static support::ControlPlane> {
    let cp = control_plane();
    if cp.has_controller_manager() {
        return Some(cp);
    }
    eprintln!(
        "SKIPPED: no kube-controller-manager in {}, so no garbage collection or namespace deletion",
        cp.assets_dir().display()
    );
    None
}

#[tokio::test]
async fn custom_resources_can_be_created_read_listed_and_watched() {
    let cp = control_plane();
    cp.install_crd(Widget::crd()).await;
    // Installing again is a no-op.
    cp.install_crd(Widget::crd()).await;
    let ns = cp.namespace("widgets").await;
    let widgets: Api<Widget> = Api::namespaced(cp.client().await, &ns);

    // Watch from the (empty) list's resource version, so the watch sees the creations.
    let list = widgets.list(&ListParams::default()).await.unwrap();
    assert!(list.items.is_empty());
    let rv = list.metadata.resource_version.unwrap();
    let mut events = widgets
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .unwrap()
        .boxed();

    let created = widgets
        .create(&PostParams::default(), &widget("first", 1))
        .await
        .unwrap();
    assert_eq!(created.spec.size, 1);
    widgets
        .patch(
            "second",
            &PatchParams::apply("control-plane-test").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "harness.test.dev/v1",
                "kind": "Widget",
                "metadata": { "name": "second", "labels": { "pick": "me" } },
                "spec": { "size": 2, "colour": "red" },
            })),
        )
        .await
        .unwrap();

    // Read back.
    let read = widgets.get("first").await.unwrap();
    assert_eq!(read.spec, created.spec);
    assert_eq!(read.uid(), created.uid());

    // The status subresource.
    widgets
        .patch_status(
            "first",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": { "ready": true } })),
        )
        .await
        .unwrap();
    assert_eq!(
        widgets.get("first").await.unwrap().status,
        Some(WidgetStatus { ready: true })
    );

    // Lists, plain and label-selected.
    let names: Vec<String> = widgets
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|w| w.name_any())
        .collect();
    assert_eq!(names, ["first", "second"]);
    let picked = widgets
        .list(&ListParams::default().labels("pick=me"))
        .await
        .unwrap();
    assert_eq!(picked.items.len(), 1);
    assert_eq!(picked.items[0].spec.colour, "red");

    // The watch saw both additions.
    let mut added = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    while added.len() < 2 {
        tokio::select! {
            event = events.try_next() => match event.unwrap() {
                Some(WatchEvent::Added(w)) => added.push(w.name_any()),
                Some(_) => {}
                None => panic!("the watch ended early"),
            },
            _ = &mut deadline => panic!("the watch delivered only {added:?}"),
        }
    }
    assert_eq!(added, ["first", "second"]);

    // The apiserver survived serving custom resources.
    widgets
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    let api: Api<Namespace> = Api::all(cp.client().await);
    api.get(&ns).await.unwrap();
}

#[tokio::test]
async fn owner_references_garbage_collect_dependents() {
    let Some(cp) = with_controller_manager() else {
        return;
    };
    let ns = cp.namespace("gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(cp.client().await, &ns);
    let owner = cms
        .create(&PostParams::default(), &config_map("owner"))
        .await
        .unwrap();
    let mut dependent = config_map("dependent");
    dependent.metadata.owner_references = Some(vec![
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "owner",
            "uid": owner.uid().unwrap(),
        }))
        .unwrap(),
    ]);
    cms.create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    cms.create(&PostParams::default(), &config_map("bystander"))
        .await
        .unwrap();

    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait_for(
        "the garbage collector to delete the dependent ConfigMap",
        Duration::from_secs(60),
        || async { cms.get_opt("dependent").await.unwrap().is_none() },
    )
    .await;
    assert!(cms.get_opt("bystander").await.unwrap().is_some());
}

#[tokio::test]
async fn namespace_deletion_completes() {
    let Some(cp) = with_controller_manager() else {
        return;
    };
    let ns = cp.namespace("doomed").await;
    let client = cp.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(&PostParams::default(), &config_map("content"))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        &format!("namespace {ns} to be deleted"),
        Duration::from_secs(60),
        || async { namespaces.get_opt(&ns).await.unwrap().is_none() },
    )
    .await;
}

#[tokio::test]
async fn namespaces_are_unique_and_the_admin_is_authorized() {
    let cp = control_plane();
    let a = cp.namespace("Same_Prefix").await;
    let b = cp.namespace("Same_Prefix").await;
    assert_ne!(a, b);
    assert!(a.starts_with("same-prefix-"), "{a}");

    // RBAC is on: an unknown token is refused, the admin token is not.
    let stranger = cp.kubeconfig_for_token("stranger", "not-a-token");
    let api: Api<Namespace> = Api::all(cp.client_for(&stranger).await);
    assert!(api.list(&ListParams::default()).await.is_err());
    let api: Api<Namespace> = Api::all(cp.client().await);
    assert!(api.get(&a).await.is_ok());
}

#[test]
fn kubectl_can_use_the_kubeconfig() {
    let cp = control_plane();
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("kubectl is not installed: skipped");
        return;
    }
    let out = cp
        .kubectl()
        .args(["get", "--raw", "/readyz"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

const HOLD_ENV: &str = "IKO_HOLD_CONTROL_PLANE";
const PIDS_PREFIX: &str = "control-plane-pids:";

/// Not a test on its own: `killing_the_test_run_leaves_no_servers` runs it in a child process,
/// which starts a control plane, prints its pids and blocks until it is killed.
#[test]
fn hold_control_plane_until_killed() {
    if std::env::var_os(HOLD_ENV).is_none() {
        return;
    }
    let cp = control_plane();
    let pids: Vec<String> = cp.servers().iter().map(|s| s.pid.to_string()).collect();
    println!("{PIDS_PREFIX} {} {}", cp.dir().display(), pids.join(" "));
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn killing_the_test_run_leaves_no_servers() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "control_plane::hold_control_plane_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let (dir, pids) = loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("the child test run ended without printing its pids");
        }
        // libtest may have printed the test's name on the same line.
        if let Some((_, rest)) = line.split_once(PIDS_PREFIX) {
            let mut words = rest.split_whitespace();
            let dir = PathBuf::from(words.next().unwrap());
            let pids: Vec<u32> = words.map(|p| p.parse().unwrap()).collect();
            break (dir, pids);
        }
    };
    assert!(
        pids.len() >= 2,
        "etcd and kube-apiserver at least: {pids:?}"
    );
    assert!(pids.iter().all(|&p| process_alive(p)));
    assert!(dir.exists());

    // SIGKILL: no destructor, no panic hook, nothing runs in the child.
    child.kill().unwrap();
    child.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| process_alive(p)).collect();
        if alive.is_empty() && !dir.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there 30 s after the test run was killed: pids {alive:?}, dir exists: {}",
            dir.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
