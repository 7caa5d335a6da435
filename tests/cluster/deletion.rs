//! Deletion: the key deleted (or retained) and the request released.

use crate::harness::*;

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
    h.sim.reset_calls();
    h.reconcile("at").await.expect("cleanup");
    assert_eq!(h.active_keys_named(&key_name(&request)), 1);
    assert!(h.sim.calls().values().all(|n| *n == 0) || h.sim.calls().is_empty());
    assert!(h.requests().get_opt("at").await.unwrap().is_none());
}
