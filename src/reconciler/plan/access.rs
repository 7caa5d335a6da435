//! Whether a request may use what it names: its API key Secret and its restart targets. The
//! operator acts with rights the request's author may not have (it reads every API key Secret of
//! the namespace, and patches workloads), so the objects themselves say who may use them: an API
//! key Secret opts in with a label and may narrow the roles and credential fields it serves; a
//! workload opts in to restarts with an annotation. With `--require-opt-in` (the chart's default)
//! nothing is used without that; without it (the binary's default, for compatibility) only the
//! narrowing annotations apply.

use std::collections::BTreeMap;

use crate::crd::{
    ALLOWED_CREDENTIAL_FIELDS_ANNOTATION, ALLOWED_ROLES_ANNOTATION, API_KEY_OPT_IN_LABEL,
    IngestionKeyRequest, RESTART_OPT_IN_ANNOTATION,
};

/// Whether the API key Secret's labels opt it in for the requests of its namespace.
pub fn api_key_opted_in(labels: &BTreeMap<String, String>) -> bool {
    labels.get(API_KEY_OPT_IN_LABEL).map(String::as_str) == Some("true")
}

/// Whether `request` may use the API key Secret whose metadata is `labels` and `annotations`;
/// `Err` says why not and what to add. Read from the Secret's metadata alone: a Secret that does
/// not allow the request is never read.
pub fn api_key_use(
    request: &IngestionKeyRequest,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    require_opt_in: bool,
) -> Result<(), String> {
    if require_opt_in && !api_key_opted_in(labels) {
        return Err(format!(
            "it has not opted in: an owner of the Secret labels it {API_KEY_OPT_IN_LABEL}=true"
        ));
    }
    let key = &request.spec.resource_key;
    allowed(annotations, ALLOWED_ROLES_ANNOTATION, "role", &key.role)?;
    let field = &key.credential_field;
    allowed(
        annotations,
        ALLOWED_CREDENTIAL_FIELDS_ANNOTATION,
        "credential field",
        field,
    )
}

/// `Ok` unless `annotation` is present and does not list `wanted` (comma-separated).
fn allowed(
    annotations: &BTreeMap<String, String>,
    annotation: &str,
    what: &str,
    wanted: &str,
) -> Result<(), String> {
    let Some(list) = annotations.get(annotation) else {
        return Ok(());
    };
    if list.split(',').map(str::trim).any(|item| item == wanted) {
        return Ok(());
    }
    Err(format!(
        "its annotation {annotation} does not allow the {what} {wanted:?} (it allows {list:?})"
    ))
}

/// Whether a workload with these annotations may be restarted by the operator.
pub fn restart_allowed(
    annotations: Option<&BTreeMap<String, String>>,
    require_opt_in: bool,
) -> bool {
    !require_opt_in
        || annotations
            .and_then(|a| a.get(RESTART_OPT_IN_ANNOTATION))
            .is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(role: &str, field: &str) -> IngestionKeyRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"instance": {"name": "at"}, "apiKeySecretRef": {"name": "k"},
                     "resourceKey": {"role": role, "credentialField": field}},
        }))
        .expect("request JSON")
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn without_opt_in_required_any_secret_serves_unless_it_narrows() {
        let none = BTreeMap::new();
        assert!(api_key_use(&request("Manager", "ingestion_key"), &none, &none, false).is_ok());
        let narrow = map(&[(ALLOWED_CREDENTIAL_FIELDS_ANNOTATION, "ingestion_key")]);
        let minting = request("Manager", "apikey");
        let why = api_key_use(&minting, &none, &narrow, false).expect_err("apikey refused");
        assert!(why.contains("\"apikey\""), "{why}");
    }

    #[test]
    fn with_opt_in_required_only_a_labelled_secret_serves() {
        let none = BTreeMap::new();
        let ok = request("Manager", "ingestion_key");
        let why = api_key_use(&ok, &none, &none, true).expect_err("not labelled");
        assert!(why.contains(API_KEY_OPT_IN_LABEL), "{why}");
        let wrong = map(&[(API_KEY_OPT_IN_LABEL, "yes")]);
        assert!(
            api_key_use(&ok, &wrong, &none, true).is_err(),
            "only \"true\" opts in"
        );
        let labelled = map(&[(API_KEY_OPT_IN_LABEL, "true")]);
        assert!(api_key_use(&ok, &labelled, &none, true).is_ok());
        let roles = map(&[(ALLOWED_ROLES_ANNOTATION, "Reader, Writer")]);
        assert!(
            api_key_use(&ok, &labelled, &roles, true).is_err(),
            "Manager not listed"
        );
        assert!(api_key_use(&request("Writer", "ingestion_key"), &labelled, &roles, true).is_ok());
    }

    #[test]
    fn workloads_opt_in_to_restarts_when_required() {
        let opted = map(&[(RESTART_OPT_IN_ANNOTATION, "true")]);
        assert!(restart_allowed(None, false));
        assert!(!restart_allowed(None, true));
        assert!(!restart_allowed(Some(&BTreeMap::new()), true));
        assert!(restart_allowed(Some(&opted), true));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 300, failure_persistence: None, ..proptest::prelude::ProptestConfig::default()
        })]

        /// A hostile author picks any role and credential field, and the Secret carries any
        /// labels and annotations: without the opt-in label nothing is allowed when it is required,
        /// and a narrowing annotation allows exactly what it lists, never more.
        #[test]
        fn only_what_the_secret_allows_is_allowed(
            role in "[A-Za-z:_ ,-]{0,20}",
            field in "[a-z_ ,]{0,16}",
            labels in proptest::collection::btree_map("[a-z./-]{1,20}", "[a-z]{0,6}", 0..4),
            allowed_roles in proptest::option::of("[A-Za-z ,]{0,30}"),
            allowed_fields in proptest::option::of("[a-z_ ,]{0,30}"),
            required in proptest::bool::ANY,
        ) {
            let mut annotations = BTreeMap::new();
            if let Some(list) = &allowed_roles {
                annotations.insert(ALLOWED_ROLES_ANNOTATION.to_owned(), list.clone());
            }
            if let Some(list) = &allowed_fields {
                annotations.insert(ALLOWED_CREDENTIAL_FIELDS_ANNOTATION.to_owned(), list.clone());
            }
            let verdict = api_key_use(&request(&role, &field), &labels, &annotations, required);
            let listed = |list: &Option<String>, wanted: &str| {
                list.as_ref().is_none_or(|l| l.split(',').map(str::trim).any(|i| i == wanted))
            };
            let expected = (!required || api_key_opted_in(&labels))
                && listed(&allowed_roles, &role)
                && listed(&allowed_fields, &field);
            proptest::prop_assert_eq!(verdict.is_ok(), expected);
        }
    }
}
