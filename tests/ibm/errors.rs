//! IBM's error bodies become typed errors; permanent ones are not retried.

use crate::harness::*;

#[tokio::test]
async fn unknown_api_key_is_rejected_with_the_iam_error() {
    let env = env().await;
    let bad = "not-a-real-api-key-ffff6666";
    let err = env.find(bad, "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ApiKeyRejected);
    assert_eq!(err.status, Some(400));
    assert_eq!(err.code.as_deref(), Some("BXNIM0415E"));
    assert_eq!(err.message, "Provided API key could not be found");
    assert!(err.transaction_id.is_some());
    assert!(!err.is_transient());
    assert_eq!(
        env.sim.call_count(TOKEN),
        1,
        "a rejected API key is not retried"
    );
    assert_eq!(env.sim.call_count(LIST), 0);
    assert!(!err.to_string().contains(bad));
    assert!(!format!("{err:?}").contains(bad));
    SECRETS.lock().unwrap().push(bad.to_owned());
}

#[tokio::test]
async fn forbidden_and_bad_requests_are_not_retried() {
    let env = env().await;
    let err = env.create(VIEWER, "viewer-key").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    assert_eq!(err.status, Some(403));
    assert_eq!(err.code.as_deref(), Some("RC-IamErrorResponse"));
    assert!(err.transaction_id.is_some());
    assert_eq!(env.sim.call_count(CREATE), 1);

    let err = env.create(MANAGER, "bad/name").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRequest);
    assert_eq!(err.status, Some(400));
    assert_eq!(env.sim.call_count(CREATE), 2);

    let err = env
        .client
        .create_key(
            &key(MANAGER),
            &create_request("ok-name", "no-such-instance"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    // GETs are not retried on 400/403 either.
    env.fail(LIST, 403, 5);
    let err = env.find(MANAGER, "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    assert_eq!(env.sim.call_count(LIST), 1);
    env.fail(LIST, 400, 5);
    let err = env.find(MANAGER, "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRequest);
    assert_eq!(env.sim.call_count(LIST), 2);
    assert!(env.sim.keys().is_empty());
}

#[tokio::test]
async fn non_json_and_501_errors() {
    let env = env().await;
    env.inject(
        LIST,
        Faults {
            error_status: 502,
            error_body: Some("<html><body><h1>502 Bad Gateway</h1></body></html>".into()),
            fail_count: Some(10),
            ..Faults::default()
        },
    );
    let err = env.find(MANAGER, "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server);
    assert_eq!(err.status, Some(502));
    assert_eq!(err.code, None);
    assert!(err.message.contains("502 Bad Gateway"), "{}", err.message);
    assert!(err.is_transient());
    assert_eq!(env.sim.call_count(LIST), 4, "1 + max_retries");

    env.sim.reset_calls();
    env.fail(LIST, 501, 10);
    let err = env.find(MANAGER, "x").await.unwrap_err();
    assert_eq!(err.status, Some(501));
    assert!(!err.is_transient());
    assert_eq!(env.sim.call_count(LIST), 1, "501 is permanent");
    assert!(
        err.to_string()
            .starts_with("list resource instances failed: HTTP 501"),
        "{err}"
    );
}

#[tokio::test]
async fn iam_outages_are_retried() {
    let env = env().await;
    env.fail(TOKEN, 503, 2);
    env.warm(MANAGER).await;
    assert_eq!(env.sim.call_count(TOKEN), 3);
    assert_eq!(env.client.token_exchanges(), 3);
}
