//! What to do now about each replaced key: hold it until its successor is in use, schedule its
//! deletion after the grace period, wait, or delete it (retried with back-off).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::{backoff::Backoff, crd::RetiringKey};

/// What to do now about one retiring key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Its successor is not in use yet: no deadline.
    Hold,
    /// Its successor is in use and no deadline is set: delete it after the grace period.
    Schedule,
    /// Not yet: due after this long.
    Wait(Duration),
    /// Due: delete it (or, if the operator did not create it, let it go).
    Delete,
    /// Due, but it is the key the request uses now: never deleted.
    InUse,
}

/// The pure decision for `key`, `successor_in_use` saying whether the Secret and the restart
/// targets run with the current key.
pub fn step(
    key: &RetiringKey,
    current_guid: Option<&str>,
    successor_in_use: bool,
    now: Timestamp,
) -> Step {
    let Some(after) = key.delete_after.as_ref() else {
        return if successor_in_use {
            Step::Schedule
        } else {
            Step::Hold
        };
    };
    if Some(key.guid.as_str()) == current_guid {
        return Step::InUse;
    }
    let backoff = DELETE_RETRY.after(key.delete_attempts);
    let due = after.0.saturating_add(backoff).unwrap_or(after.0);
    match Duration::try_from(due.duration_since(now)) {
        Ok(wait) if !wait.is_zero() => Step::Wait(wait),
        _ => Step::Delete,
    }
}

/// Waiting after failed deletions: 5 s doubling up to 10 minutes.
pub const DELETE_RETRY: Backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(600));

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn key(guid: &str, delete_after: Option<i64>, attempts: u32) -> RetiringKey {
        RetiringKey {
            guid: guid.into(),
            name: format!("name-{guid}"),
            created_by_operator: true,
            delete_after: delete_after
                .map(|s| Time(Timestamp::from_second(s).expect("valid timestamp"))),
            delete_attempts: attempts,
            ..RetiringKey::default()
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    #[test]
    fn a_key_is_held_until_its_successor_is_in_use_then_scheduled() {
        let k = key("a", None, 0);
        let next = |in_use| step(&k, Some("b"), in_use, at(100));
        assert_eq!(next(false), Step::Hold);
        assert_eq!(next(true), Step::Schedule);
    }

    #[test]
    fn a_scheduled_key_waits_for_its_deadline_then_is_deleted() {
        let k = key("a", Some(160), 0);
        let next = |in_use, t| step(&k, Some("b"), in_use, at(t));
        assert_eq!(next(true, 100), Step::Wait(Duration::from_secs(60)));
        assert_eq!(next(true, 160), Step::Delete);
        let stands = "a deadline, once set, stands";
        assert_eq!(next(false, 200), Step::Delete, "{stands}");
    }

    #[test]
    fn failed_deletions_back_off() {
        let k = key("a", Some(100), 3);
        let next = |t| step(&k, Some("b"), true, at(t));
        assert_eq!(next(110), Step::Wait(Duration::from_secs(10)));
        assert_eq!(next(120), Step::Delete);
        assert_eq!(DELETE_RETRY.after(40), Duration::from_secs(600));
    }

    #[test]
    fn the_key_in_use_is_never_deleted() {
        assert_eq!(
            step(&key("a", Some(1), 0), Some("a"), true, at(100)),
            Step::InUse
        );
    }
}
