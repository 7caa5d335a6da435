//! The API key Secret: read from the request's own namespace, and held with a finalizer while a
//! request may still need it to delete its key. Without the hold, deleting a namespace removes
//! the API key and the requests together, and a request whose operator was down at that moment
//! could never delete its key (the namespace would stay Terminating). The hold is released by
//! the last request that needs it, like Kubernetes' own `kubernetes.io/pvc-protection`.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    core::PartialObjectMeta,
};
use serde_json::json;
use tracing::info;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Context, ReconcileError, api_key_cache::ApiKeyRead, plan};
use crate::{
    crd::{API_KEY_FINALIZER, DeletionPolicy, IngestionKeyRequest},
    redact::SecretString,
};

/// The API key and its Secret's metadata, in the request's own namespace only, when the Secret
/// allows the request (see [`plan::access`]). With `--require-opt-in` its metadata is read first,
/// so that a Secret that has not opted in is never read; otherwise it is read once and its
/// narrowing annotations are checked before its value is used. A read the Secrets' watch shows
/// unchanged is used again ([`super::api_key_cache`]); the checks run on every call.
pub(super) async fn read(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<(SecretString, PartialObjectMeta<Secret>), ReconcileError> {
    let reference = &request.spec.api_key_secret_ref;
    let namespace = request.namespace().unwrap_or_default();
    let not_found = || ReconcileError::ApiKeySecretNotFound {
        name: reference.name.clone(),
        key: reference.key.clone(),
    };
    let allow = |metadata: &ObjectMeta| {
        let (labels, annotations) = (
            metadata.labels.clone().unwrap_or_default(),
            metadata.annotations.clone().unwrap_or_default(),
        );
        let require = ctx.settings.require_opt_in;
        plan::access::api_key_use(request, &labels, &annotations, require).map_err(|why| {
            ReconcileError::ApiKeySecretNotAllowed {
                name: reference.name.clone(),
                why,
            }
        })
    };
    let metadata_only = |metadata: ObjectMeta| PartialObjectMeta::<Secret> {
        metadata,
        ..Default::default()
    };
    let cache = &ctx.api_keys;
    if let Some(read) = cache.lookup(&namespace, &reference.name, &reference.key)
        && let Some(value) = read.value(&reference.key)
    {
        allow(&read.metadata)?;
        return Ok((value.clone(), metadata_only(read.metadata)));
    }
    if ctx.settings.require_opt_in {
        let metadata: Api<PartialObjectMeta<Secret>> =
            Api::namespaced(ctx.client.clone(), &namespace);
        let read = metadata.get_metadata_opt(&reference.name).await;
        let seen = found(read, "read the API key Secret's metadata", not_found)?;
        allow(&seen.metadata)?;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let read = api.get_opt(&reference.name).await;
    let secret = found(read, "read the API key Secret", not_found)?;
    allow(&secret.metadata)?;
    let (kept, value) = ApiKeyRead::new(&secret, &reference.key);
    match value {
        Some(value) => {
            cache.store(&namespace, &reference.name, kept);
            Ok((value, metadata_only(secret.metadata)))
        }
        // The names of the Secret's other keys are told only when it has opted in: a request's
        // author may not be allowed to read the Secret.
        None => Err(ReconcileError::ApiKeyMissingInSecret {
            name: reference.name.clone(),
            key: reference.key.clone(),
            present: plan::access::api_key_opted_in(secret.labels()).then(|| {
                secret
                    .data
                    .as_ref()
                    .map(|d| d.keys().cloned().collect())
                    .unwrap_or_default()
            }),
        }),
    }
}

/// The object a read found, the `missing` error when there is none, or the failed read's error.
fn found<T>(
    read: Result<Option<T>, kube::Error>,
    action: &'static str,
    missing: impl FnOnce() -> ReconcileError,
) -> Result<T, ReconcileError> {
    read.map_err(ReconcileError::kube(action))?
        .ok_or_else(missing)
}

/// Puts the operator's finalizer on the API key Secret (once) when the request's key will be
/// deleted with it (`deletionPolicy: Delete`).
pub(super) async fn hold(
    ctx: &Context,
    request: &IngestionKeyRequest,
    secret: &PartialObjectMeta<Secret>,
) -> Result<(), ReconcileError> {
    let held = |secret: &PartialObjectMeta<Secret>| {
        secret.finalizers().iter().any(|f| f == API_KEY_FINALIZER)
    };
    if request.spec.deletion_policy != DeletionPolicy::Delete
        || secret.finalizers().iter().any(|f| f == API_KEY_FINALIZER)
    {
        return Ok(());
    }
    // Many requests share one API key Secret, and a burst of new ones all find it not held yet:
    // a conflict means another reconcile wrote it, most likely this very hold.
    let mut current = PartialObjectMeta::<Secret> {
        metadata: secret.metadata.clone(),
        ..Default::default()
    };
    let mut attempts = 0;
    loop {
        let mut finalizers = current.finalizers().to_vec();
        finalizers.push(API_KEY_FINALIZER.to_owned());
        match patch_finalizers(ctx, &current, finalizers, "hold the API key Secret").await {
            Ok(()) => break,
            Err(ReconcileError::Kubernetes {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 409 && attempts < HOLD_ATTEMPTS => {
                attempts += 1;
                let api: Api<Secret> =
                    Api::namespaced(ctx.client.clone(), &secret.namespace().unwrap_or_default());
                let read = api.get_metadata_opt(&secret.name_any()).await;
                let missing = || ReconcileError::ApiKeySecretNotFound {
                    name: request.spec.api_key_secret_ref.name.clone(),
                    key: request.spec.api_key_secret_ref.key.clone(),
                };
                current = found(read, "read the API key Secret's metadata", missing)?;
                if held(&current) {
                    return Ok(());
                }
            }
            Err(error) => return Err(error),
        }
    }
    // A new hold may mean a request moved to another API key Secret: release the ones that no
    // request needs any more (a rare path, so listing the namespace's Secrets is fine here).
    release_unreferenced(ctx, request).await
}

async fn release_unreferenced(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<(), ReconcileError> {
    let namespace = request.namespace().unwrap_or_default();
    let secrets: Api<PartialObjectMeta<Secret>> = Api::namespaced(ctx.client.clone(), &namespace);
    let held = secrets
        .list_metadata(&ListParams::default())
        .await
        .map_err(ReconcileError::kube("list the namespace's Secrets"))?;
    for secret in held
        .items
        .iter()
        .filter(|s| s.finalizers().iter().any(|f| f == API_KEY_FINALIZER))
        .filter(|s| s.name_any() != request.spec.api_key_secret_ref.name)
    {
        release_if_unused(ctx, request, &secret.name_any()).await?;
    }
    Ok(())
}

/// How often a hold that met a concurrent write reads the Secret again and retries.
const HOLD_ATTEMPTS: u32 = 3;

/// Takes the finalizer off the API key Secret `name` when no other request of the namespace
/// would need that API key to delete its key.
pub(super) async fn release_if_unused(
    ctx: &Context,
    request: &IngestionKeyRequest,
    name: &str,
) -> Result<(), ReconcileError> {
    let namespace = request.namespace().unwrap_or_default();
    let requests: Api<IngestionKeyRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let others = requests
        .list(&ListParams::default())
        .await
        .map_err(ReconcileError::kube(
            "list the requests sharing the API key Secret",
        ))?;
    // Needed by any request (this one included) that still has keys to delete with it. Each
    // deleting request records `keysDeleted` before it looks, so the last one to look sees
    // every other one done, however their cleanups interleave.
    let needed = others.items.iter().any(|other| {
        let done = other.metadata.deletion_timestamp.is_some()
            && (other.uid() == request.uid()
                || other.status.as_ref().is_some_and(|s| s.keys_deleted));
        !done
            && other.spec.api_key_secret_ref.name == name
            && other.spec.deletion_policy == DeletionPolicy::Delete
    });
    if needed {
        return Ok(());
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(secret) = secrets
        .get_opt(name)
        .await
        .map_err(ReconcileError::kube("read the API key Secret"))?
    else {
        return Ok(());
    };
    if !secret.finalizers().iter().any(|f| f == API_KEY_FINALIZER) {
        return Ok(());
    }
    let rest: Vec<String> = secret
        .finalizers()
        .iter()
        .filter(|f| *f != API_KEY_FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(ctx, &secret, rest, "release the API key Secret").await?;
    info!(
        secret = name,
        "released the API key Secret: no request needs it any more"
    );
    Ok(())
}

/// Sets the Secret's finalizers, on the condition that it did not change since it was read.
async fn patch_finalizers(
    ctx: &Context,
    secret: &impl ResourceExt,
    finalizers: Vec<String>,
    action: &'static str,
) -> Result<(), ReconcileError> {
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &secret.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": {
            "resourceVersion": secret.resource_version(),
            "finalizers": finalizers,
        }
    });
    api.patch(
        &secret.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(ReconcileError::kube(action))
}
