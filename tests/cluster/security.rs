//! No confused deputy: with `--require-opt-in`, a user who may only create requests in a namespace
//! cannot, through the operator, use an API key Secret whose owner did not opt it in, learn its
//! keys, mint a credential the Secret does not allow, or restart a workload that did not agree.
//! The user is impersonated on the real API server with exactly those rights.

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::KubeConfigOptions;
use serde_json::json;
use test_support::env::{Env, MANAGER_KEY, ready_message};
use test_support::workloads::{agent_daemonset, template_fingerprint};
use test_support::{WAIT, wait_for};

use ingestion_key_operator::crd::{
    ALLOWED_CREDENTIAL_FIELDS_ANNOTATION, API_KEY_FINALIZER, API_KEY_OPT_IN_LABEL,
    IngestionKeyRequest, RESTART_OPT_IN_ANNOTATION,
};

const USER: &str = "alice";

/// An environment whose operator requires opt-in, and a client acting as [`USER`], who may
/// create and read requests in the namespace and nothing else (no Secret, no workload).
async fn as_request_author(prefix: &str) -> (Env, Api<IngestionKeyRequest>) {
    let env = Env::with_operator_args(prefix, &["--require-opt-in"]).await;
    let rules = json!([{"apiGroups": ["keysync.dev"], "resources": ["ingestionkeyrequests"],
                        "verbs": ["create", "get", "list", "watch"]}]);
    env.cp
        .grant_user(&env.ns, USER, "request-author", rules)
        .await;
    let kubeconfig = env.cp.kubeconfig_as(USER);
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("impersonating config");
    let client = kube::Client::try_from(config).expect("impersonating client");
    let requests = Api::namespaced(client.clone(), &env.ns);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, &env.ns);
    assert!(
        secrets.get("team-key").await.is_err(),
        "{USER} cannot read Secrets herself"
    );
    (env, requests)
}

async fn create_as(api: &Api<IngestionKeyRequest>, name: &str, spec: serde_json::Value) {
    test_support::env::create_request_in(api, name, spec).await;
}

fn spec(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"instance": {"name": "my-activity-tracker"}, "apiKeySecretRef": {"name": "team-key"}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    spec
}

async fn label_opt_in(env: &Env, annotations: serde_json::Value) {
    let patch =
        json!({"metadata": {"labels": {API_KEY_OPT_IN_LABEL: "true"}, "annotations": annotations}});
    env.secrets_api()
        .patch("team-key", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("the Secret's owner opts it in");
}

/// A Secret that has not opted in is neither read nor pinned, and nothing tells its keys; once
/// its owner labels it, the same request is served.
#[tokio::test]
async fn an_api_key_secret_serves_only_once_its_owner_opted_it_in() {
    let (env, author) = as_request_author("optin-secret").await;
    env.api_key_secret("team-key", MANAGER_KEY).await;
    create_as(&author, "agent", spec(json!({}))).await;
    let request = env.wait_reason("agent", "ApiKeySecretNotAllowed").await;
    let message = ready_message(&request);
    assert!(
        message.contains(API_KEY_OPT_IN_LABEL),
        "says what to add: {message}"
    );
    let events = format!("{:?}", env.events().await);
    for text in [&message, &events] {
        assert!(
            !text.contains("apikey"),
            "no data key of the Secret is named: {text}"
        );
    }
    let secret = env.secret("team-key").await.expect("the API key Secret");
    assert!(
        !secret
            .metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == API_KEY_FINALIZER),
        "the Secret is not pinned"
    );
    assert!(
        env.sim.calls().values().all(|&n| n == 0),
        "no IBM Cloud call: {:?}",
        env.sim.calls()
    );

    label_opt_in(&env, json!({})).await;
    env.wait_ready("agent").await;
    env.finish().await;
}

/// The operator keeps an API key Secret it has read while the Secrets' watch shows it unchanged:
/// withdrawing the opt-in must still stop the very next sync.
#[tokio::test]
async fn withdrawing_the_opt_in_stops_the_next_sync() {
    let (env, author) = as_request_author("optin-withdrawn").await;
    env.api_key_secret("team-key", MANAGER_KEY).await;
    label_opt_in(&env, json!({})).await;
    create_as(&author, "agent", spec(json!({}))).await;
    env.wait_ready("agent").await;

    let withdraw = json!({"metadata": {"labels": {API_KEY_OPT_IN_LABEL: null}}});
    env.secrets_api()
        .patch("team-key", &PatchParams::default(), &Patch::Merge(withdraw))
        .await
        .expect("the Secret's owner withdraws the opt-in");
    let request = env.wait_reason("agent", "ApiKeySecretNotAllowed").await;
    assert!(
        ready_message(&request).contains(API_KEY_OPT_IN_LABEL),
        "{}",
        ready_message(&request)
    );
    env.finish().await;
}

/// A Secret opted in for ingestion keys only: a request asking it to mint an IAM API key
/// (`credentialField: apikey`) is refused before any IBM Cloud call.
#[tokio::test]
async fn an_api_key_secret_may_forbid_minting_api_keys() {
    let (env, author) = as_request_author("optin-field").await;
    env.api_key_secret("team-key", MANAGER_KEY).await;
    label_opt_in(
        &env,
        json!({ALLOWED_CREDENTIAL_FIELDS_ANNOTATION: "ingestion_key"}),
    )
    .await;
    let minting = spec(json!({"resourceKey": {"role": "Sender", "credentialField": "apikey"}}));
    create_as(&author, "minter", minting).await;
    let request = env.wait_reason("minter", "ApiKeySecretNotAllowed").await;
    let message = ready_message(&request);
    assert!(
        message.contains(ALLOWED_CREDENTIAL_FIELDS_ANNOTATION),
        "{message}"
    );
    assert!(env.sim.keys().is_empty(), "no key was created");
    env.finish().await;
}

/// Of two restart targets, only the workload that opted in gets the credential's fingerprint;
/// the other is reported and left alone.
#[tokio::test]
async fn only_workloads_that_opted_in_are_restarted() {
    let (env, author) = as_request_author("optin-restart").await;
    env.api_key_secret("team-key", MANAGER_KEY).await;
    label_opt_in(&env, json!({})).await;
    let daemonsets: Api<DaemonSet> = agent_daemonset(&env.client, &env.ns, "agreed").await;
    agent_daemonset(&env.client, &env.ns, "unasked").await;
    let agree = json!({"metadata": {"annotations": {RESTART_OPT_IN_ANNOTATION: "true"}}});
    daemonsets
        .patch("agreed", &PatchParams::default(), &Patch::Merge(agree))
        .await
        .expect("the workload's owner opts in");
    let targets = json!({"restartTargets": [
        {"kind": "DaemonSet", "name": "agreed"}, {"kind": "DaemonSet", "name": "unasked"},
    ]});
    create_as(&author, "agent", spec(targets)).await;
    wait_for("the opted-in workload to be restarted", WAIT, || async {
        daemonsets
            .get("agreed")
            .await
            .ok()
            .and_then(|ds| template_fingerprint(&ds))
            .is_some()
    })
    .await;
    wait_for("the other one to be reported", WAIT, || async {
        env.events().await.iter().any(|(_, reason, note)| {
            reason == "RestartTargetNotFound"
                && note.contains("unasked")
                && note.contains(RESTART_OPT_IN_ANNOTATION)
        })
    })
    .await;
    let unasked = daemonsets.get("unasked").await.expect("DaemonSet");
    assert_eq!(template_fingerprint(&unasked), None, "not restarted");
    env.finish().await;
}

/// `--metrics-auth`: `/metrics` answers only a bearer token the API server authenticates and
/// whose identity may `get` the non-resource URL `/metrics`; the probes stay open.
#[tokio::test]
async fn metrics_are_served_only_to_identities_allowed_to_read_them() {
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let env = Env::with_operator_args("metrics-auth", &["--metrics-auth"]).await;
    let post = PostParams::default();
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "scraper"}})).expect("SA JSON");
    accounts
        .create(&post, &account)
        .await
        .expect("ServiceAccount");
    // The 1.20 token controller writes the account's token into a Secret.
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let token = || async {
        let list = secrets.list(&Default::default()).await.ok()?;
        list.items.into_iter().find_map(|s| {
            let of_scraper = s.type_.as_deref() == Some("kubernetes.io/service-account-token")
                && s.metadata
                    .annotations
                    .as_ref()?
                    .get("kubernetes.io/service-account.name")
                    == Some(&"scraper".to_owned());
            of_scraper.then(|| test_support::env::secret_data(&s, "token"))?
        })
    };
    wait_for("the scraper's token", WAIT, || async {
        token().await.is_some()
    })
    .await;
    let token = token().await.expect("token");
    env.keep_secret(&token);
    let url = format!("http://{}/metrics", env.operator.admin);
    let http = reqwest::Client::new();
    let scrape = |bearer: Option<String>| {
        let mut get = http.get(&url);
        if let Some(bearer) = bearer {
            get = get.bearer_auth(bearer);
        }
        async move {
            get.send()
                .await
                .expect("the admin server answers")
                .status()
                .as_u16()
        }
    };
    assert_eq!(scrape(None).await, 401, "no token");
    assert_eq!(
        scrape(Some("made-up".into())).await,
        401,
        "a token nobody issued"
    );
    assert_eq!(
        scrape(Some(token.clone())).await,
        403,
        "an identity without the right"
    );
    let readyz = format!("http://{}/readyz", env.operator.admin);
    assert_eq!(
        http.get(&readyz).send().await.expect("readyz").status(),
        200,
        "probes stay open"
    );

    let name = format!("metrics-reader-{}", env.ns);
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
    }))
    .expect("ClusterRole JSON");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": env.ns}],
    }))
    .expect("ClusterRoleBinding JSON");
    Api::<ClusterRole>::all(env.client.clone())
        .create(&post, &role)
        .await
        .expect("ClusterRole");
    Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(&post, &binding)
        .await
        .expect("ClusterRoleBinding");
    // A refused answer is cached for a minute by token: a second token of the same account (the
    // token controller fills in a Secret that asks for one) shows the grant at once.
    let second: Secret = serde_json::from_value(json!({
        "metadata": {"name": "scraper-second",
                     "annotations": {"kubernetes.io/service-account.name": "scraper"}},
        "type": "kubernetes.io/service-account-token",
    }))
    .expect("token Secret JSON");
    secrets
        .create(&post, &second)
        .await
        .expect("a second token");
    let second_token = || async {
        let s = secrets.get("scraper-second").await.ok()?;
        test_support::env::secret_data(&s, "token")
    };
    wait_for("the second token", WAIT, || async {
        second_token().await.is_some()
    })
    .await;
    let second_token = second_token().await.expect("token");
    env.keep_secret(&second_token);
    let allowed = http
        .get(&url)
        .bearer_auth(&second_token)
        .send()
        .await
        .expect("scrape as the scraper");
    assert_eq!(allowed.status().as_u16(), 200, "granted get on /metrics");
    let page = allowed.text().await.expect("the page");
    assert!(
        page.contains("ingestion_key_operator_leader"),
        "the metrics page"
    );
    env.finish().await;
}
