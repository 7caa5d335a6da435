//! The middle tier: the reconcile logic called directly, in the test process, against the real
//! API server of the harness and the IBM Cloud simulator over HTTP. One behaviour per test, each in
//! a few seconds: a logic bug fails here, by name, rather than as an end-to-end timeout.
//!
//! IBM Cloud is reached through the `IbmApi` seam, wrapped where a test needs to break one step
//! (a lost creation reply) or watch one (what the Secret held when a key was deleted).

use test_support as support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ibm_cloud_sim::{Seed, Simulator};
use ingestion_key_operator::{
    crd::{IngestionKeyRequest, reason},
    ibm::{
        ClientConfig, CreateKeyRequest, Endpoints, ErrorKind, IbmApi, IbmCloud, IbmError,
        InstanceQuery, KeyDeletion, ResourceInstance, ResourceKey,
    },
    metrics::Metrics,
    reconciler::{Context, ReconcileError, Settings, reconcile},
    redact::SecretString,
};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client, CustomResourceExt, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use support::workloads::{agent_daemonset, complete_rollout, template_fingerprint};

const MANAGER_KEY: &str = "test-apikey-manager-7f3a9c";
const AT_GUID: &str = "8d7af921-b136-4078-9666-081bd8470d94";
const LA_GUID: &str = "5e0e7c3a-6c34-4f57-9a55-2f6a1e1b0c11";
const SEED: &str = r#"
accounts:
  - id: 4329073d16d2f3663f74bfa955259139
    api_keys:
      - { key: test-apikey-manager-7f3a9c, platform_role: Editor, service_role: Manager }
    instances:
      - { name: my-activity-tracker, guid: 8d7af921-b136-4078-9666-081bd8470d94, service: logdnaat, region: us-south }
      - { name: my-log-analysis, guid: 5e0e7c3a-6c34-4f57-9a55-2f6a1e1b0c11, service: logdna, region: eu-de }
      - { name: my-cloud-logs, guid: 3c1b9f0e-7d2a-4e5b-8c6d-9e0f1a2b3c4d, service: logs, region: us-south }
      - { name: my-onetime-at, guid: 6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d, service: logdnaat, region: us-south, onetime_credentials: true }
"#;
const LOGS_GUID: &str = "3c1b9f0e-7d2a-4e5b-8c6d-9e0f1a2b3c4d";
const ONETIME_GUID: &str = "6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d";

/// Endpoint templates of the simulator's call counters.
const CREATE: &str = "POST /v2/resource_keys";
const FIND_BY_NAME: &str = "GET /v2/resource_keys";
const GET_KEY: &str = "GET /v2/resource_keys/{id}";

/// What a test may break or watch in the IBM Cloud calls.
#[derive(Default)]
struct Hooks {
    /// The next creation reaches IBM Cloud but its reply is lost (a timeout).
    lose_next_create_reply: bool,
    /// For each deletion: the credential value the agents' Secret held at that moment.
    secret_at_delete: Vec<Option<String>>,
}

/// The real client, with [`Hooks`].
struct Wrapped {
    inner: IbmCloud,
    hooks: Arc<Mutex<Hooks>>,
    secrets: Api<Secret>,
}

impl IbmApi for Wrapped {
    fn find_instances_by_name<'a>(
        &'a self,
        api_key: &'a SecretString,
        query: &'a InstanceQuery,
    ) -> BoxFuture<'a, Result<Vec<ResourceInstance>, IbmError>> {
        Box::pin(self.inner.find_instances_by_name(api_key, query))
    }

    fn get_instance<'a>(
        &'a self,
        api_key: &'a SecretString,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ResourceInstance, IbmError>> {
        Box::pin(self.inner.get_instance(api_key, id))
    }

    fn find_keys_by_name<'a>(
        &'a self,
        api_key: &'a SecretString,
        instance_guid: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ResourceKey>, IbmError>> {
        Box::pin(self.inner.find_keys_by_name(api_key, instance_guid, name))
    }

    fn create_key<'a>(
        &'a self,
        api_key: &'a SecretString,
        request: &'a CreateKeyRequest,
    ) -> BoxFuture<'a, Result<ResourceKey, IbmError>> {
        Box::pin(async move {
            let result = self.inner.create_key(api_key, request).await;
            let lose = std::mem::take(&mut self.hooks.lock().unwrap().lose_next_create_reply);
            if lose && result.is_ok() {
                return Err(IbmError::new(
                    "create resource key",
                    ErrorKind::Timeout,
                    "reply lost (test)",
                ));
            }
            result
        })
    }

    fn get_key<'a>(
        &'a self,
        api_key: &'a SecretString,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ResourceKey, IbmError>> {
        Box::pin(self.inner.get_key(api_key, id))
    }

    fn delete_key<'a>(
        &'a self,
        api_key: &'a SecretString,
        id: &'a str,
    ) -> BoxFuture<'a, Result<KeyDeletion, IbmError>> {
        Box::pin(async move {
            let held = self
                .secrets
                .get_opt("logdna-agent-key")
                .await
                .ok()
                .flatten()
                .and_then(|s| secret_value(&s));
            self.hooks.lock().unwrap().secret_at_delete.push(held);
            self.inner.delete_key(api_key, id).await
        })
    }
}

struct Harness {
    client: Client,
    ns: String,
    sim: Simulator,
    ibm: IbmCloud,
    hooks: Arc<Mutex<Hooks>>,
    ctx: Arc<Context>,
}

impl Harness {
    async fn new(prefix: &str) -> Harness {
        Self::with_grace(prefix, Duration::from_secs(60)).await
    }

    async fn with_grace(prefix: &str, key_creation_grace: Duration) -> Harness {
        Self::with_settings(prefix, |s| s.key_creation_grace = key_creation_grace).await
    }

    async fn with_settings(prefix: &str, adjust: impl FnOnce(&mut Settings)) -> Harness {
        let cp = support::control_plane();
        cp.install_crd(IngestionKeyRequest::crd()).await;
        let ns = cp.namespace(prefix).await;
        let client = cp.client().await;
        let seed = Seed::from_yaml(SEED).expect("seed");
        let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), seed)
            .await
            .expect("simulator");
        let endpoints = Endpoints::new(&sim.base_url(), &sim.base_url()).unwrap();
        let ibm = IbmCloud::new(endpoints, ClientConfig::default()).unwrap();
        let hooks = Arc::new(Mutex::new(Hooks::default()));
        let mut settings = Settings {
            namespaces: vec![ns.clone()],
            ..Settings::default()
        };
        adjust(&mut settings);
        let wrapped = Wrapped {
            inner: ibm.clone(),
            hooks: hooks.clone(),
            secrets: Api::namespaced(client.clone(), &ns),
        };
        let ctx = Arc::new(Context::new(
            client.clone(),
            wrapped,
            Arc::new(Metrics::default()),
            settings,
        ));
        let h = Harness {
            client,
            ns,
            sim,
            ibm,
            hooks,
            ctx,
        };
        h.api_key_secret().await;
        h
    }

    /// A context with no memory of earlier reconciles (as after a restart of the operator).
    fn restart(&mut self) {
        let settings = self.ctx.settings.clone();
        let wrapped = Wrapped {
            inner: self.ibm.clone(),
            hooks: self.hooks.clone(),
            secrets: Api::namespaced(self.client.clone(), &self.ns),
        };
        self.ctx = Arc::new(Context::new(
            self.client.clone(),
            wrapped,
            Arc::new(Metrics::default()),
            settings,
        ));
    }

    fn requests(&self) -> Api<IngestionKeyRequest> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn api_key_secret(&self) {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ibmcloud-api-key"},
            "stringData": {"apikey": MANAGER_KEY},
        }))
        .unwrap();
        self.secrets()
            .create(&PostParams::default(), &secret)
            .await
            .expect("create API key Secret");
    }

    /// Creates a request and runs the first reconcile (which only adds the finalizer).
    async fn create(&self, name: &str, spec: serde_json::Value) {
        let request: IngestionKeyRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("request JSON");
        self.requests()
            .create(&PostParams::default(), &request)
            .await
            .expect("create request");
        self.reconcile(name).await.expect("finalizer added");
    }

    async fn reconcile(&self, name: &str) -> Result<Action, ReconcileError> {
        let request = self.requests().get(name).await.expect("read request");
        reconcile(Arc::new(request), self.ctx.clone()).await
    }

    async fn get(&self, name: &str) -> IngestionKeyRequest {
        self.requests().get(name).await.expect("read request")
    }

    async fn secret_value(&self) -> Option<String> {
        let secret = self.secrets().get_opt("logdna-agent-key").await.unwrap()?;
        secret_value(&secret)
    }

    /// (guid, state) of the simulator's keys named `name`.
    fn keys_named(&self, name: &str) -> Vec<(String, String)> {
        self.sim
            .keys()
            .into_iter()
            .filter(|k| k.name == name)
            .map(|k| (k.guid, k.state))
            .collect()
    }

    fn active_keys_named(&self, name: &str) -> usize {
        self.keys_named(name)
            .iter()
            .filter(|(_, s)| s == "active")
            .count()
    }

    async fn credential_of_field(&self, key_guid: &str, field: &str) -> String {
        let key = self
            .ibm
            .get_key(&SecretString::new(MANAGER_KEY), key_guid)
            .await
            .expect("get key");
        key.credentials
            .field(field)
            .expect("credential field")
            .expose()
            .to_owned()
    }

    async fn credential_of(&self, key_guid: &str) -> String {
        let key = self
            .ibm
            .get_key(&SecretString::new(MANAGER_KEY), key_guid)
            .await
            .expect("get key");
        key.credentials
            .field("ingestion_key")
            .expect("ingestion key")
            .expose()
            .to_owned()
    }
}

fn secret_value(secret: &Secret) -> Option<String> {
    let ByteString(bytes) = secret.data.as_ref()?.get("logdna-agent-key")?;
    String::from_utf8(bytes.clone()).ok()
}

fn ready_reason(request: &IngestionKeyRequest) -> Option<String> {
    Some(request.status.as_ref()?.ready()?.reason.clone())
}

fn key_name(request: &IngestionKeyRequest) -> String {
    request
        .status
        .as_ref()
        .and_then(|s| s.resource_key.as_ref())
        .map(|k| k.name.clone())
        .expect("a key is recorded")
}

fn key_guid(request: &IngestionKeyRequest) -> String {
    request
        .status
        .as_ref()
        .and_then(|s| s.resource_key.as_ref())
        .map(|k| k.guid.clone())
        .expect("a key is recorded")
}

/// `spec` with replaced keys deleted as soon as their successor is in use.
fn without_grace(mut spec: serde_json::Value) -> serde_json::Value {
    spec["rotation"] = serde_json::json!({"gracePeriod": "0s"});
    spec
}

fn spec_on(instance_guid: &str) -> serde_json::Value {
    serde_json::json!({
        "instance": {"guid": instance_guid},
        "apiKeySecretRef": {"name": "ibmcloud-api-key"},
    })
}

#[tokio::test]
async fn a_new_request_creates_one_key_without_looking_anything_up() {
    let h = Harness::new("rec-new").await;
    h.create("at", spec_on(AT_GUID)).await;
    h.sim.reset_calls();
    h.reconcile("at").await.expect("apply");
    let request = h.get("at").await;
    assert_eq!(ready_reason(&request).as_deref(), Some(reason::KEY_SYNCED));
    assert_eq!(h.sim.call_count(CREATE), 1);
    assert_eq!(
        h.sim.call_count(FIND_BY_NAME),
        0,
        "no key of a never-created default name can exist: nothing to look up"
    );
    let guid = key_guid(&request);
    assert_eq!(
        h.secret_value().await.as_deref(),
        Some(h.credential_of(&guid).await.as_str())
    );
    assert!(request.status.unwrap().pending_key_creation.is_none());
}

#[tokio::test]
async fn a_refresh_reads_the_recorded_key_and_creates_nothing() {
    let mut h = Harness::new("rec-refresh").await;
    h.create("at", spec_on(AT_GUID)).await;
    h.reconcile("at").await.expect("apply");
    h.restart(); // no memory: the full sync runs
    h.sim.reset_calls();
    h.reconcile("at").await.expect("refresh");
    assert_eq!(h.sim.call_count(GET_KEY), 1);
    assert_eq!(h.sim.call_count(CREATE), 0);
    assert_eq!(h.sim.call_count(FIND_BY_NAME), 0);
    assert_eq!(
        ready_reason(&h.get("at").await).as_deref(),
        Some(reason::KEY_SYNCED)
    );
}

#[tokio::test]
async fn a_lost_creation_reply_is_found_by_name_not_created_twice() {
    let h = Harness::with_grace("rec-lost", Duration::ZERO).await;
    h.create("at", spec_on(AT_GUID)).await;
    h.hooks.lock().unwrap().lose_next_create_reply = true;
    let error = h.reconcile("at").await.expect_err("the reply was lost");
    assert_eq!(error.reason(), reason::IBM_CLOUD_UNAVAILABLE);
    let pending = h.get("at").await.status.unwrap().pending_key_creation;
    let pending = pending.expect("the creation stays recorded as pending");
    assert_eq!(h.active_keys_named(&pending.name), 1, "the key did land");

    h.reconcile("at").await.expect("apply after the lost reply");
    let request = h.get("at").await;
    assert_eq!(ready_reason(&request).as_deref(), Some(reason::KEY_SYNCED));
    assert_eq!(
        h.active_keys_named(&pending.name),
        1,
        "the landed key is reused"
    );
    assert_eq!(key_name(&request), pending.name);
    assert!(request.status.unwrap().pending_key_creation.is_none());
}

#[tokio::test]
async fn a_pending_creation_within_its_grace_is_waited_for() {
    let h = Harness::with_grace("rec-grace", Duration::from_secs(60)).await;
    h.create("at", spec_on(AT_GUID)).await;
    h.hooks.lock().unwrap().lose_next_create_reply = true;
    h.reconcile("at").await.expect_err("the reply was lost");
    // The key landed, but a lookup right now must see it; hide it to play a slow IBM Cloud.
    let pending = h
        .get("at")
        .await
        .status
        .unwrap()
        .pending_key_creation
        .unwrap();
    let (guid, _) = h.keys_named(&pending.name).remove(0);
    h.ibm
        .delete_key(&SecretString::new(MANAGER_KEY), &guid)
        .await
        .unwrap();
    h.sim.reset_calls();
    let action = h.reconcile("at").await.expect("waits");
    assert_eq!(
        h.sim.call_count(CREATE),
        0,
        "never created within the grace"
    );
    assert_ne!(
        action,
        Action::await_change(),
        "it comes back to look again"
    );
    let request = h.get("at").await;
    let status = request.status.clone().unwrap();
    assert_eq!(status.pending_key_creation, Some(pending));
    let ready = status.ready().unwrap();
    assert!(
        ready.message.contains("looks for it again in"),
        "the wait is visible: {}",
        ready.message
    );
}

#[tokio::test]
async fn a_refused_creation_clears_its_pending_record() {
    let h = Harness::new("rec-refused").await;
    let mut spec = spec_on(AT_GUID);
    spec["resourceKey"] = serde_json::json!({"role": "NoSuchRole"});
    h.create("at", spec).await;
    let error = h.reconcile("at").await.expect_err("IBM refuses the role");
    assert_eq!(error.reason(), reason::INVALID_SPEC);
    let status = h.get("at").await.status.unwrap();
    assert!(
        status.pending_key_creation.is_none(),
        "a 400 made no key: nothing to wait for once the spec is fixed"
    );
    h.requests()
        .patch(
            "at",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"resourceKey": {"role": "Manager"}}})),
        )
        .await
        .unwrap();
    h.reconcile("at")
        .await
        .expect("the fixed spec applies at once");
    assert_eq!(
        ready_reason(&h.get("at").await).as_deref(),
        Some(reason::KEY_SYNCED)
    );
}

#[tokio::test]
async fn a_vanished_key_is_replaced_in_the_same_secret() {
    let mut h = Harness::new("rec-vanished").await;
    h.create("at", spec_on(AT_GUID)).await;
    h.reconcile("at").await.expect("apply");
    let before = h.get("at").await;
    let uid = h.secrets().get("logdna-agent-key").await.unwrap().uid();
    h.ibm
        .delete_key(&SecretString::new(MANAGER_KEY), &key_guid(&before))
        .await
        .unwrap();
    h.restart();
    h.reconcile("at").await.expect("replace");
    let after = h.get("at").await;
    assert_ne!(key_guid(&after), key_guid(&before));
    assert_eq!(h.active_keys_named(&key_name(&after)), 1);
    assert_eq!(
        h.secrets().get("logdna-agent-key").await.unwrap().uid(),
        uid,
        "updated in place, never re-created"
    );
}

#[tokio::test]
async fn a_move_deletes_the_old_key_only_once_the_secret_holds_the_new_one() {
    let h = Harness::new("rec-move").await;
    h.create("at", without_grace(spec_on(AT_GUID))).await;
    h.reconcile("at").await.expect("apply");
    let old = h.get("at").await;
    let old_value = h.secret_value().await.unwrap();
    h.requests()
        .patch(
            "at",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"instance": {"guid": LA_GUID}}})),
        )
        .await
        .unwrap();
    h.reconcile("at").await.expect("move");
    let retiring = h.get("at").await.status.unwrap().retiring_keys;
    assert_eq!(
        retiring.len(),
        1,
        "the old key waits in status.retiringKeys"
    );
    assert_eq!(retiring[0].guid, key_guid(&old));
    h.reconcile("at").await.expect("retire");
    let new = h.get("at").await;
    assert!(new.status.as_ref().unwrap().retiring_keys.is_empty());
    let new_value = h.secret_value().await.unwrap();
    assert_ne!(new_value, old_value, "the other instance has its own key");
    assert_eq!(new_value, h.credential_of(&key_guid(&new)).await);
    let states = h.keys_named(&key_name(&old));
    let old_state = states.iter().find(|(g, _)| *g == key_guid(&old)).unwrap();
    assert_eq!(old_state.1, "removed", "the key used before is deleted");
    let at_delete = h.hooks.lock().unwrap().secret_at_delete.clone();
    assert_eq!(
        at_delete,
        vec![Some(new_value)],
        "when the old key was deleted, the Secret already held the new one"
    );
}

#[tokio::test]
async fn duplicates_of_the_default_name_are_deleted_keeping_one() {
    let h = Harness::with_grace("rec-dupes", Duration::ZERO).await;
    h.create("at", spec_on(AT_GUID)).await;
    h.hooks.lock().unwrap().lose_next_create_reply = true;
    h.reconcile("at").await.expect_err("the reply was lost");
    let pending = h
        .get("at")
        .await
        .status
        .unwrap()
        .pending_key_creation
        .unwrap();
    // A second creation of the same name landed too (a retry whose reply was also lost).
    let create = CreateKeyRequest {
        name: pending.name.clone(),
        source: AT_GUID.into(),
        role: "Manager".into(),
    };
    h.ibm
        .create_key(&SecretString::new(MANAGER_KEY), &create)
        .await
        .unwrap();
    assert_eq!(h.active_keys_named(&pending.name), 2);
    h.reconcile("at").await.expect("apply");
    assert_eq!(h.active_keys_named(&pending.name), 1);
    let kept = key_guid(&h.get("at").await);
    let first = h.keys_named(&pending.name)[0].0.clone();
    assert_eq!(kept, first, "the first creation is the one kept");
}

#[tokio::test]
async fn a_custom_named_key_that_exists_is_reused() {
    let h = Harness::new("rec-custom").await;
    let create = CreateKeyRequest {
        name: "team-key".into(),
        source: AT_GUID.into(),
        role: "Manager".into(),
    };
    let existing = h
        .ibm
        .create_key(&SecretString::new(MANAGER_KEY), &create)
        .await
        .unwrap();
    let mut spec = spec_on(AT_GUID);
    spec["resourceKey"] = serde_json::json!({"name": "team-key"});
    h.create("at", spec).await;
    h.sim.reset_calls();
    h.reconcile("at").await.expect("apply");
    assert_eq!(h.sim.call_count(CREATE), 0);
    assert_eq!(key_guid(&h.get("at").await), existing.guid);
}

#[tokio::test]
async fn a_foreign_secret_is_never_overwritten() {
    let h = Harness::new("rec-foreign").await;
    let foreign: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "logdna-agent-key"},
        "stringData": {"logdna-agent-key": "someone-elses-value"},
    }))
    .unwrap();
    h.secrets()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    h.create("at", spec_on(AT_GUID)).await;
    h.sim.reset_calls();
    let error = h.reconcile("at").await.expect_err("conflict");
    assert_eq!(error.reason(), reason::SECRET_CONFLICT);
    assert_eq!(
        h.sim.call_count(CREATE),
        0,
        "the conflict is found before a key is minted"
    );
    assert_eq!(
        h.secret_value().await.as_deref(),
        Some("someone-elses-value")
    );
}

#[tokio::test]
async fn deletion_deletes_the_key_and_releases_the_request() {
    let h = Harness::new("rec-delete").await;
    h.create("at", spec_on(AT_GUID)).await;
    h.reconcile("at").await.expect("apply");
    let request = h.get("at").await;
    h.requests()
        .delete("at", &DeleteParams::default())
        .await
        .unwrap();
    h.reconcile("at").await.expect("cleanup");
    assert_eq!(h.active_keys_named(&key_name(&request)), 0);
    assert!(
        h.requests().get_opt("at").await.unwrap().is_none(),
        "the finalizer is removed, so the request is gone"
    );
}

#[tokio::test]
async fn deletion_with_retain_keeps_the_key() {
    let h = Harness::new("rec-retain").await;
    let mut spec = spec_on(AT_GUID);
    spec["deletionPolicy"] = "Retain".into();
    h.create("at", spec).await;
    h.reconcile("at").await.expect("apply");
    let request = h.get("at").await;
    h.requests()
        .delete("at", &DeleteParams::default())
        .await
        .unwrap();
    h.sim.reset_calls();
    h.reconcile("at").await.expect("cleanup");
    assert_eq!(h.active_keys_named(&key_name(&request)), 1);
    assert!(h.sim.calls().values().all(|n| *n == 0) || h.sim.calls().is_empty());
    assert!(h.requests().get_opt("at").await.unwrap().is_none());
}

async fn events(h: &Harness, reason: &str) -> Vec<String> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(h.client.clone(), &h.ns);
    api.list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

async fn move_to(h: &Harness, name: &str, instance_guid: &str) {
    h.requests()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"instance": {"guid": instance_guid}}})),
        )
        .await
        .unwrap();
    h.reconcile(name).await.expect("move");
    h.reconcile(name).await.expect("retire the old key");
}

#[tokio::test]
async fn every_event_tells_what_happened_then() {
    let h = Harness::new("rec-events").await;
    h.create("at", without_grace(spec_on(AT_GUID))).await;
    h.reconcile("at").await.expect("apply");
    let first = key_guid(&h.get("at").await);
    move_to(&h, "at", LA_GUID).await;
    let second = key_guid(&h.get("at").await);
    move_to(&h, "at", AT_GUID).await;
    let third = key_guid(&h.get("at").await);
    let created = events(&h, "ResourceKeyCreated").await;
    for guid in [&first, &second, &third] {
        assert_eq!(
            created.iter().filter(|n| n.contains(guid.as_str())).count(),
            1,
            "one creation event names {guid}: {created:?}"
        );
    }
    let deleted = events(&h, "ResourceKeyDeleted").await;
    for guid in [&first, &second] {
        assert!(
            deleted.iter().any(|n| n.contains(guid.as_str())),
            "a deletion event names {guid}: {deleted:?}"
        );
    }
    let value = h.secret_value().await.unwrap();
    let fingerprint = h.get("at").await.status.unwrap().key_fingerprint.unwrap();
    let updated = events(&h, "SecretUpdated").await;
    assert!(
        updated.last().is_some_and(|n| n.contains(&fingerprint)),
        "the latest update names the fingerprint the Secret holds: {updated:?}"
    );
    assert!(updated.iter().all(|n| !n.contains(&value)));
}

#[tokio::test]
async fn the_api_key_secret_is_never_the_target_and_no_key_is_minted() {
    let h = Harness::new("rec-self").await;
    let mut spec = spec_on(AT_GUID);
    spec["secret"] = serde_json::json!({"name": "ibmcloud-api-key"});
    h.create("at", spec).await;
    h.sim.reset_calls();
    let error = h.reconcile("at").await.expect_err("invalid");
    assert_eq!(error.reason(), reason::INVALID_SPEC);
    assert!(!error.to_string().contains("delete"), "{error}");
    assert_eq!(h.sim.call_count(CREATE), 0);
    let api_key = h.secrets().get("ibmcloud-api-key").await.unwrap();
    assert!(
        api_key.data.unwrap().contains_key("apikey"),
        "the API key is untouched"
    );
}

#[tokio::test]
async fn a_missing_api_key_field_names_the_keys_the_secret_has() {
    let h = Harness::new("rec-field").await;
    let mut spec = spec_on(AT_GUID);
    spec["apiKeySecretRef"]["key"] = "api_key".into();
    h.create("at", spec).await;
    let error = h.reconcile("at").await.expect_err("no such key");
    assert_eq!(error.reason(), reason::API_KEY_SECRET_NOT_FOUND);
    let message = error.to_string();
    assert!(message.contains("keys present: apikey"), "{message}");
    assert!(!message.contains(MANAGER_KEY), "names only, never values");
}

#[tokio::test]
async fn an_instance_that_no_longer_resolves_is_not_shown() {
    let h = Harness::new("rec-stale").await;
    h.create("at", spec_on(AT_GUID)).await;
    h.reconcile("at").await.expect("apply");
    assert!(h.get("at").await.status.unwrap().instance.is_some());
    h.requests()
        .patch(
            "at",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"instance": {"guid": null, "name": "does-not-exist"}}}),
            ),
        )
        .await
        .unwrap();
    let error = h.reconcile("at").await.expect_err("not found");
    assert_eq!(error.reason(), reason::INSTANCE_NOT_FOUND);
    let status = h.get("at").await.status.unwrap();
    assert!(
        status.instance.is_none(),
        "INSTANCE must not show the previous instance: {:?}",
        status.instance
    );
    assert!(status.resource_key.is_some(), "what deletion needs stays");
}

#[tokio::test]
async fn a_key_reset_in_ibm_cloud_reaches_the_same_secret_at_the_next_refresh() {
    let mut h = Harness::new("rec-reset").await;
    h.create("at", spec_on(AT_GUID)).await;
    h.reconcile("at").await.expect("apply");
    let uid = h.secrets().get("logdna-agent-key").await.unwrap().uid();
    let rotated = h.sim.reset_ingestion_key(AT_GUID).expect("instance exists");
    h.restart(); // the refresh: a full sync
    h.reconcile("at").await.expect("refresh");
    assert_eq!(h.secret_value().await.as_deref(), Some(rotated.expose()));
    assert_eq!(
        h.secrets().get("logdna-agent-key").await.unwrap().uid(),
        uid,
        "updated in place, never re-created"
    );
    assert_eq!(events(&h, "SecretUpdated").await.len(), 1);
}

#[tokio::test]
async fn a_refused_secret_write_is_reported_with_the_servers_words() {
    let h = Harness::new("rec-quota").await;
    // An exhausted quota on Secrets: one allowed, one used (the API key Secret). The harness runs
    // no quota controller, so the usage is written here as it would compute it.
    let quota: k8s_openapi::api::core::v1::ResourceQuota =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "no-more-secrets"},
            "spec": {"hard": {"count/secrets": "1"}},
        }))
        .unwrap();
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(h.client.clone(), &h.ns);
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("create the quota");
    let usage = serde_json::json!({"status": {
        "hard": {"count/secrets": "1"},
        "used": {"count/secrets": "1"},
    }});
    quotas
        .patch_status(
            "no-more-secrets",
            &PatchParams::default(),
            &Patch::Merge(usage),
        )
        .await
        .expect("record the quota's usage");
    h.create("at", spec_on(AT_GUID)).await;
    let error = h.reconcile("at").await.expect_err("the write is refused");
    assert_eq!(error.reason(), "SecretWriteRejected");
    let message = error.to_string();
    assert!(message.contains("quota"), "the server's words: {message}");
    let status = h.get("at").await.status.unwrap();
    assert_eq!(
        status.ready().map(|c| c.reason.as_str()),
        Some("SecretWriteRejected"),
        "{status:?}"
    );
    assert_eq!(events(&h, "SecretWriteRejected").await.len(), 1);
    assert!(h.secret_value().await.is_none());
}

// ---- The key lifecycle: rotation, roll-out, retirement, one-time credentials, roles ----

async fn annotate_rotate(h: &Harness, name: &str, value: &str) {
    h.requests()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"keysync.dev/rotate": value}}}),
            ),
        )
        .await
        .expect("annotate");
}

async fn patch_spec(h: &Harness, name: &str, spec: serde_json::Value) {
    h.requests()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": spec })),
        )
        .await
        .expect("patch spec");
}

fn status_of(
    request: &IngestionKeyRequest,
) -> ingestion_key_operator::crd::IngestionKeyRequestStatus {
    request.status.clone().expect("a status")
}

fn state_of(h: &Harness, guid: &str) -> String {
    h.sim
        .keys()
        .into_iter()
        .find(|k| k.guid == guid)
        .map(|k| k.state)
        .expect("the key exists in the simulator")
}

#[tokio::test]
async fn a_rotation_by_annotation_replaces_the_key_in_the_ibm_order() {
    let h = Harness::new("rec-rotate").await;
    h.create("at", without_grace(spec_on(AT_GUID))).await;
    h.reconcile("at").await.expect("apply");
    let old = h.get("at").await;
    let secret_uid = h.secrets().get("logdna-agent-key").await.unwrap().uid();
    // The admin generated a new ingestion key in IBM's web UI: a new resource key carries it.
    let reset = h.sim.reset_ingestion_key(AT_GUID).expect("instance");
    annotate_rotate(&h, "at", "2026-12-01T10:00").await;
    h.reconcile("at").await.expect("rotate");
    let rotated = h.get("at").await;
    let status = status_of(&rotated);
    assert_eq!(key_name(&rotated), format!("{}:r1", key_name(&old)));
    assert_eq!(h.secret_value().await.as_deref(), Some(reset.expose()));
    assert_eq!(
        h.secrets().get("logdna-agent-key").await.unwrap().uid(),
        secret_uid,
        "the same Secret, updated in place"
    );
    assert_eq!(
        status
            .rotation
            .as_ref()
            .and_then(|r| r.last_request.as_deref()),
        Some("2026-12-01T10:00")
    );
    assert!(
        status
            .rotation
            .as_ref()
            .unwrap()
            .last_rotation_time
            .is_some()
    );
    assert_eq!(status.retiring_keys.len(), 1, "{:?}", status.retiring_keys);
    assert_eq!(status.retiring_keys[0].guid, key_guid(&old));
    h.reconcile("at").await.expect("retire");
    assert_eq!(state_of(&h, &key_guid(&old)), "removed");
    assert!(status_of(&h.get("at").await).retiring_keys.is_empty());
    let at_delete = h.hooks.lock().unwrap().secret_at_delete.clone();
    assert_eq!(at_delete, vec![Some(reset.expose().to_owned())]);
    assert_eq!(events(&h, "RotationStarted").await.len(), 1);
    assert_eq!(events(&h, "ResourceKeyDeleted").await.len(), 1);
    // Each value acts once.
    h.reconcile("at").await.expect("refresh");
    let created = h.sim.call_count(CREATE);
    h.reconcile("at").await.expect("refresh");
    assert_eq!(h.sim.call_count(CREATE), created, "no second rotation");
    assert_eq!(key_guid(&h.get("at").await), key_guid(&rotated));
}

#[tokio::test]
async fn a_replaced_key_lives_for_its_grace_period() {
    let h = Harness::new("rec-grace").await;
    let mut spec = spec_on(AT_GUID);
    spec["rotation"] = serde_json::json!({"gracePeriod": "1h"});
    h.create("at", spec).await;
    h.reconcile("at").await.expect("apply");
    let old = key_guid(&h.get("at").await);
    annotate_rotate(&h, "at", "one").await;
    h.reconcile("at").await.expect("rotate");
    h.reconcile("at").await.expect("again");
    assert_eq!(state_of(&h, &old), "active", "kept for the grace period");
    let retiring = status_of(&h.get("at").await).retiring_keys;
    let key = &retiring[0];
    let retired = key.retired_at.as_ref().expect("retiredAt").0;
    let after = key.delete_after.as_ref().expect("deleteAfter").0;
    let grace = after.duration_since(retired).as_secs();
    assert!(
        (3590..=3610).contains(&grace),
        "deleteAfter is 1h after: {grace}s"
    );
}

#[tokio::test]
async fn a_scheduled_rotation_runs_when_its_time_comes() {
    let h = Harness::with_settings("rec-schedule", |s| {
        s.min_rotation_interval = Duration::from_secs(1)
    })
    .await;
    let mut spec = spec_on(LOGS_GUID);
    spec["resourceKey"] = serde_json::json!({"role": "Sender", "credentialField": "apikey"});
    spec["rotation"] = serde_json::json!({"interval": "2s", "gracePeriod": "0s"});
    h.create("logs", spec).await;
    h.reconcile("logs").await.expect("apply");
    let first = h.get("logs").await;
    let next = status_of(&first)
        .rotation
        .and_then(|r| r.next_rotation_time)
        .expect("nextRotationTime is set")
        .0;
    // Before its time: nothing.
    h.reconcile("logs").await.expect("refresh");
    assert_eq!(key_guid(&h.get("logs").await), key_guid(&first));
    // The schedule is the clock under test: wait for the time it names.
    let wait = Duration::try_from(next.duration_since(k8s_openapi::jiff::Timestamp::now()))
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    h.reconcile("logs").await.expect("scheduled rotation");
    let rotated = h.get("logs").await;
    assert_eq!(key_name(&rotated), format!("{}:r1", key_name(&first)));
    let rotation = status_of(&rotated).rotation.unwrap();
    let last = rotation.last_rotation_time.unwrap().0;
    let next = rotation.next_rotation_time.unwrap().0;
    assert_eq!(
        next.duration_since(last).as_secs(),
        2,
        "the next one is an interval later"
    );
    let value = h.secrets().get("logdna-agent-key").await.unwrap();
    let value = String::from_utf8(value.data.unwrap()["logdna-agent-key"].0.clone()).unwrap();
    assert_ne!(
        value,
        h.credential_of_field(&key_guid(&first), "apikey").await,
        "a new API key"
    );
}

#[tokio::test]
async fn restart_targets_roll_out_and_the_old_key_waits_for_them() {
    let h = Harness::new("rec-rollout").await;
    let agents = agent_daemonset(&h.client, &h.ns, "logdna-agent").await;
    let mut spec = spec_on(AT_GUID);
    spec["rotation"] = serde_json::json!({"gracePeriod": "0s", "rolloutTimeout": "0s"});
    spec["restartTargets"] = serde_json::json!([
        {"kind": "DaemonSet", "name": "logdna-agent"},
        {"kind": "Deployment", "name": "not-there"},
    ]);
    h.create("at", spec).await;
    h.reconcile("at").await.expect("apply");
    let first = h.get("at").await;
    assert_eq!(
        ready_reason(&first).as_deref(),
        Some("KeySynced"),
        "a missing target never fails a sync"
    );
    let fingerprint = status_of(&first).key_fingerprint.unwrap();
    let ds = agents.get("logdna-agent").await.unwrap();
    assert_eq!(
        template_fingerprint(&ds).as_deref(),
        Some(fingerprint.as_str())
    );
    let rollout = status_of(&first).rollout.expect("status.rollout");
    assert_eq!(
        rollout.missing_targets,
        vec!["Deployment/not-there does not exist".to_owned()]
    );
    assert!(rollout.completed_at.is_none());
    assert_eq!(events(&h, "RestartTargetNotFound").await.len(), 1);
    complete_rollout(&agents, "logdna-agent").await;
    h.reconcile("at").await.expect("rolled out");
    assert!(
        status_of(&h.get("at").await)
            .rollout
            .unwrap()
            .completed_at
            .is_some()
    );
    assert_eq!(events(&h, "RolloutComplete").await.len(), 1);
    // A refresh with the same credential restarts nothing.
    let generation = agents
        .get("logdna-agent")
        .await
        .unwrap()
        .metadata
        .generation;
    h.reconcile("at").await.expect("refresh");
    assert_eq!(
        agents
            .get("logdna-agent")
            .await
            .unwrap()
            .metadata
            .generation,
        generation
    );

    // A rotation after a reset in the web UI: new key, Secret, restart, and the old key waits.
    let old = key_guid(&h.get("at").await);
    h.sim.reset_ingestion_key(AT_GUID).expect("instance");
    annotate_rotate(&h, "at", "r1").await;
    h.reconcile("at").await.expect("rotate");
    let rotated = h.get("at").await;
    let new_fingerprint = status_of(&rotated).key_fingerprint.unwrap();
    assert_ne!(new_fingerprint, fingerprint);
    let ds = agents.get("logdna-agent").await.unwrap();
    assert_eq!(
        template_fingerprint(&ds).as_deref(),
        Some(new_fingerprint.as_str())
    );
    assert_eq!(events(&h, "RolloutRestarted").await.len(), 2);
    h.reconcile("at").await.expect("rollout still running");
    assert_eq!(
        state_of(&h, &old),
        "active",
        "kept until the agents run with the new key"
    );
    let retiring = status_of(&h.get("at").await).retiring_keys;
    assert!(retiring[0].delete_after.is_none(), "{retiring:?}");
    assert!(status_of(&h.get("at").await).rollout.unwrap().stalled);
    assert_eq!(
        events(&h, "RolloutStalled").await.len(),
        1,
        "rolloutTimeout 0s has passed"
    );
    complete_rollout(&agents, "logdna-agent").await;
    h.reconcile("at").await.expect("rolled out: grace starts");
    h.reconcile("at").await.expect("grace over: delete");
    assert_eq!(state_of(&h, &old), "removed");
}

#[tokio::test]
async fn a_failed_delete_of_a_replaced_key_is_retried_until_it_succeeds() {
    let h = Harness::new("rec-delete-retry").await;
    h.create("at", without_grace(spec_on(AT_GUID))).await;
    h.reconcile("at").await.expect("apply");
    let old = key_guid(&h.get("at").await);
    annotate_rotate(&h, "at", "1").await;
    h.reconcile("at").await.expect("rotate");
    h.sim.set_faults(ibm_cloud_sim::Faults {
        // More failures than the client's own retries: the delete fails for the reconcile.
        error_status: 500,
        fail_count: Some(50),
        matching: Some("DELETE /v2/resource_keys".into()),
        ..Default::default()
    });
    h.reconcile("at")
        .await
        .expect("a failed delete does not fail the sync");
    assert_eq!(state_of(&h, &old), "active");
    let request = h.get("at").await;
    let retiring = &status_of(&request).retiring_keys[0];
    assert_eq!(retiring.delete_attempts, 1);
    assert!(retiring.last_delete_error.is_some());
    let ready = request.status.as_ref().unwrap().conditions[0]
        .message
        .clone();
    assert!(
        ready.contains("last attempt failed"),
        "visible in Ready: {ready}"
    );
    assert_eq!(events(&h, "ResourceKeyDeleteFailed").await.len(), 1);
    h.sim.clear_faults();
    support::wait_for("the retried delete", Duration::from_secs(30), || async {
        h.reconcile("at").await.expect("retry");
        state_of(&h, &old) == "removed"
    })
    .await;
    assert!(status_of(&h.get("at").await).retiring_keys.is_empty());
}

#[tokio::test]
async fn one_time_credentials_are_kept_and_replaced_only_when_lost() {
    let mut h = Harness::new("rec-onetime").await;
    h.create("at", without_grace(spec_on(ONETIME_GUID))).await;
    h.reconcile("at").await.expect("apply");
    let first = h.get("at").await;
    assert_eq!(ready_reason(&first).as_deref(), Some("KeySynced"));
    let value = h
        .secret_value()
        .await
        .expect("written from the creation response");
    assert_eq!(
        Some(value.clone()),
        h.sim
            .ingestion_key(ONETIME_GUID)
            .map(|k| k.expose().to_owned())
    );
    // A restart reads the key: REDACTED, yet the Secret holds the recorded value.
    h.restart();
    h.reconcile("at").await.expect("refresh after restart");
    let refreshed = h.get("at").await;
    assert_eq!(ready_reason(&refreshed).as_deref(), Some("KeySynced"));
    assert_eq!(key_guid(&refreshed), key_guid(&first), "no new key");
    // The Secret is deleted: the value is lost, so the key is replaced.
    h.secrets()
        .delete("logdna-agent-key", &DeleteParams::default())
        .await
        .unwrap();
    h.reconcile("at").await.expect("replace");
    let replaced = h.get("at").await;
    assert_eq!(key_name(&replaced), format!("{}:r1", key_name(&first)));
    assert_eq!(
        h.secret_value().await,
        Some(value),
        "the instance's ingestion key, again"
    );
    h.reconcile("at").await.expect("retire");
    assert_eq!(state_of(&h, &key_guid(&first)), "removed");
}

#[tokio::test]
async fn sender_on_a_cloud_logs_instance_is_sent_as_its_role_crn() {
    let h = Harness::new("rec-sender").await;
    let mut spec = spec_on(LOGS_GUID);
    spec["resourceKey"] = serde_json::json!({"role": "Sender", "credentialField": "apikey"});
    spec["secret"] = serde_json::json!({"name": "logs-agent", "key": "IAM_API_KEY"});
    h.create("logs", spec).await;
    h.reconcile("logs").await.expect("apply");
    let request = h.get("logs").await;
    assert_eq!(ready_reason(&request).as_deref(), Some("KeySynced"));
    let recorded = status_of(&request).resource_key.unwrap();
    assert_eq!(
        recorded.role,
        "crn:v1:bluemix:public:logs::::serviceRole:Sender"
    );
    let key = h
        .sim
        .keys()
        .into_iter()
        .find(|k| k.guid == recorded.guid)
        .unwrap();
    assert_eq!(key.role, "Sender");
    let secret = h.secrets().get("logs-agent").await.unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["IAM_API_KEY"]);
}

#[tokio::test]
async fn a_role_change_replaces_the_key() {
    let h = Harness::new("rec-role").await;
    h.create("at", without_grace(spec_on(AT_GUID))).await;
    h.reconcile("at").await.expect("apply");
    let old = h.get("at").await;
    patch_spec(
        &h,
        "at",
        serde_json::json!({"resourceKey": {"role": "Writer"}}),
    )
    .await;
    h.reconcile("at").await.expect("replace");
    let new = h.get("at").await;
    assert_eq!(key_name(&new), format!("{}:r1", key_name(&old)));
    assert_eq!(status_of(&new).resource_key.unwrap().role, "Writer");
    let key = h
        .sim
        .keys()
        .into_iter()
        .find(|k| k.guid == key_guid(&new))
        .unwrap();
    assert_eq!(key.role, "Writer");
    h.reconcile("at").await.expect("retire");
    assert_eq!(state_of(&h, &key_guid(&old)), "removed");
}

/// A key on the Activity Tracker instance that someone else created (Terraform, the console).
async fn someone_elses_key(h: &Harness, name: &str) -> ResourceKey {
    let create = CreateKeyRequest {
        name: name.into(),
        source: AT_GUID.into(),
        role: "Manager".into(),
    };
    h.ibm
        .create_key(&SecretString::new(MANAGER_KEY), &create)
        .await
        .expect("someone else's key")
}

#[tokio::test]
async fn a_custom_named_key_made_by_someone_else_is_never_deleted() {
    let h = Harness::new("rec-foreign").await;
    let theirs = someone_elses_key(&h, "team-key").await;
    let mut spec = without_grace(spec_on(AT_GUID));
    spec["resourceKey"] = serde_json::json!({"name": "team-key"});
    h.create("at", spec).await;
    h.reconcile("at").await.expect("apply");
    assert_eq!(key_guid(&h.get("at").await), theirs.guid, "used");
    assert!(
        !status_of(&h.get("at").await)
            .resource_key
            .unwrap()
            .created_by_operator
    );
    // A rotation makes a key of ours and lets theirs go without deleting it.
    annotate_rotate(&h, "at", "1").await;
    h.reconcile("at").await.expect("rotate");
    h.reconcile("at").await.expect("retire");
    assert_eq!(key_name(&h.get("at").await), "team-key:r1");
    assert_eq!(state_of(&h, &theirs.guid), "active", "never deleted");
    assert_eq!(events(&h, "ResourceKeyRetained").await.len(), 1);
    assert!(status_of(&h.get("at").await).retiring_keys.is_empty());
    // The key the operator made is deleted with the request; theirs stays.
    let ours = key_guid(&h.get("at").await);
    h.requests()
        .delete("at", &DeleteParams::default())
        .await
        .unwrap();
    h.reconcile("at").await.expect("cleanup");
    assert_eq!(state_of(&h, &ours), "removed");
    assert_eq!(state_of(&h, &theirs.guid), "active");
}

#[tokio::test]
async fn a_foreign_custom_named_key_survives_the_request_whatever_the_policy() {
    let h = Harness::new("rec-foreign-del").await;
    let theirs = someone_elses_key(&h, "shared-key").await;
    let mut spec = spec_on(AT_GUID);
    spec["resourceKey"] = serde_json::json!({"name": "shared-key"});
    spec["deletionPolicy"] = serde_json::json!("Delete");
    h.create("at", spec).await;
    h.reconcile("at").await.expect("apply");
    h.requests()
        .delete("at", &DeleteParams::default())
        .await
        .unwrap();
    h.reconcile("at").await.expect("cleanup");
    assert_eq!(state_of(&h, &theirs.guid), "active");
    assert!(
        events(&h, "ResourceKeyRetained")
            .await
            .iter()
            .any(|n| n.contains("did not create"))
    );
}

#[tokio::test]
async fn a_new_secret_key_leaves_exactly_one_data_key() {
    let h = Harness::new("rec-secret-key").await;
    h.create("at", spec_on(AT_GUID)).await;
    h.reconcile("at").await.expect("apply");
    let uid = h.secrets().get("logdna-agent-key").await.unwrap().uid();
    patch_spec(
        &h,
        "at",
        serde_json::json!({"secret": {"key": "ingestion-key"}}),
    )
    .await;
    h.reconcile("at").await.expect("new key");
    let secret = h.secrets().get("logdna-agent-key").await.unwrap();
    assert_eq!(secret.uid(), uid, "in place");
    let keys: Vec<String> = secret.data.unwrap().into_keys().collect();
    assert_eq!(keys, ["ingestion-key"]);
}

#[tokio::test]
async fn a_new_secret_name_writes_the_new_secret_then_deletes_the_old() {
    let h = Harness::new("rec-secret-name").await;
    h.create("at", spec_on(AT_GUID)).await;
    h.reconcile("at").await.expect("apply");
    let value = h.secret_value().await.unwrap();
    patch_spec(
        &h,
        "at",
        serde_json::json!({"secret": {"name": "agent-key"}}),
    )
    .await;
    h.reconcile("at").await.expect("rename");
    assert!(
        h.secrets()
            .get_opt("logdna-agent-key")
            .await
            .unwrap()
            .is_none(),
        "the old Secret is gone"
    );
    let new = h.secrets().get("agent-key").await.unwrap();
    assert_eq!(secret_value(&new), Some(value));
    assert_eq!(events(&h, "SecretDeleted").await.len(), 1);
}

/// The writes the API server makes to one object from now on, seen by a watch (each event is one
/// write), as (kind, resourceVersion).
struct Writes {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writes {
    async fn watch<K>(api: &Api<K>, name: &str) -> Writes
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        use futures::TryStreamExt;
        let fields = format!("metadata.name={name}");
        let list = api
            .list_metadata(&kube::api::ListParams::default().fields(&fields))
            .await
            .expect("list");
        let from = list
            .metadata
            .resource_version
            .expect("list resourceVersion");
        let params = kube::api::WatchParams::default()
            .fields(&fields)
            .timeout(120);
        let stream = api.watch(&params, &from).await.expect("watch");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Ok(Some(event)) = stream.try_next().await {
                let (kind, object) = match event {
                    kube::api::WatchEvent::Added(o) => ("ADDED", o),
                    kube::api::WatchEvent::Modified(o) => ("MODIFIED", o),
                    kube::api::WatchEvent::Deleted(o) => ("DELETED", o),
                    other => panic!("unexpected watch event {other:?}"),
                };
                let version = object.meta().resource_version.clone().unwrap_or_default();
                sink.lock().unwrap().push((kind.to_owned(), version));
            }
        });
        Writes { seen, task }
    }

    /// The kinds of the writes seen, once the one that made `version` has arrived.
    async fn until(&self, version: &str) -> Vec<String> {
        support::wait_for("the watch to catch up", Duration::from_secs(30), || async {
            self.seen.lock().unwrap().iter().any(|(_, v)| v == version)
        })
        .await;
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Drop for Writes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn resource_version<K: kube::Resource>(object: &K) -> String {
    object
        .meta()
        .resource_version
        .clone()
        .expect("resourceVersion")
}

#[tokio::test]
async fn a_new_request_costs_the_fewest_writes_and_an_in_sync_refresh_none() {
    let mut h = Harness::new("rec-writes").await;
    let request_writes = Writes::watch(&h.requests(), "at").await;
    let secret_writes = Writes::watch(&h.secrets(), "logdna-agent-key").await;
    h.create("at", spec_on(AT_GUID)).await; // the finalizer
    h.reconcile("at").await.expect("apply");
    // The request: created, finalizer, pending creation, Ready with the key (one write).
    let request = h.get("at").await;
    assert_eq!(
        request_writes.until(&resource_version(&request)).await,
        ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED"]
    );
    let secret = h.secrets().get("logdna-agent-key").await.unwrap();
    assert_eq!(
        secret_writes.until(&resource_version(&secret)).await,
        ["ADDED"],
        "one Secret write"
    );
    let events =
        events(&h, "ResourceKeyCreated").await.len() + events(&h, "SecretCreated").await.len();
    assert_eq!(events, 2);
    // A refresh that finds everything in sync (a full sync: no memory) writes nothing. Status
    // times have whole seconds: the refresh runs in a later second than the Ready write, so a
    // rewritten lastSyncTime would be a real change (and a new resourceVersion).
    let synced = request
        .status
        .as_ref()
        .and_then(|s| s.last_sync_time.clone())
        .expect("lastSyncTime")
        .0;
    let later =
        synced.as_millisecond() + 1100 - k8s_openapi::jiff::Timestamp::now().as_millisecond();
    tokio::time::sleep(Duration::from_millis(later.max(0) as u64)).await;
    h.restart();
    h.sim.reset_calls();
    h.reconcile("at").await.expect("refresh");
    assert_eq!(
        resource_version(&h.get("at").await),
        resource_version(&request),
        "no status write"
    );
    assert_eq!(
        resource_version(&h.secrets().get("logdna-agent-key").await.unwrap()),
        resource_version(&secret),
        "no Secret write"
    );
    // One call for the key; the instance lookup is shared by every request on the instance and
    // cached (--instance-cache-ttl), here made once because the restart emptied the cache.
    let key_calls: u64 = h
        .sim
        .calls()
        .iter()
        .filter(|(e, _)| e.contains("resource_keys"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(key_calls, 1, "{:?}", h.sim.calls());
    assert_eq!(h.sim.call_count(GET_KEY), 1);
}
