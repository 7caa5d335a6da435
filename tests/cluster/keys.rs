//! Keys: one created per request and found again by name after a lost reply, pending creations
//! waited for, vanished keys replaced, duplicates removed, other people's keys never deleted.

use crate::harness::*;

#[tokio::test]
async fn a_new_request_creates_one_key_without_looking_anything_up() {
    let h = Harness::new("rec-new").await;
    h.create("at", spec_on(AT_GUID)).await;
    h.sim.reset_calls();
    h.reconcile("at").await.expect("apply");
    let request = h.get("at").await;
    assert_eq!(ready_reason(&request).as_deref(), Some(reason::KEY_SYNCED));
    assert_eq!(h.sim.call_count(CREATE), 1);
    assert_eq!(
        h.sim.call_count(FIND_BY_NAME),
        0,
        "no key of a never-created default name can exist: nothing to look up"
    );
    let guid = key_guid(&request);
    assert_eq!(
        h.secret_value().await.as_deref(),
        Some(h.credential_of(&guid).await.as_str())
    );
    assert_eq!(request.pending_key_creation(), None);
}

#[tokio::test]
async fn a_refresh_reads_the_recorded_key_and_creates_nothing() {
    let mut h = Harness::new("rec-refresh").await;
    h.apply("at", spec_on(AT_GUID)).await;
    h.refresh_due("at").await;
    h.sim.reset_calls();
    h.reconcile("at").await.expect("refresh");
    assert_eq!(h.sim.call_count(GET_KEY), 1);
    assert_eq!(h.sim.call_count(CREATE), 0);
    assert_eq!(h.sim.call_count(FIND_BY_NAME), 0);
    assert_eq!(
        ready_reason(&h.get("at").await).as_deref(),
        Some(reason::KEY_SYNCED)
    );
}

#[tokio::test]
async fn a_lost_creation_reply_is_found_by_name_not_created_twice() {
    let h = Harness::with_grace("rec-lost", Duration::ZERO).await;
    let (pending, error) = h.apply_losing_the_reply("at", spec_on(AT_GUID)).await;
    assert_eq!(error.reason(), reason::IBM_CLOUD_UNAVAILABLE);
    assert_eq!(h.active_keys_named(&pending.name), 1, "the key did land");

    h.reconcile("at").await.expect("apply after the lost reply");
    let request = h.get("at").await;
    assert_eq!(ready_reason(&request).as_deref(), Some(reason::KEY_SYNCED));
    assert_eq!(
        h.active_keys_named(&pending.name),
        1,
        "the landed key is reused"
    );
    assert_eq!(key_name(&request), pending.name);
    assert_eq!(request.pending_key_creation(), None);
}

#[tokio::test]
async fn a_pending_creation_within_its_grace_is_waited_for() {
    let h = Harness::with_grace("rec-grace", Duration::from_secs(60)).await;
    let (pending, _) = h.apply_losing_the_reply("at", spec_on(AT_GUID)).await;
    // The key landed, but a lookup right now must see it; hide it to play a slow IBM Cloud.
    let (guid, _) = h.keys_named(&pending.name).remove(0);
    h.ibm
        .delete_key(&SecretString::new(MANAGER_KEY), &guid)
        .await
        .unwrap();
    h.sim.reset_calls();
    let action = h.reconcile("at").await.expect("waits");
    assert_eq!(
        h.sim.call_count(CREATE),
        0,
        "never created within the grace"
    );
    assert_ne!(
        action,
        Action::await_change(),
        "it comes back to look again"
    );
    let request = h.get("at").await;
    assert_eq!(request.pending_key_creation(), Some(pending));
    let status = request.status.clone().unwrap();
    let ready = status.ready().unwrap();
    assert!(
        ready.message.contains("looks for it again in"),
        "the wait is visible: {}",
        ready.message
    );
}

#[tokio::test]
async fn a_refused_creation_clears_its_pending_record() {
    let spec = at_spec_with("resourceKey", serde_json::json!({"role": "NoSuchRole"}));
    let h = Harness::with_request("rec-refused", spec).await;
    let error = h.reconcile("at").await.expect_err("IBM refuses the role");
    assert_eq!(error.reason(), reason::INVALID_SPEC);
    assert!(
        h.get("at").await.pending_key_creation().is_none(),
        "a 400 made no key: nothing to wait for once the spec is fixed"
    );
    h.requests()
        .patch(
            "at",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"resourceKey": {"role": "Manager"}}})),
        )
        .await
        .unwrap();
    h.reconcile("at")
        .await
        .expect("the fixed spec applies at once");
    assert_eq!(
        ready_reason(&h.get("at").await).as_deref(),
        Some(reason::KEY_SYNCED)
    );
}

#[tokio::test]
async fn a_vanished_key_is_replaced_in_the_same_secret() {
    let mut h = Harness::new("rec-vanished").await;
    let before = h.apply("at", spec_on(AT_GUID)).await;
    let uid = h.secret("logdna-agent-key").await.uid();
    h.ibm
        .delete_key(&SecretString::new(MANAGER_KEY), &key_guid(&before))
        .await
        .unwrap();
    h.refresh_due("at").await;
    h.reconcile("at").await.expect("replace");
    let after = h.get("at").await;
    assert_ne!(key_guid(&after), key_guid(&before));
    assert_eq!(h.active_keys_named(&key_name(&after)), 1);
    assert_eq!(
        h.secret("logdna-agent-key").await.uid(),
        uid,
        "updated in place, never re-created"
    );
}

#[tokio::test]
async fn a_move_deletes_the_old_key_only_once_the_secret_holds_the_new_one() {
    let h = Harness::new("rec-move").await;
    let old = h.apply("at", without_grace(spec_on(AT_GUID))).await;
    let old_value = h.secret_value().await.unwrap();
    h.requests()
        .patch(
            "at",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"instance": {"guid": LA_GUID}}})),
        )
        .await
        .unwrap();
    h.reconcile("at").await.expect("move");
    let retiring = h.get("at").await.status.unwrap().retiring_keys;
    assert_eq!(
        retiring.len(),
        1,
        "the old key waits in status.retiringKeys"
    );
    assert_eq!(retiring[0].guid, key_guid(&old));
    h.reconcile("at").await.expect("retire");
    let new = h.get("at").await;
    assert!(new.status.as_ref().unwrap().retiring_keys.is_empty());
    let new_value = h.secret_value().await.unwrap();
    assert_ne!(new_value, old_value, "the other instance has its own key");
    assert_eq!(new_value, h.credential_of(&key_guid(&new)).await);
    let states = h.keys_named(&key_name(&old));
    let old_state = states.iter().find(|(g, _)| *g == key_guid(&old)).unwrap();
    assert_eq!(old_state.1, "removed", "the key used before is deleted");
    let at_delete = h.hooks.lock().unwrap().secret_at_delete.clone();
    assert_eq!(
        at_delete,
        vec![Some(new_value)],
        "when the old key was deleted, the Secret already held the new one"
    );
}

#[tokio::test]
async fn duplicates_of_the_default_name_are_deleted_keeping_one() {
    let h = Harness::with_grace("rec-dupes", Duration::ZERO).await;
    let (pending, _) = h.apply_losing_the_reply("at", spec_on(AT_GUID)).await;
    // A second creation of the same name landed too (a retry whose reply was also lost).
    let create = CreateKeyRequest {
        name: pending.name.clone(),
        source: AT_GUID.into(),
        role: "Manager".into(),
    };
    h.ibm
        .create_key(&SecretString::new(MANAGER_KEY), &create)
        .await
        .unwrap();
    assert_eq!(h.active_keys_named(&pending.name), 2);
    h.reconcile("at").await.expect("apply");
    assert_eq!(h.active_keys_named(&pending.name), 1);
    let kept = key_guid(&h.get("at").await);
    let first = h.keys_named(&pending.name)[0].0.clone();
    assert_eq!(kept, first, "the first creation is the one kept");
}

#[tokio::test]
async fn a_custom_named_key_that_exists_is_reused() {
    let h = Harness::new("rec-custom").await;
    let existing = h.someone_elses_key("team-key").await;
    h.create(
        "at",
        at_spec_with("resourceKey", serde_json::json!({"name": "team-key"})),
    )
    .await;
    h.sim.reset_calls();
    h.reconcile("at").await.expect("apply");
    assert_eq!(h.sim.call_count(CREATE), 0);
    assert_eq!(key_guid(&h.get("at").await), existing.guid);
}

#[tokio::test]
async fn a_key_reset_in_ibm_cloud_reaches_the_same_secret_at_the_next_refresh() {
    let mut h = Harness::new("rec-reset").await;
    h.apply("at", spec_on(AT_GUID)).await;
    let uid = h.secret("logdna-agent-key").await.uid();
    let rotated = h.sim.reset_ingestion_key(AT_GUID).expect("instance exists");
    h.refresh_due("at").await;
    h.reconcile("at").await.expect("refresh");
    assert_eq!(h.secret_value().await.as_deref(), Some(rotated.expose()));
    assert_eq!(
        h.secret("logdna-agent-key").await.uid(),
        uid,
        "updated in place, never re-created"
    );
    assert_eq!(h.events("SecretUpdated").await.len(), 1);
}

#[tokio::test]
async fn a_custom_named_key_made_by_someone_else_is_never_deleted() {
    let h = Harness::new("rec-foreign").await;
    let theirs = h.someone_elses_key("team-key").await;
    let mut spec = without_grace(spec_on(AT_GUID));
    spec["resourceKey"] = serde_json::json!({"name": "team-key"});
    h.apply("at", spec).await;
    assert_eq!(key_guid(&h.get("at").await), theirs.guid, "used");
    assert!(
        !status_of(&h.get("at").await)
            .resource_key
            .unwrap()
            .created_by_operator
    );
    // A rotation makes a key of ours and lets theirs go without deleting it.
    h.annotate_rotate("at", "1").await;
    h.reconcile("at").await.expect("rotate");
    h.reconcile("at").await.expect("retire");
    assert_eq!(key_name(&h.get("at").await), "team-key:r1");
    assert_eq!(h.state_of(&theirs.guid), "active", "never deleted");
    assert_eq!(h.events("ResourceKeyRetained").await.len(), 1);
    assert!(status_of(&h.get("at").await).retiring_keys.is_empty());
    // The key the operator made is deleted with the request; theirs stays.
    let ours = key_guid(&h.get("at").await);
    h.delete_request("at").await;
    h.reconcile("at").await.expect("cleanup");
    assert_eq!(h.state_of(&ours), "removed");
    assert_eq!(h.state_of(&theirs.guid), "active");
}

#[tokio::test]
async fn a_foreign_custom_named_key_survives_the_request_whatever_the_policy() {
    let h = Harness::new("rec-foreign-del").await;
    let theirs = h.someone_elses_key("shared-key").await;
    let mut spec = spec_on(AT_GUID);
    spec["resourceKey"] = serde_json::json!({"name": "shared-key"});
    spec["deletionPolicy"] = serde_json::json!("Delete");
    h.apply("at", spec).await;
    h.delete_request("at").await;
    h.reconcile("at").await.expect("cleanup");
    assert_eq!(h.state_of(&theirs.guid), "active");
    assert!(
        h.events("ResourceKeyRetained")
            .await
            .iter()
            .any(|n| n.contains("did not create"))
    );
}
