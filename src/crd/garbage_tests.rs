//! Property tests: whatever a request's author writes (strings of any shape, huge numbers,
//! unknown units, any mix of instance selectors), validation answers a valid spec or a typed
//! `SpecError`, and durations parse or are refused: never a panic, never an overflow.

use proptest::prelude::*;

use super::{IngestionKeyRequest, MAX_DURATION, MIN_REFRESH_INTERVAL, parse_duration, validate};

/// Durations as people (and fuzzers) write them: digits and units, signs, spaces, huge values.
fn durations() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,25}(ms|s|m|h|d|us|)",
        "([0-9]{1,20}(ms|s|m|h)){1,6}",
        "[-+ ]?[0-9a-z. ]{0,30}",
        any::<String>(),
    ]
}

fn text() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        "[a-zA-Z0-9:./_ -]{0,40}".prop_map(Some),
        any::<String>().prop_map(Some),
        (0usize..2000).prop_map(|n| Some("k".repeat(n))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn durations_parse_within_bounds_or_are_refused(text in durations()) {
        if let Some(duration) = parse_duration(&text) {
            prop_assert!(duration <= MAX_DURATION, "{text:?} gave {duration:?}");
        }
    }

    #[test]
    fn any_spec_validates_or_is_refused_with_a_reason(
        name in text(), guid in text(), crn in text(), region in text(),
        secret_name in text(), secret_key in text(), role in text(), field in text(),
        refresh in durations(), interval in durations(), grace in durations(),
    ) {
        let mut spec = serde_json::json!({
            "instance": {"name": name, "guid": guid, "crn": crn, "region": region},
            "apiKeySecretRef": {"name": "ibmcloud-api-key"},
            "refreshInterval": refresh,
            "role": role,
            "credentialField": field,
            "secret": {"name": secret_name, "key": secret_key},
            "rotation": {"interval": interval, "gracePeriod": grace},
        });
        strip_nulls(&mut spec);
        let request = serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
            "metadata": {"name": "fuzzed", "namespace": "ns", "uid": "u"},
            "spec": spec,
        });
        // What the API server would refuse to store never reaches validation.
        let Ok(request) = serde_json::from_value::<IngestionKeyRequest>(request) else {
            return Ok(());
        };
        match validate(&request, &super::ClusterId::parse("c1").expect("valid id")) {
            Ok(valid) => prop_assert!(valid.refresh_interval >= MIN_REFRESH_INTERVAL),
            Err(error) => prop_assert!(!error.0.is_empty()),
        }
    }
}

/// Absent rather than null, as an author who leaves a field out.
fn strip_nulls(value: &mut serde_json::Value) {
    if let Some(map) = value.as_object_mut() {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(strip_nulls);
    }
}
