//! The `IngestionKeyRequest` custom resource (group `keysync.dev`, version `v1alpha1`), its names,
//! and the validation the operator applies itself (older API servers ignore CEL rules).
//!
//! Below everything else of the operator: it depends on no other module of ours, and every other
//! module (the metrics included) reads its names and reasons from here.

#[cfg(test)]
mod garbage_tests;
mod key_name;
pub mod reason;
mod spec;
mod status;
mod validate;

use std::time::Duration;

pub use self::{key_name::*, spec::*, status::*, validate::*};

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
/// Annotation on a request, written by the operator: the key creation it is about to start (name,
/// instance, time), so that after a crash it looks for that key before creating another one.
pub const KEY_CREATION_ANNOTATION: &str = "keysync.dev/key-creation";
/// Annotation on a request: any new value asks for one rotation of its key.
pub const ROTATE_ANNOTATION: &str = "keysync.dev/rotate";
/// Label by which an API key Secret opts in to serve the requests of its namespace (required with
/// `--require-opt-in`).
pub const API_KEY_OPT_IN_LABEL: &str = "keysync.dev/api-key";
/// Annotation of an API key Secret: the only roles (comma-separated) requests may ask of it.
pub const ALLOWED_ROLES_ANNOTATION: &str = "keysync.dev/allowed-roles";
/// Annotation of an API key Secret: the only credential fields (comma-separated) requests may copy
/// with it (for example `ingestion_key`, so that no request mints an IAM API key with it).
pub const ALLOWED_CREDENTIAL_FIELDS_ANNOTATION: &str = "keysync.dev/allowed-credential-fields";
/// Annotation by which a workload opts in to being restarted by requests of its namespace
/// (required with `--require-opt-in`).
pub const RESTART_OPT_IN_ANNOTATION: &str = "keysync.dev/restart-on-credential-change";
/// Pod-template annotation set on restart targets: the fingerprint of the credential they must
/// run with (a change rolls them out, as `kubectl rollout restart` does).
pub const FINGERPRINT_ANNOTATION: &str = "keysync.dev/credential-fingerprint";
