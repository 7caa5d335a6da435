//! Reconcile errors: each is named for what failed, carries its context, and maps to one stable
//! stable condition reason (listed in docs/reference.md). Messages never contain key material.

use crate::{
    crd::{API_KEY_OPT_IN_LABEL, SpecError, reason},
    ibm::{ErrorKind, IbmError},
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] SpecError),

    #[error(
        "the API key Secret {name:?} does not exist in this namespace: create it with the IBM Cloud API key under the key {key:?}"
    )]
    ApiKeySecretNotFound { name: String, key: String },

    #[error(
        "the API key Secret {name:?} has no non-empty key {key:?} (keys present: {}): put the IBM Cloud API key under that key, or set spec.apiKeySecretRef.key",
        present_keys(present)
    )]
    ApiKeyMissingInSecret {
        name: String,
        key: String,
        /// Names of the data keys the Secret does have (never their values); `None` when the
        /// Secret has not opted in, whose keys the request's author may not be allowed to see.
        present: Option<Vec<String>>,
    },

    #[error("API key Secret {name:?} may not be used by this request: {why}")]
    ApiKeySecretNotAllowed { name: String, why: String },

    #[error(
        "IAM rejected the API key in Secret {secret:?} ({source}): put a valid IBM Cloud API key in the Secret"
    )]
    ApiKeyInvalid {
        secret: String,
        source: Box<IbmError>,
    },

    #[error(
        "{source}: give the API key's identity platform Editor (or Operator) and service Manager roles on the instance"
    )]
    PermissionDenied { source: Box<IbmError> },

    #[error(
        "the credentials of resource key {key_name:?} are REDACTED for this API key: its service role on the instance is lower than the key's role {role:?}; give it service role Manager (no further key is created until the spec or the API key changes)"
    )]
    CredentialsRedacted { key_name: String, role: String },

    #[error(
        "no service instance matches {what}: check the name, GUID or CRN and the account of the API key"
    )]
    InstanceNotFound { what: String },

    #[error("{count} service instances are named {name:?}: set resourceGroupId, region or serviceName, or use the guid or crn. Candidates: {}", crns.join(", "))]
    InstanceAmbiguous {
        name: String,
        count: usize,
        crns: Vec<String>,
    },

    #[error(
        "service instance {name:?} ({crn}) is in state {state:?}, not active: wait for provisioning to finish or pick an active instance"
    )]
    InstanceNotActive {
        name: String,
        crn: String,
        state: String,
    },

    #[error("the credentials of resource key {key_name:?} have no field {field:?} (fields present: {}): set spec.resourceKey.credentialField", present.join(", "))]
    CredentialFieldMissing {
        key_name: String,
        field: String,
        present: Vec<String>,
    },

    #[error(
        "Secret {secret:?} exists and is not ours ({detail}): it is never overwritten; delete or rename it, or choose another spec.secret.name"
    )]
    SecretConflict { secret: String, detail: String },

    #[error(
        "the API server refused to write Secret {secret:?}: {message} (an admission webhook, a quota or the operator's RBAC): fix that, the operator retries"
    )]
    SecretWriteRejected { secret: String, message: String },

    #[error("IBM Cloud is unavailable ({source}); retrying with back-off")]
    IbmCloudUnavailable { source: Box<IbmError> },

    #[error("IBM Cloud refused to {action} ({source})")]
    IbmRequestRejected {
        action: &'static str,
        source: Box<IbmError>,
    },

    #[error(
        "could not delete resource key {key:?} ({detail}); the finalizer stays until it is deleted. To keep the key instead, set spec.deletionPolicy to Retain"
    )]
    DeletionBlocked { key: String, detail: String },

    /// Cannot happen for objects read from the API server (no name, no uid).
    #[error("unexpected: {0}")]
    Unexpected(String),

    #[error(
        "the reconcile did not finish within {seconds}s (a Kubernetes API or IBM Cloud call kept it waiting); it was stopped and is retried from where it stopped"
    )]
    DeadlineExceeded { seconds: u64 },

    #[error("Kubernetes API call failed: {action}: {source}")]
    Kubernetes {
        action: &'static str,
        source: kube::Error,
    },
}

fn present_keys(present: &Option<Vec<String>>) -> String {
    match present {
        None => format!("not listed until the Secret is labelled {API_KEY_OPT_IN_LABEL}=true"),
        Some(keys) if keys.is_empty() => "none".into(),
        Some(keys) => keys.join(", "),
    }
}

impl ReconcileError {
    /// The stable reason reported in the Ready condition, events and metrics.
    pub fn reason(&self) -> &'static str {
        use reason::*;
        match self {
            Self::InvalidSpec(_) => INVALID_SPEC,
            Self::ApiKeySecretNotFound { .. } | Self::ApiKeyMissingInSecret { .. } => {
                API_KEY_SECRET_NOT_FOUND
            }
            Self::ApiKeySecretNotAllowed { .. } => API_KEY_SECRET_NOT_ALLOWED,
            Self::ApiKeyInvalid { .. } => API_KEY_INVALID,
            Self::PermissionDenied { .. } | Self::CredentialsRedacted { .. } => PERMISSION_DENIED,
            Self::InstanceNotFound { .. } => INSTANCE_NOT_FOUND,
            Self::InstanceAmbiguous { .. } => INSTANCE_AMBIGUOUS,
            Self::InstanceNotActive { .. } => INSTANCE_NOT_ACTIVE,
            Self::CredentialFieldMissing { .. } => CREDENTIAL_FIELD_MISSING,
            Self::SecretConflict { .. } => SECRET_CONFLICT,
            Self::SecretWriteRejected { .. } => SECRET_WRITE_REJECTED,
            Self::IbmCloudUnavailable { .. } => IBM_CLOUD_UNAVAILABLE,
            // A 400 is about what was asked (a role the service does not know, a bad name):
            // the spec must change. Anything else unexpected (404 on a list, 409) may pass.
            Self::IbmRequestRejected { source, .. } if source.kind() == ErrorKind::BadRequest => {
                INVALID_SPEC
            }
            Self::IbmRequestRejected { .. } => IBM_CLOUD_UNAVAILABLE,
            Self::DeletionBlocked { .. } => DELETION_BLOCKED,
            Self::Kubernetes { .. } | Self::Unexpected(_) | Self::DeadlineExceeded { .. } => {
                KUBERNETES_API_ERROR
            }
        }
    }

    /// Transient errors are retried soon with exponential back-off; permanent ones wait long (or
    /// for a change to the request or its API key Secret). Derived from the reason alone, so that
    /// what the condition says ("retrying with back-off") and what the back-off does always agree.
    pub fn is_transient(&self) -> bool {
        reason::is_transient(self.reason())
    }

    /// When IBM Cloud rate-limited the API key: the time it asked to wait until.
    pub fn retry_at(&self) -> Option<std::time::SystemTime> {
        match self {
            Self::IbmCloudUnavailable { source } => source.retry_at,
            _ => None,
        }
    }

    /// Maps an IBM Cloud error met while doing `action` to the stable reasons.
    pub fn from_ibm(action: &'static str, secret: &str, error: IbmError) -> Self {
        let error = Box::new(error);
        if error.is_transient() {
            return Self::IbmCloudUnavailable { source: error };
        }
        match error.kind() {
            ErrorKind::ApiKeyRejected | ErrorKind::Unauthorized => Self::ApiKeyInvalid {
                secret: secret.to_owned(),
                source: error,
            },
            ErrorKind::Forbidden => Self::PermissionDenied { source: error },
            _ => Self::IbmRequestRejected {
                action,
                source: error,
            },
        }
    }

    /// A failed Secret write: a refusal by the API server (403 RBAC or quota, 400/422 admission
    /// or validation) is `SecretWriteRejected` with the server's words; anything else (a conflict,
    /// an outage) is a Kubernetes error, retried soon.
    pub fn secret_write(action: &'static str, secret: &str) -> impl FnOnce(kube::Error) -> Self {
        move |source| match source {
            kube::Error::Api(status) if matches!(status.code, 400 | 403 | 422) => {
                Self::SecretWriteRejected {
                    secret: secret.to_owned(),
                    message: status.message.clone(),
                }
            }
            source => Self::Kubernetes { action, source },
        }
    }

    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Kubernetes { action, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ibm_errors_map_to_contract_reasons() {
        let err = |kind, status| IbmError {
            status: Some(status),
            ..IbmError::new("do a thing", kind, "msg")
        };
        use ErrorKind::*;
        use reason::{API_KEY_INVALID, IBM_CLOUD_UNAVAILABLE as UNAVAILABLE, PERMISSION_DENIED};
        let cases = [
            (err(ApiKeyRejected, 400), API_KEY_INVALID, false),
            (err(Forbidden, 403), PERMISSION_DENIED, false),
            (err(Server, 503), UNAVAILABLE, true),
            (err(RateLimited, 429), UNAVAILABLE, true),
            (err(BadRequest, 400), reason::INVALID_SPEC, false),
            (err(NotFound, 404), UNAVAILABLE, true),
        ];
        for (error, expected, transient) in cases {
            let mapped = ReconcileError::from_ibm("create resource key", "api-key", error);
            assert_eq!(mapped.reason(), expected, "{mapped}");
            assert_eq!(mapped.is_transient(), transient, "{mapped}");
        }
    }

    #[test]
    fn every_reason_has_one_retry_class() {
        // The same reason never retries both ways: the class is a function of the reason.
        let unavailable = ReconcileError::from_ibm(
            "list resource keys",
            "api-key",
            IbmError {
                status: Some(409),
                ..IbmError::new("x", ErrorKind::BadRequest, "m")
            },
        );
        let rejected = ReconcileError::IbmRequestRejected {
            action: "x",
            source: Box::new(IbmError::new("x", ErrorKind::Gone, "m")),
        };
        assert_eq!(unavailable.reason(), reason::INVALID_SPEC);
        assert!(!unavailable.is_transient());
        assert_eq!(rejected.reason(), reason::IBM_CLOUD_UNAVAILABLE);
        assert!(
            rejected.is_transient(),
            "reported as IbmCloudUnavailable, so retried with back-off"
        );
        assert!(reason::is_transient(reason::DELETION_BLOCKED));
        assert!(!reason::is_transient(reason::SECRET_CONFLICT));
    }

    #[test]
    fn ambiguity_lists_candidates() {
        let e = ReconcileError::InstanceAmbiguous {
            name: "n".into(),
            count: 2,
            crns: vec!["crn:a".into(), "crn:b".into()],
        };
        assert!(e.to_string().contains("crn:a, crn:b"));
        assert_eq!(e.reason(), reason::INSTANCE_AMBIGUOUS);
    }
}
