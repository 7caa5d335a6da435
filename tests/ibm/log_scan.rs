//! The log scan: after a scenario through every path that handles a secret, no secret any test
//! of this binary registered appears in the captured logs.

use crate::harness::*;

#[tokio::test]
async fn secrets_never_appear_in_logs() {
    let env = env().await;
    // A scenario touching every path that handles a secret: exchange, credentials, redaction,
    // errors (including an unknown API key), retries and a re-exchange after 401.
    let created = env.create(MANAGER, "scan").await.unwrap();
    let ingestion = created.credentials.field("ingestion_key").unwrap();
    let per_key_apikey = created.credentials.field("apikey").unwrap();
    tracing::info!(?created, ?ingestion, %per_key_apikey, credentials = ?created.credentials, "debug output of secrets");
    env.create(READER, "scan-redacted").await.unwrap();
    let err = env
        .client
        .find_instances_by_name(
            &key("unknown-api-key-gggg7777"),
            &InstanceQuery::by_name("x"),
        )
        .await
        .unwrap_err();
    tracing::error!(error = %err, ?err, "rejected");
    SECRETS
        .lock()
        .unwrap()
        .push("unknown-api-key-gggg7777".into());
    // IAM error bodies that echo the API key of the form: one refused (400, not retried), one
    // 503 (retried, logged at info), then the exchange succeeds.
    let echoed = format!("upstream rejected the request for apikey={MANAGER_2}");
    env.inject(
        TOKEN,
        Faults {
            error_status: 400,
            error_body: Some(echoed.clone()),
            fail_count: Some(1),
            ..Faults::default()
        },
    );
    let err = env.keys(MANAGER_2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ApiKeyRejected, "{err}");
    assert!(err.message.contains("<redacted>"), "{err}");
    tracing::error!(error = %err, ?err, "IAM refused");
    env.inject(
        TOKEN,
        Faults {
            error_status: 503,
            error_body: Some(echoed),
            retry_after_seconds: Some(0),
            fail_count: Some(1),
            ..Faults::default()
        },
    );
    env.keys(MANAGER_2).await.unwrap();
    assert!(
        String::from_utf8_lossy(&logs().lock().unwrap())
            .contains("upstream rejected the request for apikey=<redacted>"),
        "the echoed IAM error was logged, scrubbed"
    );
    env.inject(
        "GET /v2/resource_keys",
        Faults {
            error_status: 503,
            retry_after_seconds: Some(0),
            fail_count: Some(1),
            ..Faults::default()
        },
    );
    env.read_key(MANAGER, &created.guid).await.unwrap();
    env.sim.expire_tokens();
    env.keys(MANAGER).await.unwrap();
    env.sim.reset_ingestion_key(AT_GUID);
    env.read_key(MANAGER, &created.crn).await.unwrap();
    assert_eq!(
        env.delete(MANAGER, &created.guid).await.unwrap(),
        KeyDeletion::Deleted
    );

    let mut secrets: Vec<String> = env
        .sim
        .secret_values()
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    secrets.extend(SECRETS.lock().unwrap().iter().cloned());
    assert!(
        secrets.iter().any(|s| s == MANAGER) && secrets.iter().any(|s| s == ingestion.expose())
    );
    assert!(env.sim.issued_tokens().len() >= 2);

    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    assert!(
        text.contains("exchanged API key for IAM token"),
        "client logs were captured"
    );
    assert!(text.contains("retrying transient IBM Cloud failure"));
    assert!(
        text.contains("simulator: resource key created"),
        "simulator logs were captured"
    );
    for secret in &secrets {
        assert!(secret.len() >= 8, "secret too short to scan for");
        assert!(
            !text.contains(secret.as_str()),
            "a secret value appears in the logs (fingerprint {})",
            SecretString::new(secret.clone()).fingerprint()
        );
    }
}
