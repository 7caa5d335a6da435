//! What the packaging tests share: the repository's paths, the Helm engine (`hack/helm.py`, PyPI
//! helm-python-sdk, installed on first use), kubectl against the test server, and the RBAC checks
//! that impersonate the operator's ServiceAccount.

pub use test_support as support;

pub use test_support::env as fixtures;

pub use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

pub use serde_json::{Value, json};

pub use support::ControlPlane;

pub const CRD_FILE: &str = "ingestionkeyrequests.keysync.dev.yaml";

pub const CHART: &str = "charts/ingestion-key-operator";

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Helpers: Helm engine, YAML, kubectl.

/// Runs `hack/helm.py ARGS`; the first call installs helm-python-sdk when it is missing.
pub fn helm(args: &[&str]) -> Result<String, String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| run_python(&["install-only"]).map(|out| eprintln!("{}", out.trim())))
        .clone()
        .unwrap_or_else(|e| panic!("the Helm engine (helm-python-sdk) is not available: {e}"));
    run_python(args)
}

pub fn run_python(args: &[&str]) -> Result<String, String> {
    support::output(
        Command::new("python3")
            .arg(root().join("hack/helm.py"))
            .args(args)
            .current_dir(root()),
        None,
    )
}

pub fn lint(values: &Value) {
    let report = helm(&["lint", CHART, "--values-json", &values.to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("1 chart(s) linted, 0 error(s)"), "{report}");
}

pub fn render(name: &str, namespace: &str, values: &Value) -> String {
    helm(&[
        "render",
        CHART,
        "--name",
        name,
        "--namespace",
        namespace,
        "--values-json",
        &values.to_string(),
    ])
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The objects of a YAML stream (empty documents dropped).
pub fn objects(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("parsing YAML: {e}\n{yaml}"));
    docs.into_iter().filter(|d| d.is_object()).collect()
}

pub fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

pub fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {:?}", kinds(objects)))
}

pub fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    support::output(cp.kubectl().args(args), stdin)
}

/// `kubectl apply --dry-run=server`: the API server admits every object (schemas, CEL rules).
pub fn dry_run_on_server(cp: &ControlPlane, manifests: &str) {
    kubectl(
        cp,
        &[
            "apply",
            "--dry-run=server",
            "--server-side",
            "--field-manager=packaging-test",
            "-f",
            "-",
        ],
        Some(&for_the_test_server(manifests)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Drops what the 1.20 test server cannot serve: `policy/v1` PodDisruptionBudgets (1.21+; the
/// schemas of 1.27-1.33 check them, in tests/schemas.rs).
pub fn for_the_test_server(manifests: &str) -> String {
    manifests
        .split("\n---")
        .filter(|doc| !doc.contains("kind: PodDisruptionBudget"))
        .collect::<Vec<_>>()
        .join("\n---")
}

/// The chart's default watched namespace (the IBM agents'), which an install needs to exist:
/// created once in the shared control plane, whichever test comes first.
pub const AGENTS_NAMESPACE: &str = "ibm-observe";

pub fn agents_namespace(cp: &ControlPlane) {
    let manifest =
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {AGENTS_NAMESPACE}\n");
    kubectl(cp, &["apply", "-f", "-"], Some(&manifest)).unwrap_or_else(|e| panic!("{e}"));
}

pub fn apply(cp: &ControlPlane, manifests: &str) {
    let manifests = for_the_test_server(manifests);
    kubectl(
        cp,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=packaging-test",
            "-f",
            "-",
        ],
        Some(&manifests),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Client-side apply without schema validation: API servers older than 1.25 (the harness runs
/// 1.20) know no x-kubernetes-validations; they drop them, but a server-side apply is refused.
pub fn apply_crd(cp: &ControlPlane, crd: &str) {
    kubectl(cp, &["apply", "--validate=false", "-f", "-"], Some(crd))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Waits until the CRD `crd/<name>` is Established.
pub fn wait_established(cp: &ControlPlane, crd: &str) {
    kubectl(
        cp,
        &["wait", "--for=condition=Established", "--timeout=60s", crd],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Installs the CRD from `crds/`, once per test binary (concurrent client-side creates collide).
pub fn install_crd(cp: &ControlPlane) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        apply_crd(
            cp,
            &std::fs::read_to_string(root().join("crds").join(CRD_FILE)).expect("read the CRD"),
        );
        wait_established(cp, "crd/ingestionkeyrequests.keysync.dev");
    });
}

/// `kubectl auth can-i VERB RESOURCE [-n NS | -A] --as=SA`.
pub fn can_i(
    cp: &ControlPlane,
    sa: &str,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let mut args = vec!["auth", "can-i", verb];
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    args.push(resource);
    let sub;
    if let Some(s) = subresource {
        sub = format!("--subresource={s}");
        args.push(&sub);
    }
    match namespace {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    let who = format!("--as={sa}");
    args.push(&who);
    let out = cp
        .kubectl()
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("kubectl auth can-i");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl {args:?}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Every resource rule of `sa` in `ns` (`kubectl auth can-i --list`), as resource -> verbs,
/// without the self-review rules every authenticated user has.
pub fn rules_of(cp: &ControlPlane, sa: &str, ns: &str) -> BTreeMap<String, BTreeSet<String>> {
    let out = kubectl(
        cp,
        &["auth", "can-i", "--list", "-n", ns, &format!("--as={sa}")],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut rules = BTreeMap::new();
    for line in out.lines().skip(1) {
        if line.starts_with(char::is_whitespace) || line.trim().is_empty() {
            continue; // non-resource URLs
        }
        let mut resource = line.split_whitespace().next().unwrap().to_string();
        if resource.starts_with("selfsubject") {
            continue;
        }
        // Columns: resources, [non-resource URLs], [resource names], [verbs].
        let groups: Vec<&str> = line
            .split('[')
            .skip(1)
            .map(|g| g.split(']').next().unwrap_or_default().trim())
            .collect();
        if let Some(names) = groups.get(1).filter(|n| !n.is_empty()) {
            resource = format!("{resource} named {names}");
        }
        let verbs = line
            .rsplit_once('[')
            .map(|(_, v)| v.trim_end_matches(']').trim())
            .unwrap_or("");
        let entry: &mut BTreeSet<String> = rules.entry(resource).or_default();
        entry.extend(verbs.split_whitespace().map(str::to_string));
    }
    rules
}

/// Whether the chart grants the rights on restart targets (`rbac.restartTargets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartTargets {
    /// `get` and `patch` on DaemonSets, Deployments and StatefulSets (the default).
    Granted,
    /// `rbac.restartTargets=false`: no rights on workloads at all.
    NotGranted,
}

/// The workload kinds a request can restart, as `kubectl auth can-i` names them.
pub const RESTART_KINDS: [&str; 3] = ["daemonsets.apps", "deployments.apps", "statefulsets.apps"];

/// What the operator needs, exactly, in a namespace it watches.
pub fn operator_rules(restart_targets: RestartTargets) -> BTreeMap<String, BTreeSet<String>> {
    let set = |verbs: &[&str]| verbs.iter().map(|v| v.to_string()).collect::<BTreeSet<_>>();
    let mut rules = BTreeMap::from([
        (
            "ingestionkeyrequests.keysync.dev".to_string(),
            set(&["get", "list", "watch", "patch"]),
        ),
        (
            "ingestionkeyrequests.keysync.dev/status".to_string(),
            set(&["get", "patch"]),
        ),
        (
            "secrets".to_string(),
            set(&["get", "list", "watch", "create", "patch", "delete"]),
        ),
        (
            "events.events.k8s.io".to_string(),
            set(&["create", "patch"]),
        ),
        // The cluster's identity (the kube-system namespace's UID), read once at start.
        ("namespaces named kube-system".to_string(), set(&["get"])),
    ]);
    if restart_targets == RestartTargets::Granted {
        for kind in RESTART_KINDS {
            rules.insert(kind.to_string(), set(&["get", "patch"]));
        }
    }
    rules
}

/// Checks what the operator may do in `ns` (everything it needs, nothing more); `cluster_wide`
/// says whether it may also act across all namespaces, `restart_targets` whether the chart
/// granted the rights on restart targets.
pub fn assert_operator_rights(
    cp: &ControlPlane,
    sa: &str,
    ns: &str,
    cluster_wide: bool,
    restart_targets: RestartTargets,
) {
    assert_eq!(
        rules_of(cp, sa, ns),
        operator_rules(restart_targets),
        "the rules of {sa} in {ns}"
    );
    let mut allowed: Vec<(&str, &str)> = vec![
        ("get", "ingestionkeyrequests.keysync.dev"),
        ("list", "ingestionkeyrequests.keysync.dev"),
        ("watch", "ingestionkeyrequests.keysync.dev"),
        ("patch", "ingestionkeyrequests.keysync.dev"),
        ("patch", "ingestionkeyrequests.keysync.dev/status"),
        ("get", "secrets"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("create", "secrets"),
        ("patch", "secrets"),
        // Its own old Secret after spec.secret.name changed (uid precondition).
        ("delete", "secrets"),
        ("create", "events.events.k8s.io"),
        ("patch", "events.events.k8s.io"),
    ];
    let mut forbidden: Vec<(&str, &str)> = vec![
        ("deletecollection", "secrets"),
        ("update", "secrets"),
        ("create", "ingestionkeyrequests.keysync.dev"),
        ("update", "ingestionkeyrequests.keysync.dev"),
        ("update", "ingestionkeyrequests.keysync.dev/status"),
        ("delete", "ingestionkeyrequests.keysync.dev"),
        ("get", "configmaps"),
        ("list", "pods"),
        ("create", "pods"),
        ("create", "events"),
        ("list", "events.events.k8s.io"),
        ("create", "serviceaccounts/token"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io"),
        ("impersonate", "serviceaccounts"),
        ("*", "*"),
        // delete on Secrets only: no other kind may be deleted.
        ("delete", "configmaps"),
        ("delete", "pods"),
        ("delete", "serviceaccounts"),
        ("delete", "events.events.k8s.io"),
        ("delete", "replicasets.apps"),
        ("delete", "roles.rbac.authorization.k8s.io"),
        // Restart targets are read and annotated, never scaled, listed or rewritten; no other
        // workload kind is touched.
        ("patch", "replicasets.apps"),
        ("patch", "pods"),
        ("patch", "jobs.batch"),
        ("patch", "cronjobs.batch"),
        ("patch", "deployments.apps/scale"),
        ("patch", "statefulsets.apps/scale"),
        ("patch", "daemonsets.apps/status"),
        ("patch", "deployments.apps/status"),
        ("patch", "statefulsets.apps/status"),
    ];
    for kind in RESTART_KINDS {
        for verb in [
            "create",
            "delete",
            "deletecollection",
            "update",
            "list",
            "watch",
        ] {
            forbidden.push((verb, kind));
        }
        match restart_targets {
            RestartTargets::Granted => allowed.extend([("get", kind), ("patch", kind)]),
            RestartTargets::NotGranted => forbidden.extend([("get", kind), ("patch", kind)]),
        }
    }
    for (verb, resource) in allowed {
        assert!(
            can_i(cp, sa, verb, resource, Some(ns)),
            "{sa} must be able to {verb} {resource} in {ns}"
        );
        assert_eq!(
            can_i(cp, sa, verb, resource, None),
            cluster_wide,
            "{sa}: {verb} {resource} in all namespaces"
        );
    }
    for (verb, resource) in forbidden {
        assert!(
            !can_i(cp, sa, verb, resource, Some(ns)),
            "{sa} must not be able to {verb} {resource} in {ns}"
        );
        assert!(
            !can_i(cp, sa, verb, resource, None),
            "{sa} must not be able to {verb} {resource} in all namespaces"
        );
    }
    // Cluster-scoped kinds: none at all.
    for (verb, resource) in [
        ("list", "namespaces"),
        ("get", "nodes"),
        ("update", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ] {
        assert!(
            !can_i(cp, sa, verb, resource, None),
            "{sa} must not be able to {verb} {resource}"
        );
    }
}

pub fn deployment_args(objects: &[Value]) -> Vec<String> {
    let container = &find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

pub fn deployment_env(objects: &[Value], name: &str) -> Value {
    let container = &find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// `value` with every whole float (`0.0`) written as an integer (`0`), so that documents that
/// differ only in how a number is spelt compare equal.
pub fn whole_numbers(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(whole_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, whole_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The chart installed (CRD, RBAC, ServiceAccount) to watch one namespace of its own, with its
/// ServiceAccount's token: the operator then runs with exactly the rights the chart grants.
pub struct ChartRun {
    pub operator_ns: String,
    pub watched: String,
    pub release: String,
    pub token: String,
}

impl ChartRun {
    pub async fn install(cp: &ControlPlane, label: &str) -> Self {
        install_crd(cp);
        let operator_ns = cp.namespace(&format!("{label}-operator")).await;
        let watched = cp.namespace(&format!("{label}-watched")).await;
        let release = release_name(label);
        let manifests = render(
            &release,
            &operator_ns,
            &json!({"watchNamespaces": [watched]}),
        );
        apply(cp, &manifests);
        let token = service_account_token(cp, &operator_ns, &objects(&manifests)).await;
        Self {
            operator_ns,
            watched,
            release,
            token,
        }
    }
}

pub fn release_name(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// The CRD.

/// The token of the chart's ServiceAccount (in `objs`), from the Secret the 1.20 token controller
/// makes for it.
pub async fn service_account_token(cp: &ControlPlane, operator_ns: &str, objs: &[Value]) -> String {
    let sa_name = find(objs, "ServiceAccount")["metadata"]["name"]
        .as_str()
        .expect("ServiceAccount name")
        .to_owned();

    // The 1.20 token controller gives the ServiceAccount a token Secret.
    let client = cp.client().await;
    let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(client.clone(), operator_ns);
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, operator_ns);
    let token = std::sync::Mutex::new(String::new());
    support::wait_for(
        "the ServiceAccount's token",
        Duration::from_secs(60),
        || async {
            let Ok(sa) = accounts.get(&sa_name).await else {
                return false;
            };
            let Some(secret_name) = sa
                .secrets
                .unwrap_or_default()
                .into_iter()
                .find_map(|r| r.name)
            else {
                return false;
            };
            let Ok(secret) = secrets.get(&secret_name).await else {
                return false;
            };
            match secret.data.and_then(|mut d| d.remove("token")) {
                Some(bytes) => {
                    *token.lock().unwrap() = String::from_utf8_lossy(&bytes.0).into_owned();
                    true
                }
                None => false,
            }
        },
    )
    .await;
    token.into_inner().unwrap()
}

pub const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#;

// ---------------------------------------------------------------------------------------------
// The Dockerfile's build context: everything cargo needs is copied.

/// A command that runs cargo (directly or through a script) as `make test` does: without the
/// package variables cargo gives this test process (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, ...).
/// Build scripts watch some of them (ring's: `cargo:rerun-if-env-changed=CARGO_PKG_NAME`), so a
/// cargo started with them reruns those scripts, and every later build recompiles ring and all
/// that depends on it.
pub fn as_make_runs_cargo(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let from_cargo = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&name.as_ref());
        if from_cargo {
            command.env_remove(name.as_ref());
        }
    }
    command
}

pub fn run_cargo(dir: &Path, args: &[&str]) -> Result<(), String> {
    // The build directory of `make lint` (target/): the replay checks on the dependencies
    // clippy already checked, so only the replayed workspace's own crates are checked. Its
    // artifacts land apart (target/dockerfile-context), never over the tests' own.
    let target = root().join("target/dockerfile-context");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let out = as_make_runs_cargo(&mut cargo)
        .args(args)
        .env("CARGO_BUILD_BUILD_DIR", root().join("target"))
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cargo {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A fresh temporary directory, removed when the test process ends normally (its contents are
/// small; a killed test leaves it in the system's temporary directory).
pub fn tempdir(prefix: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "iko-{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
}
