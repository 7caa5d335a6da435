//! `kubectl ingestionkey audit`: orphans made the four ways they happen, told apart from every key
//! that is not this cluster's to delete, and deleted exactly.

use std::collections::BTreeSet;

use ibm_cloud_sim::Faults;
use ingestion_key_operator::crd::IngestionKeyRequest;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use test_support::{
    self as support, ControlPlane, WAIT,
    env::{Env, MANAGER_KEY, create_api_key_secret, create_request_in},
    wait_for,
};

use crate::plugin::{assert_no_credential, plugin, text};

fn spec(secret: &str) -> Value {
    json!({"instance": {"name": "my-activity-tracker"},
           "apiKeySecretRef": {"name": "ibmcloud-api-key"},
           "secret": {"name": secret}})
}

async fn wait_ready_in(api: &Api<IngestionKeyRequest>, name: &str) -> IngestionKeyRequest {
    wait_for(&format!("{name} to be Ready"), WAIT, || async {
        api.get(name)
            .await
            .ok()
            .is_some_and(|r| support::env::ready_reason(&r).as_deref() == Some("KeySynced"))
    })
    .await;
    api.get(name).await.expect("read request")
}

fn key_guid(request: &IngestionKeyRequest) -> String {
    request
        .status
        .as_ref()
        .and_then(|s| s.resource_key.as_ref())
        .map(|k| k.guid.clone())
        .expect("a recorded key")
}

/// Deletes a request whose operator is not running and removes its finalizer by hand.
async fn delete_by_hand(api: &Api<IngestionKeyRequest>, name: &str) {
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete request");
    let strip = json!({"metadata": {"finalizers": null}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(strip))
        .await
        .expect("remove the finalizer");
    wait_for(&format!("{name} to be gone"), WAIT, || async {
        api.get_opt(name).await.ok().is_some_and(|r| r.is_none())
    })
    .await;
}

/// The audit's findings (`kind`, key GUID) of a JSON run, and its exit status.
async fn audit(env: &Env, extra: &[&str]) -> (i32, Vec<(String, String, bool)>) {
    let mut args = vec!["audit", "-o", "json"];
    args.extend_from_slice(extra);
    let out = plugin(env, &args).await;
    let printed = text(&out);
    assert_no_credential(env, &printed);
    let code = out.status.code().expect("an exit status");
    let rows: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("audit JSON ({e}): {printed}"));
    let rows = rows
        .as_array()
        .expect("an array of findings")
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (field("kind"), field("keyGuid"), r["finding"] == true)
        })
        .collect();
    (code, rows)
}

/// Orphans made four ways: a finalizer removed by hand, a namespace deleted while the operator
/// was stopped (its finalizer stripped), a creation whose reply was lost (the request then
/// removed by hand), and, not an orphan, a second cluster with the same namespace and request
/// names on the same instance. `audit` finds exactly the first three: not the other cluster's
/// keys, not someone else's key, not the key a `deletionPolicy: Retain` request left to its
/// user, not the key of a live request. `--delete-orphans` asks first; with `--yes` it deletes
/// exactly those three, and a second audit finds nothing.
#[tokio::test]
async fn audit_finds_exactly_the_orphans_and_deletes_only_them() {
    // Clusters of this test's own: the audit reads every namespace, and other tests' requests
    // (on other simulators) must not be in view.
    let cp = own_cluster();
    let ns = cp.namespace("plugin-audit").await;
    let other_ns = cp.namespace("plugin-audit-gone").await;
    let args = ["--namespace", &other_ns];
    let mut env = Env::on(cp, ns, cp.kubeconfig_path(), &args, None, None).await;
    let here = env.requests();
    let there: Api<IngestionKeyRequest> = Api::namespaced(env.client.clone(), &other_ns);
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    let other_secrets = Api::namespaced(env.client.clone(), &other_ns);
    create_api_key_secret(&other_secrets, "ibmcloud-api-key", MANAGER_KEY).await;

    for name in ["kept", "by-hand"] {
        env.create_request(name, spec(name)).await;
    }
    let mut retain = spec("retain");
    retain["deletionPolicy"] = "Retain".into();
    env.create_request("retain", retain).await;
    create_request_in(&there, "gone-ns", spec("gone-ns")).await;
    let kept = key_guid(&env.wait_ready("kept").await);
    let by_hand = key_guid(&env.wait_ready("by-hand").await);
    let retained = key_guid(&env.wait_ready("retain").await);
    let gone_ns = key_guid(&wait_ready_in(&there, "gone-ns").await);
    env.delete_request("retain").await;
    wait_for("the Retain request to go", WAIT, || async {
        here.get_opt("retain")
            .await
            .ok()
            .is_some_and(|r| r.is_none())
    })
    .await;

    // A creation whose reply never comes: the key lands, the operator dies waiting.
    env.sim.set_faults(Faults {
        matching: Some("POST /v2/resource_keys".into()),
        response_delay_ms: 120_000,
        ..Faults::default()
    });
    env.create_request("lost", spec("lost")).await;
    wait_for("the lost creation to land", WAIT, || async {
        env.active_keys_of("lost") == 1
    })
    .await;
    env.operator.kill9();
    env.sim.clear_faults();
    let lost = env.sim_keys_of("lost")[0].0.clone();
    delete_by_hand(&here, "lost").await;
    delete_by_hand(&here, "by-hand").await;
    // The other namespace goes while the operator is down, its request's finalizer stripped.
    let strip = json!({"metadata": {"finalizers": null}});
    there
        .patch("gone-ns", &PatchParams::default(), &Patch::Merge(strip))
        .await
        .expect("strip the finalizer");
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces
        .delete(&other_ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");
    wait_for(
        "the request of the deleted namespace to go",
        WAIT,
        || async {
            there
                .get_opt("gone-ns")
                .await
                .ok()
                .is_some_and(|r| r.is_none())
        },
    )
    .await;
    env.operator.start_again();
    env.operator.wait_ready().await;

    // Someone else's key on the same instance.
    let foreign = support::env::someone_elses_key(&env.ibm, "someone-elses-key")
        .await
        .guid;

    // A second cluster on the same instance, with the same namespace and request names.
    let cp2 = own_cluster();
    let same_ns: Namespace = serde_json::from_value(json!({"metadata": {"name": env.ns}})).unwrap();
    Api::<Namespace>::all(cp2.client().await)
        .create(&Default::default(), &same_ns)
        .await
        .expect("the same namespace in the second cluster");
    let routed = Some((env.sim.clone(), env.sim.base_url()));
    let second = Env::on(
        cp2,
        env.ns.clone(),
        cp2.kubeconfig_path(),
        &[],
        None,
        routed,
    )
    .await;
    second.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    let mut theirs = BTreeSet::new();
    for name in ["kept", "by-hand"] {
        second.create_request(name, spec(name)).await;
        theirs.insert(key_guid(&second.wait_ready(name).await));
    }

    let orphans: BTreeSet<String> = [&by_hand, &gone_ns, &lost].map(|g| g.clone()).into();
    let (code, rows) = audit(&env, &[]).await;
    assert_eq!(code, 1, "findings: exit status 1 ({rows:?})");
    let found: BTreeSet<String> = rows
        .iter()
        .filter(|(_, _, finding)| *finding)
        .map(|(_, guid, _)| guid.clone())
        .collect();
    assert_eq!(found, orphans, "exactly the three orphans: {rows:?}");
    assert!(
        rows.iter()
            .all(|(kind, _, finding)| !finding || kind == "orphan")
    );
    let listed = |kind: &str| -> BTreeSet<String> {
        rows.iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, g, _)| g.clone())
            .collect()
    };
    assert_eq!(listed("other-cluster"), theirs, "listed, never a finding");
    assert_eq!(listed("retained"), BTreeSet::from([retained.clone()]));

    let (code, _) = audit(&env, &["--delete-orphans"]).await;
    assert_eq!(code, 1, "not confirmed: nothing deleted");
    for guid in &orphans {
        assert_eq!(state(&env, guid), "active", "nothing deleted unconfirmed");
    }
    let (code, rows) = audit(&env, &["--delete-orphans", "--yes"]).await;
    assert_eq!(code, 0, "every finding deleted: {rows:?}");
    for guid in &orphans {
        assert_eq!(state(&env, guid), "removed", "orphan {guid} deleted");
    }
    let untouched = [&kept, &retained, &foreign].into_iter().chain(&theirs);
    for guid in untouched {
        assert_eq!(
            state(&env, guid),
            "active",
            "{guid} is not this cluster's orphan"
        );
    }
    let out = plugin(&env, &["audit"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("nothing found"), "{}", text(&out));
    second.finish().await;
    env.finish().await;
}

fn own_cluster() -> &'static ControlPlane {
    let assets = support::assets_dir().expect("control-plane binaries");
    Box::leak(Box::new(
        ControlPlane::start(&assets).expect("a control plane of this test's own"),
    ))
}

fn state(env: &Env, guid: &str) -> String {
    env.sim.key(guid).map(|k| k.state).unwrap_or_default()
}

/// With `--orphan-audit-interval`, the leader counts the orphans of each instance in use
/// (`ingestion_key_operator_orphan_keys{instance}`): 0 while every key has its request, 1 once a
/// request went with its finalizer removed by hand, 0 again after `audit --delete-orphans`.
#[tokio::test]
async fn the_leader_counts_orphans_per_instance() {
    let mut env =
        Env::with_operator_args("orphan-metric", &["--orphan-audit-interval", "1s"]).await;
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    for name in ["kept", "gone"] {
        env.create_request(name, spec(name)).await;
        env.wait_ready(name).await;
    }
    let sample = "ingestion_key_operator_orphan_keys{instance=\"my-activity-tracker\"}";
    let page = env.operator.metrics().await;
    wait_for("the first audit", WAIT, || async {
        env.operator
            .metrics()
            .await
            .contains(&format!("{sample} 0"))
    })
    .await;
    assert!(
        page.contains("# TYPE ingestion_key_operator_orphan_keys gauge"),
        "{page}"
    );

    env.operator.stop();
    delete_by_hand(&env.requests(), "gone").await;
    env.operator.start_again();
    env.operator.wait_ready().await;
    let operator = &env.operator;
    wait_for("the orphan to be counted", WAIT, || async {
        operator.metric(sample).await == 1.0
    })
    .await;

    let out = plugin(&env, &["audit", "-n", &env.ns, "--delete-orphans", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let operator = &env.operator;
    wait_for("the count to drop after the clean-up", WAIT, || async {
        operator.metric(sample).await == 0.0
    })
    .await;
    env.finish().await;
}
