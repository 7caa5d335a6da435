//! Writing the agents' Secret: created when missing, updated in place when ours, never touched
//! when it belongs to someone else. What the Secret should contain is decided by `crate::render`.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::events::EventType,
};
use tracing::warn;

use super::{Context, ReconcileError};
use crate::crd::reason;
use crate::{
    crd::{FIELD_MANAGER, IngestionKeyRequest, MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    redact::SecretString,
    render::{SecretOwnership, needs_update, ownership, render_secret},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SecretOutcome {
    Created,
    Updated,
    Unchanged,
}

/// The request's Secret as it is now, whoever owns it.
pub(super) async fn read(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<Option<Secret>, ReconcileError> {
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &request.namespace().unwrap_or_default());
    api.get_opt(&request.spec.secret.name)
        .await
        .map_err(ReconcileError::kube("read the Secret"))
}

/// The request's Secret as it is now, after checking that it can be ours: run before any key is
/// created, so that a conflict never mints a key that could not be used.
pub(super) async fn read_ours(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<Option<Secret>, ReconcileError> {
    let existing = read(ctx, request).await?;
    if let Some(secret) = &existing {
        check_ours(ctx, request, secret).await?;
    }
    Ok(existing)
}

/// Writes the credential into the request's Secret, `existing` as returned by [`read_ours`].
/// Returns what it did and the Secret's resourceVersion now.
pub(super) async fn write(
    ctx: &Context,
    request: &IngestionKeyRequest,
    existing: Option<Secret>,
    credential: &SecretString,
) -> Result<(SecretOutcome, Option<String>), ReconcileError> {
    let secret_name = &request.spec.secret.name;
    let mut desired = render_secret(request, credential)
        .ok_or_else(|| ReconcileError::Unexpected("the request has no uid".into()))?;
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &request.namespace().unwrap_or_default());
    let Some(existing) = existing else {
        // Create, not apply: if someone else creates the Secret meanwhile, this fails (409) and
        // the next reconcile classifies it instead of taking it over.
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let created = api
            .create(&params, &desired)
            .await
            .map_err(ReconcileError::secret_write(
                "create the Secret",
                secret_name,
            ))?;
        return Ok((SecretOutcome::Created, created.resource_version()));
    };
    if !needs_update(&existing, &desired) {
        return Ok((SecretOutcome::Unchanged, existing.resource_version()));
    }
    // Updated in place (same object, same uid). The resourceVersion makes the patch conditional:
    // had the Secret changed hands since it was read, the API server refuses (409) and the next
    // reconcile looks again. Data keys other than ours are removed (JSON null), so that after a
    // change of spec.secret.key the Secret holds exactly the one key.
    desired.metadata.resource_version = existing.metadata.resource_version.clone();
    let others = existing.metadata.owner_references.iter().flatten();
    let mut owners: Vec<_> = others
        .filter(|o| o.controller != Some(true))
        .cloned()
        .collect();
    owners.extend(
        desired
            .metadata
            .owner_references
            .take()
            .into_iter()
            .flatten(),
    );
    desired.metadata.owner_references = Some(owners);
    let mut body = serde_json::to_value(&desired)
        .map_err(|e| ReconcileError::Unexpected(format!("cannot encode the Secret: {e}")))?;
    for stale in existing.data.iter().flatten().map(|(k, _)| k) {
        if *stale != request.spec.secret.key {
            body["data"][stale] = serde_json::Value::Null;
        }
    }
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let updated = api
        .patch(secret_name, &params, &Patch::Merge(&body))
        .await
        .map_err(ReconcileError::secret_write(
            "update the Secret",
            secret_name,
        ))?;
    Ok((SecretOutcome::Updated, updated.resource_version()))
}

/// The Secret the request wrote before `spec.secret.name` changed, if it is still there and ours.
pub(super) async fn read_previous(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<Option<Secret>, ReconcileError> {
    let Some(name) = request
        .status
        .as_ref()
        .and_then(|s| s.secret_name.as_deref())
    else {
        return Ok(None);
    };
    if name == request.spec.secret.name {
        return Ok(None);
    }
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &request.namespace().unwrap_or_default());
    let secret = api
        .get_opt(name)
        .await
        .map_err(ReconcileError::kube("read the previous Secret"))?;
    Ok(secret.filter(|s| ownership(s, request) == SecretOwnership::Ours))
}

/// After `spec.secret.name` changed and the new Secret is written: deletes the old one (ours
/// only, and only that very object), so that no stale Secret keeps a live key. A failure is
/// reported and retried at the next sync, never fatal.
pub(super) async fn delete_previous(ctx: &Context, request: &IngestionKeyRequest) {
    let old = match read_previous(ctx, request).await {
        Ok(Some(old)) => old,
        Ok(None) => return,
        Err(error) => {
            warn!(%error, "could not read the previous Secret");
            return;
        }
    };
    let name = old.name_any();
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &request.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: old.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let (type_, reason, note) = match api.delete(&name, &params).await {
        Ok(_) => (
            EventType::Normal,
            reason::event::SECRET_DELETED,
            format!(
                "deleted Secret {name}: the credential now lives in Secret {}",
                request.spec.secret.name
            ),
        ),
        Err(kube::Error::Api(status)) if status.code == 404 => return,
        Err(error) => {
            warn!(secret = %name, %error, "could not delete the previous Secret");
            (
                EventType::Warning,
                reason::SECRET_WRITE_REJECTED,
                format!("could not delete the previous Secret {name}: {error}"),
            )
        }
    };
    ctx.events.publish(request, type_, reason, note).await;
}

/// `Ok` when the existing Secret is ours or an orphan of ours (its owning request is gone);
/// `SecretConflict` otherwise.
async fn check_ours(
    ctx: &Context,
    request: &IngestionKeyRequest,
    existing: &Secret,
) -> Result<(), ReconcileError> {
    let conflict = |detail: String| ReconcileError::SecretConflict {
        secret: request.spec.secret.name.clone(),
        detail,
    };
    match ownership(existing, request) {
        SecretOwnership::Ours | SecretOwnership::OrphanOfOurs => Ok(()),
        SecretOwnership::Foreign => Err(conflict(format!(
            "it lacks the label {MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
        ))),
        SecretOwnership::OtherRequest { name, uid } => {
            let requests: Api<IngestionKeyRequest> =
                Api::namespaced(ctx.client.clone(), &request.namespace().unwrap_or_default());
            let owner = requests
                .get_opt(&name)
                .await
                .map_err(ReconcileError::kube("read the Secret's owner"))?;
            if owner.is_some_and(|o| o.metadata.uid.as_deref() == Some(uid.as_str())) {
                return Err(conflict(format!(
                    "it belongs to IngestionKeyRequest {name:?}"
                )));
            }
            Ok(()) // the owner is gone: an orphan of ours, adopted by the write
        }
    }
}
