//! The apply phase: from a request to a resource key in IBM Cloud and a Secret in the cluster.
//! Validate -> read the API key -> resolve the instance -> find, create or replace the key ->
//! write the Secret -> roll out the restart targets -> retire the keys replaced -> status.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    ResourceExt,
    runtime::{controller::Action, reflector::ObjectRef},
};
use tracing::info;

use super::{
    Context, ReconcileError, api_key,
    context::SecretVersion,
    finalizer, instance,
    keys::{self, Access, KeyOutcome, KeySpec},
    plan::{
        self, Recorded, ReplaceCause,
        sync::{FastPath, Waits},
    },
    requeue::jitter,
    retire,
    rollout::{self, RolloutState},
    secret::{self, SecretOutcome},
    status,
};
use crate::{
    crd::{IngestionKeyRequest, ResourceKeyStatus, ValidSpec, reason, validate_with},
    ibm::{ResourceInstance, ResourceKey, role_for_key},
    redact::SecretString,
    render::held_credential,
};

pub(super) async fn apply(
    request: &IngestionKeyRequest,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let valid = validate_with(
        request,
        &ctx.settings.cluster_id,
        ctx.settings.min_rotation_interval,
    )?;
    let (api_key, api_key_secret) = api_key::read(ctx, request).await?;
    // A changed API key is checked against IBM Cloud at once. A process that has not seen this
    // request yet has nothing to compare with: it trusts the status and the Secret, and the
    // request's next full refresh (spread over one interval) checks the key.
    let previous_api_key = ctx.remember_api_key(request, api_key.clone());
    let first_look = previous_api_key.is_none();
    if (first_look || previous_api_key.as_ref() == Some(&api_key))
        && let Some(wait) = in_sync_for(ctx, request, &valid, first_look).await?
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
        secret: &api_key_secret,
        secret_name: &request.spec.api_key_secret_ref.name,
    };
    let instance = instance::resolve(ctx, &api_key, &valid.instance, access.secret_name).await?;
    let existing_secret = secret::read_ours(ctx, request).await?;
    // A request with its finalizer may have a key: the API key must outlive the request
    // (namespace deletion). A request without one is held when its first key is announced.
    if finalizer::is_set(request) {
        api_key::hold(ctx, request, &api_key_secret).await?;
    }
    let role = role_for_key(
        &request.spec.resource_key.role,
        instance.service_name().unwrap_or_default(),
    );
    let mut target = KeySpec {
        instance: &instance,
        base_name: &valid.key_name,
        role: &role,
        replace: replace_cause(request, &valid, &role),
    };
    let (mut key, mut request, unrecorded, mut created) =
        match ensure(ctx, request, &access, &target).await? {
            Ok(found) => found,
            Err(wait) => return Ok(Action::requeue(wait)),
        };
    if !finalizer::is_set(&request) {
        // A key found, not created (a custom name): the request still needs its finalizer.
        request = finalizer::add(ctx, &request).await?;
        api_key::hold(ctx, &request, &api_key_secret).await?;
    }
    let credential = match plan::credential_of(&request, &key) {
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
                (key, request, _, created) = match ensure(ctx, &request, &access, &target).await? {
                    Ok(found) => found,
                    Err(wait) => return Ok(Action::requeue(wait)),
                };
                plan::credential_of(&request, &key)?
            }
        }
        Err(error) => return Err(error),
    };
    let fingerprint = credential.fingerprint();
    let written = secret::write(ctx, &request, existing_secret, &credential).await;
    let outcome = match written {
        Ok((outcome, version)) => {
            remember_secret(ctx, &request, version, &fingerprint);
            outcome
        }
        Err(error) => {
            if let Some(created) = created {
                let created_event = reason::event::RESOURCE_KEY_CREATED;
                ctx.events.normal(&request, created_event, created).await;
            }
            return Err(error);
        }
    };
    report_secret(ctx, &request, outcome, created, &key, &fingerprint).await;
    secret::delete_previous(ctx, &request).await;
    // Only now that the Secret holds the new key may the restart targets and retirements go on.
    let timeout = valid.rotation.rollout_timeout;
    let (request, rollout) = rollout::drive(ctx, request, &fingerprint, timeout).await?;
    let in_use = !matches!(rollout, RolloutState::Waiting(_));
    let grace = valid.rotation.grace_period;
    let (request, retiring) = retire::retire(ctx, request, &api_key, in_use, grace).await?;
    let now = Timestamp::now();
    let next_rotation = plan::next_rotation(&request, &key, valid.rotation.interval, now);
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
    let waits = Waits {
        refresh: jitter(valid.refresh_interval, &ObjectRef::from_obj(&request)),
        rollout_poll: match rollout {
            RolloutState::Waiting(poll) => Some(poll),
            _ => None,
        },
        retiring,
        rotation: next_rotation.flatten().map(|next| plan::until(next.0, now)),
    };
    Ok(Action::requeue(plan::requeue_after(waits)))
}

/// The key, the request as last written, the record of a first key still to write, and what
/// was created (see [`KeyOutcome::InUse`]).
type Ensured = (
    Box<ResourceKey>,
    IngestionKeyRequest,
    Option<(ResourceKeyStatus, Option<String>)>,
    Option<String>,
);

/// [`keys::ensure_key`], with the wait for a creation that may still land written to status.
async fn ensure(
    ctx: &Context,
    request: &IngestionKeyRequest,
    access: &Access<'_>,
    target: &KeySpec<'_>,
) -> Result<Result<Ensured, Duration>, ReconcileError> {
    match keys::ensure_key(ctx, request, access, target).await? {
        KeyOutcome::InUse {
            key,
            request,
            unrecorded,
            created,
        } => Ok(Ok((key, *request, unrecorded, created))),
        KeyOutcome::CreationInFlight(wait) => {
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
    let status = request.status.as_ref();
    let pending = request.pending_key_creation();
    let recorded = Recorded {
        key: status.and_then(|s| s.resource_key.as_ref()),
        pending: pending.as_ref(),
    };
    let state = plan::rotation_state(request, valid, role);
    plan::replace_cause(&recorded, &state, Timestamp::now())
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
    let previous = secret::read_previous(ctx, request).await?;
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
    let message = plan::ready_message(request, &key.name, &instance.name);
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

/// One event for what the sync made: the key it created with the Secret that now holds it, or
/// else the Secret written (nothing when it already held the credential). One event, not one
/// per object: every event is a write to the API server.
async fn report_secret(
    ctx: &Context,
    request: &IngestionKeyRequest,
    outcome: SecretOutcome,
    created: Option<String>,
    key: &ResourceKey,
    fingerprint: &str,
) {
    let secret = &request.spec.secret.name;
    if let Some(created) = created {
        let written = match outcome {
            SecretOutcome::Created => "created Secret",
            SecretOutcome::Updated => "updated Secret",
            SecretOutcome::Unchanged => "Secret already held it:",
        };
        let note = format!("{created}; {written} {secret} (credential {fingerprint})");
        let reason = reason::event::RESOURCE_KEY_CREATED;
        ctx.events.normal(request, reason, note).await;
        return;
    }
    let (reason, note) = match outcome {
        SecretOutcome::Created => (
            reason::event::SECRET_CREATED,
            format!(
                "created Secret {secret} from resource key {} (credential {fingerprint})",
                key.name
            ),
        ),
        SecretOutcome::Updated => (
            reason::event::SECRET_UPDATED,
            format!(
                "updated Secret {secret} from resource key {} (credential {fingerprint})",
                key.name
            ),
        ),
        SecretOutcome::Unchanged => return,
    };
    ctx.events.normal(request, reason, note).await;
}

/// How long the request stays in sync without asking IBM Cloud (see [`plan::fast_path`]):
/// reconciles triggered by the operator's own status writes or by unrelated updates then cost
/// one Secret read and no IBM Cloud call. `None`: do the full sync.
async fn in_sync_for(
    ctx: &Context,
    request: &IngestionKeyRequest,
    valid: &ValidSpec,
    first_look: bool,
) -> Result<Option<Duration>, ReconcileError> {
    let now = Timestamp::now();
    let last = plan::last_sync(request, ctx.remembered_sync(request), now);
    let FastPath::ReadSecret { fingerprint, wait } =
        plan::fast_path(request, valid, last, now, first_look)
    else {
        return Ok(None);
    };
    // The operator's own writes come back as watch events and reconciles: while the watch shows
    // the Secret as this process left it, there is nothing to read.
    if ctx.secret_unchanged(request, &fingerprint) {
        return Ok(Some(wait));
    }
    let secret = secret::read(ctx, request).await?;
    let Some(secret) = secret.filter(|s| plan::secret_in_sync(request, s, &fingerprint)) else {
        return Ok(None);
    };
    remember_secret(ctx, request, secret.resource_version(), &fingerprint);
    Ok(Some(wait))
}

/// The agents' Secret is at `version` and holds the credential of `fingerprint`.
fn remember_secret(
    ctx: &Context,
    request: &IngestionKeyRequest,
    version: Option<String>,
    fingerprint: &str,
) {
    let known = version.map(|resource_version| SecretVersion {
        name: request.spec.secret.name.clone(),
        resource_version,
        fingerprint: fingerprint.to_owned(),
    });
    ctx.remember_secret_in_sync(request, known);
}
