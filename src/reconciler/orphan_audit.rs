//! The leader's slow orphan audit (`--orphan-audit-interval`): every interval, one key listing per
//! instance the watched requests use (under the IBM budget, with the API key of a request on that
//! instance), and the count of keys of this cluster's naming whose request is gone, exported as
//! `ingestion_key_operator_orphan_keys{instance}`. It only counts: deleting is the admin's call
//! (`kubectl ingestionkey audit --delete-orphans`).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use kube::runtime::reflector::Store;
use tracing::{debug, info, warn};

use super::{
    Context, api_key,
    controller::Shutdown,
    plan::orphans::{KeyOwner, LiveRequests, owner_of},
};
use crate::crd::IngestionKeyRequest;

/// Runs audits every `interval` until `shutdown`, the first once the caches have synced.
pub(super) async fn run(
    ctx: Arc<Context>,
    stores: Vec<Store<IngestionKeyRequest>>,
    interval: Duration,
    shutdown: Shutdown,
) {
    let audits = async {
        for store in &stores {
            if store.wait_until_ready().await.is_err() {
                return;
            }
        }
        loop {
            audit_once(&ctx, &stores).await;
            tokio::time::sleep(interval).await;
        }
    };
    tokio::select! {
        () = audits => {}
        () = shutdown => {}
    }
}

async fn audit_once(ctx: &Context, stores: &[Store<IngestionKeyRequest>]) {
    let requests: Vec<Arc<IngestionKeyRequest>> = stores.iter().flat_map(Store::state).collect();
    let live = LiveRequests::new(requests.iter().map(|r| r.as_ref()));
    // Each instance in use (by GUID), with its name and the requests on it.
    let mut instances: BTreeMap<String, (String, Vec<&IngestionKeyRequest>)> = BTreeMap::new();
    for request in &requests {
        if let Some(instance) = request.status.as_ref().and_then(|s| s.instance.as_ref()) {
            let entry = instances
                .entry(instance.guid.clone())
                .or_insert_with(|| (instance.name.clone(), Vec::new()));
            entry.1.push(request);
        }
    }
    let in_use: Vec<String> = instances.values().map(|(name, _)| name.clone()).collect();
    ctx.metrics.retain_orphan_instances(&in_use);
    for (guid, (name, on_instance)) in &instances {
        let mut api_key = None;
        for request in on_instance {
            api_key = match api_key::read(ctx, request).await {
                Ok((key, _)) => Some(key),
                Err(_) => ctx.last_api_key(request),
            };
            if api_key.is_some() {
                break;
            }
        }
        let Some(api_key) = api_key else {
            debug!(instance = %name, "no API key at hand to audit this instance");
            continue;
        };
        match ctx.ibm.list_instance_keys(&api_key, guid).await {
            Ok(keys) => {
                let orphans = keys
                    .iter()
                    .filter(|k| k.is_active())
                    .filter(|k| {
                        let owner = owner_of(
                            &k.guid,
                            &k.name,
                            &ctx.settings.cluster_id,
                            &live,
                            &ctx.settings.namespaces,
                        );
                        owner == KeyOwner::Orphan
                    })
                    .count() as u64;
                ctx.metrics.set_orphan_keys(name, orphans);
                if orphans > 0 {
                    info!(instance = %name, orphans, "orphan resource keys found; see `kubectl ingestionkey audit`");
                }
            }
            Err(error) => warn!(instance = %name, %error, "could not audit the instance's keys"),
        }
    }
}
