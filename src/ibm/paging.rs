//! Resource Controller listings: `next_url` followed page by page, never to another host.

use std::collections::HashSet;

use reqwest::Url;
use serde::de::DeserializeOwned;

use super::endpoints::Endpoints;
use super::error::{ErrorKind, IbmError};
use super::model::ResourceList;
use super::token::Authenticator;
use super::transport::{Request, parse_json};
use crate::redact::SecretString;

/// Page size requested from the Resource Controller (the documented maximum).
pub(super) const PAGE_LIMIT: &str = "100";
/// Upper bound on pages followed in one listing: protects against a server that never ends.
const MAX_PAGES: usize = 1_000;

/// Follows `next_url` from `first` until the last page.
pub(super) async fn list_all<T: DeserializeOwned>(
    auth: &Authenticator,
    endpoints: &Endpoints,
    api_key: &SecretString,
    operation: &'static str,
    endpoint: &'static str,
    first: Url,
) -> Result<Vec<T>, IbmError> {
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    let mut url = first.clone();
    for _ in 0..MAX_PAGES {
        let request = Request::get(operation, endpoint, url.clone());
        let reply = auth.send(&request, api_key).await?;
        let page: ResourceList<T> = parse_json(operation, &reply)?;
        items.extend(page.resources);
        let Some(next) = page.next_url.filter(|n| !n.trim().is_empty()) else {
            return Ok(items);
        };
        url = next_page_url(endpoints, &first, &next)
            .map_err(|m| IbmError::new(operation, ErrorKind::InvalidResponse, m))?;
        if !seen.insert(url.to_string()) {
            return Err(IbmError::new(
                operation,
                ErrorKind::InvalidResponse,
                "pagination returned the same next_url twice",
            ));
        }
    }
    Err(IbmError::new(
        operation,
        ErrorKind::InvalidResponse,
        format!("more than {MAX_PAGES} pages"),
    ))
}

/// Where to get the next page. A relative `next_url` (what the Resource Controller sends) is
/// resolved against the Resource Controller base URL; an absolute one is followed only when it
/// points at the same origin. Otherwise only its `start` token is used, with the first page's URL,
/// as the IBM Go SDK does: the bearer token is never sent to another host.
pub fn next_page_url(endpoints: &Endpoints, first: &Url, next: &str) -> Result<Url, String> {
    let base = endpoints.resource_controller();
    let next = next.trim();
    if next.starts_with('/') {
        let joined = format!("{}{}", base.as_str().trim_end_matches('/'), next);
        return Url::parse(&joined).map_err(|e| format!("invalid next_url: {e}"));
    }
    // A relative reference can still name a host: `//other.example/...`, or `\\other` (a
    // backslash is a slash in an https URL). Whatever the form, the origin is checked.
    let absolute = match Url::parse(next) {
        Ok(url) => url,
        Err(_) => base
            .join(next)
            .map_err(|e| format!("invalid next_url: {e}"))?,
    };
    if absolute.origin() == base.origin() {
        return Ok(absolute);
    }
    let start = absolute
        .query_pairs()
        .find(|(k, _)| k == "start")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| "next_url points to another host and has no start token".to_owned())?;
    let mut url = first.clone();
    let kept: Vec<(String, String)> = first
        .query_pairs()
        .filter(|(k, _)| k != "start")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("start", &start);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the garbage proptest: a scheme-relative `next_url` (`//host`, or `\\host`, which
    /// an https URL reads the same way) named another host and was followed with the token.
    #[test]
    fn a_scheme_relative_next_url_never_leaves_the_resource_controller() {
        let endpoints =
            Endpoints::new("https://iam.example", "https://rc.example").expect("valid endpoints");
        let first = Url::parse("https://rc.example/v2/resource_keys?limit=100").expect("url");
        for next in [
            "\\\\& ",
            "//evil.example/v2/resource_keys?start=abc",
            "\\\\evil.example/x",
        ] {
            if let Ok(url) = next_page_url(&endpoints, &first, next) {
                assert_eq!(url.host_str(), Some("rc.example"), "{next:?} -> {url}");
            }
        }
        let kept = next_page_url(&endpoints, &first, "\\\\evil.example/v2/keys?start=abc")
            .expect("the start token is used");
        assert_eq!(
            kept.as_str(),
            "https://rc.example/v2/resource_keys?limit=100&start=abc"
        );
    }

    #[test]
    fn next_url_resolution() {
        let endpoints = Endpoints::new("http://127.0.0.1:1", "http://127.0.0.1:2/rc").unwrap();
        let first =
            Url::parse("http://127.0.0.1:2/rc/v2/resource_instances?name=a&limit=100").unwrap();
        let rel = next_page_url(
            &endpoints,
            &first,
            "/v2/resource_instances?start=abc&limit=100",
        )
        .unwrap();
        assert_eq!(
            rel.as_str(),
            "http://127.0.0.1:2/rc/v2/resource_instances?start=abc&limit=100"
        );
        let same = next_page_url(
            &endpoints,
            &first,
            "http://127.0.0.1:2/rc/v2/resource_instances?start=x",
        )
        .unwrap();
        assert_eq!(
            same.as_str(),
            "http://127.0.0.1:2/rc/v2/resource_instances?start=x"
        );
        let other =
            next_page_url(&endpoints, &first, "https://myhost.com/somePath?start=1").unwrap();
        assert_eq!(
            other.as_str(),
            "http://127.0.0.1:2/rc/v2/resource_instances?name=a&limit=100&start=1"
        );
        assert!(next_page_url(&endpoints, &first, "https://myhost.com/somePath").is_err());
    }
}
