//! `kubectl ingestionkey`: the operator's binary, symlinked as `kubectl-ingestionkey` on the PATH,
//! run by the real kubectl as a plugin against the control plane and the simulator.

use std::process::Output;

use serde_json::{Value, json};
use test_support::env::Env;

/// `kubectl ingestionkey ARGS` with the environment's kubeconfig and IBM Cloud endpoints (run
/// without blocking: the simulator answers from this test's runtime).
pub async fn plugin(env: &Env, args: &[&str]) -> Output {
    let ibm_url = env.sim.base_url();
    plugin_with(env.cp, env.cp.kubeconfig_path(), &ibm_url, args).await
}

/// [`plugin`] with another kubeconfig and IBM Cloud endpoint; stdin is empty (a confirmation
/// asked for is refused).
pub async fn plugin_with(
    cp: &test_support::ControlPlane,
    kubeconfig: &std::path::Path,
    ibm_url: &str,
    args: &[&str],
) -> Output {
    let dir = cp.dir().join("plugin-bin");
    std::fs::create_dir_all(&dir).expect("plugin directory");
    let link = dir.join("kubectl-ingestionkey");
    if !link.exists() {
        std::os::unix::fs::symlink(test_support::operator_binary(), &link).expect("symlink");
    }
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    tokio::process::Command::new("kubectl")
        .arg("ingestionkey")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .env("IBMCLOUD_IAM_ENDPOINT", ibm_url)
        .env("IBMCLOUD_RESOURCE_CONTROLLER_ENDPOINT", ibm_url)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("kubectl runs")
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What a successful run printed, checked for credentials.
pub fn succeeded(env: &Env, output: Output) -> String {
    let printed = text(&output);
    assert!(output.status.success(), "{printed}");
    assert_no_credential(env, &printed);
    printed
}

/// Nothing the plugin printed is a secret the simulator knows (keys, tokens, API keys).
pub fn assert_no_credential(env: &Env, printed: &str) {
    for secret in env.sim.secret_values() {
        assert!(
            !printed.contains(secret.expose()),
            "a credential was printed"
        );
    }
}

async fn matches_ibm(env: &Env, name: &str) -> String {
    let out = plugin(env, &["get", "-n", &env.ns, "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_no_credential(env, &text(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
    rows.as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .and_then(|r| r["matchesIbm"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// `get` tells whether each Secret holds IBM Cloud's current credential of its key: yes when in
/// sync, no when the Secret was edited while the operator was stopped.
#[tokio::test]
async fn get_shows_whether_each_secret_matches_ibm_cloud() {
    let mut env = Env::new("plugin-get").await;
    env.serve_first_request("agent").await;
    let printed = succeeded(&env, plugin(&env, &["get", "-n", &env.ns]).await);
    let columns = printed.contains("MATCHES IBM") && printed.contains("agent");
    assert!(columns, "{printed}");
    assert_eq!(matches_ibm(&env, "agent").await, "yes");

    env.operator.stop();
    env.tamper("logdna-agent-key", "logdna-agent-key").await;
    let verdict = matches_ibm(&env, "agent").await;
    assert!(verdict.starts_with("no"), "{verdict}");
    assert_eq!(
        audit_kinds(&env).await,
        (1, vec!["secret-differs".to_owned()])
    );
    // The recorded key deleted in IBM Cloud behind the operator's back.
    let guid = recorded_guid(&env, "agent").await;
    let manager = test_support::env::MANAGER_KEY.into();
    env.ibm.delete_key(&manager, &guid).await.expect("delete");
    assert_eq!(
        audit_kinds(&env).await,
        (1, vec!["recorded-key-gone".to_owned()])
    );
    // The operator repairs both, and the audit finds nothing.
    env.operator.start_again();
    let env_ref = &env;
    test_support::wait_for(
        "the audit to come out clean",
        test_support::WAIT,
        || async { audit_kinds(env_ref).await == (0, Vec::new()) },
    )
    .await;
    env.finish().await;
}

/// The exit status of `audit -n NS -o json` and the kinds of its findings.
async fn audit_kinds(env: &Env) -> (i32, Vec<String>) {
    let out = plugin(env, &["audit", "-n", &env.ns, "-o", "json"]).await;
    assert_no_credential(env, &text(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).expect("audit JSON");
    let kinds = rows
        .as_array()
        .expect("findings")
        .iter()
        .filter(|r| r["finding"] == true)
        .filter_map(|r| r["kind"].as_str().map(str::to_owned))
        .collect();
    (out.status.code().unwrap_or(-1), kinds)
}

/// `rotate --wait` asks for a rotation and ends once the replaced key is deleted, saying each
/// step; the key in IBM Cloud is replaced and the old one removed.
#[tokio::test]
async fn rotate_wait_follows_the_rotation_to_the_old_keys_deletion() {
    let env = Env::new("plugin-rotate").await;
    env.api_key_secret("ibmcloud-api-key", test_support::env::MANAGER_KEY)
        .await;
    let spec = json!({"instance": {"name": "my-activity-tracker"},
                      "apiKeySecretRef": {"name": "ibmcloud-api-key"},
                      "rotation": {"gracePeriod": "1s"}});
    env.create_request("rot", spec).await;
    env.wait_ready("rot").await;
    let old_guid = recorded_guid(&env, "rot").await;
    let target = format!("{}/rot", env.ns);
    let args = ["rotate", &target, "--wait", "--timeout", "60s"];
    let printed = succeeded(&env, plugin(&env, &args).await);
    let steps = printed.contains("new key") && printed.contains("deleted");
    assert!(steps, "{printed}");
    assert_eq!(
        env.sim.key(&old_guid).map(|k| k.state).as_deref(),
        Some("removed"),
        "the replaced key is gone"
    );
    assert_eq!(env.active_keys_of("rot"), 1);

    let unknown = plugin(&env, &["rotate", "no-such-request", "-n", &env.ns]).await;
    assert!(!unknown.status.success(), "an unknown request fails");
    let message = text(&unknown);
    assert!(message.contains("no-such-request"), "{message}");
    env.finish().await;
}

/// A rotation whose restart targets never roll out: `rotate --wait` exits non-zero with the stall
/// reason, and the replaced key is kept.
#[tokio::test]
async fn rotate_wait_reports_a_stalled_rollout() {
    let env = Env::new("plugin-stall").await;
    env.api_key_secret("ibmcloud-api-key", test_support::env::MANAGER_KEY)
        .await;
    test_support::workloads::agent_daemonset(&env.client, &env.ns, "logdna-agent").await;
    let spec = json!({"instance": {"name": "my-activity-tracker"},
                      "apiKeySecretRef": {"name": "ibmcloud-api-key"},
                      "restartTargets": [{"kind": "DaemonSet", "name": "logdna-agent"}],
                      "rotation": {"gracePeriod": "1s", "rolloutTimeout": "2s"}});
    env.create_request("stall", spec).await;
    env.wait_ready("stall").await;
    let old_guid = recorded_guid(&env, "stall").await;
    let target = format!("{}/stall", env.ns);
    let out = plugin(&env, &["rotate", &target, "--wait", "--timeout", "60s"]).await;
    let printed = text(&out);
    assert_no_credential(&env, &printed);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(printed.contains("RolloutStalled"), "{printed}");
    assert!(
        printed.contains("new key"),
        "the steps before the stall: {printed}"
    );
    assert_eq!(
        env.sim.key(&old_guid).map(|k| k.state).as_deref(),
        Some("active"),
        "the replaced key is kept while its successor has not rolled out"
    );
    env.finish().await;
}

/// `key` shows a credential's fingerprint, and the credential itself only with `--reveal`.
#[tokio::test]
async fn key_shows_a_credential_only_when_asked_to_reveal_it() {
    let env = Env::new("plugin-key").await;
    env.serve_first_request("agent").await;
    let guid = recorded_guid(&env, "agent").await;
    let printed = succeeded(&env, plugin(&env, &["key", &guid]).await);
    assert!(
        printed.contains(&guid) && printed.contains(&format!("request {}/agent", env.ns)),
        "{printed}"
    );
    let listed = succeeded(
        &env,
        plugin(&env, &["keys", "--instance", "my-activity-tracker"]).await,
    );
    assert!(listed.contains(&guid), "{listed}");
    let instances = succeeded(&env, plugin(&env, &["instances"]).await);
    assert!(
        instances.contains(&format!("{}/agent", env.ns)),
        "{instances}"
    );

    let revealed = plugin(&env, &["key", &guid, "--reveal"]).await;
    assert!(revealed.status.success(), "{}", text(&revealed));
    let credential = env.key_credential(&guid, "ingestion_key").await;
    assert!(
        text(&revealed).contains(&credential),
        "--reveal prints the credential"
    );
    env.finish().await;
}

/// Bad input ends with one line on stderr naming the cause, exit status 1 (2 for `audit`, whose 1
/// means findings), and nothing deleted: an API key Secret that is missing, a user who may not
/// read Secrets, an IBM Cloud endpoint that does not answer.
#[tokio::test]
async fn bad_input_is_one_line_naming_the_cause_and_deletes_nothing() {
    let env = Env::new("plugin-bad").await;
    env.serve_first_request("agent").await;
    let keys_before = env.sim.keys().len();
    let one_line = |out: &Output, code: i32, cause: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{}", text(out));
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("kubectl-ingestionkey: "), "{stderr}");
        assert!(stderr.contains(cause), "names {cause:?}: {stderr}");
        assert_no_credential(&env, &text(out));
    };
    let ns = env.ns.clone();
    let kubeconfig = env.cp.kubeconfig_path().to_owned();

    let dead = "http://127.0.0.1:9";
    let out = plugin_with(
        env.cp,
        &kubeconfig,
        dead,
        &["audit", "-n", &ns, "--delete-orphans", "--yes"],
    )
    .await;
    one_line(&out, 2, "127.0.0.1:9");
    let out = plugin_with(
        env.cp,
        &kubeconfig,
        dead,
        &["keys", "-n", &ns, "--instance", "my-activity-tracker"],
    )
    .await;
    one_line(&out, 1, "127.0.0.1:9");

    // A namespace whose only request names an API key Secret that does not exist.
    let other = Env::new("plugin-bad-alone").await;
    test_support::env::create_request_in(
        &other.requests(),
        "alone",
        json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "absent-secret"}}),
    )
    .await;
    let ibm = other.sim.base_url();
    let out = plugin_with(
        other.cp,
        &kubeconfig,
        &ibm,
        &[
            "audit",
            "-n",
            &other.ns,
            "--instance",
            "my-activity-tracker",
        ],
    )
    .await;
    one_line(&out, 2, "absent-secret");
    let out = plugin_with(other.cp, &kubeconfig, &ibm, &["instances", "-n", &other.ns]).await;
    one_line(&out, 1, "absent-secret");
    other.finish().await;

    let limited = limited_user_kubeconfig(&env).await;
    let ibm = env.sim.base_url();
    let args = [
        "audit",
        "-n",
        &ns,
        "--cluster-id",
        "c1",
        "--delete-orphans",
        "--yes",
    ];
    let out = plugin_with(env.cp, &limited, &ibm, &args).await;
    one_line(&out, 2, "forbidden");
    let out = plugin_with(env.cp, &limited, &ibm, &["rotate", "-n", &ns, "agent"]).await;
    one_line(&out, 1, "forbidden");

    assert_eq!(env.sim.keys().len(), keys_before, "no key made");
    assert!(
        env.sim.keys().iter().all(|k| k.state == "active"),
        "nothing deleted"
    );
    env.finish().await;
}

/// A kubeconfig for user `bob` (impersonated), who may read requests in the namespace and
/// nothing else: no Secrets, no changes.
async fn limited_user_kubeconfig(env: &Env) -> std::path::PathBuf {
    let rules = json!([{"apiGroups": ["keysync.dev"], "resources": ["ingestionkeyrequests"],
                        "verbs": ["get", "list"]}]);
    env.cp
        .grant_user(&env.ns, "bob", "request-reader", rules)
        .await;
    let path = env.cp.dir().join(format!("bob-{}.kubeconfig", env.ns));
    let text = serde_json::to_string(&env.cp.kubeconfig_as("bob")).expect("kubeconfig JSON");
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// `check` fails while no operator runs and names the leader once one does (`--wait` waits for
/// it); `version` and `completion` answer.
#[tokio::test]
async fn check_names_the_leader_and_fails_without_an_operator() {
    let ns = test_support::control_plane()
        .namespace("plugin-check")
        .await;
    let kubeconfig = test_support::control_plane().kubeconfig_path().to_owned();
    let lease = ["--leader-elect", "--leader-election-namespace", &ns];
    let mut env = Env::in_namespace(ns.clone(), &kubeconfig, &lease).await;
    let ibm = env.sim.base_url();
    let printed = succeeded(&env, plugin(&env, &["check"]).await);
    let leads = printed.contains("CRD ingestionkeyrequests.keysync.dev: established")
        && printed.contains("leader: ");
    assert!(leads, "{printed}");

    env.operator.stop();
    let out = plugin(&env, &["check"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no operator found"), "{}", text(&out));
    let cp = env.cp;
    let waiting = plugin_with(cp, &kubeconfig, &ibm, &["check", "--wait", "60s"]);
    let restart = async {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        env.operator.start_again();
    };
    let (out, ()) = tokio::join!(waiting, restart);
    assert!(
        out.status.success(),
        "check --wait sees the operator come back: {}",
        text(&out)
    );

    let version = succeeded(&env, plugin(&env, &["version"]).await);
    assert!(
        version.contains(&format!("plugin: {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let completion = succeeded(&env, plugin(&env, &["completion", "bash"]).await);
    assert!(completion.contains("kubectl-ingestionkey"), "{completion}");
    env.finish().await;
}

/// The GUID of the key request `name` records.
async fn recorded_guid(env: &Env, name: &str) -> String {
    env.requests()
        .get(name)
        .await
        .expect("request")
        .status
        .and_then(|s| s.resource_key)
        .expect("a key")
        .guid
}
