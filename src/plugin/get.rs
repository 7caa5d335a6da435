//! `kubectl ingestionkey get`: each request with its key, its Secret, and whether the Secret holds
//! IBM Cloud's current credential of that key.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use serde::Serialize;

use super::{Outcome, Output, PluginError, Session, read_value, table};
use crate::{
    crd::{IngestionKeyRequest, READY_CONDITION},
    ibm::ErrorKind,
    redact::SecretString,
};

/// One request as `get` shows it. Fingerprints only, never a credential.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Row {
    pub namespace: String,
    pub name: String,
    pub instance: String,
    pub key_name: String,
    pub key_guid: String,
    pub key_created: String,
    pub secret: String,
    /// The fingerprint of what the Secret holds.
    pub secret_fingerprint: String,
    /// `yes`, `no: …`, or `unknown: …` (why it could not be told).
    pub matches_ibm: String,
    /// Keys being retired, each with the time after which it is deleted.
    pub retiring_keys: Vec<String>,
    pub ready: String,
    #[serde(skip)]
    pub verdict: Verdict,
}

/// Whether a Secret holds IBM Cloud's current credential of its request's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Matches,
    /// IBM Cloud holds another credential than the Secret.
    Differs,
    /// The key the status records is gone from IBM Cloud.
    KeyGone,
    /// It could not be told (nothing recorded yet, a Secret unreadable, IBM Cloud unreachable).
    Unknown,
}

pub(super) async fn get(session: &Session, output: Output) -> Result<Outcome, PluginError> {
    let requests = session.requests().await?;
    let mut rows = Vec::new();
    for request in &requests {
        rows.push(row(session, request).await);
    }
    if !output.print_structured(&rows) {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.namespace.clone(),
                    r.name.clone(),
                    r.instance.clone(),
                    r.key_name.clone(),
                    format!("{} ({})", r.secret, r.secret_fingerprint),
                    r.matches_ibm.clone(),
                    r.retiring_keys.join(","),
                    r.ready.clone(),
                ]
            })
            .collect();
        let header = [
            "NAMESPACE",
            "NAME",
            "INSTANCE",
            "KEY",
            "SECRET",
            "MATCHES IBM",
            "RETIRING (DELETE AFTER)",
            "READY",
        ];
        table::print(&header, &cells);
    }
    Ok(Outcome::Clean)
}

pub(super) async fn row(session: &Session, request: &IngestionKeyRequest) -> Row {
    let ns = request.namespace().unwrap_or_default();
    let status = request.status.clone().unwrap_or_default();
    let key = status.resource_key.clone();
    let secret_name = status
        .secret_name
        .clone()
        .unwrap_or_else(|| request.spec.secret.name.clone());
    let secrets: Api<Secret> = Api::namespaced(session.client.clone(), &ns);
    let held = read_value(&secrets, &secret_name, &request.spec.secret.key).await;
    let secret_fingerprint = match &held {
        Ok(value) => value.fingerprint(),
        Err(why) => why.clone(),
    };
    let (verdict, matches_ibm) = match (&held, &key) {
        (Err(_), _) => (
            Verdict::Unknown,
            "unknown: the Secret cannot be read".to_owned(),
        ),
        (_, None) => (Verdict::Unknown, "unknown: no key recorded".to_owned()),
        (Ok(value), Some(key)) => match session.api_key_of(request).await {
            Err(why) => (Verdict::Unknown, format!("unknown: {why}")),
            Ok(api_key) => compare(session, &api_key, &key.guid, request, value).await,
        },
    };
    Row {
        namespace: ns,
        name: request.name_any(),
        instance: status
            .instance
            .map(|i| i.name)
            .or_else(|| request.spec.instance.name.clone())
            .unwrap_or_default(),
        key_name: key.as_ref().map(|k| k.name.clone()).unwrap_or_default(),
        key_guid: key.as_ref().map(|k| k.guid.clone()).unwrap_or_default(),
        key_created: key
            .and_then(|k| k.created_at)
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        secret: secret_name,
        secret_fingerprint,
        matches_ibm,
        retiring_keys: status
            .retiring_keys
            .iter()
            .map(|k| match &k.delete_after {
                Some(after) => format!("{} ({})", k.name, after.0),
                None => format!("{} (after its successor rolls out)", k.name),
            })
            .collect(),
        ready: status
            .conditions
            .iter()
            .find(|c| c.type_ == READY_CONDITION)
            .map(|c| format!("{} {}", c.status, c.reason))
            .unwrap_or_default(),
        verdict,
    }
}

/// Whether `held` is IBM Cloud's current credential of the key `guid`.
async fn compare(
    session: &Session,
    api_key: &SecretString,
    guid: &str,
    request: &IngestionKeyRequest,
    held: &SecretString,
) -> (Verdict, String) {
    let field = &request.spec.resource_key.credential_field;
    match session.ibm.get_key(api_key, guid).await {
        Err(error) if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::Gone) => (
            Verdict::KeyGone,
            "no: the key is gone from IBM Cloud".into(),
        ),
        Err(error) => (Verdict::Unknown, format!("unknown: {error}")),
        Ok(key) if !key.is_active() => (Verdict::KeyGone, format!("no: the key is {}", key.state)),
        Ok(key) => match key.credentials.field(field) {
            Ok(current) if current.fingerprint() == held.fingerprint() => {
                (Verdict::Matches, "yes".into())
            }
            Ok(current) => (
                Verdict::Differs,
                format!("no: IBM Cloud holds {}", current.fingerprint()),
            ),
            Err(error) => (Verdict::Unknown, format!("unknown: {error}")),
        },
    }
}
