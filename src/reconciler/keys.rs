//! The request's resource key in IBM Cloud: looked up, reused, created or deleted as the pure
//! decisions of `plan` say. Only this module (and cleanup, through [`delete_and_report`]) changes
//! keys.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tracing::{debug, info, warn};

use k8s_openapi::api::core::v1::Secret;
use kube::{ResourceExt, core::PartialObjectMeta};

use super::{
    Context, ReconcileError, api_key, finalizer,
    plan::{self, Found, KeyPlan, Lookup, Recorded, ReplaceCause, Wanted, keys::RecordWrite},
    status,
};
use crate::crd::reason;
use crate::{
    crd::{
        IngestionKeyRequest, ROTATE_ANNOTATION, ResourceKeyStatus, default_key_name, may_delete,
    },
    ibm::{CreateKeyRequest, ErrorKind, IbmError, KeyDeletion, ResourceInstance, ResourceKey},
    redact::SecretString,
};

/// The key to use, with the request as last written (recording a key writes its status).
pub(super) enum KeyOutcome {
    InUse {
        key: Box<ResourceKey>,
        request: Box<IngestionKeyRequest>,
        /// A first key, just created: recorded by the sync's final status write (with the
        /// rotation request it handles), one write fewer. Its pending record covers a crash.
        unrecorded: Option<(ResourceKeyStatus, Option<String>)>,
        /// What this reconcile created, for the one event that reports it with the Secret.
        created: Option<String>,
    },
    /// A creation recorded in status may still complete in IBM Cloud: wait this long, then look
    /// again before creating.
    CreationInFlight(Duration),
}

/// What a key operation needs besides the request: the API key and, for messages, the name of
/// the Secret holding it.
pub(super) struct Access<'a> {
    pub api_key: &'a SecretString,
    /// The Secret the API key was read from (held while a key made with it exists).
    pub secret: &'a PartialObjectMeta<Secret>,
    pub secret_name: &'a str,
}

/// The key the spec asks for.
pub(super) struct KeySpec<'a> {
    pub instance: &'a ResourceInstance,
    /// The request's key name (default or `resourceKey.name`), before any `:r<N>`.
    pub base_name: &'a str,
    /// The role as sent to IBM Cloud.
    pub role: &'a str,
    /// Replace the recorded key, and why.
    pub replace: Option<ReplaceCause>,
}

/// Finds the request's key, or creates it. Never creates while an earlier creation may still
/// land, and deletes duplicates of a default-named key (which only this request can have made).
/// A key that replaces the recorded one is recorded together with the old key's retirement.
pub(super) async fn ensure_key(
    ctx: &Context,
    request: &IngestionKeyRequest,
    access: &Access<'_>,
    target: &KeySpec<'_>,
) -> Result<KeyOutcome, ReconcileError> {
    let status = request.status.clone().unwrap_or_default();
    let pending = request.pending_key_creation();
    let recorded = Recorded {
        key: status.resource_key.as_ref(),
        pending: pending.as_ref(),
    };
    let key_name = plan::wanted_key_name(target.base_name, recorded.key, target.replace.is_some());
    let default_name = default_key_name(request, &ctx.settings.cluster_id)
        .is_some_and(|base| plan::replacement_number(&base, &key_name).is_some());
    let wanted = Wanted {
        instance_guid: &target.instance.guid,
        key_name: &key_name,
        default_name,
    };
    let found = look_up(ctx, access, &plan::lookup(&recorded, &wanted), &wanted).await?;
    let grace = ctx.settings.key_creation_grace;
    let ours_by_pending = recorded.pending.is_some_and(|p| p.name == key_name);
    let (key, written, created) =
        match plan::decide(&recorded, &wanted, found, Timestamp::now(), grace) {
            KeyPlan::Wait(wait) => return Ok(KeyOutcome::CreationInFlight(wait)),
            KeyPlan::Create => {
                let replaced = recorded.key.map(|k| k.name.as_str());
                let (key, written, note) =
                    create(ctx, request, access, target, &key_name, replaced).await?;
                (key, Some(written), Some(note))
            }
            found @ KeyPlan::Use { .. } => (adopt(ctx, request, access, found).await?, None, None),
        };
    let requested = request
        .annotations()
        .get(ROTATE_ANNOTATION)
        .map(String::as_str);
    let ours = default_name || ours_by_pending;
    let plan = plan::record(
        &recorded,
        &key.guid,
        written.is_some(),
        ours,
        target.replace,
        requested,
    );
    let role = if plan.created_by_operator {
        target.role
    } else {
        ""
    };
    let rotation_request = plan.rotation_request.map(str::to_owned);
    let latest = written.unwrap_or_else(|| request.clone());
    let (request, unrecorded) = match plan.write {
        RecordWrite::Nothing => (latest, None),
        RecordWrite::WithSync => {
            let record = status::key_status(&key, role, plan.created_by_operator);
            (latest, Some((record, rotation_request)))
        }
        RecordWrite::Now { replaces } => {
            if replaces.is_some() {
                ctx.metrics.observe_rotation();
            }
            let record = status::KeyRecord {
                key: &key,
                role,
                created_by_operator: plan.created_by_operator,
                replaces,
                rotation_request,
            };
            (
                status::record_key(ctx, &latest, target.instance, record).await?,
                None,
            )
        }
    };
    Ok(KeyOutcome::InUse {
        key: Box::new(key),
        request: Box::new(request),
        unrecorded,
        created,
    })
}

/// Carries out [`KeyPlan::Use`]: deletes the duplicates it names and returns the key.
async fn adopt(
    ctx: &Context,
    request: &IngestionKeyRequest,
    access: &Access<'_>,
    plan: KeyPlan,
) -> Result<ResourceKey, ReconcileError> {
    let KeyPlan::Use {
        key,
        record,
        duplicates,
        others,
    } = plan
    else {
        return Err(ReconcileError::Unexpected(
            "adopt called without a key".into(),
        ));
    };
    if others > 0 {
        warn!(count = others + 1, key_name = %key.name, "several active resource keys carry the configured name; using the oldest");
    }
    let reason = reason::event::DUPLICATE_RESOURCE_KEY_DELETED;
    for duplicate in &duplicates {
        let why = format!("a duplicate of {} ({})", key.name, key.guid);
        let (guid, name) = (&duplicate.guid, &duplicate.name);
        let _ = delete_and_report(ctx, request, access.api_key, guid, name, reason, &why).await;
    }
    if record {
        let note = format!("reusing resource key {} ({})", key.name, key.guid);
        let reused = reason::event::RESOURCE_KEY_REUSED;
        ctx.events.normal(request, reused, note).await;
    }
    Ok(*key)
}

/// Carries out a [`Lookup`]: at most one call (a key read, or one filtered listing).
async fn look_up(
    ctx: &Context,
    access: &Access<'_>,
    lookup: &Lookup,
    wanted: &Wanted<'_>,
) -> Result<Found, ReconcileError> {
    let failed = |action, e| ReconcileError::from_ibm(action, access.secret_name, e);
    match lookup {
        Lookup::Nothing => Ok(Found::Nothing),
        Lookup::ByName => ctx
            .ibm
            .find_keys_by_name(access.api_key, wanted.instance_guid, wanted.key_name)
            .await
            .map(Found::ByName)
            .map_err(|e| failed("find resource keys by name", e)),
        Lookup::Recorded(guid) => match ctx.ibm.get_key(access.api_key, guid).await {
            Ok(key) => Ok(Found::Recorded(Some(Box::new(key)))),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Gone) => {
                Ok(Found::Recorded(None))
            }
            Err(e) => Err(failed("read resource key", e)),
        },
    }
}

/// Creates the key, announced first so that a crash or a lost reply cannot lead to a second one.
/// A definite refusal (a 4xx answer) made no key: the status says so at once. Returns the key,
/// the request as written, and what was created (for the event the caller sends once the Secret
/// holds it).
async fn create(
    ctx: &Context,
    request: &IngestionKeyRequest,
    access: &Access<'_>,
    target: &KeySpec<'_>,
    key_name: &str,
    replaced: Option<&str>,
) -> Result<(ResourceKey, IngestionKeyRequest, String), ReconcileError> {
    let instance = target.instance;
    let attempt = CreationAttempt::of(request, access, instance, key_name);
    if let Some(refused) = ctx.refused_creation(request, &attempt) {
        // Asking again now would get the same answer; the back-off decides when to ask again.
        return Err(ReconcileError::from_ibm(
            "create resource key",
            access.secret_name,
            refused,
        ));
    }
    let written = finalizer::announce_creation(ctx, request, key_name, instance).await?;
    if !finalizer::is_set(request) {
        // The request's first key: from here on it may exist, so the API key must outlive the
        // request (namespace deletion).
        api_key::hold(ctx, &written, access.secret).await?;
    }
    if let Some(old) = replaced {
        let why = target.replace.map_or_else(
            || "the spec moved the key to another instance or name".to_owned(),
            |cause| cause.to_string(),
        );
        let note = format!("creating resource key {key_name} to replace {old}: {why}");
        let started = reason::event::ROTATION_STARTED;
        ctx.events.normal(request, started, note).await;
    }
    let create = CreateKeyRequest {
        name: key_name.to_owned(),
        source: instance.guid.clone(),
        role: target.role.to_owned(),
    };
    let key = match ctx.ibm.create_key(access.api_key, &create).await {
        Ok(key) => key,
        Err(error) => {
            if is_definite_refusal(&error) {
                status::creation_refused(ctx, &written).await?;
                ctx.remember_refusal(request, attempt, error.clone());
            }
            return Err(ReconcileError::from_ibm(
                "create resource key",
                access.secret_name,
                error,
            ));
        }
    };
    let note = format!(
        "created resource key {} ({}) with role {} on instance {}",
        key.name, key.guid, create.role, instance.name
    );
    info!(key = %key.guid, "created resource key");
    Ok((key, written, note))
}

/// What a creation depends on: when none of it changed, a refused creation is refused again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CreationAttempt {
    generation: Option<i64>,
    api_key_digest: String,
    instance_guid: String,
    key_name: String,
}

impl CreationAttempt {
    fn of(
        request: &IngestionKeyRequest,
        access: &Access<'_>,
        instance: &ResourceInstance,
        key_name: &str,
    ) -> Self {
        Self {
            generation: request.metadata.generation,
            api_key_digest: access.api_key.digest_hex(),
            instance_guid: instance.guid.clone(),
            key_name: key_name.to_owned(),
        }
    }
}

/// IBM Cloud answered with a 4xx other than 429: the request was refused, no key exists.
fn is_definite_refusal(error: &IbmError) -> bool {
    matches!(error.status, Some(400..=499)) && error.kind() != ErrorKind::RateLimited
}

/// What became of a key the operator set out to delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Removal {
    Deleted,
    /// 404 or 410: it was already gone.
    AlreadyGone,
    /// Its name is not of this request's and this cluster's name family (a status restored from
    /// another cluster, a key someone listed by hand): left in IBM Cloud, never deleted.
    NotOurs,
}

/// The one place a key is deleted: only a key of the request's own name family; the outcome is
/// logged, a deletion is published as an event with `reason` naming this key, and a failure or a
/// refusal as a Warning event.
pub(super) async fn delete_and_report(
    ctx: &Context,
    request: &IngestionKeyRequest,
    api_key: &SecretString,
    guid: &str,
    name: &str,
    reason: &str,
    why: &str,
) -> Result<Removal, IbmError> {
    let uid = request.metadata.uid.as_deref().unwrap_or_default();
    let custom = request.spec.resource_key.name.as_deref().map(str::trim);
    if !may_delete(name, uid, &ctx.settings.cluster_id, custom) {
        warn!(key = %guid, key_name = %name, "not deleting a resource key of another cluster or request");
        let note = format!(
            "left resource key {name} ({guid}) in IBM Cloud: its name is not of this request's and this cluster's ({}) name family, so it belongs to another cluster or request (a status restored from a backup?)",
            ctx.settings.cluster_id
        );
        let retained = reason::event::RESOURCE_KEY_RETAINED;
        ctx.events.warning(request, retained, note).await;
        return Ok(Removal::NotOurs);
    }
    let outcome = ctx.ibm.delete_key(api_key, guid).await;
    match &outcome {
        Ok(KeyDeletion::Deleted) => {
            info!(key = %guid, key_name = %name, why, "deleted resource key");
            let note = format!("deleted resource key {name} ({guid}): {why}");
            ctx.events.normal(request, reason, note).await;
        }
        Ok(KeyDeletion::AlreadyGone) => debug!(key = %guid, "resource key already gone"),
        Err(error) => {
            warn!(key = %guid, key_name = %name, %error, "could not delete resource key");
            let note = format!("could not delete resource key {name} ({guid}), {why}: {error}");
            let failed = reason::event::RESOURCE_KEY_DELETE_FAILED;
            ctx.events.warning(request, failed, note).await;
        }
    }
    outcome.map(|deletion| match deletion {
        KeyDeletion::Deleted => Removal::Deleted,
        KeyDeletion::AlreadyGone => Removal::AlreadyGone,
    })
}
