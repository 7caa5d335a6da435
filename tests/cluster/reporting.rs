//! What the admin sees: an event per step, and no instance shown that no longer resolves.

use crate::harness::*;

#[tokio::test]
async fn every_event_tells_what_happened_then() {
    let h = Harness::new("rec-events").await;
    h.apply("at", without_grace(spec_on(AT_GUID))).await;
    let first = key_guid(&h.get("at").await);
    h.move_to("at", LA_GUID).await;
    let second = key_guid(&h.get("at").await);
    h.move_to("at", AT_GUID).await;
    let third = key_guid(&h.get("at").await);
    let created = h.events("ResourceKeyCreated").await;
    for guid in [&first, &second, &third] {
        assert_eq!(
            created.iter().filter(|n| n.contains(guid.as_str())).count(),
            1,
            "one creation event names {guid}: {created:?}"
        );
    }
    let deleted = h.events("ResourceKeyDeleted").await;
    for guid in [&first, &second] {
        assert!(
            deleted.iter().any(|n| n.contains(guid.as_str())),
            "a deletion event names {guid}: {deleted:?}"
        );
    }
    let value = h.secret_value().await.unwrap();
    let fingerprint = h.get("at").await.status.unwrap().key_fingerprint.unwrap();
    // One event per key: the key created and the Secret that holds it, with its fingerprint.
    let third_created = created.iter().find(|n| n.contains(third.as_str()));
    assert!(
        third_created.is_some_and(|n| n.contains("updated Secret") && n.contains(&fingerprint)),
        "the latest creation names the Secret and the fingerprint it holds: {created:?}"
    );
    assert!(created.iter().all(|n| !n.contains(&value)));
}

#[tokio::test]
async fn an_instance_that_no_longer_resolves_is_not_shown() {
    let h = Harness::new("rec-stale").await;
    h.apply("at", spec_on(AT_GUID)).await;
    assert!(h.get("at").await.status.unwrap().instance.is_some());
    h.requests()
        .patch(
            "at",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"instance": {"guid": null, "name": "does-not-exist"}}}),
            ),
        )
        .await
        .unwrap();
    let error = h.reconcile("at").await.expect_err("not found");
    assert_eq!(error.reason(), reason::INSTANCE_NOT_FOUND);
    let status = h.get("at").await.status.unwrap();
    assert!(
        status.instance.is_none(),
        "INSTANCE must not show the previous instance: {:?}",
        status.instance
    );
    assert!(status.resource_key.is_some(), "what deletion needs stays");
}
