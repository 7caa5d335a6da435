//! Resource Controller and IAM wire types, as IBM's SDKs (platform-services-go-sdk `resourcecontrollerv2`, go-sdk-core) model them. Only the fields the operator
//! needs are typed; unknown fields are ignored so newer API versions keep parsing.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::redact::SecretString;

/// One page of a Resource Controller list (`ResourceInstancesList` / `ResourceKeysList`).
/// `rows_count` is optional because the SDK pager fixtures omit it (platform-services-go-sdk's ResourceKeysPager test pages).
#[derive(Clone, Debug, Deserialize)]
pub struct ResourceList<T> {
    pub rows_count: Option<u64>,
    /// Relative (`/v2/...?start=...`) or absolute; `null`/absent on the last page.
    pub next_url: Option<String>,
    #[serde(default = "Vec::new")]
    pub resources: Vec<T>,
}

/// What to look for when resolving an instance by name.
#[derive(Clone, Debug, Default)]
pub struct InstanceQuery {
    pub name: String,
    pub resource_group_id: Option<String>,
    /// `region_id` of the instance (e.g. `us-south`).
    pub region: Option<String>,
    /// Service name: the 5th CRN segment (`logdna`, `logdnaat`, `logs`, ...).
    pub service_name: Option<String>,
}

impl InstanceQuery {
    pub fn by_name(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Client-side narrowing: exact name (the server-side filter's exactness is undocumented), then
    /// each optional criterion. Empty strings count as "not given".
    pub fn matches(&self, instance: &ResourceInstance) -> bool {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|s| !s.is_empty())
        }
        instance.name == self.name
            && given(&self.resource_group_id)
                .is_none_or(|rg| instance.resource_group_id.as_deref() == Some(rg))
            && given(&self.region).is_none_or(|r| instance.region_id.as_deref() == Some(r))
            && given(&self.service_name).is_none_or(|s| instance.service_name() == Some(s))
    }
}

/// A service instance (`ResourceInstance` of the Resource Controller v2 API).
#[derive(Clone, Debug, Deserialize)]
pub struct ResourceInstance {
    /// Equals the CRN.
    pub id: String,
    pub guid: String,
    pub crn: String,
    pub name: String,
    pub state: String,
    pub region_id: Option<String>,
    pub resource_group_id: Option<String>,
    pub account_id: Option<String>,
    pub url: Option<String>,
    pub resource_id: Option<String>,
    pub resource_plan_id: Option<String>,
    #[serde(rename = "type")]
    pub instance_type: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub dashboard_url: Option<String>,
    pub resource_keys_url: Option<String>,
    pub onetime_credentials: Option<bool>,
    pub locked: Option<bool>,
}

impl ResourceInstance {
    /// The service name: 5th segment of the CRN (`logdna`, `logdnaat`, `logs`, ...).
    pub fn service_name(&self) -> Option<&str> {
        Crn::parse(&self.crn).map(|c| c.service_name)
    }

    pub fn is_active(&self) -> bool {
        self.state == "active"
    }
}

/// A resource key (service credential, `ResourceKey` of the Resource Controller v2 API).
#[derive(Clone, Debug, Deserialize)]
pub struct ResourceKey {
    /// Equals the CRN.
    pub id: String,
    pub guid: String,
    pub crn: String,
    pub name: String,
    pub state: String,
    pub source_crn: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub credentials: Credentials,
    pub account_id: Option<String>,
    pub resource_group_id: Option<String>,
    pub resource_id: Option<String>,
    pub url: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub deleted_at: Option<String>,
    pub onetime_credentials: Option<bool>,
    pub iam_compatible: Option<bool>,
    pub resource_instance_url: Option<String>,
}

impl ResourceKey {
    /// Only `active` keys may be reused; `removed` keys linger after deletion.
    pub fn is_active(&self) -> bool {
        self.state == "active"
    }

    /// GUID of the instance the key belongs to (from the key CRN, else `source_crn`).
    pub fn instance_guid(&self) -> Option<&str> {
        Crn::parse(&self.crn)
            .filter(|c| c.resource_type == "resource-key")
            .map(|c| c.service_instance)
            .or_else(|| {
                self.source_crn
                    .as_deref()
                    .and_then(Crn::parse)
                    .map(|c| c.service_instance)
            })
            .filter(|g| !g.is_empty())
    }
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The `credentials` object of a resource key: arbitrary broker fields. Values are secrets, so
/// `Debug` shows field names only.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Credentials(Map<String, Value>);

/// Why a credential field cannot be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CredentialError {
    #[error(
        "credentials are REDACTED for this caller: the API key's service role is lower than the key's role (give it Manager on the instance)"
    )]
    Redacted,
    #[error("credential field {0:?} is missing from the resource key's credentials")]
    Missing(String),
    #[error("credential field {0:?} is not a string")]
    NotAString(String),
}

/// Marker key and values IBM uses when the caller may not see credentials (credentials whose role is above the caller's come back as `REDACTED`).
const REDACTED: &str = "REDACTED";

impl Credentials {
    pub fn from_map(map: Map<String, Value>) -> Self {
        Self(map)
    }

    /// The value of one field. A redacted credentials object is [`CredentialError::Redacted`],
    /// never "missing": the field exists, the caller just may not read it.
    pub fn field(&self, name: &str) -> Result<SecretString, CredentialError> {
        if self.is_redacted() {
            return Err(CredentialError::Redacted);
        }
        match self.0.get(name) {
            None | Some(Value::Null) => Err(CredentialError::Missing(name.to_owned())),
            Some(Value::String(s)) if s == REDACTED || s == "REDACTED_EXPLICIT" => {
                Err(CredentialError::Redacted)
            }
            Some(Value::String(s)) => Ok(SecretString::new(s.clone())),
            Some(_) => Err(CredentialError::NotAString(name.to_owned())),
        }
    }

    /// `{"REDACTED": "REDACTED"}` or `{"REDACTED": "REDACTED_EXPLICIT"}`: the caller's role is too low.
    pub fn is_redacted(&self) -> bool {
        self.0.contains_key(REDACTED)
    }

    /// Field names present (not values), for messages like "available fields: ...".
    pub fn field_names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for key in self.0.keys() {
            map.entry(&key, &format_args!("<redacted>"));
        }
        map.finish()
    }
}

/// Body of `POST /v2/resource_keys`.
#[derive(Clone, Debug, Serialize)]
pub struct CreateKeyRequest {
    pub name: String,
    /// Instance GUID (or CRN).
    pub source: String,
    /// `Reader`, `Writer`, `Manager` or a role CRN.
    pub role: String,
}

/// The role to send when creating a key on an instance of `service` (the 5th segment of its CRN).
/// The Resource Controller takes base role names (`Reader`, `Writer`, `Manager`) and role CRNs;
/// any other name is a role of the service itself, such as Cloud Logs' `Sender`, and is sent as
/// that service's role CRN. CRNs are sent as they are.
pub fn role_for_key(role: &str, service: &str) -> String {
    let role = role.trim();
    match role {
        "Reader" | "Writer" | "Manager" => role.to_owned(),
        crn if crn.starts_with("crn:") => crn.to_owned(),
        name => format!("crn:v1:bluemix:public:{service}::::serviceRole:{name}"),
    }
}

/// Outcome of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDeletion {
    /// 204: deleted now.
    Deleted,
    /// 404 or 410: it was already gone.
    AlreadyGone,
}

/// IAM token response (`POST /identity/token`). The access token is a secret.
#[derive(Clone, Debug, Deserialize)]
pub struct TokenResponse {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub token_type: Option<String>,
    /// Lifetime in seconds.
    pub expires_in: Option<i64>,
    /// Absolute expiry, Unix seconds.
    pub expiration: Option<i64>,
    pub scope: Option<String>,
}

/// The parts of a CRN: `crn:v1:<cname>:<ctype>:<service-name>:<location>:<scope>:<service-instance>:<resource-type>:<resource>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crn<'a> {
    pub cname: &'a str,
    pub ctype: &'a str,
    pub service_name: &'a str,
    pub location: &'a str,
    /// e.g. `a/<account id>`.
    pub scope: &'a str,
    /// The service instance GUID.
    pub service_instance: &'a str,
    /// e.g. `resource-key`; empty for an instance.
    pub resource_type: &'a str,
    /// For a resource key: the key GUID; empty for an instance.
    pub resource: &'a str,
}

impl<'a> Crn<'a> {
    /// Parses a CRN with exactly 10 `:`-separated segments starting `crn:v1:`.
    pub fn parse(crn: &'a str) -> Option<Self> {
        let parts: Vec<&str> = crn.split(':').collect();
        if parts.len() != 10 || parts[0] != "crn" || parts[1] != "v1" || parts[4].is_empty() {
            return None;
        }
        Some(Self {
            cname: parts[2],
            ctype: parts[3],
            service_name: parts[4],
            location: parts[5],
            scope: parts[6],
            service_instance: parts[7],
            resource_type: parts[8],
            resource: parts[9],
        })
    }

    /// Account id from an `a/<account>` scope.
    pub fn account_id(&self) -> Option<&'a str> {
        self.scope.strip_prefix("a/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_sent_as_the_resource_controller_takes_them() {
        assert_eq!(role_for_key("Manager", "logdnaat"), "Manager");
        assert_eq!(
            role_for_key("Sender", "logs"),
            "crn:v1:bluemix:public:logs::::serviceRole:Sender"
        );
        let crn = "crn:v1:bluemix:public:iam::::serviceRole:Writer";
        assert_eq!(role_for_key(crn, "logs"), crn);
    }

    #[test]
    fn crn_parsing() {
        let c = Crn::parse("crn:v1:bluemix:public:logdnaat:us-south:a/acc:8d7af921-b136-4078-9666-081bd8470d94:resource-key:k1").unwrap();
        assert_eq!(c.service_name, "logdnaat");
        assert_eq!(c.location, "us-south");
        assert_eq!(c.account_id(), Some("acc"));
        assert_eq!(c.service_instance, "8d7af921-b136-4078-9666-081bd8470d94");
        assert_eq!(c.resource_type, "resource-key");
        assert_eq!(c.resource, "k1");
        assert!(Crn::parse("crn:v1:bluemix:public:logdna:eu-de:a/acc:g::").is_some());
        assert!(Crn::parse("CRN").is_none());
        assert!(Crn::parse("crn:v2:bluemix:public:logdna:eu-de:a/acc:g::").is_none());
        assert!(Crn::parse("crn:v1:bluemix:public:logdna:eu-de:a/acc:g:").is_none());
    }

    #[test]
    fn credentials_fields_and_redaction() {
        let c: Credentials = serde_json::from_str(r#"{"ingestion_key":"abc123","n":5}"#).unwrap();
        assert_eq!(c.field("ingestion_key").unwrap().expose(), "abc123");
        assert_eq!(
            c.field("apikey").unwrap_err(),
            CredentialError::Missing("apikey".into())
        );
        assert_eq!(
            c.field("n").unwrap_err(),
            CredentialError::NotAString("n".into())
        );
        assert!(!format!("{c:?}").contains("abc123"));
        let r: Credentials = serde_json::from_str(r#"{"REDACTED":"REDACTED"}"#).unwrap();
        assert!(r.is_redacted());
        assert_eq!(
            r.field("ingestion_key").unwrap_err(),
            CredentialError::Redacted
        );
    }

    #[test]
    fn query_narrowing() {
        let i: ResourceInstance = serde_json::from_value(serde_json::json!({
            "id": "x", "guid": "g", "crn": "crn:v1:bluemix:public:logdna:eu-de:a/acc:g::", "name": "n", "state": "active",
            "region_id": "eu-de", "resource_group_id": "rg"
        }))
        .unwrap();
        assert!(InstanceQuery::by_name("n").matches(&i));
        assert!(!InstanceQuery::by_name("N").matches(&i));
        let q = InstanceQuery {
            service_name: Some("logdna".into()),
            region: Some("eu-de".into()),
            resource_group_id: Some(String::new()),
            ..InstanceQuery::by_name("n")
        };
        assert!(q.matches(&i));
        assert!(
            !InstanceQuery {
                service_name: Some("logdnaat".into()),
                ..q.clone()
            }
            .matches(&i)
        );
        assert!(
            !InstanceQuery {
                region: Some("us-south".into()),
                ..q.clone()
            }
            .matches(&i)
        );
        assert!(
            !InstanceQuery {
                resource_group_id: Some("other".into()),
                ..q
            }
            .matches(&i)
        );
    }
}
