//! The token cache: one exchange per API key, refresh at 80 % of the lifetime, never a token
//! within 10 s of expiry, one re-exchange after a 401.

use crate::harness::*;

#[tokio::test]
async fn concurrent_callers_share_one_token_exchange_per_api_key() {
    let env = env().await;
    let query = InstanceQuery::by_name("my-log-analysis");
    let calls = (0..32).map(|_| {
        let client = env.client.clone();
        let query = query.clone();
        async move { client.find_instances_by_name(&key(MANAGER), &query).await }
    });
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap().len(), 1);
    }
    assert_eq!(
        env.sim.call_count(TOKEN),
        1,
        "32 concurrent calls with one API key share one exchange"
    );
    assert_eq!(env.client.token_exchanges(), 1);
    assert_eq!(env.sim.call_count(LIST), 32);

    // A second API key gets its own token; the first key's token is still reused.
    let second = (0..8).map(|i| {
        let client = env.client.clone();
        let query = query.clone();
        async move {
            client
                .find_instances_by_name(&key(if i % 2 == 0 { MANAGER_2 } else { MANAGER }), &query)
                .await
        }
    });
    for result in futures::future::join_all(second).await {
        result.unwrap();
    }
    assert_eq!(env.sim.call_count(TOKEN), 2);
    assert_eq!(env.client.token_exchanges(), 2);
}

#[tokio::test]
async fn token_is_refreshed_after_80_percent_of_its_lifetime() {
    let env = env().await; // token_ttl_seconds 3600
    env.find(MANAGER, "my-log-analysis").await.unwrap();
    env.client.advance_clock(Duration::from_secs(2870));
    env.find(MANAGER, "my-log-analysis").await.unwrap();
    assert_eq!(
        env.sim.call_count(TOKEN),
        1,
        "before 80% of the lifetime the cached token is used"
    );
    env.client.advance_clock(Duration::from_secs(20)); // 2890 s > 2880 s = 80% of 3600 s
    env.find(MANAGER, "my-log-analysis").await.unwrap();
    assert_eq!(
        env.sim.call_count(TOKEN),
        2,
        "past 80% the token is refreshed"
    );
    env.find(MANAGER, "my-log-analysis").await.unwrap();
    assert_eq!(
        env.sim.call_count(TOKEN),
        2,
        "the refreshed token is cached again"
    );
}

#[tokio::test]
async fn tokens_within_10s_of_expiry_are_never_used() {
    // A 5 s token is inside the 10 s expiry window on arrival: each call exchanges again.
    let env = env_with("token_ttl_seconds: 5", fast_config()).await;
    for _ in 0..3 {
        assert_eq!(env.find(MANAGER, "my-log-analysis").await.unwrap().len(), 1);
    }
    assert_eq!(env.sim.call_count(TOKEN), 3);
}

#[tokio::test]
async fn rejected_token_is_exchanged_again_exactly_once() {
    let env = env().await;
    env.warm(MANAGER).await;
    env.sim.expire_tokens(); // the server now answers 401 "Token is expired" to the cached token
    let instance = env.instance(MANAGER, AT_GUID).await.unwrap();
    assert_eq!(instance.guid, AT_GUID);
    assert_eq!(env.sim.call_count(TOKEN), 2);
    assert_eq!(count(&env.client, GET_INSTANCE, "401"), 1);
    assert_eq!(count(&env.client, GET_INSTANCE, "200"), 2);

    // A 401 that persists after the re-exchange is reported, not looped on.
    env.fail(GET_INSTANCE, 401, 10);
    let err = env.instance(MANAGER, AT_GUID).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    assert_eq!(err.status, Some(401));
    assert!(!err.is_transient());
    assert_eq!(
        env.sim.call_count(TOKEN),
        3,
        "exactly one re-exchange per 401"
    );
    assert_eq!(count(&env.client, GET_INSTANCE, "401"), 3);
}
