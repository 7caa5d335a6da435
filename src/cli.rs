//! The command line: `run`, `crd` (see the contract). Wiring only.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use kube::{Api, CustomResourceExt, api::ListParams};
use tokio::net::TcpListener;
use tracing::info;

use crate::{
    admin::{self, AdminState},
    crd::{IngestionKeyRequest, parse_duration},
    ibm::{ClientConfig, Endpoints, IbmCloud, IbmError},
    metrics::Metrics,
    reconciler::{self, Context, Settings},
    telemetry::{self, LogFormat},
};

#[derive(Debug, Parser)]
#[command(
    name = "ingestion-key-operator",
    version,
    about = "Keeps IBM Cloud ingestion keys (resource key credentials) in Kubernetes Secrets for log agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (uses KUBECONFIG or the in-cluster configuration).
    Run(RunArgs),
    /// Print the IngestionKeyRequest CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Namespace to watch (repeatable). Default: all namespaces.
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,
    /// IBM Cloud IAM endpoint (https, or http on loopback).
    #[arg(
        long,
        env = "IBMCLOUD_IAM_ENDPOINT",
        default_value = "https://iam.cloud.ibm.com"
    )]
    pub iam_endpoint: String,
    /// IBM Cloud Resource Controller endpoint (https, or http on loopback).
    #[arg(
        long,
        env = "IBMCLOUD_RESOURCE_CONTROLLER_ENDPOINT",
        default_value = "https://resource-controller.cloud.ibm.com"
    )]
    pub resource_controller_endpoint: String,
    /// Address of the admin server: /metrics, /healthz, /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// After a key creation whose outcome is unknown (crash, timeout), how long to wait for the key
    /// to show up before creating it again.
    #[arg(long, default_value = "60s", value_parser = duration_arg)]
    pub key_creation_grace: Duration,
    /// How long an instance lookup (by name, GUID or CRN) is reused.
    #[arg(long, default_value = "5m", value_parser = duration_arg)]
    pub instance_cache_ttl: Duration,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration like 30s, 5m or 1h"))
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("invalid IBM Cloud endpoint: {0}")]
    Endpoint(#[from] IbmError),
    #[error("could not build a Kubernetes client (KUBECONFIG or in-cluster config): {0}")]
    KubeClient(#[source] kube::Error),
    #[error(
        "the IngestionKeyRequest CRD is not installed or not readable ({0}): install it with `ingestion-key-operator crd | kubectl apply -f -`"
    )]
    CrdMissing(#[source] kube::Error),
    #[error("could not listen on admin address {addr}: {source}")]
    AdminListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not render the CRD as YAML: {0}")]
    CrdYaml(String),
}

/// The CRD as YAML, exactly as `crds/ingestionkeyrequests.keysync.dev.yaml` holds it.
pub fn crd_yaml() -> Result<String, CliError> {
    serde_saphyr::to_string(&IngestionKeyRequest::crd())
        .map_err(|e| CliError::CrdYaml(e.to_string()))
}

pub async fn execute(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Crd => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> Result<(), CliError> {
    telemetry::init(args.log_format);
    let endpoints = Endpoints::new(&args.iam_endpoint, &args.resource_controller_endpoint)?;
    let ibm = IbmCloud::new(endpoints, ClientConfig::default())?;
    let client = kube::Client::try_default()
        .await
        .map_err(CliError::KubeClient)?;

    // Fail fast, with the fix in the message, when the CRD is missing.
    let probe: Api<IngestionKeyRequest> = match args.namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    probe
        .list(&ListParams::default().limit(1))
        .await
        .map_err(CliError::CrdMissing)?;

    let listener =
        TcpListener::bind(args.admin_addr)
            .await
            .map_err(|source| CliError::AdminListen {
                addr: args.admin_addr,
                source,
            })?;
    let metrics = Arc::new(Metrics::default());
    let settings = Settings {
        namespaces: args.namespaces.clone(),
        instance_cache_ttl: args.instance_cache_ttl,
        key_creation_grace: args.key_creation_grace,
        concurrency: args.concurrency,
    };
    let ctx = Arc::new(Context::new(client, ibm.clone(), metrics.clone(), settings));
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = reconciler::shutdown_on_signals();
    let render = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.render(&ibm.request_counts()))
    };
    let admin = admin::serve(
        listener,
        AdminState {
            ready: ready.clone(),
            metrics: render,
        },
        shutdown.clone(),
    );
    let scope = if args.namespaces.is_empty() {
        "all namespaces".to_string()
    } else {
        args.namespaces.join(",")
    };
    info!(version = env!("CARGO_PKG_VERSION"), admin_addr = %args.admin_addr, namespaces = %scope, "starting ingestion-key-operator");
    tokio::join!(reconciler::run(ctx, ready, shutdown), admin);
    info!("stopped");
    Ok(())
}
