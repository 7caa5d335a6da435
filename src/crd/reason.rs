//! The stable reasons users and tools read: the `Ready` condition's reasons (docs/reference.md
//! lists them) and the reasons of the events the operator publishes. They are part of the API,
//! so they live with its types; the controller and the metrics both read them from here.

pub const KEY_SYNCED: &str = "KeySynced";
pub const INVALID_SPEC: &str = "InvalidSpec";
pub const API_KEY_SECRET_NOT_FOUND: &str = "ApiKeySecretNotFound";
/// The API key Secret exists but does not allow this request (not opted in, or it narrows the
/// roles or credential fields): it was not read.
pub const API_KEY_SECRET_NOT_ALLOWED: &str = "ApiKeySecretNotAllowed";
pub const API_KEY_INVALID: &str = "ApiKeyInvalid";
pub const PERMISSION_DENIED: &str = "PermissionDenied";
pub const INSTANCE_NOT_FOUND: &str = "InstanceNotFound";
pub const INSTANCE_AMBIGUOUS: &str = "InstanceAmbiguous";
pub const INSTANCE_NOT_ACTIVE: &str = "InstanceNotActive";
pub const CREDENTIAL_FIELD_MISSING: &str = "CredentialFieldMissing";
pub const SECRET_CONFLICT: &str = "SecretConflict";
pub const IBM_CLOUD_UNAVAILABLE: &str = "IbmCloudUnavailable";
pub const DELETION_BLOCKED: &str = "DeletionBlocked";
pub const SECRET_WRITE_REJECTED: &str = "SecretWriteRejected";
/// Not a condition reason: a Kubernetes API call failed, so no status could be written either.
pub const KUBERNETES_API_ERROR: &str = "KubernetesApiError";

/// Every reason a failed reconcile can report (`ReconcileError::reason` in the reconciler): the
/// metrics start each of them at 0, so that `rate()` and absence alerts work from the start.
pub const FAILURES: [&str; 14] = [
    INVALID_SPEC,
    API_KEY_SECRET_NOT_FOUND,
    API_KEY_SECRET_NOT_ALLOWED,
    API_KEY_INVALID,
    PERMISSION_DENIED,
    INSTANCE_NOT_FOUND,
    INSTANCE_AMBIGUOUS,
    INSTANCE_NOT_ACTIVE,
    CREDENTIAL_FIELD_MISSING,
    SECRET_CONFLICT,
    IBM_CLOUD_UNAVAILABLE,
    DELETION_BLOCKED,
    SECRET_WRITE_REJECTED,
    KUBERNETES_API_ERROR,
];

/// Reasons retried soon (1 s doubling to 5 min); every other reason is a problem a person must
/// fix, retried late (5 min doubling to 1 h) or on the next change.
pub fn is_transient(reason: &str) -> bool {
    matches!(
        reason,
        IBM_CLOUD_UNAVAILABLE | INSTANCE_NOT_ACTIVE | DELETION_BLOCKED | KUBERNETES_API_ERROR
    )
}

/// Reasons of the events the operator publishes (besides the failure reasons above, which are
/// published as Warning events when the Ready condition changes to them).
pub mod event {
    pub const SECRET_CREATED: &str = "SecretCreated";
    pub const SECRET_UPDATED: &str = "SecretUpdated";
    pub const RESOURCE_KEY_CREATED: &str = "ResourceKeyCreated";
    pub const RESOURCE_KEY_REUSED: &str = "ResourceKeyReused";
    pub const RESOURCE_KEY_DELETED: &str = "ResourceKeyDeleted";
    pub const RESOURCE_KEY_RETAINED: &str = "ResourceKeyRetained";
    pub const DUPLICATE_RESOURCE_KEY_DELETED: &str = "DuplicateResourceKeyDeleted";
    pub const RESOURCE_KEY_DELETE_FAILED: &str = "ResourceKeyDeleteFailed";
    pub const ROTATION_STARTED: &str = "RotationStarted";
    pub const ROLLOUT_RESTARTED: &str = "RolloutRestarted";
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    pub const ROLLOUT_STALLED: &str = "RolloutStalled";
    pub const RESTART_TARGET_NOT_FOUND: &str = "RestartTargetNotFound";
    pub const SECRET_DELETED: &str = "SecretDeleted";
}
