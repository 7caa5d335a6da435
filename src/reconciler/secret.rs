//! Writing the agents' Secret: created when missing, updated in place when ours, never touched
//! when it belongs to someone else. What the Secret should contain is decided by `crate::render`.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};

use super::{Context, ReconcileError};
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

/// The request's Secret as it is now, after checking that it can be ours: run before any key is
/// created, so that a conflict never mints a key that could not be used.
pub(super) async fn target(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<Option<Secret>, ReconcileError> {
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &request.namespace().unwrap_or_default());
    let existing = api
        .get_opt(&request.spec.secret.name)
        .await
        .map_err(ReconcileError::kube("read the Secret"))?;
    if let Some(secret) = &existing {
        check_ours(ctx, request, secret).await?;
    }
    Ok(existing)
}

/// Writes the credential into the request's Secret, `existing` as returned by [`target`].
pub(super) async fn sync(
    ctx: &Context,
    request: &IngestionKeyRequest,
    existing: Option<Secret>,
    credential: &SecretString,
) -> Result<SecretOutcome, ReconcileError> {
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
        api.create(&params, &desired)
            .await
            .map_err(ReconcileError::secret_write(
                "create the Secret",
                secret_name,
            ))?;
        return Ok(SecretOutcome::Created);
    };
    if !needs_update(&existing, &desired) {
        return Ok(SecretOutcome::Unchanged);
    }
    // The resourceVersion makes the apply conditional: had the Secret changed hands since it
    // was read, the API server refuses (409) and the next reconcile looks again.
    desired.metadata.resource_version = existing.metadata.resource_version.clone();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(secret_name, &params, &Patch::Apply(&desired))
        .await
        .map_err(ReconcileError::secret_write(
            "apply the Secret",
            secret_name,
        ))?;
    Ok(SecretOutcome::Updated)
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
