//! `kubectl ingestionkey rotate`: a fresh rotation value (what `kubectl rollout restart` is to
//! Deployments), followed with `--wait` to the replaced key's deletion or a stall.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api,
    api::{Patch, PatchParams},
};

use super::{Outcome, PluginError, Session, kube_error};
use crate::crd::{IngestionKeyRequest, READY_CONDITION, ROTATE_ANNOTATION};

/// How many failures in a row (polls a second apart, or deletion attempts) make a stall.
const STALLED_POLLS: u32 = 5;

pub(super) async fn rotate(
    session: &Session,
    request: &str,
    wait: bool,
    timeout: Duration,
) -> Result<Outcome, PluginError> {
    let (ns, name) = match request.split_once('/') {
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => (
            session.namespace.clone().unwrap_or_default(),
            request.to_owned(),
        ),
    };
    rotate_one(&session.client, &ns, &name, wait, timeout).await?;
    Ok(Outcome::Clean)
}

/// Sets a fresh rotation value; with `wait`, follows the status until the rotation is handled and
/// no replaced key is left, printing each step.
async fn rotate_one(
    client: &kube::Client,
    ns: &str,
    name: &str,
    wait: bool,
    timeout: Duration,
) -> Result<(), PluginError> {
    let requests: Api<IngestionKeyRequest> = Api::namespaced(client.clone(), ns);
    let before = requests
        .get(name)
        .await
        .map_err(kube_error(format!("read request {ns}/{name}")))?;
    let old_key = before.status.as_ref().and_then(|s| s.resource_key.clone());
    let value = Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}});
    requests
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(kube_error(format!("annotate request {ns}/{name}")))?;
    println!("asked {ns}/{name} for a rotation ({ROTATE_ANNOTATION}={value})");
    if !wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut replaced = false;
    let mut rolling_out = false;
    // Consecutive polls that saw Ready=False: a failure that outlasts the operator's quick retries.
    let mut not_ready = 0;
    loop {
        let request = requests
            .get(name)
            .await
            .map_err(kube_error(format!("read request {ns}/{name}")))?;
        let status = request.status.clone().unwrap_or_default();
        let handled = status
            .rotation
            .as_ref()
            .and_then(|r| r.last_request.as_deref())
            == Some(value.as_str());
        let current = status.resource_key.clone();
        if handled
            && !replaced
            && current.as_ref().map(|k| &k.guid) != old_key.as_ref().map(|k| &k.guid)
        {
            replaced = true;
            let key = current
                .as_ref()
                .map(|k| k.name.as_str())
                .unwrap_or_default();
            let secret = status.secret_name.clone().unwrap_or_default();
            println!("new key {key} in use: Secret {secret} holds it");
        }
        // The roll-out to the new key (a status left from an earlier one does not count).
        let rollout = status
            .rollout
            .as_ref()
            .filter(|r| replaced && status.key_fingerprint.as_deref() == Some(&r.fingerprint));
        if !rolling_out && rollout.is_some_and(|r| r.completed_at.is_none()) {
            rolling_out = true;
            println!("restart targets rolling out to the new key");
        }
        if rollout.is_some_and(|r| r.stalled && r.completed_at.is_none()) {
            return Err(PluginError::Rotation(format!(
                "{ns}/{name}: the restart targets did not roll out (RolloutStalled); the replaced key is kept"
            )));
        }
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == READY_CONDITION);
        not_ready = match ready {
            Some(c) if c.status == "False" => not_ready + 1,
            _ => 0,
        };
        if let Some(c) = ready.filter(|_| not_ready >= STALLED_POLLS) {
            return Err(PluginError::Rotation(format!(
                "{ns}/{name}: the rotation stalled: {} ({})",
                c.reason, c.message
            )));
        }
        if let Some(failing) = old_key.as_ref().and_then(|old| {
            status
                .retiring_keys
                .iter()
                .find(|k| k.guid == old.guid && k.delete_attempts >= STALLED_POLLS)
        }) {
            let why = failing.last_delete_error.as_deref().unwrap_or("unknown");
            return Err(PluginError::Rotation(format!(
                "{ns}/{name}: the rotation stalled: the replaced key {} could not be deleted ({} attempts: {why})",
                failing.name, failing.delete_attempts
            )));
        }
        let old_gone = old_key
            .as_ref()
            .is_none_or(|old| !status.retiring_keys.iter().any(|k| k.guid == old.guid));
        if replaced && old_gone {
            let old = old_key.as_ref().map(|k| k.name.as_str()).unwrap_or("none");
            println!("replaced key {old} deleted: rotation complete");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(PluginError::Rotation(format!(
                "{ns}/{name}: the rotation did not complete within {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
