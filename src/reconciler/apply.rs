//! The apply phase: from a request to a resource key in IBM Cloud and a Secret in the cluster.
//! Validate -> read the API key -> resolve the instance -> find or create the key -> write the
//! Secret -> retire the key used before -> status.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use tracing::info;

use super::{
    Context, ReconcileError, event_reason, instance,
    keys::{self, Access, KeyLookup},
    lock, reason,
    secret::{self, SecretOutcome},
    status,
};
use crate::{
    crd::{IngestionKeyRequest, READY_CONDITION, validate},
    ibm::{CredentialError, ResourceKey},
    redact::SecretString,
    render::{SecretOwnership, needs_update, ownership, render_secret, stored_credential},
};

pub(super) async fn apply(
    request: &IngestionKeyRequest,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let valid = validate(request)?;
    let api_key = read_api_key(ctx, request).await?;
    let previous_api_key =
        lock(&ctx.last_api_keys).insert(ObjectRef::from_obj(request), api_key.clone());
    if previous_api_key.as_ref() == Some(&api_key)
        && let Some(wait) = in_sync_for(ctx, request, valid.refresh_interval).await?
    {
        info!(
            reason = reason::KEY_SYNCED,
            next_refresh_seconds = wait.as_secs(),
            "in sync; nothing to do"
        );
        return Ok(Action::requeue(wait));
    }
    let access = Access {
        api_key: &api_key,
        secret_name: &request.spec.api_key_secret_ref.name,
    };
    let instance = instance::resolve(ctx, &api_key, &valid.instance, access.secret_name).await?;
    let existing_secret = secret::target(ctx, request).await?;
    let (key, replaced) = match keys::ensure_key(ctx, request, &access, &instance, &valid.key_name)
        .await?
    {
        KeyLookup::Found { key, replaced } => (key, replaced),
        KeyLookup::CreationInFlight(wait) => {
            info!(
                wait_seconds = wait.as_secs(),
                "a key creation may still be completing in IBM Cloud; waiting before creating again"
            );
            status::waiting_for_creation(ctx, request, wait).await?;
            return Ok(Action::requeue(wait));
        }
    };
    let credential = credential_of(request, &key)?;
    let fingerprint = credential.fingerprint();
    let outcome = secret::sync(ctx, request, existing_secret, &credential).await?;
    report_secret(ctx, request, outcome, &key, &fingerprint).await;
    // Only now that the Secret holds the new key may the one it replaces go.
    keys::retire_replaced(ctx, request, &api_key, replaced.as_ref(), &key).await;
    let message = format!(
        "Secret {} holds {} of resource key {} on instance {}",
        request.spec.secret.name,
        request.spec.resource_key.credential_field,
        key.name,
        instance.name
    );
    status::synced(ctx, request, &instance, &fingerprint, message).await?;
    info!(reason = reason::KEY_SYNCED, secret = %request.spec.secret.name, key_fingerprint = %fingerprint, ?outcome, "reconciled");
    Ok(Action::requeue(super::jitter(
        valid.refresh_interval,
        &ObjectRef::from_obj(request),
    )))
}

/// The configured credential field of the key, or the error that says why it cannot be used.
fn credential_of(
    request: &IngestionKeyRequest,
    key: &ResourceKey,
) -> Result<SecretString, ReconcileError> {
    let field = &request.spec.resource_key.credential_field;
    key.credentials.field(field).map_err(|error| match error {
        CredentialError::Redacted => ReconcileError::CredentialsRedacted {
            key_name: key.name.clone(),
            role: request.spec.resource_key.role.clone(),
        },
        CredentialError::Missing(_) | CredentialError::NotAString(_) => {
            ReconcileError::CredentialFieldMissing {
                key_name: key.name.clone(),
                field: field.clone(),
                present: key
                    .credentials
                    .field_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            }
        }
    })
}

/// An event when the Secret was written (nothing when it already held the credential).
async fn report_secret(
    ctx: &Context,
    request: &IngestionKeyRequest,
    outcome: SecretOutcome,
    key: &ResourceKey,
    fingerprint: &str,
) {
    let secret = &request.spec.secret.name;
    let (reason, note) = match outcome {
        SecretOutcome::Created => (
            event_reason::SECRET_CREATED,
            format!(
                "created Secret {secret} from resource key {} (credential {fingerprint})",
                key.name
            ),
        ),
        SecretOutcome::Updated => (
            event_reason::SECRET_UPDATED,
            format!(
                "updated Secret {secret} from resource key {} (credential {fingerprint})",
                key.name
            ),
        ),
        SecretOutcome::Unchanged => return,
    };
    ctx.publish(request, EventType::Normal, reason, note).await;
}

/// How long the request stays in sync without asking IBM Cloud: it is Ready for its current
/// generation, its refresh is not due, and its Secret still holds the synced credential. Reconciles
/// triggered by the operator's own status writes or by unrelated updates then cost one Secret read
/// and no IBM Cloud call. `None`: do the full sync.
async fn in_sync_for(
    ctx: &Context,
    request: &IngestionKeyRequest,
    refresh_interval: Duration,
) -> Result<Option<Duration>, ReconcileError> {
    let Some(status) = &request.status else {
        return Ok(None);
    };
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == READY_CONDITION && c.status == "True");
    let (Some(fingerprint), Some(last_sync)) = (&status.key_fingerprint, &status.last_sync_time)
    else {
        return Ok(None);
    };
    if !ready
        || status.observed_generation != request.metadata.generation
        || status.pending_key_creation.is_some()
    {
        return Ok(None);
    }
    let age =
        Duration::try_from(Timestamp::now().duration_since(last_sync.0)).unwrap_or(Duration::MAX);
    // Refreshes are spread by +-10%: one that fires early must still do the full sync.
    let due = refresh_interval.mul_f64(0.85);
    if age >= due {
        return Ok(None);
    }
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &request.namespace().unwrap_or_default());
    let Some(secret) = api
        .get_opt(&request.spec.secret.name)
        .await
        .map_err(ReconcileError::kube("read the Secret"))?
    else {
        return Ok(None);
    };
    if ownership(&secret, request) != SecretOwnership::Ours {
        return Ok(None);
    }
    let Some(stored) = stored_credential(&secret, &request.spec.secret.key) else {
        return Ok(None);
    };
    if stored.fingerprint() != *fingerprint {
        return Ok(None);
    }
    let in_sync =
        render_secret(request, &stored).is_some_and(|desired| !needs_update(&secret, &desired));
    Ok(in_sync.then(|| refresh_interval.saturating_sub(age)))
}

/// Reads the API key from the referenced Secret, in the request's own namespace only.
pub(super) async fn read_api_key(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<SecretString, ReconcileError> {
    let reference = &request.spec.api_key_secret_ref;
    let namespace = request.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = api
        .get_opt(&reference.name)
        .await
        .map_err(ReconcileError::kube("read the API key Secret"))?;
    let Some(secret) = secret else {
        return Err(ReconcileError::ApiKeySecretNotFound {
            name: reference.name.clone(),
            key: reference.key.clone(),
        });
    };
    let data = secret.data.unwrap_or_default();
    let value = data
        .get(&reference.key)
        .and_then(|bytes| std::str::from_utf8(&bytes.0).ok())
        .map(str::trim) // `kubectl create secret --from-file` keeps the file's trailing newline
        .filter(|value| !value.is_empty());
    value
        .map(SecretString::from)
        .ok_or_else(|| ReconcileError::ApiKeyMissingInSecret {
            name: reference.name.clone(),
            key: reference.key.clone(),
            present: data.keys().cloned().collect(),
        })
}
