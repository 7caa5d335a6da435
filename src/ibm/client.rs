//! The IBM Cloud client's operations: one method per Resource Controller call, and its counters.
//! The layers below: `transport` (one exchange and the retry loop), `paging` (listings),
//! `token` (IAM tokens), `budget` (admission to the rate budget).

use std::fmt;
use std::sync::Arc;

use reqwest::{Method, Url};
use tracing::{debug, info};

use super::endpoints::Endpoints;
use super::error::{ErrorKind, IbmError};
use super::model::{CreateKeyRequest, InstanceQuery, KeyDeletion, ResourceInstance, ResourceKey};
use super::paging::{PAGE_LIMIT, list_all};
use super::token::Authenticator;
use super::transport::{Body, ClientConfig, Reply, Request, RetryMode, Transport, parse_json};
use super::{
    BudgetStats, OP_CREATE_KEY, OP_DELETE_KEY, OP_FIND_KEYS, OP_GET_INSTANCE, OP_GET_KEY,
    OP_LIST_INSTANCES, OP_LIST_KEYS, OP_RENAME_KEY,
};
use crate::histogram::Histogram;
use crate::redact::SecretString;

/// Client for IAM and the Resource Controller. Cheap to clone; all clones share the HTTP
/// connection pool, the token cache and the counters.
#[derive(Clone)]
pub struct IbmCloud {
    inner: Arc<Inner>,
}

struct Inner {
    auth: Authenticator,
    endpoints: Endpoints,
}

impl fmt::Debug for IbmCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IbmCloud")
            .field("endpoints", &self.inner.endpoints)
            .field("config", &self.inner.auth.transport.config)
            .finish_non_exhaustive()
    }
}

impl IbmCloud {
    pub fn new(endpoints: Endpoints, config: ClientConfig) -> Result<Self, IbmError> {
        let auth = Authenticator::new(Transport::new(config)?, &endpoints);
        Ok(Self {
            inner: Arc::new(Inner { auth, endpoints }),
        })
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    /// Instances named exactly `query.name`, narrowed by resource group, region and service name.
    /// Uses the server-side `name` (and `resource_group_id`) filter and follows `next_url` through
    /// every page. Returns all matches, possibly none or several: the caller decides.
    pub async fn find_instances_by_name(
        &self,
        api_key: &SecretString,
        query: &InstanceQuery,
    ) -> Result<Vec<ResourceInstance>, IbmError> {
        let mut url = self.rc_url(&["v2", "resource_instances"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("name", &query.name);
            if let Some(rg) = query.resource_group_id.as_deref().filter(|s| !s.is_empty()) {
                q.append_pair("resource_group_id", rg);
            }
            q.append_pair("limit", PAGE_LIMIT);
        }
        let all: Vec<ResourceInstance> = self
            .list_all(
                api_key,
                OP_LIST_INSTANCES,
                "GET /v2/resource_instances",
                url,
            )
            .await?;
        let total = all.len();
        let matches: Vec<ResourceInstance> = all.into_iter().filter(|i| query.matches(i)).collect();
        debug!(
            operation = OP_LIST_INSTANCES,
            listed = total,
            matched = matches.len(),
            "resolved instances by name"
        );
        Ok(matches)
    }

    /// One resource read by `request`, parsed as `T`.
    async fn get_one<T: serde::de::DeserializeOwned>(
        &self,
        request: &Request,
        api_key: &SecretString,
    ) -> Result<T, IbmError> {
        let reply = self.send(request, api_key).await?;
        parse_json(request.operation, &reply)
    }

    /// `GET /v2/resource_instances/{id}` with a GUID or CRN (encoded as one path segment).
    pub async fn get_instance(
        &self,
        api_key: &SecretString,
        guid_or_crn: &str,
    ) -> Result<ResourceInstance, IbmError> {
        let url = self.rc_url(&["v2", "resource_instances", guid_or_crn]);
        let request = Request::get(OP_GET_INSTANCE, "GET /v2/resource_instances/{id}", url);
        self.get_one(&request, api_key).await
    }

    /// Every key of one instance, any state (callers filter on [`ResourceKey::is_active`]).
    pub async fn list_instance_keys(
        &self,
        api_key: &SecretString,
        instance_guid: &str,
    ) -> Result<Vec<ResourceKey>, IbmError> {
        let mut url = self.rc_url(&["v2", "resource_instances", instance_guid, "resource_keys"]);
        url.query_pairs_mut().append_pair("limit", PAGE_LIMIT);
        self.list_all(
            api_key,
            OP_LIST_KEYS,
            "GET /v2/resource_instances/{id}/resource_keys",
            url,
        )
        .await
    }

    /// Active and other keys named exactly `name` on one instance: `GET /v2/resource_keys?name=`
    /// (the name filter is account-wide, so keys of other instances are dropped here). One call for
    /// any number of keys on the instance, where listing the instance's keys pages through all.
    pub async fn find_keys_by_name(
        &self,
        api_key: &SecretString,
        instance_guid: &str,
        name: &str,
    ) -> Result<Vec<ResourceKey>, IbmError> {
        let keys = self.find_keys_in_account(api_key, name).await?;
        Ok(keys
            .into_iter()
            .filter(|k| k.instance_guid() == Some(instance_guid))
            .collect())
    }

    /// Every key of the account named exactly `name`, any instance, any state.
    pub async fn find_keys_in_account(
        &self,
        api_key: &SecretString,
        name: &str,
    ) -> Result<Vec<ResourceKey>, IbmError> {
        let mut url = self.rc_url(&["v2", "resource_keys"]);
        url.query_pairs_mut()
            .append_pair("name", name)
            .append_pair("limit", PAGE_LIMIT);
        let keys: Vec<ResourceKey> = self
            .list_all(api_key, OP_FIND_KEYS, "GET /v2/resource_keys", url)
            .await?;
        Ok(keys.into_iter().filter(|k| k.name == name).collect())
    }

    /// Every instance the API key may see (`GET /v2/resource_instances`, all pages).
    pub async fn list_instances(
        &self,
        api_key: &SecretString,
    ) -> Result<Vec<ResourceInstance>, IbmError> {
        let mut url = self.rc_url(&["v2", "resource_instances"]);
        url.query_pairs_mut().append_pair("limit", PAGE_LIMIT);
        self.list_all(
            api_key,
            OP_LIST_INSTANCES,
            "GET /v2/resource_instances",
            url,
        )
        .await
    }

    /// `POST /v2/resource_keys`. Not idempotent: retried only when the request cannot have reached
    /// the server (connection not established), never after a timeout or a 5xx — a blind retry
    /// could create a second key. Callers look the key up by name before creating.
    pub async fn create_key(
        &self,
        api_key: &SecretString,
        request: &CreateKeyRequest,
    ) -> Result<ResourceKey, IbmError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| IbmError::new(OP_CREATE_KEY, ErrorKind::InvalidResponse, e.to_string()))?;
        let request = Request {
            operation: OP_CREATE_KEY,
            endpoint: "POST /v2/resource_keys",
            method: Method::POST,
            url: self.rc_url(&["v2", "resource_keys"]),
            body: Body::Json(body),
            retry: RetryMode::UnsentOnly,
            iam: false,
        };
        let reply = self.send(&request, api_key).await?;
        let key: ResourceKey = parse_json(OP_CREATE_KEY, &reply)?;
        info!(operation = OP_CREATE_KEY, key_guid = %key.guid, key_name = %key.name, transaction_id = reply.transaction_id(), "created resource key");
        Ok(key)
    }

    /// `GET /v2/resource_keys/{id}`; removed keys come back with state `removed`.
    pub async fn get_key(
        &self,
        api_key: &SecretString,
        guid_or_crn: &str,
    ) -> Result<ResourceKey, IbmError> {
        let url = self.rc_url(&["v2", "resource_keys", guid_or_crn]);
        let request = Request::get(OP_GET_KEY, "GET /v2/resource_keys/{id}", url);
        self.get_one(&request, api_key).await
    }

    /// `DELETE /v2/resource_keys/{id}`: 204 is `Deleted`, 404 and 410 are `AlreadyGone`.
    pub async fn delete_key(
        &self,
        api_key: &SecretString,
        guid_or_crn: &str,
    ) -> Result<KeyDeletion, IbmError> {
        let request = Request {
            operation: OP_DELETE_KEY,
            endpoint: "DELETE /v2/resource_keys/{id}",
            method: Method::DELETE,
            url: self.rc_url(&["v2", "resource_keys", guid_or_crn]),
            body: Body::Empty,
            retry: RetryMode::Idempotent,
            iam: false,
        };
        match self.send(&request, api_key).await {
            Ok(_) => {
                info!(
                    operation = OP_DELETE_KEY,
                    key = guid_or_crn,
                    "deleted resource key"
                );
                Ok(KeyDeletion::Deleted)
            }
            Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Gone) => {
                debug!(
                    operation = OP_DELETE_KEY,
                    key = guid_or_crn,
                    status = e.status,
                    "resource key already gone"
                );
                Ok(KeyDeletion::AlreadyGone)
            }
            Err(e) => Err(e),
        }
    }

    /// `PATCH /v2/resource_keys/{id}` with a new name (repeatable: the same name twice is one
    /// rename).
    pub async fn rename_key(
        &self,
        api_key: &SecretString,
        guid_or_crn: &str,
        name: &str,
    ) -> Result<ResourceKey, IbmError> {
        let body = serde_json::to_vec(&serde_json::json!({ "name": name }))
            .map_err(|e| IbmError::new(OP_RENAME_KEY, ErrorKind::InvalidResponse, e.to_string()))?;
        let request = Request {
            operation: OP_RENAME_KEY,
            endpoint: "PATCH /v2/resource_keys/{id}",
            method: Method::PATCH,
            url: self.rc_url(&["v2", "resource_keys", guid_or_crn]),
            body: Body::Json(body),
            retry: RetryMode::Idempotent,
            iam: false,
        };
        let reply = self.send(&request, api_key).await?;
        parse_json(OP_RENAME_KEY, &reply)
    }

    /// Requests made so far by (endpoint template, status code or "error").
    pub fn request_counts(&self) -> Vec<((String, String), u64)> {
        self.inner.auth.transport.request_counts()
    }

    /// Latency of the requests made so far, by endpoint template.
    pub fn request_latencies(&self) -> Vec<(String, Histogram)> {
        self.inner.auth.transport.request_latencies()
    }

    /// IAM token requests sent so far (each HTTP request to `/identity/token`).
    pub fn token_exchanges(&self) -> u64 {
        self.inner.auth.transport.token_exchanges()
    }

    /// What the process-wide rate budget did so far.
    pub fn budget_stats(&self) -> BudgetStats {
        self.inner.auth.transport.budget_stats()
    }

    /// Test hook: moves the token cache's clock forward, to exercise refresh and expiry without
    /// waiting for real tokens to age. Only with the `test-util` feature.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn advance_clock(&self, by: std::time::Duration) {
        self.inner.auth.transport.advance_clock(by);
    }

    async fn send(&self, request: &Request, api_key: &SecretString) -> Result<Reply, IbmError> {
        self.inner.auth.send(request, api_key).await
    }

    async fn list_all<T: serde::de::DeserializeOwned>(
        &self,
        api_key: &SecretString,
        operation: &'static str,
        endpoint: &'static str,
        first: Url,
    ) -> Result<Vec<T>, IbmError> {
        let (auth, endpoints) = (&self.inner.auth, &self.inner.endpoints);
        list_all(auth, endpoints, api_key, operation, endpoint, first).await
    }

    fn rc_url(&self, segments: &[&str]) -> Url {
        Endpoints::join(self.inner.endpoints.resource_controller(), segments)
    }
}
