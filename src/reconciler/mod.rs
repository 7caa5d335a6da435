//! The `IngestionKeyRequest` controller: watches, reconcile, finalizer, back-off.
//!
//! Phases of one reconcile (see `apply`): validate -> read the API key Secret -> resolve the
//! instance (`instance`) -> find or create the resource key (`keys`, deciding with the pure
//! functions of `plan`) -> write the Secret (`secret`, rendered by the pure `crate::render`) ->
//! status (`status`). Deletion (`cleanup`) deletes the key when the policy says so.

mod api_key;
mod apply;
mod cleanup;
pub mod error;
mod instance;
mod keys;
pub mod plan;
mod retire;
mod rollout;
mod secret;
mod status;

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt, future::Shared};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::{Action, Config as ControllerConfig},
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{self, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};
use tracing::{Instrument, debug, info, info_span, warn};

pub use self::error::{ReconcileError, event_reason, reason};
use crate::{
    crd::{FIELD_MANAGER, FINALIZER, IngestionKeyRequest, MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    ibm::{IbmApi, IbmError, ResourceInstance},
    metrics::{Metrics, RequestSample},
    redact::SecretString,
};

/// Settings of the controller that are not part of any request.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// How long a name/GUID/CRN -> instance resolution is reused.
    pub instance_cache_ttl: Duration,
    /// After a key creation that may not have completed (crash, timeout), how long to wait for
    /// the key to appear before creating it again.
    pub key_creation_grace: Duration,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// The shortest `spec.rotation.interval` accepted (1h; lower only in tests).
    pub min_rotation_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            instance_cache_ttl: Duration::from_secs(300),
            key_creation_grace: Duration::from_secs(60),
            concurrency: 16,
            min_rotation_interval: crate::crd::MIN_ROTATION_INTERVAL,
        }
    }
}

/// In-memory state kept per request.
type PerRequest<T> = Mutex<HashMap<ObjectRef<IngestionKeyRequest>, T>>;

/// The operator's last successful sync of a request.
struct LastSync {
    generation: Option<i64>,
    fingerprint: String,
    at: Instant,
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    pub ibm: Arc<dyn IbmApi>,
    reporter: Reporter,
    /// Per (request uid, event reason): the last note published and the recorder that published
    /// it. kube's recorder merges events by reason and keeps the first note; a different note is
    /// a different happening, so it gets a fresh recorder and a new event, while a repeat of the
    /// same note still becomes a series (count) on one event.
    recorders: Mutex<HashMap<(String, String), (String, Recorder)>>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    instances: Mutex<HashMap<String, (ResourceInstance, Instant)>>,
    /// The last API key each request used, in memory only: lets deletion proceed when the API key
    /// Secret went first (namespace deletion removes both at once).
    last_api_keys: PerRequest<SecretString>,
    failures: PerRequest<u32>,
    /// The last creation IBM Cloud refused (4xx) per request, and when: not asked again for the
    /// same spec, API key and instance until the permanent back-off has passed, so that the
    /// status writes of a failure do not turn into a loop of refused creations.
    refusals: PerRequest<(keys::CreationAttempt, Instant, IbmError)>,
    /// Per request: the generation and fingerprint of the operator's last successful sync, and
    /// when. Only an optimisation (see `apply::last_sync`); forgotten on any failure.
    synced: PerRequest<LastSync>,
    /// The controllers' caches of requests, while this replica reconciles: the per-request
    /// metrics are read from them at scrape time (a deleted request's series go with it).
    stores: Mutex<Vec<Store<IngestionKeyRequest>>>,
}

impl Context {
    pub fn new(
        client: Client,
        ibm: impl IbmApi,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            reporter,
            recorders: Mutex::default(),
            client,
            ibm: Arc::new(ibm),
            metrics,
            settings,
            instances: Mutex::default(),
            last_api_keys: Mutex::default(),
            failures: Mutex::default(),
            refusals: Mutex::default(),
            synced: Mutex::default(),
            stores: Mutex::default(),
        }
    }

    /// The per-request metrics of every request this replica reconciles.
    pub fn request_samples(&self) -> Vec<RequestSample> {
        let now = k8s_openapi::jiff::Timestamp::now();
        lock(&self.stores)
            .iter()
            .flat_map(|store| store.state())
            .map(|request| RequestSample::of(&request, now))
            .collect()
    }

    fn cached_instance(&self, cache_key: &str) -> Option<ResourceInstance> {
        let cache = lock(&self.instances);
        let (instance, at) = cache.get(cache_key)?;
        (at.elapsed() < self.settings.instance_cache_ttl).then(|| instance.clone())
    }

    fn cache_instance(&self, cache_key: String, instance: &ResourceInstance) {
        lock(&self.instances).insert(cache_key, (instance.clone(), Instant::now()));
    }

    fn forget_instance(&self, cache_key: &str) {
        lock(&self.instances).remove(cache_key);
    }

    /// Publishes an event; a failure to do so is logged, never fatal.
    async fn publish(
        &self,
        request: &IngestionKeyRequest,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let note = truncate(note, MAX_EVENT_NOTE);
        // Warnings repeat (a failure retried with back-off) and become a series on one event:
        // their recorder, which caches the last event, is kept. Normal events name what happened
        // (a key's GUID, a fingerprint) and do not repeat: a recorder kept for each would hold an
        // event per request in memory for nothing.
        let recorder = match type_ {
            EventType::Warning => self.recorder_for(request, reason, &note),
            EventType::Normal => Recorder::new(self.client.clone(), self.reporter.clone()),
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &request.object_ref(&())).await {
            warn!(%error, "could not publish event");
        }
    }

    /// The recorder that publishes `note` as its own event (see `recorders`).
    fn recorder_for(&self, request: &IngestionKeyRequest, reason: &str, note: &str) -> Recorder {
        let key = (request.uid().unwrap_or_default(), reason.to_owned());
        let mut recorders = lock(&self.recorders);
        match recorders.get(&key) {
            Some((last, recorder)) if last == note => recorder.clone(),
            _ => {
                let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
                recorders.insert(key, (note.to_owned(), recorder.clone()));
                recorder
            }
        }
    }

    fn remember_refusal(
        &self,
        request: &IngestionKeyRequest,
        attempt: keys::CreationAttempt,
        error: IbmError,
    ) {
        lock(&self.refusals).insert(
            ObjectRef::from_obj(request),
            (attempt, Instant::now(), error),
        );
    }

    /// The refusal of this very creation, if it is recent enough to stand.
    fn refused_creation(
        &self,
        request: &IngestionKeyRequest,
        attempt: &keys::CreationAttempt,
    ) -> Option<IbmError> {
        let refusals = lock(&self.refusals);
        let (refused, at, error) = refusals.get(&ObjectRef::from_obj(request))?;
        (refused == attempt && at.elapsed() < backoff(false, 1)).then(|| error.clone())
    }

    fn remember_sync(&self, request: &IngestionKeyRequest, fingerprint: &str) {
        let entry = LastSync {
            generation: request.metadata.generation,
            fingerprint: fingerprint.to_owned(),
            at: Instant::now(),
        };
        lock(&self.synced).insert(ObjectRef::from_obj(request), entry);
    }

    /// The last sync of this generation of the request, as (fingerprint, age).
    fn remembered_sync(&self, request: &IngestionKeyRequest) -> Option<(String, Duration)> {
        let synced = lock(&self.synced);
        let last = synced.get(&ObjectRef::from_obj(request))?;
        (last.generation == request.metadata.generation)
            .then(|| (last.fingerprint.clone(), last.at.elapsed()))
    }

    fn forget_sync(&self, request: &IngestionKeyRequest) {
        lock(&self.synced).remove(&ObjectRef::from_obj(request));
    }

    /// Forgets the event recorders of a request that is gone.
    fn forget_events(&self, request: &IngestionKeyRequest) {
        let uid = request.uid().unwrap_or_default();
        lock(&self.recorders).retain(|(owner, _), _| *owner != uid);
        lock(&self.refusals).remove(&ObjectRef::from_obj(request));
        self.forget_sync(request);
    }
}

/// The API server refuses event notes over 1 kB.
const MAX_EVENT_NOTE: usize = 1024;

/// `text` cut to at most `max` bytes on a character boundary, marked with an ellipsis when cut.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One reconcile: the finalizer decides between apply and cleanup. Runs in a span carrying the
/// request's namespace and name, so every log line below names the request. Public so that tests
/// can drive single reconciles against a real API server.
pub async fn reconcile(
    request: Arc<IngestionKeyRequest>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let span = info_span!(
        "reconcile",
        namespace = %request.namespace().unwrap_or_default(),
        request = %request.name_any()
    );
    reconcile_in_span(request, ctx).instrument(span).await
}

async fn reconcile_in_span(
    request: Arc<IngestionKeyRequest>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let api: Api<IngestionKeyRequest> =
        Api::namespaced(ctx.client.clone(), &request.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, request.clone(), |event| async {
        match event {
            finalizer::Event::Apply(request) => apply::apply(&request, &ctx).await,
            finalizer::Event::Cleanup(request) => cleanup::cleanup(&request, &ctx).await,
        }
    })
    .await
    .map_err(from_finalizer);
    if let Err(error) = &result {
        report_failure(&ctx, &request, error).await;
    }
    let failure = result.as_ref().err().map(ReconcileError::reason);
    ctx.metrics.observe_reconcile(started.elapsed(), failure);
    match &result {
        Ok(action) => {
            lock(&ctx.failures).remove(&ObjectRef::from_obj(&*request));
            debug!(?action, "reconciled");
        }
        Err(error) => warn!(reason = error.reason(), %error, "reconcile failed"),
    }
    result
}

fn from_finalizer(error: finalizer::Error<ReconcileError>) -> ReconcileError {
    match error {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(source) => ReconcileError::Kubernetes {
            action: "add finalizer",
            source,
        },
        finalizer::Error::RemoveFinalizer(source) => ReconcileError::Kubernetes {
            action: "remove finalizer",
            source,
        },
        other => ReconcileError::Unexpected(other.to_string()),
    }
}

/// Says what is wrong where users look: the Ready condition, and a Warning event when the reason
/// changes. Kubernetes failures are not reported there (the status write would fail as well).
async fn report_failure(ctx: &Context, request: &IngestionKeyRequest, error: &ReconcileError) {
    ctx.forget_sync(request);
    if matches!(
        error,
        ReconcileError::Kubernetes { .. } | ReconcileError::Unexpected(_)
    ) {
        return;
    }
    let transition = status::is_transition(request, error.reason());
    if let Err(status_error) = status::failed(ctx, request, error).await {
        warn!(error = %status_error, "could not write failure status");
    }
    if transition {
        ctx.publish(
            request,
            EventType::Warning,
            error.reason(),
            error.to_string(),
        )
        .await;
    }
}

/// Back-off per request: transient errors retry soon and double up to 5 minutes; permanent ones
/// wait long (a change to the request or its API key Secret triggers a reconcile anyway).
fn error_policy(
    request: Arc<IngestionKeyRequest>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let key = ObjectRef::from_obj(&*request);
    let attempt = {
        let mut failures = lock(&ctx.failures);
        let count = failures.entry(key.clone()).or_default();
        *count = count.saturating_add(1);
        *count
    };
    let delay = jitter(backoff(error.is_transient(), attempt), &key);
    // Never before the time IBM Cloud named in a 429, however long.
    let named = error
        .retry_at()
        .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
        .unwrap_or_default();
    Action::requeue(delay.max(named + Duration::from_millis(100)))
}

fn backoff(transient: bool, attempt: u32) -> Duration {
    let (base, cap) = if transient {
        (Duration::from_secs(1), Duration::from_secs(300))
    } else {
        (Duration::from_secs(300), Duration::from_secs(3600))
    };
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    base.saturating_mul(factor).min(cap)
}

/// Spreads requeues by up to +-10% so that many requests created together do not refresh in
/// lock-step against IBM Cloud.
fn jitter(delay: Duration, key: &ObjectRef<IngestionKeyRequest>) -> Duration {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    std::time::SystemTime::now().hash(&mut hasher);
    let unit = (hasher.finish() % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
    delay.mul_f64(1.0 + unit * 0.1)
}

/// Shared "stop now" signal for every controller and the admin server.
pub type Shutdown = Shared<futures::future::BoxFuture<'static, ()>>;

/// Builds a [`Shutdown`] that resolves on SIGTERM or Ctrl-C.
pub fn shutdown_on_signals() -> Shutdown {
    async {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        info!("shutdown signal received; finishing running reconciles");
    }
    .boxed()
    .shared()
}

/// Runs the controller(s) until `shutdown` resolves. `ready` is set once every watch has synced.
/// One controller per watched namespace (or one for all).
pub async fn run(ctx: Arc<Context>, ready: Arc<AtomicBool>, shutdown: Shutdown) {
    let scopes: Vec<Option<String>> = if ctx.settings.namespaces.is_empty() {
        vec![None]
    } else {
        ctx.settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    for scope in scopes {
        let (controller, store) = controller_for(&ctx, scope.as_deref(), shutdown.clone());
        stores.push(store);
        controllers.push(controller);
    }
    *lock(&ctx.stores) = stores.clone();
    let readiness = async move {
        for store in stores {
            if store.wait_until_ready().await.is_err() {
                return;
            }
        }
        ready.store(true, Ordering::Release);
        info!("caches synced; ready");
    };
    tokio::join!(futures::future::join_all(controllers), readiness);
    lock(&ctx.stores).clear();
}

fn api_in<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match scope {
        None => Api::all(client.clone()),
        Some(namespace) => Api::namespaced(client.clone(), namespace),
    }
}

/// The controller of one scope: requests, the Secrets it owns (by label), and the API key Secrets
/// (metadata only, mapped back to the requests that reference them).
fn controller_for(
    ctx: &Arc<Context>,
    scope: Option<&str>,
    shutdown: Shutdown,
) -> (
    futures::future::BoxFuture<'static, ()>,
    kube::runtime::reflector::Store<IngestionKeyRequest>,
) {
    let managed_secrets =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    // The requests' cache, pruned of what the operator never reads (managedFields, kubectl's
    // last-applied copy of the spec): most of an object's memory (docs/performance.md).
    let (store, writer) = reflector::store();
    let requests_stream = watcher(
        api_in::<IngestionKeyRequest>(&ctx.client, scope),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(prune)
    .reflect(writer)
    .applied_objects();
    let controller = Controller::for_stream(requests_stream, store.clone())
        .with_config(ControllerConfig::default().concurrency(ctx.settings.concurrency));
    let requests = store.clone();
    // API key Secrets are watched as metadata only and never cached: each event is mapped to
    // the requests that reference that Secret, so fixing a missing API key acts at once.
    let referencing = move |secret: PartialObjectMeta<Secret>| {
        let (namespace, name) = (secret.namespace(), secret.name_any());
        requests
            .state()
            .into_iter()
            .filter(|r| r.namespace() == namespace && r.spec.api_key_secret_ref.name == name)
            .map(|r| ObjectRef::from_obj(&*r))
            .collect::<Vec<_>>()
    };
    let running = controller
        .owns(api_in::<Secret>(&ctx.client, scope), managed_secrets)
        .watches(
            api_in::<PartialObjectMeta<Secret>>(&ctx.client, scope),
            watcher::Config::default(),
            referencing,
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                // Already logged, with its reason, by `reconcile`.
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) | Ok(_) => {}
                Err(error) => warn!(%error, "controller or watch error"),
            }
        })
        .boxed();
    (running, store)
}

/// Drops from a cached request what no reconcile reads.
fn prune(request: &mut IngestionKeyRequest) {
    request.metadata.managed_fields = None;
    if let Some(annotations) = request.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// kubectl's client-side apply keeps the whole applied object in this annotation.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_no_managed_fields_and_no_applied_copy() {
        let mut request: IngestionKeyRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
            "metadata": {"name": "at", "annotations": {LAST_APPLIED: "{}", "keysync.dev/rotate": "1"},
                "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"instance": {"name": "x"}, "apiKeySecretRef": {"name": "k"}},
        }))
        .unwrap();
        prune(&mut request);
        assert!(request.metadata.managed_fields.is_none());
        let annotations = request.metadata.annotations.unwrap();
        assert_eq!(annotations.len(), 1, "the operator's own annotation stays");
    }

    #[test]
    fn event_notes_fit_the_api_limit() {
        assert_eq!(truncate("short".into(), MAX_EVENT_NOTE), "short");
        let long = truncate("é".repeat(2000), MAX_EVENT_NOTE);
        assert!(
            long.len() <= MAX_EVENT_NOTE && long.ends_with('…'),
            "{}",
            long.len()
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(true, 1), Duration::from_secs(1));
        assert_eq!(backoff(true, 4), Duration::from_secs(8));
        assert_eq!(backoff(true, 40), Duration::from_secs(300));
        assert_eq!(backoff(false, 1), Duration::from_secs(300));
        assert_eq!(backoff(false, 10), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let key = ObjectRef::<IngestionKeyRequest>::new("a").within("b");
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(100), &key);
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
    }
}
