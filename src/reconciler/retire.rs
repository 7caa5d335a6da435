//! Retiring replaced keys: the last step of every replacement. A replaced key waits in
//! `status.retiringKeys` until its successor is in use (the Secret holds it, the restart targets
//! rolled out), then for the grace period; then it is deleted, retried with back-off until it is.
//! A key the operator did not create is never deleted: it leaves the list as retained.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::{
    Context, ReconcileError,
    keys::{Removal, delete_and_report},
    plan::retire::{DELETE_RETRY, Step, step},
    status,
};
use crate::crd::reason;
use crate::{crd::IngestionKeyRequest, redact::SecretString};

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
                let reason = reason::event::RESOURCE_KEY_RETAINED;
                ctx.events.normal(&request, reason, note).await;
                changed = true;
            }
            Step::Delete => {
                let reason = reason::event::RESOURCE_KEY_DELETED;
                let why = "replaced, and its grace period is over";
                match delete_and_report(ctx, &request, api_key, &key.guid, &key.name, reason, why)
                    .await
                {
                    Ok(Removal::Deleted | Removal::AlreadyGone) => {
                        ctx.metrics.observe_retired_key_deletion(true);
                    }
                    Ok(Removal::NotOurs) => {}
                    Err(error) => {
                        ctx.metrics.observe_retired_key_deletion(false);
                        key.delete_attempts = key.delete_attempts.saturating_add(1);
                        key.last_delete_error = Some(error.to_string());
                        wake(DELETE_RETRY.after(key.delete_attempts));
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
