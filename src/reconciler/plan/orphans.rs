//! Which keys on an instance belong to no live request: the judgement `kubectl ingestionkey audit`
//! and the operator's orphan metric share. Decided only from what IBM Cloud stores (the key's
//! name) and the requests that exist now.

use std::collections::HashMap;

use crate::crd::{ClusterId, IngestionKeyRequest, RequestMark, parse_key_name};

/// The requests that exist, as the audit needs them.
#[derive(Debug, Default)]
pub struct LiveRequests {
    /// `namespace/name` of each request by its UID.
    by_uid: HashMap<String, String>,
    /// `namespace/name` by the first 8 characters of its UID (pre-identity names).
    by_uid_prefix: HashMap<String, String>,
    /// `namespace/name` of the request that records (in use or retiring) each key GUID.
    by_key_guid: HashMap<String, String>,
}

impl LiveRequests {
    pub fn new<'a>(requests: impl IntoIterator<Item = &'a IngestionKeyRequest>) -> Self {
        let mut live = Self::default();
        for request in requests {
            let meta = &request.metadata;
            let (Some(ns), Some(name), Some(uid)) = (&meta.namespace, &meta.name, &meta.uid) else {
                continue;
            };
            let label = format!("{ns}/{name}");
            let prefix: String = uid
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(8)
                .collect();
            live.by_uid.insert(uid.clone(), label.clone());
            live.by_uid_prefix.insert(prefix, label.clone());
            for (guid, _) in recorded_keys(request) {
                live.by_key_guid.insert(guid.to_owned(), label.clone());
            }
        }
        live
    }
}

/// The (GUID, name) of each key a request's status names: the one in use, then those being
/// retired.
pub fn recorded_keys(request: &IngestionKeyRequest) -> impl Iterator<Item = (&str, &str)> {
    let status = request.status.as_ref();
    let in_use = status
        .and_then(|s| s.resource_key.as_ref())
        .map(|k| (k.guid.as_str(), k.name.as_str()));
    let retiring = status
        .into_iter()
        .flat_map(|s| s.retiring_keys.iter())
        .map(|k| (k.guid.as_str(), k.name.as_str()));
    in_use.into_iter().chain(retiring)
}

/// What one active key on an instance is, seen from this cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOwner {
    /// A live request (`namespace/name`) records it or carries its UID.
    Request(String),
    /// Made by this cluster's operator for a request that no longer exists.
    Orphan,
    /// Given to its user by `deletionPolicy: Retain`.
    Retained,
    /// A pre-identity name whose request is not in this cluster: this cluster's orphan, or
    /// another's key. Deleted only when asked for by name.
    UnknownCluster,
    /// Made by the operator of another cluster (its identity).
    OtherCluster(String),
    /// Not of the operator's naming, and recorded by no request: someone else's.
    Foreign,
}

impl KeyOwner {
    /// Whether an audit reports it as something to act on.
    pub fn is_finding(&self) -> bool {
        matches!(self, Self::Orphan | Self::UnknownCluster)
    }
}

/// Whose key `name` (GUID `guid`) is. `namespaces`: when the view is narrowed to some namespaces
/// (an operator watching only those), a key named for another namespace is `Foreign` to it: its
/// request may live where this view cannot see.
pub fn owner_of(
    guid: &str,
    name: &str,
    cluster: &ClusterId,
    live: &LiveRequests,
    namespaces: &[String],
) -> KeyOwner {
    if let Some(request) = live.by_key_guid.get(guid) {
        return KeyOwner::Request(request.clone());
    }
    let Some(parsed) = parse_key_name(name) else {
        return KeyOwner::Foreign;
    };
    if !namespaces.is_empty() && !namespaces.iter().any(|ns| ns == parsed.namespace) {
        return KeyOwner::Foreign;
    }
    if parsed.retained {
        return KeyOwner::Retained;
    }
    match parsed.request {
        RequestMark::Identified { cluster: c, .. } if c != cluster.as_str() => {
            KeyOwner::OtherCluster(c.to_owned())
        }
        RequestMark::Identified { uid, .. } => match live.by_uid.get(uid) {
            Some(request) => KeyOwner::Request(request.clone()),
            None => KeyOwner::Orphan,
        },
        RequestMark::Legacy { uid_prefix } => match live.by_uid_prefix.get(uid_prefix) {
            Some(request) => KeyOwner::Request(request.clone()),
            None => KeyOwner::UnknownCluster,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{default_key_name, replacement_name, retained_name};

    const UID: &str = "0f3c9a1e-5b7d-4c2a-9e8f-123456789abc";
    const GONE_UID: &str = "7a1b2c3d-0000-4000-8000-000000000001";

    fn request(ns: &str, name: &str, uid: &str, recorded: Option<&str>) -> IngestionKeyRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
            "metadata": {"namespace": ns, "name": name, "uid": uid},
            "spec": {"instance": {"name": "a"}, "apiKeySecretRef": {"name": "k"}},
            "status": recorded.map(|guid| serde_json::json!({
                "resourceKey": {"guid": guid, "crn": "", "name": "custom"}
            })),
        }))
        .unwrap()
    }

    #[test]
    fn every_kind_of_key_is_told_apart() {
        let here = ClusterId::parse("here").unwrap();
        let there = ClusterId::parse("there").unwrap();
        let live_request = request("ns", "at", UID, Some("custom-guid"));
        let gone = request("ns", "at", GONE_UID, None);
        let live = LiveRequests::new([&live_request]);
        let owner = |guid: &str, name: &str| owner_of(guid, name, &here, &live, &[]);

        let mine = default_key_name(&live_request, &here).unwrap();
        let at = KeyOwner::Request("ns/at".into());
        assert_eq!(owner("g1", &mine), at);
        assert_eq!(
            owner("g2", &replacement_name(&mine, 2)),
            at,
            "an unrecorded replacement"
        );
        assert_eq!(owner("custom-guid", "my own name"), at, "recorded by GUID");
        let orphan = default_key_name(&gone, &here).unwrap();
        assert_eq!(owner("g3", &orphan), KeyOwner::Orphan);
        assert_eq!(owner("g4", &replacement_name(&orphan, 1)), KeyOwner::Orphan);
        assert_eq!(owner("g5", &retained_name(&orphan)), KeyOwner::Retained);
        let theirs = default_key_name(&gone, &there).unwrap();
        assert_eq!(owner("g6", &theirs), KeyOwner::OtherCluster("there".into()));
        assert_eq!(
            owner("g7", "ikr:ns:at:0f3c9a1e"),
            at,
            "a pre-identity key of a live request"
        );
        assert_eq!(owner("g8", "ikr:ns:at:7a1b2c3d"), KeyOwner::UnknownCluster);
        assert_eq!(owner("g9", "someone else's"), KeyOwner::Foreign);
        assert_eq!(
            owner_of("g3", &orphan, &here, &live, &["other".to_owned()]),
            KeyOwner::Foreign,
            "a view narrowed to other namespaces cannot tell"
        );
        let findings: Vec<bool> = [
            KeyOwner::Orphan,
            KeyOwner::UnknownCluster,
            KeyOwner::Retained,
            at,
        ]
        .iter()
        .map(KeyOwner::is_finding)
        .collect();
        assert_eq!(findings, [true, true, false, false]);
    }
}
