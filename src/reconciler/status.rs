//! Status writes. Merge patches on the status subresource: each write sets only what it names,
//! so a failure never erases the recorded instance, key or fingerprint.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use super::{Context, ReconcileError, reason};
use crate::{
    crd::{IngestionKeyRequest, READY_CONDITION},
    ibm::{ResourceInstance, ResourceKey},
};

async fn patch(
    ctx: &Context,
    request: &IngestionKeyRequest,
    status: Value,
    action: &'static str,
) -> Result<(), ReconcileError> {
    let namespace = request.namespace().unwrap_or_default();
    let api: Api<IngestionKeyRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch_status(
        &request.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(|_| ())
    .map_err(ReconcileError::kube(action))
}

fn previous_ready(request: &IngestionKeyRequest) -> Option<&Condition> {
    request
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == READY_CONDITION)
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

fn instance_status(instance: &ResourceInstance) -> Value {
    json!({
        "guid": instance.guid,
        "crn": instance.crn,
        "name": instance.name,
        "region": instance.region_id.clone().unwrap_or_default(),
    })
}

/// Records that a key named `name` is about to be created on the instance.
pub(super) async fn record_pending(
    ctx: &Context,
    request: &IngestionKeyRequest,
    name: &str,
    instance: &ResourceInstance,
) -> Result<(), ReconcileError> {
    let pending =
        json!({ "name": name, "instanceGuid": instance.guid, "startedAt": Time(Timestamp::now()) });
    patch(
        ctx,
        request,
        json!({ "pendingKeyCreation": pending, "instance": instance_status(instance) }),
        "record pending key creation",
    )
    .await
}

/// Records the key the request owns (before anything else is done with it).
pub(super) async fn record_key(
    ctx: &Context,
    request: &IngestionKeyRequest,
    instance: &ResourceInstance,
    key: &ResourceKey,
) -> Result<(), ReconcileError> {
    let key_status = json!({ "guid": key.guid, "crn": key.crn, "name": key.name });
    patch(
        ctx,
        request,
        json!({ "resourceKey": key_status, "instance": instance_status(instance), "pendingKeyCreation": null }),
        "record resource key in status",
    )
    .await
}

/// Ready=True: the Secret holds the current credential.
pub(super) async fn synced(
    ctx: &Context,
    request: &IngestionKeyRequest,
    instance: &ResourceInstance,
    fingerprint: &str,
    message: String,
) -> Result<(), ReconcileError> {
    let condition = ready_condition(request, true, reason::KEY_SYNCED, message);
    patch(
        ctx,
        request,
        json!({
            "observedGeneration": request.metadata.generation,
            "conditions": [condition],
            "instance": instance_status(instance),
            "secretName": request.spec.secret.name,
            "keyFingerprint": fingerprint,
            "lastSyncTime": Time(Timestamp::now()),
        }),
        "write Ready status",
    )
    .await
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
    let unchanged = previous_ready(request).is_some_and(|c| {
        c.status == "False"
            && c.reason == error.reason()
            && c.observed_generation == request.metadata.generation
            && without_transaction_ids(&c.message) == without_transaction_ids(&message)
    });
    if unchanged {
        return Ok(());
    }
    let condition = ready_condition(request, false, error.reason(), message);
    patch(
        ctx,
        request,
        json!({ "observedGeneration": request.metadata.generation, "conditions": [condition] }),
        "write failure status",
    )
    .await
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
    use super::without_transaction_ids;

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
