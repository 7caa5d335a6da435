//! The status of an `IngestionKeyRequest`: what the operator observed and did.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::{IngestionKeyRequest, KEY_CREATION_ANNOTATION, READY_CONDITION};

/// Observed state, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngestionKeyRequestStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions; Ready says whether the Secret holds a current credential, and if not, why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The resolved service instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceStatus>,
    /// The resource key this request owns. Recorded as soon as it exists, so that deletion can
    /// clean it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_key: Option<ResourceKeyStatus>,
    /// Written by earlier versions of the operator just before a resource key was created; still read (and
    /// cleared) so that a creation they started is found. The operator now announces a creation
    /// in the annotation `keysync.dev/key-creation` (see
    /// [`IngestionKeyRequest::pending_key_creation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_key_creation: Option<PendingKeyCreation>,
    /// The last key creation announced in the annotation `keysync.dev/key-creation` whose
    /// outcome this status records (the key, or IBM Cloud's refusal): that creation is no longer
    /// pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key_creation: Option<PendingKeyCreation>,
    /// Name of the Secret written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Short hash of the synced credential (never the credential itself), to tell rotations apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// When a sync last changed the status (a refresh that finds everything in sync writes
    /// nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Set while the request is being deleted, once its keys are deleted in IBM Cloud: it no
    /// longer needs the API key Secret.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keys_deleted: bool,
    /// Rotations: the last request handled, the last rotation, the next scheduled one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationStatus>,
    /// Keys replaced by the current one, waiting for deletion. A key leaves this list only once
    /// it is deleted (or, if the operator did not create it, retained).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring_keys: Vec<RetiringKey>,
    /// The roll-out of restart targets to the current credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// What the operator did about rotations.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// The last keysync.dev/rotate value handled: each value acts once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
    /// When the key was last replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,
    /// When the next scheduled rotation is due (only with spec.rotation.interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,
}

/// A replaced key waiting for deletion.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetiringKey {
    /// GUID of the key.
    pub guid: String,
    /// Name of the key.
    pub name: String,
    /// CRN of the key.
    pub crn: String,
    /// Whether the operator created it (only such keys are deleted; others are retained).
    #[serde(default)]
    pub created_by_operator: bool,
    /// When it was replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<Time>,
    /// When it is deleted: set once its successor is in use (the Secret holds it and the restart
    /// targets rolled out), plus the grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after: Option<Time>,
    /// Failed deletions so far (retried with back-off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delete_attempts: u32,
    /// Why the last deletion failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delete_error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The roll-out of restart targets to one credential.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Fingerprint of the credential the targets are rolled out to.
    pub fingerprint: String,
    /// When the operator restarted the targets.
    pub started_at: Time,
    /// When every target had rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Set once rolloutTimeout passed without the roll-out completing (RolloutStalled).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stalled: bool,
    /// Restart targets that do not exist (kind/name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_targets: Vec<String>,
}

/// The resolved IBM Cloud service instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// GUID of the instance.
    pub guid: String,
    /// CRN of the instance.
    pub crn: String,
    /// Name of the instance.
    pub name: String,
    /// Region (region_id) of the instance.
    pub region: String,
}

/// The resource key owned by the request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceKeyStatus {
    /// GUID of the resource key.
    pub guid: String,
    /// CRN of the resource key.
    pub crn: String,
    /// Name of the resource key.
    pub name: String,
    /// The role it was created with, as sent to IBM Cloud (base role name or role CRN); empty
    /// when unknown (a key found by name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// Whether the operator created it. A key found by a custom name that the operator did not
    /// create is used but never deleted.
    #[serde(default)]
    pub created_by_operator: bool,
    /// When IBM Cloud created the key (its `created_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
}

/// A resource key creation the operator started.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingKeyCreation {
    /// Name of the key being created.
    pub name: String,
    /// GUID of the instance the key is created on.
    pub instance_guid: String,
    /// When the creation started (whole seconds, as every Kubernetes time is written).
    pub started_at: Time,
}

impl IngestionKeyRequest {
    /// The key creation that was started and whose outcome the status does not record yet: a
    /// key of that name may exist in IBM Cloud that the status does not name. The operator
    /// announces a creation in the annotation [`KEY_CREATION_ANNOTATION`], in the same write that
    /// adds its finalizer, before it asks IBM Cloud; the status write that records the outcome
    /// copies it to `status.lastKeyCreation`. A record written by an older operator in
    /// `status.pendingKeyCreation` comes first. An annotation that does not parse announces
    /// nothing.
    pub fn pending_key_creation(&self) -> Option<PendingKeyCreation> {
        let status = self.status.as_ref();
        if let Some(legacy) = status.and_then(|s| s.pending_key_creation.clone()) {
            return Some(legacy);
        }
        let announced = self
            .metadata
            .annotations
            .as_ref()?
            .get(KEY_CREATION_ANNOTATION)?;
        let announced: PendingKeyCreation = serde_json::from_str(announced).ok()?;
        let resolved = status.and_then(|s| s.last_key_creation.as_ref());
        (resolved != Some(&announced)).then_some(announced)
    }
}

impl IngestionKeyRequestStatus {
    /// The Ready condition, the one every tool reads.
    pub fn ready(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == READY_CONDITION)
    }

    /// Whether the Ready condition is True.
    pub fn is_ready(&self) -> bool {
        self.ready().is_some_and(|c| c.status == "True")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(annotation: Option<&str>, status: serde_json::Value) -> IngestionKeyRequest {
        let mut request: IngestionKeyRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
            "metadata": {"name": "at"},
            "spec": {"instance": {"name": "x"}, "apiKeySecretRef": {"name": "k"}},
            "status": status,
        }))
        .expect("request");
        if let Some(value) = annotation {
            request.metadata.annotations =
                Some([(KEY_CREATION_ANNOTATION.to_owned(), value.to_owned())].into());
        }
        request
    }

    const ANNOUNCED: &str =
        r#"{"name":"k1","instanceGuid":"g","startedAt":"2026-12-05T10:00:00Z"}"#;

    fn announced() -> serde_json::Value {
        serde_json::from_str(ANNOUNCED).expect("json")
    }

    #[test]
    fn an_announced_creation_is_pending_until_the_status_records_its_outcome() {
        let pending = request(Some(ANNOUNCED), serde_json::json!({}))
            .pending_key_creation()
            .expect("announced, not resolved");
        assert_eq!(pending.name, "k1");
        let resolved = request(
            Some(ANNOUNCED),
            serde_json::json!({"lastKeyCreation": announced()}),
        );
        assert_eq!(resolved.pending_key_creation(), None);
        // A later creation (a replacement) is pending again, though an earlier one was resolved.
        let later = ANNOUNCED
            .replace("k1", "k1:r1")
            .replace("10:00:00", "11:00:00");
        let again = request(
            Some(&later),
            serde_json::json!({"lastKeyCreation": announced()}),
        );
        assert_eq!(
            again.pending_key_creation().map(|p| p.name).as_deref(),
            Some("k1:r1")
        );
    }

    #[test]
    fn an_older_operators_record_comes_first_and_garbage_announces_nothing() {
        let mut legacy = announced();
        legacy["name"] = "legacy".into();
        let both = request(
            Some(ANNOUNCED),
            serde_json::json!({"pendingKeyCreation": legacy, "lastKeyCreation": announced()}),
        );
        assert_eq!(
            both.pending_key_creation().map(|p| p.name).as_deref(),
            Some("legacy")
        );
        assert_eq!(
            request(Some("{not json"), serde_json::json!({})).pending_key_creation(),
            None
        );
        assert_eq!(
            request(None, serde_json::json!({})).pending_key_creation(),
            None
        );
    }
}
