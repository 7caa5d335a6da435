//! Base URLs of IAM and the Resource Controller: public global endpoints, private ones for VPC and classic infrastructure.

use std::net::IpAddr;

use reqwest::Url;

use super::{ErrorKind, IbmError};

const OP_ENDPOINT: &str = "configure IBM Cloud endpoints";

/// The two IBM Cloud base URLs the client talks to. Stored without a trailing slash so paths can be
/// appended; a base may carry a path prefix (e.g. behind a proxy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    iam: Url,
    resource_controller: Url,
}

impl Endpoints {
    /// Validates both URLs: `https`, or `http` only for loopback hosts (`127.0.0.0/8`, `[::1]`,
    /// `localhost`) so tests and demos can use the simulator. A trailing `/identity/token` on the IAM
    /// URL is trimmed, as all IBM SDKs do.
    pub fn new(iam: &str, resource_controller: &str) -> Result<Self, IbmError> {
        let iam_trimmed = iam.trim().trim_end_matches('/');
        let iam_trimmed = iam_trimmed
            .strip_suffix("/identity/token")
            .unwrap_or(iam_trimmed);
        Ok(Self {
            iam: validate("IAM", iam_trimmed)?,
            resource_controller: validate("Resource Controller", resource_controller)?,
        })
    }

    /// Public production endpoints.
    pub fn public() -> Self {
        Self::known(
            "https://iam.cloud.ibm.com",
            "https://resource-controller.cloud.ibm.com",
        )
    }

    /// Private endpoints for VPC infrastructure (`private.iam.cloud.ibm.com`, `private.resource-controller.cloud.ibm.com`).
    pub fn private() -> Self {
        Self::known(
            "https://private.iam.cloud.ibm.com",
            "https://private.resource-controller.cloud.ibm.com",
        )
    }

    /// IBM's staging environment.
    pub fn staging() -> Self {
        Self::known(
            "https://iam.test.cloud.ibm.com",
            "https://resource-controller.test.cloud.ibm.com",
        )
    }

    fn known(iam: &str, rc: &str) -> Self {
        // Constant, valid URLs: parsing cannot fail; fall back to `new`'s validation anyway.
        match (Url::parse(iam), Url::parse(rc)) {
            (Ok(iam), Ok(resource_controller)) => Self {
                iam,
                resource_controller,
            },
            _ => unreachable!("built-in endpoint URLs are valid"),
        }
    }

    /// IAM base URL (without `/identity/token`).
    pub fn iam(&self) -> &Url {
        &self.iam
    }

    /// Resource Controller base URL.
    pub fn resource_controller(&self) -> &Url {
        &self.resource_controller
    }

    /// `base` with `segments` appended, each percent-encoded as one path segment (so a CRN's `/`
    /// becomes `%2F`).
    pub(crate) fn join(base: &Url, segments: &[&str]) -> Url {
        let mut url = base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }
}

fn validate(what: &str, raw: &str) -> Result<Url, IbmError> {
    let invalid = |why: String| {
        IbmError::new(
            OP_ENDPOINT,
            ErrorKind::InvalidEndpoint,
            format!("{what} endpoint {why}"),
        )
    };
    let url = Url::parse(raw.trim()).map_err(|e| invalid(format!("is not a valid URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials in a URL would end up in logs; refuse rather than redact.
        return Err(invalid("must not contain user information".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("must not contain a query or fragment".into()));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(invalid(format!(
                "{url} must use https (http is only allowed for loopback hosts)"
            )));
        }
        other => return Err(invalid(format!("has unsupported scheme {other:?}"))),
    }
    if url.host().is_none() {
        return Err(invalid("has no host".into()));
    }
    // Normalise away a trailing slash so joining segments is uniform.
    let mut url = url;
    let trimmed = url.path().trim_end_matches('/').to_owned();
    url.set_path(&trimmed);
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    // `host_str` brackets IPv6 literals; the `url` crate's `Host` enum is not a direct dependency.
    let Some(host) = url.host_str() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_accepted_and_iam_suffix_trimmed() {
        let e = Endpoints::new(
            "https://iam.cloud.ibm.com/identity/token",
            "https://resource-controller.cloud.ibm.com/",
        )
        .unwrap();
        assert_eq!(e.iam().as_str(), "https://iam.cloud.ibm.com/");
        assert_eq!(e, Endpoints::public());
    }

    #[test]
    fn http_only_for_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.3.4.5",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            assert!(Endpoints::new(ok, ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1",
            "http://iam.cloud.ibm.com",
            "http://localhost.evil.com",
            "ftp://127.0.0.1",
            "not a url",
            "https://user:pw@iam.cloud.ibm.com",
        ] {
            let err = Endpoints::new(bad, "https://resource-controller.cloud.ibm.com").unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidEndpoint, "{bad}");
        }
    }

    #[test]
    fn join_encodes_crn_as_one_segment() {
        let e = Endpoints::new("http://127.0.0.1:1", "http://127.0.0.1:1/prefix/").unwrap();
        let url = Endpoints::join(
            e.resource_controller(),
            &[
                "v2",
                "resource_instances",
                "crn:v1:bluemix:public:logdna:us-south:a/abc:guid::",
            ],
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/prefix/v2/resource_instances/crn:v1:bluemix:public:logdna:us-south:a%2Fabc:guid::"
        );
    }
}
