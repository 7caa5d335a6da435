//! `kubectl ingestionkey audit`: what IBM Cloud and the cluster disagree on. Keys of this cluster's
//! naming whose request is gone (orphans: live credentials nobody rotates), keys a status records
//! that IBM Cloud no longer has, and Secrets whose data no longer matches IBM Cloud; with
//! `--delete-orphans`, the orphans deleted. Everything is read before anything is deleted: an
//! instance that cannot be listed stops the audit with nothing deleted.

use std::{collections::BTreeMap, io::BufRead};

use serde::Serialize;

use super::{
    Outcome, Output, PluginError, Session,
    get::{self, Verdict},
    ibm_view::{ClusterView, describe, instance_guid_of, resolve_instance},
    table,
};
use crate::{reconciler::plan::orphans::KeyOwner, redact::SecretString};

/// What the admin asked the audit for.
pub(super) struct Asked {
    pub instances: Vec<String>,
    pub delete_orphans: bool,
    pub also_delete: Vec<String>,
    pub yes: bool,
    pub output: Output,
}

/// One thing the audit reports.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Finding {
    /// `orphan`, `unknown-cluster`, `recorded-key-gone`, `secret-differs` (findings), or
    /// `retained`, `other-cluster` (listed, never acted on).
    kind: &'static str,
    instance: String,
    #[serde(skip)]
    instance_guid: String,
    key_name: String,
    key_guid: String,
    detail: String,
    /// Whether it counts for the exit status (and may be acted on).
    finding: bool,
    /// `deleted`, or why not, once `--delete-orphans` ran.
    #[serde(skip_serializing_if = "String::is_empty")]
    action: String,
}

/// An instance to audit, with the API key that lists its keys.
struct Audited {
    name: String,
    api_key: SecretString,
}

pub(super) async fn audit(session: &Session, asked: &Asked) -> Result<Outcome, PluginError> {
    let view = ClusterView::read(session).await?;
    let instances = instances_to_audit(session, &view, &asked.instances).await?;
    let mut findings = Vec::new();
    for (guid, audited) in &instances {
        let keys = session
            .ibm
            .list_instance_keys(&audited.api_key, guid)
            .await
            .map_err(|e| {
                PluginError::IbmCloud(format!("list the keys of {}: {e}", audited.name))
            })?;
        for key in keys.iter().filter(|k| k.is_active()) {
            let owner = view.owner(key);
            let kind = match &owner {
                KeyOwner::Orphan => "orphan",
                KeyOwner::UnknownCluster => "unknown-cluster",
                KeyOwner::Retained => "retained",
                KeyOwner::OtherCluster(_) => "other-cluster",
                KeyOwner::Request(_) | KeyOwner::Foreign => continue,
            };
            findings.push(Finding {
                kind,
                instance: audited.name.clone(),
                instance_guid: guid.clone(),
                key_name: key.name.clone(),
                key_guid: key.guid.clone(),
                detail: describe(&owner),
                finding: owner.is_finding(),
                action: String::new(),
            });
        }
    }
    for request in &view.requests {
        let row = get::row(session, request).await;
        let kind = match row.verdict {
            Verdict::KeyGone => "recorded-key-gone",
            Verdict::Differs => "secret-differs",
            Verdict::Matches | Verdict::Unknown => continue,
        };
        findings.push(Finding {
            kind,
            instance: row.instance.clone(),
            instance_guid: String::new(),
            key_name: row.key_name.clone(),
            key_guid: row.key_guid.clone(),
            detail: format!(
                "request {}/{}: {}",
                row.namespace, row.name, row.matches_ibm
            ),
            finding: true,
            action: String::new(),
        });
    }
    if asked.delete_orphans {
        delete_orphans(session, asked, &view, &instances, &mut findings).await?;
    }
    print(&findings, asked.output);
    let open = findings.iter().any(|f| f.finding && f.action != "deleted");
    Ok(if open {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

/// The instances the cluster's requests use, and those asked for, each with an API key that may
/// list it (a request's on that instance, else `--api-key-file` or any request's).
async fn instances_to_audit(
    session: &Session,
    view: &ClusterView,
    asked: &[String],
) -> Result<BTreeMap<String, Audited>, PluginError> {
    let mut instances = BTreeMap::new();
    for request in &view.requests {
        let Some(guid) = instance_guid_of(request) else {
            continue;
        };
        if instances.contains_key(guid) {
            continue;
        }
        let name = request
            .status
            .as_ref()
            .and_then(|s| s.instance.as_ref())
            .map(|i| i.name.clone())
            .unwrap_or_else(|| guid.to_owned());
        let on_instance = view
            .requests
            .iter()
            .filter(|r| instance_guid_of(r) == Some(guid))
            .cloned()
            .collect::<Vec<_>>();
        let api_key = session
            .any_api_key(&on_instance)
            .await
            .map_err(|e| PluginError::NoApiKey(format!("cannot audit instance {name}: {e}")))?;
        instances.insert(guid.to_owned(), Audited { name, api_key });
    }
    for wanted in asked {
        let api_key = session.any_api_key(&view.requests).await?;
        let instance = resolve_instance(session, &api_key, wanted).await?;
        instances.entry(instance.guid.clone()).or_insert(Audited {
            name: instance.name.clone(),
            api_key,
        });
    }
    Ok(instances)
}

/// Deletes the orphans (and the unknown-cluster keys named with `--also-delete`), after a
/// confirmation unless `--yes`. Nothing else is ever deleted.
async fn delete_orphans(
    session: &Session,
    asked: &Asked,
    view: &ClusterView,
    instances: &BTreeMap<String, Audited>,
    findings: &mut [Finding],
) -> Result<(), PluginError> {
    let deletable = |f: &Finding| {
        f.kind == "orphan"
            || (f.kind == "unknown-cluster" && asked.also_delete.contains(&f.key_name))
    };
    let count = findings.iter().filter(|f| deletable(f)).count();
    if count == 0 {
        return Ok(());
    }
    if !asked.yes && !confirm(count, &view.cluster.to_string())? {
        for finding in findings.iter_mut().filter(|f| deletable(f)) {
            finding.action = "kept (not confirmed)".into();
        }
        return Ok(());
    }
    for finding in findings.iter_mut().filter(|f| deletable(f)) {
        let Some(api_key) = instances.get(&finding.instance_guid).map(|a| &a.api_key) else {
            finding.action = "kept: no API key for its instance".into();
            continue;
        };
        finding.action = match session.ibm.delete_key(api_key, &finding.key_guid).await {
            Ok(_) => "deleted".into(),
            Err(e) => format!("delete failed: {e}"),
        };
    }
    Ok(())
}

/// Asks on stderr, reads stdin: only `y` or `yes` confirms.
fn confirm(count: usize, cluster: &str) -> Result<bool, PluginError> {
    eprint!("delete {count} orphan key(s) of cluster {cluster} from IBM Cloud? [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| PluginError::Input(format!("read the confirmation: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "yes"))
}

fn print(findings: &[Finding], output: Output) {
    if output.print_structured(&findings) {
        return;
    }
    let open = findings
        .iter()
        .filter(|f| f.finding && f.action != "deleted")
        .count();
    let summary = match open {
        0 => "nothing found: no orphan key, every recorded key exists, every Secret matches".into(),
        n => format!("{n} finding(s)"),
    };
    if findings.is_empty() {
        println!("{summary}");
        return;
    }
    let cells: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            vec![
                f.kind.to_owned(),
                f.instance.clone(),
                f.key_name.clone(),
                f.key_guid.clone(),
                f.detail.clone(),
                f.action.clone(),
            ]
        })
        .collect();
    let header = ["KIND", "INSTANCE", "KEY", "GUID", "DETAIL", "ACTION"];
    table::print(&header, &cells);
    println!("{summary}");
}
