//! Test harness: a real kube-apiserver + etcd (+ kube-controller-manager when present) on free
//! loopback ports, started once per test binary.
//!
//! ```ignore
//! use test_support as support;
//!
//! #[tokio::test]
//! async fn something() {
//!     let cp = support::control_plane();
//!     cp.install_crd(MyResource::crd()).await;
//!     let ns = cp.namespace("something").await;
//!     let client = cp.client().await;
//!     // ... create objects in `ns`, then await conditions with `support::wait_for`.
//! }
//! ```
//!
//! Binaries come from `KUBEBUILDER_ASSETS` (the layout `setup-envtest` produces) when it holds an
//! apiserver with the reflect2 fix, otherwise from `hack/envtest-assets.sh`, which builds and caches
//! them. Every server is started through a small `sh` watchdog, in a process group of its own, that
//! kills it (and a last one removes the temporary directory) as soon as the test process is gone,
//! whether it returned, panicked, got Ctrl-C or was killed with SIGKILL: statics are never dropped,
//! so nothing else would. `tests/cluster/control_plane.rs` checks this.

mod assets;
mod control_plane;
pub mod env;
pub mod operator;
mod process;
pub mod proxy;
pub mod workloads;

use std::path::PathBuf;
use std::time::Duration;

pub use assets::{REFLECT2_MARK, assets_dir, usable_assets};
pub use control_plane::{ControlPlane, Server, control_plane};
pub use process::{
    free_port, output, process_alive, signal, spawn_supervised, wait_for, wait_gone,
};

/// How long a test waits for a condition of the control plane or the operator.
pub const WAIT: Duration = Duration::from_secs(60);

/// The repository's root: where `hack/`, `charts/`, `crds/` and `examples/` are.
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The operator binary: `$IKO_OPERATOR_BIN` when set, otherwise the one cargo built next to the
/// running test, example or bench (`target/<profile>/ingestion-key-operator`). Cargo builds it
/// for integration tests and benches; `cargo run --example demo` needs a `cargo build` first.
pub fn operator_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("IKO_OPERATOR_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    dir.join("ingestion-key-operator")
}
