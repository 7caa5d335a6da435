//! Pure functions: the Secret a request should produce, and whose a Secret found in the cluster is.
//! No client, no I/O: everything here is unit-tested from plain objects.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::Resource;

use crate::{
    crd::{IngestionKeyRequest, MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    redact::SecretString,
};

/// Annotation naming the request a Secret was written for (readable by humans; ownership itself
/// is decided by the controlling owner reference).
pub const REQUEST_ANNOTATION: &str = "keysync.dev/request";

/// The Secret for `request` holding `credential` under `spec.secret.key`, labelled as ours and
/// controlled by the request (so that garbage collection removes it with the request).
/// `None` when the request has not been stored by the API server yet (no uid).
pub fn render_secret(request: &IngestionKeyRequest, credential: &SecretString) -> Option<Secret> {
    let owner = request.controller_owner_ref(&())?;
    let spec = &request.spec.secret;
    let mut labels = spec.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let mut annotations = spec.annotations.clone();
    annotations.insert(REQUEST_ANNOTATION.into(), request.metadata.name.clone()?);
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: request.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            spec.key.clone(),
            ByteString(credential.expose().as_bytes().to_vec()),
        )])),
        ..Default::default()
    })
}

/// The value in `secret` whose fingerprint is `fingerprint`, under whichever data key (a one-time
/// credential is looked for where it was written, even if `spec.secret.key` changed since).
pub fn held_credential(secret: &Secret, fingerprint: &str) -> Option<SecretString> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(_, ByteString(bytes))| String::from_utf8(bytes.clone()).ok())
        .map(SecretString::new)
        .find(|value| value.fingerprint() == fingerprint)
}

/// Whose a Secret in the cluster is, as far as this request is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretOwnership {
    /// Labelled as ours and controlled by this request.
    Ours,
    /// Labelled as ours but controlled by another request (which may or may not still exist).
    OtherRequest { name: String, uid: String },
    /// Labelled as ours with no controlling owner: an orphan of ours, free to adopt.
    OrphanOfOurs,
    /// Not labelled as ours, or controlled by something that is not a request: never touched.
    Foreign,
}

/// Classifies `existing` for `request`: a Secret is ours only when it carries our managed-by
/// label and this request as its controlling owner; anything else is never overwritten.
pub fn ownership(existing: &Secret, request: &IngestionKeyRequest) -> SecretOwnership {
    let labelled = existing
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .map(String::as_str)
        == Some(MANAGED_BY_VALUE);
    if !labelled {
        return SecretOwnership::Foreign;
    }
    let controller = existing
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match controller {
        None => SecretOwnership::OrphanOfOurs,
        Some(owner)
            if is_request_ref(owner) && Some(&owner.uid) == request.metadata.uid.as_ref() =>
        {
            SecretOwnership::Ours
        }
        Some(owner) if is_request_ref(owner) => SecretOwnership::OtherRequest {
            name: owner.name.clone(),
            uid: owner.uid.clone(),
        },
        Some(_) => SecretOwnership::Foreign,
    }
}

fn is_request_ref(owner: &OwnerReference) -> bool {
    owner.kind == IngestionKeyRequest::kind(&())
        && owner.api_version == IngestionKeyRequest::api_version(&())
}

/// Whether `existing` differs from `desired` in anything we manage: data, our labels and
/// annotations, the controlling owner. Fields others added are left alone and do not count.
pub fn needs_update(existing: &Secret, desired: &Secret) -> bool {
    let subset = |want: &Option<BTreeMap<String, String>>,
                  have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    existing.data != desired.data
        || !subset(&desired.metadata.labels, &existing.metadata.labels)
        || !subset(
            &desired.metadata.annotations,
            &existing.metadata.annotations,
        )
        || desired
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|want| {
                !existing
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|have| have.uid == want.uid && have.controller == Some(true))
            })
}

/// The credential currently stored in a Secret under `key`, if any.
pub fn stored_credential(existing: &Secret, key: &str) -> Option<SecretString> {
    let bytes = existing.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .map(SecretString::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::IngestionKeyRequestSpec;

    fn request(uid: &str) -> IngestionKeyRequest {
        let spec: IngestionKeyRequestSpec =
            serde_json::from_value(serde_json::json!({"instance": {"name": "at"}, "apiKeySecretRef": {"name": "k"}, "secret": {"labels": {"team": "obs"}}}))
                .unwrap();
        let mut request = IngestionKeyRequest::new("at", spec);
        request.metadata.namespace = Some("ibm-observe".into());
        request.metadata.uid = Some(uid.into());
        request
    }

    #[test]
    fn renders_labelled_owned_secret_with_the_credential() {
        let secret = render_secret(&request("uid-1"), &SecretString::new("ingest-123")).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("logdna-agent-key"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("ibm-observe"));
        let labels = secret.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(labels["team"], "obs");
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
        assert_eq!(
            stored_credential(&secret, "logdna-agent-key")
                .unwrap()
                .expose(),
            "ingest-123"
        );
        assert_eq!(ownership(&secret, &request("uid-1")), SecretOwnership::Ours);
        assert_eq!(
            ownership(&secret, &request("uid-2")),
            SecretOwnership::OtherRequest {
                name: "at".into(),
                uid: "uid-1".into()
            }
        );
    }

    #[test]
    fn unstored_request_renders_nothing() {
        let mut r = request("x");
        r.metadata.uid = None;
        assert!(render_secret(&r, &SecretString::new("v")).is_none());
    }

    #[test]
    fn unlabelled_or_foreign_owned_secrets_are_foreign() {
        let mut secret = render_secret(&request("uid-1"), &SecretString::new("v")).unwrap();
        let req = request("uid-1");
        secret.metadata.labels = Some(BTreeMap::new());
        assert_eq!(ownership(&secret, &req), SecretOwnership::Foreign);
        let mut secret = render_secret(&req, &SecretString::new("v")).unwrap();
        secret.metadata.owner_references.as_mut().unwrap()[0].kind = "Deployment".into();
        assert_eq!(ownership(&secret, &req), SecretOwnership::Foreign);
        secret.metadata.owner_references = None;
        assert_eq!(ownership(&secret, &req), SecretOwnership::OrphanOfOurs);
    }

    #[test]
    fn update_needed_only_for_managed_differences() {
        let req = request("uid-1");
        let desired = render_secret(&req, &SecretString::new("v1")).unwrap();
        let mut existing = desired.clone();
        existing
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("added-by-someone".into(), "x".into());
        assert!(!needs_update(&existing, &desired));
        existing.data = Some(BTreeMap::from([(
            "logdna-agent-key".into(),
            ByteString(b"edited".to_vec()),
        )]));
        assert!(needs_update(&existing, &desired));
        let rotated = render_secret(&req, &SecretString::new("v2")).unwrap();
        assert!(needs_update(&desired, &rotated));
    }
}
