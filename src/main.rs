use clap::Parser;
use ingestion_key_operator::{
    cli::{Cli, execute},
    plugin::{self, Plugin},
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The same binary is the kubectl plugin when it is called kubectl-ingestionkey.
    if plugin::invoked_as_plugin() {
        let status = plugin::run(Plugin::parse()).await;
        return std::process::ExitCode::from(status);
    }
    match execute(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ingestion-key-operator: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
