use ibm_cloud_sim::Faults;
use serde_json::json;
use test_support::env::{Env, MANAGER_KEY};

/// IBM Cloud (or a proxy in front of it) answers 200 with a body that is not its API: the
/// request reports it (`IbmCloudUnavailable`, "invalid response"; never a panic, never the body's
/// secret) and is Ready within seconds of IBM Cloud answering properly again.
#[tokio::test]
async fn garbage_from_ibm_cloud_is_reported_and_the_request_recovers() {
    let env = Env::new("garbage").await;
    env.api_key_secret("ibmcloud-api-key", MANAGER_KEY).await;
    let secret_in_body = "garbage-body-credential-5e1f";
    env.keep_secret(secret_in_body);
    env.sim.set_faults(Faults {
        error_rate: 1.0,
        error_status: 200,
        error_body: Some(format!(
            "<html><body>Bad gateway {secret_in_body} \u{0}\u{7f}{{\"resources\": [</body>"
        )),
        matching: Some("GET /v2/resource_instances".into()),
        ..Faults::default()
    });
    env.create_request(
        "garbled",
        json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}}),
    )
    .await;
    let reported = env.wait_reason("garbled", "IbmCloudUnavailable").await;
    let message = test_support::env::ready_message(&reported);
    assert!(message.contains("invalid response"), "{message}");
    assert!(!message.contains(secret_in_body), "{message}");

    env.sim.clear_faults();
    let recovering = std::time::Instant::now();
    env.wait_ready("garbled").await;
    println!(
        "Ready {:?} after IBM Cloud answered properly again",
        recovering.elapsed()
    );
    assert!(
        recovering.elapsed() < std::time::Duration::from_secs(30),
        "retried soon, not after the permanent back-off"
    );
    assert_eq!(env.active_keys_of("garbled"), 1);
    env.finish().await;
}
