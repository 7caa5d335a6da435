//! IBM Cloud client: IAM (API key -> bearer token) and Resource Controller v2 (instances and
//! resource keys). Free of Kubernetes types.
//!
//! Secrets (API keys, tokens, credentials) are held in [`SecretString`] or [`Credentials`], whose
//! `Debug`/`Display` never show values; errors and logs carry operations, statuses and transaction
//! ids only.

mod api;
mod budget;
mod client;
mod endpoints;
mod error;
#[cfg(test)]
mod garbage_tests;
mod model;
mod paging;
mod retry;
mod token;
mod transport;

pub use crate::redact::SecretString;
pub use api::IbmApi;
pub use budget::BudgetStats;
pub use client::IbmCloud;
pub use endpoints::Endpoints;
pub use error::{ErrorKind, IbmError};
pub use futures::future::BoxFuture;
pub use model::{
    CreateKeyRequest, CredentialError, Credentials, Crn, InstanceQuery, KeyDeletion,
    ResourceInstance, ResourceKey, ResourceList, TokenResponse, role_for_key,
};
pub use paging::next_page_url;
pub use retry::{backoff, parse_epoch_reset, parse_retry_after};
pub use transport::ClientConfig;

/// Operation names used in errors and logs.
pub const OP_TOKEN: &str = "exchange API key for IAM token";
pub const OP_LIST_INSTANCES: &str = "list resource instances";
pub const OP_GET_INSTANCE: &str = "get resource instance";
pub const OP_LIST_KEYS: &str = "list resource keys of instance";
pub const OP_FIND_KEYS: &str = "find resource keys by name";
pub const OP_CREATE_KEY: &str = "create resource key";
pub const OP_GET_KEY: &str = "get resource key";
pub const OP_DELETE_KEY: &str = "delete resource key";
pub const OP_RENAME_KEY: &str = "rename resource key";
