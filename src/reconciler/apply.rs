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
    Context, ReconcileError, api_key, event_reason, instance,
    keys::{self, Access, KeyLookup},
    lock, reason,
    secret::{self, SecretOutcome},
    status,
};
use crate::{
    crd::{IngestionKeyRequest, READY_CONDITION, validate},
    ibm::{CredentialError, ResourceInstance, ResourceKey},
    redact::SecretString,
    render::{SecretOwnership, needs_update, ownership, render_secret, stored_credential},
};

pub(super) async fn apply(
    request: &IngestionKeyRequest,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let valid = validate(request)?;
    let (api_key, api_key_secret) = api_key::read(ctx, request).await?;
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
    // From here on a key may exist: the API key must outlive the request (namespace deletion).
    api_key::hold(ctx, request, &api_key_secret).await?;
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
    record_synced(ctx, request, &instance, &key, &fingerprint).await?;
    info!(reason = reason::KEY_SYNCED, secret = %request.spec.secret.name, key_fingerprint = %fingerprint, ?outcome, "reconciled");
    Ok(Action::requeue(super::jitter(
        valid.refresh_interval,
        &ObjectRef::from_obj(request),
    )))
}

/// Ready=True, with what the Secret now holds; remembered for the next reconcile's fast path.
async fn record_synced(
    ctx: &Context,
    request: &IngestionKeyRequest,
    instance: &ResourceInstance,
    key: &ResourceKey,
    fingerprint: &str,
) -> Result<(), ReconcileError> {
    let message = format!(
        "Secret {} holds {} of resource key {} on instance {}",
        request.spec.secret.name,
        request.spec.resource_key.credential_field,
        key.name,
        instance.name
    );
    status::synced(ctx, request, instance, fingerprint, message).await?;
    ctx.remember_sync(request, fingerprint);
    Ok(())
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

/// The fingerprint the request was last synced to, and how long ago: from its status when that
/// says Ready for this generation, else from the operator's memory of its own last sync (the
/// status seen by a reconcile can lag behind the operator's last write by a watch event).
fn last_sync(ctx: &Context, request: &IngestionKeyRequest) -> Option<(String, Duration)> {
    let from_status = request.status.as_ref().and_then(|status| {
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == READY_CONDITION && c.status == "True");
        let current = ready
            && status.observed_generation == request.metadata.generation
            && status.pending_key_creation.is_none();
        let fingerprint = status.key_fingerprint.clone().filter(|_| current)?;
        let at = status.last_sync_time.as_ref()?.0;
        let age = Duration::try_from(Timestamp::now().duration_since(at)).unwrap_or(Duration::MAX);
        Some((fingerprint, age))
    });
    from_status.or_else(|| ctx.remembered_sync(request))
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
    let Some((fingerprint, age)) = last_sync(ctx, request) else {
        return Ok(None);
    };
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
    if stored.fingerprint() != fingerprint {
        return Ok(None);
    }
    let in_sync =
        render_secret(request, &stored).is_some_and(|desired| !needs_update(&secret, &desired));
    Ok(in_sync.then(|| refresh_interval.saturating_sub(age)))
}
