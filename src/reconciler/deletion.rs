//! The cleanup phase, run under the finalizer when a request is deleted. The Secret needs no
//! work here: its owner reference lets garbage collection remove it.

use kube::runtime::controller::Action;
use tracing::info;

use super::{
    Context, ReconcileError,
    keys::{Removal, delete_and_report},
    plan::{self, DeletionPlan, Recorded},
};
use crate::crd::reason;
use crate::{
    crd::{
        DeletionPolicy, IngestionKeyRequest, ResourceKeyStatus, default_key_name, may_delete,
        parse_key_name, retained_name,
    },
    ibm::ErrorKind,
    redact::SecretString,
};

pub(super) async fn finalize(
    request: &IngestionKeyRequest,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let status = request.status.clone().unwrap_or_default();
    let pending = request.pending_key_creation();
    let recorded = Recorded {
        key: status.resource_key.as_ref(),
        pending: pending.as_ref(),
    };
    if status.keys_deleted {
        // A repeat of a cleanup that already deleted every key (its watch event raced the
        // finalizer's removal): the API key may be gone by now, and nothing is left to do.
        return Ok(Action::await_change());
    }
    let retain = request.spec.deletion_policy == DeletionPolicy::Retain;
    let default_name = default_key_name(request, &ctx.settings.cluster_id);
    let (recorded_key, search) =
        match plan::plan_deletion(&recorded, retain, default_name.as_deref()) {
            DeletionPlan::Release { retained } => {
                // Keys it replaced go whatever the policy (it governs only the key in use).
                retire_all(ctx, request).await;
                return release(ctx, request, retained.as_ref()).await;
            }
            DeletionPlan::Delete { recorded, search } => (recorded, search),
        };
    let key_label = recorded_key
        .as_ref()
        .map(|k| k.name.clone())
        .or_else(|| search.as_ref().map(|(_, name)| name.clone()))
        .unwrap_or_default();
    let blocked = |detail: String| ReconcileError::DeletionBlocked {
        key: key_label.clone(),
        detail,
    };
    let api_key = api_key_for_cleanup(ctx, request).await.ok_or_else(|| {
        blocked(format!(
            "the API key Secret {:?} is gone and the operator has no copy of the key",
            request.spec.api_key_secret_ref.name
        ))
    })?;
    let deleted = delete_all(ctx, request, &api_key, recorded_key.as_ref(), search)
        .await
        .map_err(blocked)?
        + delete_retiring(ctx, request, &api_key)
            .await
            .map_err(blocked)?;
    super::status::keys_deleted(ctx, request).await?;
    super::api_key::release_if_unused(ctx, request, &request.spec.api_key_secret_ref.name).await?;
    ctx.forget(request);
    info!(deleted, "released (resource key deleted)");
    Ok(Action::await_change())
}

/// With `Retain`: deletes the keys the request replaced when the API key is at hand (it is not
/// held for such a request); otherwise says what is left behind.
async fn retire_all(ctx: &Context, request: &IngestionKeyRequest) {
    let retiring = request.status.as_ref().map_or(0, |s| s.retiring_keys.len());
    if retiring == 0 {
        return;
    }
    let outcome = match api_key_for_cleanup(ctx, request).await {
        Some(api_key) => delete_retiring(ctx, request, &api_key).await,
        None => Err("the API key Secret is gone".to_owned()),
    };
    if let Err(why) = outcome {
        let note =
            format!("could not delete the {retiring} replaced key(s) of this request: {why}");
        let failed = reason::event::RESOURCE_KEY_DELETE_FAILED;
        ctx.events.warning(request, failed, note).await;
    }
}

/// Deletes the replaced keys the operator created (others are left to their owners).
async fn delete_retiring(
    ctx: &Context,
    request: &IngestionKeyRequest,
    api_key: &SecretString,
) -> Result<usize, String> {
    let why = "the request that replaced it was deleted";
    let reason = reason::event::RESOURCE_KEY_DELETED;
    let mut deleted = 0;
    let status = request.status.clone().unwrap_or_default();
    for key in status
        .retiring_keys
        .iter()
        .filter(|k| k.created_by_operator)
    {
        let outcome = delete_and_report(ctx, request, api_key, &key.guid, &key.name, reason, why)
            .await
            .map_err(|e| e.to_string())?;
        deleted += usize::from(outcome == Removal::Deleted);
    }
    Ok(deleted)
}

/// Lets a request go that has no key to delete (none was made, or `deletionPolicy: Retain`).
async fn release(
    ctx: &Context,
    request: &IngestionKeyRequest,
    retained: Option<&ResourceKeyStatus>,
) -> Result<Action, ReconcileError> {
    if let Some(key) = retained {
        mark_retained(ctx, request, key).await?;
        let why = if request.spec.deletion_policy == DeletionPolicy::Retain {
            "deletionPolicy Retain"
        } else {
            "the operator did not create it"
        };
        let note = format!(
            "kept resource key {} ({}) in IBM Cloud ({why})",
            key.name, key.guid
        );
        let reason = reason::event::RESOURCE_KEY_RETAINED;
        ctx.events.normal(request, reason, note).await;
    }
    super::api_key::release_if_unused(ctx, request, &request.spec.api_key_secret_ref.name).await?;
    ctx.forget(request);
    info!(
        retained = retained.is_some(),
        "released; no resource key to delete"
    );
    Ok(Action::await_change())
}

/// Renames a key of the operator's name family that `deletionPolicy: Retain` gives to its user
/// (`…:retained`): IBM Cloud then tells anyone auditing the instance that it is kept on purpose,
/// not an orphan. A rename that fails keeps the finalizer (retried); with no API key left at all,
/// the key keeps its name and a Warning says so.
async fn mark_retained(
    ctx: &Context,
    request: &IngestionKeyRequest,
    key: &ResourceKeyStatus,
) -> Result<(), ReconcileError> {
    let uid = request.metadata.uid.as_deref().unwrap_or_default();
    let ours = parse_key_name(&key.name).is_some_and(|parsed| !parsed.retained)
        && may_delete(&key.name, uid, &ctx.settings.cluster_id, None);
    if !ours {
        return Ok(());
    }
    let Some(api_key) = api_key_for_cleanup(ctx, request).await else {
        let note = format!(
            "could not mark resource key {} ({}) as retained: the API key Secret is gone; `kubectl ingestionkey audit` will list it as an orphan",
            key.name, key.guid
        );
        let failed = reason::event::RESOURCE_KEY_DELETE_FAILED;
        ctx.events.warning(request, failed, note).await;
        return Ok(());
    };
    let name = retained_name(&key.name);
    match ctx.ibm.rename_key(&api_key, &key.guid, &name).await {
        Ok(_) => {
            info!(key = %key.guid, key_name = %name, "marked resource key as retained");
            Ok(())
        }
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Gone) => Ok(()),
        Err(e) => Err(ReconcileError::DeletionBlocked {
            key: key.name.clone(),
            detail: format!("could not rename it to mark it retained: {e}"),
        }),
    }
}

/// The API key from its Secret, else the copy kept in memory from the last apply (namespace
/// deletion may remove the Secret before the request).
async fn api_key_for_cleanup(ctx: &Context, request: &IngestionKeyRequest) -> Option<SecretString> {
    match super::api_key::read(ctx, request).await {
        Ok((key, _)) => Some(key),
        Err(_) => ctx.last_api_key(request),
    }
}

/// Deletes the recorded key, then every active key of the searched default name (a creation that
/// landed without being recorded). Returns how many were deleted, or why it stopped.
async fn delete_all(
    ctx: &Context,
    request: &IngestionKeyRequest,
    api_key: &SecretString,
    recorded: Option<&ResourceKeyStatus>,
    search: Option<(String, String)>,
) -> Result<usize, String> {
    let why = "the request was deleted (deletionPolicy Delete)";
    let reason = reason::event::RESOURCE_KEY_DELETED;
    let mut deleted = 0;
    if let Some(key) = recorded {
        let outcome = delete_and_report(ctx, request, api_key, &key.guid, &key.name, reason, why)
            .await
            .map_err(|e| e.to_string())?;
        deleted += usize::from(outcome == Removal::Deleted);
    }
    let Some((instance_guid, name)) = search else {
        return Ok(deleted);
    };
    let found = ctx
        .ibm
        .find_keys_by_name(api_key, &instance_guid, &name)
        .await
        .map_err(|e| e.to_string())?;
    let recorded_guid = recorded.map(|k| k.guid.as_str());
    for key in found
        .iter()
        .filter(|k| k.is_active() && Some(k.guid.as_str()) != recorded_guid)
    {
        let outcome = delete_and_report(ctx, request, api_key, &key.guid, &key.name, reason, why)
            .await
            .map_err(|e| e.to_string())?;
        deleted += usize::from(outcome == Removal::Deleted);
    }
    Ok(deleted)
}
