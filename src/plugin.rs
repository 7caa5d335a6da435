//! `kubectl ingestionkey`: the admin's view of the requests, from the operator's own binary. The
//! binary acts as this plugin when its file name is `kubectl-ingestionkey` (a copy or a symlink on
//! the PATH). It reads the cluster with the user's kubeconfig and IBM Cloud through the operator's
//! own client (the same endpoints, flags and environment, the same redaction), with the API key
//! Secret each request names. It never prints a credential: only fingerprints.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::Serialize;

use crate::{
    crd::{IngestionKeyRequest, ROTATE_ANNOTATION, parse_duration},
    ibm::{ClientConfig, Endpoints, IbmCloud},
    redact::SecretString,
};

/// The plugin's file name, by which the binary knows it runs as `kubectl ingestionkey`.
pub const PLUGIN_NAME: &str = "kubectl-ingestionkey";

/// See and rotate the IBM Cloud keys of IngestionKeyRequests (kubectl ingestionkey).
#[derive(Debug, Parser)]
#[command(name = "kubectl-ingestionkey", version)]
pub struct Plugin {
    /// The kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, global = true)]
    all_namespaces: bool,
    /// IBM Cloud IAM endpoint, as for the operator.
    #[arg(
        long,
        global = true,
        env = "IBMCLOUD_IAM_ENDPOINT",
        default_value = "https://iam.cloud.ibm.com"
    )]
    iam_endpoint: String,
    /// IBM Cloud Resource Controller endpoint, as for the operator.
    #[arg(
        long,
        global = true,
        env = "IBMCLOUD_RESOURCE_CONTROLLER_ENDPOINT",
        default_value = "https://resource-controller.cloud.ibm.com"
    )]
    resource_controller_endpoint: String,
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Each request: its instance, its key, its Secret, whether the Secret holds IBM Cloud's
    /// current credential of that key, the keys being retired, and its Ready reason.
    Get {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Asks for one rotation of a request's key (a fresh keysync.dev/rotate value); with --wait,
    /// follows it until the replaced key is deleted.
    Rotate {
        /// NAME, or NAMESPACE/NAME.
        request: String,
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = duration_arg)]
        timeout: Duration,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration like 30s or 5m"))
}

/// Why the plugin could not do what it was asked (one line, exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("no Kubernetes client ({0})")]
    Kubeconfig(String),
    #[error("{action}: {source}")]
    Kubernetes { action: String, source: kube::Error },
    #[error("invalid IBM Cloud endpoint: {0}")]
    Endpoint(String),
    #[error("{0}")]
    Rotation(String),
}

/// Whether this process runs as the plugin: its file name is [`PLUGIN_NAME`].
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|name| name == PLUGIN_NAME)
}

/// Runs the plugin; prints to stdout, returns the error to print on stderr.
pub async fn execute(plugin: Plugin) -> Result<(), PluginError> {
    let client = client(&plugin).await?;
    let namespace = match (&plugin.namespace, plugin.all_namespaces) {
        (_, true) => None,
        (Some(ns), false) => Some(ns.clone()),
        (None, false) => Some(client.default_namespace().to_owned()),
    };
    match &plugin.command {
        PluginCommand::Get { output } => {
            let endpoints =
                Endpoints::new(&plugin.iam_endpoint, &plugin.resource_controller_endpoint)
                    .map_err(|e| PluginError::Endpoint(e.to_string()))?;
            let ibm = IbmCloud::new(endpoints, ClientConfig::default())
                .map_err(|e| PluginError::Endpoint(e.to_string()))?;
            get(&client, &ibm, namespace.as_deref(), *output).await
        }
        PluginCommand::Rotate {
            request,
            wait,
            timeout,
        } => {
            let (ns, name) = match request.split_once('/') {
                Some((ns, name)) => (ns.to_owned(), name.to_owned()),
                None => (namespace.unwrap_or_default(), request.clone()),
            };
            rotate(&client, &ns, &name, *wait, *timeout).await
        }
    }
}

async fn client(plugin: &Plugin) -> Result<Client, PluginError> {
    let options = KubeConfigOptions {
        context: plugin.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &plugin.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| PluginError::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &options).await
        }
        None => kube::Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| PluginError::Kubeconfig(e.to_string()))?;
    Client::try_from(config).map_err(|e| PluginError::Kubeconfig(e.to_string()))
}

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> PluginError {
    let action = action.into();
    move |source| PluginError::Kubernetes { action, source }
}

/// One request as `get` shows it. Fingerprints only, never a credential.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    namespace: String,
    name: String,
    instance: String,
    key_name: String,
    key_guid: String,
    key_created: String,
    secret: String,
    /// The fingerprint of what the Secret holds.
    secret_fingerprint: String,
    /// `yes`, `no`, or why it could not be told.
    matches_ibm: String,
    retiring_keys: Vec<String>,
    ready: String,
}

async fn get(
    client: &Client,
    ibm: &IbmCloud,
    namespace: Option<&str>,
    output: Output,
) -> Result<(), PluginError> {
    let requests: Api<IngestionKeyRequest> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = requests
        .list(&ListParams::default())
        .await
        .map_err(kube_error("list the IngestionKeyRequests"))?;
    let mut rows = Vec::new();
    for request in &list.items {
        rows.push(row(client, ibm, request).await);
    }
    match output {
        Output::Json => {
            let text = serde_json::to_string_pretty(&rows).unwrap_or_default();
            println!("{text}");
        }
        Output::Table => print_table(&rows),
    }
    Ok(())
}

async fn row(client: &Client, ibm: &IbmCloud, request: &IngestionKeyRequest) -> Row {
    let ns = request.namespace().unwrap_or_default();
    let status = request.status.clone().unwrap_or_default();
    let key = status.resource_key.clone();
    let secret_name = status
        .secret_name
        .clone()
        .unwrap_or_else(|| request.spec.secret.name.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let held = read_value(&secrets, &secret_name, &request.spec.secret.key).await;
    let secret_fingerprint = match &held {
        Ok(value) => value.fingerprint(),
        Err(why) => why.clone(),
    };
    let matches_ibm = match (&held, &key) {
        (Err(_), _) => "unknown: the Secret cannot be read".to_owned(),
        (_, None) => "unknown: no key recorded".to_owned(),
        (Ok(value), Some(key)) => {
            let api_key_ref = &request.spec.api_key_secret_ref;
            match read_value(&secrets, &api_key_ref.name, &api_key_ref.key).await {
                Err(why) => format!("unknown: API key Secret: {why}"),
                Ok(api_key) => compare(ibm, &api_key, &key.guid, request, value).await,
            }
        }
    };
    Row {
        namespace: ns,
        name: request.name_any(),
        instance: status
            .instance
            .map(|i| i.name)
            .or_else(|| request.spec.instance.name.clone())
            .unwrap_or_default(),
        key_name: key.as_ref().map(|k| k.name.clone()).unwrap_or_default(),
        key_guid: key.as_ref().map(|k| k.guid.clone()).unwrap_or_default(),
        key_created: key
            .and_then(|k| k.created_at)
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        secret: secret_name,
        secret_fingerprint,
        matches_ibm,
        retiring_keys: status
            .retiring_keys
            .iter()
            .map(|k| k.name.clone())
            .collect(),
        ready: status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| format!("{} {}", c.status, c.reason))
            .unwrap_or_default(),
    }
}

/// The value under `key` of Secret `name`, or why not (never the value in the message).
async fn read_value(secrets: &Api<Secret>, name: &str, key: &str) -> Result<SecretString, String> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read Secret {name}: {e}"))?
        .ok_or_else(|| format!("Secret {name} does not exist"))?;
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| std::str::from_utf8(&b.0).ok())
        .map(|v| SecretString::from(v.trim()))
        .ok_or_else(|| format!("Secret {name} has no key {key:?}"))
}

/// Whether `held` is IBM Cloud's current credential of the key `guid`.
async fn compare(
    ibm: &IbmCloud,
    api_key: &SecretString,
    guid: &str,
    request: &IngestionKeyRequest,
    held: &SecretString,
) -> String {
    let field = &request.spec.resource_key.credential_field;
    match ibm.get_key(api_key, guid).await {
        Err(error) => format!("unknown: {error}"),
        Ok(key) if !key.is_active() => format!("no: the key is {}", key.state),
        Ok(key) => match key.credentials.field(field) {
            Ok(current) if current.fingerprint() == held.fingerprint() => "yes".to_owned(),
            Ok(current) => format!("no: IBM Cloud holds {}", current.fingerprint()),
            Err(error) => format!("unknown: {error}"),
        },
    }
}

fn print_table(rows: &[Row]) {
    let header = [
        "NAMESPACE",
        "NAME",
        "INSTANCE",
        "KEY",
        "SECRET",
        "MATCHES IBM",
        "RETIRING",
        "READY",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.namespace.clone(),
                r.name.clone(),
                r.instance.clone(),
                r.key_name.clone(),
                format!("{} ({})", r.secret, r.secret_fingerprint),
                r.matches_ibm.clone(),
                r.retiring_keys.join(","),
                r.ready.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Sets a fresh rotation value; with `wait`, follows the status until the rotation is handled and
/// no replaced key is left, printing each step.
async fn rotate(
    client: &Client,
    ns: &str,
    name: &str,
    wait: bool,
    timeout: Duration,
) -> Result<(), PluginError> {
    let requests: Api<IngestionKeyRequest> = Api::namespaced(client.clone(), ns);
    let before = requests
        .get(name)
        .await
        .map_err(kube_error(format!("read request {ns}/{name}")))?;
    let old_key = before.status.as_ref().and_then(|s| s.resource_key.clone());
    let value = Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}});
    requests
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(kube_error(format!("annotate request {ns}/{name}")))?;
    println!("asked {ns}/{name} for a rotation ({ROTATE_ANNOTATION}={value})");
    if !wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut replaced = false;
    loop {
        let request = requests
            .get(name)
            .await
            .map_err(kube_error(format!("read request {ns}/{name}")))?;
        let status = request.status.clone().unwrap_or_default();
        let handled = status
            .rotation
            .as_ref()
            .and_then(|r| r.last_request.as_deref())
            == Some(value.as_str());
        let current = status.resource_key.clone();
        if handled
            && !replaced
            && current.as_ref().map(|k| &k.guid) != old_key.as_ref().map(|k| &k.guid)
        {
            replaced = true;
            let key = current
                .as_ref()
                .map(|k| k.name.as_str())
                .unwrap_or_default();
            let secret = status.secret_name.clone().unwrap_or_default();
            println!("new key {key} in use: Secret {secret} holds it");
        }
        if status
            .rollout
            .as_ref()
            .is_some_and(|r| r.stalled && r.completed_at.is_none())
        {
            return Err(PluginError::Rotation(format!(
                "{ns}/{name}: the restart targets did not roll out (RolloutStalled); the replaced key is kept"
            )));
        }
        let old_gone = old_key
            .as_ref()
            .is_none_or(|old| !status.retiring_keys.iter().any(|k| k.guid == old.guid));
        if replaced && old_gone {
            let old = old_key.as_ref().map(|k| k.name.as_str()).unwrap_or("none");
            println!("replaced key {old} deleted: rotation complete");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(PluginError::Rotation(format!(
                "{ns}/{name}: the rotation did not complete within {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
