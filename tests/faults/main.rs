//! The fault tier: what a production control plane and a broken network do to the operator
//! binary, on real parts (kube-apiserver and etcd of `test_support`, the IBM Cloud simulator over
//! HTTP). Each test checks that nothing is lost or duplicated and how long recovery took.
//!
//! - `api_server`: the API server restarted under the operator (its own control plane, since the
//!   test stops it); the watches expire (410 Gone) and must relist at once.
//! - `lease`: a leader whose lease is taken stops acting and exits, to stand by again; a leader
//!   cut off from the API server (a proxy swallowing its traffic) stops calling IBM Cloud before
//!   the standby takes over.
//! - `watch_expiry`: etcd compacted while the operator is cut off: its watches get `410 Gone`,
//!   relist at once, and miss neither the request nor the Secret edit made in the gap.
//! - `ibm_garbage`: IBM Cloud answering bodies that are not its API: reported, then recovered.

mod api_server;
mod ibm_garbage;
mod lease;
mod soak;
mod watch_expiry;
