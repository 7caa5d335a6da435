//! `ibm-cloud-sim --listen ADDR --seed FILE`: a local IBM Cloud (IAM + Resource Controller v2)
//! until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "ibm-cloud-sim",
    version,
    about = "A local IBM Cloud (IAM + Resource Controller v2) for tests, demos and benchmarks"
)]
struct Args {
    /// Address to listen on, for example 127.0.0.1:9443 (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Seed file describing accounts, API keys and instances (see examples/seed.yaml).
    #[arg(long)]
    seed: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match ibm_cloud_sim::run(args.listen, &args.seed).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ibm-cloud-sim: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
