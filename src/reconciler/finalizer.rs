//! The request's own metadata: its finalizer, and the announcement of a key creation.
//!
//! Both go in one write when a request's first key is created: the finalizer must be on the
//! request before a key exists (or its deletion could not delete the key), and the announcement
//! must be there before IBM Cloud is asked (or a crash after the creation would lead to a second
//! key). Carried by one metadata patch, they cost one write instead of a finalizer write plus a
//! status write.

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{Context, ReconcileError};
use crate::{
    crd::{FINALIZER, IngestionKeyRequest, KEY_CREATION_ANNOTATION, PendingKeyCreation},
    ibm::ResourceInstance,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Whether the request carries the operator's finalizer.
pub(super) fn is_set(request: &IngestionKeyRequest) -> bool {
    request.finalizers().iter().any(|f| f == FINALIZER)
}

/// The request's finalizers with the operator's added.
fn with_ours(request: &IngestionKeyRequest) -> Vec<String> {
    let mut finalizers = request.finalizers().to_vec();
    if !is_set(request) {
        finalizers.push(FINALIZER.to_owned());
    }
    finalizers
}

/// Announces that a key named `name` is about to be created on `instance`, and adds the
/// finalizer if it is missing, in one write; returns the request as written. Conditional on the
/// request's resourceVersion: a stale copy (a lagging cache, a second leader) must not announce,
/// and then create, a key the current version does not know about.
pub(super) async fn announce_creation(
    ctx: &Context,
    request: &IngestionKeyRequest,
    name: &str,
    instance: &ResourceInstance,
) -> Result<IngestionKeyRequest, ReconcileError> {
    // Whole seconds: the precision of every time Kubernetes writes, so that the status can
    // repeat this record exactly once the creation's outcome is known.
    let now =
        Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now());
    let creation = PendingKeyCreation {
        name: name.to_owned(),
        instance_guid: instance.guid.clone(),
        started_at: Time(now),
    };
    let announced = serde_json::to_string(&creation)
        .map_err(|e| ReconcileError::Unexpected(format!("encode the key creation: {e}")))?;
    let patch = json!({
        "metadata": {
            "resourceVersion": request.resource_version(),
            "finalizers": with_ours(request),
            "annotations": { KEY_CREATION_ANNOTATION: announced },
        }
    });
    send(
        ctx,
        request,
        &Patch::Merge(&patch),
        "announce the key creation",
    )
    .await
}

/// Adds the finalizer (a request that uses a key it did not create, so no announcement carried
/// it). Conditional on the request's resourceVersion, like every finalizer change.
pub(super) async fn add(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<IngestionKeyRequest, ReconcileError> {
    let patch = json!({
        "metadata": {
            "resourceVersion": request.resource_version(),
            "finalizers": with_ours(request),
        }
    });
    send(ctx, request, &Patch::Merge(&patch), "add finalizer").await
}

/// Removes the finalizer once the cleanup is done: a JSON patch that tests the entry it removes,
/// so that a concurrent change of the list is never undone.
pub(super) async fn remove(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<(), ReconcileError> {
    let Some(index) = request.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let operations = json!([
        { "op": "test", "path": path, "value": FINALIZER },
        { "op": "remove", "path": path },
    ]);
    let operations: json_patch::Patch = serde_json::from_value(operations)
        .map_err(|e| ReconcileError::Unexpected(format!("encode the finalizer removal: {e}")))?;
    match send(
        ctx,
        request,
        &Patch::<()>::Json(operations),
        "remove finalizer",
    )
    .await
    {
        Ok(_) => Ok(()),
        // Already gone: the last finalizer was removed and the request with it.
        Err(ReconcileError::Kubernetes {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

async fn send<P: serde::Serialize + std::fmt::Debug>(
    ctx: &Context,
    request: &IngestionKeyRequest,
    patch: &Patch<P>,
    action: &'static str,
) -> Result<IngestionKeyRequest, ReconcileError> {
    let namespace = request.namespace().unwrap_or_default();
    let api: Api<IngestionKeyRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch(&request.name_any(), &PatchParams::default(), patch)
        .await
        .map_err(ReconcileError::kube(action))
}
