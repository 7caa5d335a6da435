//! A restart target for the roll-out tests: a DaemonSet, and the part of its controller they
//! play (there is no kubelet, and the harness runs no workload controllers).

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

/// Creates the DaemonSet `name` in `namespace`.
pub async fn agent_daemonset(client: &Client, namespace: &str, name: &str) -> Api<DaemonSet> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "agent", "image": "logdna-agent:placeholder"}]},
            },
        },
    }))
    .expect("DaemonSet JSON");
    api.create(&PostParams::default(), &ds)
        .await
        .expect("create DaemonSet");
    api
}

/// The credential fingerprint on the DaemonSet's pod template.
pub fn template_fingerprint(ds: &DaemonSet) -> Option<String> {
    ds.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("keysync.dev/credential-fingerprint")
        .cloned()
}

/// Plays the DaemonSet controller: the current generation is rolled out on two nodes.
pub async fn complete_rollout(api: &Api<DaemonSet>, name: &str) {
    let generation = api.get(name).await.expect("DaemonSet").metadata.generation;
    let status = json!({"status": {
        "observedGeneration": generation,
        "desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberMisscheduled": 0,
        "numberReady": 2, "updatedNumberScheduled": 2, "numberAvailable": 2,
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("DaemonSet status");
}
