//! The simulator's state and the behaviour of each IBM Cloud endpoint, independent of HTTP:
//! the accounts, instances and keys it holds (here), IAM (`iam`), the Resource Controller's
//! listings (`listing`) and its keys (`keys`).

mod iam;
mod keys;
mod listing;
use iam::iam_time;

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::jwt;
use super::{PlatformRole, Seed, SeedInstance, ServiceRole, SimulatorError};
use crate::secret::SimSecret;

/// Default resource group of seeded instances (the one in IBM's own examples).
pub const DEFAULT_RESOURCE_GROUP: &str = "0be5ad401ae913d8ff665d92680664ed";
const DEFAULT_REGION: &str = "us-south";
const DEFAULT_SERVICE: &str = "logdna";
/// IBM's rule for resource key names: at most 180 characters.
const MAX_KEY_NAME_CHARS: usize = 180;

/// A response before HTTP: status, optional JSON body, optional extra headers.
pub struct Reply {
    pub status: u16,
    pub body: Option<Value>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
        }
    }

    pub fn empty(status: u16) -> Self {
        Self { status, body: None }
    }

    /// Resource Controller error body (`ErrorReport`: `error_code`, `message`, `status_code`,
    /// `transaction_id`).
    pub fn rc_error(status: u16, code: &str, message: impl Into<String>, txn: &str) -> Self {
        Self::json(
            status,
            json!({"error_code": code, "message": message.into(), "status_code": status, "transaction_id": txn}),
        )
    }

    /// IAM token endpoint error body (`errorCode`, `errorMessage`, `context`).
    pub fn iam_error(status: u16, code: &str, message: &str, txn: &str, now: u64) -> Self {
        Self::json(
            status,
            json!({
                "context": {
                    "requestId": txn,
                    "requestType": "incoming.Identity_Token",
                    "userAgent": "ibm-cloud-simulator",
                    "url": "https://iam.cloud.ibm.com",
                    "instanceId": "iamid-simulator",
                    "threadId": "1",
                    "host": "iamid-simulator",
                    "startTime": iam_time(now),
                    "endTime": iam_time(now),
                    "elapsedTime": "1",
                    "locale": "en_US",
                    "clusterName": "iam-id-simulator"
                },
                "errorCode": code,
                "errorMessage": message
            }),
        )
    }
}

/// A resource key as the control API reports it: no credentials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimKey {
    pub guid: String,
    pub crn: String,
    pub name: String,
    /// GUID of the instance the key belongs to.
    pub source: String,
    pub state: String,
    pub role: String,
    pub account_id: String,
}

#[derive(Clone)]
struct Caller {
    account_id: String,
    name: String,
    /// The service ID the API key belongs to (`ServiceId-<uuid>`), the token's `sub`.
    service_id: String,
    platform_role: PlatformRole,
    service_role: ServiceRole,
}

struct Instance {
    guid: String,
    name: String,
    service: String,
    region: String,
    resource_group_id: String,
    state: String,
    account_id: String,
    /// Instance-wide keys of Log Analysis / Activity Tracker (None for other services).
    ingestion_key: Option<String>,
    service_key: Option<String>,
    created_at: String,
    onetime_credentials: bool,
}

impl Instance {
    fn crn(&self) -> String {
        format!(
            "crn:v1:bluemix:public:{}:{}:a/{}:{}::",
            self.service, self.region, self.account_id, self.guid
        )
    }

    fn json(&self) -> Value {
        let crn = self.crn();
        json!({
            "id": crn,
            "guid": self.guid,
            "url": format!("/v2/resource_instances/{}", self.guid),
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "deleted_at": null,
            "created_by": "IBMid-simulator",
            "name": self.name,
            "region_id": self.region,
            "account_id": self.account_id,
            "resource_plan_id": format!("{}-plan", self.service),
            "resource_group_id": self.resource_group_id,
            "resource_group_crn": format!("crn:v1:bluemix:public:resource-controller::a/{}::resource-group:{}", self.account_id, self.resource_group_id),
            "target_crn": format!("crn:v1:bluemix:public:globalcatalog::::deployment:{}-{}", self.service, self.region),
            "onetime_credentials": self.onetime_credentials,
            "parameters": {},
            "allow_cleanup": false,
            "crn": crn,
            "state": self.state,
            "type": "service_instance",
            "sub_type": null,
            "resource_id": format!("{}-service-id", self.service),
            "dashboard_url": format!("https://app.{}.logging.cloud.ibm.com/", self.region),
            "last_operation": {"type": "create", "state": "succeeded", "async": false, "description": "Completed create instance operation"},
            "resource_keys_url": format!("/v2/resource_instances/{}/resource_keys", self.guid),
            "plan_history": [],
            "migrated": false,
            "extensions": {},
            "controlled_by": "",
            "locked": false
        })
    }
}

struct Key {
    guid: String,
    name: String,
    instance_guid: String,
    /// Rank for credential visibility.
    role: ServiceRole,
    /// The role as IAM names it (`iam_role_crn`).
    role_crn: String,
    state: String,
    account_id: String,
    /// Per-key IAM API key (service ID key).
    apikey: String,
    serviceid: String,
    created_at: String,
    deleted_at: Option<String>,
    /// Credentials shown only in the creation response.
    onetime: bool,
}

struct Token {
    api_key: String,
    expires_at: u64,
}

/// Filters of a list request, carried inside the opaque `start` token (IBM ignores other query
/// parameters when a page token is present).
#[derive(Clone, Default, Serialize, Deserialize)]
struct Cursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource_group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    offset: usize,
}

pub struct World {
    token_ttl: u64,
    page_size: usize,
    absolute_next_url: bool,
    base_url: String,
    callers: HashMap<String, Caller>,
    accounts: HashSet<String>,
    instances: Vec<Instance>,
    keys: Vec<Key>,
    tokens: HashMap<String, Token>,
    issued: Vec<String>,
    /// Ingestion keys replaced by a reset (still secrets, for leak scans).
    retired: Vec<String>,
    counter: u64,
    salt: [u8; 32],
    /// Signs issued JWTs (random per simulator).
    token_secret: [u8; 32],
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(unix: u64) -> String {
    // Civil-from-days (Howard Hinnant); avoids a date crate for one timestamp format.
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn valid_key_name(name: &str) -> bool {
    let len = name.chars().count();
    len > 0
        && len <= MAX_KEY_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '.' | '_' | ':'))
}

impl World {
    pub fn new(seed: &Seed, base_url: String) -> Result<Self, SimulatorError> {
        let mut salt_input = Sha256::new();
        salt_input.update(base_url.as_bytes());
        salt_input.update(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                .to_le_bytes(),
        );
        let mut world = World {
            token_ttl: seed.token_ttl_seconds,
            page_size: seed.page_size.max(1),
            absolute_next_url: seed.absolute_next_url,
            base_url,
            callers: HashMap::new(),
            accounts: HashSet::new(),
            instances: Vec::new(),
            keys: Vec::new(),
            tokens: HashMap::new(),
            issued: Vec::new(),
            retired: Vec::new(),
            counter: 0,
            salt: salt_input.finalize().into(),
            token_secret: [0; 32],
        };
        world.token_secret = world.random_bytes("jwt-secret");
        for account in &seed.accounts {
            if account.id.is_empty() || !world.accounts.insert(account.id.clone()) {
                return Err(SimulatorError::Seed(format!(
                    "account id {:?} is empty or duplicated",
                    account.id
                )));
            }
            for key in &account.api_keys {
                if key.key.expose().is_empty() || world.callers.contains_key(key.key.expose()) {
                    return Err(SimulatorError::Seed(format!(
                        "an API key of account {:?} is empty or duplicated",
                        account.id
                    )));
                }
                let caller = Caller {
                    account_id: account.id.clone(),
                    service_id: format!("ServiceId-{}", world.new_guid()),
                    name: key
                        .name
                        .clone()
                        .unwrap_or_else(|| "seeded-api-key".to_owned()),
                    platform_role: key.platform_role,
                    service_role: key.service_role,
                };
                world.callers.insert(key.key.expose().to_owned(), caller);
            }
            for instance in &account.instances {
                world.add_instance(&account.id, instance)?;
            }
        }
        Ok(world)
    }

    /// 32 pseudo-random bytes: counter + salt (seed data and start time) hashed. No `rand` needed.
    fn random_bytes(&mut self, label: &str) -> [u8; 32] {
        self.counter += 1;
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(self.counter.to_le_bytes());
        h.update(label.as_bytes());
        h.finalize().into()
    }

    /// A random (version 4) UUID, the shape of IBM Cloud GUIDs.
    fn new_guid(&mut self) -> String {
        let mut b = self.random_bytes("guid");
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().take(16).map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    fn new_hex(&mut self, label: &str, len: usize) -> String {
        let b = self.random_bytes(label);
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()[..len.min(64)].to_owned()
    }

    /// 44 characters of `[A-Za-z0-9_-]`, the shape of IBM Cloud API keys.
    fn new_api_key(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut bytes = self.random_bytes("apikey").to_vec();
        bytes.extend(self.random_bytes("apikey2"));
        bytes
            .iter()
            .take(44)
            .map(|b| ALPHABET[(*b % 64) as usize] as char)
            .collect()
    }

    pub fn add_instance(
        &mut self,
        account_id: &str,
        seed: &SeedInstance,
    ) -> Result<String, SimulatorError> {
        if !self.accounts.contains(account_id) {
            return Err(SimulatorError::UnknownAccount(account_id.to_owned()));
        }
        if seed.name.is_empty() {
            return Err(SimulatorError::InvalidInstance("name is empty".into()));
        }
        let guid = match &seed.guid {
            Some(g) if !g.is_empty() => g.clone(),
            _ => self.new_guid(),
        };
        if self.instances.iter().any(|i| i.guid == guid) {
            return Err(SimulatorError::InvalidInstance(format!(
                "duplicate guid {guid}"
            )));
        }
        let service = if seed.service.is_empty() {
            DEFAULT_SERVICE.to_owned()
        } else {
            seed.service.clone()
        };
        if service.contains(':') || seed.region.as_deref().is_some_and(|r| r.contains(':')) {
            return Err(SimulatorError::InvalidInstance(
                "service and region must not contain ':'".into(),
            ));
        }
        let has_ingestion = matches!(service.as_str(), "logdna" | "logdnaat");
        let ingestion_key = match (&seed.ingestion_key, has_ingestion) {
            (Some(k), true) => Some(k.expose().to_owned()),
            (None, true) => Some(self.new_hex("ingestion", 32)),
            (_, false) => None,
        };
        let service_key = has_ingestion.then(|| self.new_hex("service", 32));
        self.instances.push(Instance {
            guid: guid.clone(),
            name: seed.name.clone(),
            service,
            region: seed
                .region
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
            resource_group_id: seed
                .resource_group_id
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| DEFAULT_RESOURCE_GROUP.to_owned()),
            state: seed
                .state
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "active".to_owned()),
            account_id: account_id.to_owned(),
            ingestion_key,
            service_key,
            created_at: rfc3339(now_unix()),
            onetime_credentials: seed.onetime_credentials,
        });
        Ok(guid)
    }

    pub fn reset_ingestion_key(&mut self, guid: &str) -> Option<SimSecret> {
        let fresh = self.new_hex("ingestion", 32);
        let instance = self.instances.iter_mut().find(|i| i.guid == guid)?;
        let slot = instance.ingestion_key.as_mut()?;
        let old = std::mem::replace(slot, fresh);
        let current = slot.clone();
        self.retired.push(old);
        tracing::info!(instance = guid, "simulator: ingestion key reset");
        Some(SimSecret::new(current))
    }

    pub fn ingestion_key(&self, guid: &str) -> Option<SimSecret> {
        self.instances
            .iter()
            .find(|i| i.guid == guid)?
            .ingestion_key
            .as_deref()
            .map(SimSecret::new)
    }

    pub fn instances_summary(&self) -> Value {
        Value::Array(
            self.instances
                .iter()
                .map(|i| {
                    json!({
                        "guid": i.guid, "crn": i.crn(), "name": i.name, "service": i.service, "region": i.region,
                        "account_id": i.account_id, "state": i.state,
                        "ingestion_key_fingerprint": i.ingestion_key.as_deref().map(|k| SimSecret::new(k).fingerprint()),
                    })
                })
                .collect(),
        )
    }

    pub fn sim_keys(&self) -> Vec<SimKey> {
        self.keys
            .iter()
            .map(|k| SimKey {
                guid: k.guid.clone(),
                crn: self.key_crn(k),
                name: k.name.clone(),
                source: k.instance_guid.clone(),
                state: k.state.clone(),
                role: k.role_crn.rsplit(':').next().unwrap_or_default().to_owned(),
                account_id: k.account_id.clone(),
            })
            .collect()
    }

    /// The state of every key (removed ones too) by the fingerprint of its `apikey` credential.
    pub fn key_states_by_credential(&self) -> std::collections::HashMap<String, String> {
        self.keys
            .iter()
            .map(|k| {
                (
                    SimSecret::new(k.apikey.clone()).fingerprint(),
                    k.state.clone(),
                )
            })
            .collect()
    }

    pub fn expire_tokens(&mut self) {
        for token in self.tokens.values_mut() {
            token.expires_at = 0;
        }
    }

    pub fn issued_tokens(&self) -> Vec<SimSecret> {
        self.issued
            .iter()
            .map(|t| SimSecret::new(t.clone()))
            .collect()
    }

    pub fn secret_values(&self) -> Vec<SimSecret> {
        let mut out: Vec<SimSecret> = self
            .callers
            .keys()
            .chain(&self.issued)
            .chain(&self.retired)
            .map(|s| SimSecret::new(s.clone()))
            .collect();
        out.extend(self.keys.iter().map(|k| SimSecret::new(k.apikey.clone())));
        for i in &self.instances {
            out.extend(
                i.ingestion_key
                    .iter()
                    .chain(i.service_key.iter())
                    .map(|s| SimSecret::new(s.clone())),
            );
        }
        out
    }

    // ---- IAM -------------------------------------------------------------------------------
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_530_568_223), "2018-07-02T21:50:23.000Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(iam_time(1_530_568_223), "02.07.2018 21:50:23:000 GMT");
    }

    #[test]
    fn tokens_are_jwts_recognised_by_lookup() {
        let seed =
            Seed::from_yaml("accounts:\n  - id: acc\n    api_keys:\n      - key: k1\n").unwrap();
        let mut world = World::new(&seed, "http://127.0.0.1:1".into()).unwrap();
        let form: HashMap<String, String> = [
            ("grant_type", "urn:ibm:params:oauth:grant-type:apikey"),
            ("apikey", "k1"),
            ("response_type", "cloud_iam"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let reply = world.token(&form, "t");
        assert_eq!(reply.status, 200);
        let body = reply.body.unwrap();
        assert_eq!(body["refresh_token"], "not_supported");
        assert_eq!(body["token_type"], "Bearer");
        let token = body["access_token"].as_str().unwrap().to_owned();
        let claims = jwt::decode_claims(&token).unwrap();
        assert_eq!(claims["account"]["bss"], "acc");
        assert_eq!(claims["exp"], body["expiration"]);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );
        assert!(claims["sub"].as_str().unwrap().starts_with("ServiceId-"));
        let bearer = |t: &str| format!("Bearer {t}");
        assert!(world.authenticate(Some(&bearer(&token)), "t").is_ok());
        // The same claims with a signature the simulator did not make: not one of its tokens.
        let forged = jwt::encode(&claims, b"another secret");
        assert!(world.authenticate(Some(&bearer(&forged)), "t").is_err());
        world.expire_tokens();
        assert!(world.authenticate(Some(&bearer(&token)), "t").is_err());
    }

    #[test]
    fn one_time_credentials_are_shown_only_in_the_creation_response() {
        let seed = Seed::from_yaml(
            "accounts:\n  - id: acc\n    api_keys:\n      - {key: k1, platform_role: Editor, service_role: Manager}\n    instances:\n      - {name: at, guid: g1, service: logdnaat, onetime_credentials: true}\n",
        )
        .unwrap();
        let mut world = World::new(&seed, "http://127.0.0.1:1".into()).unwrap();
        let form: HashMap<String, String> = [
            ("grant_type", "urn:ibm:params:oauth:grant-type:apikey"),
            ("apikey", "k1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let token = world.token(&form, "t").body.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let auth = format!("Bearer {token}");
        let created = world
            .create_key(
                Some(&auth),
                br#"{"name": "k", "source": "g1", "role": "Manager"}"#,
                "t",
            )
            .unwrap_or_else(|failure| failure);
        assert_eq!(created.status, 201);
        let created = created.body.unwrap();
        assert_eq!(created["onetime_credentials"], true);
        assert!(created["credentials"]["ingestion_key"].is_string());
        let guid = created["guid"].as_str().unwrap().to_owned();
        let read = world
            .get_key(Some(&auth), &guid, "t")
            .unwrap_or_else(|failure| failure)
            .body
            .unwrap();
        assert_eq!(read["credentials"], json!({"REDACTED": "REDACTED"}));
        assert_eq!(world.instances[0].json()["onetime_credentials"], true);
    }

    #[test]
    fn key_name_rule() {
        assert!(valid_key_name("ns.name:uid-1 _x"));
        assert!(!valid_key_name(""));
        assert!(!valid_key_name("a/b"));
        assert!(!valid_key_name(&"a".repeat(181)));
        assert!(valid_key_name(&"a".repeat(180)));
    }
}
