//! `kubectl ingestionkey check` and `version`: is the product installed and running here, and
//! which versions are in play.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    jiff::Timestamp,
};
use kube::{Api, CustomResourceExt, api::ListParams};

use super::{Outcome, PluginError, Session, kube_error};
use crate::{cli::LEASE_NAME, crd::IngestionKeyRequest};

/// The label the chart puts on the operator's pods.
const POD_SELECTOR: &str = "app.kubernetes.io/name=ingestion-key-operator";
/// A Lease renewed longer ago than this has no live leader (the operator renews every 2 s and
/// gives up after 8 s).
const LEASE_STALE: Duration = Duration::from_secs(15);

/// What `check` found, each line a fact or a problem.
struct Report {
    lines: Vec<String>,
    problems: Vec<String>,
}

pub(super) async fn check(
    session: &Session,
    wait: Option<Duration>,
) -> Result<Outcome, PluginError> {
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        let report = inspect(session).await;
        let done = report.problems.is_empty() || deadline.is_none_or(|d| Instant::now() >= d);
        if done {
            for line in &report.lines {
                println!("{line}");
            }
            return match report.problems.first() {
                None => Ok(Outcome::Clean),
                Some(_) => Err(PluginError::Check(report.problems.join("; "))),
            };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn inspect(session: &Session) -> Report {
    let mut report = Report {
        lines: Vec::new(),
        problems: Vec::new(),
    };
    let crd_name = IngestionKeyRequest::crd_name();
    let crds: Api<CustomResourceDefinition> = Api::all(session.client.clone());
    match crds.get_opt(crd_name).await {
        Ok(Some(crd)) => {
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            let served: Vec<&str> = crd
                .spec
                .versions
                .iter()
                .filter(|v| v.served)
                .map(|v| v.name.as_str())
                .collect();
            if established && !served.is_empty() {
                report.lines.push(format!(
                    "CRD {crd_name}: established, serves {}",
                    served.join(", ")
                ));
            } else {
                report
                    .problems
                    .push(format!("CRD {crd_name} is not established and served yet"));
            }
        }
        Ok(None) => report.problems.push(format!(
            "CRD {crd_name} is not installed: ingestion-key-operator crd | kubectl apply -f -"
        )),
        Err(e) => report
            .problems
            .push(format!("cannot read CRD {crd_name}: {e}")),
    }
    let pods: Api<Pod> = Api::all(session.client.clone());
    let ready_pods = match pods.list(&ListParams::default().labels(POD_SELECTOR)).await {
        Ok(list) => {
            let ready: Vec<String> = list
                .items
                .iter()
                .filter(|p| is_ready(p))
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            report.lines.push(format!(
                "operator pods: {} of {} Ready{}",
                ready.len(),
                list.items.len(),
                if ready.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", ready.join(", "))
                }
            ));
            ready.len()
        }
        Err(e) => {
            report
                .lines
                .push(format!("operator pods: cannot list them ({e})"));
            0
        }
    };
    let leases: Api<Lease> = Api::all(session.client.clone());
    let by_name = ListParams::default().fields(&format!("metadata.name={LEASE_NAME}"));
    let leader = match leases.list(&by_name).await {
        Ok(list) => list.items.iter().find_map(live_holder),
        Err(e) => {
            report
                .lines
                .push(format!("leader: cannot read the Lease ({e})"));
            None
        }
    };
    match &leader {
        Some((holder, age)) => report.lines.push(format!(
            "leader: {holder} (Lease {LEASE_NAME} renewed {}s ago)",
            age.as_secs()
        )),
        None => report.lines.push(format!(
            "leader: none (no Lease {LEASE_NAME} renewed in the last {}s)",
            LEASE_STALE.as_secs()
        )),
    }
    if ready_pods == 0 && leader.is_none() {
        report.problems.push(
            "no operator found: no Ready pod labelled app.kubernetes.io/name=ingestion-key-operator and no live leader Lease (an operator run outside the cluster without --leader-elect cannot be seen)".into(),
        );
    }
    report
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The holder of a Lease renewed within [`LEASE_STALE`], and how long ago.
fn live_holder(lease: &Lease) -> Option<(String, Duration)> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref()?.0;
    let age = Duration::try_from(Timestamp::now().duration_since(renewed)).unwrap_or_default();
    (age < LEASE_STALE).then_some((holder, age))
}

pub(super) async fn version(session: &Session) -> Result<Outcome, PluginError> {
    println!("plugin: {}", env!("CARGO_PKG_VERSION"));
    let pods: Api<Pod> = Api::all(session.client.clone());
    let list = pods
        .list(&ListParams::default().labels(POD_SELECTOR))
        .await
        .map_err(kube_error("list the operator's pods"))?;
    let mut deployed: Vec<String> = list
        .items
        .iter()
        .filter_map(|p| {
            let version = p
                .metadata
                .labels
                .as_ref()?
                .get("app.kubernetes.io/version")?;
            let image = p
                .spec
                .as_ref()?
                .containers
                .first()?
                .image
                .clone()
                .unwrap_or_default();
            Some(format!("{version} ({image})"))
        })
        .collect();
    deployed.sort();
    deployed.dedup();
    if deployed.is_empty() {
        println!("operator: no pod labelled {POD_SELECTOR} found");
    }
    for version in deployed {
        println!("operator: {version}");
    }
    Ok(Outcome::Clean)
}
