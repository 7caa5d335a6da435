//! Installed as users install it: the operator running with nothing but the chart's
//! ServiceAccount token, and the kustomize base equal to the chart's defaults.

use crate::harness::*;

/// Least privilege must also be enough: the operator binary, authenticated as the chart's
/// ServiceAccount (its token, not impersonation), serves a request in a watched namespace from
/// creation to deletion.
#[tokio::test]
async fn the_operator_works_with_only_the_rights_the_chart_grants() {
    let cp = support::control_plane();
    let ChartRun {
        operator_ns,
        watched,
        release,
        token,
    } = ChartRun::install(cp, "chart-run").await;
    let kubeconfig = cp.kubeconfig_for_token(&release, &token);

    // With leader election, as the chart runs it: the Lease rights are the chart's too.
    let lease_args = [
        "--leader-elect",
        "--leader-election-namespace",
        operator_ns.as_str(),
    ];
    let env = fixtures::Env::in_namespace(watched, &kubeconfig, &lease_args).await;
    env.keep_secret(&token);
    env.serve_first_request("as-service-account").await;
    assert!(
        env.has_event("ResourceKeyCreated").await,
        "events are published"
    );
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
    agents_namespace(cp);
    kubectl(
        cp,
        &["apply", "--validate=false", "-f", "-"],
        Some(&for_the_test_server(&built)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_established(cp, "crd/ingestionkeyrequests.keysync.dev");
    let sa = "system:serviceaccount:ingestion-key-operator:ingestion-key-operator";
    assert_operator_rights(cp, sa, AGENTS_NAMESPACE, false, RestartTargets::Granted);
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile (no engine here: its shape).
