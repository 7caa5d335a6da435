//! The IBM Cloud operations the reconciler uses, as a trait: the seam between reconcile logic and
//! HTTP. [`IbmCloud`] is the real implementation; tests may wrap or replace it (to count calls or
//! inject a failure at one step) and still drive the reconciler against a real API server.

use futures::future::BoxFuture;

use super::client::IbmCloud;
use super::error::IbmError;
use super::model::{CreateKeyRequest, InstanceQuery, KeyDeletion, ResourceInstance, ResourceKey};
use crate::redact::SecretString;

/// Resource Controller operations, each authenticated with an API key (exchanged for a cached IAM
/// token by the implementation). Boxed futures keep the trait usable as `dyn IbmApi`.
pub trait IbmApi: Send + Sync + 'static {
    /// Instances named exactly `query.name`, narrowed by the query's other fields.
    fn find_instances_by_name<'a>(
        &'a self,
        api_key: &'a SecretString,
        query: &'a InstanceQuery,
    ) -> BoxFuture<'a, Result<Vec<ResourceInstance>, IbmError>>;

    /// One instance by GUID or CRN.
    fn get_instance<'a>(
        &'a self,
        api_key: &'a SecretString,
        guid_or_crn: &'a str,
    ) -> BoxFuture<'a, Result<ResourceInstance, IbmError>>;

    /// Keys named exactly `name` on the instance `instance_guid`, in any state.
    fn find_keys_by_name<'a>(
        &'a self,
        api_key: &'a SecretString,
        instance_guid: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ResourceKey>, IbmError>>;

    /// Creates a key. Not idempotent: callers record the creation as pending first.
    fn create_key<'a>(
        &'a self,
        api_key: &'a SecretString,
        request: &'a CreateKeyRequest,
    ) -> BoxFuture<'a, Result<ResourceKey, IbmError>>;

    /// One key by GUID or CRN (removed keys come back with state `removed`, or 404).
    fn get_key<'a>(
        &'a self,
        api_key: &'a SecretString,
        guid_or_crn: &'a str,
    ) -> BoxFuture<'a, Result<ResourceKey, IbmError>>;

    /// Deletes a key; a key already gone is [`KeyDeletion::AlreadyGone`], not an error.
    fn delete_key<'a>(
        &'a self,
        api_key: &'a SecretString,
        guid_or_crn: &'a str,
    ) -> BoxFuture<'a, Result<KeyDeletion, IbmError>>;
}

impl IbmApi for IbmCloud {
    fn find_instances_by_name<'a>(
        &'a self,
        api_key: &'a SecretString,
        query: &'a InstanceQuery,
    ) -> BoxFuture<'a, Result<Vec<ResourceInstance>, IbmError>> {
        Box::pin(IbmCloud::find_instances_by_name(self, api_key, query))
    }

    fn get_instance<'a>(
        &'a self,
        api_key: &'a SecretString,
        guid_or_crn: &'a str,
    ) -> BoxFuture<'a, Result<ResourceInstance, IbmError>> {
        Box::pin(IbmCloud::get_instance(self, api_key, guid_or_crn))
    }

    fn find_keys_by_name<'a>(
        &'a self,
        api_key: &'a SecretString,
        instance_guid: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ResourceKey>, IbmError>> {
        Box::pin(IbmCloud::find_keys_by_name(
            self,
            api_key,
            instance_guid,
            name,
        ))
    }

    fn create_key<'a>(
        &'a self,
        api_key: &'a SecretString,
        request: &'a CreateKeyRequest,
    ) -> BoxFuture<'a, Result<ResourceKey, IbmError>> {
        Box::pin(IbmCloud::create_key(self, api_key, request))
    }

    fn get_key<'a>(
        &'a self,
        api_key: &'a SecretString,
        guid_or_crn: &'a str,
    ) -> BoxFuture<'a, Result<ResourceKey, IbmError>> {
        Box::pin(IbmCloud::get_key(self, api_key, guid_or_crn))
    }

    fn delete_key<'a>(
        &'a self,
        api_key: &'a SecretString,
        guid_or_crn: &'a str,
    ) -> BoxFuture<'a, Result<KeyDeletion, IbmError>> {
        Box::pin(IbmCloud::delete_key(self, api_key, guid_or_crn))
    }
}
