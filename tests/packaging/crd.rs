//! The checked-in CRD is exactly what `ingestion-key-operator crd` prints, and it carries what
//! users rely on: short name, printer columns, defaults, enums, the CEL rule, documentation.

use ingestion_key_operator::cli::crd_yaml;

const CRD_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crds/ingestionkeyrequests.keysync.dev.yaml"
);

#[test]
fn checked_in_crd_matches_the_generator() {
    let generated = crd_yaml().expect("render CRD");
    let on_disk = std::fs::read_to_string(CRD_FILE)
        .expect("crds/ingestionkeyrequests.keysync.dev.yaml exists");
    assert!(
        generated == on_disk,
        "crds/ingestionkeyrequests.keysync.dev.yaml is stale: run `make crds` (cargo run -q -- crd > crds/ingestionkeyrequests.keysync.dev.yaml)"
    );
}

#[test]
fn crd_carries_names_columns_defaults_enums_and_rules() {
    let crd: serde_json::Value = serde_saphyr::from_str(&crd_yaml().unwrap()).unwrap();
    assert_eq!(crd["metadata"]["name"], "ingestionkeyrequests.keysync.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "ikr");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Instance", "Secret", "Ready", "Reason", "Age"]);
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let props = &spec["properties"];
    assert_eq!(props["refreshInterval"]["default"], "1h");
    assert_eq!(props["deletionPolicy"]["default"], "Delete");
    assert_eq!(
        props["deletionPolicy"]["enum"],
        serde_json::json!(["Delete", "Retain"])
    );
    for (field, property, default) in [
        ("apiKeySecretRef", "key", "apikey"),
        ("resourceKey", "role", "Manager"),
        ("resourceKey", "credentialField", "ingestion_key"),
        ("secret", "name", "logdna-agent-key"),
    ] {
        let found = &props[field]["properties"][property]["default"];
        assert_eq!(found, default, "default of {field}.{property}");
    }
    let rules = props["instance"]["x-kubernetes-validations"]
        .as_array()
        .expect("CEL rule on spec.instance");
    assert!(rules[0]["rule"].as_str().unwrap().contains("size() == 1"));
    // Every spec field is documented for `kubectl explain`.
    fn documented(schema: &serde_json::Value, path: &str) {
        if let Some(props) = schema["properties"].as_object() {
            for (name, field) in props {
                assert!(
                    field["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{path}.{name} has no description"
                );
                documented(field, &format!("{path}.{name}"));
            }
        }
    }
    documented(spec, "spec");
}
