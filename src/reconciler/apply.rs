//! The apply phase: from a request to a resource key in IBM Cloud and a Secret in the cluster.
//! Validate -> read the API key -> resolve the instance -> find, create or replace the key ->
//! write the Secret -> roll out the restart targets -> retire the keys replaced -> status.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use tracing::info;

use super::{
    Context, ReconcileError, api_key, event_reason, instance,
    keys::{self, Access, KeyLookup, KeyTarget},
    lock,
    plan::{self, Recorded, ReplaceCause, RotationState},
    reason, retire,
    rollout::{self, RolloutState},
    secret::{self, SecretOutcome},
    status,
};
use crate::{
    crd::{
        IngestionKeyRequest, READY_CONDITION, ROTATE_ANNOTATION, ResourceKeyStatus, ValidSpec,
        validate_with,
    },
    ibm::{CredentialError, ResourceInstance, ResourceKey, role_for_key},
    redact::SecretString,
    render::{
        SecretOwnership, held_credential, needs_update, ownership, render_secret, stored_credential,
    },
};

pub(super) async fn apply(
    request: &IngestionKeyRequest,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let valid = validate_with(request, ctx.settings.min_rotation_interval)?;
    let (api_key, api_key_secret) = api_key::read(ctx, request).await?;
    let previous_api_key =
        lock(&ctx.last_api_keys).insert(ObjectRef::from_obj(request), api_key.clone());
    if previous_api_key.as_ref() == Some(&api_key)
        && let Some(wait) = in_sync_for(ctx, request, &valid).await?
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
    let role = role_for_key(
        &request.spec.resource_key.role,
        instance.service_name().unwrap_or_default(),
    );
    let mut target = KeyTarget {
        instance: &instance,
        base_name: &valid.key_name,
        role: &role,
        replace: replace_cause(request, &valid, &role),
    };
    let (mut key, mut request, unrecorded) = match ensure(ctx, request, &access, &target).await? {
        Ok(found) => found,
        Err(wait) => return Ok(Action::requeue(wait)),
    };
    let credential = match credential_of(&request, &key) {
        Ok(credential) => credential,
        Err(ReconcileError::CredentialsRedacted { .. })
            if key.onetime_credentials == Some(true) =>
        {
            // IBM Cloud showed this credential once, at creation: the Secret is its only copy.
            if let Some(held) = held_one_time(ctx, &request, &key, existing_secret.as_ref()).await?
            {
                held
            } else {
                target.replace = Some(ReplaceCause::ValueLost);
                (key, request, _) = match ensure(ctx, &request, &access, &target).await? {
                    Ok(found) => found,
                    Err(wait) => return Ok(Action::requeue(wait)),
                };
                credential_of(&request, &key)?
            }
        }
        Err(error) => return Err(error),
    };
    let fingerprint = credential.fingerprint();
    let outcome = secret::sync(ctx, &request, existing_secret, &credential).await?;
    report_secret(ctx, &request, outcome, &key, &fingerprint).await;
    secret::delete_previous(ctx, &request).await;
    // Only now that the Secret holds the new key may the restart targets and retirements go on.
    let timeout = valid.rotation.rollout_timeout;
    let (request, rollout) = rollout::drive(ctx, request, &fingerprint, timeout).await?;
    let in_use = !matches!(rollout, RolloutState::Waiting(_));
    let grace = valid.rotation.grace_period;
    let (request, retiring) = retire::retire(ctx, request, &api_key, in_use, grace).await?;
    let next_rotation = next_rotation(&request, &key, valid.rotation.interval);
    record_synced(
        ctx,
        &request,
        &instance,
        &key,
        &fingerprint,
        next_rotation.clone(),
        unrecorded,
    )
    .await?;
    info!(reason = reason::KEY_SYNCED, secret = %request.spec.secret.name, key_fingerprint = %fingerprint, ?outcome, "reconciled");
    let refresh = super::jitter(valid.refresh_interval, &ObjectRef::from_obj(&request));
    let rollout_poll = match rollout {
        RolloutState::Waiting(poll) => Some(poll),
        _ => None,
    };
    let until_rotation = next_rotation.flatten().map(|next| until(next.0));
    let wait = [Some(refresh), rollout_poll, retiring, until_rotation]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(refresh);
    Ok(Action::requeue(wait.max(Duration::from_millis(100))))
}

/// How long from now until `at` (zero when past).
fn until(at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
}

/// The key, the request as last written, and the record of a first key still to write.
type Ensured = (
    Box<ResourceKey>,
    IngestionKeyRequest,
    Option<(ResourceKeyStatus, Option<String>)>,
);

/// [`keys::ensure_key`], with the wait for a creation that may still land written to status.
async fn ensure(
    ctx: &Context,
    request: &IngestionKeyRequest,
    access: &Access<'_>,
    target: &KeyTarget<'_>,
) -> Result<Result<Ensured, Duration>, ReconcileError> {
    match keys::ensure_key(ctx, request, access, target).await? {
        KeyLookup::Found {
            key,
            request,
            unrecorded,
        } => Ok(Ok((key, *request, unrecorded))),
        KeyLookup::CreationInFlight(wait) => {
            info!(
                wait_seconds = wait.as_secs(),
                "a key creation may still be completing in IBM Cloud; waiting before creating again"
            );
            status::waiting_for_creation(ctx, request, wait).await?;
            Ok(Err(wait))
        }
    }
}

/// Whether the recorded key must be replaced now, and why (see [`plan::replace_cause`]).
fn replace_cause(
    request: &IngestionKeyRequest,
    valid: &ValidSpec,
    role: &str,
) -> Option<ReplaceCause> {
    let status = request.status.clone().unwrap_or_default();
    let rotation = status.rotation.clone().unwrap_or_default();
    let recorded = Recorded {
        key: status.resource_key.as_ref(),
        pending: status.pending_key_creation.as_ref(),
    };
    let state = RotationState {
        requested: request
            .annotations()
            .get(ROTATE_ANNOTATION)
            .map(String::as_str),
        last_request: rotation.last_request.as_deref(),
        next_rotation: valid
            .rotation
            .interval
            .and(rotation.next_rotation_time.as_ref())
            .map(|t| t.0),
        recorded_role: status.resource_key.as_ref().map_or("", |k| k.role.as_str()),
        wanted_role: role,
        replacing: status
            .retiring_keys
            .iter()
            .any(|k| k.delete_after.is_none()),
    };
    plan::replace_cause(&recorded, &state, Timestamp::now())
}

/// `status.rotation.nextRotationTime` to write: the last rotation (or the key's creation) plus
/// the interval; `Some(None)` clears it when the schedule was removed; `None` leaves it.
fn next_rotation(
    request: &IngestionKeyRequest,
    key: &ResourceKey,
    interval: Option<Duration>,
) -> Option<Option<Time>> {
    let recorded = request
        .status
        .as_ref()
        .and_then(|s| s.rotation.as_ref())
        .and_then(|r| r.next_rotation_time.clone());
    let Some(interval) = interval else {
        return recorded.map(|_| None);
    };
    let last = request
        .status
        .as_ref()
        .and_then(|s| s.rotation.as_ref())
        .and_then(|r| r.last_rotation_time.as_ref())
        .map(|t| t.0);
    let created = key
        .created_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok());
    let base = last.or(created).unwrap_or_else(Timestamp::now);
    let next = base.saturating_add(interval).unwrap_or(base);
    Some(Some(Time(next)))
}

/// The one-time credential of `key` as the agents' Secret (or the Secret it had before a rename)
/// still holds it: the value whose fingerprint status recorded for this very key.
async fn held_one_time(
    ctx: &Context,
    request: &IngestionKeyRequest,
    key: &ResourceKey,
    secret: Option<&Secret>,
) -> Result<Option<SecretString>, ReconcileError> {
    let Some(status) = request.status.as_ref() else {
        return Ok(None);
    };
    let recorded = status
        .resource_key
        .as_ref()
        .is_some_and(|k| k.guid == key.guid);
    let Some(fingerprint) = status.key_fingerprint.as_deref().filter(|_| recorded) else {
        return Ok(None);
    };
    if let Some(held) = secret.and_then(|s| held_credential(s, fingerprint)) {
        return Ok(Some(held));
    }
    let previous = secret::previous(ctx, request).await?;
    Ok(previous.and_then(|s| held_credential(&s, fingerprint)))
}

/// Ready=True, with what the Secret now holds; remembered for the next reconcile's fast path.
async fn record_synced(
    ctx: &Context,
    request: &IngestionKeyRequest,
    instance: &ResourceInstance,
    key: &ResourceKey,
    fingerprint: &str,
    next_rotation: Option<Option<Time>>,
    unrecorded: Option<(ResourceKeyStatus, Option<String>)>,
) -> Result<(), ReconcileError> {
    let message = format!(
        "Secret {} holds {} of resource key {} on instance {}",
        request.spec.secret.name,
        request.spec.resource_key.credential_field,
        key.name,
        instance.name
    );
    let message = with_notes(request, message);
    let sync = status::Synced {
        instance,
        key,
        fingerprint,
        message,
        next_rotation,
        unrecorded,
    };
    status::synced(ctx, request, sync).await?;
    ctx.remember_sync(request, fingerprint);
    Ok(())
}

/// The Ready message plus what an admin should know: retiring keys, roll-out trouble.
fn with_notes(request: &IngestionKeyRequest, mut message: String) -> String {
    let Some(status) = request.status.as_ref() else {
        return message;
    };
    if let Some(rollout) = &status.rollout {
        for missing in &rollout.missing_targets {
            message.push_str(&format!("; restart target {missing}"));
        }
        if rollout.stalled && rollout.completed_at.is_none() {
            message.push_str("; the restart targets have not rolled out (RolloutStalled)");
        }
    }
    for key in &status.retiring_keys {
        let when = key.delete_after.as_ref().map_or_else(
            || "once the new key is in use".to_owned(),
            |t| format!("after {}", t.0),
        );
        message.push_str(&format!("; replaced key {} is deleted {when}", key.name));
        if let Some(error) = &key.last_delete_error {
            message.push_str(&format!(" (last attempt failed: {error})"));
        }
    }
    message
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
/// says Ready for this generation, else (or when fresher) from the operator's memory of its own
/// last sync (the status seen by a reconcile can lag behind the operator's last write by a watch
/// event).
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
    // The fresher of the two: an in-sync refresh does not rewrite the status, so the operator's
    // memory of its last sync is often the newer one.
    let remembered = ctx.remembered_sync(request);
    match (from_status, remembered) {
        (Some(status), Some(memory)) if memory.0 == status.0 && memory.1 < status.1 => Some(memory),
        (Some(status), _) => Some(status),
        (None, memory) => memory,
    }
}

/// How long the request stays in sync without asking IBM Cloud: it is Ready for its current
/// generation, its refresh is not due, and its Secret still holds the synced credential. Reconciles
/// triggered by the operator's own status writes or by unrelated updates then cost one Secret read
/// and no IBM Cloud call. `None`: do the full sync.
async fn in_sync_for(
    ctx: &Context,
    request: &IngestionKeyRequest,
    valid: &ValidSpec,
) -> Result<Option<Duration>, ReconcileError> {
    let refresh_interval = valid.refresh_interval;
    let Some((fingerprint, age)) = last_sync(ctx, request) else {
        return Ok(None);
    };
    let Some(until_rotation) = lifecycle_settled(request, valid, &fingerprint) else {
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
    let wait = refresh_interval.saturating_sub(age);
    Ok(in_sync.then(|| until_rotation.map_or(wait, |r| r.min(wait))))
}

/// Whether nothing of the key's lifecycle is under way or due: no rotation asked for or due, no
/// key retiring, the restart targets rolled out to `fingerprint`. `Some(until the next scheduled
/// rotation)` when settled, `None` when a full sync must run.
fn lifecycle_settled(
    request: &IngestionKeyRequest,
    valid: &ValidSpec,
    fingerprint: &str,
) -> Option<Option<Duration>> {
    let status = request.status.clone().unwrap_or_default();
    let rotation = status.rotation.clone().unwrap_or_default();
    if !status.retiring_keys.is_empty() {
        return None;
    }
    let requested = request.annotations().get(ROTATE_ANNOTATION);
    if requested.is_some() && requested != rotation.last_request.as_ref() {
        return None;
    }
    if !request.spec.restart_targets.is_empty() {
        let rollout = status.rollout.as_ref()?;
        if rollout.fingerprint != fingerprint || rollout.completed_at.is_none() {
            return None;
        }
    }
    if valid.rotation.interval.is_none() {
        return Some(None);
    }
    let next = rotation.next_rotation_time?.0;
    let wait = until(next);
    (!wait.is_zero()).then_some(Some(wait))
}
