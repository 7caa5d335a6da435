//! The spec of an `IngestionKeyRequest`: what a user asks for, with the defaults users get
//! when they leave a field out.

// Several `printcolumn(...)` attributes share `type_ = "string"`, which clippy takes for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::status::IngestionKeyRequestStatus;

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
