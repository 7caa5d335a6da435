//! `kubectl ingestionkey`: the operator's binary, symlinked as `kubectl-ingestionkey` on the PATH,
//! run by the real kubectl as a plugin against the control plane and the simulator.

use std::process::Output;

use serde_json::{Value, json};
use test_support::env::Env;

/// `kubectl ingestionkey ARGS` with the environment's kubeconfig and IBM Cloud endpoints (run
/// without blocking: the simulator answers from this test's runtime).
pub async fn plugin(env: &Env, args: &[&str]) -> Output {
    let ibm_url = env.sim.base_url();
    plugin_with(env, env.cp.kubeconfig_path(), &ibm_url, args).await
}

/// [`plugin`] with another kubeconfig and IBM Cloud endpoint; stdin is empty (a confirmation
/// asked for is refused).
pub async fn plugin_with(
    env: &Env,
    kubeconfig: &std::path::Path,
    ibm_url: &str,
    args: &[&str],
) -> Output {
    let dir = env.cp.dir().join("plugin-bin");
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
    env.operator.start_again();
    env.finish().await;
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
    let first = env.wait_ready("rot").await;
    let old_guid = first
        .status
        .and_then(|s| s.resource_key)
        .expect("a key")
        .guid;
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
