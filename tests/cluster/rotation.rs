//! The key lifecycle: rotations (by annotation, schedule, role change), grace periods, agent
//! roll-outs before the old key goes, retries of a failed delete, one-time credentials.

use crate::harness::*;

#[tokio::test]
async fn a_rotation_by_annotation_replaces_the_key_in_the_ibm_order() {
    let h = Harness::new("rec-rotate").await;
    let old = h.apply("at", without_grace(spec_on(AT_GUID))).await;
    let secret_uid = h.secret("logdna-agent-key").await.uid();
    // The admin generated a new ingestion key in IBM's web UI: a new resource key carries it.
    let reset = h.sim.reset_ingestion_key(AT_GUID).expect("instance");
    h.annotate_rotate("at", "2026-12-01T10:00").await;
    h.reconcile("at").await.expect("rotate");
    let rotated = h.get("at").await;
    let status = status_of(&rotated);
    assert_eq!(key_name(&rotated), format!("{}:r1", key_name(&old)));
    assert_eq!(h.secret_value().await.as_deref(), Some(reset.expose()));
    assert_eq!(
        h.secret("logdna-agent-key").await.uid(),
        secret_uid,
        "the same Secret, updated in place"
    );
    assert_eq!(
        status
            .rotation
            .as_ref()
            .and_then(|r| r.last_request.as_deref()),
        Some("2026-12-01T10:00")
    );
    assert!(
        status
            .rotation
            .as_ref()
            .unwrap()
            .last_rotation_time
            .is_some()
    );
    assert_eq!(status.retiring_keys.len(), 1, "{:?}", status.retiring_keys);
    assert_eq!(status.retiring_keys[0].guid, key_guid(&old));
    h.reconcile("at").await.expect("retire");
    assert_eq!(h.state_of(&key_guid(&old)), "removed");
    assert!(status_of(&h.get("at").await).retiring_keys.is_empty());
    let at_delete = h.hooks.lock().unwrap().secret_at_delete.clone();
    assert_eq!(at_delete, vec![Some(reset.expose().to_owned())]);
    assert_eq!(h.events("RotationStarted").await.len(), 1);
    assert_eq!(h.events("ResourceKeyDeleted").await.len(), 1);
    // Each value acts once.
    h.reconcile("at").await.expect("refresh");
    let created = h.sim.call_count(CREATE);
    h.reconcile("at").await.expect("refresh");
    assert_eq!(h.sim.call_count(CREATE), created, "no second rotation");
    assert_eq!(key_guid(&h.get("at").await), key_guid(&rotated));
}

#[tokio::test]
async fn a_replaced_key_lives_for_its_grace_period() {
    let spec = at_spec_with("rotation", serde_json::json!({"gracePeriod": "1h"}));
    let h = Harness::with_request("rec-grace", spec).await;
    h.reconcile("at").await.expect("apply");
    let old = key_guid(&h.get("at").await);
    h.annotate_rotate("at", "one").await;
    h.reconcile("at").await.expect("rotate");
    h.reconcile("at").await.expect("again");
    assert_eq!(h.state_of(&old), "active", "kept for the grace period");
    let retiring = status_of(&h.get("at").await).retiring_keys;
    let key = &retiring[0];
    let retired = key.retired_at.as_ref().expect("retiredAt").0;
    let after = key.delete_after.as_ref().expect("deleteAfter").0;
    let grace = after.duration_since(retired).as_secs();
    assert!(
        (3590..=3610).contains(&grace),
        "deleteAfter is 1h after: {grace}s"
    );
}

#[tokio::test]
async fn a_scheduled_rotation_runs_when_its_time_comes() {
    let h = Harness::with_settings("rec-schedule", |s| {
        s.min_rotation_interval = Duration::from_secs(1)
    })
    .await;
    let mut spec = spec_on(LOGS_GUID);
    spec["resourceKey"] = serde_json::json!({"role": "Sender", "credentialField": "apikey"});
    spec["rotation"] = serde_json::json!({"interval": "2s", "gracePeriod": "0s"});
    let first = h.apply("logs", spec).await;
    let next = status_of(&first)
        .rotation
        .and_then(|r| r.next_rotation_time)
        .expect("nextRotationTime is set")
        .0;
    // Before its time: nothing.
    h.reconcile("logs").await.expect("refresh");
    assert_eq!(key_guid(&h.get("logs").await), key_guid(&first));
    // The schedule is the clock under test: wait for the time it names.
    let wait = Duration::try_from(next.duration_since(k8s_openapi::jiff::Timestamp::now()))
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    h.reconcile("logs").await.expect("scheduled rotation");
    let rotated = h.get("logs").await;
    assert_eq!(key_name(&rotated), format!("{}:r1", key_name(&first)));
    let rotation = status_of(&rotated).rotation.unwrap();
    let last = rotation.last_rotation_time.unwrap().0;
    let next = rotation.next_rotation_time.unwrap().0;
    assert_eq!(
        next.duration_since(last).as_secs(),
        2,
        "the next one is an interval later"
    );
    let value = h.secret("logdna-agent-key").await;
    let value = String::from_utf8(value.data.unwrap()["logdna-agent-key"].0.clone()).unwrap();
    assert_ne!(
        value,
        h.credential_of_field(&key_guid(&first), "apikey").await,
        "a new API key"
    );
}

#[tokio::test]
async fn restart_targets_roll_out_and_the_old_key_waits_for_them() {
    let h = Harness::new("rec-rollout").await;
    let agents = agent_daemonset(&h.client, &h.ns, "logdna-agent").await;
    let mut spec = spec_on(AT_GUID);
    spec["rotation"] = serde_json::json!({"gracePeriod": "0s", "rolloutTimeout": "0s"});
    spec["restartTargets"] = serde_json::json!([
        {"kind": "DaemonSet", "name": "logdna-agent"},
        {"kind": "Deployment", "name": "not-there"},
    ]);
    let first = h.apply("at", spec).await;
    assert_eq!(
        ready_reason(&first).as_deref(),
        Some("KeySynced"),
        "a missing target never fails a sync"
    );
    let fingerprint = status_of(&first).key_fingerprint.unwrap();
    let ds = agents.get("logdna-agent").await.unwrap();
    assert_eq!(
        template_fingerprint(&ds).as_deref(),
        Some(fingerprint.as_str())
    );
    let rollout = status_of(&first).rollout.expect("status.rollout");
    assert_eq!(
        rollout.missing_targets,
        vec!["Deployment/not-there does not exist".to_owned()]
    );
    assert!(rollout.completed_at.is_none());
    assert_eq!(h.events("RestartTargetNotFound").await.len(), 1);
    complete_rollout(&agents, "logdna-agent").await;
    h.reconcile("at").await.expect("rolled out");
    assert!(
        status_of(&h.get("at").await)
            .rollout
            .unwrap()
            .completed_at
            .is_some()
    );
    assert_eq!(h.events("RolloutComplete").await.len(), 1);
    // A refresh with the same credential restarts nothing.
    let generation = agents
        .get("logdna-agent")
        .await
        .unwrap()
        .metadata
        .generation;
    h.reconcile("at").await.expect("refresh");
    assert_eq!(
        agents
            .get("logdna-agent")
            .await
            .unwrap()
            .metadata
            .generation,
        generation
    );

    // A rotation after a reset in the web UI: new key, Secret, restart, and the old key waits.
    let old = key_guid(&h.get("at").await);
    h.sim.reset_ingestion_key(AT_GUID).expect("instance");
    h.annotate_rotate("at", "r1").await;
    h.reconcile("at").await.expect("rotate");
    let rotated = h.get("at").await;
    let new_fingerprint = status_of(&rotated).key_fingerprint.unwrap();
    assert_ne!(new_fingerprint, fingerprint);
    let ds = agents.get("logdna-agent").await.unwrap();
    assert_eq!(
        template_fingerprint(&ds).as_deref(),
        Some(new_fingerprint.as_str())
    );
    assert_eq!(h.events("RolloutRestarted").await.len(), 2);
    h.reconcile("at").await.expect("rollout still running");
    assert_eq!(
        h.state_of(&old),
        "active",
        "kept until the agents run with the new key"
    );
    let retiring = status_of(&h.get("at").await).retiring_keys;
    assert!(retiring[0].delete_after.is_none(), "{retiring:?}");
    assert!(status_of(&h.get("at").await).rollout.unwrap().stalled);
    assert_eq!(
        h.events("RolloutStalled").await.len(),
        1,
        "rolloutTimeout 0s has passed"
    );
    complete_rollout(&agents, "logdna-agent").await;
    h.reconcile("at").await.expect("rolled out: grace starts");
    h.reconcile("at").await.expect("grace over: delete");
    assert_eq!(h.state_of(&old), "removed");
}

#[tokio::test]
async fn a_failed_delete_of_a_replaced_key_is_retried_until_it_succeeds() {
    let h = Harness::new("rec-delete-retry").await;
    h.apply("at", without_grace(spec_on(AT_GUID))).await;
    let old = key_guid(&h.get("at").await);
    h.annotate_rotate("at", "1").await;
    h.reconcile("at").await.expect("rotate");
    h.sim.set_faults(ibm_cloud_sim::Faults {
        // More failures than the client's own retries: the delete fails for the reconcile.
        error_status: 500,
        fail_count: Some(50),
        matching: Some("DELETE /v2/resource_keys".into()),
        ..Default::default()
    });
    h.reconcile("at")
        .await
        .expect("a failed delete does not fail the sync");
    assert_eq!(h.state_of(&old), "active");
    let request = h.get("at").await;
    let retiring = &status_of(&request).retiring_keys[0];
    assert_eq!(retiring.delete_attempts, 1);
    assert!(retiring.last_delete_error.is_some());
    let ready = request.status.as_ref().unwrap().conditions[0]
        .message
        .clone();
    assert!(
        ready.contains("last attempt failed"),
        "visible in Ready: {ready}"
    );
    assert_eq!(h.events("ResourceKeyDeleteFailed").await.len(), 1);
    h.sim.clear_faults();
    support::wait_for("the retried delete", Duration::from_secs(30), || async {
        h.reconcile("at").await.expect("retry");
        h.state_of(&old) == "removed"
    })
    .await;
    assert!(status_of(&h.get("at").await).retiring_keys.is_empty());
}

#[tokio::test]
async fn one_time_credentials_are_kept_and_replaced_only_when_lost() {
    let mut h = Harness::new("rec-onetime").await;
    let first = h.apply("at", without_grace(spec_on(ONETIME_GUID))).await;
    assert_eq!(ready_reason(&first).as_deref(), Some("KeySynced"));
    let value = h
        .secret_value()
        .await
        .expect("written from the creation response");
    assert_eq!(
        Some(value.clone()),
        h.sim
            .ingestion_key(ONETIME_GUID)
            .map(|k| k.expose().to_owned())
    );
    // A refresh reads the key: REDACTED, yet the Secret holds the recorded value.
    h.refresh_due("at").await;
    h.reconcile("at").await.expect("the refresh");
    let refreshed = h.get("at").await;
    assert_eq!(ready_reason(&refreshed).as_deref(), Some("KeySynced"));
    assert_eq!(key_guid(&refreshed), key_guid(&first), "no new key");
    // The Secret is deleted: the value is lost, so the key is replaced.
    h.secrets()
        .delete("logdna-agent-key", &DeleteParams::default())
        .await
        .unwrap();
    h.reconcile("at").await.expect("replace");
    let replaced = h.get("at").await;
    assert_eq!(key_name(&replaced), format!("{}:r1", key_name(&first)));
    assert_eq!(
        h.secret_value().await,
        Some(value),
        "the instance's ingestion key, again"
    );
    h.reconcile("at").await.expect("retire");
    assert_eq!(h.state_of(&key_guid(&first)), "removed");
}

#[tokio::test]
async fn sender_on_a_cloud_logs_instance_is_sent_as_its_role_crn() {
    let h = Harness::new("rec-sender").await;
    let mut spec = spec_on(LOGS_GUID);
    spec["resourceKey"] = serde_json::json!({"role": "Sender", "credentialField": "apikey"});
    spec["secret"] = serde_json::json!({"name": "logs-agent", "key": "IAM_API_KEY"});
    let request = h.apply("logs", spec).await;
    assert_eq!(ready_reason(&request).as_deref(), Some("KeySynced"));
    let recorded = status_of(&request).resource_key.unwrap();
    assert_eq!(
        recorded.role,
        "crn:v1:bluemix:public:logs::::serviceRole:Sender"
    );
    let key = h.sim_key(&recorded.guid);
    assert_eq!(key.role, "Sender");
    let secret = h.secret("logs-agent").await;
    let data = secret.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["IAM_API_KEY"]);
}

#[tokio::test]
async fn a_role_change_replaces_the_key() {
    let h = Harness::new("rec-role").await;
    let old = h.apply("at", without_grace(spec_on(AT_GUID))).await;
    h.patch_spec("at", serde_json::json!({"resourceKey": {"role": "Writer"}}))
        .await;
    h.reconcile("at").await.expect("replace");
    let new = h.get("at").await;
    assert_eq!(key_name(&new), format!("{}:r1", key_name(&old)));
    assert_eq!(status_of(&new).resource_key.unwrap().role, "Writer");
    let key = h.sim_key(&key_guid(&new));
    assert_eq!(key.role, "Writer");
    h.reconcile("at").await.expect("retire");
    assert_eq!(h.state_of(&key_guid(&old)), "removed");
}
