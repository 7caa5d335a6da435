//! The `IngestionKeyRequest` custom resource (group `keysync.dev`, version `v1alpha1`), its names,
//! and the validation the operator applies itself (older API servers ignore CEL rules).

// Several `printcolumn(...)` attributes share `type_ = "string"`, which clippy takes for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of the custom resource.
pub const GROUP: &str = "keysync.dev";
/// Finalizer that guards the IBM Cloud resource key.
pub const FINALIZER: &str = "keysync.dev/resource-key";
/// Finalizer the operator keeps on an API key Secret while a request may still need that API
/// key to delete its resource key.
pub const API_KEY_FINALIZER: &str = "keysync.dev/api-key-in-use";
/// Server-side apply field manager, and the name events are reported under.
pub const FIELD_MANAGER: &str = "ingestion-key-operator";
/// Label put on every Secret the operator writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "ingestion-key-operator";
/// The condition every tool reads.
pub const READY_CONDITION: &str = "Ready";
/// The shortest refresh interval accepted: anything shorter would hammer IBM Cloud.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest rotation interval accepted (the operator's `--min-rotation-interval` may lower it,
/// for tests only).
pub const MIN_ROTATION_INTERVAL: Duration = Duration::from_secs(3600);
/// Annotation on a request: any new value asks for one rotation of its key.
pub const ROTATE_ANNOTATION: &str = "keysync.dev/rotate";
/// Pod-template annotation set on restart targets: the fingerprint of the credential they must
/// run with (a change rolls them out, as `kubectl rollout restart` does).
pub const FINGERPRINT_ANNOTATION: &str = "keysync.dev/credential-fingerprint";

/// Asks the operator for an IBM Cloud resource key (service credential) on a service instance and
/// keeps one of its credential fields (the ingestion key by default) in a Secret for log agents.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keysync.dev",
    version = "v1alpha1",
    kind = "IngestionKeyRequest",
    plural = "ingestionkeyrequests",
    shortname = "ikr",
    namespaced,
    status = "IngestionKeyRequestStatus",
    derive = "PartialEq",
    doc = "Asks the operator for an IBM Cloud resource key on a service instance (Log Analysis, Activity Tracker, Cloud Logs) and keeps one of its credentials in a Secret that log agents mount.",
    printcolumn(
        name = "Instance",
        type_ = "string",
        json_path = ".status.instance.name",
        description = "Name of the resolved IBM Cloud service instance"
    ),
    printcolumn(
        name = "Secret",
        type_ = "string",
        json_path = ".spec.secret.name",
        description = "Secret that receives the credential"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IngestionKeyRequestSpec {
    /// The IBM Cloud service instance that the resource key is created on. Set exactly one of
    /// name, guid or crn.
    pub instance: InstanceRef,
    /// The Secret, in the same namespace as this request, that holds the IBM Cloud API key the
    /// operator acts with. Secrets in other namespaces are never read.
    pub api_key_secret_ref: ApiKeySecretRef,
    /// The resource key (service credential) to create on the instance, or to reuse.
    #[serde(default)]
    pub resource_key: ResourceKeySpec,
    /// The Secret that log agents mount, written in the namespace of this request.
    #[serde(default)]
    pub secret: SecretSpec,
    /// How often the key is re-read from IBM Cloud and the Secret re-checked, as a duration such
    /// as 15m, 1h or 1h30m; at least 1m.
    #[serde(default = "default_refresh_interval")]
    #[x_kube(validation = kube::core::Rule::new("duration(self) >= duration('1m')").message("refreshInterval must be a duration of at least 1m, such as 15m or 1h"))]
    pub refresh_interval: String,
    /// What happens to the resource key in IBM Cloud when this request is deleted: Delete removes
    /// it, Retain keeps it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Scheduled rotation, and how a replaced key is retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationSpec>,
    /// Workloads in this namespace that read the key at start: rolled out (their pod template
    /// annotated with the credential's fingerprint) whenever the credential changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_targets: Vec<RestartTarget>,
}

/// When the key is rotated, and how the key it replaces is retired.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RotationSpec {
    /// Rotate the key this often (at least 1h, for example 720h). Absent: rotate only on demand
    /// (annotation keysync.dev/rotate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long a replaced key stays valid after its successor is in use (Secret written,
    /// restart targets rolled out) before it is deleted.
    #[serde(default = "default_grace_period")]
    pub grace_period: String,
    /// How long to wait for restart targets to roll out before reporting RolloutStalled (the
    /// replaced key is kept until the rollout completes).
    #[serde(default = "default_rollout_timeout")]
    pub rollout_timeout: String,
}

impl Default for RotationSpec {
    fn default() -> Self {
        Self {
            interval: None,
            grace_period: default_grace_period(),
            rollout_timeout: default_rollout_timeout(),
        }
    }
}

/// A workload restarted when the credential changes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct RestartTarget {
    /// DaemonSet, Deployment or StatefulSet.
    pub kind: RestartKind,
    /// Name of the workload, in the request's namespace.
    pub name: String,
}

/// The kinds of workload a request can restart.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RestartKind {
    DaemonSet,
    Deployment,
    StatefulSet,
}

impl std::fmt::Display for RestartKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DaemonSet => "DaemonSet",
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
        })
    }
}

/// Identifies the service instance: exactly one of name, guid, crn.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.name) && self.name != '', has(self.guid) && self.guid != '', has(self.crn) && self.crn != ''].filter(x, x).size() == 1"
).message("set exactly one of name, guid, crn"))]
pub struct InstanceRef {
    /// Name of the instance, as shown in the IBM Cloud resource list. Names need not be unique:
    /// narrow the lookup with resourceGroupId, region or serviceName when several match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// GUID of the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
    /// CRN of the instance, for example crn:v1:bluemix:public:logdnaat:us-south:a/ACCOUNT:GUID::
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crn: Option<String>,
    /// Narrows a name lookup to one resource group (its ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group_id: Option<String>,
    /// Narrows a name lookup to one region (the instance's region_id, for example us-south).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Narrows a name lookup to one service (logdna, logdnaat, logs, ...: the fifth CRN segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// A key of a Secret in the request's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySecretRef {
    /// Name of the Secret holding the IBM Cloud API key.
    pub name: String,
    /// Key within the Secret's data.
    #[serde(default = "default_api_key_field")]
    pub key: String,
}

/// The resource key (service credential) the operator manages.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceKeySpec {
    /// Name of the resource key. Default: derived from this request's namespace, name and UID,
    /// stable for the life of the request and unique to it. At most 180 characters: letters,
    /// digits, space, and - . _ :
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// IAM service role of the key: a base role (Reader, Writer, Manager), a role of the
    /// instance's service (sent as its role CRN, crn:v1:bluemix:public:<service>::::serviceRole:<Role>),
    /// or a role CRN. Log Analysis and Activity Tracker need Manager for the key to carry the
    /// ingestion key; IBM Cloud Logs agents need a key with the Sender role.
    #[serde(default = "default_role")]
    pub role: String,
    /// Field of the key's credentials copied into the Secret: ingestion_key for Log Analysis and
    /// Activity Tracker agents, apikey for IBM Cloud Logs agents.
    #[serde(default = "default_credential_field")]
    pub credential_field: String,
}

impl Default for ResourceKeySpec {
    fn default() -> Self {
        Self {
            name: None,
            role: default_role(),
            credential_field: default_credential_field(),
        }
    }
}

/// The Secret the operator writes for log agents.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// Name of the Secret (IBM and LogDNA agents expect logdna-agent-key; Cloud Logs agents
    /// expect logs-agent).
    #[serde(default = "default_secret_name")]
    pub name: String,
    /// Key in the Secret's data that holds the credential (logdna-agent-key for LogDNA agents,
    /// IAM_API_KEY for Cloud Logs agents).
    #[serde(default = "default_secret_key")]
    pub key: String,
    /// Extra labels put on the Secret.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Extra annotations put on the Secret.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl Default for SecretSpec {
    fn default() -> Self {
        Self {
            name: default_secret_name(),
            key: default_secret_key(),
            labels: Default::default(),
            annotations: Default::default(),
        }
    }
}

/// What happens to the IBM Cloud resource key when the request is deleted.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum DeletionPolicy {
    /// Delete the resource key in IBM Cloud.
    #[default]
    Delete,
    /// Keep the resource key in IBM Cloud.
    Retain,
}

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

fn default_refresh_interval() -> String {
    "1h".into()
}
fn default_api_key_field() -> String {
    "apikey".into()
}
fn default_role() -> String {
    "Manager".into()
}
fn default_credential_field() -> String {
    "ingestion_key".into()
}
fn default_secret_name() -> String {
    "logdna-agent-key".into()
}
fn default_secret_key() -> String {
    "logdna-agent-key".into()
}
fn default_grace_period() -> String {
    "10m".into()
}
fn default_rollout_timeout() -> String {
    "10m".into()
}

/// How the instance is identified, after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceSelector {
    Name {
        name: String,
        resource_group_id: Option<String>,
        region: Option<String>,
        service_name: Option<String>,
    },
    Guid(String),
    Crn(String),
}

/// A spec that passed [`validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    pub instance: InstanceSelector,
    pub refresh_interval: Duration,
    /// The request's base key name (default or `resourceKey.name`); replacements append `:r<N>`.
    pub key_name: String,
    pub rotation: Rotation,
}

/// `spec.rotation`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub interval: Option<Duration>,
    pub grace_period: Duration,
    pub rollout_timeout: Duration,
}

/// Why a spec is invalid: the message of the `InvalidSpec` condition.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SpecError(pub String);

fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Checks what the CRD's schema and CEL rules check (older API servers skip CEL), plus what no
/// schema can express, and derives the key name. Every problem is reported, not just the first.
pub fn validate(request: &IngestionKeyRequest) -> Result<ValidSpec, SpecError> {
    validate_with(request, MIN_ROTATION_INTERVAL)
}

/// [`validate`], accepting rotation intervals down to `min_rotation_interval`.
pub fn validate_with(
    request: &IngestionKeyRequest,
    min_rotation_interval: Duration,
) -> Result<ValidSpec, SpecError> {
    let spec = &request.spec;
    let mut problems = Vec::new();
    let rotation = rotation(spec, min_rotation_interval, &mut problems);
    let instance = instance_selector(&spec.instance, &mut problems);
    check_secrets(spec, &mut problems);
    if spec.resource_key.role.trim().is_empty() {
        problems.push("spec.resourceKey.role must not be empty".into());
    }
    if spec.resource_key.credential_field.trim().is_empty() {
        problems.push("spec.resourceKey.credentialField must not be empty".into());
    }
    let refresh_interval = parse_duration(&spec.refresh_interval);
    match refresh_interval {
        None => problems.push(format!(
            "spec.refreshInterval {:?} is not a duration like 15m or 1h",
            spec.refresh_interval
        )),
        Some(interval) if interval < MIN_REFRESH_INTERVAL => problems.push(format!(
            "spec.refreshInterval must be at least {}s",
            MIN_REFRESH_INTERVAL.as_secs()
        )),
        Some(_) => {}
    }
    let key_name = match non_empty(&spec.resource_key.name) {
        Some(name) if !is_valid_key_name(&name) => {
            problems.push(format!(
                "spec.resourceKey.name {name:?} breaks IBM's rule: at most 180 characters, letters, digits, space and - . _ :"
            ));
            None
        }
        Some(name) => Some(name),
        None => default_key_name(request),
    };
    match (instance, refresh_interval, key_name) {
        (Some(instance), Some(refresh_interval), Some(key_name)) if problems.is_empty() => {
            Ok(ValidSpec {
                instance,
                refresh_interval,
                key_name,
                rotation,
            })
        }
        (_, _, None) if problems.is_empty() => Err(SpecError(
            "the request has no namespace, name or uid yet".into(),
        )),
        _ => Err(SpecError(problems.join("; "))),
    }
}

/// `spec.rotation` and `spec.restartTargets`.
fn rotation(
    spec: &IngestionKeyRequestSpec,
    min_interval: Duration,
    problems: &mut Vec<String>,
) -> Rotation {
    let given = spec.rotation.clone().unwrap_or_default();
    let mut duration = |field: &str, text: &str| {
        parse_duration(text).unwrap_or_else(|| {
            problems.push(format!(
                "spec.rotation.{field} {text:?} is not a duration like 10m or 1h"
            ));
            Duration::ZERO
        })
    };
    let grace_period = duration("gracePeriod", &given.grace_period);
    let rollout_timeout = duration("rolloutTimeout", &given.rollout_timeout);
    let interval = given
        .interval
        .as_deref()
        .map(|text| duration("interval", text));
    if let Some(interval) = interval.filter(|i| *i < min_interval) {
        problems.push(format!(
            "spec.rotation.interval {interval:?} is shorter than the minimum {min_interval:?}"
        ));
    }
    for target in &spec.restart_targets {
        if !is_dns_subdomain(&target.name) {
            problems.push(format!(
                "spec.restartTargets: {:?} is not a valid {} name",
                target.name, target.kind
            ));
        }
    }
    Rotation {
        interval,
        grace_period,
        rollout_timeout,
    }
}

/// Exactly one of name, GUID or CRN.
fn instance_selector(
    instance: &InstanceRef,
    problems: &mut Vec<String>,
) -> Option<InstanceSelector> {
    let selectors = [
        non_empty(&instance.name),
        non_empty(&instance.guid),
        non_empty(&instance.crn),
    ];
    match selectors {
        [Some(name), None, None] => Some(InstanceSelector::Name {
            name,
            resource_group_id: non_empty(&instance.resource_group_id),
            region: non_empty(&instance.region),
            service_name: non_empty(&instance.service_name),
        }),
        [None, Some(guid), None] => Some(InstanceSelector::Guid(guid)),
        [None, None, Some(crn)] if !crn.starts_with("crn:") || crn.split(':').count() < 8 => {
            problems.push(format!(
                "spec.instance.crn {crn:?} is not a CRN (crn:v1:...:...)"
            ));
            None
        }
        [None, None, Some(crn)] => Some(InstanceSelector::Crn(crn)),
        _ => {
            problems.push(
                "set exactly one of spec.instance.name, spec.instance.guid, spec.instance.crn"
                    .into(),
            );
            None
        }
    }
}

/// The API key Secret reference and the agents' Secret.
fn check_secrets(spec: &IngestionKeyRequestSpec, problems: &mut Vec<String>) {
    if spec.api_key_secret_ref.name.trim().is_empty() {
        problems.push("spec.apiKeySecretRef.name must name a Secret in this namespace".into());
    }
    if !is_secret_data_key(&spec.api_key_secret_ref.key) {
        problems.push(format!(
            "spec.apiKeySecretRef.key {:?} is not a valid Secret key",
            spec.api_key_secret_ref.key
        ));
    }
    if !is_dns_subdomain(&spec.secret.name) {
        problems.push(format!(
            "spec.secret.name {:?} is not a valid Secret name",
            spec.secret.name
        ));
    }
    if spec.secret.name == spec.api_key_secret_ref.name {
        // Writing the key there would overwrite the API key; the operator never takes that Secret.
        problems.push(format!(
            "spec.secret.name {:?} is the API key Secret (spec.apiKeySecretRef.name): choose another name for the agents' Secret",
            spec.secret.name
        ));
    }
    if !is_secret_data_key(&spec.secret.key) {
        problems.push(format!(
            "spec.secret.key {:?} is not a valid Secret key",
            spec.secret.key
        ));
    }
    if spec.secret.labels.contains_key(MANAGED_BY_LABEL) {
        problems.push(format!(
            "spec.secret.labels must not set {MANAGED_BY_LABEL}: the operator owns it"
        ));
    }
}

/// IBM's rule for resource key names: at most 180 characters; letters, digits, space, - . _ :
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 180
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '.' | '_' | ':'))
}

/// `ikr:<namespace>:<name>:<first 8 of uid>`: readable in the IBM Cloud console, unique to the
/// request through its UID, stable for its life, and within IBM's 180 characters.
pub fn default_key_name(request: &IngestionKeyRequest) -> Option<String> {
    let namespace = request.metadata.namespace.as_deref()?;
    let name = request.metadata.name.as_deref()?;
    let uid = request.metadata.uid.as_deref()?;
    let uid_part: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    let fixed = "ikr:".len() + namespace.len() + 2 + uid_part.len();
    let room = 180usize.saturating_sub(fixed);
    let name: String = name.chars().take(room).collect();
    Some(format!("ikr:{namespace}:{name}:{uid_part}"))
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_secret_data_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses Go-style durations as used across Kubernetes: `90s`, `15m`, `1h30m`, `500ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.checked_mul(60)?),
            "h" => Duration::from_secs(value.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(yaml: &str) -> IngestionKeyRequest {
        let mut request: IngestionKeyRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1",
            "kind": "IngestionKeyRequest",
            "metadata": {"name": "activity-tracker", "namespace": "ibm-observe", "uid": "0f3c9a1e-2b4d-4e6f-8a9b-0c1d2e3f4a5b"},
            "spec": {"instance": {}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}}
        }))
        .unwrap();
        request.spec = serde_saphyr::from_str(yaml).unwrap();
        request
    }

    #[test]
    fn defaults_follow_the_contract() {
        let r = request("instance: {name: my-at}\napiKeySecretRef: {name: ibmcloud-api-key}\n");
        assert_eq!(r.spec.api_key_secret_ref.key, "apikey");
        assert_eq!(r.spec.resource_key.role, "Manager");
        assert_eq!(r.spec.resource_key.credential_field, "ingestion_key");
        assert_eq!(r.spec.secret.name, "logdna-agent-key");
        assert_eq!(r.spec.secret.key, "logdna-agent-key");
        assert_eq!(r.spec.refresh_interval, "1h");
        assert_eq!(r.spec.deletion_policy, DeletionPolicy::Delete);
        let valid = validate(&r).unwrap();
        assert_eq!(valid.refresh_interval, Duration::from_secs(3600));
        assert_eq!(valid.key_name, "ikr:ibm-observe:activity-tracker:0f3c9a1e");
    }

    #[test]
    fn exactly_one_instance_selector() {
        for yaml in [
            "instance: {}\napiKeySecretRef: {name: k}\n",
            "instance: {name: a, guid: b}\napiKeySecretRef: {name: k}\n",
            "instance: {name: '', guid: '', crn: ''}\napiKeySecretRef: {name: k}\n",
        ] {
            let err = validate(&request(yaml)).unwrap_err();
            assert!(err.0.contains("exactly one"), "{yaml}: {err}");
        }
        let r = request(
            "instance: {crn: 'crn:v1:bluemix:public:logdnaat:us-south:a/acc:guid::'}\napiKeySecretRef: {name: k}\n",
        );
        assert!(matches!(
            validate(&r).unwrap().instance,
            InstanceSelector::Crn(_)
        ));
        let r = request("instance: {crn: 'not-a-crn'}\napiKeySecretRef: {name: k}\n");
        assert!(validate(&r).is_err());
    }

    #[test]
    fn rejects_bad_names_and_intervals() {
        let bad = [
            "resourceKey: {name: 'bad/name'}",
            "refreshInterval: soon",
            "refreshInterval: 0s",
            "refreshInterval: 30s",
            "secret: {name: Bad_Name}",
            "secret: {key: 'a b'}",
            "resourceKey: {credentialField: ''}",
        ];
        for extra in bad {
            let yaml = format!("instance: {{name: a}}\napiKeySecretRef: {{name: k}}\n{extra}\n");
            assert!(
                validate(&request(&yaml)).is_err(),
                "{extra} should be rejected"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let r = request(
            "instance: {}\napiKeySecretRef: {name: k}\nrefreshInterval: soon\nsecret: {key: 'a b'}\n",
        );
        let err = validate(&r).unwrap_err().0;
        for expected in ["exactly one", "refreshInterval", "spec.secret.key"] {
            assert!(err.contains(expected), "{expected} missing in: {err}");
        }
    }

    #[test]
    fn the_api_key_secret_is_never_the_agents_secret() {
        let r =
            request("instance: {name: a}\napiKeySecretRef: {name: creds}\nsecret: {name: creds}\n");
        let err = validate(&r).unwrap_err().0;
        assert!(err.contains("is the API key Secret"), "{err}");
        assert!(
            !err.contains("delete"),
            "never advise deleting the API key Secret: {err}"
        );
    }

    #[test]
    fn default_key_name_fits_ibm_rules_even_for_long_names() {
        let mut r = request("instance: {name: a}\napiKeySecretRef: {name: k}\n");
        r.metadata.name = Some("x".repeat(253));
        let name = default_key_name(&r).unwrap();
        assert!(name.len() <= 180);
        assert!(is_valid_key_name(&name));
        assert!(name.ends_with(":0f3c9a1e"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration(""), None);
    }
}
