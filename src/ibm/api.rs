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

    /// Every key of the instance `instance_guid`, in any state.
    fn list_instance_keys<'a>(
        &'a self,
        api_key: &'a SecretString,
        instance_guid: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ResourceKey>, IbmError>>;

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

    /// Renames a key (a retained key leaves the operator's name family).
    fn rename_key<'a>(
        &'a self,
        api_key: &'a SecretString,
        guid_or_crn: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<ResourceKey, IbmError>>;
}

/// Implements [`IbmApi`] operations by forwarding each to the method of the same name on another
/// value (`this => expression`), boxed: for [`IbmCloud`] itself and for test wrappers that change
/// only some operations.
#[macro_export]
macro_rules! forward_ibm_api {
    ($this:ident => $target:expr; $($op:ident($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {$(
        fn $op<'a>(
            &'a self,
            api_key: &'a $crate::redact::SecretString,
            $($arg: &'a $ty),*
        ) -> $crate::ibm::BoxFuture<'a, Result<$out, $crate::ibm::IbmError>> {
            let $this = self;
            Box::pin($target.$op(api_key, $($arg),*))
        }
    )*};
}

// Inherent methods win over trait methods in `this.op(..)`: these call the client's own operations.
impl IbmApi for IbmCloud {
    forward_ibm_api! { this => this;
        find_instances_by_name(query: InstanceQuery) -> Vec<ResourceInstance>;
        get_instance(guid_or_crn: str) -> ResourceInstance;
        list_instance_keys(instance_guid: str) -> Vec<ResourceKey>;
        find_keys_by_name(instance_guid: str, name: str) -> Vec<ResourceKey>;
        create_key(request: CreateKeyRequest) -> ResourceKey;
        get_key(guid_or_crn: str) -> ResourceKey;
        delete_key(guid_or_crn: str) -> KeyDeletion;
        rename_key(guid_or_crn: str, name: str) -> ResourceKey;
    }
}
