//! Decisions, as pure functions: which key a request uses, whether it may create one, what
//! deletion must remove. They see only what was recorded in status, the spec, what IBM Cloud
//! listed and the time; the async code in `keys` and `cleanup` looks things up and carries the
//! plans out. Every branch is unit-tested below.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::{
    crd::{PendingKeyCreation, ResourceKeyStatus},
    ibm::{Crn, ResourceKey},
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

/// Why the key in use is replaced by a new one (in the one order of every replacement: new key,
/// Secret, roll-out, grace period, deletion of the old key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplaceCause {
    /// A new `keysync.dev/rotate` value.
    Requested,
    /// `spec.rotation.interval` has passed.
    Scheduled,
    /// `spec.resourceKey.role` changed.
    RoleChanged,
    /// A one-time credential that the Secret no longer holds (IBM Cloud shows it only once).
    ValueLost,
}

impl std::fmt::Display for ReplaceCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Requested => "rotation requested (annotation keysync.dev/rotate)",
            Self::Scheduled => "scheduled rotation (spec.rotation.interval)",
            Self::RoleChanged => "the role changed",
            Self::ValueLost => "the one-time credential is no longer in the Secret",
        })
    }
}

/// What decides whether the recorded key is replaced, from the request.
#[derive(Clone, Copy, Debug, Default)]
pub struct RotationState<'a> {
    /// The value of the `keysync.dev/rotate` annotation.
    pub requested: Option<&'a str>,
    /// `status.rotation.lastRequest`.
    pub last_request: Option<&'a str>,
    /// `status.rotation.nextRotationTime`, when a schedule is set.
    pub next_rotation: Option<Timestamp>,
    /// The role the recorded key was created with (empty: unknown).
    pub recorded_role: &'a str,
    /// The role the spec asks for, as sent to IBM Cloud.
    pub wanted_role: &'a str,
    /// An earlier replacement is still under way (its successor not yet in use): a new one runs
    /// after it.
    pub replacing: bool,
}

/// Whether the recorded key must be replaced, and why. Nothing is replaced before a key exists
/// (a rotation annotation present at creation is simply taken as handled).
pub fn replace_cause(
    recorded: &Recorded,
    state: &RotationState,
    now: Timestamp,
) -> Option<ReplaceCause> {
    recorded.key?;
    if state.replacing {
        return None;
    }
    if state.requested.is_some() && state.requested != state.last_request {
        return Some(ReplaceCause::Requested);
    }
    if state.next_rotation.is_some_and(|next| next <= now) {
        return Some(ReplaceCause::Scheduled);
    }
    if !state.recorded_role.is_empty() && state.recorded_role != state.wanted_role {
        return Some(ReplaceCause::RoleChanged);
    }
    None
}

/// IBM's limit on key names.
const MAX_KEY_NAME: usize = 180;

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

/// The name of the key the request should use: the recorded key's name while it is a key of
/// `base`, the next replacement's when the key is replaced, `base` after a move to a new name.
pub fn wanted_key_name(base: &str, recorded: Option<&ResourceKeyStatus>, replace: bool) -> String {
    match recorded.and_then(|k| replacement_number(base, &k.name)) {
        Some(n) if replace => replacement_name(base, n.saturating_add(1)),
        Some(n) => replacement_name(base, n),
        None => base.to_owned(),
    }
}

/// What deletion of a request must do in IBM Cloud.
#[derive(Clone, Debug, PartialEq)]
pub enum CleanupPlan {
    /// Nothing to delete: `retained` names the key kept by `deletionPolicy: Retain`.
    Release { retained: Option<ResourceKeyStatus> },
    /// Delete the recorded key (if any), then every active key named `search.1` on instance
    /// `search.0` (a default-named key only this request can have made, possibly landed unseen).
    Delete {
        recorded: Option<ResourceKeyStatus>,
        search: Option<(String, String)>,
    },
}

pub fn cleanup(recorded: &Recorded, retain: bool, default_name: Option<&str>) -> CleanupPlan {
    if retain {
        return CleanupPlan::Release {
            retained: recorded.key.cloned(),
        };
    }
    if recorded.key.is_none() && recorded.pending.is_none() {
        return CleanupPlan::Release { retained: None };
    }
    let in_default_family =
        |name: &str| default_name.is_some_and(|base| replacement_number(base, name).is_some());
    if let Some(key) = recorded.key
        && recorded.pending.is_none()
        && !key.created_by_operator
        && !in_default_family(&key.name)
    {
        // Found by a custom name, made by someone else: used, never deleted.
        return CleanupPlan::Release {
            retained: Some(key.clone()),
        };
    }
    let from_pending = recorded
        .pending
        .map(|p| (p.instance_guid.as_str(), p.name.as_str()));
    let from_key = recorded
        .key
        .and_then(|k| Some((key_instance_guid(k)?, k.name.as_str())));
    let search = from_pending
        .or(from_key)
        .filter(|(_, name)| in_default_family(name))
        .map(|(guid, name)| (guid.to_owned(), name.to_owned()));
    CleanupPlan::Delete {
        recorded: recorded.key.cloned(),
        search,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    const INSTANCE: &str = "8d7af921-b136-4078-9666-081bd8470d94";
    const OTHER_INSTANCE: &str = "1b2c3d4e-0000-4000-8000-000000000000";
    const NAME: &str = "ikr:ns:req:1234abcd";
    const GRACE: Duration = Duration::from_secs(60);

    fn crn(instance: &str, guid: &str) -> String {
        format!("crn:v1:bluemix:public:logdnaat:us-south:a/acct:{instance}:resource-key:{guid}")
    }

    fn key(guid: &str, name: &str, state: &str, created: &str) -> ResourceKey {
        serde_json::from_value(serde_json::json!({
            "id": crn(INSTANCE, guid), "guid": guid, "crn": crn(INSTANCE, guid), "name": name,
            "state": state, "created_at": created, "credentials": {"ingestion_key": "x"},
        }))
        .expect("valid key JSON")
    }

    fn status_key(guid: &str, name: &str, instance: &str) -> ResourceKeyStatus {
        ResourceKeyStatus {
            guid: guid.into(),
            crn: crn(instance, guid),
            name: name.into(),
            ..ResourceKeyStatus::default()
        }
    }

    fn pending(name: &str, instance: &str, started: Timestamp) -> PendingKeyCreation {
        PendingKeyCreation {
            name: name.into(),
            instance_guid: instance.into(),
            started_at: Time(started),
        }
    }

    fn wanted(default_name: bool) -> Wanted<'static> {
        Wanted {
            instance_guid: INSTANCE,
            key_name: NAME,
            default_name,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(2_000_000_000).expect("valid timestamp")
    }

    fn ago(seconds: i64) -> Timestamp {
        Timestamp::from_second(2_000_000_000 - seconds).expect("valid timestamp")
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
        let recorded = Recorded {
            key: Some(&k),
            pending: None,
        };
        assert_eq!(
            lookup(&recorded, &wanted(true)),
            Lookup::Recorded("k1".into())
        );
    }

    #[test]
    fn a_pending_creation_is_looked_up_by_name_even_with_a_recorded_key() {
        let k = status_key("k1", NAME, INSTANCE);
        let p = pending(NAME, INSTANCE, ago(5));
        let recorded = Recorded {
            key: Some(&k),
            pending: Some(&p),
        };
        assert_eq!(lookup(&recorded, &wanted(true)), Lookup::ByName);
    }

    #[test]
    fn a_key_recorded_on_another_instance_is_not_read() {
        let k = status_key("k1", NAME, OTHER_INSTANCE);
        let recorded = Recorded {
            key: Some(&k),
            pending: None,
        };
        assert_eq!(lookup(&recorded, &wanted(true)), Lookup::Nothing);
        let p = pending(NAME, OTHER_INSTANCE, ago(5));
        let recorded = Recorded {
            key: None,
            pending: Some(&p),
        };
        assert_eq!(
            lookup(&recorded, &wanted(true)),
            Lookup::Nothing,
            "a pending creation on another instance says nothing about this one"
        );
    }

    #[test]
    fn nothing_found_and_nothing_pending_creates() {
        let plan = decide(
            &Recorded::default(),
            &wanted(true),
            Found::Nothing,
            now(),
            GRACE,
        );
        assert!(matches!(plan, KeyPlan::Create), "{plan:?}");
    }

    #[test]
    fn pending_creation_within_grace_waits_for_the_rest_of_it() {
        let p = pending(NAME, INSTANCE, ago(20));
        let recorded = Recorded {
            key: None,
            pending: Some(&p),
        };
        let plan = decide(
            &recorded,
            &wanted(true),
            Found::ByName(vec![]),
            now(),
            GRACE,
        );
        let KeyPlan::Wait(wait) = plan else {
            panic!("expected Wait, got {plan:?}")
        };
        assert_eq!(wait, Duration::from_secs(41));
    }

    #[test]
    fn pending_creation_past_grace_creates_again() {
        let p = pending(NAME, INSTANCE, ago(61));
        let recorded = Recorded {
            key: None,
            pending: Some(&p),
        };
        let plan = decide(
            &recorded,
            &wanted(true),
            Found::ByName(vec![]),
            now(),
            GRACE,
        );
        assert!(matches!(plan, KeyPlan::Create), "{plan:?}");
    }

    #[test]
    fn pending_creation_that_landed_is_used_and_recorded() {
        let p = pending(NAME, INSTANCE, ago(5));
        let recorded = Recorded {
            key: None,
            pending: Some(&p),
        };
        let found = Found::ByName(vec![key("k1", NAME, "active", "2026-01-01T00:00:00Z")]);
        let plan = decide(&recorded, &wanted(true), found, now(), GRACE);
        let KeyPlan::Use {
            key,
            record,
            duplicates,
            ..
        } = plan
        else {
            panic!("expected Use, got {plan:?}")
        };
        assert_eq!(key.guid, "k1");
        assert!(
            record,
            "a key found for a pending creation must be recorded"
        );
        assert!(duplicates.is_empty());
    }

    #[test]
    fn duplicates_of_a_default_name_keep_the_oldest_and_delete_the_rest() {
        let p = pending(NAME, INSTANCE, ago(90));
        let recorded = Recorded {
            key: None,
            pending: Some(&p),
        };
        let found = Found::ByName(vec![
            key("late", NAME, "active", "2026-01-02T00:00:00Z"),
            key("first", NAME, "active", "2026-01-01T00:00:00Z"),
            key("gone", NAME, "removed", "2025-12-01T00:00:00Z"),
        ]);
        let KeyPlan::Use {
            key, duplicates, ..
        } = decide(&recorded, &wanted(true), found, now(), GRACE)
        else {
            panic!("expected Use")
        };
        assert_eq!(key.guid, "first");
        let doomed: Vec<&str> = duplicates.iter().map(|k| k.guid.as_str()).collect();
        assert_eq!(doomed, ["late"], "removed keys are not duplicates");
    }

    #[test]
    fn the_recorded_key_wins_over_an_older_duplicate() {
        let k = status_key("late", NAME, INSTANCE);
        let p = pending(NAME, INSTANCE, ago(90));
        let recorded = Recorded {
            key: Some(&k),
            pending: Some(&p),
        };
        let found = Found::ByName(vec![
            key("late", NAME, "active", "2026-01-02T00:00:00Z"),
            key("first", NAME, "active", "2026-01-01T00:00:00Z"),
        ]);
        let KeyPlan::Use {
            key, duplicates, ..
        } = decide(&recorded, &wanted(true), found, now(), GRACE)
        else {
            panic!("expected Use")
        };
        assert_eq!(key.guid, "late");
        assert_eq!(duplicates.len(), 1);
        assert_eq!(duplicates[0].guid, "first");
    }

    #[test]
    fn keys_of_a_custom_name_are_never_duplicates() {
        let found = Found::ByName(vec![
            key("mine", NAME, "active", "2026-01-01T00:00:00Z"),
            key("theirs", NAME, "active", "2026-01-02T00:00:00Z"),
        ]);
        let KeyPlan::Use {
            key,
            record,
            duplicates,
            others,
        } = decide(&Recorded::default(), &wanted(false), found, now(), GRACE)
        else {
            panic!("expected Use")
        };
        assert_eq!(key.guid, "mine");
        assert!(record);
        assert!(duplicates.is_empty(), "a user's key name is not ours alone");
        assert_eq!(others, 1);
    }

    #[test]
    fn a_recorded_key_still_active_is_used_without_writing_status() {
        let k = status_key("k1", NAME, INSTANCE);
        let recorded = Recorded {
            key: Some(&k),
            pending: None,
        };
        let found = Found::Recorded(Some(Box::new(key(
            "k1",
            NAME,
            "active",
            "2026-01-01T00:00:00Z",
        ))));
        let KeyPlan::Use { record, .. } = decide(&recorded, &wanted(true), found, now(), GRACE)
        else {
            panic!("expected Use")
        };
        assert!(!record, "nothing new to record on a refresh");
    }

    #[test]
    fn a_recorded_key_that_vanished_is_created_again() {
        let k = status_key("k1", NAME, INSTANCE);
        let recorded = Recorded {
            key: Some(&k),
            pending: None,
        };
        for found in [
            Found::Recorded(None),
            Found::Recorded(Some(Box::new(key(
                "k1",
                NAME,
                "removed",
                "2026-01-01T00:00:00Z",
            )))),
        ] {
            let plan = decide(&recorded, &wanted(true), found, now(), GRACE);
            assert!(matches!(plan, KeyPlan::Create), "{plan:?}");
        }
    }

    #[test]
    fn the_key_used_before_is_replaced_only_when_it_differs() {
        let k = status_key("old", NAME, OTHER_INSTANCE);
        let recorded = Recorded {
            key: Some(&k),
            pending: None,
        };
        assert_eq!(
            replaced(&recorded, "new").map(|k| k.guid.as_str()),
            Some("old")
        );
        assert!(replaced(&recorded, "old").is_none());
        assert!(replaced(&Recorded::default(), "new").is_none());
    }

    #[test]
    fn replacements_are_numbered_after_the_base_name() {
        assert_eq!(replacement_name(NAME, 0), NAME);
        assert_eq!(replacement_name(NAME, 3), format!("{NAME}:r3"));
        assert_eq!(replacement_number(NAME, NAME), Some(0));
        assert_eq!(replacement_number(NAME, &format!("{NAME}:r12")), Some(12));
        assert_eq!(replacement_number(NAME, "team-key"), None);
        assert_eq!(replacement_number(NAME, &format!("{NAME}:r0")), None);
        assert_eq!(replacement_number(NAME, &format!("{NAME}:rx")), None);
        let long = "k".repeat(180);
        let fifth = replacement_name(&long, 5);
        assert_eq!(fifth.len(), 180, "IBM's limit holds");
        assert_eq!(replacement_number(&long, &fifth), Some(5));
    }

    #[test]
    fn the_wanted_name_follows_the_recorded_key_and_moves_on_replacement() {
        let r2 = status_key("k", &format!("{NAME}:r2"), INSTANCE);
        assert_eq!(wanted_key_name(NAME, Some(&r2), false), r2.name);
        assert_eq!(wanted_key_name(NAME, Some(&r2), true), format!("{NAME}:r3"));
        assert_eq!(wanted_key_name(NAME, None, false), NAME);
        let other = status_key("k", "team-key", INSTANCE);
        assert_eq!(
            wanted_key_name(NAME, Some(&other), true),
            NAME,
            "a move to a new name is the replacement itself"
        );
    }

    #[test]
    fn a_key_is_replaced_on_a_new_request_a_due_schedule_or_a_new_role() {
        let k = status_key("k1", NAME, INSTANCE);
        let recorded = Recorded {
            key: Some(&k),
            pending: None,
        };
        let idle = RotationState {
            requested: Some("v1"),
            last_request: Some("v1"),
            next_rotation: Some(now()),
            recorded_role: "Manager",
            wanted_role: "Manager",
            replacing: false,
        };
        let later = ago(-1);
        assert_eq!(replace_cause(&recorded, &idle, ago(1)), None);
        assert_eq!(
            replace_cause(&recorded, &idle, later),
            Some(ReplaceCause::Scheduled)
        );
        let requested = RotationState {
            requested: Some("v2"),
            ..idle
        };
        assert_eq!(
            replace_cause(&recorded, &requested, ago(1)),
            Some(ReplaceCause::Requested)
        );
        let role = RotationState {
            wanted_role: "Writer",
            ..idle
        };
        assert_eq!(
            replace_cause(&recorded, &role, ago(1)),
            Some(ReplaceCause::RoleChanged)
        );
        let unknown_role = RotationState {
            recorded_role: "",
            wanted_role: "Writer",
            ..idle
        };
        assert_eq!(replace_cause(&recorded, &unknown_role, ago(1)), None);
        let busy = RotationState {
            replacing: true,
            ..requested
        };
        assert_eq!(
            replace_cause(&recorded, &busy, ago(1)),
            None,
            "a rotation asked for during a replacement runs after it"
        );
        assert_eq!(
            replace_cause(&Recorded::default(), &requested, ago(1)),
            None,
            "no key yet: nothing to replace"
        );
    }

    #[test]
    fn cleanup_searches_a_pending_replacement_of_the_default_name() {
        let name = format!("{NAME}:r2");
        let p = pending(&name, INSTANCE, ago(5));
        let recorded = Recorded {
            key: None,
            pending: Some(&p),
        };
        assert_eq!(
            cleanup(&recorded, false, Some(NAME)),
            CleanupPlan::Delete {
                recorded: None,
                search: Some((INSTANCE.into(), name)),
            }
        );
    }

    #[test]
    fn cleanup_with_retain_deletes_nothing() {
        let k = status_key("k1", NAME, INSTANCE);
        let recorded = Recorded {
            key: Some(&k),
            pending: None,
        };
        assert_eq!(
            cleanup(&recorded, true, Some(NAME)),
            CleanupPlan::Release {
                retained: Some(k.clone())
            }
        );
    }

    #[test]
    fn cleanup_without_any_key_asks_nothing() {
        assert_eq!(
            cleanup(&Recorded::default(), false, Some(NAME)),
            CleanupPlan::Release { retained: None }
        );
    }

    #[test]
    fn cleanup_deletes_the_recorded_key_and_searches_its_default_name() {
        let k = status_key("k1", NAME, INSTANCE);
        let recorded = Recorded {
            key: Some(&k),
            pending: None,
        };
        assert_eq!(
            cleanup(&recorded, false, Some(NAME)),
            CleanupPlan::Delete {
                recorded: Some(k.clone()),
                search: Some((INSTANCE.into(), NAME.into())),
            }
        );
    }

    #[test]
    fn cleanup_of_a_pending_creation_searches_where_it_was_started() {
        let p = pending(NAME, OTHER_INSTANCE, ago(5));
        let recorded = Recorded {
            key: None,
            pending: Some(&p),
        };
        assert_eq!(
            cleanup(&recorded, false, Some(NAME)),
            CleanupPlan::Delete {
                recorded: None,
                search: Some((OTHER_INSTANCE.into(), NAME.into())),
            }
        );
    }

    #[test]
    fn cleanup_never_deletes_a_custom_named_key_it_did_not_create() {
        let k = status_key("k1", "team-key", INSTANCE);
        let recorded = Recorded {
            key: Some(&k),
            pending: None,
        };
        assert_eq!(
            cleanup(&recorded, false, Some(NAME)),
            CleanupPlan::Release {
                retained: Some(k.clone())
            }
        );
    }

    #[test]
    fn cleanup_never_searches_a_custom_name() {
        let mut k = status_key("k1", "team-key", INSTANCE);
        k.created_by_operator = true;
        let recorded = Recorded {
            key: Some(&k),
            pending: None,
        };
        assert_eq!(
            cleanup(&recorded, false, Some(NAME)),
            CleanupPlan::Delete {
                recorded: Some(k.clone()),
                search: None,
            }
        );
    }
}
