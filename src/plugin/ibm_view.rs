//! IBM's documented CLI path (`ibmcloud resource service-instances`, `service-keys
//! --instance-name`, `service-key NAME`), against the Resource Controller, each key labelled with
//! what it is to this cluster: the key of which request, an orphan, retained, another cluster's.

use serde::Serialize;

use super::{Outcome, Output, PluginError, Session, table};
use crate::{
    crd::{ClusterId, IngestionKeyRequest},
    ibm::{Crn, InstanceQuery, ResourceInstance, ResourceKey},
    reconciler::plan::orphans::{KeyOwner, LiveRequests, owner_of},
    redact::SecretString,
};

/// What a key is to this cluster, in words.
pub(super) fn describe(owner: &KeyOwner) -> String {
    match owner {
        KeyOwner::Request(request) => format!("request {request}"),
        KeyOwner::Orphan => "orphan: made by this cluster for a request that is gone".into(),
        KeyOwner::Retained => "retained: kept for its user by deletionPolicy Retain".into(),
        KeyOwner::UnknownCluster => "unknown cluster: named before cluster identities".into(),
        KeyOwner::OtherCluster(id) => format!("another cluster ({id})"),
        KeyOwner::Foreign => "not made by this operator".into(),
    }
}

/// What the cluster knows to tell keys apart: its identity, and the requests that exist.
pub(super) struct ClusterView {
    pub cluster: ClusterId,
    pub requests: Vec<IngestionKeyRequest>,
    pub live: LiveRequests,
    /// The namespaces seen (empty: all of them).
    pub namespaces: Vec<String>,
}

impl ClusterView {
    pub async fn read(session: &Session) -> Result<Self, PluginError> {
        let cluster = session.cluster_id().await?;
        let requests = session.requests().await?;
        let live = LiveRequests::new(&requests);
        let namespaces = session.namespace.clone().into_iter().collect();
        Ok(Self {
            cluster,
            requests,
            live,
            namespaces,
        })
    }

    pub fn owner(&self, key: &ResourceKey) -> KeyOwner {
        owner_of(
            &key.guid,
            &key.name,
            &self.cluster,
            &self.live,
            &self.namespaces,
        )
    }

    /// A request that uses the instance `guid` (its API key may list the instance's keys).
    pub fn request_on(&self, guid: &str) -> Option<&IngestionKeyRequest> {
        self.requests
            .iter()
            .find(|r| instance_guid_of(r) == Some(guid))
    }
}

pub(super) fn instance_guid_of(request: &IngestionKeyRequest) -> Option<&str> {
    request
        .status
        .as_ref()
        .and_then(|s| s.instance.as_ref())
        .map(|i| i.guid.as_str())
        .filter(|g| !g.is_empty())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceRow {
    name: String,
    guid: String,
    service: String,
    region: String,
    state: String,
    requests: Vec<String>,
}

pub(super) async fn instances(session: &Session, output: Output) -> Result<Outcome, PluginError> {
    let requests = session.requests().await?;
    let api_key = session.any_api_key(&requests).await?;
    let found = session
        .ibm
        .list_instances(&api_key)
        .await
        .map_err(|e| PluginError::IbmCloud(e.to_string()))?;
    let rows: Vec<InstanceRow> = found
        .iter()
        .map(|i| InstanceRow {
            name: i.name.clone(),
            guid: i.guid.clone(),
            service: i.service_name().unwrap_or_default().to_owned(),
            region: i.region_id.clone().unwrap_or_default(),
            state: i.state.clone(),
            requests: requests
                .iter()
                .filter(|r| instance_guid_of(r) == Some(i.guid.as_str()))
                .map(|r| {
                    let ns = r.metadata.namespace.as_deref().unwrap_or_default();
                    format!("{ns}/{}", super::request_name(r))
                })
                .collect(),
        })
        .collect();
    if !output.print_structured(&rows) {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let used = r.requests.join(",");
                let cells = [&r.name, &r.guid, &r.service, &r.region, &r.state, &used];
                cells.map(|c| c.to_string()).to_vec()
            })
            .collect();
        let header = ["NAME", "GUID", "SERVICE", "REGION", "STATE", "REQUESTS"];
        table::print(&header, &cells);
    }
    Ok(Outcome::Clean)
}

/// One instance by NAME, GUID or CRN; a name must match exactly one.
pub(super) async fn resolve_instance(
    session: &Session,
    api_key: &SecretString,
    wanted: &str,
) -> Result<ResourceInstance, PluginError> {
    let ibm_error =
        |e: crate::ibm::IbmError| PluginError::IbmCloud(format!("instance {wanted}: {e}"));
    if Crn::parse(wanted).is_some() || looks_like_guid(wanted) {
        return session
            .ibm
            .get_instance(api_key, wanted)
            .await
            .map_err(ibm_error);
    }
    let mut found = session
        .ibm
        .find_instances_by_name(api_key, &InstanceQuery::by_name(wanted))
        .await
        .map_err(ibm_error)?;
    match found.len() {
        0 => Err(PluginError::Input(format!(
            "no instance is named {wanted:?}"
        ))),
        1 => Ok(found.remove(0)),
        _ => {
            let crns: Vec<&str> = found.iter().map(|i| i.crn.as_str()).collect();
            Err(PluginError::Input(format!(
                "several instances are named {wanted:?}; give one CRN: {}",
                crns.join(", ")
            )))
        }
    }
}

fn looks_like_guid(text: &str) -> bool {
    text.len() == 36 && text.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct KeyRow {
    pub name: String,
    pub guid: String,
    pub instance: String,
    pub state: String,
    pub created: String,
    /// Whose key it is, from this cluster's point of view.
    pub made_for: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_fingerprint: Option<String>,
    /// Only with `--reveal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

fn key_row(view: &ClusterView, key: &ResourceKey) -> KeyRow {
    KeyRow {
        name: key.name.clone(),
        guid: key.guid.clone(),
        instance: key.instance_guid().unwrap_or_default().to_owned(),
        state: key.state.clone(),
        created: key.created_at.clone().unwrap_or_default(),
        made_for: describe(&view.owner(key)),
        credential_fingerprint: None,
        credential: None,
    }
}

pub(super) async fn keys(
    session: &Session,
    instance: &str,
    output: Output,
) -> Result<Outcome, PluginError> {
    let view = ClusterView::read(session).await?;
    let api_key = session.any_api_key(&view.requests).await?;
    let found = resolve_instance(session, &api_key, instance).await?;
    let api_key = match view.request_on(&found.guid) {
        Some(request) => session.api_key_of(request).await.unwrap_or(api_key),
        None => api_key,
    };
    let listed = session
        .ibm
        .list_instance_keys(&api_key, &found.guid)
        .await
        .map_err(|e| PluginError::IbmCloud(e.to_string()))?;
    let rows: Vec<KeyRow> = listed
        .iter()
        .filter(|k| k.is_active())
        .map(|k| key_row(&view, k))
        .collect();
    print_keys(&rows, output);
    Ok(Outcome::Clean)
}

pub(super) async fn key(
    session: &Session,
    wanted: &str,
    field: &str,
    reveal: bool,
    output: Output,
) -> Result<Outcome, PluginError> {
    let view = ClusterView::read(session).await?;
    let api_key = session.any_api_key(&view.requests).await?;
    let ibm_error = |e: crate::ibm::IbmError| PluginError::IbmCloud(format!("key {wanted}: {e}"));
    let found = if Crn::parse(wanted).is_some() || looks_like_guid(wanted) {
        vec![
            session
                .ibm
                .get_key(&api_key, wanted)
                .await
                .map_err(ibm_error)?,
        ]
    } else {
        let named = session.ibm.find_keys_in_account(&api_key, wanted).await;
        let named: Vec<ResourceKey> = named
            .map_err(ibm_error)?
            .into_iter()
            .filter(ResourceKey::is_active)
            .collect();
        if named.is_empty() {
            return Err(PluginError::Input(format!(
                "no active key is named {wanted:?}"
            )));
        }
        named
    };
    let rows: Vec<KeyRow> = found
        .iter()
        .map(|k| {
            let credential = k.credentials.field(field);
            KeyRow {
                credential_fingerprint: Some(match &credential {
                    Ok(value) => value.fingerprint(),
                    Err(why) => why.to_string(),
                }),
                credential: credential
                    .ok()
                    .filter(|_| reveal)
                    .map(|v| v.expose().to_owned()),
                ..key_row(&view, k)
            }
        })
        .collect();
    print_keys(&rows, output);
    Ok(Outcome::Clean)
}

fn print_keys(rows: &[KeyRow], output: Output) {
    if output.print_structured(&rows) {
        return;
    }
    let with_credential = rows.iter().any(|r| r.credential_fingerprint.is_some());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![
                r.name.clone(),
                r.guid.clone(),
                r.state.clone(),
                r.created.clone(),
                r.made_for.clone(),
            ];
            if with_credential {
                let shown = r
                    .credential
                    .clone()
                    .or_else(|| r.credential_fingerprint.clone());
                cells.push(shown.unwrap_or_default());
            }
            cells
        })
        .collect();
    let mut header = vec!["NAME", "GUID", "STATE", "CREATED", "MADE FOR"];
    if with_credential {
        header.push("CREDENTIAL");
    }
    table::print(&header, &cells);
}
