//! Which key a request uses: what to ask IBM Cloud, and what to do with what it answered.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::{Recorded, ReplaceCause, Wanted, pending_is_wanted, recorded_is_wanted};
use crate::{crd::ResourceKeyStatus, ibm::ResourceKey};

/// What to ask IBM Cloud before deciding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Read the recorded key (`GET /v2/resource_keys/{guid}`): one call per refresh.
    Recorded(String),
    /// Find keys of the wanted name on the instance: a creation may have landed unseen, or the
    /// name is the user's and a key of that name may already exist.
    ByName,
    /// Nothing can exist yet: the default name carries the request's UID and no creation of it
    /// was ever started.
    Nothing,
}

pub fn lookup(recorded: &Recorded, wanted: &Wanted) -> Lookup {
    if recorded
        .pending
        .is_some_and(|p| pending_is_wanted(p, wanted))
    {
        return Lookup::ByName;
    }
    if let Some(key) = recorded.key.filter(|k| recorded_is_wanted(k, wanted)) {
        return Lookup::Recorded(key.guid.clone());
    }
    if wanted.default_name {
        Lookup::Nothing
    } else {
        Lookup::ByName
    }
}

/// What the lookup found.
#[derive(Clone, Debug)]
pub enum Found {
    /// The recorded key as read now (`None`: 404/410).
    Recorded(Option<Box<ResourceKey>>),
    /// Keys of the wanted name on the instance, any state.
    ByName(Vec<ResourceKey>),
    Nothing,
}

/// What to do about the key.
#[derive(Clone, Debug)]
pub enum KeyPlan {
    /// Use this key. `record`: status does not name it yet (or a pending creation must be
    /// cleared). `duplicates`: extra keys of our default name, created by a repeated creation, to
    /// delete. `others`: further active keys of a user-chosen name, left alone.
    Use {
        key: Box<ResourceKey>,
        record: bool,
        duplicates: Vec<ResourceKey>,
        others: usize,
    },
    /// A creation may still land in IBM Cloud: look again after this long, create nothing.
    Wait(Duration),
    /// No usable key exists: record the creation as pending, then create.
    Create,
}

pub fn decide(
    recorded: &Recorded,
    wanted: &Wanted,
    found: Found,
    now: Timestamp,
    grace: Duration,
) -> KeyPlan {
    let mut active: Vec<ResourceKey> = match found {
        Found::Recorded(key) => key
            .map(|k| *k)
            .into_iter()
            .filter(ResourceKey::is_active)
            .collect(),
        Found::ByName(keys) => keys
            .into_iter()
            .filter(|k| k.is_active() && k.name == wanted.key_name)
            .collect(),
        Found::Nothing => Vec::new(),
    };
    if active.is_empty() {
        return match pending_wait(recorded, wanted, now, grace) {
            Some(wait) => KeyPlan::Wait(wait),
            None => KeyPlan::Create,
        };
    }
    // Oldest first: the first creation is the one to keep, unless status already names another.
    active.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    let recorded_guid = recorded.key.map(|k| k.guid.as_str());
    let keep = active
        .iter()
        .position(|k| Some(k.guid.as_str()) == recorded_guid)
        .unwrap_or(0);
    let key = active.remove(keep);
    let record = recorded_guid != Some(key.guid.as_str()) || recorded.pending.is_some();
    let (duplicates, others) = if wanted.default_name {
        (active, 0)
    } else {
        let others = active.len();
        (Vec::new(), others)
    };
    KeyPlan::Use {
        key: Box::new(key),
        record,
        duplicates,
        others,
    }
}

/// How long to wait for a pending creation of the wanted key that is still within its grace.
fn pending_wait(
    recorded: &Recorded,
    wanted: &Wanted,
    now: Timestamp,
    grace: Duration,
) -> Option<Duration> {
    let pending = recorded.pending.filter(|p| pending_is_wanted(p, wanted))?;
    let age =
        Duration::try_from(now.duration_since(pending.started_at.0)).unwrap_or(Duration::ZERO);
    (age < grace).then(|| grace - age + Duration::from_secs(1))
}

/// The key a request used before and no longer uses (moved to another instance or key name, or
/// the key vanished), when it differs from `current`.
pub fn replaced<'a>(recorded: &Recorded<'a>, current_guid: &str) -> Option<&'a ResourceKeyStatus> {
    recorded.key.filter(|k| k.guid != current_guid)
}

/// How the key a request ends up with reaches its status.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordWrite<'a> {
    /// It is the recorded key and no creation is pending: nothing to write.
    Nothing,
    /// A request's first key, just created: recorded by the sync's final status write, one write
    /// fewer (its pending record covers a crash until then).
    WithSync,
    /// Record it now, retiring `replaces` (the key used before) in the same write.
    Now {
        replaces: Option<&'a ResourceKeyStatus>,
    },
}

/// How to record the key with GUID `key_guid`.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord<'a> {
    pub write: RecordWrite<'a>,
    /// Only keys the operator created are ever deleted by it.
    pub created_by_operator: bool,
    /// The `keysync.dev/rotate` value this key answers (recorded as handled).
    pub rotation_request: Option<&'a str>,
}

/// What the key just found or created means for the status. `created`: this reconcile created
/// it; `ours`: the operator made it earlier (a default name, or the name of a pending creation).
pub fn record<'a>(
    recorded: &Recorded<'a>,
    key_guid: &str,
    created: bool,
    ours: bool,
    replace: Option<ReplaceCause>,
    requested: Option<&'a str>,
) -> KeyRecord<'a> {
    // A first key answers whatever rotation request it was created with; later keys only the
    // request that replaced them.
    let handles_request =
        matches!(replace, Some(ReplaceCause::Requested)) || recorded.key.is_none();
    let is_recorded = recorded.key.is_some_and(|k| k.guid == key_guid);
    let write = if is_recorded && recorded.pending.is_none() {
        RecordWrite::Nothing
    } else if created && recorded.key.is_none() {
        RecordWrite::WithSync
    } else {
        RecordWrite::Now {
            replaces: replaced(recorded, key_guid),
        }
    };
    KeyRecord {
        write,
        created_by_operator: created || ours,
        rotation_request: requested.filter(|_| handles_request),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    /// What a `Use` plan says, by GUID.
    struct Used {
        guid: String,
        record: bool,
        duplicates: Vec<String>,
        others: usize,
    }

    fn used(plan: KeyPlan) -> Used {
        match plan {
            KeyPlan::Use {
                key,
                record,
                duplicates,
                others,
            } => Used {
                guid: key.guid.clone(),
                record,
                duplicates: duplicates.into_iter().map(|k| k.guid).collect(),
                others,
            },
            other => panic!("expected Use, got {other:?}"),
        }
    }

    /// `decide` now, with the default grace, for the key `wanted(default_name)`.
    fn decide_now(recorded: &Recorded, default_name: bool, found: Found) -> KeyPlan {
        decide(recorded, &wanted(default_name), found, now(), GRACE)
    }

    #[test]
    fn a_new_default_named_request_looks_nothing_up() {
        assert_eq!(lookup(&Recorded::default(), &wanted(true)), Lookup::Nothing);
    }

    #[test]
    fn a_custom_name_is_looked_up_before_creating() {
        assert_eq!(lookup(&Recorded::default(), &wanted(false)), Lookup::ByName);
    }

    #[test]
    fn a_recorded_key_is_read_by_guid() {
        let k = status_key("k1", NAME, INSTANCE);
        let recorded = using(&k);
        assert_eq!(
            lookup(&recorded, &wanted(true)),
            Lookup::Recorded("k1".into())
        );
    }

    #[test]
    fn a_pending_creation_is_looked_up_by_name_even_with_a_recorded_key() {
        let k = status_key("k1", NAME, INSTANCE);
        let p = pending(NAME, INSTANCE, ago(5));
        let recorded = replacing(&k, &p);
        assert_eq!(lookup(&recorded, &wanted(true)), Lookup::ByName);
    }

    #[test]
    fn a_key_recorded_on_another_instance_is_not_read() {
        let k = status_key("k1", NAME, OTHER_INSTANCE);
        let recorded = using(&k);
        assert_eq!(lookup(&recorded, &wanted(true)), Lookup::Nothing);
        let p = pending(NAME, OTHER_INSTANCE, ago(5));
        let recorded = awaiting(&p);
        assert_eq!(
            lookup(&recorded, &wanted(true)),
            Lookup::Nothing,
            "a pending creation on another instance says nothing about this one"
        );
    }

    #[test]
    fn nothing_found_and_nothing_pending_creates() {
        let plan = decide_now(&Recorded::default(), true, Found::Nothing);
        assert!(matches!(plan, KeyPlan::Create), "{plan:?}");
    }

    #[test]
    fn pending_creation_within_grace_waits_for_the_rest_of_it() {
        let p = pending(NAME, INSTANCE, ago(20));
        let recorded = awaiting(&p);
        let plan = decide_now(&recorded, true, Found::ByName(vec![]));
        let KeyPlan::Wait(wait) = plan else {
            panic!("expected Wait, got {plan:?}")
        };
        assert_eq!(wait, Duration::from_secs(41));
    }

    #[test]
    fn pending_creation_past_grace_creates_again() {
        let p = pending(NAME, INSTANCE, ago(61));
        let recorded = awaiting(&p);
        let plan = decide_now(&recorded, true, Found::ByName(vec![]));
        assert!(matches!(plan, KeyPlan::Create), "{plan:?}");
    }

    #[test]
    fn pending_creation_that_landed_is_used_and_recorded() {
        let p = pending(NAME, INSTANCE, ago(5));
        let recorded = awaiting(&p);
        let found = Found::ByName(vec![key("k1", NAME, "active", "2026-01-01T00:00:00Z")]);
        let plan = used(decide_now(&recorded, true, found));
        assert_eq!(plan.guid, "k1");
        let why = "a key found for a pending creation must be recorded";
        assert!(plan.record, "{why}");
        assert!(plan.duplicates.is_empty());
    }

    #[test]
    fn duplicates_of_a_default_name_keep_the_oldest_and_delete_the_rest() {
        let p = pending(NAME, INSTANCE, ago(90));
        let recorded = awaiting(&p);
        let found = Found::ByName(vec![
            key("late", NAME, "active", "2026-01-02T00:00:00Z"),
            key("first", NAME, "active", "2026-01-01T00:00:00Z"),
            key("gone", NAME, "removed", "2025-12-01T00:00:00Z"),
        ]);
        let plan = used(decide_now(&recorded, true, found));
        assert_eq!(plan.guid, "first");
        let why = "removed keys are not duplicates";
        assert_eq!(plan.duplicates, ["late"], "{why}");
    }

    #[test]
    fn the_recorded_key_wins_over_an_older_duplicate() {
        let k = status_key("late", NAME, INSTANCE);
        let p = pending(NAME, INSTANCE, ago(90));
        let recorded = replacing(&k, &p);
        let found = Found::ByName(vec![
            key("late", NAME, "active", "2026-01-02T00:00:00Z"),
            key("first", NAME, "active", "2026-01-01T00:00:00Z"),
        ]);
        let plan = used(decide_now(&recorded, true, found));
        assert_eq!(plan.guid, "late");
        assert_eq!(plan.duplicates, ["first"]);
    }

    #[test]
    fn keys_of_a_custom_name_are_never_duplicates() {
        let found = Found::ByName(vec![
            key("mine", NAME, "active", "2026-01-01T00:00:00Z"),
            key("theirs", NAME, "active", "2026-01-02T00:00:00Z"),
        ]);
        let plan = used(decide_now(&Recorded::default(), false, found));
        assert_eq!(plan.guid, "mine");
        assert!(plan.record);
        let why = "a user's key name is not ours alone";
        assert!(plan.duplicates.is_empty(), "{why}");
        assert_eq!(plan.others, 1);
    }

    #[test]
    fn a_recorded_key_still_active_is_used_without_writing_status() {
        let k = status_key("k1", NAME, INSTANCE);
        let recorded = using(&k);
        let found = Found::Recorded(Some(Box::new(key(
            "k1",
            NAME,
            "active",
            "2026-01-01T00:00:00Z",
        ))));
        let plan = used(decide_now(&recorded, true, found));
        assert!(!plan.record, "nothing new to record on a refresh");
    }

    #[test]
    fn a_recorded_key_that_vanished_is_created_again() {
        let k = status_key("k1", NAME, INSTANCE);
        let recorded = using(&k);
        for found in [
            Found::Recorded(None),
            Found::Recorded(Some(Box::new(key(
                "k1",
                NAME,
                "removed",
                "2026-01-01T00:00:00Z",
            )))),
        ] {
            let plan = decide_now(&recorded, true, found);
            assert!(matches!(plan, KeyPlan::Create), "{plan:?}");
        }
    }

    #[test]
    fn the_key_used_before_is_replaced_only_when_it_differs() {
        let k = status_key("old", NAME, OTHER_INSTANCE);
        let recorded = using(&k);
        assert_eq!(
            replaced(&recorded, "new").map(|k| k.guid.as_str()),
            Some("old")
        );
        assert!(replaced(&recorded, "old").is_none());
        assert!(replaced(&Recorded::default(), "new").is_none());
    }

    #[test]
    fn a_first_key_created_now_is_recorded_with_the_sync() {
        let plan = record(&Recorded::default(), "k1", true, false, None, Some("r1"));
        assert_eq!(plan.write, RecordWrite::WithSync);
        assert!(plan.created_by_operator);
        assert_eq!(
            plan.rotation_request,
            Some("r1"),
            "a first key takes the request as handled"
        );
    }

    #[test]
    fn the_recorded_key_needs_no_write_unless_a_creation_is_pending() {
        let current = status_key("k1", NAME, INSTANCE);
        let recorded = using(&current);
        assert_eq!(
            record(&recorded, "k1", false, true, None, None).write,
            RecordWrite::Nothing
        );
        let started = pending(NAME, INSTANCE, now());
        let recorded = Recorded {
            key: Some(&current),
            pending: Some(&started),
        };
        assert_eq!(
            record(&recorded, "k1", false, true, None, None).write,
            RecordWrite::Now { replaces: None }
        );
    }

    #[test]
    fn a_replacement_retires_the_key_it_replaces_and_answers_only_its_own_request() {
        let current = status_key("k1", NAME, INSTANCE);
        let recorded = using(&current);
        let plan = record(
            &recorded,
            "k2",
            true,
            false,
            Some(ReplaceCause::Requested),
            Some("r2"),
        );
        assert_eq!(
            plan.write,
            RecordWrite::Now {
                replaces: Some(&current)
            }
        );
        assert_eq!(plan.rotation_request, Some("r2"));
        let plan = record(
            &recorded,
            "k2",
            true,
            false,
            Some(ReplaceCause::Scheduled),
            Some("r2"),
        );
        assert_eq!(
            plan.rotation_request, None,
            "a scheduled rotation does not answer a request"
        );
    }

    #[test]
    fn a_key_found_by_a_custom_name_is_not_ours() {
        let plan = record(&Recorded::default(), "k1", false, false, None, None);
        assert!(!plan.created_by_operator);
        assert_eq!(plan.write, RecordWrite::Now { replaces: None });
    }
}
