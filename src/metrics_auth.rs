//! `/metrics` behind the API server's own authentication and authorization (`--metrics-auth`), the
//! kube-rbac-proxy pattern without a sidecar: a scrape's bearer token is checked with a
//! TokenReview, and its identity may read the page only if a SubjectAccessReview allows `get` on
//! the non-resource URL `/metrics` (grant it with a ClusterRole, as for the API server's own
//! metrics). Answers are cached for a minute by the token's SHA-256, so Prometheus scraping every
//! few seconds costs two API calls a minute.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::{FutureExt, future::BoxFuture};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::warn;

use crate::{
    admin::{Access, MetricsAuthorizer},
    lock::lock,
    redact::SecretString,
};

/// How long an answer about one token is reused.
const CACHE_FOR: Duration = Duration::from_secs(60);
/// Tokens remembered at most (a flood of made-up tokens cannot grow the cache without bound).
const CACHE_SIZE: usize = 256;

/// Asks the API server about each scrape's token.
pub struct KubeMetricsAuthorizer {
    client: Client,
    cache: Mutex<HashMap<String, (Access, Instant)>>,
}

impl KubeMetricsAuthorizer {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::default(),
        }
    }

    async fn review(&self, token: &SecretString) -> Result<Access, kube::Error> {
        let review = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec {
                token: Some(token.expose().to_owned()),
                audiences: None,
            },
            status: None,
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Ok(Access::Unauthenticated);
        };
        let access = SubjectAccessReview {
            metadata: ObjectMeta::default(),
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
                ..SubjectAccessReviewSpec::default()
            },
            status: None,
        };
        let answered = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        let allowed = answered.status.is_some_and(|s| s.allowed);
        Ok(if allowed {
            Access::Allowed
        } else {
            Access::Forbidden
        })
    }
}

impl MetricsAuthorizer for KubeMetricsAuthorizer {
    fn access<'a>(&'a self, token: Option<&'a str>) -> BoxFuture<'a, Access> {
        async move {
            let Some(token) = token.filter(|t| !t.is_empty()).map(SecretString::new) else {
                return Access::Unauthenticated;
            };
            let key = token.digest_hex();
            if let Some((access, at)) = lock(&self.cache).get(&key)
                && at.elapsed() < CACHE_FOR
            {
                return *access;
            }
            match self.review(&token).await {
                Ok(access) => {
                    let mut cache = lock(&self.cache);
                    cache.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
                    if cache.len() < CACHE_SIZE {
                        cache.insert(key, (access, Instant::now()));
                    }
                    access
                }
                Err(error) => {
                    warn!(%error, "could not review a scrape's token with the API server");
                    Access::Unknown
                }
            }
        }
        .boxed()
    }
}
