//! Packaging: the CRD copies, the Helm chart (linted and rendered by the real Helm engine through
//! `hack/helm.py`, PyPI helm-python-sdk, installed on first use), the kustomize base, and the RBAC
//! they grant, checked on the real API server of the harness by impersonating the operator's
//! ServiceAccount. Finally the operator runs with nothing but that ServiceAccount's token.

use test_support as support;
use test_support::env as fixtures;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use serde_json::{Value, json};
use support::ControlPlane;

const CRD_FILE: &str = "ingestionkeyrequests.keysync.dev.yaml";
const CHART: &str = "charts/ingestion-key-operator";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Helpers: Helm engine, YAML, kubectl.

/// Runs `hack/helm.py ARGS`; the first call installs helm-python-sdk when it is missing.
fn helm(args: &[&str]) -> Result<String, String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| run_python(&["install-only"]).map(|out| eprintln!("{}", out.trim())))
        .clone()
        .unwrap_or_else(|e| panic!("the Helm engine (helm-python-sdk) is not available: {e}"));
    run_python(args)
}

fn run_python(args: &[&str]) -> Result<String, String> {
    let out = Command::new("python3")
        .arg(root().join("hack/helm.py"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running python3 hack/helm.py: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "hack/helm.py {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn lint(values: &Value) {
    let report = helm(&["lint", CHART, "--values-json", &values.to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("1 chart(s) linted, 0 error(s)"), "{report}");
}

fn render(name: &str, namespace: &str, values: &Value) -> String {
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
fn objects(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("parsing YAML: {e}\n{yaml}"));
    docs.into_iter().filter(|d| d.is_object()).collect()
}

fn kinds(objects: &[Value]) -> Vec<String> {
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

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {:?}", kinds(objects)))
}

fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = cp.kubectl();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|e| format!("running kubectl: {e}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "kubectl {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Drops what the 1.20 test server cannot serve: `policy/v1` PodDisruptionBudgets (1.21+; the
/// schemas of 1.27-1.33 check them, in tests/schemas.rs).
fn for_the_test_server(manifests: &str) -> String {
    manifests
        .split("\n---")
        .filter(|doc| !doc.contains("kind: PodDisruptionBudget"))
        .collect::<Vec<_>>()
        .join("\n---")
}

fn apply(cp: &ControlPlane, manifests: &str) {
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
fn apply_crd(cp: &ControlPlane, crd: &str) {
    kubectl(cp, &["apply", "--validate=false", "-f", "-"], Some(crd))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Waits until the CRD `crd/<name>` is Established.
fn wait_established(cp: &ControlPlane, crd: &str) {
    kubectl(
        cp,
        &["wait", "--for=condition=Established", "--timeout=60s", crd],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Installs the CRD from `crds/`, once per test binary (concurrent client-side creates collide).
fn install_crd(cp: &ControlPlane) {
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
fn can_i(cp: &ControlPlane, sa: &str, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
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
fn rules_of(cp: &ControlPlane, sa: &str, ns: &str) -> BTreeMap<String, BTreeSet<String>> {
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
        let resource = line.split_whitespace().next().unwrap().to_string();
        if resource.starts_with("selfsubject") {
            continue;
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
enum RestartTargets {
    /// `get` and `patch` on DaemonSets, Deployments and StatefulSets (the default).
    Granted,
    /// `rbac.restartTargets=false`: no rights on workloads at all.
    NotGranted,
}

/// The workload kinds a request can restart, as `kubectl auth can-i` names them.
const RESTART_KINDS: [&str; 3] = ["daemonsets.apps", "deployments.apps", "statefulsets.apps"];

/// What the operator needs, exactly, in a namespace it watches.
fn operator_rules(restart_targets: RestartTargets) -> BTreeMap<String, BTreeSet<String>> {
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
fn assert_operator_rights(
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

fn deployment_args(objects: &[Value]) -> Vec<String> {
    let container = &find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

fn deployment_env(objects: &[Value], name: &str) -> Value {
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
fn whole_numbers(value: Value) -> Value {
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

fn release_name(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// The CRD.

#[test]
fn every_crd_copy_is_byte_identical_to_the_binary_output() {
    let generated = ingestion_key_operator::cli::crd_yaml().expect("render the CRD");
    for copy in [
        PathBuf::from("crds"),
        PathBuf::from(CHART).join("crds"),
        PathBuf::from("deploy/crds"),
    ] {
        let path = root().join(&copy).join(CRD_FILE);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert!(
            text == generated,
            "{} differs from `ingestion-key-operator crd`: regenerate it with `make crds crd-copies`",
            copy.join(CRD_FILE).display()
        );
    }
    // The Helm engine loads it from the chart's crds/ as it is.
    let from_helm = helm(&["crds", CHART]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_helm, generated, "the chart's CRD as Helm loads it");
}

// ---------------------------------------------------------------------------------------------
// The chart.

#[test]
fn the_install_notes_warn_about_the_placeholder_image_and_name_the_agents_namespace() {
    let defaults =
        helm(&["notes", "charts/ingestion-key-operator"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        defaults.contains("WARNING: image.repository is still the chart's placeholder"),
        "{defaults}"
    );
    assert!(
        defaults.contains("kubectl create namespace ibm-observe"),
        "{defaults}"
    );
    let values = json!({"image": {"repository": "registry.example.com/ingestion-key-operator"}});
    let set = helm(&[
        "notes",
        "charts/ingestion-key-operator",
        "--values-json",
        &values.to_string(),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!set.contains("WARNING"), "{set}");
}

#[tokio::test]
async fn chart_with_default_values_lints_renders_applies_and_grants_cluster_wide_least_privilege() {
    let cp = support::control_plane();
    install_crd(cp);
    let ns = cp.namespace("chart-default").await;
    let release = release_name("default");
    lint(&json!({}));
    let manifests = render(&release, &ns, &json!({}));
    let objs = objects(&manifests);
    let fullname = format!("{release}-ingestion-key-operator");
    let mut found = kinds(&objs);
    found.sort();
    assert_eq!(
        found,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .iter()
        .map(|k| format!(
            "{k}/{}",
            match *k {
                "Service" => format!("{fullname}-metrics"),
                "Role" | "RoleBinding" => format!("{fullname}-leader-election"),
                _ => fullname.clone(),
            }
        ))
        .collect::<Vec<_>>()
    );
    // Two replicas with leader election, rolled one at a time, kept through drains, spread.
    let deployment = find(&objs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let args = deployment_args(&objs);
    assert!(args.contains(&"--leader-elect".to_string()), "{args:?}");
    assert!(
        args.contains(&format!("--leader-election-namespace={ns}")),
        "{args:?}"
    );
    assert_eq!(
        find(&objs, "PodDisruptionBudget")["spec"]["minAvailable"],
        1
    );
    assert!(
        deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
            ["preferredDuringSchedulingIgnoredDuringExecution"]
            .is_array()
    );

    // The Deployment: hardened, probed, bounded, public endpoints, every namespace.
    let pod = &find(&objs, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["privileged"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].is_string(),
                "resources.{kind}.{resource}"
            );
        }
    }
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "admin"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "admin"})
    );
    assert_eq!(
        container["ports"][0],
        json!({"name": "admin", "containerPort": 8080, "protocol": "TCP"})
    );
    assert_eq!(container["image"], "ingestion-key-operator:0.1.0");
    assert_eq!(
        deployment_args(&objs),
        [
            "run".to_string(),
            "--admin-addr=0.0.0.0:8080".into(),
            "--log-format=json".into(),
            "--leader-elect".into(),
            format!("--leader-election-namespace={ns}"),
        ]
    );
    assert_eq!(
        deployment_env(&objs, "IBMCLOUD_IAM_ENDPOINT")["value"],
        "https://iam.cloud.ibm.com"
    );
    assert_eq!(
        deployment_env(&objs, "IBMCLOUD_RESOURCE_CONTROLLER_ENDPOINT")["value"],
        "https://resource-controller.cloud.ibm.com"
    );
    assert_eq!(
        deployment_env(&objs, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(pod["serviceAccountName"], fullname.as_str());
    let service = find(&objs, "Service");
    assert_eq!(service["spec"]["ports"][0]["name"], "http-metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "admin");

    // Applied for real; the API server accepts every object.
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
        Some(&for_the_test_server(&manifests)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    apply(cp, &manifests);
    let other = cp.namespace("chart-default-other").await;
    assert_operator_rights(
        cp,
        &format!("system:serviceaccount:{ns}:{fullname}"),
        &other,
        true,
        RestartTargets::Granted,
    );
    // In its own namespace, the Lease rights on top (leader election).
    let mut own = operator_rules(RestartTargets::Granted);
    own.insert(
        "leases.coordination.k8s.io".into(),
        BTreeSet::from(["create".to_string(), "get".into(), "update".into()]),
    );
    assert_eq!(
        rules_of(cp, &format!("system:serviceaccount:{ns}:{fullname}"), &ns),
        own
    );
}

#[tokio::test]
async fn chart_for_given_namespaces_grants_rights_there_and_nowhere_else() {
    let cp = support::control_plane();
    install_crd(cp);
    // A stand-in for the Prometheus Operator's CRD, so that the ServiceMonitor can be applied.
    apply_crd(cp, SERVICE_MONITOR_CRD);
    wait_established(cp, "crd/servicemonitors.monitoring.coreos.com");
    let ns = cp.namespace("chart-ns-operator").await;
    let watched = [
        cp.namespace("chart-ns-a").await,
        cp.namespace("chart-ns-b").await,
    ];
    let unwatched = cp.namespace("chart-ns-other").await;
    let release = release_name("scoped");
    let values = json!({
        "watchNamespaces": [watched[0], watched[1], watched[0]],
        "ibmCloud": {"endpoints": "private"},
        "logFormat": "text",
        "logLevel": "debug",
        "image": {"repository": "registry.example.com/team/ingestion-key-operator", "tag": "0.1.0-rc1"},
        "resources": {"requests": {"cpu": "10m", "memory": "24Mi"}, "limits": {"cpu": "1", "memory": "64Mi"}},
        "extraArgs": ["--concurrency=4"],
        "metrics": {"serviceMonitor": {"enabled": true, "interval": "15s", "labels": {"release": "prometheus"}}},
        "serviceAccount": {"name": "key-operator", "annotations": {"example.com/owner": "platform"}},
    });
    lint(&values);
    let manifests = render(&release, &ns, &values);
    let objs = objects(&manifests);
    let fullname = format!("{release}-ingestion-key-operator");

    // No cluster-scoped rights at all: a Role and RoleBinding in each watched namespace.
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        assert!(
            objs.iter().all(|o| o["kind"] != kind),
            "{kind} rendered for given namespaces: {:?}",
            kinds(&objs)
        );
    }
    // The leader-election Role is in the release namespace, for its Lease only.
    let lease_role = objs
        .iter()
        .find(|o| {
            o["kind"] == "Role" && o["metadata"]["name"] == format!("{fullname}-leader-election")
        })
        .expect("the leader-election Role");
    assert_eq!(lease_role["metadata"]["namespace"], ns.as_str());
    assert_eq!(
        lease_role["rules"],
        json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["ingestion-key-operator"], "verbs": ["get", "update"]},
        ])
    );
    let is_lease_rbac = |o: &&Value| {
        o["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-leader-election"))
    };
    for kind in ["Role", "RoleBinding"] {
        let namespaces: BTreeSet<&str> = objs
            .iter()
            .filter(|o| o["kind"] == kind)
            .filter(|o| !is_lease_rbac(o))
            .map(|o| o["metadata"]["namespace"].as_str().unwrap())
            .collect();
        assert_eq!(
            namespaces,
            watched.iter().map(String::as_str).collect(),
            "{kind}s"
        );
    }
    assert_eq!(
        deployment_args(&objs),
        [
            "run".to_string(),
            "--admin-addr=0.0.0.0:8080".into(),
            "--log-format=text".into(),
            "--leader-elect".into(),
            format!("--leader-election-namespace={ns}"),
            format!("--namespace={}", watched[0]),
            format!("--namespace={}", watched[1]),
            "--concurrency=4".into(),
        ]
    );
    assert_eq!(
        deployment_env(&objs, "IBMCLOUD_IAM_ENDPOINT")["value"],
        "https://private.iam.cloud.ibm.com"
    );
    assert_eq!(
        deployment_env(&objs, "IBMCLOUD_RESOURCE_CONTROLLER_ENDPOINT")["value"],
        "https://private.resource-controller.cloud.ibm.com"
    );
    assert_eq!(deployment_env(&objs, "RUST_LOG")["value"], "debug");
    let container = &find(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/team/ingestion-key-operator:0.1.0-rc1"
    );
    assert_eq!(container["resources"]["limits"]["memory"], "64Mi");
    let monitor = find(&objs, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(
        find(&objs, "ServiceAccount")["metadata"]["name"],
        "key-operator"
    );

    apply(cp, &manifests);
    let sa = format!("system:serviceaccount:{ns}:key-operator");
    for watched in &watched {
        assert_operator_rights(cp, &sa, watched, false, RestartTargets::Granted);
    }
    assert_eq!(
        rules_of(cp, &sa, &unwatched),
        BTreeMap::new(),
        "rights in a namespace that is not watched"
    );
    assert_eq!(
        rules_of(cp, &sa, &ns),
        BTreeMap::from([(
            "leases.coordination.k8s.io".to_string(),
            BTreeSet::from(["create".to_string(), "get".into(), "update".into()]),
        )]),
        "rights in the operator's own namespace: its Lease only"
    );
    for (verb, resource) in [
        ("get", "secrets"),
        ("delete", "secrets"),
        ("list", "ingestionkeyrequests.keysync.dev"),
        ("create", "events.events.k8s.io"),
        ("get", "daemonsets.apps"),
        ("patch", "daemonsets.apps"),
        ("patch", "deployments.apps"),
        ("patch", "statefulsets.apps"),
    ] {
        assert!(
            !can_i(cp, &sa, verb, resource, Some(&unwatched)),
            "{verb} {resource} in {unwatched}"
        );
    }
    assert!(
        objs.iter()
            .all(|o| o["metadata"]["name"] != fullname.as_str() || o["kind"] != "ClusterRole")
    );

    // A bad endpoint choice is refused at render time.
    let error = helm(&[
        "render",
        CHART,
        "--values-json",
        r#"{"ibmCloud":{"endpoints":"intranet"}}"#,
    ])
    .unwrap_err();
    assert!(
        error.contains("ibmCloud.endpoints must be public or private"),
        "{error}"
    );
}

/// `rbac.restartTargets=false`: no rights on DaemonSets, Deployments or StatefulSets, neither
/// cluster-wide nor in watched namespaces; everything else as with the defaults.
#[tokio::test]
async fn chart_without_restart_target_rights_grants_nothing_on_workloads() {
    let cp = support::control_plane();
    install_crd(cp);
    let off = json!({"restartTargets": false});

    // Cluster-wide.
    let ns = cp.namespace("chart-norestart").await;
    let other = cp.namespace("chart-norestart-other").await;
    let release = release_name("norestart");
    let values = json!({"rbac": off});
    lint(&values);
    let manifests = render(&release, &ns, &values);
    let role = find(&objects(&manifests), "ClusterRole").clone();
    assert!(
        role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .all(|r| r["apiGroups"] != json!(["apps"])),
        "no apps rule: {role}"
    );
    apply(cp, &manifests);
    let fullname = format!("{release}-ingestion-key-operator");
    let sa = format!("system:serviceaccount:{ns}:{fullname}");
    assert_operator_rights(cp, &sa, &other, true, RestartTargets::NotGranted);

    // Given namespaces.
    let operator_ns = cp.namespace("chart-norestart-scoped").await;
    let watched = cp.namespace("chart-norestart-watched").await;
    let release = release_name("norestart-scoped");
    let values = json!({"watchNamespaces": [watched], "rbac": off});
    lint(&values);
    apply(cp, &render(&release, &operator_ns, &values));
    let sa = format!("system:serviceaccount:{operator_ns}:{release}-ingestion-key-operator");
    assert_operator_rights(cp, &sa, &watched, false, RestartTargets::NotGranted);
}

#[tokio::test]
async fn chart_network_policy_admits_only_the_named_scrapers_and_egress_to_dns_api_and_https() {
    let cp = support::control_plane();
    let ns = cp.namespace("chart-netpol").await;
    let release = release_name("netpol");
    let prometheus = json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    });
    let values = json!({"networkPolicy": {
        "enabled": true,
        "metrics": {"from": [prometheus]},
        "apiServer": {"cidrs": ["10.0.0.1/32"]},
        "https": {"cidrs": ["0.0.0.0/0"]},
    }});
    lint(&values);
    let manifests = render(&release, &ns, &values);
    let objs = objects(&manifests);
    let policy = find(&objs, "NetworkPolicy");
    let deployment = find(&objs, "Deployment");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
        "the policy selects the operator's pods"
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{"from": [prometheus], "ports": [{"port": 8080, "protocol": "TCP"}]}]),
        "ingress: the admin port, from Prometheus only"
    );
    let egress = policy["spec"]["egress"].as_array().expect("egress rules");
    assert_eq!(egress.len(), 3, "{egress:?}");
    assert_eq!(
        egress[0]["ports"],
        json!([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])
    );
    assert_eq!(
        egress[0]["to"][0]["podSelector"]["matchLabels"]["k8s-app"],
        "kube-dns"
    );
    assert_eq!(
        egress[1],
        json!({"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}],
               "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]}),
        "the API server"
    );
    assert_eq!(
        egress[2],
        json!({"ports": [{"port": 443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}),
        "HTTPS: IBM Cloud"
    );
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
        Some(&for_the_test_server(&manifests)),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // Nobody named: no ingress at all.
    let closed = objects(&render(
        &release,
        &ns,
        &json!({"networkPolicy": {"enabled": true}}),
    ));
    assert_eq!(find(&closed, "NetworkPolicy")["spec"]["ingress"], json!([]));
}

/// The token of the chart's ServiceAccount (in `objs`), from the Secret the 1.20 token controller
/// makes for it.
async fn service_account_token(cp: &ControlPlane, operator_ns: &str, objs: &[Value]) -> String {
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

/// Least privilege must also be enough: the operator binary, authenticated as the chart's
/// ServiceAccount (its token, not impersonation), serves a request in a watched namespace from
/// creation to deletion.
#[tokio::test]
async fn the_operator_works_with_only_the_rights_the_chart_grants() {
    let cp = support::control_plane();
    install_crd(cp);
    let operator_ns = cp.namespace("chart-run-operator").await;
    let watched = cp.namespace("chart-run-watched").await;
    let release = release_name("runs");
    let manifests = render(
        &release,
        &operator_ns,
        &json!({"watchNamespaces": [watched]}),
    );
    apply(cp, &manifests);
    let token = service_account_token(cp, &operator_ns, &objects(&manifests)).await;
    let kubeconfig = cp.kubeconfig_for_token(&release, &token);

    // With leader election, as the chart runs it: the Lease rights are the chart's too.
    let lease_args = [
        "--leader-elect",
        "--leader-election-namespace",
        operator_ns.as_str(),
    ];
    let env = fixtures::Env::in_namespace(watched, &kubeconfig, &lease_args).await;
    env.keep_secret(&token);
    env.api_key_secret("ibmcloud-api-key", fixtures::MANAGER_KEY)
        .await;
    env.create_request(
        "as-service-account",
        json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}}),
    )
    .await;
    env.wait_ready("as-service-account").await;
    env.secret_value("logdna-agent-key", "logdna-agent-key")
        .await;
    assert!(env.has_event("SecretCreated").await, "events are published");
    env.delete_request("as-service-account").await;
    let requests = env.requests();
    support::wait_for(
        "the request to be released",
        Duration::from_secs(60),
        || async {
            requests
                .get_opt("as-service-account")
                .await
                .unwrap()
                .is_none()
        },
    )
    .await;
    assert_eq!(
        env.active_keys_of("as-service-account"),
        0,
        "the key was deleted"
    );
    env.finish().await;
}

// ---------------------------------------------------------------------------------------------
// The kustomize base.

#[tokio::test]
async fn kustomize_base_matches_the_chart_defaults_and_applies() {
    let cp = support::control_plane();
    let built = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join("deploy"))
        .output()
        .expect("kubectl kustomize");
    assert!(
        built.status.success(),
        "kubectl kustomize deploy/: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let built = String::from_utf8(built.stdout).unwrap();
    let kustomized = objects(&built);

    // The same objects as the chart's defaults for release ingestion-key-operator in namespace
    // ingestion-key-operator, without Helm's own labels; plus the Namespace and the CRD.
    let helm_labels = ["helm.sh/chart", "app.kubernetes.io/managed-by"];
    let mut from_chart: Vec<Value> = objects(&render(
        "ingestion-key-operator",
        "ingestion-key-operator",
        &json!({}),
    ));
    for object in &mut from_chart {
        if let Some(labels) = object["metadata"]["labels"].as_object_mut() {
            labels.retain(|k, _| !helm_labels.contains(&k.as_str()));
        }
    }
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["kind"].as_str().unwrap(),
            o["metadata"]["name"].as_str().unwrap()
        )
    };
    let by_key = |objs: &[Value]| {
        objs.iter()
            .map(|o| (key(o), o.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let mut from_kustomize = by_key(&kustomized);
    let namespace = from_kustomize
        .remove("Namespace/ingestion-key-operator")
        .expect("the Namespace");
    assert_eq!(namespace["metadata"]["name"], "ingestion-key-operator");
    let crd = from_kustomize
        .remove("CustomResourceDefinition/ingestionkeyrequests.keysync.dev")
        .expect("the CRD");
    let generated: Value =
        serde_saphyr::from_str(&ingestion_key_operator::cli::crd_yaml().unwrap()).unwrap();
    // kustomize writes the generated `minimum: 0.0` (status.retiringKeys[].deleteAttempts) as
    // `minimum: 0`: the same number.
    assert_eq!(
        whole_numbers(crd),
        whole_numbers(generated),
        "the CRD in deploy/"
    );
    let from_chart = by_key(&from_chart);
    assert_eq!(
        from_kustomize.keys().collect::<Vec<_>>(),
        from_chart.keys().collect::<Vec<_>>()
    );
    for (name, object) in &from_chart {
        assert_eq!(
            &from_kustomize[name], object,
            "{name}: deploy/ differs from the chart's defaults"
        );
    }

    // `kubectl apply -k deploy/` (--validate=false for this 1.20 server: see
    // deploy/kustomization.yaml), less what 1.20 cannot serve (the policy/v1 PDB). The CRD may
    // exist already (other tests): this apply then updates it.
    install_crd(cp);
    kubectl(
        cp,
        &["apply", "--validate=false", "-f", "-"],
        Some(&for_the_test_server(&built)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_established(cp, "crd/ingestionkeyrequests.keysync.dev");
    let ns = cp.namespace("kustomize").await;
    assert_operator_rights(
        cp,
        "system:serviceaccount:ingestion-key-operator:ingestion-key-operator",
        &ns,
        true,
        RestartTargets::Granted,
    );
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile (no engine here: its shape).

#[test]
fn dockerfile_builds_a_static_binary_into_a_minimal_non_root_image() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let froms: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms.last().unwrap().contains("scratch"),
        "the runtime stage is FROM scratch: {froms:?}"
    );
    for needle in [
        "--locked",
        "--release",
        "x86_64-unknown-linux-musl",
        "ca-certificates.crt",
        "USER 65532:65532",
        "ENTRYPOINT [\"/ingestion-key-operator\"]",
        "CMD [\"run\"]",
        "SOURCE_DATE_EPOCH",
    ] {
        assert!(text.contains(needle), "the Dockerfile lacks {needle:?}");
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "target" || l.trim() == "/target"),
        ".dockerignore keeps target/ out"
    );
}

const SERVICE_MONITOR_CRD: &str = r#"
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

/// One instruction of a Dockerfile: the keyword (upper case) and its arguments, with line
/// continuations joined and comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                instructions.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    instructions
}

/// Whether `.dockerignore` (top-level names and `*.suffix` patterns, all it uses) excludes `rel`.
fn docker_ignored(ignore: &[String], rel: &Path) -> bool {
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    ignore.iter().any(|pattern| {
        let pattern = pattern.trim_start_matches('/');
        match pattern.strip_prefix('*') {
            Some(suffix) => name.ends_with(suffix),
            None => first.as_deref() == Some(pattern) || rel == Path::new(pattern),
        }
    })
}

/// `COPY src dest` from `context` into the build directory `dir` (the WORKDIR), as Docker does:
/// a directory's contents go into the destination; `.dockerignore` applies.
fn docker_copy(
    context: &Path,
    ignore: &[String],
    dir: &Path,
    source: &str,
    dest: &Path,
    into_dir: bool,
) -> Result<(), String> {
    let from = context.join(source);
    if !from.exists() {
        return Err(format!("COPY {source}: not in the build context"));
    }
    let mut stack = vec![from.clone()];
    while let Some(path) = stack.pop() {
        let rel_context = path.strip_prefix(context).unwrap();
        if docker_ignored(ignore, rel_context) {
            continue;
        }
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| e.to_string())? {
                stack.push(entry.map_err(|e| e.to_string())?.path());
            }
            continue;
        }
        let target = if path == from {
            if into_dir {
                dir.join(dest).join(path.file_name().unwrap())
            } else {
                dir.join(dest)
            }
        } else {
            dir.join(dest).join(path.strip_prefix(&from).unwrap())
        };
        std::fs::create_dir_all(target.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::copy(&path, &target).map_err(|e| format!("copying {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Replays the build stage of `dockerfile` with `context` in a fresh directory: its COPY lines
/// (honouring `.dockerignore`), the file stubs its RUN lines make (`mkdir`, `echo >`, `touch`,
/// `rm`), and, where it runs cargo, `cargo metadata --locked --offline` (which loads every
/// manifest and target of the workspace) and, for `cargo build`, a real
/// `cargo build --locked --offline` of the binary (host target, dev profile: what differs from
/// the image build is the target and the optimisation, not which files cargo reads).
fn check_docker_build_context(dockerfile: &str, context: &Path) -> Result<(), String> {
    let dir = tempdir("docker-context");
    let ignore: Vec<String> = std::fs::read_to_string(context.join(".dockerignore"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let mut workdir = PathBuf::new();
    let mut cargo_runs = 0;
    for (keyword, args) in dockerfile_instructions(dockerfile) {
        match keyword.as_str() {
            // Only the first (build) stage.
            "FROM" if cargo_runs > 0 || !workdir.as_os_str().is_empty() => break,
            "WORKDIR" => workdir = PathBuf::from(args.trim_start_matches('/')),
            "COPY" => {
                let words: Vec<&str> = args.split_whitespace().collect();
                if words.iter().any(|w| w.starts_with("--from")) {
                    continue;
                }
                let words: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
                let (dest, sources) = words.split_last().ok_or("COPY without arguments")?;
                let into_dir = dest.ends_with('/') || sources.len() > 1;
                for source in sources {
                    docker_copy(
                        context,
                        &ignore,
                        &dir,
                        source,
                        &workdir.join(dest),
                        into_dir,
                    )?;
                }
            }
            "RUN" => {
                for step in args.split("&&").map(str::trim) {
                    let program = step.split_whitespace().next().unwrap_or("");
                    match program {
                        "mkdir" | "echo" | "touch" | "rm" => {
                            assert!(
                                !step.split_whitespace().skip(1).any(|w| w.starts_with('/')),
                                "an absolute path in a RUN step this check replays: {step}"
                            );
                            let status = Command::new("sh")
                                .args(["-c", step])
                                .current_dir(dir.join(&workdir))
                                .status()
                                .map_err(|e| e.to_string())?;
                            if !status.success() {
                                return Err(format!("RUN step {step:?} failed"));
                            }
                        }
                        "cargo" => {
                            cargo_runs += 1;
                            run_cargo(
                                &dir.join(&workdir),
                                // This platform's packages: what `cargo fetch --target`
                                // fetched (not, say, Windows-only ones).
                                &[
                                    "metadata",
                                    "--locked",
                                    "--offline",
                                    "--format-version=1",
                                    "--filter-platform=x86_64-unknown-linux-gnu",
                                ],
                            )
                            .map_err(|e| format!("at `{step}`: {e}"))?;
                            if step.starts_with("cargo build") {
                                run_cargo(
                                    &dir.join(&workdir),
                                    &[
                                        "build",
                                        "--locked",
                                        "--offline",
                                        "--bin",
                                        "ingestion-key-operator",
                                    ],
                                )
                                .map_err(|e| format!("at `{step}`: {e}"))?;
                            }
                        }
                        _ => {} // apk, rustup, cp, the --version check: not about the context
                    }
                }
            }
            _ => {}
        }
    }
    if cargo_runs == 0 {
        return Err("the build stage never runs cargo".into());
    }
    Ok(())
}

fn run_cargo(dir: &Path, args: &[&str]) -> Result<(), String> {
    // One build directory for every replay, kept between runs: the dependencies compile once,
    // later runs rebuild only the replayed workspace's own crates.
    let target = root().join("target/dockerfile-context");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
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
fn tempdir(prefix: &str) -> PathBuf {
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

#[test]
fn dockerfile_build_context_holds_every_file_cargo_needs() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    check_docker_build_context(&dockerfile, root())
        .unwrap_or_else(|e| panic!("the Dockerfile's build stage lacks files cargo needs: {e}"));

    // The check catches the bug it was written for: the Dockerfile of commit f1d3f6a copied only
    // Cargo.toml, Cargo.lock and src/ while Cargo.toml declared a bench (benches/scale.rs).
    let old = Command::new("git")
        .args(["show", "f1d3f6a:Dockerfile"])
        .current_dir(root())
        .output();
    match old {
        Ok(out) if out.status.success() => {
            let context = tempdir("f1d3f6a");
            let archive = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "git archive f1d3f6a | tar -x -C '{}'",
                    context.display()
                ))
                .current_dir(root())
                .status()
                .expect("git archive");
            assert!(archive.success(), "git archive f1d3f6a");
            let error = check_docker_build_context(&String::from_utf8_lossy(&out.stdout), &context)
                .expect_err("the Dockerfile of f1d3f6a must fail the check");
            assert!(error.contains("scale"), "{error}");
            let _ = std::fs::remove_dir_all(&context);
        }
        _ => eprintln!(
            "no git history with commit f1d3f6a here: the old Dockerfile is not re-checked"
        ),
    }
}

/// The same compiler flags in both image builds: the Dockerfile's RUSTFLAGS and
/// hack/build-image.sh's (`make image`), with their own source paths remapped to the same names.
#[test]
fn dockerfile_and_make_image_use_the_same_compiler_flags() {
    let normalise = |flags: &str| -> BTreeSet<String> {
        flags
            .split_whitespace()
            .map(|flag| match flag.strip_prefix("--remap-path-prefix=") {
                Some(mapping) => format!(
                    "--remap-path-prefix=*={}",
                    mapping.rsplit_once('=').expect("FROM=TO").1
                ),
                None => flag.to_string(),
            })
            .collect()
    };
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let docker = dockerfile
        .split("RUSTFLAGS=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("RUSTFLAGS in the Dockerfile");
    let script =
        std::fs::read_to_string(root().join("hack/build-image.sh")).expect("hack/build-image.sh");
    let make = script
        .split("RUSTFLAGS_IMAGE=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("RUSTFLAGS_IMAGE in hack/build-image.sh");
    assert_eq!(
        normalise(docker),
        normalise(make),
        "Dockerfile: {docker}\nhack/build-image.sh: {make}"
    );
    assert!(make.contains("-C target-feature=+crt-static"), "{make}");
    // Both build the release profile of the locked dependencies, offline.
    for needle in ["--locked", "--offline"] {
        assert!(
            dockerfile.contains(needle) && script.contains(needle),
            "{needle}"
        );
    }
    assert!(script.contains("PROFILE=${PROFILE:-release}"));
    assert!(dockerfile.contains("cargo build --release"));
}

// ---------------------------------------------------------------------------------------------
// The image, built here with buildah (hack/build-image.sh, what `make image` runs) and run from
// its own root filesystem with `buildah run`.

/// The cargo profile of the image the tests build: dev by default (the release build takes
/// minutes on 2 cores with LTO); `IKO_IMAGE_PROFILE=release` tests what `make image` ships.
fn image_profile() -> String {
    std::env::var("IKO_IMAGE_PROFILE").unwrap_or_else(|_| "dev".into())
}

struct Image {
    archive: PathBuf,
    /// buildah's private storage (hack/build-image.sh's, under IMAGE_DIR).
    dir: PathBuf,
}

impl Image {
    fn buildah(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"])
            .stdin(Stdio::null());
        cmd
    }

    fn buildah_ok(&self, args: &[&str]) -> String {
        let out = self.buildah().args(args).output().expect("running buildah");
        assert!(
            out.status.success(),
            "buildah {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A working container from the archive; removed on drop.
    fn container(&self) -> Container<'_> {
        let archive = format!("oci-archive:{}", self.archive.display());
        let name = self
            .buildah_ok(&["from", "--quiet", &archive])
            .trim()
            .to_string();
        Container { image: self, name }
    }
}

struct Container<'a> {
    image: &'a Image,
    name: String,
}

impl Container<'_> {
    /// `buildah run` of the image's binary with `args`, as the image's user, host network.
    fn run(&self, args: &[&str]) -> std::process::Output {
        self.image
            .buildah()
            .args([
                "run",
                "--isolation",
                "chroot",
                "--network",
                "host",
                &self.name,
                "--",
            ])
            .arg("/ingestion-key-operator")
            .args(args)
            .output()
            .expect("buildah run")
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.image.buildah().args(["rm", &self.name]).output();
    }
}

/// The image of this build, built once per test binary; `None` (with the reason printed) where
/// buildah cannot run: it needs root here (vfs storage, chroot isolation).
fn image() -> Option<&'static Image> {
    static IMAGE: OnceLock<Option<Image>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let root_user = Command::new("id")
                .arg("-u")
                .output()
                .map(|o| o.stdout == b"0\n");
            if root_user.ok() != Some(true) {
                eprintln!(
                    "SKIPPED: the image tests need root for buildah (vfs storage, chroot isolation)"
                );
                return None;
            }
            let has = |program: &str| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {program}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !has("buildah") && !has("apt-get") {
                eprintln!("SKIPPED: no buildah, and no apt-get to install it");
                return None;
            }
            let dir = root().join("target/image-test");
            let started = std::time::Instant::now();
            let out = Command::new(root().join("hack/build-image.sh"))
                .env("PROFILE", image_profile())
                .env("IMAGE_DIR", &dir)
                .env("IMAGE_NAME", "ingestion-key-operator:test")
                .current_dir(root())
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .expect("hack/build-image.sh");
            assert!(out.status.success(), "hack/build-image.sh failed");
            let archive = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            eprintln!(
                "image ({} profile) built in {:.1}s: {} ({} bytes)",
                image_profile(),
                started.elapsed().as_secs_f64(),
                archive.display(),
                std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0)
            );
            Some(Image { archive, dir })
        })
        .as_ref()
}

/// Whether an ELF64 little-endian executable names a program interpreter (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (entry_size, entries) = (u16_at(0x36), u16_at(0x38));
    (0..entries).any(|i| {
        let at = phoff + i * entry_size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

#[test]
fn the_image_holds_a_static_binary_the_ca_bundle_and_nothing_else() {
    let Some(image) = image() else { return };
    let ctr = image.container();

    // The configuration: non-root, the binary as entrypoint, `run` by default, OCI labels.
    let inspect: Value =
        serde_json::from_str(&image.buildah_ok(&["inspect", "--type", "container", &ctr.name]))
            .expect("buildah inspect JSON");
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Entrypoint"], json!(["/ingestion-key-operator"]));
    assert_eq!(config["Cmd"], json!(["run"]));
    assert!(config["ExposedPorts"]["8080/tcp"].is_object(), "{config}");
    assert_eq!(
        config["Labels"]["org.opencontainers.image.title"],
        "ingestion-key-operator"
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.licenses"],
        "Apache-2.0"
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    // The root filesystem: exactly the binary, the CA bundle and nsswitch.conf.
    let mount = PathBuf::from(image.buildah_ok(&["mount", &ctr.name]).trim());
    let mut files = Vec::new();
    let mut stack = vec![mount.clone()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            files.push(path.strip_prefix(&mount).unwrap().display().to_string());
        }
    }
    files.sort();
    assert_eq!(
        files,
        [
            "etc/nsswitch.conf",
            "etc/ssl/certs/ca-certificates.crt",
            "ingestion-key-operator"
        ]
    );
    let bundle = std::fs::read_to_string(mount.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        bundle.matches("-----BEGIN CERTIFICATE-----").count() >= 100,
        "the CA bundle holds the public roots"
    );
    assert_eq!(
        std::fs::read_to_string(mount.join("etc/nsswitch.conf")).unwrap(),
        "hosts: files dns\n"
    );
    let binary = std::fs::read(mount.join("ingestion-key-operator")).unwrap();
    assert!(
        !has_interpreter(&binary),
        "the binary is static (no PT_INTERP)"
    );
    image.buildah_ok(&["umount", &ctr.name]);

    // It runs from the image: --version and the CRD.
    let version = ctr.run(&["--version"]);
    assert!(version.status.success(), "{version:?}");
    assert!(
        String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{version:?}"
    );
    let crd = ctr.run(&["crd"]);
    assert!(crd.status.success(), "{crd:?}");
    assert_eq!(
        String::from_utf8_lossy(&crd.stdout),
        std::fs::read_to_string(root().join("crds").join(CRD_FILE)).unwrap(),
        "`crd` from the image: the committed CRD"
    );
}

/// The operator, run from its image (`buildah run`: the image's root filesystem, user and
/// environment) with only the chart's ServiceAccount token, serves a request until it is Ready.
/// It trusts the API server through the image's CA bundle (the test server's CA is added to the
/// image's `/etc/ssl/certs/ca-certificates.crt`; the kubeconfig names no CA), and reaches the
/// simulator as `http://localhost:PORT` (the static glibc binary resolves names through the
/// image's nsswitch.conf and the /etc/hosts the runtime provides, as the kubelet does): name
/// resolution and the CA bundle work in the image as they will in a cluster.
#[tokio::test]
async fn the_operator_runs_from_its_image_as_the_chart_service_account() {
    let Some(image) = image() else { return };
    let cp = support::control_plane();
    install_crd(cp);
    let operator_ns = cp.namespace("image-operator").await;
    let watched = cp.namespace("image-watched").await;
    let release = release_name("image");
    let manifests = render(
        &release,
        &operator_ns,
        &json!({"watchNamespaces": [watched]}),
    );
    apply(cp, &manifests);
    let token = service_account_token(cp, &operator_ns, &objects(&manifests)).await;

    // The container: the image, plus the test API server's CA in the image's bundle.
    let ctr = image.container();
    let mount = PathBuf::from(image.buildah_ok(&["mount", &ctr.name]).trim());
    let bundle_path = mount.join("etc/ssl/certs/ca-certificates.crt");
    let mut bundle = std::fs::read_to_string(&bundle_path).expect("the image's CA bundle");
    bundle.push_str(&std::fs::read_to_string(cp.ca_file()).expect("the test CA"));
    std::fs::write(&bundle_path, bundle).unwrap();
    image.buildah_ok(&["umount", &ctr.name]);

    // A kubeconfig for the ServiceAccount that names no CA: the API server's certificate must be
    // trusted through the image's bundle. (By address: the test server's self-signed certificate
    // names 127.0.0.1, not localhost.)
    let config_dir = tempdir("image-config");
    let server = cp.server_url().to_string();
    std::fs::write(
        config_dir.join("kubeconfig"),
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: {server}
users:
- name: operator
  user:
    token: {token}
contexts:
- name: envtest
  context: {{cluster: envtest, user: operator, namespace: default}}
current-context: envtest
"
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            config_dir.join("kubeconfig"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }

    let storage = image.dir.clone();
    let name = ctr.name.clone();
    let volume = format!("{}:/config:ro", config_dir.display());
    let launcher: fixtures::Launcher = std::sync::Arc::new(move |args: &[String]| {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(storage.join("storage"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "run",
                "--isolation",
                "chroot",
                "--network",
                "host",
            ])
            .args(["--volume", &volume])
            .args(["--env", "KUBECONFIG=/config/kubeconfig"])
            .args([
                "--env",
                "RUST_LOG=debug,hyper=info,kube=info,tower=info,rustls=info,h2=info",
            ])
            .args([name.as_str(), "--", "/ingestion-key-operator"])
            // The simulator by name: localhost must resolve inside the image.
            .args(
                args.iter()
                    .map(|a| a.replace("http://127.0.0.1:", "http://localhost:")),
            );
        cmd
    });
    let lease_args = [
        "--leader-elect",
        "--leader-election-namespace",
        operator_ns.as_str(),
    ];
    let env = fixtures::Env::in_namespace_launched(
        watched,
        &config_dir.join("kubeconfig"),
        &lease_args,
        Some(launcher),
    )
    .await;
    env.keep_secret(&token);
    env.api_key_secret("ibmcloud-api-key", fixtures::MANAGER_KEY)
        .await;
    env.create_request(
        "from-the-image",
        json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}}),
    )
    .await;
    env.wait_ready("from-the-image").await;
    env.secret_value("logdna-agent-key", "logdna-agent-key")
        .await;
    env.finish().await;
    let _ = std::fs::remove_dir_all(&config_dir);
}
