//! The `IngestionKeyRequest` controller.
//!
//! - `controller`: the watches, the entry of one reconcile (the finalizer chooses apply or
//!   deletion) and the back-off after a failure.
//! - `context`: the settings, clients and per-request memory every reconcile shares; `events`.
//! - `apply`: one sync, phase by phase: validate -> read the API key (`api_key`) -> resolve the
//!   instance (`instance`) -> find or create the key (`keys`) -> write the Secret (`secret`) ->
//!   roll out restart targets (`rollout`) -> retire replaced keys (`retire`) -> status (`status`).
//! - `deletion`: the finalizer's work when a request goes; `finalizer`: the request's finalizer
//!   and the announcement of a key creation, written together.
//! - `api_key_index`: which requests name an API key Secret, from the requests' watch;
//!   `api_key_cache`: API key Secrets already read, while the Secrets' watch shows them unchanged.
//! - `orphan_audit`: the leader's optional count of keys whose request is gone (a metric).
//! - `requeue`: the back-off after a failure and the jitter of refreshes.
//! - `plan`: every decision of those phases as a pure function of what the phase read; the
//!   phases above only read, ask `plan`, and carry out its answer.

mod api_key;
mod api_key_cache;
mod api_key_index;
mod apply;
mod context;
mod controller;
mod deletion;
pub mod error;
mod events;
#[cfg(test)]
mod fake_api_server;
#[cfg(test)]
mod fast_tests;
mod finalizer;
mod instance;
mod keys;
mod orphan_audit;
pub mod plan;
mod requeue;
mod retire;
mod rollout;
mod secret;
mod status;
mod watched;

pub use self::{
    context::{Context, Settings},
    controller::{Shutdown, reconcile, run},
    error::ReconcileError,
};
