//! Every decision of a reconcile, as pure functions of what its phase read: the recorded status,
//! the spec, what IBM Cloud listed, the Secret, and the time. The effectful phases in
//! `reconciler/` gather those inputs, ask here, and carry out the answer; nothing here does I/O,
//! so every branch is unit-tested beside it.
//!
//! - `access`: whether a request may use its API key Secret and restart its targets;
//! - `keys`: which key a request uses, whether it may create one, how a found key is recorded;
//! - `rotation`: whether the key is replaced and why, replacement names, the schedule;
//! - `retire`: what to do now about each replaced key;
//! - `deletion`: what deleting a request must remove in IBM Cloud;
//! - `sync`: whether a request is in sync without asking IBM Cloud, which credential the Secret
//!   gets, the Ready message, and when to look again.

pub mod access;
pub mod deletion;
pub mod keys;
pub mod orphans;
pub mod retire;
pub mod rotation;
pub mod sync;

pub use self::{
    deletion::{DeletionPlan, plan_deletion},
    keys::{Found, KeyPlan, Lookup, decide, lookup, record, replaced},
    rotation::{
        ReplaceCause, RotationState, next_rotation, replace_cause, rotation_state, until,
        wanted_key_name,
    },
    sync::{credential_of, fast_path, last_sync, ready_message, requeue_after, secret_in_sync},
};

pub use crate::crd::{replacement_name, replacement_number};

use crate::{
    crd::{PendingKeyCreation, ResourceKeyStatus},
    ibm::Crn,
};

/// What a request has recorded about its key (from `status`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Recorded<'a> {
    /// The key the request uses (and owns).
    pub key: Option<&'a ResourceKeyStatus>,
    /// A creation started and not yet recorded: a key of that name may exist unseen.
    pub pending: Option<&'a PendingKeyCreation>,
}

/// The key the spec asks for.
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    pub instance_guid: &'a str,
    pub key_name: &'a str,
    /// The name is the request's default (carries its UID): no one else can have made a key of
    /// that name, so extra ones are ours to delete.
    pub default_name: bool,
}

/// The instance GUID inside a resource key's CRN.
pub fn key_instance_guid(key: &ResourceKeyStatus) -> Option<&str> {
    Crn::parse(&key.crn)
        .map(|crn| crn.service_instance)
        .filter(|guid| !guid.is_empty())
}

fn recorded_is_wanted(key: &ResourceKeyStatus, wanted: &Wanted) -> bool {
    key.name == wanted.key_name && key_instance_guid(key) == Some(wanted.instance_guid)
}

fn pending_is_wanted(pending: &PendingKeyCreation, wanted: &Wanted) -> bool {
    pending.name == wanted.key_name && pending.instance_guid == wanted.instance_guid
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Keys, statuses and times shared by the tests of every plan.
    use std::time::Duration;

    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    use super::{Recorded, Wanted};
    use crate::{
        crd::{PendingKeyCreation, ResourceKeyStatus},
        ibm::ResourceKey,
    };

    pub const INSTANCE: &str = "8d7af921-b136-4078-9666-081bd8470d94";
    pub const OTHER_INSTANCE: &str = "1b2c3d4e-0000-4000-8000-000000000000";
    pub const NAME: &str = "ikr:ns:req:1234abcd";
    pub const GRACE: Duration = Duration::from_secs(60);

    pub fn crn(instance: &str, guid: &str) -> String {
        format!("crn:v1:bluemix:public:logdnaat:us-south:a/acct:{instance}:resource-key:{guid}")
    }

    pub fn key(guid: &str, name: &str, state: &str, created: &str) -> ResourceKey {
        serde_json::from_value(serde_json::json!({
            "id": crn(INSTANCE, guid), "guid": guid, "crn": crn(INSTANCE, guid), "name": name,
            "state": state, "created_at": created, "credentials": {"ingestion_key": "x"},
        }))
        .expect("valid key JSON")
    }

    pub fn status_key(guid: &str, name: &str, instance: &str) -> ResourceKeyStatus {
        ResourceKeyStatus {
            guid: guid.into(),
            crn: crn(instance, guid),
            name: name.into(),
            ..ResourceKeyStatus::default()
        }
    }

    pub fn pending(name: &str, instance: &str, started: Timestamp) -> PendingKeyCreation {
        PendingKeyCreation {
            name: name.into(),
            instance_guid: instance.into(),
            started_at: Time(started),
        }
    }

    /// A status that records `key` as the one in use.
    pub fn using(key: &ResourceKeyStatus) -> Recorded<'_> {
        Recorded {
            key: Some(key),
            pending: None,
        }
    }

    /// A status that records a key and a creation still pending (a replacement under way).
    pub fn replacing<'a>(
        key: &'a ResourceKeyStatus,
        pending: &'a PendingKeyCreation,
    ) -> Recorded<'a> {
        Recorded {
            key: Some(key),
            pending: Some(pending),
        }
    }

    /// A status that records a creation still pending.
    pub fn awaiting(pending: &PendingKeyCreation) -> Recorded<'_> {
        Recorded {
            key: None,
            pending: Some(pending),
        }
    }

    pub fn wanted(default_name: bool) -> Wanted<'static> {
        Wanted {
            instance_guid: INSTANCE,
            key_name: NAME,
            default_name,
        }
    }

    pub fn now() -> Timestamp {
        Timestamp::from_second(2_000_000_000).expect("valid timestamp")
    }

    pub fn ago(seconds: i64) -> Timestamp {
        Timestamp::from_second(2_000_000_000 - seconds).expect("valid timestamp")
    }
}
