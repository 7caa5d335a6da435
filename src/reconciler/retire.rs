//! Retiring replaced keys: the last step of every replacement. A replaced key waits in
//! `status.retiringKeys` until its successor is in use (the Secret holds it, the restart targets
//! rolled out), then for the grace period; then it is deleted, retried with back-off until it is.
//! A key the operator did not create is never deleted: it leaves the list as retained.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::runtime::events::EventType;

use super::{Context, ReconcileError, event_reason, keys::delete_and_report, status};
use crate::{
    crd::{IngestionKeyRequest, RetiringKey},
    ibm::KeyDeletion,
    redact::SecretString,
};

/// What to do now about one retiring key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
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
pub(super) fn step(
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
    let backoff = retry_backoff(key.delete_attempts);
    let due = after.0.saturating_add(backoff).unwrap_or(after.0);
    match Duration::try_from(due.duration_since(now)) {
        Ok(wait) if !wait.is_zero() => Step::Wait(wait),
        _ => Step::Delete,
    }
}

/// Waiting after `attempts` failed deletions: 0, then 5 s doubling up to 10 minutes.
fn retry_backoff(attempts: u32) -> Duration {
    if attempts == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
    Duration::from_secs(5)
        .saturating_mul(factor)
        .min(Duration::from_secs(600))
}

/// Carries the retiring keys of `request` one step further. Returns the request as last written
/// and when to look again (`None`: nothing waits).
pub(super) async fn retire(
    ctx: &Context,
    request: IngestionKeyRequest,
    api_key: &SecretString,
    successor_in_use: bool,
    grace: Duration,
) -> Result<(IngestionKeyRequest, Option<Duration>), ReconcileError> {
    let status = request.status.clone().unwrap_or_default();
    if status.retiring_keys.is_empty() {
        return Ok((request, None));
    }
    let current = status.resource_key.as_ref().map(|k| k.guid.as_str());
    let now = Timestamp::now();
    let mut keep = Vec::new();
    let mut next: Option<Duration> = None;
    let mut wake = |wait: Duration| next = Some(next.map_or(wait, |n| n.min(wait)));
    let mut changed = false;
    for mut key in status.retiring_keys.clone() {
        match step(&key, current, successor_in_use, now) {
            Step::Hold | Step::InUse => keep.push(key),
            Step::Schedule => {
                let after = now.saturating_add(grace).unwrap_or(now);
                key.delete_after = Some(Time(after));
                wake(grace);
                keep.push(key);
                changed = true;
            }
            Step::Wait(wait) => {
                wake(wait);
                keep.push(key);
            }
            Step::Delete if !key.created_by_operator => {
                let note = format!(
                    "kept resource key {} ({}) in IBM Cloud: the operator did not create it",
                    key.name, key.guid
                );
                let reason = event_reason::RESOURCE_KEY_RETAINED;
                ctx.publish(&request, EventType::Normal, reason, note).await;
                changed = true;
            }
            Step::Delete => {
                let reason = event_reason::RESOURCE_KEY_DELETED;
                let why = "replaced, and its grace period is over";
                match delete_and_report(ctx, &request, api_key, &key.guid, &key.name, reason, why)
                    .await
                {
                    Ok(KeyDeletion::Deleted | KeyDeletion::AlreadyGone) => {
                        ctx.metrics.observe_retired_key_deletion(true);
                    }
                    Err(error) => {
                        ctx.metrics.observe_retired_key_deletion(false);
                        key.delete_attempts = key.delete_attempts.saturating_add(1);
                        key.last_delete_error = Some(error.to_string());
                        wake(retry_backoff(key.delete_attempts));
                        keep.push(key);
                    }
                }
                changed = true;
            }
        }
    }
    if !changed {
        return Ok((request, next));
    }
    let written = status::retiring_keys(ctx, &request, keep).await?;
    Ok((written, next))
}

#[cfg(test)]
mod tests {
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
        assert_eq!(
            step(&key("a", None, 0), Some("b"), false, at(100)),
            Step::Hold
        );
        assert_eq!(
            step(&key("a", None, 0), Some("b"), true, at(100)),
            Step::Schedule
        );
    }

    #[test]
    fn a_scheduled_key_waits_for_its_deadline_then_is_deleted() {
        let k = key("a", Some(160), 0);
        assert_eq!(
            step(&k, Some("b"), true, at(100)),
            Step::Wait(Duration::from_secs(60))
        );
        assert_eq!(step(&k, Some("b"), true, at(160)), Step::Delete);
        assert_eq!(
            step(&k, Some("b"), false, at(200)),
            Step::Delete,
            "a deadline, once set, stands"
        );
    }

    #[test]
    fn failed_deletions_back_off() {
        let k = key("a", Some(100), 3);
        assert_eq!(
            step(&k, Some("b"), true, at(110)),
            Step::Wait(Duration::from_secs(10))
        );
        assert_eq!(step(&k, Some("b"), true, at(120)), Step::Delete);
        assert_eq!(retry_backoff(40), Duration::from_secs(600));
    }

    #[test]
    fn the_key_in_use_is_never_deleted() {
        assert_eq!(
            step(&key("a", Some(1), 0), Some("a"), true, at(100)),
            Step::InUse
        );
    }
}
