//! Packaging: the CRD copies, the Helm chart (linted and rendered by the real Helm engine through
//! `hack/helm.py`, PyPI helm-python-sdk, installed on first use), the kustomize base, and the RBAC
//! they grant, checked on the real API server of the harness by impersonating the operator's
//! ServiceAccount. Finally the operator runs with nothing but that ServiceAccount's token.

mod fixtures;
mod support;

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

/// What the operator needs, exactly, in a namespace it watches.
fn operator_rules() -> BTreeMap<String, BTreeSet<String>> {
    let set = |verbs: &[&str]| verbs.iter().map(|v| v.to_string()).collect::<BTreeSet<_>>();
    BTreeMap::from([
        (
            "ingestionkeyrequests.keysync.dev".to_string(),
            set(&["get", "list", "watch", "patch", "update"]),
        ),
        (
            "ingestionkeyrequests.keysync.dev/status".to_string(),
            set(&["get", "patch", "update"]),
        ),
        (
            "secrets".to_string(),
            set(&["get", "list", "watch", "create", "patch"]),
        ),
        (
            "events.events.k8s.io".to_string(),
            set(&["create", "patch"]),
        ),
    ])
}

/// Checks what the operator may do in `ns` (everything it needs, nothing more); `cluster_wide`
/// says whether it may also act across all namespaces.
fn assert_operator_rights(cp: &ControlPlane, sa: &str, ns: &str, cluster_wide: bool) {
    assert_eq!(
        rules_of(cp, sa, ns),
        operator_rules(),
        "the rules of {sa} in {ns}"
    );
    let allowed: &[(&str, &str)] = &[
        ("get", "ingestionkeyrequests.keysync.dev"),
        ("list", "ingestionkeyrequests.keysync.dev"),
        ("watch", "ingestionkeyrequests.keysync.dev"),
        ("patch", "ingestionkeyrequests.keysync.dev"),
        ("update", "ingestionkeyrequests.keysync.dev"),
        ("patch", "ingestionkeyrequests.keysync.dev/status"),
        ("update", "ingestionkeyrequests.keysync.dev/status"),
        ("get", "secrets"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("create", "secrets"),
        ("patch", "secrets"),
        ("create", "events.events.k8s.io"),
        ("patch", "events.events.k8s.io"),
    ];
    let forbidden: &[(&str, &str)] = &[
        ("delete", "secrets"),
        ("deletecollection", "secrets"),
        ("update", "secrets"),
        ("create", "ingestionkeyrequests.keysync.dev"),
        ("delete", "ingestionkeyrequests.keysync.dev"),
        ("get", "configmaps"),
        ("list", "pods"),
        ("create", "pods"),
        ("create", "deployments.apps"),
        ("create", "events"),
        ("list", "events.events.k8s.io"),
        ("create", "serviceaccounts/token"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io"),
        ("impersonate", "serviceaccounts"),
        ("*", "*"),
    ];
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
    );
    // In its own namespace, the Lease rights on top (leader election).
    let mut own = operator_rules();
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
        assert_operator_rights(cp, &sa, watched, false);
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
        ("list", "ingestionkeyrequests.keysync.dev"),
        ("create", "events.events.k8s.io"),
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
    let objs = objects(&manifests);
    let sa_name = find(&objs, "ServiceAccount")["metadata"]["name"]
        .as_str()
        .expect("ServiceAccount name")
        .to_owned();

    // The 1.20 token controller gives the ServiceAccount a token Secret.
    let client = cp.client().await;
    let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(client.clone(), &operator_ns);
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, &operator_ns);
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
    let token = token.into_inner().unwrap();
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
    assert_eq!(crd, generated, "the CRD in deploy/");
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
