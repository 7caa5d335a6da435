//! The validation the operator applies itself (older API servers ignore CEL rules), the key
//! name it derives, and the duration syntax of the spec.

use std::time::Duration;

use super::{
    ClusterId, IngestionKeyRequest, IngestionKeyRequestSpec, InstanceRef, MANAGED_BY_LABEL,
    MIN_REFRESH_INTERVAL, MIN_ROTATION_INTERVAL, default_key_name,
};

/// How the instance is identified, after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceSelector {
    Name {
        name: String,
        resource_group_id: Option<String>,
        region: Option<String>,
        service_name: Option<String>,
    },
    Guid(String),
    Crn(String),
}

/// A spec that passed [`validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    pub instance: InstanceSelector,
    pub refresh_interval: Duration,
    /// The request's base key name (default or `resourceKey.name`); replacements append `:r<N>`.
    pub key_name: String,
    pub rotation: Rotation,
}

/// `spec.rotation`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub interval: Option<Duration>,
    pub grace_period: Duration,
    pub rollout_timeout: Duration,
}

/// Why a spec is invalid: the message of the `InvalidSpec` condition.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SpecError(pub String);

fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Checks what the CRD's schema and CEL rules check (older API servers skip CEL), plus what no
/// schema can express, and derives the key name. Every problem is reported, not just the first.
pub fn validate(
    request: &IngestionKeyRequest,
    cluster: &ClusterId,
) -> Result<ValidSpec, SpecError> {
    validate_with(request, cluster, MIN_ROTATION_INTERVAL)
}

/// [`validate`], accepting rotation intervals down to `min_rotation_interval`.
pub fn validate_with(
    request: &IngestionKeyRequest,
    cluster: &ClusterId,
    min_rotation_interval: Duration,
) -> Result<ValidSpec, SpecError> {
    let spec = &request.spec;
    let mut problems = Vec::new();
    let rotation = rotation(spec, min_rotation_interval, &mut problems);
    let instance = instance_selector(&spec.instance, &mut problems);
    check_secrets(spec, &mut problems);
    if spec.resource_key.role.trim().is_empty() {
        problems.push("spec.resourceKey.role must not be empty".into());
    }
    if spec.resource_key.credential_field.trim().is_empty() {
        problems.push("spec.resourceKey.credentialField must not be empty".into());
    }
    let refresh_interval = parse_duration(&spec.refresh_interval);
    match refresh_interval {
        None => problems.push(format!(
            "spec.refreshInterval {:?} is not a duration like 15m or 1h (at most 87600h)",
            spec.refresh_interval
        )),
        Some(interval) if interval < MIN_REFRESH_INTERVAL => problems.push(format!(
            "spec.refreshInterval must be at least {}s",
            MIN_REFRESH_INTERVAL.as_secs()
        )),
        Some(_) => {}
    }
    let key_name = match non_empty(&spec.resource_key.name) {
        Some(name) if !is_valid_key_name(&name) => {
            problems.push(format!(
                "spec.resourceKey.name {name:?} breaks IBM's rule: at most 180 characters, letters, digits, space and - . _ :"
            ));
            None
        }
        Some(name) => Some(name),
        None => default_key_name(request, cluster),
    };
    match (instance, refresh_interval, key_name) {
        (Some(instance), Some(refresh_interval), Some(key_name)) if problems.is_empty() => {
            Ok(ValidSpec {
                instance,
                refresh_interval,
                key_name,
                rotation,
            })
        }
        (_, _, None) if problems.is_empty() => Err(SpecError(
            "the request has no namespace, name or uid yet".into(),
        )),
        _ => Err(SpecError(problems.join("; "))),
    }
}

/// `spec.rotation` and `spec.restartTargets`.
fn rotation(
    spec: &IngestionKeyRequestSpec,
    min_interval: Duration,
    problems: &mut Vec<String>,
) -> Rotation {
    let given = spec.rotation.clone().unwrap_or_default();
    let mut duration = |field: &str, text: &str| {
        parse_duration(text).unwrap_or_else(|| {
            problems.push(format!(
                "spec.rotation.{field} {text:?} is not a duration like 10m or 1h (at most 87600h)"
            ));
            Duration::ZERO
        })
    };
    let grace_period = duration("gracePeriod", &given.grace_period);
    let rollout_timeout = duration("rolloutTimeout", &given.rollout_timeout);
    let interval = given
        .interval
        .as_deref()
        .map(|text| duration("interval", text));
    if let Some(interval) = interval.filter(|i| *i < min_interval) {
        problems.push(format!(
            "spec.rotation.interval {interval:?} is shorter than the minimum {min_interval:?}"
        ));
    }
    for target in &spec.restart_targets {
        if !is_dns_subdomain(&target.name) {
            problems.push(format!(
                "spec.restartTargets: {:?} is not a valid {} name",
                target.name, target.kind
            ));
        }
    }
    Rotation {
        interval,
        grace_period,
        rollout_timeout,
    }
}

/// Exactly one of name, GUID or CRN.
fn instance_selector(
    instance: &InstanceRef,
    problems: &mut Vec<String>,
) -> Option<InstanceSelector> {
    let selectors = [
        non_empty(&instance.name),
        non_empty(&instance.guid),
        non_empty(&instance.crn),
    ];
    match selectors {
        [Some(name), None, None] => Some(InstanceSelector::Name {
            name,
            resource_group_id: non_empty(&instance.resource_group_id),
            region: non_empty(&instance.region),
            service_name: non_empty(&instance.service_name),
        }),
        [None, Some(guid), None] => Some(InstanceSelector::Guid(guid)),
        [None, None, Some(crn)] if !crn.starts_with("crn:") || crn.split(':').count() < 8 => {
            problems.push(format!(
                "spec.instance.crn {crn:?} is not a CRN (crn:v1:...:...)"
            ));
            None
        }
        [None, None, Some(crn)] => Some(InstanceSelector::Crn(crn)),
        _ => {
            problems.push(
                "set exactly one of spec.instance.name, spec.instance.guid, spec.instance.crn"
                    .into(),
            );
            None
        }
    }
}

/// The API key Secret reference and the agents' Secret.
fn check_secrets(spec: &IngestionKeyRequestSpec, problems: &mut Vec<String>) {
    if spec.api_key_secret_ref.name.trim().is_empty() {
        problems.push("spec.apiKeySecretRef.name must name a Secret in this namespace".into());
    }
    if !is_secret_data_key(&spec.api_key_secret_ref.key) {
        problems.push(format!(
            "spec.apiKeySecretRef.key {:?} is not a valid Secret key",
            spec.api_key_secret_ref.key
        ));
    }
    if !is_dns_subdomain(&spec.secret.name) {
        problems.push(format!(
            "spec.secret.name {:?} is not a valid Secret name",
            spec.secret.name
        ));
    }
    if spec.secret.name == spec.api_key_secret_ref.name {
        // Writing the key there would overwrite the API key; the operator never takes that Secret.
        problems.push(format!(
            "spec.secret.name {:?} is the API key Secret (spec.apiKeySecretRef.name): choose another name for the agents' Secret",
            spec.secret.name
        ));
    }
    if !is_secret_data_key(&spec.secret.key) {
        problems.push(format!(
            "spec.secret.key {:?} is not a valid Secret key",
            spec.secret.key
        ));
    }
    if spec.secret.labels.contains_key(MANAGED_BY_LABEL) {
        problems.push(format!(
            "spec.secret.labels must not set {MANAGED_BY_LABEL}: the operator owns it"
        ));
    }
}

/// IBM's rule for resource key names: at most 180 characters; letters, digits, space, - . _ :
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 180
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '.' | '_' | ':'))
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_secret_data_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The longest duration any field accepts (ten years): every time computed from a spec stays far
/// from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses Go-style durations as used across Kubernetes: `90s`, `15m`, `1h30m`, `500ms`, up to
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.checked_mul(60)?),
            "h" => Duration::from_secs(value.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = &rest[unit_len..];
    }
    (total <= MAX_DURATION).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DeletionPolicy;

    fn cluster() -> ClusterId {
        ClusterId::parse("c1").unwrap()
    }

    fn request(yaml: &str) -> IngestionKeyRequest {
        let mut request: IngestionKeyRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1",
            "kind": "IngestionKeyRequest",
            "metadata": {"name": "activity-tracker", "namespace": "ibm-observe", "uid": "0f3c9a1e-2b4d-4e6f-8a9b-0c1d2e3f4a5b"},
            "spec": {"instance": {}, "apiKeySecretRef": {"name": "ibmcloud-api-key"}}
        }))
        .unwrap();
        request.spec = serde_saphyr::from_str(yaml).unwrap();
        request
    }

    #[test]
    fn defaults_follow_the_contract() {
        let r = request("instance: {name: my-at}\napiKeySecretRef: {name: ibmcloud-api-key}\n");
        assert_eq!(r.spec.api_key_secret_ref.key, "apikey");
        assert_eq!(r.spec.resource_key.role, "Manager");
        assert_eq!(r.spec.resource_key.credential_field, "ingestion_key");
        assert_eq!(r.spec.secret.name, "logdna-agent-key");
        assert_eq!(r.spec.secret.key, "logdna-agent-key");
        assert_eq!(r.spec.refresh_interval, "1h");
        assert_eq!(r.spec.deletion_policy, DeletionPolicy::Delete);
        let valid = validate(&r, &cluster()).unwrap();
        assert_eq!(valid.refresh_interval, Duration::from_secs(3600));
        assert_eq!(
            valid.key_name,
            "ikr:ibm-observe:activity-tracker:0f3c9a1e-2b4d-4e6f-8a9b-0c1d2e3f4a5b:c1"
        );
    }

    #[test]
    fn exactly_one_instance_selector() {
        for yaml in [
            "instance: {}\napiKeySecretRef: {name: k}\n",
            "instance: {name: a, guid: b}\napiKeySecretRef: {name: k}\n",
            "instance: {name: '', guid: '', crn: ''}\napiKeySecretRef: {name: k}\n",
        ] {
            let err = validate(&request(yaml), &cluster()).unwrap_err();
            assert!(err.0.contains("exactly one"), "{yaml}: {err}");
        }
        let r = request(
            "instance: {crn: 'crn:v1:bluemix:public:logdnaat:us-south:a/acc:guid::'}\napiKeySecretRef: {name: k}\n",
        );
        assert!(matches!(
            validate(&r, &cluster()).unwrap().instance,
            InstanceSelector::Crn(_)
        ));
        let r = request("instance: {crn: 'not-a-crn'}\napiKeySecretRef: {name: k}\n");
        assert!(validate(&r, &cluster()).is_err());
    }

    #[test]
    fn rejects_bad_names_and_intervals() {
        let bad = [
            "resourceKey: {name: 'bad/name'}",
            "refreshInterval: soon",
            "refreshInterval: 0s",
            "refreshInterval: 30s",
            "secret: {name: Bad_Name}",
            "secret: {key: 'a b'}",
            "resourceKey: {credentialField: ''}",
        ];
        for extra in bad {
            let yaml = format!("instance: {{name: a}}\napiKeySecretRef: {{name: k}}\n{extra}\n");
            assert!(
                validate(&request(&yaml), &cluster()).is_err(),
                "{extra} should be rejected"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let r = request(
            "instance: {}\napiKeySecretRef: {name: k}\nrefreshInterval: soon\nsecret: {key: 'a b'}\n",
        );
        let err = validate(&r, &cluster()).unwrap_err().0;
        for expected in ["exactly one", "refreshInterval", "spec.secret.key"] {
            assert!(err.contains(expected), "{expected} missing in: {err}");
        }
    }

    #[test]
    fn the_api_key_secret_is_never_the_agents_secret() {
        let r =
            request("instance: {name: a}\napiKeySecretRef: {name: creds}\nsecret: {name: creds}\n");
        let err = validate(&r, &cluster()).unwrap_err().0;
        assert!(err.contains("is the API key Secret"), "{err}");
        assert!(
            !err.contains("delete"),
            "never advise deleting the API key Secret: {err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("87600h"), Some(MAX_DURATION));
        assert_eq!(parse_duration("87601h"), None, "past ten years");
        assert_eq!(
            parse_duration("5124095576030431h"),
            None,
            "would overflow u64 seconds"
        );
    }
}
