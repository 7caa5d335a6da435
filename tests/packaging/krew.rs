//! The krew manifest installs the binary under the plugin's name, at the crate's version.

use ingestion_key_operator::plugin::PLUGIN_NAME;
use serde_json::Value;

use crate::harness::root;

#[test]
fn the_krew_manifest_installs_the_binary_as_the_plugin_at_this_version() {
    let text = std::fs::read_to_string(root().join(".krew.yaml")).expect(".krew.yaml");
    let manifest: Value = serde_saphyr::from_str(&text).expect("YAML");
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(
        manifest["metadata"]["name"]
            .as_str()
            .map(|n| format!("kubectl-{n}")),
        Some(PLUGIN_NAME.to_owned()),
        "`kubectl krew install ingestionkey` gives `kubectl ingestionkey`"
    );
    assert_eq!(
        manifest["spec"]["version"],
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    let platforms = manifest["spec"]["platforms"].as_array().expect("platforms");
    assert!(!platforms.is_empty());
    for platform in platforms {
        assert_eq!(platform["bin"], PLUGIN_NAME, "{platform}");
        let installs_binary = platform["files"].as_array().is_some_and(|files| {
            files
                .iter()
                .any(|f| f["from"] == "ingestion-key-operator" && f["to"] == PLUGIN_NAME)
        });
        assert!(installs_binary, "{platform}");
    }
}
