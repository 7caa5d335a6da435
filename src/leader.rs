//! Leader election over a `coordination.k8s.io/v1` Lease, so that several replicas can run and
//! only one reconciles. A small loop on `Api<Lease>` rather than a crate: kube has no leader
//! election of its own, the third-party crates pin other kube majors, and the rules fit in a
//! page: take the lease when it is free, expired or ours; renew it; on losing it, stop at once;
//! on a graceful shutdown, release it so that a standby takes over without waiting for expiry.
//! Every write carries the resourceVersion it read, so two candidates never both win.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use tracing::{debug, info, warn};

use crate::lock::lock;

/// Timings. The defaults let a standby take over within about 12 s of a leader's death
/// (expiry after at most 10 s, then the next try) and within about half a second of a graceful
/// exit (the leader releases the lease).
#[derive(Clone, Debug)]
pub struct LeaseTimings {
    /// How long a lease stays valid after its last renewal.
    pub duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// How often a standby tries to take the lease.
    pub retry_every: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            retry_every: Duration::from_millis(500),
        }
    }
}

/// One candidate for the lease `name` in `namespace`.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    /// The lease record (holder, renewTime) as last seen, and when it was first seen so.
    observed: Mutex<Option<(Observed, Instant)>>,
}

/// What identifies one renewal of a lease: a holder that renews changes its renewTime.
type Observed = (Option<String>, Option<MicroTime>);

/// Why a leader stopped holding its lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseLost {
    #[error("lease {name} is now held by {holder:?}")]
    TakenOver { name: String, holder: String },
    #[error("lease {name} could not be renewed for {seconds}s: {error}")]
    RenewFailed {
        name: String,
        seconds: u64,
        error: String,
    },
}

/// Whether `identity` may take (or keep) a lease in the state `spec`, which this candidate has
/// seen unchanged for `unchanged_for` (local monotonic time): it is free, its holder let it
/// expire, or it is already ours. As client-go does, the holder's renewTime is never compared
/// with the local wall clock: a skewed clock on either side must not steal a live lease.
pub fn may_take(spec: &LeaseSpec, identity: &str, unchanged_for: Duration) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
    unchanged_for > Duration::from_secs(duration)
}

/// The lease spec after `identity` takes or renews it at `now`.
pub fn taken(spec: &LeaseSpec, identity: &str, now: Timestamp, duration: Duration) -> LeaseSpec {
    let ours = spec.holder_identity.as_deref() == Some(identity);
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if ours {
            spec.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours)),
        ..spec.clone()
    }
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: String,
        timings: LeaseTimings,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity,
            timings,
            observed: Mutex::new(None),
        }
    }

    /// How long the lease has shown the record in `spec` to this candidate.
    fn unchanged_for(&self, spec: &LeaseSpec) -> Duration {
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let mut observed = lock(&self.observed);
        match observed.as_ref() {
            Some((seen, since)) if *seen == record => since.elapsed(),
            _ => {
                *observed = Some((record, Instant::now()));
                Duration::ZERO
            }
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt: `Ok(true)` when this candidate holds the lease afterwards.
    async fn try_take(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(taken(
                    &LeaseSpec::default(),
                    &self.identity,
                    now,
                    self.timings.duration,
                )),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if !may_take(&spec, &self.identity, self.unchanged_for(&spec)) {
            return Ok(false);
        }
        lease.spec = Some(taken(&spec, &self.identity, now, self.timings.duration));
        // `replace` sends the resourceVersion read above: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) {
        loop {
            // A hung API server must not keep a standby from trying again.
            let attempt = tokio::time::timeout(self.timings.duration, self.try_take());
            match attempt.await.unwrap_or_else(|_| Ok(false)) {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "acquired the leader lease");
                    return;
                }
                Ok(false) => debug!(lease = %self.name, "another replica leads; standing by"),
                Err(error) => {
                    warn!(lease = %self.name, %error, "could not read or take the leader lease")
                }
            }
            tokio::time::sleep(self.timings.retry_every).await;
        }
    }

    /// Renews the lease until it is lost: taken by another, or not renewed within the renew
    /// deadline (lease duration minus one renewal period), counted on the local monotonic clock
    /// from the start of the last successful renewal. Every attempt runs under what is left of
    /// that deadline, so a hung API server cannot hold this past it: when it returns, the caller
    /// stops acting before any standby may take the lease.
    pub async fn hold(&self) -> LeaseLost {
        let deadline = self
            .timings
            .duration
            .saturating_sub(self.timings.renew_every);
        let mut renewed = Instant::now();
        let mut last_error = String::from("no renewal attempted");
        loop {
            let left = deadline.saturating_sub(renewed.elapsed());
            if left.is_zero() {
                return LeaseLost::RenewFailed {
                    name: self.name.clone(),
                    seconds: renewed.elapsed().as_secs(),
                    error: last_error,
                };
            }
            tokio::time::sleep(self.timings.renew_every.min(left)).await;
            let started = Instant::now();
            let left = deadline.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.try_take()).await {
                Ok(Ok(true)) => renewed = started,
                Ok(Ok(false)) => {
                    let holder = self.holder().await.unwrap_or_default();
                    return LeaseLost::TakenOver {
                        name: self.name.clone(),
                        holder,
                    };
                }
                Ok(Err(error)) => {
                    warn!(lease = %self.name, %error, "could not renew the leader lease; retrying");
                    last_error = error.to_string();
                }
                Err(_) => last_error = "the renewal did not answer in time".to_owned(),
            }
        }
    }

    async fn holder(&self) -> Option<String> {
        let read = tokio::time::timeout(self.timings.renew_every, self.api.get_opt(&self.name));
        let lease = read.await.ok()?.ok()??;
        lease.spec?.holder_identity
    }

    /// Gives the lease up (graceful shutdown), if still ours: a standby takes it at its next try.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the leader lease"),
            Err(error) => {
                warn!(lease = %self.name, %error, "could not release the leader lease; it expires by itself")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_900_000_000 + seconds).expect("valid")
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(10),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_free_lease_may_be_taken() {
        assert!(may_take(&LeaseSpec::default(), "me", Duration::ZERO));
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("other", 0)
        };
        assert!(may_take(&released, "me", Duration::ZERO));
    }

    #[test]
    fn a_live_lease_of_another_is_respected_until_seen_unchanged_for_its_duration() {
        let lease = held_by("other", 100);
        assert!(!may_take(&lease, "me", 5 * SECOND));
        assert!(
            !may_take(&lease, "me", 10 * SECOND),
            "valid up to its expiry"
        );
        assert!(may_take(&lease, "me", 11 * SECOND));
    }

    #[test]
    fn a_renew_time_far_in_the_past_by_our_clock_does_not_make_a_lease_expired() {
        // The holder's clock runs an hour behind ours: its renewTime looks an hour old, but
        // this candidate has only just seen it change.
        let lease = held_by("other", -3600);
        assert!(!may_take(&lease, "me", Duration::ZERO));
    }

    #[test]
    fn our_own_lease_is_renewed() {
        assert!(may_take(&held_by("me", 100), "me", Duration::ZERO));
    }

    #[test]
    fn taking_counts_transitions_and_renewing_keeps_the_acquire_time() {
        let took = taken(&held_by("other", 0), "me", at(50), Duration::from_secs(10));
        assert_eq!(took.holder_identity.as_deref(), Some("me"));
        assert_eq!(took.lease_transitions, Some(4));
        assert_eq!(took.acquire_time, Some(MicroTime(at(50))));
        let renewed = taken(&took, "me", at(52), Duration::from_secs(10));
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(50))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(52))));
    }
}
