//! A local IBM Cloud (IAM token endpoint + Resource Controller v2) for tests, demos and benchmarks.
//!
//! It answers as IBM Cloud does, so that the operator and IBM's own SDKs (`tests/ibm_python_sdk.rs`
//! in the operator crate drives it with IBM's Python SDK) can run against it:
//!
//! - IAM: `POST /identity/token` with a form body `grant_type=urn:ibm:params:oauth:grant-type:apikey`,
//!   `apikey=...` (the SDKs also send `response_type=cloud_iam`, and optionally `scope`). The reply
//!   carries `access_token`, `refresh_token: "not_supported"`, `token_type: "Bearer"`, `expires_in`,
//!   `expiration`, `scope` and `ims_user_id`. Access tokens are JWTs (see [`jwt`]) whose `exp`/`iat`
//!   the SDKs decode to refresh after 80 % of the lifetime. An unknown API key gets HTTP 400 with
//!   IAM's body `{"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found",
//!   "context": {...}}`.
//! - Resource Controller v2: `GET /v2/resource_instances` (filters `guid`, `name`,
//!   `resource_group_id`, `state`; by default only `active` and `provisioning` instances),
//!   `GET /v2/resource_instances/{id}`, `GET /v2/resource_instances/{id}/resource_keys`,
//!   `GET|POST /v2/resource_keys`, `GET|DELETE /v2/resource_keys/{id}` (`{id}`: GUID or URL-encoded
//!   CRN). Lists are paged: `limit` (default and maximum 100), `rows_count`, `resources` and a
//!   relative `next_url` carrying an opaque `start` token (`null` on the last page; other query
//!   parameters are ignored when `start` is present). Creating a key answers 201, deleting 204; a
//!   deleted key still reads as `state: "removed"` and a second delete answers 410. Credentials
//!   are `{"REDACTED": "REDACTED"}` when the caller's service role is below the key's, and on every
//!   read after the creation response for keys of an instance with `onetime_credentials: true`.
//!   Errors have the `ErrorReport` shape `{error_code, message, status_code, transaction_id}`; every
//!   reply has a `Transaction-Id` header and `X-RateLimit-*` headers.
//!
//! Where IBM's documentation is silent (error codes for simulated failures, 404 for another
//! account's instance), the choice is documented at the code that makes it.
//!
//! Control endpoints (not counted, never faulted): `GET /_sim/calls`, `POST /_sim/calls/reset`,
//! `GET|PUT|DELETE /_sim/faults`, `GET /_sim/keys`, `GET /_sim/instances`, `POST /_sim/instances`
//! (`{"account_id": ..., "instance": {...}}`), `POST /_sim/instances/{guid}/reset_ingestion_key`,
//! `POST /_sim/tokens/expire`.
//!
//! Secret values (tokens, API keys, ingestion keys) are never logged; control endpoints report
//! fingerprints, not keys.

pub mod jwt;
mod secret;
mod server;
mod world;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use secret::SimSecret;
pub use world::{DEFAULT_RESOURCE_GROUP, SimKey};

/// Errors starting or controlling the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error("cannot read seed file {path}: {source}")]
    ReadSeed {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid seed: {0}")]
    Seed(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("unknown account {0:?}")]
    UnknownAccount(String),
    #[error("invalid instance: {0}")]
    InvalidInstance(String),
    #[error("waiting for a shutdown signal failed: {0}")]
    Signal(std::io::Error),
}

/// Platform roles, lowest first (creating and deleting keys needs Operator or more).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub enum PlatformRole {
    Viewer,
    Operator,
    #[default]
    Editor,
    Administrator,
}

/// Service roles, lowest first (seeing a key's credentials needs a role >= the key's role).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub enum ServiceRole {
    Reader,
    Writer,
    #[default]
    Manager,
}

impl ServiceRole {
    /// `Reader`/`Writer`/`Manager`, or an IAM service role CRN ending in one of them.
    pub fn parse(role: &str) -> Option<Self> {
        let name = role.rsplit(':').next().unwrap_or(role);
        match name {
            "Reader" => Some(Self::Reader),
            "Writer" => Some(Self::Writer),
            "Manager" => Some(Self::Manager),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "Reader",
            Self::Writer => "Writer",
            Self::Manager => "Manager",
        }
    }

    /// IAM's CRN of this base service role.
    pub fn crn(self) -> &'static str {
        match self {
            Self::Reader => "crn:v1:bluemix:public:iam::::serviceRole:Reader",
            Self::Writer => "crn:v1:bluemix:public:iam::::serviceRole:Writer",
            Self::Manager => "crn:v1:bluemix:public:iam::::serviceRole:Manager",
        }
    }

    /// A role as the Resource Controller accepts it when creating a key on an instance of
    /// `service`: a base role name (`Manager`), IAM's CRN of a base role, or the CRN of a role
    /// of that service (`crn:v1:bluemix:public:logs::::serviceRole:Sender`). Returns the rank
    /// used for credential visibility (a service's own roles rank as Reader) and the role's CRN.
    /// A bare service role name (`Sender`) is not accepted, as by IBM Cloud.
    pub fn parse_for_service(role: &str, service: &str) -> Option<(Self, String)> {
        if let Some(base) = Self::parse_base(role) {
            return Some((base, base.crn().to_owned()));
        }
        let rest = role.strip_prefix("crn:v1:bluemix:public:")?;
        let (role_service, name) = rest.split_once("::::serviceRole:")?;
        if role_service == "iam" {
            let base = Self::parse_base(name)?;
            return Some((base, base.crn().to_owned()));
        }
        (role_service == service && service_roles(service).contains(&name))
            .then(|| (Self::Reader, role.to_owned()))
    }

    fn parse_base(name: &str) -> Option<Self> {
        match name {
            "Reader" => Some(Self::Reader),
            "Writer" => Some(Self::Writer),
            "Manager" => Some(Self::Manager),
            _ => None,
        }
    }
}

/// Service-specific roles the simulator knows (besides the base Reader, Writer, Manager).
fn service_roles(service: &str) -> &'static [&'static str] {
    match service {
        "logs" => &["Sender", "DataAccess"],
        "logdna" | "logdnaat" => &["StandardMember"],
        _ => &[],
    }
}

/// The simulated world: accounts, their API keys and instances. Loaded from YAML.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Lifetime of issued IAM tokens (`expires_in`).
    #[serde(default = "default_ttl")]
    pub token_ttl_seconds: u64,
    /// Default and maximum page size of list endpoints (IBM: 100).
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Send absolute `next_url`s instead of IBM's relative ones (to test clients against both).
    #[serde(default)]
    pub absolute_next_url: bool,
    #[serde(default)]
    pub accounts: Vec<SeedAccount>,
}

fn default_ttl() -> u64 {
    3600
}

fn default_page_size() -> usize {
    100
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedAccount {
    pub id: String,
    #[serde(default)]
    pub api_keys: Vec<SeedApiKey>,
    #[serde(default)]
    pub instances: Vec<SeedInstance>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedApiKey {
    pub key: SimSecret,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub platform_role: PlatformRole,
    #[serde(default)]
    pub service_role: ServiceRole,
}

/// One service instance. Unset fields get defaults: a generated GUID, region `us-south`, a fixed
/// resource group, state `active`, a generated ingestion key (for `logdna`/`logdnaat`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedInstance {
    pub name: String,
    #[serde(default)]
    pub guid: Option<String>,
    /// Catalog service name, the 5th CRN segment: `logdna`, `logdnaat`, `logs`, ... (default `logdna`).
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub resource_group_id: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub ingestion_key: Option<SimSecret>,
    /// IBM's `onetime_credentials`: keys created on the instance show their credentials only in
    /// the creation response; every later read returns them `REDACTED`.
    #[serde(default)]
    pub onetime_credentials: bool,
}

impl SeedInstance {
    pub fn new(name: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            service: service.into(),
            ..Self::default()
        }
    }

    pub fn in_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }
}

impl Seed {
    pub fn from_yaml(text: &str) -> Result<Self, SimulatorError> {
        let seed: Seed =
            serde_saphyr::from_str(text).map_err(|e| SimulatorError::Seed(e.to_string()))?;
        if seed.page_size == 0 {
            return Err(SimulatorError::Seed("page_size must be at least 1".into()));
        }
        Ok(seed)
    }

    pub fn from_file(path: &Path) -> Result<Self, SimulatorError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimulatorError::ReadSeed {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }
}

/// Injected failures. Only requests whose endpoint template (`"POST /v2/resource_keys"`, ...)
/// starts with `matching` are affected (all IBM endpoints when `None`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct Faults {
    /// Probability (0..1) that a matching request fails with `error_status`.
    pub error_rate: f64,
    /// Status of injected failures (default 503).
    pub error_status: u16,
    /// Added to every matching request before it is handled.
    pub latency_ms: u64,
    /// Added after a matching request was handled, before the reply is sent: a client that gives
    /// up (or dies) meanwhile never sees an outcome that did happen (a created key, say).
    pub response_delay_ms: u64,
    pub rate_limit: Option<RateLimit>,
    pub matching: Option<String>,
    /// Fail exactly the next N matching requests (takes precedence over `error_rate`).
    pub fail_count: Option<u64>,
    /// `Retry-After` (seconds) sent with injected failures.
    pub retry_after_seconds: Option<u64>,
    /// Raw body of injected failures instead of the IBM JSON error body (e.g. an HTML page).
    pub error_body: Option<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_status: 503,
            latency_ms: 0,
            response_delay_ms: 0,
            rate_limit: None,
            matching: None,
            fail_count: None,
            retry_after_seconds: None,
            error_body: None,
        }
    }
}

/// At most `limit` matching requests per fixed window; beyond that 429 with `Retry-After`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RateLimit {
    pub limit: u32,
    pub window_seconds: u64,
    pub retry_after_seconds: u64,
}

/// A running simulator. Clones share it; it stops when the last clone is dropped (or on
/// [`Simulator::shutdown`]).
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<server::Shared>,
    addr: SocketAddr,
    _stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds `listen` (port 0 picks a free port) and serves on the current tokio runtime.
    pub async fn start(listen: SocketAddr, seed: Seed) -> Result<Simulator, SimulatorError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| SimulatorError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SimulatorError::Bind {
                addr: listen,
                source,
            })?;
        let base_url = base_url_for(addr);
        let world = world::World::new(&seed, base_url)?;
        let shared = Arc::new(server::Shared::new(world));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(server::serve(listener, shared.clone(), stop_rx));
        tracing::info!(%addr, "IBM Cloud simulator started");
        Ok(Simulator {
            shared,
            addr,
            _stop: Arc::new(stop_tx),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (a wildcard listen address is reported as loopback).
    pub fn base_url(&self) -> String {
        base_url_for(self.addr)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    pub fn clear_faults(&self) {
        self.shared.set_faults(Faults::default());
    }

    /// Calls per endpoint template, e.g. `"POST /identity/token"`, `"GET /v2/resource_instances"`.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        lock(&self.shared.calls).clone()
    }

    /// Calls of one endpoint template (0 if none).
    pub fn call_count(&self, endpoint: &str) -> u64 {
        lock(&self.shared.calls).get(endpoint).copied().unwrap_or(0)
    }

    pub fn reset_calls(&self) {
        lock(&self.shared.calls).clear();
    }

    /// Rotates an instance's ingestion key, as the web UI's "Generate Ingestion Key" does. Keys of
    /// the instance show the new value on their next GET. `None` for an unknown instance or one
    /// without ingestion keys.
    pub fn reset_ingestion_key(&self, instance_guid: &str) -> Option<SimSecret> {
        lock(&self.shared.world).reset_ingestion_key(instance_guid)
    }

    /// The current ingestion key of an instance (for tests comparing Secrets).
    pub fn ingestion_key(&self, instance_guid: &str) -> Option<SimSecret> {
        lock(&self.shared.world).ingestion_key(instance_guid)
    }

    /// Every resource key ever created (including removed ones), without credentials.
    pub fn keys(&self) -> Vec<SimKey> {
        lock(&self.shared.world).sim_keys()
    }

    /// The key with this GUID, in any state.
    pub fn key(&self, guid: &str) -> Option<SimKey> {
        self.keys().into_iter().find(|k| k.guid == guid)
    }

    /// The state of every key ever created, by the fingerprint ([`SimSecret::fingerprint`]) of
    /// its `apikey` credential: which key a Secret's value belongs to, without the value.
    pub fn key_states_by_credential(&self) -> std::collections::HashMap<String, String> {
        lock(&self.shared.world).key_states_by_credential()
    }

    /// Adds an instance to an account; returns its GUID.
    pub fn add_instance(
        &self,
        account_id: &str,
        instance: SeedInstance,
    ) -> Result<String, SimulatorError> {
        lock(&self.shared.world).add_instance(account_id, &instance)
    }

    /// Makes every issued token expired (clients then get 401 "Token is expired").
    pub fn expire_tokens(&self) {
        lock(&self.shared.world).expire_tokens();
    }

    /// Every access token issued so far (for tests that scan logs for leaked secrets).
    pub fn issued_tokens(&self) -> Vec<SimSecret> {
        lock(&self.shared.world).issued_tokens()
    }

    /// Every secret value the simulator knows: seeded API keys, issued tokens, per-key API keys,
    /// ingestion and service keys. For tests that scan logs for leaks.
    #[doc(hidden)]
    pub fn secret_values(&self) -> Vec<SimSecret> {
        lock(&self.shared.world).secret_values()
    }

    /// Stops accepting connections and closes open ones gracefully.
    pub async fn shutdown(self) {
        let _ = self._stop.send(true);
        tokio::task::yield_now().await;
    }
}

fn base_url_for(addr: SocketAddr) -> String {
    let ip = addr.ip();
    match ip {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            format!("http://127.0.0.1:{}", addr.port())
        }
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => format!("http://[::1]:{}", addr.port()),
        _ => format!("http://{addr}"),
    }
}

/// Locks a mutex, recovering from poisoning (a panicked handler leaves consistent data here).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `ibm-cloud-sim` binary: start, print `ibm-cloud-sim listening on http://ADDR`, serve until
/// Ctrl-C or SIGTERM.
pub async fn run(listen: SocketAddr, seed_path: &Path) -> Result<(), SimulatorError> {
    let seed = Seed::from_file(seed_path)?;
    let simulator = Simulator::start(listen, seed).await?;
    println!("ibm-cloud-sim listening on {}", simulator.base_url());
    wait_for_signal().await?;
    tracing::info!("IBM Cloud simulator shutting down");
    simulator.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> Result<(), SimulatorError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(SimulatorError::Signal)?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map_err(SimulatorError::Signal),
        _ = term.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> Result<(), SimulatorError> {
    tokio::signal::ctrl_c()
        .await
        .map_err(SimulatorError::Signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_seed_parses() {
        let seed = Seed::from_yaml(include_str!("../../../examples/seed.yaml")).unwrap();
        assert_eq!(seed.token_ttl_seconds, 3600);
        let names: Vec<&str> = seed
            .accounts
            .iter()
            .flat_map(|a| a.instances.iter().map(|i| i.name.as_str()))
            .collect();
        assert!(names.contains(&"my-activity-tracker"));
        assert_eq!(names.iter().filter(|n| **n == "shared-name").count(), 2);
    }

    #[test]
    fn roles_order_and_parse() {
        assert!(ServiceRole::Reader < ServiceRole::Manager);
        assert!(PlatformRole::Viewer < PlatformRole::Operator);
        assert_eq!(
            ServiceRole::parse("crn:v1:bluemix:public:iam::::serviceRole:Writer"),
            Some(ServiceRole::Writer)
        );
        assert_eq!(ServiceRole::parse("Owner"), None);
    }

    #[test]
    fn roles_are_accepted_as_the_resource_controller_accepts_them() {
        let accepted = |role: &str, service: &str| ServiceRole::parse_for_service(role, service);
        assert_eq!(
            accepted("Manager", "logdna"),
            Some((ServiceRole::Manager, ServiceRole::Manager.crn().to_owned()))
        );
        assert_eq!(
            accepted("crn:v1:bluemix:public:iam::::serviceRole:Reader", "logs").map(|r| r.0),
            Some(ServiceRole::Reader)
        );
        let sender = "crn:v1:bluemix:public:logs::::serviceRole:Sender";
        assert_eq!(
            accepted(sender, "logs"),
            Some((ServiceRole::Reader, sender.to_owned()))
        );
        assert_eq!(accepted("Sender", "logs"), None, "a bare service role name");
        assert_eq!(accepted(sender, "logdna"), None, "another service's role");
        assert_eq!(
            accepted("crn:v1:bluemix:public:logs::::serviceRole:Owner", "logs"),
            None
        );
        assert_eq!(accepted("Owner", "logs"), None);
    }

    #[test]
    fn faults_default_to_503_and_parse_partially() {
        assert_eq!(Faults::default().error_status, 503);
        let f: Faults =
            serde_json::from_str(r#"{"fail_count": 2, "matching": "POST /v2/resource_keys"}"#)
                .unwrap();
        assert_eq!(f.error_status, 503);
        assert_eq!(f.fail_count, Some(2));
    }
}
