//! The controller: what is watched, the entry of one reconcile (apply, or cleanup under the
//! finalizer), and what happens after a failure (status, event, back-off).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures::{FutureExt, StreamExt, TryStreamExt, future::Shared};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::{Action, Config as ControllerConfig},
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    Context, ReconcileError,
    api_key_index::ApiKeyIndex,
    apply, deletion, finalizer,
    requeue::{PERMANENT, TRANSIENT, WatchBackoff, jitter},
    status,
};
use crate::{
    crd::{IngestionKeyRequest, MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    lock::lock,
};

/// Shared "stop now" signal for every controller and the admin server.
pub type Shutdown = Shared<futures::future::BoxFuture<'static, ()>>;

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
    let namespace = request.namespace().unwrap_or_default();
    let Some(_slot) = ctx.namespace_slot(&namespace) else {
        debug!("the namespace holds its share of reconcile slots; trying again shortly");
        return Ok(Action::requeue(jitter(
            NAMESPACE_BUSY,
            &ObjectRef::from_obj(&*request),
        )));
    };
    let started = Instant::now();
    let deadline = ctx.settings.reconcile_deadline;
    let work = apply_or_clean_up(&request, &ctx);
    // Stopping a reconcile anywhere is safe: every step resumes from status, as after a crash.
    let result = match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(ReconcileError::DeadlineExceeded {
            seconds: deadline.as_secs(),
        }),
    };
    if let Err(error) = &result {
        report_failure(&ctx, &request, error).await;
    }
    let failure = result.as_ref().err().map(ReconcileError::reason);
    ctx.metrics.observe_reconcile(started.elapsed(), failure);
    match &result {
        Ok(action) => {
            ctx.clear_failures(&request);
            debug!(?action, "reconciled");
        }
        Err(error) => warn!(reason = error.reason(), %error, "reconcile failed"),
    }
    result
}

/// A request being deleted is cleaned up under its finalizer, which goes once the cleanup is
/// done; any other is applied. The finalizer is added by the apply phase, in the write that
/// announces the first key creation (see `finalizer`), not in a write of its own: a request
/// without it has no key to clean up.
async fn apply_or_clean_up(
    request: &IngestionKeyRequest,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    if request.metadata.deletion_timestamp.is_none() {
        return apply::apply(request, ctx).await;
    }
    if !finalizer::is_set(request) {
        return Ok(Action::await_change());
    }
    let action = deletion::finalize(request, ctx).await?;
    finalizer::remove(ctx, request).await?;
    Ok(action)
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
        let (reason, note) = (error.reason(), error.to_string());
        let events = &ctx.events;
        events.warning(request, reason, note).await;
    }
}

/// Back-off per request: [`TRANSIENT`] or [`PERMANENT`], and never before the time IBM Cloud
/// named in a 429, however long.
fn error_policy(
    request: Arc<IngestionKeyRequest>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let attempt = ctx.count_failure(&request);
    let backoff = if error.is_transient() {
        TRANSIENT
    } else {
        PERMANENT
    };
    let delay = jitter(backoff.after(attempt), &ObjectRef::from_obj(&*request));
    let named = error
        .retry_at()
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    Action::requeue(delay.max(named.saturating_add(Duration::from_millis(100))))
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
    let audits = match ctx.settings.orphan_audit_interval {
        Some(interval) => {
            super::orphan_audit::run(ctx.clone(), stores.clone(), interval, shutdown).boxed()
        }
        None => futures::future::ready(()).boxed(),
    };
    let readiness = async move {
        for store in stores {
            if store.wait_until_ready().await.is_err() {
                return;
            }
        }
        ready.store(true, Ordering::Release);
        info!("caches synced; ready");
    };
    tokio::join!(futures::future::join_all(controllers), readiness, audits);
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
    Store<IngestionKeyRequest>,
) {
    let managed_secrets =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    // The requests' cache, pruned of what the operator never reads (managedFields, kubectl's
    // last-applied copy of the spec): most of an object's memory (docs/performance.md).
    let (store, writer) = reflector::store();
    let index = Arc::new(ApiKeyIndex::default());
    let indexing = index.clone();
    let requests_stream = watcher(
        api_in::<IngestionKeyRequest>(&ctx.watch_client, scope),
        watcher::Config::default(),
    )
    .filter(relist_at_once)
    .inspect_ok(move |event| indexing.observe(event))
    .modify(prune)
    .reflect(writer)
    .applied_objects();
    // One back-off for all the streams of this controller (the controller pauses the merged
    // stream after an error): short, and reset by the first answer.
    let controller = Controller::for_stream(requests_stream, store.clone())
        .with_config(ControllerConfig::default().concurrency(ctx.settings.concurrency))
        .trigger_backoff(WatchBackoff::default());
    // API key Secrets are watched as metadata only and never cached: each event is mapped,
    // through the index, to the requests that reference that Secret, so fixing a missing API key
    // acts at once.
    let referencing = move |secret: PartialObjectMeta<Secret>| {
        index.requests_of(secret.namespace(), &secret.name_any())
    };
    // Secrets as metadata only (`Api<PartialObjectMeta<_>>` asks for metadata, never data).
    let versions = ctx.clone();
    let owned_scope = scope.map(str::to_owned);
    let owned_secrets = watcher(
        api_in::<PartialObjectMeta<Secret>>(&ctx.watch_client, scope),
        managed_secrets,
    )
    .filter(relist_at_once)
    .inspect_ok(move |event| versions.observe_owned_secret(owned_scope.as_deref(), event))
    .touched_objects();
    let reads = ctx.clone();
    let namespace = scope.map(str::to_owned);
    let api_key_secrets = watcher(
        api_in::<PartialObjectMeta<Secret>>(&ctx.watch_client, scope),
        watcher::Config::default(),
    )
    .filter(relist_at_once)
    .inspect_ok(move |event| reads.api_keys.observe(namespace.as_deref(), event))
    .touched_objects();
    let running = controller
        .owns_stream(owned_secrets)
        .watches_stream(api_key_secrets, referencing)
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

/// How soon a reconcile turned away because its namespace held its share of slots tries again.
const NAMESPACE_BUSY: Duration = Duration::from_secs(1);

/// Whether a watch event goes on to the controller: not a `410 Gone` ("too old resource
/// version"), after which the watcher relists by itself on its next poll. Passed on, it would
/// count as one more failure and postpone that relist by the back-off, while requests created
/// meanwhile wait unseen.
fn relist_at_once<T>(event: &Result<T, watcher::Error>) -> std::future::Ready<bool> {
    let gone = matches!(event, Err(watcher::Error::WatchError(status)) if status.code == 410);
    if gone {
        debug!("watch expired (410 Gone); relisting now");
    }
    std::future::ready(!gone)
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
}
