//! Whether the key in use is replaced, and why; the names of replacements; the schedule.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;

use super::Recorded;
use crate::{
    crd::{
        IngestionKeyRequest, ROTATE_ANNOTATION, ResourceKeyStatus, ValidSpec, replacement_name,
        replacement_number,
    },
    ibm::ResourceKey,
};

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

/// The name of the key the request should use: the recorded key's name while it is a key of
/// `base`, the next replacement's when the key is replaced, `base` after a move to a new name.
pub fn wanted_key_name(base: &str, recorded: Option<&ResourceKeyStatus>, replace: bool) -> String {
    match recorded.and_then(|k| replacement_number(base, &k.name)) {
        Some(n) if replace => replacement_name(base, n.saturating_add(1)),
        Some(n) => replacement_name(base, n),
        None => base.to_owned(),
    }
}

/// What [`replace_cause`] weighs, read from the request, for the key `role` the spec asks for.
pub fn rotation_state<'a>(
    request: &'a IngestionKeyRequest,
    valid: &ValidSpec,
    role: &'a str,
) -> RotationState<'a> {
    let status = request.status.as_ref();
    let rotation = status.and_then(|s| s.rotation.as_ref());
    RotationState {
        requested: request
            .annotations()
            .get(ROTATE_ANNOTATION)
            .map(String::as_str),
        last_request: rotation.and_then(|r| r.last_request.as_deref()),
        next_rotation: valid
            .rotation
            .interval
            .and(rotation.and_then(|r| r.next_rotation_time.as_ref()))
            .map(|t| t.0),
        recorded_role: status
            .and_then(|s| s.resource_key.as_ref())
            .map_or("", |k| k.role.as_str()),
        wanted_role: role,
        replacing: status.is_some_and(|s| s.retiring_keys.iter().any(|k| k.delete_after.is_none())),
    }
}

/// `status.rotation.nextRotationTime` to write: the last rotation (or the key's creation) plus
/// the interval; `Some(None)` clears it when the schedule was removed; `None` leaves it.
pub fn next_rotation(
    request: &IngestionKeyRequest,
    key: &ResourceKey,
    interval: Option<Duration>,
    now: Timestamp,
) -> Option<Option<Time>> {
    let rotation = request.status.as_ref().and_then(|s| s.rotation.as_ref());
    let recorded = rotation.and_then(|r| r.next_rotation_time.as_ref());
    let Some(interval) = interval else {
        return recorded.map(|_| None);
    };
    let last = rotation
        .and_then(|r| r.last_rotation_time.as_ref())
        .map(|t| t.0);
    let created = key
        .created_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok());
    let base = last.or(created).unwrap_or(now);
    let next = base.saturating_add(interval).unwrap_or(base);
    Some(Some(Time(next)))
}

/// How long from `now` until `at` (zero when past).
pub fn until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

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
        let recorded = using(&k);
        let idle = RotationState {
            requested: Some("v1"),
            last_request: Some("v1"),
            next_rotation: Some(now()),
            recorded_role: "Manager",
            wanted_role: "Manager",
            replacing: false,
        };
        let cause = |state: &RotationState, at| replace_cause(&recorded, state, at);
        assert_eq!(cause(&idle, ago(1)), None);
        assert_eq!(cause(&idle, ago(-1)), Some(ReplaceCause::Scheduled));
        let requested = RotationState {
            requested: Some("v2"),
            ..idle
        };
        assert_eq!(cause(&requested, ago(1)), Some(ReplaceCause::Requested));
        let role = RotationState {
            wanted_role: "Writer",
            ..idle
        };
        assert_eq!(cause(&role, ago(1)), Some(ReplaceCause::RoleChanged));
        let unknown_role = RotationState {
            recorded_role: "",
            ..role
        };
        assert_eq!(cause(&unknown_role, ago(1)), None);
        let busy = RotationState {
            replacing: true,
            ..requested
        };
        let during = "a rotation asked for during a replacement runs after it";
        assert_eq!(cause(&busy, ago(1)), None, "{during}");
        assert_eq!(
            replace_cause(&Recorded::default(), &requested, ago(1)),
            None,
            "no key yet: nothing to replace"
        );
    }
}
