//! IBM Cloud client tests over real HTTP against the in-process simulator.
//!
//! Every test starts its own simulator on 127.0.0.1:0. All log output of this test binary (client,
//! simulator, reqwest) is captured at TRACE level into one buffer; `secrets_never_appear_in_logs`
//! runs its own scenario and then checks that buffer for every secret any test has registered.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ibm_cloud_sim::{Faults, Seed, SeedInstance, Simulator};
use ingestion_key_operator::ibm::{
    ClientConfig, CreateKeyRequest, CredentialError, Endpoints, ErrorKind, IbmCloud, InstanceQuery,
    KeyDeletion, SecretString,
};

// ---- log capture ------------------------------------------------------------------------------

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
/// Secret values seen by any test, checked against the log buffer by the scan test.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init()
            .expect("install the test subscriber once");
        buffer
    })
    .clone()
}

// ---- fixtures -----------------------------------------------------------------------------------

const MANAGER: &str = "test-api-key-manager-aaaa1111";
const MANAGER_2: &str = "test-api-key-manager-bbbb2222";
const READER: &str = "test-api-key-reader-cccc3333";
const VIEWER: &str = "test-api-key-viewer-dddd4444";
const OTHER_ACCOUNT: &str = "test-api-key-other-eeee5555";
const AT_GUID: &str = "8d7af921-b136-4078-9666-081bd8470d94";
const AT_INGESTION_KEY: &str = "0123456789abcdef0123456789abcdef";
const OTHER_GUID: &str = "11111111-2222-3333-4444-555555555555";

fn seed_yaml(extra: &str) -> String {
    format!(
        r#"
{extra}
accounts:
  - id: acc-one
    api_keys:
      - {{ key: "{MANAGER}", platform_role: Editor, service_role: Manager }}
      - {{ key: "{MANAGER_2}", platform_role: Administrator, service_role: Manager }}
      - {{ key: "{READER}", platform_role: Editor, service_role: Reader }}
      - {{ key: "{VIEWER}", platform_role: Viewer, service_role: Manager }}
    instances:
      - {{ name: my-activity-tracker, guid: "{AT_GUID}", service: logdnaat, region: us-south, ingestion_key: "{AT_INGESTION_KEY}" }}
      - {{ name: my-log-analysis, service: logdna, region: eu-de }}
      - {{ name: my-cloud-logs, service: logs, region: us-south }}
      - {{ name: shared-name, service: logdna, region: us-south }}
      - {{ name: shared-name, service: logdnaat, region: eu-gb, resource_group_id: rg-two }}
  - id: acc-two
    api_keys:
      - {{ key: "{OTHER_ACCOUNT}" }}
    instances:
      - {{ name: other-account-instance, guid: "{OTHER_GUID}", service: logdna }}
"#
    )
}

fn key(value: &str) -> SecretString {
    SecretString::new(value)
}

/// Small back-off so retry tests are fast; real timeouts.
fn fast_config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        max_retries: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_secs(2),
        // High enough that the budget never paces these tests (its own test sets it low).
        max_rps: 1000,
    }
}

struct Env {
    sim: Simulator,
    client: IbmCloud,
}

impl Drop for Env {
    fn drop(&mut self) {
        let mut secrets = SECRETS.lock().unwrap();
        secrets.extend(
            self.sim
                .secret_values()
                .iter()
                .map(|s| s.expose().to_owned()),
        );
    }
}

async fn env_with(extra_seed: &str, config: ClientConfig) -> Env {
    logs();
    let seed = Seed::from_yaml(&seed_yaml(extra_seed)).expect("test seed parses");
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), seed)
        .await
        .expect("simulator starts");
    let endpoints = Endpoints::new(&sim.base_url(), &sim.base_url()).unwrap();
    let client = IbmCloud::new(endpoints, config).unwrap();
    Env { sim, client }
}

async fn env() -> Env {
    env_with("", fast_config()).await
}

fn count(client: &IbmCloud, endpoint: &str, status: &str) -> u64 {
    client
        .request_counts()
        .into_iter()
        .find(|((e, s), _)| e == endpoint && s == status)
        .map(|(_, n)| n)
        .unwrap_or(0)
}

fn create_request(name: &str, source: &str) -> CreateKeyRequest {
    CreateKeyRequest {
        name: name.to_owned(),
        source: source.to_owned(),
        role: "Manager".to_owned(),
    }
}

const TOKEN: &str = "POST /identity/token";
const LIST: &str = "GET /v2/resource_instances";
const CREATE: &str = "POST /v2/resource_keys";

// ---- token cache ----------------------------------------------------------------------------------

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
    let q = InstanceQuery::by_name("my-log-analysis");
    env.client
        .find_instances_by_name(&key(MANAGER), &q)
        .await
        .unwrap();
    env.client.advance_clock(Duration::from_secs(2870));
    env.client
        .find_instances_by_name(&key(MANAGER), &q)
        .await
        .unwrap();
    assert_eq!(
        env.sim.call_count(TOKEN),
        1,
        "before 80% of the lifetime the cached token is used"
    );
    env.client.advance_clock(Duration::from_secs(20)); // 2890 s > 2880 s = 80% of 3600 s
    env.client
        .find_instances_by_name(&key(MANAGER), &q)
        .await
        .unwrap();
    assert_eq!(
        env.sim.call_count(TOKEN),
        2,
        "past 80% the token is refreshed"
    );
    env.client
        .find_instances_by_name(&key(MANAGER), &q)
        .await
        .unwrap();
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
    let q = InstanceQuery::by_name("my-log-analysis");
    for _ in 0..3 {
        assert_eq!(
            env.client
                .find_instances_by_name(&key(MANAGER), &q)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    assert_eq!(env.sim.call_count(TOKEN), 3);
}

#[tokio::test]
async fn rejected_token_is_exchanged_again_exactly_once() {
    let env = env().await;
    env.client
        .get_instance(&key(MANAGER), AT_GUID)
        .await
        .unwrap();
    env.sim.expire_tokens(); // the server now answers 401 "Token is expired" to the cached token
    let instance = env
        .client
        .get_instance(&key(MANAGER), AT_GUID)
        .await
        .unwrap();
    assert_eq!(instance.guid, AT_GUID);
    assert_eq!(env.sim.call_count(TOKEN), 2);
    assert_eq!(
        count(&env.client, "GET /v2/resource_instances/{id}", "401"),
        1
    );
    assert_eq!(
        count(&env.client, "GET /v2/resource_instances/{id}", "200"),
        2
    );

    // A 401 that persists after the re-exchange is reported, not looped on.
    env.sim.set_faults(Faults {
        error_status: 401,
        matching: Some("GET /v2/resource_instances/{id}".into()),
        fail_count: Some(10),
        ..Faults::default()
    });
    let err = env
        .client
        .get_instance(&key(MANAGER), AT_GUID)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    assert_eq!(err.status, Some(401));
    assert!(!err.is_transient());
    assert_eq!(
        env.sim.call_count(TOKEN),
        3,
        "exactly one re-exchange per 401"
    );
    assert_eq!(
        count(&env.client, "GET /v2/resource_instances/{id}", "401"),
        3
    );
}

// ---- instances ----------------------------------------------------------------------------------

async fn add_bulk(sim: &Simulator, n: usize) -> Vec<String> {
    let mut guids = Vec::new();
    for i in 0..n {
        guids.push(
            sim.add_instance("acc-one", SeedInstance::new("bulk-instance", "logdna"))
                .unwrap(),
        );
        if i % 10 == 0 {
            sim.add_instance("acc-one", SeedInstance::new(format!("noise-{i}"), "logdna"))
                .unwrap();
        }
    }
    guids
}

#[tokio::test]
async fn pagination_follows_relative_next_url_across_pages() {
    let env = env().await;
    let mut expected = add_bulk(&env.sim, 250).await;
    let mut found: Vec<String> = env
        .client
        .find_instances_by_name(&key(MANAGER), &InstanceQuery::by_name("bulk-instance"))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.guid)
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "all 250 instances across 3 pages");
    assert_eq!(env.sim.call_count(LIST), 3);
}

#[tokio::test]
async fn pagination_follows_absolute_next_url() {
    let env = env_with("absolute_next_url: true\npage_size: 40", fast_config()).await;
    add_bulk(&env.sim, 130).await;
    let found = env
        .client
        .find_instances_by_name(&key(MANAGER), &InstanceQuery::by_name("bulk-instance"))
        .await
        .unwrap();
    assert_eq!(found.len(), 130);
    assert_eq!(env.sim.call_count(LIST), 4, "40 + 40 + 40 + 10");
}

#[tokio::test]
async fn name_lookup_narrows_and_reports_ambiguity() {
    let env = env().await;
    let find = |q: InstanceQuery| {
        let client = env.client.clone();
        async move {
            client
                .find_instances_by_name(&key(MANAGER), &q)
                .await
                .unwrap()
        }
    };
    let both = find(InstanceQuery::by_name("shared-name")).await;
    assert_eq!(both.len(), 2, "ambiguous: the caller decides");
    let by_region = find(InstanceQuery {
        region: Some("us-south".into()),
        ..InstanceQuery::by_name("shared-name")
    })
    .await;
    assert_eq!(by_region.len(), 1);
    assert_eq!(by_region[0].region_id.as_deref(), Some("us-south"));
    assert_eq!(by_region[0].service_name(), Some("logdna"));
    let by_service = find(InstanceQuery {
        service_name: Some("logdnaat".into()),
        ..InstanceQuery::by_name("shared-name")
    })
    .await;
    assert_eq!(by_service.len(), 1);
    assert_eq!(by_service[0].region_id.as_deref(), Some("eu-gb"));
    let by_group = find(InstanceQuery {
        resource_group_id: Some("rg-two".into()),
        ..InstanceQuery::by_name("shared-name")
    })
    .await;
    assert_eq!(by_group.len(), 1);
    assert_eq!(by_group[0].resource_group_id.as_deref(), Some("rg-two"));
    assert!(
        find(InstanceQuery {
            region: Some("eu-de".into()),
            ..InstanceQuery::by_name("shared-name")
        })
        .await
        .is_empty()
    );
    assert!(
        find(InstanceQuery::by_name("shared")).await.is_empty(),
        "names match exactly"
    );
    assert!(
        find(InstanceQuery::by_name("other-account-instance"))
            .await
            .is_empty(),
        "another account's instances are invisible"
    );
    let other = env
        .client
        .find_instances_by_name(
            &key(OTHER_ACCOUNT),
            &InstanceQuery::by_name("other-account-instance"),
        )
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    let at = find(InstanceQuery::by_name("my-activity-tracker")).await;
    assert_eq!(at[0].id, at[0].crn);
    assert!(at[0].is_active());
    assert_eq!(at[0].account_id.as_deref(), Some("acc-one"));
}

#[tokio::test]
async fn instance_by_guid_and_by_url_encoded_crn() {
    let env = env().await;
    let by_guid = env
        .client
        .get_instance(&key(MANAGER), AT_GUID)
        .await
        .unwrap();
    assert_eq!(by_guid.name, "my-activity-tracker");
    assert_eq!(by_guid.service_name(), Some("logdnaat"));
    assert!(by_guid.crn.contains("a/acc-one"), "the CRN contains a '/'");
    let by_crn = env
        .client
        .get_instance(&key(MANAGER), &by_guid.crn)
        .await
        .unwrap();
    assert_eq!(by_crn.guid, AT_GUID);

    let missing = env
        .client
        .get_instance(&key(MANAGER), "00000000-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(missing.status, Some(404));
    assert!(missing.transaction_id.is_some());
    assert!(!missing.is_transient());
    let foreign = env
        .client
        .get_instance(&key(MANAGER), OTHER_GUID)
        .await
        .unwrap_err();
    assert_eq!(foreign.kind(), ErrorKind::NotFound);
}

// ---- keys -----------------------------------------------------------------------------------------

#[tokio::test]
async fn key_lifecycle_create_get_reset_delete() {
    let env = env().await;
    let api_key = key(MANAGER);
    let created = env
        .client
        .create_key(&api_key, &create_request("ns.request:uid-1", AT_GUID))
        .await
        .unwrap();
    assert_eq!(count(&env.client, CREATE, "201"), 1);
    assert!(created.is_active());
    assert_eq!(created.id, created.crn);
    assert_eq!(created.instance_guid(), Some(AT_GUID));
    assert_eq!(
        created.credentials.field("ingestion_key").unwrap().expose(),
        AT_INGESTION_KEY
    );
    assert!(!created.credentials.field("apikey").unwrap().is_empty());
    assert!(
        created
            .credentials
            .field("iam_role_crn")
            .unwrap()
            .expose()
            .ends_with("serviceRole:Manager")
    );

    let listed = env
        .client
        .list_instance_keys(&api_key, AT_GUID)
        .await
        .unwrap();
    assert_eq!(listed.iter().filter(|k| k.guid == created.guid).count(), 1);
    assert_eq!(
        env.client
            .get_key(&api_key, &created.guid)
            .await
            .unwrap()
            .name,
        "ns.request:uid-1"
    );
    assert_eq!(
        env.client
            .get_key(&api_key, &created.crn)
            .await
            .unwrap()
            .guid,
        created.guid,
        "by URL-encoded CRN"
    );

    // A reset in the "web UI" shows up in existing keys' credentials.
    let rotated = env.sim.reset_ingestion_key(AT_GUID).unwrap();
    assert_ne!(rotated.expose(), AT_INGESTION_KEY);
    let reread = env.client.get_key(&api_key, &created.guid).await.unwrap();
    assert_eq!(
        reread.credentials.field("ingestion_key").unwrap().expose(),
        rotated.expose()
    );

    assert_eq!(
        env.client
            .delete_key(&api_key, &created.guid)
            .await
            .unwrap(),
        KeyDeletion::Deleted
    );
    assert_eq!(
        count(&env.client, "DELETE /v2/resource_keys/{id}", "204"),
        1
    );
    let removed = env.client.get_key(&api_key, &created.guid).await.unwrap();
    assert_eq!(removed.state, "removed");
    assert!(!removed.is_active());
    let after = env
        .client
        .list_instance_keys(&api_key, AT_GUID)
        .await
        .unwrap();
    assert!(
        after.iter().all(|k| !k.is_active()),
        "removed keys are never reusable"
    );

    assert_eq!(
        env.client
            .delete_key(&api_key, &created.guid)
            .await
            .unwrap(),
        KeyDeletion::AlreadyGone
    );
    assert_eq!(
        count(&env.client, "DELETE /v2/resource_keys/{id}", "410"),
        1
    );
    assert_eq!(
        env.client
            .delete_key(&api_key, "99999999-0000-0000-0000-000000000000")
            .await
            .unwrap(),
        KeyDeletion::AlreadyGone
    );
    assert_eq!(
        count(&env.client, "DELETE /v2/resource_keys/{id}", "404"),
        1
    );
    assert_eq!(
        env.sim
            .keys()
            .iter()
            .filter(|k| k.state == "removed")
            .count(),
        1
    );

    let missing = env
        .client
        .get_key(&api_key, "99999999-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn cloud_logs_keys_carry_only_iam_fields() {
    let env = env().await;
    let logs = env
        .client
        .find_instances_by_name(&key(MANAGER), &InstanceQuery::by_name("my-cloud-logs"))
        .await
        .unwrap();
    let created = env
        .client
        .create_key(&key(MANAGER), &create_request("logs-agent", &logs[0].guid))
        .await
        .unwrap();
    assert_eq!(
        created.credentials.field("ingestion_key").unwrap_err(),
        CredentialError::Missing("ingestion_key".into())
    );
    assert!(!created.credentials.field("apikey").unwrap().is_empty());
}

#[tokio::test]
async fn instance_keys_are_paged() {
    let env = env_with("page_size: 25", fast_config()).await;
    for i in 0..60 {
        env.client
            .create_key(&key(MANAGER), &create_request(&format!("key-{i}"), AT_GUID))
            .await
            .unwrap();
    }
    let keys = env
        .client
        .list_instance_keys(&key(MANAGER), AT_GUID)
        .await
        .unwrap();
    assert_eq!(keys.len(), 60);
    assert_eq!(
        env.sim
            .call_count("GET /v2/resource_instances/{id}/resource_keys"),
        3
    );
}

#[tokio::test]
async fn low_role_callers_get_redacted_credentials() {
    let env = env().await;
    let created = env
        .client
        .create_key(&key(READER), &create_request("reader-made", AT_GUID))
        .await
        .unwrap();
    assert!(created.credentials.is_redacted());
    assert_eq!(
        created.credentials.field("ingestion_key").unwrap_err(),
        CredentialError::Redacted
    );
    let again = env
        .client
        .get_key(&key(READER), &created.guid)
        .await
        .unwrap();
    assert_eq!(
        again.credentials.field("apikey").unwrap_err(),
        CredentialError::Redacted
    );
    // A Manager caller may read the same key.
    let manager_view = env
        .client
        .get_key(&key(MANAGER), &created.guid)
        .await
        .unwrap();
    assert_eq!(
        manager_view
            .credentials
            .field("ingestion_key")
            .unwrap()
            .expose(),
        AT_INGESTION_KEY
    );
    // Debug of a key with readable credentials shows field names only.
    let debug = format!("{manager_view:?}");
    assert!(debug.contains("ingestion_key"));
    assert!(!debug.contains(AT_INGESTION_KEY));
}

// ---- errors -----------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_api_key_is_rejected_with_the_iam_error() {
    let env = env().await;
    let bad = "not-a-real-api-key-ffff6666";
    let err = env
        .client
        .find_instances_by_name(&key(bad), &InstanceQuery::by_name("x"))
        .await
        .unwrap_err();
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
    let err = env
        .client
        .create_key(&key(VIEWER), &create_request("viewer-key", AT_GUID))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    assert_eq!(err.status, Some(403));
    assert_eq!(err.code.as_deref(), Some("RC-IamErrorResponse"));
    assert!(err.transaction_id.is_some());
    assert_eq!(env.sim.call_count(CREATE), 1);

    let err = env
        .client
        .create_key(&key(MANAGER), &create_request("bad/name", AT_GUID))
        .await
        .unwrap_err();
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
    env.sim.set_faults(Faults {
        error_status: 403,
        matching: Some(LIST.into()),
        fail_count: Some(5),
        ..Faults::default()
    });
    let err = env
        .client
        .find_instances_by_name(&key(MANAGER), &InstanceQuery::by_name("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forbidden);
    assert_eq!(env.sim.call_count(LIST), 1);
    env.sim.set_faults(Faults {
        error_status: 400,
        matching: Some(LIST.into()),
        fail_count: Some(5),
        ..Faults::default()
    });
    let err = env
        .client
        .find_instances_by_name(&key(MANAGER), &InstanceQuery::by_name("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRequest);
    assert_eq!(env.sim.call_count(LIST), 2);
    assert!(env.sim.keys().is_empty());
}

#[tokio::test]
async fn non_json_and_501_errors() {
    let env = env().await;
    env.sim.set_faults(Faults {
        error_status: 502,
        error_body: Some("<html><body><h1>502 Bad Gateway</h1></body></html>".into()),
        matching: Some(LIST.into()),
        fail_count: Some(10),
        ..Faults::default()
    });
    let err = env
        .client
        .find_instances_by_name(&key(MANAGER), &InstanceQuery::by_name("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server);
    assert_eq!(err.status, Some(502));
    assert_eq!(err.code, None);
    assert!(err.message.contains("502 Bad Gateway"), "{}", err.message);
    assert!(err.is_transient());
    assert_eq!(env.sim.call_count(LIST), 4, "1 + max_retries");

    env.sim.reset_calls();
    env.sim.set_faults(Faults {
        error_status: 501,
        matching: Some(LIST.into()),
        fail_count: Some(10),
        ..Faults::default()
    });
    let err = env
        .client
        .find_instances_by_name(&key(MANAGER), &InstanceQuery::by_name("x"))
        .await
        .unwrap_err();
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
    env.sim.set_faults(Faults {
        error_status: 503,
        matching: Some(TOKEN.into()),
        fail_count: Some(2),
        ..Faults::default()
    });
    env.client
        .get_instance(&key(MANAGER), AT_GUID)
        .await
        .unwrap();
    assert_eq!(env.sim.call_count(TOKEN), 3);
    assert_eq!(env.client.token_exchanges(), 3);
}

// ---- retries ----------------------------------------------------------------------------------------

#[tokio::test]
async fn retries_honour_retry_after_on_503_and_429() {
    let env = env().await;
    env.client
        .get_instance(&key(MANAGER), AT_GUID)
        .await
        .unwrap(); // token cached
    for status in [503, 429] {
        env.sim.reset_calls();
        env.sim.set_faults(Faults {
            error_status: status,
            retry_after_seconds: Some(1),
            matching: Some(LIST.into()),
            fail_count: Some(1),
            ..Faults::default()
        });
        let started = Instant::now();
        let found = env
            .client
            .find_instances_by_name(&key(MANAGER), &InstanceQuery::by_name("my-log-analysis"))
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(found.len(), 1);
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
    env.client
        .get_instance(&key(MANAGER), AT_GUID)
        .await
        .unwrap();
    env.sim.set_faults(Faults {
        rate_limit: Some(ibm_cloud_sim::RateLimit {
            limit: 2,
            window_seconds: 60,
            retry_after_seconds: 1,
        }),
        matching: Some(LIST.into()),
        ..Faults::default()
    });
    let q = InstanceQuery::by_name("my-log-analysis");
    env.client
        .find_instances_by_name(&key(MANAGER), &q)
        .await
        .unwrap();
    env.client
        .find_instances_by_name(&key(MANAGER), &q)
        .await
        .unwrap();
    // The third call in the window gets 429 + Retry-After: 1 on every attempt until retries run out.
    let started = Instant::now();
    let err = env
        .client
        .find_instances_by_name(&key(MANAGER), &q)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert!(err.is_transient());
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "3 retries x 1 s: {:?}",
        started.elapsed()
    );
    assert_eq!(env.sim.call_count(LIST), 2 + 4);
}

#[tokio::test]
async fn a_long_rate_limit_pauses_every_call_with_that_api_key_until_the_time_named() {
    let env = env().await;
    for api_key in [MANAGER, READER] {
        env.client
            .get_instance(&key(api_key), AT_GUID)
            .await
            .unwrap(); // tokens cached
    }
    env.sim.set_faults(Faults {
        error_status: 429,
        retry_after_seconds: Some(600),
        matching: Some(LIST.into()),
        fail_count: Some(1),
        ..Faults::default()
    });
    env.sim.reset_calls();
    let q = InstanceQuery::by_name("my-log-analysis");
    let started = Instant::now();
    let err = env
        .client
        .find_instances_by_name(&key(MANAGER), &q)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a 10-minute pause is not slept through inside a call: {:?}",
        started.elapsed()
    );
    let retry_at = err.retry_at.expect("the time IBM named");
    let ahead = retry_at
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(ahead > Duration::from_secs(590), "{ahead:?}");
    assert!(err.to_string().contains("asks to wait until"), "{err}");

    // The same API key: not even sent, whatever the endpoint.
    let err = env
        .client
        .get_instance(&key(MANAGER), AT_GUID)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.retry_at, Some(retry_at));
    assert_eq!(env.sim.call_count(LIST), 1);
    assert_eq!(env.sim.call_count("GET /v2/resource_instances/{id}"), 0);

    // Another API key is another caller.
    env.client
        .get_instance(&key(READER), AT_GUID)
        .await
        .unwrap();
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
    let client = &env.client;
    let started = Instant::now();
    for _ in 0..15 {
        client.get_instance(&key(MANAGER), AT_GUID).await.unwrap();
    }
    // 16 requests (a token exchange and 15 reads): a burst of 5, then 200 ms apart.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(2000), "{elapsed:?}");
    assert_eq!(client.budget_stats().delayed_requests, 11);
}

#[tokio::test]
async fn exponential_backoff_without_server_hint_and_cap() {
    let env = env().await;
    env.client
        .get_instance(&key(MANAGER), AT_GUID)
        .await
        .unwrap();
    env.sim.set_faults(Faults {
        error_status: 500,
        matching: Some(LIST.into()),
        fail_count: Some(3),
        ..Faults::default()
    });
    let started = Instant::now();
    env.client
        .find_instances_by_name(&key(MANAGER), &InstanceQuery::by_name("x"))
        .await
        .unwrap();
    // Generous bound (a loaded 2-core machine): the point is milliseconds, not the 500 ms default.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "10/20/40 ms back-off: {:?}",
        started.elapsed()
    );
    assert_eq!(env.sim.call_count(LIST), 4);

    // A Retry-After beyond max_backoff is capped.
    let capped = ClientConfig {
        max_backoff: Duration::from_millis(200),
        ..fast_config()
    };
    let env = env_with("", capped).await;
    env.sim.set_faults(Faults {
        error_status: 503,
        retry_after_seconds: Some(30),
        matching: Some(LIST.into()),
        fail_count: Some(1),
        ..Faults::default()
    });
    let started = Instant::now();
    env.client
        .find_instances_by_name(&key(MANAGER), &InstanceQuery::by_name("x"))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a 30 s Retry-After capped at 200 ms: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn create_is_never_retried_once_sent() {
    let env = env().await;
    env.sim.set_faults(Faults {
        error_status: 503,
        matching: Some(CREATE.into()),
        fail_count: Some(1),
        ..Faults::default()
    });
    let err = env
        .client
        .create_key(&key(MANAGER), &create_request("once", AT_GUID))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server);
    assert!(
        err.is_transient(),
        "transient, so the caller will look the key up by name and try again later"
    );
    assert_eq!(env.sim.call_count(CREATE), 1);
    env.sim.clear_faults();
    env.client
        .create_key(&key(MANAGER), &create_request("once", AT_GUID))
        .await
        .unwrap();
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
    env.client
        .get_instance(&key(MANAGER), AT_GUID)
        .await
        .unwrap();
    env.sim.set_faults(Faults {
        latency_ms: 2000,
        matching: Some(LIST.into()),
        ..Faults::default()
    });
    let started = Instant::now();
    let err = env
        .client
        .find_instances_by_name(&key(MANAGER), &InstanceQuery::by_name("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_transient());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(env.sim.call_count(LIST), 2, "timeouts of GETs are retried");
    assert_eq!(count(&env.client, LIST, "error"), 2);

    env.sim.set_faults(Faults {
        latency_ms: 2000,
        matching: Some(CREATE.into()),
        ..Faults::default()
    });
    let err = env
        .client
        .create_key(&key(MANAGER), &create_request("slow", AT_GUID))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(
        env.sim.call_count(CREATE),
        1,
        "a POST that may have reached the server is not retried"
    );
}

// ---- the log scan ---------------------------------------------------------------------------------

#[tokio::test]
async fn secrets_never_appear_in_logs() {
    let env = env().await;
    // A scenario touching every path that handles a secret: exchange, credentials, redaction,
    // errors (including an unknown API key), retries and a re-exchange after 401.
    let manager = key(MANAGER);
    let created = env
        .client
        .create_key(&manager, &create_request("scan", AT_GUID))
        .await
        .unwrap();
    let ingestion = created.credentials.field("ingestion_key").unwrap();
    let per_key_apikey = created.credentials.field("apikey").unwrap();
    tracing::info!(?created, ?ingestion, %per_key_apikey, credentials = ?created.credentials, "debug output of secrets");
    env.client
        .create_key(&key(READER), &create_request("scan-redacted", AT_GUID))
        .await
        .unwrap();
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
    env.sim.set_faults(Faults {
        error_status: 400,
        error_body: Some(echoed.clone()),
        matching: Some("POST /identity/token".into()),
        fail_count: Some(1),
        ..Faults::default()
    });
    let err = env
        .client
        .list_instance_keys(&key(MANAGER_2), AT_GUID)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ApiKeyRejected, "{err}");
    assert!(err.message.contains("<redacted>"), "{err}");
    tracing::error!(error = %err, ?err, "IAM refused");
    env.sim.set_faults(Faults {
        error_status: 503,
        error_body: Some(echoed),
        retry_after_seconds: Some(0),
        matching: Some("POST /identity/token".into()),
        fail_count: Some(1),
        ..Faults::default()
    });
    env.client
        .list_instance_keys(&key(MANAGER_2), AT_GUID)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&logs().lock().unwrap())
            .contains("upstream rejected the request for apikey=<redacted>"),
        "the echoed IAM error was logged, scrubbed"
    );
    env.sim.set_faults(Faults {
        error_status: 503,
        retry_after_seconds: Some(0),
        matching: Some("GET /v2/resource_keys".into()),
        fail_count: Some(1),
        ..Faults::default()
    });
    env.client.get_key(&manager, &created.guid).await.unwrap();
    env.sim.expire_tokens();
    env.client
        .list_instance_keys(&manager, AT_GUID)
        .await
        .unwrap();
    env.sim.reset_ingestion_key(AT_GUID);
    env.client.get_key(&manager, &created.crn).await.unwrap();
    assert_eq!(
        env.client
            .delete_key(&manager, &created.guid)
            .await
            .unwrap(),
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
