//! `kubectl ingestionkey`: the admin's side of the product, from the operator's own binary. The
//! binary acts as this plugin when its file name is `kubectl-ingestionkey` (a copy or a symlink on
//! the PATH). It reads the cluster with the user's kubeconfig and IBM Cloud through the operator's
//! own client (the same endpoints, flags and environment, rate budget, retries and redaction),
//! with the API key Secret each request names or `--api-key-file`. It never prints a credential
//! unless `--reveal` is given: only fingerprints.
//!
//! - `get`: each request, its key and whether its Secret holds IBM Cloud's current credential;
//! - `instances`, `keys`, `key`: IBM's CLI path (service-instances, service-keys, service-key),
//!   saying which keys this cluster's operator made and for which request;
//! - `rotate`: a fresh rotation value, followed with `--wait`;
//! - `audit`: orphan keys, keys recorded but gone, Secrets out of date; `--delete-orphans`;
//! - `check`, `version`, `completion`.

mod audit;
mod check;
mod get;
mod ibm_view;
mod rotate;
mod table;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::Serialize;

use crate::{
    crd::{ClusterId, IngestionKeyRequest, parse_duration},
    ibm::{ClientConfig, Endpoints, IbmCloud},
    redact::SecretString,
};

/// The plugin's file name, by which the binary knows it runs as `kubectl ingestionkey`.
pub const PLUGIN_NAME: &str = "kubectl-ingestionkey";

/// See, rotate and audit the IBM Cloud keys of IngestionKeyRequests (kubectl ingestionkey).
#[derive(Debug, Parser)]
#[command(name = "kubectl-ingestionkey", version)]
pub struct Plugin {
    /// The kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's; for audit, instances, keys and key, every namespace).
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
    /// A file holding the IBM Cloud API key to use instead of the API key Secrets the requests name.
    #[arg(long, global = true, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// This cluster's identity, as the operator's --cluster-id (default: the kube-system UID).
    #[arg(long, global = true, value_name = "ID", value_parser = ClusterId::parse)]
    cluster_id: Option<ClusterId>,
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
    /// The service instances the API key sees, and which requests use each
    /// (`ibmcloud resource service-instances`).
    Instances {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The keys of one instance, and which this cluster's operator made for which request
    /// (`ibmcloud resource service-keys --instance-name`).
    Keys {
        /// The instance: NAME, GUID or CRN.
        #[arg(long)]
        instance: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One key by NAME, GUID or CRN (`ibmcloud resource service-key`): its credential's
    /// fingerprint, or with --reveal the credential itself.
    Key {
        key: String,
        /// The credential field shown (default: ingestion_key).
        #[arg(long, default_value = "ingestion_key")]
        credential_field: String,
        /// Print the credential itself.
        #[arg(long)]
        reveal: bool,
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
    /// Keys of this cluster's naming that belong to no live request (orphans), keys a status
    /// records that IBM Cloud no longer has, and Secrets whose data no longer matches IBM Cloud.
    /// Exit status 0: nothing found; 1: findings; 2: an error.
    Audit {
        /// Also audit this instance (NAME, GUID or CRN), beyond those the requests use.
        #[arg(long = "instance", value_name = "INSTANCE")]
        instances: Vec<String>,
        /// Delete the orphans found (after a confirmation, or --yes). Never a key another cluster
        /// made, a key a live request records, a retained key, or a key of someone else's naming.
        #[arg(long)]
        delete_orphans: bool,
        /// Keys of unknown cluster (named before cluster identities) to delete too, by name.
        #[arg(
            long = "also-delete",
            value_name = "KEY_NAME",
            requires = "delete_orphans"
        )]
        also_delete: Vec<String>,
        /// Do not ask before deleting.
        #[arg(long, short = 'y')]
        yes: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The CRD is installed and served, the operator runs and is Ready, which replica leads.
    Check {
        /// Wait this long for everything to be fine (default: check once).
        #[arg(long, value_parser = duration_arg)]
        wait: Option<Duration>,
    },
    /// The plugin's version and the deployed operator's.
    Version,
    /// A shell completion script.
    Completion { shell: clap_complete::Shell },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

impl Output {
    /// Prints `rows` as JSON or YAML; `false` when a table is asked for (the caller prints it).
    fn print_structured<T: Serialize>(self, rows: &T) -> bool {
        let text = match self {
            Output::Table => return false,
            Output::Json => serde_json::to_string_pretty(rows).unwrap_or_default(),
            Output::Yaml => serde_saphyr::to_string(rows).unwrap_or_default(),
        };
        println!("{}", text.trim_end());
        true
    }
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration like 30s or 5m"))
}

/// Why the plugin could not do what it was asked (one line on stderr).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("no Kubernetes client ({0})")]
    Kubeconfig(String),
    #[error("{action}: {source}")]
    Kubernetes { action: String, source: kube::Error },
    #[error("invalid IBM Cloud endpoint: {0}")]
    Endpoint(String),
    #[error("{0}")]
    IbmCloud(String),
    #[error("{0}")]
    NoApiKey(String),
    #[error("{0}")]
    Rotation(String),
    #[error("{0}")]
    Check(String),
    #[error("{0}")]
    Input(String),
}

/// How a run ended: its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 0.
    Clean,
    /// 1: an audit found something (as `kubectl diff` reports differences).
    Findings,
}

/// Whether this process runs as the plugin: its file name is [`PLUGIN_NAME`].
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|name| name == PLUGIN_NAME)
}

/// Runs the plugin and returns its exit status: 0 done (or nothing found), 1 findings or an
/// error, 2 an error of `audit` (whose 1 means findings).
pub async fn run(plugin: Plugin) -> u8 {
    let audit = matches!(plugin.command, PluginCommand::Audit { .. });
    match execute(plugin).await {
        Ok(Outcome::Clean) => 0,
        Ok(Outcome::Findings) => 1,
        Err(error) => {
            eprintln!("{PLUGIN_NAME}: {error}");
            if audit { 2 } else { 1 }
        }
    }
}

/// What every verb works with: the cluster, IBM Cloud, and the namespaces asked for.
struct Session {
    client: Client,
    ibm: IbmCloud,
    /// `None`: every namespace.
    namespace: Option<String>,
    api_key_file: Option<PathBuf>,
    cluster_id: Option<ClusterId>,
}

async fn execute(plugin: Plugin) -> Result<Outcome, PluginError> {
    if let PluginCommand::Completion { shell } = plugin.command {
        let mut command = <Plugin as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, PLUGIN_NAME, &mut std::io::stdout());
        return Ok(Outcome::Clean);
    }
    let client = client(&plugin).await?;
    let endpoints = Endpoints::new(&plugin.iam_endpoint, &plugin.resource_controller_endpoint)
        .map_err(|e| PluginError::Endpoint(e.to_string()))?;
    let ibm = IbmCloud::new(endpoints, ClientConfig::default())
        .map_err(|e| PluginError::Endpoint(e.to_string()))?;
    // The admin views of IBM Cloud see every request of the cluster unless narrowed with -n.
    let cluster_view = matches!(
        plugin.command,
        PluginCommand::Audit { .. }
            | PluginCommand::Instances { .. }
            | PluginCommand::Keys { .. }
            | PluginCommand::Key { .. }
    );
    let every_namespace = plugin.all_namespaces || (plugin.namespace.is_none() && cluster_view);
    let namespace = match (&plugin.namespace, every_namespace) {
        (_, true) => None,
        (Some(ns), false) => Some(ns.clone()),
        (None, false) => Some(client.default_namespace().to_owned()),
    };
    let session = Session {
        client,
        ibm,
        namespace,
        api_key_file: plugin.api_key_file,
        cluster_id: plugin.cluster_id,
    };
    match plugin.command {
        PluginCommand::Get { output } => get::get(&session, output).await,
        PluginCommand::Instances { output } => ibm_view::instances(&session, output).await,
        PluginCommand::Keys { instance, output } => {
            ibm_view::keys(&session, &instance, output).await
        }
        PluginCommand::Key {
            key,
            credential_field,
            reveal,
            output,
        } => ibm_view::key(&session, &key, &credential_field, reveal, output).await,
        PluginCommand::Rotate {
            request,
            wait,
            timeout,
        } => rotate::rotate(&session, &request, wait, timeout).await,
        PluginCommand::Audit {
            instances,
            delete_orphans,
            also_delete,
            yes,
            output,
        } => {
            let asked = audit::Asked {
                instances,
                delete_orphans,
                also_delete,
                yes,
                output,
            };
            audit::audit(&session, &asked).await
        }
        PluginCommand::Check { wait } => check::check(&session, wait).await,
        PluginCommand::Version => check::version(&session).await,
        PluginCommand::Completion { .. } => Ok(Outcome::Clean),
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

impl Session {
    /// The requests of the namespace asked for (or of every namespace).
    async fn requests(&self) -> Result<Vec<IngestionKeyRequest>, PluginError> {
        let api: Api<IngestionKeyRequest> = match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let list = api.list(&ListParams::default()).await.map_err(kube_error(
            "list the IngestionKeyRequests (is the CRD installed, may you list them?)",
        ))?;
        Ok(list.items)
    }

    /// This cluster's identity: `--cluster-id`, else the kube-system namespace's UID, as the
    /// operator finds it.
    async fn cluster_id(&self) -> Result<ClusterId, PluginError> {
        if let Some(id) = &self.cluster_id {
            return Ok(id.clone());
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let uid = namespaces
            .get("kube-system")
            .await
            .map_err(kube_error(
                "read the cluster's identity, namespace kube-system (or pass --cluster-id)",
            ))?
            .metadata
            .uid
            .unwrap_or_default();
        ClusterId::parse(&uid).map_err(PluginError::Input)
    }

    /// The API key of `--api-key-file`, else the one a request names (its Secret, its data key).
    async fn api_key_of(&self, request: &IngestionKeyRequest) -> Result<SecretString, PluginError> {
        if let Some(file) = self.file_api_key()? {
            return Ok(file);
        }
        let ns = request.metadata.namespace.as_deref().unwrap_or_default();
        let reference = &request.spec.api_key_secret_ref;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        read_value(&secrets, &reference.name, &reference.key)
            .await
            .map_err(|why| PluginError::NoApiKey(format!("{ns}/{}: {why}", request_name(request))))
    }

    /// An API key for calls that no one request decides: `--api-key-file`, else the first
    /// readable API key Secret of `requests`.
    async fn any_api_key(
        &self,
        requests: &[IngestionKeyRequest],
    ) -> Result<SecretString, PluginError> {
        if let Some(file) = self.file_api_key()? {
            return Ok(file);
        }
        let mut last = String::from("no IngestionKeyRequest names an API key Secret here");
        for request in requests {
            match self.api_key_of(request).await {
                Ok(key) => return Ok(key),
                Err(why) => last = why.to_string(),
            }
        }
        Err(PluginError::NoApiKey(format!(
            "no API key to call IBM Cloud with ({last}); pass --api-key-file"
        )))
    }

    fn file_api_key(&self) -> Result<Option<SecretString>, PluginError> {
        let Some(path) = &self.api_key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| PluginError::NoApiKey(format!("{}: {e}", path.display())))?;
        Ok(Some(SecretString::from(text.trim())))
    }
}

fn request_name(request: &IngestionKeyRequest) -> &str {
    request.metadata.name.as_deref().unwrap_or_default()
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
