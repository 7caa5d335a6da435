//! The IBM tier: the operator's IBM Cloud client over real HTTP against the in-process simulator,
//! IBM's own bodies through its parsers, and IBM's own Python SDK against the simulator.
//!
//! Every test starts its own simulator on 127.0.0.1:0. All log output of this binary (client,
//! simulator, reqwest) is captured at TRACE level into one buffer; `log_scan` runs its own
//! scenario and then checks that buffer for every secret any test has registered.

mod harness;

mod errors;
mod instances;
mod keys;
mod log_scan;
mod python_sdk;
mod retries;
mod sdk_compat;
mod tokens;
