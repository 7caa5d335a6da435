//! Rolling out restart targets: agents read the key at start, so when the credential changes
//! the workloads that run them are restarted the way `kubectl rollout restart` does it (a
//! pod-template annotation), here carrying the credential's fingerprint so that a restart
//! happens only when the value really changed. The operator then waits for each roll-out (the
//! workload's controller observed the new generation, all replicas updated and available) or for
//! `rolloutTimeout` (RolloutStalled). A target that does not exist is noted, never a failure.

use std::time::Duration;

use k8s_openapi::{
    api::apps::v1::{DaemonSet, Deployment, StatefulSet},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use tracing::info;

use super::{Context, ReconcileError, plan, status};
use crate::crd::reason;
use crate::crd::{
    FIELD_MANAGER, FINGERPRINT_ANNOTATION, IngestionKeyRequest, RESTART_OPT_IN_ANNOTATION,
    RestartKind, RestartTarget, RolloutStatus,
};

/// Where the roll-out to the current credential stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RolloutState {
    /// No restart targets.
    NotNeeded,
    /// Every existing target runs with the current credential.
    Complete,
    /// Some target is still rolling out: look again after this long.
    Waiting(Duration),
}

/// One target as found in the cluster.
enum TargetState {
    Missing(String),
    Restarted,
    RollingOut,
    Done,
}

fn resource(kind: RestartKind) -> ApiResource {
    match kind {
        RestartKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
        RestartKind::Deployment => ApiResource::erase::<Deployment>(&()),
        RestartKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
    }
}

/// Restarts the targets that do not run with `fingerprint` yet and reports the roll-out, writing
/// `status.rollout` when it changes. Returns the request as last written.
pub(super) async fn drive(
    ctx: &Context,
    request: IngestionKeyRequest,
    fingerprint: &str,
    timeout: Duration,
) -> Result<(IngestionKeyRequest, RolloutState), ReconcileError> {
    if request.spec.restart_targets.is_empty() {
        return Ok((request, RolloutState::NotNeeded));
    }
    let now = Timestamp::now();
    let previous = request.status.as_ref().and_then(|s| s.rollout.clone());
    let mut rollout = previous
        .clone()
        .filter(|r| r.fingerprint == fingerprint)
        .unwrap_or_else(|| RolloutStatus {
            fingerprint: fingerprint.to_owned(),
            started_at: Time(now),
            completed_at: None,
            stalled: false,
            missing_targets: Vec::new(),
        });
    let mut missing = Vec::new();
    let mut rolling = 0usize;
    for target in &request.spec.restart_targets {
        match visit(ctx, &request, target, fingerprint).await? {
            TargetState::Missing(why) => missing.push(why),
            TargetState::Restarted | TargetState::RollingOut => rolling += 1,
            TargetState::Done => {}
        }
    }
    if missing != rollout.missing_targets {
        for why in missing
            .iter()
            .filter(|m| !rollout.missing_targets.contains(m))
        {
            let reason = reason::event::RESTART_TARGET_NOT_FOUND;
            let note = format!("restart target {why}: it is not restarted");
            ctx.events.warning(&request, reason, note).await;
        }
        rollout.missing_targets = missing;
    }
    let elapsed = Duration::try_from(now.duration_since(rollout.started_at.0)).unwrap_or_default();
    let state = if rolling == 0 {
        if rollout.completed_at.is_none() {
            rollout.completed_at = Some(Time(now));
            let note = format!(
                "restart targets run with credential {fingerprint} ({}s after the restart)",
                elapsed.as_secs()
            );
            let reason = reason::event::ROLLOUT_COMPLETE;
            ctx.events.normal(&request, reason, note).await;
        }
        RolloutState::Complete
    } else {
        if elapsed >= timeout && !rollout.stalled {
            rollout.stalled = true;
            let note = format!(
                "{rolling} restart target(s) did not roll out within {}s; the replaced key is kept until they do",
                timeout.as_secs()
            );
            let reason = reason::event::ROLLOUT_STALLED;
            ctx.events.warning(&request, reason, note).await;
        }
        RolloutState::Waiting(poll_interval(elapsed))
    };
    if previous.as_ref() == Some(&rollout) {
        return Ok((request, state));
    }
    let written = status::rollout(ctx, &request, &rollout).await?;
    Ok((written, state))
}

/// Roll-outs usually take seconds to minutes: look often at first, then less.
fn poll_interval(elapsed: Duration) -> Duration {
    (elapsed / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Reads one target, restarts it when its pod template does not carry `fingerprint` yet.
async fn visit(
    ctx: &Context,
    request: &IngestionKeyRequest,
    target: &RestartTarget,
    fingerprint: &str,
) -> Result<TargetState, ReconcileError> {
    let namespace = request.namespace().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &namespace, &resource(target.kind));
    let label = format!("{}/{}", target.kind, target.name);
    let object = match api.get_opt(&target.name).await {
        Ok(Some(object)) => object,
        Ok(None) => return Ok(TargetState::Missing(format!("{label} does not exist"))),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            return Ok(TargetState::Missing(format!(
                "{label} cannot be read: {}",
                status.message
            )));
        }
        Err(source) => {
            return Err(ReconcileError::Kubernetes {
                action: "read a restart target",
                source,
            });
        }
    };
    // Only the one pod-template annotation below is ever written, and only on a workload that
    // agreed to it when opt-in is required: a request's author cannot restart what they like.
    let opted_in = object.metadata.annotations.as_ref();
    if !plan::access::restart_allowed(opted_in, ctx.settings.require_opt_in) {
        return Ok(TargetState::Missing(format!(
            "{label} has not opted in to restarts (annotate it {RESTART_OPT_IN_ANNOTATION}=true)"
        )));
    }
    let template_fingerprint = object
        .data
        .pointer("/spec/template/metadata/annotations")
        .and_then(|a| a.get(FINGERPRINT_ANNOTATION))
        .and_then(Value::as_str);
    if template_fingerprint == Some(fingerprint) {
        return Ok(if rolled_out(target.kind, &object) {
            TargetState::Done
        } else {
            TargetState::RollingOut
        });
    }
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        FINGERPRINT_ANNOTATION: fingerprint,
    }}}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch(&target.name, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if matches!(status.code, 403 | 404) => {
            return Ok(TargetState::Missing(format!(
                "{label} cannot be restarted: {}",
                status.message
            )));
        }
        Err(source) => {
            return Err(ReconcileError::Kubernetes {
                action: "restart a restart target",
                source,
            });
        }
    }
    info!(target = %label, credential = fingerprint, "restarted to roll out the new credential");
    let note = format!("restarted {label} to roll out credential {fingerprint}");
    let reason = reason::event::ROLLOUT_RESTARTED;
    ctx.events.normal(request, reason, note).await;
    Ok(TargetState::Restarted)
}

/// Whether the workload finished rolling out its current pod template, as `kubectl rollout
/// status` decides it: its controller observed the current generation, and every replica is
/// updated and available (no old one left).
fn rolled_out(kind: RestartKind, object: &DynamicObject) -> bool {
    let data = &object.data;
    let number = |path: &str| data.pointer(path).and_then(Value::as_i64);
    let generation = object.metadata.generation.unwrap_or(0);
    if number("/status/observedGeneration").unwrap_or(0) < generation {
        return false;
    }
    let status = |field: &str| number(&format!("/status/{field}")).unwrap_or(0);
    match kind {
        RestartKind::DaemonSet => {
            let desired = status("desiredNumberScheduled");
            status("updatedNumberScheduled") >= desired && status("numberAvailable") >= desired
        }
        RestartKind::Deployment => {
            let replicas = number("/spec/replicas").unwrap_or(1);
            status("updatedReplicas") >= replicas
                && status("availableReplicas") >= replicas
                && status("replicas") <= status("updatedReplicas")
        }
        RestartKind::StatefulSet => {
            let replicas = number("/spec/replicas").unwrap_or(1);
            status("updatedReplicas") >= replicas && status("readyReplicas") >= replicas
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(generation: i64, body: Value) -> DynamicObject {
        let mut value = body;
        value["metadata"] = json!({"name": "agent", "generation": generation});
        value["apiVersion"] = json!("apps/v1");
        value["kind"] = json!("Deployment");
        serde_json::from_value(value).expect("object JSON")
    }

    #[test]
    fn a_deployment_is_rolled_out_once_observed_updated_and_available() {
        let done = object(
            3,
            json!({"spec": {"replicas": 2}, "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}}),
        );
        assert!(rolled_out(RestartKind::Deployment, &done));
        let unobserved = object(
            4,
            json!({"spec": {"replicas": 2}, "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}}),
        );
        assert!(!rolled_out(RestartKind::Deployment, &unobserved));
        let old_pod_left = object(
            3,
            json!({"spec": {"replicas": 2}, "status": {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}}),
        );
        assert!(!rolled_out(RestartKind::Deployment, &old_pod_left));
    }

    #[test]
    fn a_daemonset_counts_scheduled_nodes() {
        let rolling = object(
            2,
            json!({"status": {"observedGeneration": 2, "desiredNumberScheduled": 3, "updatedNumberScheduled": 2, "numberAvailable": 3}}),
        );
        assert!(!rolled_out(RestartKind::DaemonSet, &rolling));
        let done = object(
            2,
            json!({"status": {"observedGeneration": 2, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3}}),
        );
        assert!(rolled_out(RestartKind::DaemonSet, &done));
    }

    #[test]
    fn a_statefulset_needs_every_replica_updated_and_ready() {
        let rolling = object(
            5,
            json!({"spec": {"replicas": 2}, "status": {"observedGeneration": 5, "updatedReplicas": 1, "readyReplicas": 2}}),
        );
        assert!(!rolled_out(RestartKind::StatefulSet, &rolling));
    }

    #[test]
    fn polling_slows_down_as_a_rollout_drags_on() {
        assert_eq!(poll_interval(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            poll_interval(Duration::from_secs(100)),
            Duration::from_secs(10)
        );
        assert_eq!(
            poll_interval(Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
    }
}
