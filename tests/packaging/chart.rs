//! The Helm chart (linted and rendered by the real Helm engine through `hack/helm.py`) and the
//! CRD copies: the RBAC it grants, cluster-wide or per namespace, checked on the real API server by
//! impersonating the operator's ServiceAccount; its network policy; its install notes.

use crate::harness::*;

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
async fn chart_with_default_values_lints_renders_applies_and_grants_rights_in_the_agents_namespace_only()
 {
    let cp = support::control_plane();
    install_crd(cp);
    agents_namespace(cp);
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
            "ClusterRole-cluster-identity",
            "ClusterRoleBinding-cluster-identity",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "Role-leader-election",
            "RoleBinding",
            "RoleBinding-leader-election",
            "Service",
            "ServiceAccount"
        ]
        .iter()
        .map(|k| match *k {
            "Service" => format!("Service/{fullname}-metrics"),
            k => match k.split_once('-') {
                Some((kind, suffix)) => format!("{kind}/{fullname}-{suffix}"),
                None => format!("{k}/{fullname}"),
            },
        })
        .collect::<Vec<_>>(),
        "rights in the agents' namespace only, and one cluster-scoped read"
    );
    let identity = objs
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .expect("the cluster identity ClusterRole");
    assert_eq!(
        identity["rules"],
        json!([{"apiGroups": [""], "resources": ["namespaces"],
                "resourceNames": ["kube-system"], "verbs": ["get"]}]),
        "the only cluster-scoped right: get on the kube-system namespace (the cluster's identity)"
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
            "--admin-addr=$(POD_IP):8080".into(),
            "--log-format=json".into(),
            "--leader-elect".into(),
            format!("--leader-election-namespace={ns}"),
            "--require-opt-in".into(),
            format!("--namespace={AGENTS_NAMESPACE}"),
        ],
        "API key Secrets and restart targets must opt in by default (docs/security.md)"
    );
    assert_endpoints(&objs, "https://");
    assert_eq!(
        deployment_env(&objs, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // The admin server binds the pod's own address, and only the monitoring namespace reaches it.
    assert_eq!(
        deployment_env(&objs, "POD_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        find(&objs, "NetworkPolicy")["spec"]["ingress"],
        json!([{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                "ports": [{"port": 8080, "protocol": "TCP"}]}])
    );
    assert_eq!(pod["serviceAccountName"], fullname.as_str());
    let service = find(&objs, "Service");
    assert_eq!(service["spec"]["ports"][0]["name"], "http-metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "admin");

    // Applied for real; the API server accepts every object.
    dry_run_on_server(cp, &manifests);
    apply(cp, &manifests);
    let sa = format!("system:serviceaccount:{ns}:{fullname}");
    assert_operator_rights(cp, &sa, AGENTS_NAMESPACE, false, RestartTargets::Granted);
    let other = cp.namespace("chart-default-other").await;
    assert!(
        !rules_of(cp, &sa, &other).contains_key("secrets"),
        "no right on the Secrets of a namespace it does not watch"
    );
    // In its own namespace, the Lease rights only (leader election).
    let own = rules_of(cp, &sa, &ns);
    assert_eq!(
        own.get("leases.coordination.k8s.io"),
        Some(&BTreeSet::from(["create".to_string()]))
    );
    assert_eq!(
        own.get("leases.coordination.k8s.io named ingestion-key-operator"),
        Some(&BTreeSet::from(["get".to_string(), "update".into()]))
    );
    assert!(!own.contains_key("secrets"), "{own:?}");
}

#[tokio::test]
async fn chart_for_given_namespaces_grants_rights_there_and_nowhere_else() {
    let cp = support::control_plane();
    install_crd(cp);
    service_monitor_crd(cp);
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
        "security": {"requireOptIn": false},
        "metrics": {"serviceMonitor": {"enabled": true, "interval": "15s", "labels": {"release": "prometheus"}}},
        "serviceAccount": {"name": "key-operator", "annotations": {"example.com/owner": "platform"}},
    });
    lint(&values);
    let manifests = render(&release, &ns, &values);
    let objs = objects(&manifests);
    let fullname = format!("{release}-ingestion-key-operator");

    // No cluster-scoped rights but the read of the cluster's identity: a Role and RoleBinding in
    // each watched namespace.
    let identity = format!("{fullname}-cluster-identity");
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        assert!(
            objs.iter()
                .all(|o| o["kind"] != kind || o["metadata"]["name"] == identity.as_str()),
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
            "--admin-addr=$(POD_IP):8080".into(),
            "--log-format=text".into(),
            "--leader-elect".into(),
            format!("--leader-election-namespace={ns}"),
            format!("--namespace={}", watched[0]),
            format!("--namespace={}", watched[1]),
            "--concurrency=4".into(),
        ]
    );
    assert_endpoints(&objs, "https://private.");
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
    let identity = (
        "namespaces named kube-system".to_string(),
        BTreeSet::from(["get".to_string()]),
    );
    assert_eq!(
        rules_of(cp, &sa, &unwatched),
        BTreeMap::from([identity.clone()]),
        "rights in a namespace that is not watched: the cluster's identity only"
    );
    assert_eq!(
        rules_of(cp, &sa, &ns),
        BTreeMap::from([
            (
                "leases.coordination.k8s.io".to_string(),
                BTreeSet::from(["create".to_string()]),
            ),
            (
                "leases.coordination.k8s.io named ingestion-key-operator".to_string(),
                BTreeSet::from(["get".to_string(), "update".into()]),
            ),
            identity,
        ]),
        "rights in the operator's own namespace: its Lease (and the cluster's identity)"
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
    let values = json!({"rbac": off, "watchNamespaces": []});
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
    agents_namespace(cp);
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
    dry_run_on_server(cp, &manifests);

    // Nobody named: no ingress at all.
    let closed = objects(&render(
        &release,
        &ns,
        &json!({"networkPolicy": {"enabled": true, "metrics": {"from": []}}}),
    ));
    assert_eq!(find(&closed, "NetworkPolicy")["spec"]["ingress"], json!([]));
}

/// The Deployment points the operator at IBM Cloud's public or private endpoints (`https://`
/// or `https://private.` before each host).
fn assert_endpoints(objs: &[Value], prefix: &str) {
    for (name, host) in [
        ("IBMCLOUD_IAM_ENDPOINT", "iam.cloud.ibm.com"),
        (
            "IBMCLOUD_RESOURCE_CONTROLLER_ENDPOINT",
            "resource-controller.cloud.ibm.com",
        ),
    ] {
        assert_eq!(
            deployment_env(objs, name)["value"],
            format!("{prefix}{host}"),
            "{name}"
        );
    }
}

/// `metrics.authorization`: the operator runs with `--metrics-auth` and may create TokenReviews
/// and SubjectAccessReviews, a ClusterRole for readers of /metrics is there to bind, and the
/// ServiceMonitor sends Prometheus' token. (tests/cluster/security.rs checks the behaviour.)
#[tokio::test]
async fn chart_with_metrics_authorization_lets_the_operator_review_scrapes() {
    let cp = support::control_plane();
    let ns = cp.namespace("chart-metrics-auth").await;
    agents_namespace(cp);
    service_monitor_crd(cp);
    let release = release_name("metrics-auth");
    let values = json!({"metrics": {"authorization": true, "serviceMonitor": {"enabled": true}}});
    lint(&values);
    let manifests = render(&release, &ns, &values);
    let objs = objects(&manifests);
    let fullname = format!("{release}-ingestion-key-operator");
    assert!(deployment_args(&objs).contains(&"--metrics-auth".to_string()));
    let role = |name: String| {
        objs.iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == name.as_str())
            .map(|o| o["rules"].clone())
            .unwrap_or_else(|| panic!("ClusterRole {name}"))
    };
    assert_eq!(
        role(format!("{fullname}-metrics-auth")),
        json!([
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        ])
    );
    assert_eq!(
        role(format!("{fullname}-metrics-reader")),
        json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])
    );
    assert_eq!(
        find(&objs, "ServiceMonitor")["spec"]["endpoints"][0]["bearerTokenFile"],
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    dry_run_on_server(cp, &manifests);
}

/// The README's RBAC table is the rules the chart renders: the Role of a watched namespace (the
/// default), the ClusterRole of `watchNamespaces: []` (the same rules), the Lease Role, and the
/// ClusterRole that reads the cluster's identity.
#[test]
fn readme_lists_the_rbac_the_chart_renders_in_both_modes() {
    let rows = |rules: &Value, place: &str| -> Vec<String> {
        rules
            .as_array()
            .expect("rules")
            .iter()
            .map(|rule| {
                let list = |key: &str, quote: bool| {
                    rule[key]
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .map(|i| {
                                    let i = i.as_str().unwrap_or_default();
                                    if quote {
                                        format!("`{i}`")
                                    } else {
                                        i.to_owned()
                                    }
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                };
                let group = match list("apiGroups", true).as_str() {
                    "``" => "(core)".to_owned(),
                    group => group.to_owned(),
                };
                let mut resources = list("resources", true);
                if rule.get("resourceNames").is_some() {
                    resources = format!("{resources} named {}", list("resourceNames", true));
                }
                let place = if rule["apiGroups"] == json!(["apps"]) {
                    format!("{place} (`rbac.restartTargets`)")
                } else {
                    place.to_owned()
                };
                format!(
                    "| {group} | {resources} | {} | {place} |",
                    list("verbs", false)
                )
            })
            .collect()
    };
    let namespaced = objects(&render(
        "ingestion-key-operator",
        "ingestion-key-operator",
        &json!({}),
    ));
    let role = |name: &str, kind: &str, objs: &[Value]| -> Value {
        objs.iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name}"))["rules"]
            .clone()
    };
    let operator_rules = role("ingestion-key-operator", "Role", &namespaced);
    let cluster_wide = objects(&render(
        "ingestion-key-operator",
        "ingestion-key-operator",
        &json!({"watchNamespaces": []}),
    ));
    assert_eq!(
        role("ingestion-key-operator", "ClusterRole", &cluster_wide),
        operator_rules,
        "the cluster-wide mode grants the same rules, everywhere"
    );
    let mut expected = rows(&operator_rules, "watched namespaces");
    expected.extend(rows(
        &role(
            "ingestion-key-operator-leader-election",
            "Role",
            &namespaced,
        ),
        "release namespace",
    ));
    expected.extend(rows(
        &role(
            "ingestion-key-operator-cluster-identity",
            "ClusterRole",
            &namespaced,
        ),
        "cluster (unless `clusterId` is set)",
    ));
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let table: Vec<String> = readme
        .split("<!-- rbac:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- rbac:end -->").next())
        .expect("the RBAC table in the README")
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| API group") && !l.starts_with("|---"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        table, expected,
        "README.md's RBAC table differs from the chart"
    );
}

/// A stand-in for the Prometheus Operator's CRD, so that a ServiceMonitor can be applied.
fn service_monitor_crd(cp: &ControlPlane) {
    apply_crd(cp, SERVICE_MONITOR_CRD);
    wait_established(cp, "crd/servicemonitors.monitoring.coreos.com");
}
