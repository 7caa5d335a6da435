//! The cluster tier: everything that needs the real kube-apiserver and etcd of `test_support`,
//! started once for this binary and shared by every test (each in a namespace of its own).
//!
//! - The reconcile logic in process (`harness` and the behaviour files after it), seconds a test.
//! - The operator binary end to end: watches, failover, rate limits, namespace deletion
//!   (`controller`, `operations`), its metrics under a real Prometheus (`monitoring`).
//! - The harness itself (`control_plane`): a broken apiserver fails here, and no server outlives
//!   the test process.

mod harness;

mod deletion;
mod keys;
mod reporting;
mod rotation;
mod secret;
mod writes;

mod control_plane;
mod controller;
mod monitoring;
mod operations;
mod plugin;
mod plugin_audit;
mod security;
