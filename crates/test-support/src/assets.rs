//! The control-plane binaries: etcd, kube-apiserver (with the reflect2 fix) and
//! kube-controller-manager.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A string the apiserver binary contains only when built with reflect2 >= 1.0.2. Kubernetes 1.20
/// vendors reflect2 1.0.1, which crashes the apiserver on the first custom resource it serves when
/// built with Go >= 1.18.
pub const REFLECT2_MARK: &[u8] = b"modern-go/reflect2/go_above_118.go";

/// The binaries: `KUBEBUILDER_ASSETS` when it holds a fixed apiserver and etcd, otherwise whatever
/// `hack/envtest-assets.sh` prints (it refuses unfixed binaries and builds and caches good ones).
pub fn assets_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if usable_assets(&dir) {
            return Ok(dir);
        }
        eprintln!(
            "KUBEBUILDER_ASSETS={} lacks etcd or a kube-apiserver with the reflect2 fix; \
             falling back to hack/envtest-assets.sh",
            dir.display()
        );
    }
    let script = crate::repo_root().join("hack/envtest-assets.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", script.display(), out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(text.lines().last().unwrap_or("").trim());
    if !usable_assets(&dir) {
        return Err(format!(
            "{} printed {:?}, which lacks usable binaries",
            script.display(),
            dir
        ));
    }
    Ok(dir)
}

/// `dir` holds etcd and a kube-apiserver carrying the reflect2 fix.
pub fn usable_assets(dir: &Path) -> bool {
    dir.join("etcd").is_file()
        && std::fs::read(dir.join("kube-apiserver"))
            .is_ok_and(|bin| bin.windows(REFLECT2_MARK.len()).any(|w| w == REFLECT2_MARK))
}
