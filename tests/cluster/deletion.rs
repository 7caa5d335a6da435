//! Deletion: the key deleted (or retained) and the request released.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn deletion_deletes_the_key_and_releases_the_request() {
    let h = Harness::new("rec-delete").await;
    let request = h.apply("at", spec_on(AT_GUID)).await;
    h.delete_request("at").await;
    h.reconcile("at").await.expect("cleanup");
    assert_eq!(h.active_keys_named(&key_name(&request)), 0);
    assert!(
        h.requests().get_opt("at").await.unwrap().is_none(),
        "the finalizer is removed, so the request is gone"
    );
}

#[tokio::test]
async fn deletion_with_retain_keeps_the_key() {
    let h = Harness::new("rec-retain").await;
    let mut spec = spec_on(AT_GUID);
    spec["deletionPolicy"] = "Retain".into();
    let request = h.apply("at", spec).await;
    h.delete_request("at").await;
    h.reconcile("at").await.expect("cleanup");
    let kept = h.sim_key(&key_guid(&request));
    assert_eq!(kept.state, "active", "Retain keeps the key in IBM Cloud");
    assert_eq!(
        kept.name,
        format!("{}:retained", key_name(&request)),
        "renamed out of the operator's name family, so that no audit takes it for an orphan"
    );
    assert!(h.requests().get_opt("at").await.unwrap().is_none());
}

/// A request restored from another cluster's backup: the same namespace and name, a new UID, and
/// the other cluster's key in its status. It gets a key of its own and never deletes theirs,
/// neither as a replaced key nor when it is deleted.
#[tokio::test]
async fn a_status_restored_from_another_cluster_never_deletes_that_clusters_key() {
    let mut h = Harness::new("rec-restored").await;
    h.restart_as_cluster("cluster-a");
    let spec = without_grace(spec_on(AT_GUID));
    let original = h.apply("at", spec.clone()).await;
    let theirs = key_guid(&original);
    // Cluster A keeps its request; here only its copy from the backup is left.
    let strip = json!({"metadata": {"finalizers": null}});
    let params = PatchParams::default();
    h.requests()
        .patch("at", &params, &Patch::Merge(strip))
        .await
        .unwrap();
    h.delete_request("at").await;

    h.restart_as_cluster("cluster-b");
    h.create("at", spec).await;
    let restored = json!({"status": original.status});
    let requests = h.requests();
    requests
        .patch_status("at", &params, &Patch::Merge(restored))
        .await
        .unwrap();
    h.refresh_due("at").await;
    for _ in 0..4 {
        h.reconcile("at")
            .await
            .expect("reconcile the restored request");
    }
    let request = h.get("at").await;
    let ours = key_guid(&request);
    assert_ne!(ours, theirs, "the restored request uses a key of its own");
    assert!(
        key_name(&request).ends_with(":cluster-b"),
        "{}",
        key_name(&request)
    );
    assert!(status_of(&request).retiring_keys.is_empty());
    assert_eq!(
        h.state_of(&theirs),
        "active",
        "cluster A's key is left alone"
    );
    let refusals = h.events("ResourceKeyRetained").await;
    assert!(
        refusals
            .iter()
            .any(|e| e.contains("another cluster or request")),
        "{refusals:?}"
    );

    h.delete_request("at").await;
    h.reconcile("at").await.expect("cleanup");
    assert_eq!(h.state_of(&ours), "removed");
    assert_eq!(
        h.state_of(&theirs),
        "active",
        "deletion leaves cluster A's key alone too"
    );
}
