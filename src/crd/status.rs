//! The status of an `IngestionKeyRequest`: what the operator observed and did.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::READY_CONDITION;

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
    /// Set just before a resource key is created and cleared once it is recorded: after a crash,
    /// it tells the operator that a key may exist that it has not seen yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_key_creation: Option<PendingKeyCreation>,
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

/// A resource key creation that was started but not yet recorded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingKeyCreation {
    /// Name of the key being created.
    pub name: String,
    /// GUID of the instance the key is created on.
    pub instance_guid: String,
    /// When the creation started.
    pub started_at: Time,
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
