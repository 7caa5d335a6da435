use clap::Parser;
use ingestion_key_operator::{
    cli::{Cli, execute},
    memory,
    plugin::{self, Plugin},
};

fn main() -> std::process::ExitCode {
    // Before any thread exists: the allocator's arenas are made per thread.
    memory::limit_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("ingestion-key-operator: could not start the async runtime: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
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
