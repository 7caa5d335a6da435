//! What every IBM client test shares: the log capture, the seed, a simulator with a client, and
//! short helpers for the runs the tests repeat (a lookup, a warmed token, an injected failure, a
//! timed call).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
pub use std::time::{Duration, Instant};

pub use ibm_cloud_sim::{DEFAULT_RESOURCE_GROUP, Faults, Seed, SeedInstance, Simulator};
pub use ingestion_key_operator::ibm::{
    ClientConfig, CreateKeyRequest, CredentialError, Endpoints, ErrorKind, IbmCloud, IbmError,
    InstanceQuery, KeyDeletion, ResourceInstance, ResourceKey, SecretString,
};

// ---- log capture ------------------------------------------------------------------------------

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
/// Secret values seen by any test, checked against the log buffer by the scan test.
pub static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

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

pub fn logs() -> Arc<Mutex<Vec<u8>>> {
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

pub const MANAGER: &str = "test-api-key-manager-aaaa1111";
pub const MANAGER_2: &str = "test-api-key-manager-bbbb2222";
pub const READER: &str = "test-api-key-reader-cccc3333";
pub const VIEWER: &str = "test-api-key-viewer-dddd4444";
pub const OTHER_ACCOUNT: &str = "test-api-key-other-eeee5555";
pub const AT_GUID: &str = "8d7af921-b136-4078-9666-081bd8470d94";
pub const AT_INGESTION_KEY: &str = "0123456789abcdef0123456789abcdef";
pub const OTHER_GUID: &str = "11111111-2222-3333-4444-555555555555";

pub fn seed_yaml(extra: &str) -> String {
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

pub fn key(value: &str) -> SecretString {
    SecretString::new(value)
}

/// Small back-off so retry tests are fast; real timeouts.
pub fn fast_config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        max_retries: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_secs(2),
        // High enough that the budget never paces these tests (its own test sets it low).
        max_rps: 1000,
    }
}

pub struct Env {
    pub sim: Simulator,
    pub client: IbmCloud,
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

pub async fn env_with(extra_seed: &str, config: ClientConfig) -> Env {
    logs();
    let seed = Seed::from_yaml(&seed_yaml(extra_seed)).expect("test seed parses");
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), seed)
        .await
        .expect("simulator starts");
    let endpoints = Endpoints::new(&sim.base_url(), &sim.base_url()).unwrap();
    let client = IbmCloud::new(endpoints, config).unwrap();
    Env { sim, client }
}

pub async fn env() -> Env {
    env_with("", fast_config()).await
}

pub fn count(client: &IbmCloud, endpoint: &str, status: &str) -> u64 {
    client
        .request_counts()
        .into_iter()
        .find(|((e, s), _)| e == endpoint && s == status)
        .map(|(_, n)| n)
        .unwrap_or(0)
}

pub fn create_request(name: &str, source: &str) -> CreateKeyRequest {
    CreateKeyRequest {
        name: name.to_owned(),
        source: source.to_owned(),
        role: "Manager".to_owned(),
    }
}

pub const TOKEN: &str = "POST /identity/token";
pub const LIST: &str = "GET /v2/resource_instances";
pub const CREATE: &str = "POST /v2/resource_keys";

pub const GET_INSTANCE: &str = "GET /v2/resource_instances/{id}";
pub const DELETE: &str = "DELETE /v2/resource_keys/{id}";

impl Env {
    /// Instances named `name`, looked up with `api_key`.
    pub async fn find(&self, api_key: &str, name: &str) -> Result<Vec<ResourceInstance>, IbmError> {
        self.client
            .find_instances_by_name(&key(api_key), &InstanceQuery::by_name(name))
            .await
    }

    /// Creates a key named `name` on the Activity Tracker instance with `api_key`.
    pub async fn create(&self, api_key: &str, name: &str) -> Result<ResourceKey, IbmError> {
        self.client
            .create_key(&key(api_key), &create_request(name, AT_GUID))
            .await
    }

    /// The instance `id` (a GUID or CRN), read with `api_key`.
    pub async fn instance(&self, api_key: &str, id: &str) -> Result<ResourceInstance, IbmError> {
        self.client.get_instance(&key(api_key), id).await
    }

    /// The key `id` (a GUID or CRN), read with `api_key`.
    pub async fn read_key(&self, api_key: &str, id: &str) -> Result<ResourceKey, IbmError> {
        self.client.get_key(&key(api_key), id).await
    }

    /// The Activity Tracker instance's keys, listed with `api_key`.
    pub async fn keys(&self, api_key: &str) -> Result<Vec<ResourceKey>, IbmError> {
        self.client.list_instance_keys(&key(api_key), AT_GUID).await
    }

    /// Deletes the key `guid` with `api_key`.
    pub async fn delete(&self, api_key: &str, guid: &str) -> Result<KeyDeletion, IbmError> {
        self.client.delete_key(&key(api_key), guid).await
    }

    /// Reads the Activity Tracker instance with `api_key`, so its token is cached.
    pub async fn warm(&self, api_key: &str) {
        self.instance(api_key, AT_GUID)
            .await
            .expect("the seeded instance reads");
    }

    /// The next `times` calls to `endpoint` answer `status`.
    pub fn fail(&self, endpoint: &str, status: u16, times: u64) {
        self.inject(
            endpoint,
            Faults {
                error_status: status,
                fail_count: Some(times),
                ..Faults::default()
            },
        );
    }

    /// Calls to `endpoint` get `faults`.
    pub fn inject(&self, endpoint: &str, faults: Faults) {
        self.sim.set_faults(Faults {
            matching: Some(endpoint.into()),
            ..faults
        });
    }
}

/// Runs `call` and says how long it took.
pub async fn timed<T>(call: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = call.await;
    (out, started.elapsed())
}
