//! The command line: `run` and `crd` (docs/reference.md lists the flags). Wiring only.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use futures::FutureExt;
use kube::{Api, CustomResourceExt, api::ListParams};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::{
    admin::{self, AdminState},
    crd::{ClusterId, IngestionKeyRequest, parse_duration},
    ibm::{ClientConfig, Endpoints, IbmCloud, IbmError},
    leader::{Elector, LeaseLost, LeaseTimings},
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
    Run(Box<RunArgs>),
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
    /// The shortest spec.rotation.interval accepted. For tests and demos only: in production a
    /// key is rotated at most once an hour.
    #[arg(long, default_value = "1h", value_parser = duration_arg, hide = true)]
    pub min_rotation_interval: Duration,
    /// Take part in leader election (a Lease named ingestion-key-operator): only the leader
    /// reconciles; the others stand by, ready, and take over when it goes.
    #[arg(long)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease. Default: the pod's own namespace (POD_NAMESPACE, else the
    /// service account's).
    #[arg(long, value_name = "NS")]
    pub leader_election_namespace: Option<String>,
    /// The longest one reconcile may take before it is stopped and retried (each IBM Cloud call
    /// takes at most 30 s a try, each Kubernetes API call 30 s).
    #[arg(long, default_value = "5m", value_parser = duration_arg)]
    pub reconcile_deadline: Duration,
    /// Use only API key Secrets labelled keysync.dev/api-key=true and restart only workloads
    /// annotated keysync.dev/restart-on-credential-change=true: a request's author cannot, through
    /// the operator, use a Secret or restart a workload whose owner did not agree (the chart's
    /// default).
    #[arg(long)]
    pub require_opt_in: bool,
    /// Serve /metrics only to scrapes whose bearer token the API server authenticates
    /// (TokenReview) and allows `get` on the non-resource URL /metrics (SubjectAccessReview);
    /// /healthz and /readyz stay open for the kubelet. Needs `create` on tokenreviews and
    /// subjectaccessreviews.
    #[arg(long)]
    pub metrics_auth: bool,
    /// This cluster's identity, written into every key name the operator makes so that it (and
    /// `kubectl ingestionkey audit`) never deletes another cluster's keys on a shared instance.
    /// Default: the UID of the kube-system namespace (needs `get` on that namespace).
    #[arg(long, value_name = "ID", value_parser = cluster_id_arg)]
    pub cluster_id: Option<ClusterId>,
    /// How often the leader lists the keys of the instances in use and counts the orphans among
    /// them (metric ingestion_key_operator_orphan_keys): at most one key listing per instance per
    /// interval, under the IBM budget. Default: never.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub orphan_audit_interval: Option<Duration>,
    /// Process-wide budget of IBM Cloud requests per second.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub ibm_max_rps: u32,
}

/// How long a Kubernetes API call may wait for each read of its reply.
const API_CALL_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Name of the leader Lease.
pub const LEASE_NAME: &str = "ingestion-key-operator";

fn cluster_id_arg(text: &str) -> Result<ClusterId, String> {
    ClusterId::parse(text)
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
    #[error(
        "could not read this cluster's identity, the UID of namespace kube-system ({0}): grant `get` on it or pass --cluster-id"
    )]
    ClusterIdentity(String),
    #[error("could not listen on admin address {addr}: {source}")]
    AdminListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not render the CRD as YAML: {0}")]
    CrdYaml(String),
    #[error(
        "--leader-elect needs the Lease namespace: set --leader-election-namespace or POD_NAMESPACE"
    )]
    LeaseNamespaceUnknown,
    #[error("stopped reconciling at once: {0}")]
    LeadershipLost(#[from] LeaseLost),
}

/// The leader-election candidate of this process, named after its pod (POD_NAME) or host.
fn elector(client: kube::Client, namespace: Option<String>) -> Result<Elector, CliError> {
    let namespace = namespace
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
        .ok_or(CliError::LeaseNamespaceUnknown)?;
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "ingestion-key-operator".into());
    // The pid keeps two processes on one host (tests, a restart) apart.
    let identity = format!("{host}_{}", std::process::id());
    Ok(Elector::new(
        client,
        &namespace,
        LEASE_NAME,
        identity,
        LeaseTimings::default(),
    ))
}

/// Reconciles until shutdown; with an elector, only while holding the lease. A standby is ready
/// (so that rolling updates proceed); losing the lease stops everything at once, as another
/// replica may already reconcile; a graceful shutdown releases it for the next leader.
async fn reconcile_when_leading(
    ctx: Arc<Context>,
    elector: Option<Elector>,
    ready: Arc<AtomicBool>,
    shutdown: reconciler::Shutdown,
) -> Result<(), CliError> {
    let metrics = ctx.metrics.clone();
    let Some(elector) = elector else {
        metrics.set_leader(true);
        bounded(reconciler::run(ctx, ready, shutdown.clone()), shutdown).await;
        return Ok(());
    };
    ready.store(true, Ordering::Release);
    info!(
        identity = elector.identity(),
        "standing by for the leader lease"
    );
    tokio::select! {
        () = elector.acquire() => {}
        () = shutdown.clone() => return Ok(()),
    }
    metrics.set_leader(true);
    let running = reconciler::run(ctx, Arc::new(AtomicBool::new(false)), shutdown.clone());
    let result = tokio::select! {
        () = bounded(running, shutdown) => Ok(()),
        lost = elector.hold() => Err(CliError::LeadershipLost(lost)),
    };
    // Reconciles in flight were dropped with `running` above: nothing acts for this replica now.
    metrics.set_leader(false);
    if let Err(lost) = &result {
        ready.store(false, Ordering::Release);
        error!(error = %lost, "lost the leader lease; stopped reconciling and exiting to stand by again");
    }
    if result.is_ok() {
        elector.release().await;
    }
    result
}

/// How long running reconciles may take to finish after the shutdown signal. Stopping in the
/// middle of one is safe (every step resumes from status), and a short bound hands over to the
/// next leader quickly, well within the pod's termination grace period.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs `work` until it ends, or until [`SHUTDOWN_GRACE`] after the shutdown signal.
async fn bounded(work: impl std::future::Future<Output = ()>, shutdown: reconciler::Shutdown) {
    let deadline = async {
        shutdown.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = work => {}
        () = deadline => warn!(
            grace_seconds = SHUTDOWN_GRACE.as_secs(),
            "reconciles still running after the shutdown grace; stopping them (they resume from status)"
        ),
    }
}

/// The CRD as YAML, exactly as `crds/ingestionkeyrequests.keysync.dev.yaml` holds it.
pub fn crd_yaml() -> Result<String, CliError> {
    serde_saphyr::to_string(&IngestionKeyRequest::crd())
        .map_err(|e| CliError::CrdYaml(e.to_string()))
}

/// The cluster's identity: the UID of its kube-system namespace, which lives as long as the
/// cluster and differs between clusters (a restore from backup included: the namespace is new).
pub async fn discover_cluster_id(client: &kube::Client) -> Result<ClusterId, CliError> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let uid = namespaces
        .get("kube-system")
        .await
        .map_err(|e| CliError::ClusterIdentity(e.to_string()))?
        .metadata
        .uid
        .unwrap_or_default();
    ClusterId::parse(&uid).map_err(CliError::ClusterIdentity)
}

pub async fn execute(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Crd => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
        Command::Run(args) => run(*args).await,
    }
}

async fn run(args: RunArgs) -> Result<(), CliError> {
    telemetry::init(args.log_format);
    crate::memory::keep_releasing_free_pages();
    let endpoints = Endpoints::new(&args.iam_endpoint, &args.resource_controller_endpoint)?;
    let ibm = IbmCloud::new(
        endpoints,
        ClientConfig {
            max_rps: args.ibm_max_rps,
            ..ClientConfig::default()
        },
    )?;
    let config = kube::Config::infer()
        .await
        .map_err(|e| CliError::KubeClient(kube::Error::InferConfig(e)))?;
    // Calls get a reply within seconds or fail (kube's default waits up to 295 s on each read,
    // which the watches need): a hung API server then costs one failed call, not a held slot.
    let mut calls = config.clone();
    calls.read_timeout = Some(API_CALL_READ_TIMEOUT);
    let client = kube::Client::try_from(calls.clone()).map_err(CliError::KubeClient)?;
    // The lease's calls are never replayed by the client (kube retries 429/503/504 for minutes
    // by default): a renewal either lands within the renew deadline or counts as failed.
    calls.default_retry = false;
    let lease_client = kube::Client::try_from(calls).map_err(CliError::KubeClient)?;
    let watch_client = kube::Client::try_from(config).map_err(CliError::KubeClient)?;

    // Fail fast, with the fix in the message, when the CRD is missing.
    let probe: Api<IngestionKeyRequest> = match args.namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    probe
        .list(&ListParams::default().limit(1))
        .await
        .map_err(CliError::CrdMissing)?;
    let cluster_id = match args.cluster_id.clone() {
        Some(id) => id,
        None => discover_cluster_id(&client).await?,
    };
    info!(%cluster_id, "cluster identity");

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
        min_rotation_interval: args.min_rotation_interval,
        reconcile_deadline: args.reconcile_deadline,
        require_opt_in: args.require_opt_in,
        cluster_id,
        orphan_audit_interval: args.orphan_audit_interval,
    };
    let elector = match args.leader_elect {
        true => Some(elector(
            lease_client,
            args.leader_election_namespace.clone(),
        )?),
        false => None,
    };
    let ctx = Arc::new(
        Context::new(client, ibm.clone(), metrics.clone(), settings)
            .with_watch_client(watch_client),
    );
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = shutdown_on_signals();
    let render = {
        let (metrics, ctx) = (metrics.clone(), ctx.clone());
        Arc::new(move || {
            metrics.render_with_latency(
                &ibm.request_counts(),
                &ibm.request_latencies(),
                ibm.budget_stats(),
                &ctx.request_samples(),
            )
        })
    };
    let api_server_answers = Arc::new(AtomicBool::new(true));
    let probe = tokio::spawn(probe_api_server(
        ctx.client.clone(),
        api_server_answers.clone(),
    ));
    let admin = tokio::spawn(admin::serve(
        listener,
        AdminState {
            ready: ready.clone(),
            api_server_answers,
            metrics: render,
            metrics_authorizer: args.metrics_auth.then(|| {
                let authorizer =
                    crate::metrics_auth::KubeMetricsAuthorizer::new(ctx.client.clone());
                Arc::new(authorizer) as Arc<dyn admin::MetricsAuthorizer>
            }),
        },
        admin::Limits::default(),
        shutdown.clone(),
    ));
    let scope = if args.namespaces.is_empty() {
        "all namespaces".to_string()
    } else {
        args.namespaces.join(",")
    };
    info!(version = env!("CARGO_PKG_VERSION"), admin_addr = %args.admin_addr, namespaces = %scope, leader_elect = args.leader_elect, "starting ingestion-key-operator");
    let result = reconcile_when_leading(ctx, elector, ready, shutdown).await;
    // The admin server ends with the process, also when the lease is lost: the process exits so
    // that the kubelet restarts it as a standby, instead of living on as a zombie that reports
    // healthy and never stands for the lease again.
    admin.abort();
    probe.abort();
    result?;
    info!("stopped");
    Ok(())
}

/// How often, and how long at most, the API server is asked whether it answers.
const API_SERVER_PROBE: Duration = Duration::from_secs(2);

/// Keeps `answers` to whether the API server answers `GET /version`, so that `/readyz` reports an
/// outage while it lasts (the watches and writes fail meanwhile; nothing is lost).
async fn probe_api_server(client: kube::Client, answers: Arc<AtomicBool>) {
    loop {
        let answered = tokio::time::timeout(API_SERVER_PROBE, client.apiserver_version())
            .await
            .is_ok_and(|version| version.is_ok());
        if answers.swap(answered, Ordering::AcqRel) != answered {
            if answered {
                info!("the API server answers again; ready");
            } else {
                warn!("the API server does not answer; not ready until it does");
            }
        }
        tokio::time::sleep(API_SERVER_PROBE).await;
    }
}

/// A [`reconciler::Shutdown`] that resolves on SIGTERM or Ctrl-C.
fn shutdown_on_signals() -> reconciler::Shutdown {
    async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                },
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        info!("shutdown signal received; finishing running reconciles");
    }
    .boxed()
    .shared()
}
