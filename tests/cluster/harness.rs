//! The in-process harness: the reconcile logic called directly, in the test process, against the
//! shared API server and the IBM Cloud simulator over HTTP. One behaviour per test, each in a few
//! seconds: a logic bug fails by name rather than as an end-to-end timeout.
//!
//! IBM Cloud is reached through the `IbmApi` seam, wrapped where a test needs to break one step
//! (a lost creation reply) or watch one (what the Secret held when a key was deleted).

pub use test_support as support;

pub use std::sync::{Arc, Mutex};

pub use std::time::Duration;

pub use futures::future::BoxFuture;

pub use ibm_cloud_sim::{Seed, Simulator};

pub use ingestion_key_operator::{
    crd::{API_KEY_OPT_IN_LABEL, ClusterId, IngestionKeyRequest, PendingKeyCreation, reason},
    ibm::{
        ClientConfig, CreateKeyRequest, Endpoints, ErrorKind, IbmApi, IbmCloud, IbmError,
        InstanceQuery, KeyDeletion, ResourceInstance, ResourceKey,
    },
    metrics::Metrics,
    reconciler::{Context, ReconcileError, Settings, reconcile},
    redact::SecretString,
};

pub use k8s_openapi::{ByteString, api::core::v1::Secret};

pub use kube::{
    Api, Client, CustomResourceExt, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::controller::Action,
};

pub use support::workloads::{agent_daemonset, complete_rollout, template_fingerprint};

pub const MANAGER_KEY: &str = "test-apikey-manager-7f3a9c";

pub const AT_GUID: &str = "8d7af921-b136-4078-9666-081bd8470d94";

pub const LA_GUID: &str = "5e0e7c3a-6c34-4f57-9a55-2f6a1e1b0c11";

pub const SEED: &str = r#"
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

pub const LOGS_GUID: &str = "3c1b9f0e-7d2a-4e5b-8c6d-9e0f1a2b3c4d";

pub const ONETIME_GUID: &str = "6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d";

/// Endpoint templates of the simulator's call counters.
pub const CREATE: &str = "POST /v2/resource_keys";

pub const FIND_BY_NAME: &str = "GET /v2/resource_keys";

pub const GET_KEY: &str = "GET /v2/resource_keys/{id}";

/// What a test may break or watch in the IBM Cloud calls.
#[derive(Default)]
pub struct Hooks {
    /// The next creation reaches IBM Cloud but its reply is lost (a timeout).
    pub lose_next_create_reply: bool,
    /// For each deletion: the credential value the agents' Secret held at that moment.
    pub secret_at_delete: Vec<Option<String>>,
}

/// The real client, with [`Hooks`].
pub struct Wrapped {
    pub inner: IbmCloud,
    pub hooks: Arc<Mutex<Hooks>>,
    pub secrets: Api<Secret>,
}

impl IbmApi for Wrapped {
    ingestion_key_operator::forward_ibm_api! { this => this.inner;
        find_instances_by_name(query: InstanceQuery) -> Vec<ResourceInstance>;
        get_instance(guid_or_crn: str) -> ResourceInstance;
        find_keys_by_name(instance_guid: str, name: str) -> Vec<ResourceKey>;
        list_instance_keys(instance_guid: str) -> Vec<ResourceKey>;
        get_key(guid_or_crn: str) -> ResourceKey;
        rename_key(guid_or_crn: str, name: str) -> ResourceKey;
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

pub struct Harness {
    pub client: Client,
    pub ns: String,
    pub sim: Simulator,
    pub ibm: IbmCloud,
    pub hooks: Arc<Mutex<Hooks>>,
    pub ctx: Arc<Context>,
}

impl Harness {
    pub async fn new(prefix: &str) -> Harness {
        Self::with_grace(prefix, Duration::from_secs(60)).await
    }

    /// A harness with request `at` created on `spec` (not reconciled yet).
    pub async fn with_request(prefix: &str, spec: serde_json::Value) -> Harness {
        let harness = Self::new(prefix).await;
        harness.create("at", spec).await;
        harness
    }

    pub async fn with_grace(prefix: &str, key_creation_grace: Duration) -> Harness {
        Self::with_settings(prefix, |s| s.key_creation_grace = key_creation_grace).await
    }

    pub async fn with_settings(prefix: &str, adjust: impl FnOnce(&mut Settings)) -> Harness {
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
    pub fn restart(&mut self) {
        let settings = self.ctx.settings.clone();
        self.restart_with(settings);
    }

    /// The operator restarted as the operator of another cluster (its `--cluster-id`).
    pub fn restart_as_cluster(&mut self, cluster_id: &str) {
        let mut settings = self.ctx.settings.clone();
        settings.cluster_id = ClusterId::parse(cluster_id).expect("cluster id");
        self.restart_with(settings);
    }

    fn restart_with(&mut self, settings: Settings) {
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

    /// Makes the next reconcile of `name` its full refresh, as when its refresh interval has
    /// passed in a running operator: its last sync is moved far back in its status, the operator
    /// restarts (no memory of its own last sync), and the new process looks at the request once
    /// (a first look trusts the status and the Secret and calls no one: see
    /// `plan::sync::fast_path`).
    pub async fn refresh_due(&mut self, name: &str) {
        let patch = serde_json::json!({"status": {"lastSyncTime": "2000-01-01T00:00:00Z"}});
        self.requests()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("move the last sync back");
        self.restart();
        self.reconcile(name)
            .await
            .expect("the first look of the new process");
    }

    /// Labels the API key Secret `keysync.dev/api-key=true`, as its owner opting it in.
    pub async fn opt_in_api_key_secret(&self) {
        let label = serde_json::json!({"metadata": {"labels": {API_KEY_OPT_IN_LABEL: "true"}}});
        let (merge, params) = (Patch::Merge(label), PatchParams::default());
        let secrets = self.secrets();
        let labelled = secrets.patch("ibmcloud-api-key", &params, &merge);
        labelled.await.expect("label the API key Secret");
    }

    pub fn requests(&self) -> Api<IngestionKeyRequest> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn api_key_secret(&self) {
        test_support::env::create_api_key_secret(&self.secrets(), "ibmcloud-api-key", MANAGER_KEY)
            .await;
    }

    /// Creates a request and runs the first reconcile (which only adds the finalizer).
    pub async fn create(&self, name: &str, spec: serde_json::Value) {
        let request: IngestionKeyRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("request JSON");
        self.requests()
            .create(&PostParams::default(), &request)
            .await
            .expect("create request");
    }

    pub async fn reconcile(&self, name: &str) -> Result<Action, ReconcileError> {
        let request = self.requests().get(name).await.expect("read request");
        reconcile(Arc::new(request), self.ctx.clone()).await
    }

    /// Creates request `name` on `spec` and reconciles it once, successfully.
    pub async fn apply(&self, name: &str, spec: serde_json::Value) -> IngestionKeyRequest {
        self.create(name, spec).await;
        self.reconcile(name).await.expect("apply");
        self.get(name).await
    }

    /// Creates request `name` on `spec` and reconciles it once with the creation's reply lost:
    /// the key lands in IBM Cloud and the request records it as pending.
    pub async fn apply_losing_the_reply(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> (PendingKeyCreation, ReconcileError) {
        self.create(name, spec).await;
        self.hooks.lock().unwrap().lose_next_create_reply = true;
        let error = self.reconcile(name).await.expect_err("the reply was lost");
        let pending = self.get(name).await.pending_key_creation();
        (
            pending.expect("the creation stays recorded as pending"),
            error,
        )
    }

    /// Deletes request `name`; its finalizer holds it until a reconcile has cleaned up.
    pub async fn delete_request(&self, name: &str) {
        self.requests()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete request");
    }

    pub async fn get(&self, name: &str) -> IngestionKeyRequest {
        self.requests().get(name).await.expect("read request")
    }

    pub async fn secret_value(&self) -> Option<String> {
        let secret = self.secrets().get_opt("logdna-agent-key").await.unwrap()?;
        secret_value(&secret)
    }

    /// (guid, state) of the simulator's keys named `name`.
    pub fn keys_named(&self, name: &str) -> Vec<(String, String)> {
        support::env::sim_keys(&self.sim, |n| n == name)
    }

    pub fn active_keys_named(&self, name: &str) -> usize {
        support::env::active(&self.keys_named(name))
    }

    pub async fn credential_of_field(&self, key_guid: &str, field: &str) -> String {
        support::env::credential(&self.ibm, key_guid, field).await
    }

    pub async fn credential_of(&self, key_guid: &str) -> String {
        self.credential_of_field(key_guid, "ingestion_key").await
    }
}

pub fn secret_value(secret: &Secret) -> Option<String> {
    let ByteString(bytes) = secret.data.as_ref()?.get("logdna-agent-key")?;
    String::from_utf8(bytes.clone()).ok()
}

pub fn ready_reason(request: &IngestionKeyRequest) -> Option<String> {
    Some(request.status.as_ref()?.ready()?.reason.clone())
}

/// The (name, GUID) of the key recorded in the request's status.
fn recorded_key(request: &IngestionKeyRequest) -> (String, String) {
    request
        .status
        .as_ref()
        .and_then(|s| s.resource_key.as_ref())
        .map(|k| (k.name.clone(), k.guid.clone()))
        .expect("a key is recorded")
}

pub fn key_name(request: &IngestionKeyRequest) -> String {
    recorded_key(request).0
}

pub fn key_guid(request: &IngestionKeyRequest) -> String {
    recorded_key(request).1
}

/// `spec` with replaced keys deleted as soon as their successor is in use.
pub fn without_grace(mut spec: serde_json::Value) -> serde_json::Value {
    spec["rotation"] = serde_json::json!({"gracePeriod": "0s"});
    spec
}

pub fn spec_on(instance_guid: &str) -> serde_json::Value {
    serde_json::json!({
        "instance": {"guid": instance_guid},
        "apiKeySecretRef": {"name": "ibmcloud-api-key"},
    })
}

/// [`spec_on`] the Activity Tracker instance with one more field.
pub fn at_spec_with(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut spec = spec_on(AT_GUID);
    spec[field] = value;
    spec
}

impl Harness {
    pub async fn events(&self, reason: &str) -> Vec<String> {
        support::env::namespace_events(&self.client, &self.ns)
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.note.unwrap_or_default())
            .collect()
    }

    pub async fn move_to(&self, name: &str, instance_guid: &str) {
        self.requests()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"instance": {"guid": instance_guid}}})),
            )
            .await
            .unwrap();
        self.reconcile(name).await.expect("move");
        self.reconcile(name).await.expect("retire the old key");
    }

    pub async fn annotate_rotate(&self, name: &str, value: &str) {
        self.requests()
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

    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        self.requests()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": spec })),
            )
            .await
            .expect("patch spec");
    }

    pub fn state_of(&self, guid: &str) -> String {
        self.sim_key(guid).state
    }

    /// The simulator's record of key `guid`.
    pub fn sim_key(&self, guid: &str) -> ibm_cloud_sim::SimKey {
        self.sim.key(guid).expect("the key exists in the simulator")
    }

    /// The Secret `name`, which must exist.
    pub async fn secret(&self, name: &str) -> Secret {
        self.secrets().get(name).await.expect("read the Secret")
    }

    /// A key on the Activity Tracker instance that someone else created (Terraform, the console).
    pub async fn someone_elses_key(&self, name: &str) -> ResourceKey {
        support::env::someone_elses_key(&self.ibm, name).await
    }
}

pub fn status_of(
    request: &IngestionKeyRequest,
) -> ingestion_key_operator::crd::IngestionKeyRequestStatus {
    request.status.clone().expect("a status")
}
