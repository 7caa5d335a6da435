use clap::Parser;
use ingestion_key_operator::cli::{Cli, execute};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ingestion-key-operator: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
