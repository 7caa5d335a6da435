//! The controller end to end: the real operator binary against the real API server (harness) and
//! the IBM Cloud simulator over HTTP. Each test has its own namespace, simulator and operator.

use test_support as support;
use test_support::env as fixtures;

use fixtures::*;
use ibm_cloud_sim::Faults;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::wait_for;
use test_support::WAIT;

/// A request for the instance named `instance`, acting with the API key in Secret `api_key_secret`,
/// writing Secret `secret`.
fn request_to(instance: &str, api_key_secret: &str, secret: &str) -> serde_json::Value {
    json!({"instance": {"name": instance}, "apiKeySecretRef": {"name": api_key_secret}, "secret": {"name": secret}})
}

fn spec(instance: serde_json::Value) -> serde_json::Value {
    json!({"instance": instance, "apiKeySecretRef": {"name": "ibmcloud-api-key"}})
}

#[tokio::test]
async fn requests_by_name_guid_and_crn_become_ready_with_one_key_each() {
    let env = Env::new("by-name-guid-crn").await;
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    let crn = format!("crn:v1:bluemix:public:logdnaat:us-south:a/{ACCOUNT}:{AT_GUID}::");
    env.create_request(
        "by-name",
        request_to("my-activity-tracker", "ibmcloud-api-key", "by-name"),
    )
    .await;
    env.create_request("by-guid", json!({"instance": {"guid": AT_GUID}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}, "secret": {"name": "by-guid"}})).await;
    env.create_request("by-crn", json!({"instance": {"crn": crn}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}, "secret": {"name": "by-crn"}})).await;

    for name in ["by-name", "by-guid", "by-crn"] {
        let request = env.wait_ready(name).await;
        let status = request.status.clone().unwrap();
        let key = status.resource_key.clone().expect("key recorded in status");
        assert_eq!(status.instance.as_ref().unwrap().guid, AT_GUID);
        assert_eq!(status.secret_name.as_deref(), Some(name));
        assert_eq!(status.observed_generation, request.metadata.generation);
        assert!(
            key.name.starts_with(&format!("ikr:{}:{name}:", env.ns)),
            "{}",
            key.name
        );

        let expected = env.key_credential(&key.guid, "ingestion_key").await;
        let secret = env.secret(name).await.expect("Secret written");
        assert_eq!(
            secret_data(&secret, "logdna-agent-key").as_deref(),
            Some(expected.as_str())
        );
        assert_eq!(
            secret
                .labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("ingestion-key-operator")
        );
        let owner = &secret.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("IngestionKeyRequest", uid(&request).as_str(), Some(true))
        );
        assert!(
            status
                .key_fingerprint
                .as_deref()
                .is_some_and(|f| f.starts_with("sha256:") && !f.contains(&expected))
        );
        assert_eq!(env.active_keys_of(name), 1, "exactly one key for {name}");
    }
    assert!(env.has_event("ResourceKeyCreated").await);

    // A reconcile that finds everything in sync (here: triggered by an annotation) asks IBM
    // Cloud nothing until the refresh is due.
    env.sim.reset_calls();
    let successes = "ingestion_key_operator_reconcile_total{result=\"success\"}";
    let before = env.operator.metric(successes).await;
    env.requests()
        .patch(
            "by-name",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    let operator = &env.operator;
    wait_for("a reconcile after the annotation", WAIT, || async {
        operator.metric(successes).await > before
    })
    .await;
    let calls = env.sim.calls();
    assert!(
        calls.is_empty(),
        "no IBM Cloud call for a request in sync: {calls:?}"
    );

    // One API key value across three requests: the operator made one token exchange, not three.
    let metrics = env.operator.metrics().await;
    assert!(metrics.contains("ingestion_key_operator_ibm_requests_total{endpoint=\"POST /identity/token\",status=\"200\"} 1\n"), "{metrics}");
    assert!(
        metrics.contains("ingestion_key_operator_reconcile_total{result=\"success\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("ingestion_key_operator_ibm_requests_total{endpoint=\"POST /v2/resource_keys\",status=\"201\"} 3"), "{metrics}");
    env.finish().await;
}

#[tokio::test]
async fn cloud_logs_request_copies_the_keys_api_key() {
    let env = Env::with_operator_args("cloud-logs", &["--log-format", "json"]).await;
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    env.create_request(
        "logs-agent",
        json!({
            "instance": {"name": "my-cloud-logs", "serviceName": "logs"},
            "apiKeySecretRef": {"name": "ibmcloud-api-key"},
            "resourceKey": {"credentialField": "apikey", "role": "Sender"},
            "secret": {"name": "logs-agent", "key": "IAM_API_KEY"}
        }),
    )
    .await;
    let request = env.wait_ready("logs-agent").await;
    let key = request.status.unwrap().resource_key.unwrap();
    let sim_key = env.sim.key(&key.guid).unwrap();
    assert_eq!(
        sim_key.role, "Sender",
        "sent as the logs service's role CRN, which IBM accepts"
    );
    let expected = env.key_credential(&key.guid, "apikey").await;
    assert_ne!(
        expected, MANAGER_KEY,
        "the key's own API key, not the operator's"
    );
    assert_eq!(
        env.secret_value("logs-agent", "IAM_API_KEY").await,
        expected
    );
    // JSON logs: every line an object; one line per reconcile outcome, in the span naming the
    // request.
    let logs = env.operator.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["span"]["request"] == "logs-agent"
            && l["span"]["namespace"] == env.ns.as_str()
            && l["reason"] == "KeySynced"),
        "an outcome line for the request"
    );
    env.finish().await;
}

#[tokio::test]
async fn every_failure_reason_is_reported_while_healthy_requests_keep_working() {
    let env = Env::new("reasons").await;
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    env.api_key_secret("unknown-key", UNKNOWN_KEY).await;
    env.api_key_secret("reader-key", READER_KEY).await;
    env.api_key_secret("viewer-key", VIEWER_KEY).await;
    env.create_request(
        "healthy",
        request_to("my-log-analysis", "ibmcloud-api-key", "healthy"),
    )
    .await;

    // (request, its spec, the reason it must end with)
    #[rustfmt::skip]
    let cases = [
        ("invalid-spec", json!({"instance": {"name": "my-log-analysis", "guid": AT_GUID}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}}), "InvalidSpec"),
        ("no-api-key-secret", request_to("my-log-analysis", "missing", "s1"), "ApiKeySecretNotFound"),
        ("bad-api-key", request_to("my-log-analysis", "unknown-key", "s2"), "ApiKeyInvalid"),
        ("viewer", request_to("my-log-analysis", "viewer-key", "s3"), "PermissionDenied"),
        ("redacted", request_to("my-log-analysis", "reader-key", "s4"), "PermissionDenied"),
        ("no-instance", request_to("does-not-exist", "ibmcloud-api-key", "s5"), "InstanceNotFound"),
        ("ambiguous", request_to("shared-name", "ibmcloud-api-key", "s6"), "InstanceAmbiguous"),
        ("provisioning", request_to("still-provisioning", "ibmcloud-api-key", "s7"), "InstanceNotActive"),
        ("no-field", json!({"instance": {"name": "my-log-analysis"}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}, "resourceKey": {"credentialField": "no_such_field"}, "secret": {"name": "s8"}}), "CredentialFieldMissing"),
    ];
    for (name, spec, _) in &cases {
        env.create_request(name, spec.clone()).await;
    }
    for (name, _, reason) in &cases {
        let request = env.wait_reason(name, reason).await;
        assert!(
            !ready_message(&request).is_empty(),
            "{name}: a message says what to do"
        );
    }
    // Failing requests back off: no status rewrite per attempt, so no busy loop of reconciles.
    let failures = "ingestion_key_operator_reconcile_failures_total{reason=\"ApiKeyInvalid\"}";
    let before = env.operator.metric(failures).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await; // an interval to count in, not a wait for a condition
    let after = env.operator.metric(failures).await;
    assert!(
        after - before <= 2.0,
        "ApiKeyInvalid retried {} times in 3 s",
        after - before
    );

    let ambiguous = env.requests().get("ambiguous").await.unwrap();
    assert_eq!(
        ready_message(&ambiguous).matches("crn:v1:").count(),
        2,
        "lists both candidates: {}",
        ready_message(&ambiguous)
    );
    // The REDACTED key is recorded (so deletion cleans it up) and not multiplied.
    let redacted = env.requests().get("redacted").await.unwrap();
    assert!(redacted.status.as_ref().unwrap().resource_key.is_some());
    assert_eq!(env.active_keys_of("redacted"), 1);
    assert!(
        env.has_event("PermissionDenied").await,
        "a Warning event with the reason"
    );

    // The healthy request is served meanwhile.
    env.wait_ready("healthy").await;
    env.secret_value("healthy", "logdna-agent-key").await;

    // Fixing the missing API key Secret acts at once (the watch, not a long back-off).
    env.api_key_secret("missing", MANAGER_KEY).await;
    env.wait_ready("no-api-key-secret").await;
    env.secret_value("s1", "logdna-agent-key").await;
    env.finish().await;
}

/// The operator keeps an API key it has read while the Secrets' watch shows its Secret
/// unchanged: a corrected API key must be used as soon as it is written.
#[tokio::test]
async fn a_corrected_api_key_is_used_at_once() {
    let env = Env::new("corrected").await;
    env.api_key_secret("ibmcloud-api-key", UNKNOWN_KEY).await;
    env.create_request(
        "agent",
        request_to("my-log-analysis", "ibmcloud-api-key", "agent"),
    )
    .await;
    env.wait_reason("agent", "ApiKeyInvalid").await;

    let corrected = json!({"stringData": {"apikey": MANAGER_KEY}});
    env.secrets_api()
        .patch(
            "ibmcloud-api-key",
            &PatchParams::default(),
            &Patch::Merge(corrected),
        )
        .await
        .expect("the API key is corrected");
    env.wait_ready("agent").await;
    env.secret_value("agent", "logdna-agent-key").await;
    env.finish().await;
}

#[tokio::test]
async fn secrets_that_are_not_ours_are_never_touched() {
    let env = Env::new("conflict").await;
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    let foreign: Secret = serde_json::from_value(json!({"metadata": {"name": "logdna-agent-key", "labels": {"team": "x"}}, "stringData": {"logdna-agent-key": "hand-made"}})).unwrap();
    let foreign = env
        .secrets_api()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    env.create_request(
        "takes-foreign",
        spec(json!({"name": "my-activity-tracker"})),
    )
    .await;
    env.wait_reason("takes-foreign", "SecretConflict").await;
    let after = env.secret("logdna-agent-key").await.unwrap();
    assert_eq!(after.data, foreign.data);
    assert_eq!(after.metadata.labels, foreign.metadata.labels);
    assert_eq!(
        after.metadata.resource_version, foreign.metadata.resource_version,
        "byte-identical: never written"
    );

    env.create_request(
        "first",
        request_to("my-activity-tracker", "ibmcloud-api-key", "shared"),
    )
    .await;
    env.wait_ready("first").await;
    env.create_request(
        "second",
        request_to("my-activity-tracker", "ibmcloud-api-key", "shared"),
    )
    .await;
    let second = env.wait_reason("second", "SecretConflict").await;
    assert!(
        ready_message(&second).contains("first"),
        "{}",
        ready_message(&second)
    );
    let first = env.requests().get("first").await.unwrap();
    let shared = env.secret("shared").await.unwrap();
    assert_eq!(
        shared.owner_references()[0].uid,
        uid(&first),
        "still the first request's"
    );
    env.secret_value("shared", "logdna-agent-key").await;
    env.finish().await;
}

#[tokio::test]
async fn a_crash_during_key_creation_leaves_exactly_one_key_per_request() {
    let env = Env::new("crash").await;
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    // Creations land in IBM Cloud at once, but their replies take 5 s: the operator is killed
    // after keys exist that it has never seen, the case a blind retry would duplicate.
    env.sim.set_faults(Faults {
        response_delay_ms: 5000,
        matching: Some("POST /v2/resource_keys".into()),
        ..Default::default()
    });
    let names: Vec<String> = (0..4).map(|i| format!("crash-{i}")).collect();
    for name in &names {
        env.create_request(
            name,
            request_to("my-activity-tracker", "ibmcloud-api-key", name),
        )
        .await;
    }
    wait_for(
        "keys to exist whose creation replies are still in flight",
        WAIT,
        || async { names.iter().filter(|n| env.active_keys_of(n) == 1).count() >= 2 },
    )
    .await;
    let mut env = env;
    env.operator.kill9();
    env.sim.clear_faults();
    env.operator.restart();
    for name in &names {
        env.wait_ready(name).await;
    }
    for name in &names {
        let request = env.requests().get(name).await.unwrap();
        let recorded = request.status.unwrap().resource_key.unwrap().guid;
        let active: Vec<String> = env
            .sim_keys_of(name)
            .into_iter()
            .filter(|(_, s)| s == "active")
            .map(|(g, _)| g)
            .collect();
        assert_eq!(
            active,
            vec![recorded],
            "exactly one active key for {name}, the recorded one"
        );
        env.secret_value(name, "logdna-agent-key").await;
    }
    assert!(
        env.has_event("ResourceKeyReused").await,
        "keys created before the crash were found by name and reused"
    );
    env.finish().await;
}

#[tokio::test]
async fn deletion_follows_the_policy() {
    let env = Env::new("deletion").await;
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    env.create_request(
        "delete-me",
        request_to("my-activity-tracker", "ibmcloud-api-key", "delete-me"),
    )
    .await;
    env.create_request("retain-me", json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}, "secret": {"name": "retain-me"}, "deletionPolicy": "Retain"})).await;
    env.create_request(
        "never-keyed",
        request_to("does-not-exist", "ibmcloud-api-key", "never"),
    )
    .await;
    let delete_me = env.wait_ready("delete-me").await;
    env.wait_ready("retain-me").await;
    env.wait_reason("never-keyed", "InstanceNotFound").await;
    assert!(
        delete_me
            .finalizers()
            .contains(&"keysync.dev/resource-key".to_string())
    );
    env.secret_value("delete-me", "logdna-agent-key").await;

    // A failing delete keeps the finalizer and says DeletionBlocked; recovery releases it.
    env.sim.set_faults(Faults {
        error_rate: 1.0,
        error_status: 500,
        matching: Some("DELETE /v2/resource_keys".into()),
        ..Default::default()
    });
    env.delete_request("delete-me").await;
    env.wait_reason("delete-me", "DeletionBlocked").await;
    assert_eq!(env.active_keys_of("delete-me"), 1);
    env.sim.clear_faults();
    let requests = env.requests();
    wait_for("delete-me to be gone", WAIT, || async {
        requests.get_opt("delete-me").await.unwrap().is_none()
    })
    .await;
    assert_eq!(env.active_keys_of("delete-me"), 0);
    assert!(
        env.sim_keys_of("delete-me")
            .iter()
            .all(|(_, s)| s == "removed")
    );
    let secrets = env.secrets_api();
    if env.cp.has_controller_manager() {
        wait_for("the Secret to be garbage-collected", WAIT, || async {
            secrets.get_opt("delete-me").await.unwrap().is_none()
        })
        .await;
    }

    env.delete_request("retain-me").await;
    wait_for("retain-me to be gone", WAIT, || async {
        requests.get_opt("retain-me").await.unwrap().is_none()
    })
    .await;
    assert_eq!(
        env.active_keys_of("retain-me"),
        1,
        "Retain keeps the key in IBM Cloud"
    );

    env.sim.reset_calls();
    env.delete_request("never-keyed").await;
    wait_for("never-keyed to be gone", WAIT, || async {
        requests.get_opt("never-keyed").await.unwrap().is_none()
    })
    .await;
    let calls = env.sim.calls();
    assert!(
        calls.keys().all(|k| !k.starts_with("DELETE")),
        "released without deleting anything: {calls:?}"
    );
    env.finish().await;
}

#[tokio::test]
async fn drift_is_repaired_at_once() {
    // (A key reset in IBM Cloud reaching the Secret at the next refresh: keys.rs.)
    let env = Env::new("drift").await;
    let original = env.serve_first_request("drift").await;

    // Edited: restored.
    env.tamper("logdna-agent-key", "logdna-agent-key").await;
    env.wait_secret_value("logdna-agent-key", "logdna-agent-key", &original)
        .await;

    // Deleted: re-created.
    env.secrets_api()
        .delete("logdna-agent-key", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_secret_value("logdna-agent-key", "logdna-agent-key", &original)
        .await;

    assert!(env.has_event("SecretUpdated").await);
    env.finish().await;
}

#[tokio::test]
async fn an_outage_never_touches_a_good_secret_and_recovery_follows() {
    let env = Env::new("outage").await;
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    env.create_request("outage", json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}, "refreshInterval": "1m"})).await;
    env.wait_ready("outage").await;
    let before = env.secret("logdna-agent-key").await.unwrap();
    env.secret_value("logdna-agent-key", "logdna-agent-key")
        .await;

    env.sim.set_faults(Faults {
        error_rate: 1.0,
        error_status: 503,
        ..Default::default()
    });
    // A spec change makes the operator ask IBM Cloud now (refreshes are at least a minute apart).
    env.requests()
        .patch(
            "outage",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"refreshInterval": "2m"}})),
        )
        .await
        .unwrap();
    env.wait_reason("outage", "IbmCloudUnavailable").await;
    let during = env.secret("logdna-agent-key").await.unwrap();
    assert_eq!(
        during.metadata.resource_version, before.metadata.resource_version,
        "not written during the outage"
    );
    assert_eq!(during.data, before.data);

    env.sim.clear_faults();
    env.wait_ready("outage").await;
    assert_eq!(
        env.secret("logdna-agent-key").await.unwrap().data,
        before.data
    );
    env.finish().await;
}

#[tokio::test]
async fn many_requests_share_one_token_per_api_key() {
    let env = Env::new("tokens").await;
    env.api_key_secret("key-a", MANAGER_KEY).await;
    // The same API key value under another Secret name: still one token.
    env.api_key_secret("key-b", MANAGER_KEY).await;
    env.api_key_secret("reader", READER_KEY).await;
    let count = 40;
    for i in 0..count {
        let (secret_ref, instance) = match i % 3 {
            0 => ("key-a", "my-activity-tracker"),
            1 => ("key-b", "my-log-analysis"),
            _ => ("reader", "my-cloud-logs"),
        };
        let role = if secret_ref == "reader" {
            "Reader"
        } else {
            "Manager"
        };
        let field = if secret_ref == "reader" {
            "apikey"
        } else {
            "ingestion_key"
        };
        env.create_request(
            &format!("r{i}"),
            json!({"instance": {"name": instance}, "apiKeySecretRef": {"name": secret_ref}, "resourceKey": {"role": role, "credentialField": field}, "secret": {"name": format!("s{i}")}}),
        )
        .await;
    }
    for i in 0..count {
        env.wait_ready(&format!("r{i}")).await;
        env.secret_value(&format!("s{i}"), "logdna-agent-key").await;
    }
    let exchanges = env
        .sim
        .calls()
        .get("POST /identity/token")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        exchanges, 2,
        "{count} requests, 2 distinct API keys: 2 token exchanges"
    );
    env.finish().await;
}

#[tokio::test]
async fn moving_a_request_to_another_instance_replaces_its_key() {
    let env = Env::new("move").await;
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    env.create_request("mover", spec(json!({"name": "my-activity-tracker"})))
        .await;
    let before = env.wait_ready("mover").await;
    let old_key = before.status.unwrap().resource_key.unwrap().guid;
    let old_value = env
        .secret_value("logdna-agent-key", "logdna-agent-key")
        .await;
    let secret_uid = env.secret("logdna-agent-key").await.unwrap().uid();

    env.requests()
        .patch(
            "mover",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "instance": {"name": "my-log-analysis"},
                "rotation": {"gracePeriod": "0s"},
            }})),
        )
        .await
        .unwrap();
    let requests = env.requests();
    wait_for("the request to move to my-log-analysis", WAIT, || async {
        requests.get("mover").await.ok().is_some_and(|r| {
            ready_reason(&r).as_deref() == Some("KeySynced")
                && r.status
                    .as_ref()
                    .and_then(|s| s.instance.as_ref())
                    .is_some_and(|i| i.name == "my-log-analysis")
        })
    })
    .await;
    let after = env.requests().get("mover").await.unwrap();
    let new_key = after.status.unwrap().resource_key.unwrap().guid;
    assert_ne!(new_key, old_key);
    wait_for("the old key to be retired", WAIT, || async {
        env.sim_keys_of("mover")
            .contains(&(old_key.clone(), "removed".into()))
    })
    .await;
    let keys = env.sim_keys_of("mover");
    assert!(
        keys.contains(&(old_key, "removed".into())),
        "the old key is deleted: {keys:?}"
    );
    assert_eq!(env.active_keys_of("mover"), 1, "one request, one key");
    let new_value = env
        .secret_value("logdna-agent-key", "logdna-agent-key")
        .await;
    assert_ne!(new_value, old_value, "the new instance's ingestion key");
    assert_eq!(
        env.secret("logdna-agent-key").await.unwrap().uid(),
        secret_uid,
        "same Secret, updated in place"
    );
    env.finish().await;
}
