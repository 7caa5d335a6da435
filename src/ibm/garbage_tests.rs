//! Property tests: whatever IBM Cloud (or a broken proxy in front of it) answers, every parser
//! returns a typed error or a value, never panics, and never puts the request's secrets in the
//! error it returns.

use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderValue};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::{ErrorKind, IbmError};
use super::model::{Crn, ResourceInstance, ResourceKey, ResourceList, TokenResponse};
use super::retry::{self, MAX_SERVER_WAIT};
use super::transport::{Reply, parse_json};
use super::{Endpoints, next_page_url};

const SECRET: &str = "Zq8-api-key-that-must-never-leak-0123456789";

/// Bodies shaped like IBM's: valid JSON of the wrong shape, truncated JSON, JSON carrying the
/// secret in every field a parser reads, non-UTF-8 bytes, and huge strings.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let json_with_secret = prop_oneof![
        Just(format!(
            r#"{{"errors":[{{"code":"{SECRET}","message":"{SECRET}"}}],"trace":"{SECRET}"}}"#
        )),
        Just(format!(
            r#"{{"errorCode":"BXNIM0415E","errorMessage":"bad key {SECRET}","context":{{"requestId":"{SECRET}"}}}}"#
        )),
        Just(format!(
            r#"{{"resources":[{{"guid":1,"name":["{SECRET}"],"credentials":"{SECRET}"}}],"next_url":7}}"#
        )),
        Just(format!(
            r#"{{"access_token":"{SECRET}","expires_in":"soon","expiration":1e400}}"#
        )),
        Just(format!(
            r#"{{"state":{{"weird":true}},"crn":"{SECRET}","credentials":{{"ingestion_key":42}}}}"#
        )),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        ".{0,400}".prop_map(String::into_bytes),
        json_with_secret.clone().prop_flat_map(|json| {
            let len = json.len();
            (Just(json), 0..=len).prop_map(|(json, cut)| json.as_bytes()[..cut].to_vec())
        }),
        json_with_secret.prop_map(String::into_bytes),
        (0usize..200_000)
            .prop_map(|n| format!(r#"{{"message":"{}{SECRET}"}}"#, "x".repeat(n)).into_bytes()),
    ]
}

fn reply(status: u16, body: Vec<u8>) -> Reply {
    Reply {
        status,
        headers: HeaderMap::new(),
        body,
    }
}

fn assert_clean(error: &IbmError) {
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(SECRET), "the secret leaked: {shown}");
    assert!(error.message.chars().count() <= 301, "message not bounded");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn error_bodies_become_typed_errors_without_the_secret(status in 100u16..600, body in bodies()) {
        let error = IbmError::from_response_parts("op", status, &HeaderMap::new(), &body).scrub(&[SECRET]);
        assert_clean(&error);
        let error = IbmError::from_iam_response(status, &HeaderMap::new(), &body).scrub(&[SECRET]);
        assert_clean(&error);
        if matches!(status, 400 | 401) {
            prop_assert_eq!(error.kind, ErrorKind::ApiKeyRejected);
        }
    }

    #[test]
    fn success_bodies_parse_or_fail_as_invalid_responses(body in bodies()) {
        let reply = reply(200, body);
        let results = [
            parse_json::<ResourceList<ResourceKey>>("op", &reply).err(),
            parse_json::<ResourceList<ResourceInstance>>("op", &reply).err(),
            parse_json::<ResourceKey>("op", &reply).err(),
            parse_json::<ResourceInstance>("op", &reply).err(),
            parse_json::<TokenResponse>("op", &reply).err(),
        ];
        for error in results.into_iter().flatten() {
            prop_assert_eq!(error.kind, ErrorKind::InvalidResponse);
            assert_clean(&error);
        }
        if let Ok(key) = parse_json::<ResourceKey>("op", &reply) {
            // Whatever the fields hold, reading them never panics.
            let _ = (key.is_active(), key.instance_guid(), key.credentials.field("ingestion_key"));
        }
    }

    #[test]
    fn rate_limit_headers_never_overflow_time(value in prop_oneof![
        "[0-9]{1,30}", "[0-9]{1,20}\\.[0-9]{0,5}", ".{0,40}", Just("1e308".to_owned()), Just("NaN".to_owned()),
    ], status in prop_oneof![Just(429u16), Just(503u16), 100u16..600]) {
        let now = SystemTime::now();
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert("retry-after", v.clone());
            headers.insert("x-ratelimit-reset", v);
        }
        if let Some(wait) = retry::server_hint(status, &headers, now) {
            prop_assert!(wait <= MAX_SERVER_WAIT);
            prop_assert!(now.checked_add(wait).is_some());
        }
        let _ = retry::parse_epoch_reset(&value, UNIX_EPOCH + Duration::from_secs(1));
    }

    #[test]
    fn crns_and_next_urls_never_panic(text in ".{0,200}", colons in proptest::collection::vec("[a-z0-9/-]{0,12}", 0..14)) {
        let _ = Crn::parse(&text);
        let joined = colons.join(":");
        let _ = Crn::parse(&joined);
        let endpoints = Endpoints::new("https://iam.example", "https://rc.example").expect("valid endpoints");
        let first = reqwest::Url::parse("https://rc.example/v2/resource_keys?limit=100").expect("valid url");
        if let Ok(url) = next_page_url(&endpoints, &first, &text) {
            prop_assert_eq!(url.host_str(), Some("rc.example"), "the token never goes to another host");
        }
    }
}
