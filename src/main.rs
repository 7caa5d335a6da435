use clap::Parser;
use ingestion_key_operator::{
    cli::{Cli, execute},
    plugin::{self, Plugin},
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The same binary is the kubectl plugin when it is called kubectl-ingestionkey.
    let (name, result) = if plugin::invoked_as_plugin() {
        let plugin = Plugin::parse();
        (
            plugin::PLUGIN_NAME,
            plugin::execute(plugin).await.map_err(|e| e.to_string()),
        )
    } else {
        let cli = Cli::parse();
        (
            "ingestion-key-operator",
            execute(cli).await.map_err(|e| e.to_string()),
        )
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
