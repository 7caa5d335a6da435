//! Whether a request is in sync without asking IBM Cloud, which credential the Secret gets, what
//! the Ready message says, and when the request is looked at again.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::ResourceExt;

use super::rotation::until;
use crate::{
    crd::{IngestionKeyRequest, ROTATE_ANNOTATION, ValidSpec},
    ibm::{CredentialError, ResourceKey},
    reconciler::ReconcileError,
    redact::SecretString,
    render::{SecretOwnership, needs_update, ownership, render_secret, stored_credential},
};

/// A sync as (fingerprint of the credential, how long ago).
pub type SyncAge = (String, Duration);

/// The fingerprint the request was last synced to, and how long ago: from its status when that
/// says Ready for this generation, else (or when fresher) from the operator's memory of its own
/// last sync (the status seen by a reconcile can lag behind the operator's last write by a watch
/// event).
pub fn last_sync(
    request: &IngestionKeyRequest,
    remembered: Option<SyncAge>,
    now: Timestamp,
) -> Option<SyncAge> {
    let from_status = request.status.as_ref().and_then(|status| {
        let current = status.is_ready()
            && status.observed_generation == request.metadata.generation
            && request.pending_key_creation().is_none();
        let fingerprint = status.key_fingerprint.clone().filter(|_| current)?;
        let at = status.last_sync_time.as_ref()?.0;
        let age = Duration::try_from(now.duration_since(at)).unwrap_or(Duration::MAX);
        Some((fingerprint, age))
    });
    // The fresher of the two: an in-sync refresh does not rewrite the status, so the operator's
    // memory of its last sync is often the newer one.
    match (from_status, remembered) {
        (Some(status), Some(memory)) if memory.0 == status.0 && memory.1 < status.1 => Some(memory),
        (Some(status), _) => Some(status),
        (None, memory) => memory,
    }
}

/// What the fast path reads before it may skip IBM Cloud.
pub enum FastPath {
    /// A full sync must run.
    FullSync,
    /// In sync as far as the status and memory tell: read the Secret, then ask [`secret_in_sync`].
    ReadSecret {
        fingerprint: String,
        /// How long the request stays in sync if the Secret agrees.
        wait: Duration,
    },
}

/// Whether the request may stay in sync without asking IBM Cloud: it is Ready for its current
/// generation, its refresh is not due, and nothing of its key's lifecycle is under way or due.
///
/// `first_look`: this process has not synced the request yet (it just started, or took over as
/// leader). An in-sync refresh writes nothing, so the status cannot tell when the last refresh
/// ran: instead of refreshing every request at once (thousands of IBM Cloud calls after each
/// deploy or failover), a request the status and the Secret show in sync has its next refresh at a
/// point of one refresh interval fixed by its UID ([`first_refresh_in`]).
pub fn fast_path(
    request: &IngestionKeyRequest,
    valid: &ValidSpec,
    last: Option<SyncAge>,
    now: Timestamp,
    first_look: bool,
) -> FastPath {
    let Some((fingerprint, age)) = last else {
        return FastPath::FullSync;
    };
    let Some(until_rotation) = lifecycle_settled(request, valid, &fingerprint, now) else {
        return FastPath::FullSync;
    };
    // Refreshes are spread by +-10%: one that fires early must still do the full sync.
    let refresh_interval = valid.refresh_interval;
    let wait = if age < refresh_interval.mul_f64(0.85) {
        refresh_interval.saturating_sub(age)
    } else if first_look {
        first_refresh_in(&request.uid().unwrap_or_default(), refresh_interval)
    } else {
        return FastPath::FullSync;
    };
    FastPath::ReadSecret {
        fingerprint,
        wait: until_rotation.map_or(wait, |r| r.min(wait)),
    }
}

/// When a new process first refreshes a request that is in sync: a point between 5% and 100%
/// of `interval`, fixed by the request's UID, so that the refreshes of all requests spread evenly
/// over the first interval as they do in a process that has been running.
pub fn first_refresh_in(uid: &str, interval: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    uid.hash(&mut hasher);
    let share = 0.05 + 0.95 * (hasher.finish() % 10_000) as f64 / 10_000.0;
    interval.mul_f64(share)
}

/// Whether the Secret is ours and holds exactly what a sync to `fingerprint` would write.
pub fn secret_in_sync(request: &IngestionKeyRequest, secret: &Secret, fingerprint: &str) -> bool {
    if ownership(secret, request) != SecretOwnership::Ours {
        return false;
    }
    let Some(stored) = stored_credential(secret, &request.spec.secret.key) else {
        return false;
    };
    stored.fingerprint() == fingerprint
        && render_secret(request, &stored).is_some_and(|desired| !needs_update(secret, &desired))
}

/// Whether nothing of the key's lifecycle is under way or due: no rotation asked for or due, no
/// key retiring, the restart targets rolled out to `fingerprint`. `Some(until the next scheduled
/// rotation)` when settled, `None` when a full sync must run.
fn lifecycle_settled(
    request: &IngestionKeyRequest,
    valid: &ValidSpec,
    fingerprint: &str,
    now: Timestamp,
) -> Option<Option<Duration>> {
    let status = request.status.clone().unwrap_or_default();
    let rotation = status.rotation.clone().unwrap_or_default();
    if !status.retiring_keys.is_empty() {
        return None;
    }
    let requested = request.annotations().get(ROTATE_ANNOTATION);
    if requested.is_some() && requested != rotation.last_request.as_ref() {
        return None;
    }
    if !request.spec.restart_targets.is_empty() {
        let rollout = status.rollout.as_ref()?;
        if rollout.fingerprint != fingerprint || rollout.completed_at.is_none() {
            return None;
        }
    }
    if valid.rotation.interval.is_none() {
        return Some(None);
    }
    let wait = until(rotation.next_rotation_time?.0, now);
    (!wait.is_zero()).then_some(Some(wait))
}

/// The configured credential field of the key, or the error that says why it cannot be used.
pub fn credential_of(
    request: &IngestionKeyRequest,
    key: &ResourceKey,
) -> Result<SecretString, ReconcileError> {
    let field = &request.spec.resource_key.credential_field;
    key.credentials.field(field).map_err(|error| match error {
        CredentialError::Redacted => ReconcileError::CredentialsRedacted {
            key_name: key.name.clone(),
            role: request.spec.resource_key.role.clone(),
        },
        CredentialError::Missing(_) | CredentialError::NotAString(_) => {
            ReconcileError::CredentialFieldMissing {
                key_name: key.name.clone(),
                field: field.clone(),
                present: key
                    .credentials
                    .field_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            }
        }
    })
}

/// The Ready message: what the Secret holds, plus what an admin should know (retiring keys,
/// roll-out trouble).
pub fn ready_message(request: &IngestionKeyRequest, key_name: &str, instance_name: &str) -> String {
    let mut message = format!(
        "Secret {} holds {} of resource key {key_name} on instance {instance_name}",
        request.spec.secret.name, request.spec.resource_key.credential_field,
    );
    let Some(status) = request.status.as_ref() else {
        return message;
    };
    if let Some(rollout) = &status.rollout {
        for missing in &rollout.missing_targets {
            message.push_str(&format!("; restart target {missing}"));
        }
        if rollout.stalled && rollout.completed_at.is_none() {
            message.push_str("; the restart targets have not rolled out (RolloutStalled)");
        }
    }
    for key in &status.retiring_keys {
        let when = key.delete_after.as_ref().map_or_else(
            || "once the new key is in use".to_owned(),
            |t| format!("after {}", t.0),
        );
        message.push_str(&format!("; replaced key {} is deleted {when}", key.name));
        if let Some(error) = &key.last_delete_error {
            message.push_str(&format!(" (last attempt failed: {error})"));
        }
    }
    message
}

/// What is waiting after a sync, each `None` when nothing of that kind waits.
#[derive(Clone, Copy, Debug, Default)]
pub struct Waits {
    /// The refresh interval, jittered.
    pub refresh: Duration,
    /// Restart targets still rolling out: poll after this long.
    pub rollout_poll: Option<Duration>,
    /// The next retiring key due.
    pub retiring: Option<Duration>,
    /// The next scheduled rotation (zero when due).
    pub rotation: Option<Duration>,
}

/// The shortest floor of a requeue: a guard against a loop, never reached by a plan.
pub const MIN_REQUEUE: Duration = Duration::from_millis(100);

/// When to look at the request again: the soonest of what waits. A rotation that is due while a
/// roll-out is still under way cannot start before the roll-out ends (a rotation asked for during
/// a replacement runs after it), so it waits for the roll-out poll instead of asking at once.
pub fn requeue_after(waits: Waits) -> Duration {
    let rotation = match (waits.rotation, waits.rollout_poll) {
        (Some(due), Some(_)) if due.is_zero() => None,
        (rotation, _) => rotation,
    };
    [
        Some(waits.refresh),
        waits.rollout_poll,
        waits.retiring,
        rotation,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(waits.refresh)
    .max(MIN_REQUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn first_refreshes_spread_over_the_interval() {
        let interval = Duration::from_secs(3600);
        let waits: Vec<Duration> = (0..200)
            .map(|i| first_refresh_in(&format!("uid-{i}"), interval))
            .collect();
        assert!(waits.iter().all(|w| *w >= interval / 20 && *w <= interval));
        let first_half = waits.iter().filter(|w| **w < interval / 2).count();
        assert!(
            (70..130).contains(&first_half),
            "{first_half} of 200 in the first half"
        );
        assert_eq!(
            first_refresh_in("a", interval),
            first_refresh_in("a", interval)
        );
    }

    #[test]
    fn the_soonest_wait_wins() {
        let waits = Waits {
            refresh: 60 * MINUTE,
            rollout_poll: Some(Duration::from_secs(5)),
            retiring: Some(MINUTE),
            rotation: None,
        };
        assert_eq!(requeue_after(waits), Duration::from_secs(5));
        let waits = Waits {
            rotation: Some(Duration::from_secs(2)),
            rollout_poll: None,
            ..waits
        };
        assert_eq!(requeue_after(waits), Duration::from_secs(2));
    }

    #[test]
    fn a_due_rotation_waits_for_the_roll_out_instead_of_looping() {
        let waits = Waits {
            refresh: 60 * MINUTE,
            rollout_poll: Some(Duration::from_secs(5)),
            retiring: None,
            rotation: Some(Duration::ZERO),
        };
        assert_eq!(requeue_after(waits), Duration::from_secs(5));
        let no_rollout = Waits {
            rollout_poll: None,
            ..waits
        };
        assert_eq!(
            requeue_after(no_rollout),
            MIN_REQUEUE,
            "a due rotation with nothing in its way runs at once"
        );
    }
}
