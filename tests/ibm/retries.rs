//! Retries: Retry-After on 503 and 429, rate-limit windows and long pauses, the process budget,
//! exponential back-off and its cap, creation sent at most once, timeouts.

use crate::harness::*;

#[tokio::test]
async fn retries_honour_retry_after_on_503_and_429() {
    let env = env().await;
    env.warm(MANAGER).await; // token cached
    for status in [503, 429] {
        env.sim.reset_calls();
        env.inject(
            LIST,
            Faults {
                error_status: status,
                retry_after_seconds: Some(1),
                fail_count: Some(1),
                ..Faults::default()
            },
        );
        let (found, elapsed) = timed(env.find(MANAGER, "my-log-analysis")).await;
        assert_eq!(found.unwrap().len(), 1);
        assert!(
            elapsed >= Duration::from_millis(950),
            "{status}: waited only {elapsed:?} despite Retry-After: 1"
        );
        assert!(elapsed < Duration::from_secs(3), "{status}: {elapsed:?}");
        assert_eq!(env.sim.call_count(LIST), 2);
        assert_eq!(count(&env.client, LIST, &status.to_string()), 1);
    }
}

#[tokio::test]
async fn rate_limit_window_is_waited_out() {
    let env = env().await;
    env.warm(MANAGER).await;
    env.inject(
        LIST,
        Faults {
            rate_limit: Some(ibm_cloud_sim::RateLimit {
                limit: 2,
                window_seconds: 60,
                retry_after_seconds: 1,
            }),
            ..Faults::default()
        },
    );
    for _ in 0..2 {
        env.find(MANAGER, "my-log-analysis").await.unwrap();
    }
    // The third call in the window gets 429 + Retry-After: 1 on every attempt until retries run out.
    let (err, elapsed) = timed(env.find(MANAGER, "my-log-analysis")).await;
    let err = err.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert!(err.is_transient());
    assert!(
        elapsed >= Duration::from_millis(2900),
        "3 retries x 1 s: {elapsed:?}"
    );
    assert_eq!(env.sim.call_count(LIST), 2 + 4);
}

#[tokio::test]
async fn a_long_rate_limit_pauses_every_call_with_that_api_key_until_the_time_named() {
    let env = env().await;
    for api_key in [MANAGER, READER] {
        env.warm(api_key).await; // tokens cached
    }
    env.inject(
        LIST,
        Faults {
            error_status: 429,
            retry_after_seconds: Some(600),
            fail_count: Some(1),
            ..Faults::default()
        },
    );
    env.sim.reset_calls();
    let (err, elapsed) = timed(env.find(MANAGER, "my-log-analysis")).await;
    let err = err.unwrap_err();
    assert!(
        elapsed < Duration::from_secs(2),
        "a 10-minute pause is not slept through inside a call: {elapsed:?}"
    );
    let retry_at = err.retry_at.expect("the time IBM named");
    let ahead = retry_at
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(ahead > Duration::from_secs(590), "{ahead:?}");
    assert!(err.to_string().contains("asks to wait until"), "{err}");

    // The same API key: not even sent, whatever the endpoint.
    let err = env.instance(MANAGER, AT_GUID).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.retry_at, Some(retry_at));
    assert_eq!(env.sim.call_count(LIST), 1);
    assert_eq!(env.sim.call_count(GET_INSTANCE), 0);

    // Another API key is another caller.
    env.warm(READER).await;
}

#[tokio::test]
async fn requests_are_paced_to_the_process_budget() {
    let env = env_with(
        "",
        ClientConfig {
            max_rps: 5,
            ..fast_config()
        },
    )
    .await;
    let ((), elapsed) = timed(async {
        for _ in 0..15 {
            env.warm(MANAGER).await;
        }
    })
    .await;
    // 16 requests (a token exchange and 15 reads): a burst of 5, then 200 ms apart.
    assert!(elapsed >= Duration::from_millis(2000), "{elapsed:?}");
    assert_eq!(env.client.budget_stats().delayed_requests, 11);
}

#[tokio::test]
async fn exponential_backoff_without_server_hint_and_cap() {
    let env = env().await;
    env.warm(MANAGER).await;
    env.fail(LIST, 500, 3);
    let (found, elapsed) = timed(env.find(MANAGER, "x")).await;
    found.unwrap();
    // Generous bound (a loaded 2-core machine): the point is milliseconds, not the 500 ms default.
    assert!(
        elapsed < Duration::from_secs(5),
        "10/20/40 ms back-off: {elapsed:?}"
    );
    assert_eq!(env.sim.call_count(LIST), 4);

    // A Retry-After beyond max_backoff is capped.
    let capped = ClientConfig {
        max_backoff: Duration::from_millis(200),
        ..fast_config()
    };
    let env = env_with("", capped).await;
    env.inject(
        LIST,
        Faults {
            error_status: 503,
            retry_after_seconds: Some(30),
            fail_count: Some(1),
            ..Faults::default()
        },
    );
    let (found, elapsed) = timed(env.find(MANAGER, "x")).await;
    found.unwrap();
    assert!(
        elapsed < Duration::from_secs(10),
        "a 30 s Retry-After capped at 200 ms: {elapsed:?}"
    );
}

#[tokio::test]
async fn create_is_never_retried_once_sent() {
    let env = env().await;
    env.fail(CREATE, 503, 1);
    let err = env.create(MANAGER, "once").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server);
    assert!(
        err.is_transient(),
        "transient, so the caller will look the key up by name and try again later"
    );
    assert_eq!(env.sim.call_count(CREATE), 1);
    env.sim.clear_faults();
    env.create(MANAGER, "once").await.unwrap();
    assert_eq!(env.sim.keys().len(), 1);
}

#[tokio::test]
async fn create_is_retried_when_the_connection_was_never_made() {
    let env = env().await;
    // A port nobody listens on: bind, note, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoints = Endpoints::new(&env.sim.base_url(), &format!("http://{closed}")).unwrap();
    let client = IbmCloud::new(endpoints, fast_config()).unwrap();
    let err = client
        .create_key(&key(MANAGER), &create_request("never-sent", AT_GUID))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect);
    assert!(err.is_transient());
    assert_eq!(
        count(&client, CREATE, "error"),
        4,
        "connect failures are safe to retry"
    );
}

#[tokio::test]
async fn slow_responses_time_out() {
    let config = ClientConfig {
        request_timeout: Duration::from_millis(150),
        max_retries: 1,
        ..fast_config()
    };
    let env = env_with("", config).await;
    env.warm(MANAGER).await;
    env.inject(
        LIST,
        Faults {
            latency_ms: 2000,
            ..Faults::default()
        },
    );
    let (err, elapsed) = timed(env.find(MANAGER, "x")).await;
    let err = err.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_transient());
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(env.sim.call_count(LIST), 2, "timeouts of GETs are retried");
    assert_eq!(count(&env.client, LIST, "error"), 2);

    env.inject(
        CREATE,
        Faults {
            latency_ms: 2000,
            ..Faults::default()
        },
    );
    let err = env.create(MANAGER, "slow").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(
        env.sim.call_count(CREATE),
        1,
        "a POST that may have reached the server is not retried"
    );
}
