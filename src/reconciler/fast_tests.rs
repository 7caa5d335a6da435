//! The fast tier: whole reconciles against the fake API server (in memory, over HTTP) and the IBM
//! Cloud simulator (real HTTP), in `cargo test --lib`. For what a real API server adds nothing
//! to: how many writes a sync costs, and which writes are conditional.

use std::sync::Arc;

use hyper::Method;
use ibm_cloud_sim::{Seed, Simulator};
use serde_json::json;

use kube::ResourceExt;

use super::{Context, Settings, fake_api_server::FakeApiServer, reconcile};
use crate::{
    crd::{FINALIZER, IngestionKeyRequest},
    ibm::{ClientConfig, Endpoints, IbmCloud},
    metrics::Metrics,
};

const NS: &str = "fast";
const API_KEY: &str = "fast-apikey-manager";
const REQUEST: &str = "/apis/keysync.dev/v1alpha1/namespaces/fast/ingestionkeyrequests/agent";
const SECRET: &str = "/api/v1/namespaces/fast/secrets/logdna-agent-key";
const API_KEY_SECRET: &str = "/api/v1/namespaces/fast/secrets/ibmcloud-api-key";

struct Fixture {
    api: FakeApiServer,
    sim: Simulator,
    ctx: Arc<Context>,
}

impl Fixture {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A fixture whose request is in sync, with the calls that took forgotten.
    async fn synced() -> Self {
        let f = Self::new().await;
        f.sync().await;
        f.api.forget_calls();
        f.sim.reset_calls();
        f
    }

    /// A fixture whose operator runs with `adjust` applied to the default settings.
    async fn with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let seed = Seed::from_yaml(&format!(
            "accounts:\n  - id: acc\n    api_keys:\n      - {{key: {API_KEY}, platform_role: Editor, service_role: Manager}}\n    instances:\n      - {{name: my-activity-tracker, service: logdnaat, region: us-south}}\n"
        ))
        .expect("seed");
        let sim = Simulator::start("127.0.0.1:0".parse().expect("address"), seed)
            .await
            .expect("simulator");
        let endpoints = Endpoints::new(&sim.base_url(), &sim.base_url()).expect("endpoints");
        let ibm = IbmCloud::new(endpoints, ClientConfig::default()).expect("client");
        let api = FakeApiServer::start().await;
        let mut settings = Settings {
            namespaces: vec![NS.into()],
            ..Settings::default()
        };
        adjust(&mut settings);
        let ctx = Context::new(api.client(), ibm, Arc::new(Metrics::default()), settings);
        let encoded = base64(API_KEY);
        api.put(
            API_KEY_SECRET,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "ibmcloud-api-key", "namespace": NS},
                   "data": {"apikey": encoded}}),
        );
        api.put(
            REQUEST,
            json!({"apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
                   "metadata": {"name": "agent", "namespace": NS},
                   "spec": {"instance": {"name": "my-activity-tracker"},
                            "apiKeySecretRef": {"name": "ibmcloud-api-key"}}}),
        );
        Self {
            api,
            sim,
            ctx: Arc::new(ctx),
        }
    }

    fn request(&self) -> IngestionKeyRequest {
        let stored = self.api.get(REQUEST).expect("request stored");
        serde_json::from_value(stored).expect("request parses")
    }

    /// Reconciles the request as stored now; the error's reason on failure.
    async fn reconcile(&self) -> Result<(), &'static str> {
        self.reconcile_in(self.ctx.clone()).await
    }

    /// Reconciles the request as stored now in the process whose context is `ctx`.
    async fn reconcile_in(&self, ctx: Arc<Context>) -> Result<(), &'static str> {
        reconcile(Arc::new(self.request()), ctx)
            .await
            .map(drop)
            .map_err(|e| e.reason())
    }

    /// The context of a new operator process (after a restart or a failover): nothing in memory.
    fn new_process(&self) -> Arc<Context> {
        let endpoints =
            Endpoints::new(&self.sim.base_url(), &self.sim.base_url()).expect("endpoints");
        let ibm = IbmCloud::new(endpoints, ClientConfig::default()).expect("client");
        let settings = self.ctx.settings.clone();
        let ctx = Context::new(
            self.api.client(),
            ibm,
            Arc::new(Metrics::default()),
            settings,
        );
        Arc::new(ctx)
    }

    /// Reconciles until Ready (a reconcile may end early to be called again, as the controller
    /// would on its own status write).
    async fn sync(&self) {
        for _ in 0..5 {
            self.reconcile().await.expect("reconcile");
            if self.ready() {
                return;
            }
        }
        panic!("not Ready after 5 reconciles: {:?}", self.api.get(REQUEST));
    }

    fn ready(&self) -> bool {
        self.request()
            .status
            .as_ref()
            .and_then(|s| s.ready())
            .is_some_and(|c| c.status == "True")
    }

    /// Writes by kind of object, in order: `secrets`, `ingestionkeyrequests/status`, `events`...
    fn writes(&self) -> Vec<String> {
        self.api
            .calls()
            .into_iter()
            .filter(|c| c.is_write())
            .map(|c| {
                let after = c
                    .path
                    .rsplit("/namespaces/fast/")
                    .next()
                    .unwrap_or_default();
                let mut parts = after.split('/');
                let kind = parts.next().unwrap_or_default().to_owned();
                match parts.nth(1) {
                    Some(sub) => format!("{} {kind}/{sub}", c.method),
                    None => format!("{} {kind}", c.method),
                }
            })
            .collect()
    }

    fn assert_no_ibm_call(&self) {
        let calls = self.sim.calls();
        assert!(
            calls.values().all(|&n| n == 0),
            "IBM Cloud calls: {calls:?}"
        );
    }

    fn active_keys(&self) -> usize {
        self.sim
            .keys()
            .iter()
            .filter(|k| k.state == "active")
            .count()
    }
}

fn base64(text: &str) -> String {
    use k8s_openapi::ByteString;
    let encoded = serde_json::to_value(ByteString(text.as_bytes().to_vec())).expect("encodes");
    encoded.as_str().unwrap_or_default().to_owned()
}

/// The first sync's writes, one by one: the finalizer with the announcement of the key creation
/// (one write), the API key Secret's hold (once per Secret), the Secret, the key with Ready, and
/// one event. A new write on this path shows up here before it shows up on a bill.
#[tokio::test]
async fn a_first_sync_costs_these_writes_and_no_more() {
    let f = Fixture::new().await;
    f.sync().await;
    let writes = f.writes();
    let events = writes.iter().filter(|w| w.ends_with(" events")).count();
    let other: Vec<&str> = writes
        .iter()
        .filter(|w| !w.ends_with(" events"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        other,
        [
            "PATCH ingestionkeyrequests", // the finalizer and the key creation, before IBM is asked
            "PATCH secrets",              // the API key Secret's hold (once per Secret)
            "POST secrets",               // the agents' Secret
            "PATCH ingestionkeyrequests/status", // the key, the fingerprint, Ready
        ],
        "all writes: {writes:#?}"
    );
    assert_eq!(
        events, 1,
        "ResourceKeyCreated, naming the Secret: {writes:#?}"
    );
    assert_eq!(f.active_keys(), 1);
    assert!(f.api.get(SECRET).is_some());
    let request = f.request();
    assert!(request.finalizers().iter().any(|f| f == FINALIZER));
    let status = request.status.clone().unwrap_or_default();
    let announced = status.last_key_creation.expect("the creation is resolved");
    assert_eq!(Some(announced.name), status.resource_key.map(|k| k.name));
    assert_eq!(request.pending_key_creation(), None, "nothing pending");
}

/// A refresh that finds the Secret in sync writes nothing, reads two Secrets and asks IBM Cloud
/// nothing.
#[tokio::test]
async fn a_refresh_in_sync_writes_nothing() {
    let f = Fixture::synced().await;
    f.reconcile().await.expect("refresh");
    assert_eq!(f.writes(), Vec::<String>::new());
    let reads: Vec<String> = f.api.calls().into_iter().map(|c| c.path).collect();
    assert_eq!(
        reads,
        [API_KEY_SECRET, SECRET],
        "the API key and the Secret, read once each"
    );
    f.assert_no_ibm_call();
}

/// The pending record is written only onto the version of the request the reconcile read: a
/// reconcile working from a stale copy (a lagging cache after a restart, or a second leader)
/// gets a conflict and creates no key, instead of creating one the fresher copy does not know.
#[tokio::test]
async fn a_stale_copy_of_the_request_creates_no_key() {
    let f = Fixture::new().await;
    f.api.edit(REQUEST, |request| {
        request["metadata"]["finalizers"] = json!([FINALIZER]);
    });
    let stale = f.request();
    // Someone else writes the request meanwhile (here: another replica's pending record).
    f.api.edit(REQUEST, |request| {
        request["status"]["pendingKeyCreation"] =
            json!({"name": "other", "instanceGuid": "x", "startedAt": "2026-01-01T00:00:00Z"});
    });
    let before = f.sim.keys().len();
    let outcome = reconcile(Arc::new(stale), f.ctx.clone()).await;
    assert_eq!(
        f.sim.keys().len(),
        before,
        "no key created from a stale copy: {:?}",
        outcome.map_err(|e| e.reason())
    );
    let conflict = f
        .api
        .calls()
        .into_iter()
        .any(|c| c.method == Method::PATCH && c.status == 409);
    assert!(conflict, "the write was refused as a conflict");
}

/// A reconcile kept waiting past its deadline (IBM Cloud answering after 2 s, the deadline
/// 300 ms) is stopped, and the request says so; nothing was created meanwhile.
#[tokio::test]
async fn a_reconcile_past_its_deadline_is_stopped_and_reported() {
    let fixture =
        Fixture::with(|s| s.reconcile_deadline = std::time::Duration::from_millis(300)).await;
    fixture.sim.set_faults(ibm_cloud_sim::Faults {
        latency_ms: 2000,
        ..ibm_cloud_sim::Faults::default()
    });
    let started = std::time::Instant::now();
    let outcome = fixture.reconcile().await;
    let took = started.elapsed();
    assert_eq!(outcome, Err(crate::crd::reason::KUBERNETES_API_ERROR));
    assert!(
        took < std::time::Duration::from_secs(2),
        "stopped at the deadline, took {took:?}"
    );
    let message = fixture
        .request()
        .status
        .and_then(|s| s.ready().map(|c| c.message.clone()))
        .unwrap_or_default();
    assert!(message.contains("did not finish within"), "{message}");
    assert_eq!(fixture.active_keys(), 0);
}

/// One namespace holds at most three quarters of the reconcile slots: the rest stay free for
/// the others, and a slot given back can be taken again.
#[tokio::test]
async fn one_namespace_never_takes_every_reconcile_slot() {
    let fixture = Fixture::new().await;
    let ctx = &fixture.ctx;
    let mut held: Vec<_> = std::iter::from_fn(|| ctx.namespace_slot("busy"))
        .take(100)
        .collect();
    assert_eq!(held.len(), 12, "12 of 16 slots for one namespace");
    assert!(
        ctx.namespace_slot("quiet").is_some(),
        "another namespace still gets a slot"
    );
    held.pop();
    assert!(
        ctx.namespace_slot("busy").is_some(),
        "a slot given back is taken again"
    );
}

/// A new process (a restart, a failover) finds the request in sync from its status and the
/// Secret alone: no IBM Cloud call and no write, so thousands of requests do not all re-read their
/// key at once when the operator starts.
#[tokio::test]
async fn a_new_process_reads_nothing_from_ibm_for_a_request_in_sync() {
    let f = Fixture::synced().await;
    f.reconcile_in(f.new_process())
        .await
        .expect("first reconcile after a restart");
    assert_eq!(f.writes(), Vec::<String>::new());
    f.assert_no_ibm_call();
}

/// A request whose last status write is older than its refresh interval (in-sync refreshes write
/// nothing, so this is the usual case): a new process does not refresh it at once but at its
/// point of the interval, so a restart does not re-read every key at once.
#[tokio::test]
async fn a_new_process_spreads_refreshes_that_look_overdue() {
    let f = Fixture::new().await;
    f.sync().await;
    f.api.edit(REQUEST, |request| {
        request["status"]["lastSyncTime"] = json!("2020-01-01T00:00:00Z");
    });
    f.sim.reset_calls();
    f.reconcile_in(f.new_process())
        .await
        .expect("after a restart");
    f.assert_no_ibm_call();
}
