//! The Secret: never someone else's, never the API key's, one data key, moved in write-then-delete
//! order; refused writes are reported in the server's words.

use crate::harness::*;

#[tokio::test]
async fn a_foreign_secret_is_never_overwritten() {
    let h = Harness::new("rec-foreign").await;
    let foreign: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "logdna-agent-key"},
        "stringData": {"logdna-agent-key": "someone-elses-value"},
    }))
    .unwrap();
    h.secrets()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    h.create("at", spec_on(AT_GUID)).await;
    h.sim.reset_calls();
    let error = h.reconcile("at").await.expect_err("conflict");
    assert_eq!(error.reason(), reason::SECRET_CONFLICT);
    assert_eq!(
        h.sim.call_count(CREATE),
        0,
        "the conflict is found before a key is minted"
    );
    assert_eq!(
        h.secret_value().await.as_deref(),
        Some("someone-elses-value")
    );
}

#[tokio::test]
async fn the_api_key_secret_is_never_the_target_and_no_key_is_minted() {
    let spec = at_spec_with("secret", serde_json::json!({"name": "ibmcloud-api-key"}));
    let h = Harness::with_request("rec-self", spec).await;
    h.sim.reset_calls();
    let error = h.reconcile("at").await.expect_err("invalid");
    assert_eq!(error.reason(), reason::INVALID_SPEC);
    assert!(!error.to_string().contains("delete"), "{error}");
    assert_eq!(h.sim.call_count(CREATE), 0);
    let api_key = h.secret("ibmcloud-api-key").await;
    assert!(
        api_key.data.unwrap().contains_key("apikey"),
        "the API key is untouched"
    );
}

#[tokio::test]
async fn a_missing_api_key_field_names_the_keys_only_of_a_secret_that_opted_in() {
    let h = Harness::new("rec-field").await;
    let mut spec = spec_on(AT_GUID);
    spec["apiKeySecretRef"]["key"] = "api_key".into();
    h.create("at", spec).await;
    let error = h.reconcile("at").await.expect_err("no such key");
    assert_eq!(error.reason(), reason::API_KEY_SECRET_NOT_FOUND);
    let message = error.to_string();
    assert!(
        !message.contains("apikey") && message.contains("not listed"),
        "the author of a request may not be allowed to read the Secret: {message}"
    );
    h.opt_in_api_key_secret().await;
    let message = h
        .reconcile("at")
        .await
        .expect_err("no such key")
        .to_string();
    assert!(message.contains("keys present: apikey"), "{message}");
    assert!(!message.contains(MANAGER_KEY), "names only, never values");
}

#[tokio::test]
async fn a_refused_secret_write_is_reported_with_the_servers_words() {
    let h = Harness::new("rec-quota").await;
    // An exhausted quota on Secrets: one allowed, one used (the API key Secret). The harness runs
    // no quota controller, so the usage is written here as it would compute it.
    let quota: k8s_openapi::api::core::v1::ResourceQuota =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "no-more-secrets"},
            "spec": {"hard": {"count/secrets": "1"}},
        }))
        .unwrap();
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(h.client.clone(), &h.ns);
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("create the quota");
    let usage = serde_json::json!({"status": {
        "hard": {"count/secrets": "1"},
        "used": {"count/secrets": "1"},
    }});
    quotas
        .patch_status(
            "no-more-secrets",
            &PatchParams::default(),
            &Patch::Merge(usage),
        )
        .await
        .expect("record the quota's usage");
    h.create("at", spec_on(AT_GUID)).await;
    let error = h.reconcile("at").await.expect_err("the write is refused");
    assert_eq!(error.reason(), "SecretWriteRejected");
    let message = error.to_string();
    assert!(message.contains("quota"), "the server's words: {message}");
    let status = h.get("at").await.status.unwrap();
    assert_eq!(
        status.ready().map(|c| c.reason.as_str()),
        Some("SecretWriteRejected"),
        "{status:?}"
    );
    assert_eq!(h.events("SecretWriteRejected").await.len(), 1);
    assert!(h.secret_value().await.is_none());
}

#[tokio::test]
async fn a_new_secret_key_leaves_exactly_one_data_key() {
    let h = Harness::new("rec-secret-key").await;
    h.apply("at", spec_on(AT_GUID)).await;
    let uid = h.secret("logdna-agent-key").await.uid();
    h.patch_spec(
        "at",
        serde_json::json!({"secret": {"key": "ingestion-key"}}),
    )
    .await;
    h.reconcile("at").await.expect("new key");
    let secret = h.secret("logdna-agent-key").await;
    assert_eq!(secret.uid(), uid, "in place");
    let keys: Vec<String> = secret.data.unwrap().into_keys().collect();
    assert_eq!(keys, ["ingestion-key"]);
}

#[tokio::test]
async fn a_new_secret_name_writes_the_new_secret_then_deletes_the_old() {
    let h = Harness::new("rec-secret-name").await;
    h.apply("at", spec_on(AT_GUID)).await;
    let value = h.secret_value().await.unwrap();
    h.patch_spec("at", serde_json::json!({"secret": {"name": "agent-key"}}))
        .await;
    h.reconcile("at").await.expect("rename");
    assert!(
        h.secrets()
            .get_opt("logdna-agent-key")
            .await
            .unwrap()
            .is_none(),
        "the old Secret is gone"
    );
    let new = h.secret("agent-key").await;
    assert_eq!(secret_value(&new), Some(value));
    assert_eq!(h.events("SecretDeleted").await.len(), 1);
}
