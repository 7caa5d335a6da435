//! What the Kubernetes 1.20 test control plane cannot check, checked without one:
//!
//! - `hack/check-cel.py`: the CRD's CEL rules (`x-kubernetes-validations`, dropped unevaluated by
//!   kube-apiserver 1.20) evaluated by a real CEL implementation (PyPI cel-python) against valid and
//!   invalid objects; `--self-test` checks that mutated rules are caught by those cases.
//! - `hack/check-k8s-schemas.py`: the CRD, the kustomize base, the rendered Helm chart and the
//!   examples validated in strict mode against the API schemas of Kubernetes 1.27 to 1.33 (PyPI
//!   kubernetes-validate, offline).
//!
//! - `hack/check-vap.py`: the chart's ValidatingAdmissionPolicy (1.30+) evaluated the same way
//!   against updates of DaemonSets, Deployments and StatefulSets by the operator and by others.
//!
//! The scripts install their package with pip on first use. See docs/testing.md.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
};

/// One script at a time: on first use each runs `pip install` into the same Python, and two
/// concurrent installs could trip over each other. A run takes a few seconds once installed.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `python3 ARGS` from the repository root; asserts exit 0 and a last line
/// `N passed, 0 failed` with N > 0, and returns N. Prints the whole output on failure.
fn run_check(args: &[&str]) -> u64 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let out = Command::new("python3")
        .args(args)
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running python3 {args:?}: {e}"));
    drop(guard);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!(
        "python3 {}: {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        args.join(" "),
        out.status
    );
    assert!(out.status.success(), "{report}");
    let last = stdout.lines().last().unwrap_or_default();
    let passed = last
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("last line is not `N passed, 0 failed`: {last:?}\n{report}"));
    assert!(passed > 0, "nothing was checked\n{report}");
    passed
}

#[test]
fn cel_rules_hold_for_valid_objects_and_break_for_invalid_ones() {
    run_check(&["hack/check-cel.py"]);
}

#[test]
fn cel_checker_catches_mutated_rules() {
    run_check(&["hack/check-cel.py", "--self-test"]);
}

/// The chart's ValidatingAdmissionPolicy (1.30+, `admissionPolicy.enabled`) lets the operator
/// change only its pod-template annotation on workloads, and leaves other users alone.
#[test]
fn admission_policy_admits_only_the_operators_fingerprint_annotation() {
    run_check(&["hack/check-vap.py"]);
}

#[test]
fn manifests_validate_against_kubernetes_1_27_to_1_33() {
    run_check(&["hack/check-k8s-schemas.py"]);
}
