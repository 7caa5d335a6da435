//! Status writes. Merge patches on the status subresource, built from typed structs: each write
//! sets only what it names, so a failure never erases the recorded instance, key or fingerprint.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::Serialize;

use super::{Context, ReconcileError};
use crate::crd::reason;
use crate::{
    crd::{
        IngestionKeyRequest, InstanceStatus, PendingKeyCreation, READY_CONDITION,
        ResourceKeyStatus, RetiringKey, RolloutStatus,
    },
    ibm::{ResourceInstance, ResourceKey},
};

/// The fields of `status` one write sets; `None` leaves a field as it is.
/// `pending_key_creation: Some(None)` clears an older operator's record (JSON `null` in a merge
/// patch).
#[derive(Serialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct StatusPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// `Some(None)` clears it: the spec no longer resolves to the instance recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<Option<InstanceStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_key: Option<ResourceKeyStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_key_creation: Option<Option<PendingKeyCreation>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_key_creation: Option<PendingKeyCreation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_deleted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationPatch>,
    /// The whole list (a merge patch replaces lists): only written with the resourceVersion it
    /// was computed from, so that a stale view can never drop a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retiring_keys: Option<Vec<RetiringKey>>,
    /// Written whole, fields left empty as explicit nulls (a merge patch keeps absent fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<serde_json::Value>,
}

/// The fields of `status.rotation` one write sets.
#[derive(Serialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct RotationPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// `Some(None)` clears it (the schedule was removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Option<Time>>,
}

#[derive(Serialize, Debug)]
struct StatusBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Precondition>,
    status: &'a StatusPatch,
}

/// A resourceVersion in a patch makes it conditional: the API server refuses (409) a patch
/// computed from an older version of the object.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Precondition {
    resource_version: String,
}

async fn patch(
    ctx: &Context,
    request: &IngestionKeyRequest,
    status: &StatusPatch,
    action: &'static str,
) -> Result<(), ReconcileError> {
    send(ctx, request, status, None, action).await.map(|_| ())
}

/// A patch that applies only to the version of the request it was computed from (see
/// [`Precondition`]); returns the request as written.
pub(super) async fn patch_checked(
    ctx: &Context,
    request: &IngestionKeyRequest,
    status: &StatusPatch,
    action: &'static str,
) -> Result<IngestionKeyRequest, ReconcileError> {
    let precondition = request
        .metadata
        .resource_version
        .clone()
        .map(|resource_version| Precondition { resource_version });
    send(ctx, request, status, precondition, action).await
}

async fn send(
    ctx: &Context,
    request: &IngestionKeyRequest,
    status: &StatusPatch,
    metadata: Option<Precondition>,
    action: &'static str,
) -> Result<IngestionKeyRequest, ReconcileError> {
    let namespace = request.namespace().unwrap_or_default();
    let api: Api<IngestionKeyRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch_status(
        &request.name_any(),
        &PatchParams::default(),
        &Patch::Merge(StatusBody { metadata, status }),
    )
    .await
    .map_err(ReconcileError::kube(action))
}

fn previous_ready(request: &IngestionKeyRequest) -> Option<&Condition> {
    request.status.as_ref()?.ready()
}

/// The Ready condition, keeping `lastTransitionTime` while its status does not change.
fn ready_condition(
    request: &IngestionKeyRequest,
    ready: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    let last_transition_time = previous_ready(request)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: READY_CONDITION.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time,
        observed_generation: request.metadata.generation,
    }
}

/// Whether the Ready condition's reason changes with this write (events go out on transitions).
pub(super) fn is_transition(request: &IngestionKeyRequest, reason: &str) -> bool {
    previous_ready(request).is_none_or(|c| c.reason != reason)
}

pub(super) fn instance_status(instance: &ResourceInstance) -> InstanceStatus {
    InstanceStatus {
        guid: instance.guid.clone(),
        crn: instance.crn.clone(),
        name: instance.name.clone(),
        region: instance.region_id.clone().unwrap_or_default(),
    }
}

pub(super) fn key_status(
    key: &ResourceKey,
    role: &str,
    created_by_operator: bool,
) -> ResourceKeyStatus {
    ResourceKeyStatus {
        guid: key.guid.clone(),
        crn: key.crn.clone(),
        name: key.name.clone(),
        role: role.to_owned(),
        created_by_operator,
        created_at: created_at(key),
    }
}

/// IBM Cloud's creation time of the key.
pub(super) fn created_at(key: &ResourceKey) -> Option<Time> {
    key.created_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(Time)
}

/// What recording a key (newly created or found) writes besides the key itself.
pub(super) struct KeyRecord<'a> {
    pub key: &'a ResourceKey,
    /// The role it was created with, as sent ("" when unknown).
    pub role: &'a str,
    pub created_by_operator: bool,
    /// The key it replaces, which joins `retiringKeys` in the same write: never forgotten.
    pub replaces: Option<&'a ResourceKeyStatus>,
    /// The `keysync.dev/rotate` value this handles.
    pub rotation_request: Option<String>,
}

/// The pending creation a write that records its outcome resolves: the announced one goes to
/// `lastKeyCreation`, an older operator's record is cleared.
fn resolve_pending(request: &IngestionKeyRequest, status: &mut StatusPatch) {
    let current = request.status.as_ref();
    if current.is_some_and(|s| s.pending_key_creation.is_some()) {
        status.pending_key_creation = Some(None);
    }
    status.last_key_creation = request.pending_key_creation();
}

/// Records, during deletion, that the request's keys are gone (it no longer needs the API key).
pub(super) async fn keys_deleted(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<(), ReconcileError> {
    let status = StatusPatch {
        keys_deleted: Some(true),
        ..StatusPatch::default()
    };
    patch(ctx, request, &status, "record that the keys are deleted").await
}

/// Records that IBM Cloud definitely refused the pending creation (no key was made).
pub(super) async fn creation_refused(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<(), ReconcileError> {
    let mut status = StatusPatch::default();
    resolve_pending(request, &mut status);
    patch(ctx, request, &status, "record the refused key creation").await
}

/// Records the key the request owns (before anything else is done with it), moving the key it
/// replaces to `retiringKeys` in the same write. Returns the request as written.
pub(super) async fn record_key(
    ctx: &Context,
    request: &IngestionKeyRequest,
    instance: &ResourceInstance,
    record: KeyRecord<'_>,
) -> Result<IngestionKeyRequest, ReconcileError> {
    let now = Time(Timestamp::now());
    let current = request.status.clone().unwrap_or_default();
    let retiring_keys = record.replaces.map(|old| {
        let mut keys = current.retiring_keys.clone();
        if !keys.iter().any(|k| k.guid == old.guid) {
            keys.push(RetiringKey {
                guid: old.guid.clone(),
                name: old.name.clone(),
                crn: old.crn.clone(),
                created_by_operator: old.created_by_operator,
                retired_at: Some(now.clone()),
                delete_after: None,
                delete_attempts: 0,
                last_delete_error: None,
            });
        }
        keys
    });
    let rotated = record.replaces.is_some();
    let rotation = (rotated || record.rotation_request.is_some()).then(|| RotationPatch {
        last_request: record.rotation_request,
        last_rotation_time: rotated.then(|| now.clone()),
        next_rotation_time: None,
    });
    let mut status = StatusPatch {
        resource_key: Some(key_status(
            record.key,
            record.role,
            record.created_by_operator,
        )),
        instance: Some(Some(instance_status(instance))),
        retiring_keys,
        rotation,
        ..StatusPatch::default()
    };
    resolve_pending(request, &mut status);
    patch_checked(ctx, request, &status, "record resource key in status").await
}

/// Writes the list of retiring keys, computed from `request` as read.
pub(super) async fn retiring_keys(
    ctx: &Context,
    request: &IngestionKeyRequest,
    keys: Vec<RetiringKey>,
) -> Result<IngestionKeyRequest, ReconcileError> {
    let status = StatusPatch {
        retiring_keys: Some(keys),
        ..StatusPatch::default()
    };
    patch_checked(ctx, request, &status, "record retiring keys").await
}

/// Writes the state of the roll-out of restart targets.
pub(super) async fn rollout(
    ctx: &Context,
    request: &IngestionKeyRequest,
    rollout: &RolloutStatus,
) -> Result<IngestionKeyRequest, ReconcileError> {
    let whole = serde_json::json!({
        "fingerprint": rollout.fingerprint,
        "startedAt": rollout.started_at,
        "completedAt": rollout.completed_at,
        "stalled": rollout.stalled,
        "missingTargets": rollout.missing_targets,
    });
    let status = StatusPatch {
        rollout: Some(whole),
        ..StatusPatch::default()
    };
    send(ctx, request, &status, None, "record the roll-out").await
}

/// What a successful sync writes.
pub(super) struct Synced<'a> {
    pub instance: &'a ResourceInstance,
    pub key: &'a ResourceKey,
    pub fingerprint: &'a str,
    pub message: String,
    /// `status.rotation.nextRotationTime` to write (see `apply::next_rotation`).
    pub next_rotation: Option<Option<Time>>,
    /// A key created by this sync and not recorded yet: recorded here, in the same write, which
    /// also resolves the pending creation (until then, its announcement finds it after a crash).
    pub unrecorded: Option<(ResourceKeyStatus, Option<String>)>,
}

/// Ready=True: the Secret holds the current credential. Nothing is written when the status
/// already says all of it (an in-sync refresh writes nothing; `lastSyncTime` then tells when the
/// status last changed).
pub(super) async fn synced(
    ctx: &Context,
    request: &IngestionKeyRequest,
    sync: Synced<'_>,
) -> Result<(), ReconcileError> {
    let current = request.status.clone().unwrap_or_default();
    let recorded_next = current
        .rotation
        .as_ref()
        .and_then(|r| r.next_rotation_time.clone());
    let next_rotation = sync.next_rotation.filter(|next| *next != recorded_next);
    let (unrecorded, rotation_request) = match sync.unrecorded {
        Some((key, requested)) => (Some(key), requested),
        None => (None, None),
    };
    let rotation = (next_rotation.is_some() || rotation_request.is_some()).then(|| RotationPatch {
        next_rotation_time: next_rotation.clone(),
        last_request: rotation_request,
        ..RotationPatch::default()
    });
    // Keys recorded before the creation time was kept get it now (the key-age metric).
    let resource_key = unrecorded.or_else(|| {
        current
            .resource_key
            .clone()
            .filter(|k| k.created_at.is_none() && k.guid == sync.key.guid)
            .and_then(|mut k| {
                k.created_at = created_at(sync.key);
                k.created_at.is_some().then_some(k)
            })
    });
    let instance = instance_status(sync.instance);
    let condition = ready_condition(request, true, reason::KEY_SYNCED, sync.message);
    let unchanged = resource_key.is_none()
        && rotation.is_none()
        && request.pending_key_creation().is_none()
        && current.observed_generation == request.metadata.generation
        && current.instance.as_ref() == Some(&instance)
        && current.secret_name.as_deref() == Some(request.spec.secret.name.as_str())
        && current.key_fingerprint.as_deref() == Some(sync.fingerprint)
        && previous_ready(request).is_some_and(|c| {
            c.status == condition.status
                && c.reason == condition.reason
                && c.message == condition.message
                && c.observed_generation == condition.observed_generation
        });
    if unchanged {
        return Ok(());
    }
    let records_key = resource_key.is_some();
    let mut status = StatusPatch {
        rotation,
        resource_key,
        observed_generation: request.metadata.generation,
        conditions: Some(vec![condition]),
        instance: Some(Some(instance)),
        secret_name: Some(request.spec.secret.name.clone()),
        key_fingerprint: Some(sync.fingerprint.to_owned()),
        last_sync_time: Some(Time(Timestamp::now())),
        ..StatusPatch::default()
    };
    if records_key {
        resolve_pending(request, &mut status);
    }
    patch(ctx, request, &status, "write Ready status").await
}

/// Ready=False while the operator waits for a key creation whose reply was lost: IBM Cloud did
/// not answer, and the message says what the operator waits for and until when.
pub(super) async fn waiting_for_creation(
    ctx: &Context,
    request: &IngestionKeyRequest,
    wait: std::time::Duration,
) -> Result<(), ReconcileError> {
    let pending = request.pending_key_creation();
    let what = pending.map_or_else(String::new, |p| format!(" {:?}", p.name));
    let message = format!(
        "the creation of resource key{what} got no answer from IBM Cloud; it may still complete, so the operator looks for it again in {}s before creating another",
        wait.as_secs()
    );
    let status = StatusPatch {
        observed_generation: request.metadata.generation,
        conditions: Some(vec![ready_condition(
            request,
            false,
            reason::IBM_CLOUD_UNAVAILABLE,
            message,
        )]),
        ..StatusPatch::default()
    };
    patch(ctx, request, &status, "write waiting status").await
}

/// Ready=False with the error's reason and message; everything else recorded stays. Nothing is
/// written when the condition already says the same (transaction ids aside): every write is a
/// watch event, and a rewrite per attempt would turn the back-off into a busy loop.
pub(super) async fn failed(
    ctx: &Context,
    request: &IngestionKeyRequest,
    error: &ReconcileError,
) -> Result<(), ReconcileError> {
    let message = error.to_string();
    let stale_instance = instance_is_stale(error.reason())
        && request
            .status
            .as_ref()
            .is_some_and(|s| s.instance.is_some());
    let unchanged = previous_ready(request).is_some_and(|c| {
        c.status == "False"
            && c.reason == error.reason()
            && c.observed_generation == request.metadata.generation
            && without_transaction_ids(&c.message) == without_transaction_ids(&message)
    });
    if unchanged && !stale_instance {
        return Ok(());
    }
    let status = StatusPatch {
        instance: stale_instance.then_some(None),
        observed_generation: request.metadata.generation,
        conditions: Some(vec![ready_condition(
            request,
            false,
            error.reason(),
            message,
        )]),
        ..StatusPatch::default()
    };
    patch(ctx, request, &status, "write failure status").await
}

/// Failures that say the spec does not (or no longer) resolve to the instance in status: showing
/// that instance next to them would describe an older spec. Deletion does not need it (the key's
/// CRN and a pending creation carry their instance).
fn instance_is_stale(reason: &str) -> bool {
    matches!(
        reason,
        reason::INVALID_SPEC
            | reason::INSTANCE_NOT_FOUND
            | reason::INSTANCE_AMBIGUOUS
            | reason::INSTANCE_NOT_ACTIVE
    )
}

/// The message without IBM Cloud transaction ids, which differ on every attempt.
fn without_transaction_ids(message: &str) -> String {
    const MARK: &str = " (transaction id ";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(MARK) {
        out.push_str(&rest[..start]);
        rest = &rest[start + MARK.len()..];
        rest = rest.find(')').map_or("", |end| &rest[end + 1..]);
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::{StatusPatch, without_transaction_ids};

    #[test]
    fn a_status_patch_sets_only_what_it_names_and_clears_with_null() {
        let untouched = serde_json::to_value(StatusPatch::default()).expect("serializes");
        assert_eq!(untouched, serde_json::json!({}));
        let clear = StatusPatch {
            pending_key_creation: Some(None),
            secret_name: Some("s".into()),
            ..StatusPatch::default()
        };
        assert_eq!(
            serde_json::to_value(clear).expect("serializes"),
            serde_json::json!({"pendingKeyCreation": null, "secretName": "s"})
        );
    }

    #[test]
    fn transaction_ids_are_ignored_when_comparing_messages() {
        assert_eq!(
            without_transaction_ids(
                "IAM rejected it (x failed: HTTP 400 (API key rejected): gone (transaction id abc-1)): fix it"
            ),
            "IAM rejected it (x failed: HTTP 400 (API key rejected): gone): fix it"
        );
        assert_eq!(without_transaction_ids("no ids here"), "no ids here");
    }
}
