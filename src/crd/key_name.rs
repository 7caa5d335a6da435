//! The names of the keys the operator creates, and what such a name says when read back from IBM
//! Cloud: the only record IBM keeps of which cluster and which request a key was made for.
//!
//! `ikr:<namespace>:<name>:<request uid>:<cluster id>`, then `:r<N>` for the Nth replacement and
//! `:retained` once a request deleted with `deletionPolicy: Retain` gave the key to its user.
//! Keys made before the cluster identity existed are `ikr:<namespace>:<name>:<first 8 of uid>`.

use super::IngestionKeyRequest;

/// IBM's limit on key names.
pub const MAX_KEY_NAME: usize = 180;
const PREFIX: &str = "ikr";
const RETAINED: &str = "retained";
/// Kept free in a default name for the longest suffix (`:r4294967295:retained`), so that no suffix
/// ever cuts into the request's UID or the cluster identity.
const SUFFIX_ROOM: usize = 21;
const UID_LEN: usize = 36;
const LEGACY_UID_LEN: usize = 8;
/// The longest cluster identity (a UID is 36).
pub const MAX_CLUSTER_ID: usize = 40;

/// Which cluster made a key: the `kube-system` namespace's UID unless `--cluster-id` says otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(String);

impl ClusterId {
    /// Letters, digits, `-`, `.` and `_`, at most [`MAX_CLUSTER_ID`] characters.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fits = !text.is_empty()
            && text.len() <= MAX_CLUSTER_ID
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if fits {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!(
                "cluster id {text:?} must be 1 to {MAX_CLUSTER_ID} letters, digits, '-', '.' or '_'"
            ))
        }
    }

    /// The identity of a process not told its cluster (unit tests, `Settings::default`).
    pub fn unidentified() -> Self {
        Self("unidentified".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of the `n`th replacement of the key named `base`: `base:r<n>` (`base` itself for 0),
/// `base` shortened as needed to stay within IBM's 180 characters.
pub fn replacement_name(base: &str, n: u32) -> String {
    if n == 0 {
        return base.to_owned();
    }
    let suffix = format!(":r{n}");
    let room = MAX_KEY_NAME.saturating_sub(suffix.len());
    let kept: String = base.chars().take(room).collect();
    format!("{kept}{suffix}")
}

/// Which replacement of `base` the key `name` is (0: `base` itself), or `None` when it is not a
/// key of that name at all (the request moved to another key name).
pub fn replacement_number(base: &str, name: &str) -> Option<u32> {
    if name == base {
        return Some(0);
    }
    let (stem, n) = name.rsplit_once(":r")?;
    let n: u32 = n.parse().ok().filter(|n| *n > 0)?;
    (replacement_name(base, n) == name && base.starts_with(stem)).then_some(n)
}

/// The name a key keeps once its request was deleted with `deletionPolicy: Retain`: it leaves the
/// operator's name family, so that no audit takes it for an orphan.
pub fn retained_name(name: &str) -> String {
    let suffix = format!(":{RETAINED}");
    let kept: String = name
        .chars()
        .take(MAX_KEY_NAME.saturating_sub(suffix.len()))
        .collect();
    format!("{kept}{suffix}")
}

/// The request's default key name: readable in the IBM Cloud console, unique to the request (its
/// full UID) and to the cluster, stable for its life, within IBM's 180 characters. A request whose
/// status records a key of the pre-identity name keeps that name, so that an upgrade replaces no key.
pub fn default_key_name(request: &IngestionKeyRequest, cluster: &ClusterId) -> Option<String> {
    let namespace = request.metadata.namespace.as_deref()?;
    let name = request.metadata.name.as_deref()?;
    let uid = request.metadata.uid.as_deref()?;
    let legacy = legacy_key_name(namespace, name, uid);
    let status = request.status.as_ref();
    let recorded = status
        .and_then(|s| s.resource_key.as_ref())
        .map(|k| k.name.as_str());
    let pending = request.pending_key_creation();
    let pending = pending.as_ref().map(|p| p.name.as_str());
    if [recorded, pending]
        .into_iter()
        .flatten()
        .any(|n| replacement_number(&legacy, n).is_some())
    {
        return Some(legacy);
    }
    let fixed = PREFIX.len() + namespace.len() + uid.len() + cluster.0.len() + 4;
    let room = MAX_KEY_NAME.saturating_sub(fixed + SUFFIX_ROOM);
    let name: String = name.chars().take(room).collect();
    Some(format!("{PREFIX}:{namespace}:{name}:{uid}:{cluster}"))
}

/// The default name before keys carried a cluster identity.
fn legacy_key_name(namespace: &str, name: &str, uid: &str) -> String {
    let uid_part = uid_prefix(uid);
    let fixed = PREFIX.len() + namespace.len() + 3 + uid_part.len();
    let room = MAX_KEY_NAME.saturating_sub(fixed);
    let name: String = name.chars().take(room).collect();
    format!("{PREFIX}:{namespace}:{name}:{uid_part}")
}

fn uid_prefix(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(LEGACY_UID_LEN)
        .collect()
}

/// What a key name of the operator's family says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorKeyName<'a> {
    pub namespace: &'a str,
    /// The request's name, possibly shortened.
    pub name: &'a str,
    pub request: RequestMark<'a>,
    /// Which replacement (0: the first key).
    pub replacement: u32,
    /// Given to its user by `deletionPolicy: Retain`.
    pub retained: bool,
}

/// How a key name marks its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestMark<'a> {
    /// The request's full UID and the cluster's identity.
    Identified { uid: &'a str, cluster: &'a str },
    /// Made before the identity existed: 8 characters of the UID, no cluster.
    Legacy { uid_prefix: &'a str },
}

/// Reads a key name as the operator writes them; `None` for any other name.
pub fn parse_key_name(key_name: &str) -> Option<OperatorKeyName<'_>> {
    let mut parts = key_name.split(':');
    if parts.next()? != PREFIX {
        return None;
    }
    let namespace = parts.next().filter(|p| !p.is_empty())?;
    let name = parts.next().filter(|p| !p.is_empty())?;
    let uid = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    let (request, tail) = if is_uid(uid) {
        let (cluster, tail) = rest.split_first()?;
        ClusterId::parse(cluster).ok()?;
        (RequestMark::Identified { uid, cluster }, tail)
    } else if uid.len() == LEGACY_UID_LEN && uid.chars().all(|c| c.is_ascii_alphanumeric()) {
        (RequestMark::Legacy { uid_prefix: uid }, &rest[..])
    } else {
        return None;
    };
    let (retained, tail) = match tail.split_last() {
        Some((&RETAINED, before)) => (true, before),
        _ => (false, tail),
    };
    let replacement = match tail {
        [] => 0,
        [r] => r
            .strip_prefix('r')
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n > 0)?,
        _ => return None,
    };
    Some(OperatorKeyName {
        namespace,
        name,
        request,
        replacement,
        retained,
    })
}

fn is_uid(text: &str) -> bool {
    text.len() == UID_LEN
        && text.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Whether the operator, reconciling the request of UID `request_uid` in cluster `cluster`, may
/// delete the key `key_name`: only a key of that request's own name family, made in this cluster
/// (or before identities existed, for this request's UID), or a replacement of its own custom name.
/// A retained key is its user's. Everything else (a status restored from another cluster, a
/// foreign key listed by hand) is left alone.
pub fn may_delete(
    key_name: &str,
    request_uid: &str,
    cluster: &ClusterId,
    custom_base: Option<&str>,
) -> bool {
    match parse_key_name(key_name) {
        Some(parsed) if parsed.retained => false,
        Some(parsed) => match parsed.request {
            RequestMark::Identified { uid, cluster: c } => uid == request_uid && c == cluster.0,
            RequestMark::Legacy { uid_prefix: p } => p == uid_prefix(request_uid),
        },
        None => custom_base.is_some_and(|base| replacement_number(base, key_name).is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UID: &str = "0f3c9a1e-5b7d-4c2a-9e8f-123456789abc";
    const OTHER_UID: &str = "7a1b2c3d-0000-4000-8000-000000000001";

    fn cluster(id: &str) -> ClusterId {
        ClusterId::parse(id).unwrap()
    }

    fn request(namespace: &str, name: &str, uid: &str) -> IngestionKeyRequest {
        let mut r: IngestionKeyRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
            "metadata": {"namespace": namespace, "name": name, "uid": uid},
            "spec": {"instance": {"name": "a"}, "apiKeySecretRef": {"name": "k"}},
        }))
        .unwrap();
        r.metadata.uid = Some(uid.into());
        r
    }

    #[test]
    fn a_default_name_carries_the_full_uid_and_the_cluster_and_reads_back() {
        let c = cluster("c0ffee00-1111-4222-8333-444455556666");
        let name = default_key_name(&request("ibm-observe", "at", UID), &c).unwrap();
        assert_eq!(
            name,
            format!("ikr:ibm-observe:at:{UID}:c0ffee00-1111-4222-8333-444455556666")
        );
        let parsed = parse_key_name(&name).unwrap();
        assert_eq!(
            parsed.request,
            RequestMark::Identified {
                uid: UID,
                cluster: c.as_str()
            }
        );
        let r3 = replacement_name(&name, 3);
        let r3 = parse_key_name(&r3).unwrap();
        assert_eq!((r3.replacement, r3.retained), (3, false));
        let kept = retained_name(&replacement_name(&name, 3));
        let kept = parse_key_name(&kept).unwrap();
        assert_eq!((kept.replacement, kept.retained), (3, true));
    }

    #[test]
    fn a_request_with_a_pre_identity_key_keeps_its_name() {
        let mut r = request("ns", "req", UID);
        let legacy = "ikr:ns:req:0f3c9a1e".to_owned();
        r.status = Some(crate::crd::IngestionKeyRequestStatus {
            resource_key: Some(crate::crd::ResourceKeyStatus {
                name: format!("{legacy}:r2"),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(default_key_name(&r, &cluster("c1")), Some(legacy.clone()));
        let r2 = format!("{legacy}:r2");
        let parsed = parse_key_name(&r2).unwrap();
        assert_eq!(
            parsed.request,
            RequestMark::Legacy {
                uid_prefix: "0f3c9a1e"
            }
        );
        assert_eq!(parsed.replacement, 2);
    }

    #[test]
    fn only_this_request_of_this_cluster_may_delete_its_keys() {
        let here = cluster("here");
        let mine = default_key_name(&request("ns", "req", UID), &here).unwrap();
        let same_names_elsewhere =
            default_key_name(&request("ns", "req", OTHER_UID), &cluster("there")).unwrap();
        let same_cluster_other_uid =
            default_key_name(&request("ns", "req", OTHER_UID), &here).unwrap();
        assert!(may_delete(&mine, UID, &here, None));
        assert!(may_delete(&replacement_name(&mine, 4), UID, &here, None));
        assert!(!may_delete(&retained_name(&mine), UID, &here, None));
        assert!(!may_delete(&same_names_elsewhere, UID, &here, None));
        assert!(!may_delete(&same_names_elsewhere, OTHER_UID, &here, None));
        assert!(!may_delete(&same_cluster_other_uid, UID, &here, None));
        assert!(may_delete("ikr:ns:req:0f3c9a1e:r1", UID, &here, None));
        assert!(!may_delete("ikr:ns:req:7a1b2c3d", UID, &here, None));
        assert!(may_delete("my-key:r2", UID, &here, Some("my-key")));
        assert!(!may_delete("someone-elses", UID, &here, Some("my-key")));
        assert!(!may_delete("someone-elses", UID, &here, None));
    }

    #[test]
    fn other_names_are_not_ours() {
        for name in [
            "my-key",
            "ikr:ns:req",
            "ikr::req:0f3c9a1e",
            "ikr:ns:req:short",
            "ikr:ns:req:0f3c9a1e:r0",
            "ikr:ns:req:0f3c9a1e:x:y",
            &format!("ikr:ns:req:{UID}"),
        ] {
            assert_eq!(parse_key_name(name), None, "{name}");
        }
        assert!(ClusterId::parse("has:colon").is_err());
        assert!(ClusterId::parse("").is_err());
    }

    proptest! {
        #[test]
        fn every_default_name_and_its_suffixes_fit_and_read_back(
            namespace in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
            name in "[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?",
            cluster_id in "[a-z0-9-]{1,40}",
            n in 0u32..,
            retained in any::<bool>(),
        ) {
            let c = cluster(&cluster_id);
            let base = default_key_name(&request(&namespace, &name, UID), &c).unwrap();
            let mut key = replacement_name(&base, n);
            if retained {
                key = retained_name(&key);
            }
            prop_assert!(crate::crd::is_valid_key_name(&key), "{key}");
            let parsed = parse_key_name(&key).unwrap();
            prop_assert_eq!(parsed.namespace, namespace.as_str());
            prop_assert_eq!(parsed.request, RequestMark::Identified { uid: UID, cluster: c.as_str() });
            prop_assert_eq!((parsed.replacement, parsed.retained), (n, retained));
            prop_assert_eq!(may_delete(&key, UID, &c, None), !retained);
        }
    }
}
