//! ingestion-key-operator: turns an `IngestionKeyRequest` into an IBM Cloud resource key and a
//! Kubernetes Secret that log agents mount.
//!
//! Dependencies point inwards: `crd` and `redact` depend on nothing of ours; `ibm` (the IBM Cloud
//! client) knows no Kubernetes types; `render` is pure; `reconciler` ties them together; `admin`,
//! `telemetry` and `cli` are the outer shell.

pub mod admin;
pub mod backoff;
pub mod cli;
pub mod crd;
pub mod histogram;
pub mod ibm;
pub mod leader;
pub mod lock;
pub mod memory;
pub mod metrics;
pub mod metrics_auth;
pub mod plugin;
pub mod reconciler;
pub mod redact;
pub mod render;
pub mod telemetry;
