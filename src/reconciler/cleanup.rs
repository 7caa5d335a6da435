//! The cleanup phase, run under the finalizer when a request is deleted. The Secret needs no
//! work here: its owner reference lets garbage collection remove it.

use kube::{
    ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use tracing::info;

use super::{Context, ReconcileError, lock};
use crate::{
    crd::{DeletionPolicy, IngestionKeyRequest, default_key_name},
    ibm::KeyDeletion,
};

pub(super) async fn cleanup(
    request: &IngestionKeyRequest,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let namespace = request.namespace().unwrap_or_default();
    let name = request.name_any();
    let reference = ObjectRef::from_obj(request);
    let status = request.status.clone().unwrap_or_default();

    if request.spec.deletion_policy == DeletionPolicy::Retain {
        if let Some(key) = &status.resource_key {
            let note = format!(
                "kept resource key {} ({}) in IBM Cloud (deletionPolicy Retain)",
                key.name, key.guid
            );
            ctx.publish(request, EventType::Normal, "ResourceKeyRetained", note)
                .await;
        }
        lock(&ctx.last_api_keys).remove(&reference);
        info!(%namespace, %name, "released (deletionPolicy Retain)");
        return Ok(Action::await_change());
    }
    if status.resource_key.is_none() && status.pending_key_creation.is_none() {
        // Never created a key, never started to: nothing to ask IBM Cloud.
        lock(&ctx.last_api_keys).remove(&reference);
        info!(%namespace, %name, "released (no resource key was ever created)");
        return Ok(Action::await_change());
    }
    let key_label = status
        .resource_key
        .as_ref()
        .map(|k| k.name.clone())
        .or_else(|| status.pending_key_creation.as_ref().map(|p| p.name.clone()))
        .unwrap_or_default();
    let blocked = |detail: String| ReconcileError::DeletionBlocked {
        key: key_label.clone(),
        detail,
    };

    let api_key = match super::apply::read_api_key(ctx, request).await.ok() {
        Some(key) => key,
        None => match lock(&ctx.last_api_keys).get(&reference).cloned() {
            Some(key) => key,
            None => {
                return Err(blocked(format!(
                    "the API key Secret {:?} is gone and the operator has no copy of the key",
                    request.spec.api_key_secret_ref.name
                )));
            }
        },
    };

    let mut deleted = Vec::new();
    if let Some(key) = &status.resource_key {
        match ctx.ibm.delete_key(&api_key, &key.guid).await {
            Ok(KeyDeletion::Deleted) => deleted.push(key.guid.clone()),
            Ok(KeyDeletion::AlreadyGone) => {}
            Err(e) => return Err(blocked(e.to_string())),
        }
    }
    // A creation that may have landed without being recorded (crash, timeout): find it by its
    // name. Only default names are looked up: they carry this request's UID, so a key of that
    // name cannot be anybody else's.
    let instance_guid = status
        .pending_key_creation
        .as_ref()
        .map(|p| p.instance_guid.clone())
        .or_else(|| status.instance.as_ref().map(|i| i.guid.clone()));
    if let (Some(default_name), Some(instance_guid)) = (default_key_name(request), instance_guid)
        && request
            .spec
            .resource_key
            .name
            .as_deref()
            .is_none_or(str::is_empty)
    {
        let keys = ctx
            .ibm
            .list_instance_keys(&api_key, &instance_guid)
            .await
            .map_err(|e| blocked(e.to_string()))?;
        let recorded = status.resource_key.as_ref().map(|k| k.guid.as_str());
        for key in keys.iter().filter(|k| {
            k.name == default_name && k.is_active() && Some(k.guid.as_str()) != recorded
        }) {
            match ctx.ibm.delete_key(&api_key, &key.guid).await {
                Ok(KeyDeletion::Deleted) => deleted.push(key.guid.clone()),
                Ok(KeyDeletion::AlreadyGone) => {}
                Err(e) => return Err(blocked(e.to_string())),
            }
        }
    }
    for guid in &deleted {
        ctx.publish(
            request,
            EventType::Normal,
            "ResourceKeyDeleted",
            format!("deleted resource key {key_label} ({guid}) in IBM Cloud"),
        )
        .await;
    }
    lock(&ctx.last_api_keys).remove(&reference);
    info!(%namespace, %name, deleted = deleted.len(), "released (resource key deleted)");
    Ok(Action::await_change())
}
