//! Compatibility: verbatim bodies from IBM's SDK test fixtures and documentation (each named
//! below: IAM token success and error, Resource Controller errors, list/create/pager mocks)
//! parse into the client's types and through its error parser.

use ingestion_key_operator::ibm::{
    CredentialError, Crn, Endpoints, ErrorKind, IbmError, ResourceInstance, ResourceKey,
    ResourceList, TokenResponse, next_page_url,
};
use reqwest::Url;
use reqwest::header::HeaderMap;

/// python-sdk-core `test/test_iam_token_manager.py` success fixture.
const IAM_TOKEN_PYTHON: &str = r####"{
        "access_token": "oAeisG8yqPY7sFR_x66Z15",
        "token_type": "Bearer",
        "expires_in": 3600,
        "expiration": 1524167011,
        "refresh_token": "jy4gl91BQ"
    }"####;
/// python-sdk-core `test_request_token_unsuccessful` (served with HTTP 400).
const IAM_ERROR_400: &str = r####"{
        "context": {
            "requestId": "38a0e9c226d94764820d92aa623eb0f6",
            "requestType": "incoming.Identity_Token",
            "userAgent": "ibm-python-sdk-core-1.0.0",
            "url": "https://iam.cloud.ibm.com",
            "instanceId": "iamid-4.5-6788-90b137c-75f48695b5-kl4wx",
            "threadId": "169de5",
            "host": "iamid-4.5-6788-90b137c-75f48695b5-kl4wx",
            "startTime": "29.10.2019 12:31:00:300 GMT",
            "endTime": "29.10.2019 12:31:00:381 GMT",
            "elapsedTime": "81",
            "locale": "en_US",
            "clusterName": "iam-id-prdal12-8brn"
        },
        "errorCode": "BXNIM0415E",
        "errorMessage": "Provided API key could not be found"
    }"####;
/// ibm-cloud-docs/sell broker error example.
const RC_BROKER_ERROR: &str = r####"{
   "error_code": "RC-ServiceBrokerErrorResponse",
   "message": "Service Broker returned error status code 403",
   "status_code": 400,
   "transaction_id": "7e0090047662faf2670ae36ffbe02011"
}"####;
/// ListResourceInstances mock.
const LIST_INSTANCES_A: &str = r####"{"rows_count": 9, "next_url": "NextURL", "resources": [{"id": "ID", "guid": "GUID", "url": "URL", "created_at": "2019-01-01T12:00:00.000Z", "updated_at": "2019-01-01T12:00:00.000Z", "deleted_at": "2019-01-01T12:00:00.000Z", "created_by": "CreatedBy", "updated_by": "UpdatedBy", "deleted_by": "DeletedBy", "scheduled_reclaim_at": "2019-01-01T12:00:00.000Z", "restored_at": "2019-01-01T12:00:00.000Z", "restored_by": "RestoredBy", "scheduled_reclaim_by": "ScheduledReclaimBy", "name": "Name", "region_id": "RegionID", "account_id": "AccountID", "reseller_channel_id": "ResellerChannelID", "resource_plan_id": "ResourcePlanID", "resource_group_id": "ResourceGroupID", "resource_group_crn": "ResourceGroupCRN", "target_crn": "TargetCRN", "onetime_credentials": true, "parameters": {"anyKey": "anyValue"}, "allow_cleanup": true, "crn": "CRN", "state": "active", "type": "Type", "sub_type": "SubType", "resource_id": "ResourceID", "dashboard_url": "DashboardURL", "last_operation": {"type": "Type", "state": "in progress", "sub_type": "SubType", "async": false, "description": "Description", "reason_code": "ReasonCode", "poll_after": 9, "cancelable": true, "poll": true}, "resource_aliases_url": "ResourceAliasesURL", "resource_bindings_url": "ResourceBindingsURL", "resource_keys_url": "ResourceKeysURL", "plan_history": [{"resource_plan_id": "ResourcePlanID", "start_date": "2019-01-01T12:00:00.000Z", "requestor_id": "RequestorID"}], "migrated": true, "extensions": {"anyKey": "anyValue"}, "controlled_by": "ControlledBy", "locked": true}]}"####;
/// CreateResourceKey mock (HTTP 201).
const CREATE_KEY_B: &str = r####"{"id": "ID", "guid": "GUID", "url": "URL", "created_at": "2019-01-01T12:00:00.000Z", "updated_at": "2019-01-01T12:00:00.000Z", "deleted_at": "2019-01-01T12:00:00.000Z", "created_by": "CreatedBy", "updated_by": "UpdatedBy", "deleted_by": "DeletedBy", "source_crn": "SourceCRN", "name": "Name", "crn": "CRN", "state": "State", "account_id": "AccountID", "resource_group_id": "ResourceGroupID", "resource_id": "ResourceID", "onetime_credentials": true, "credentials": {"REDACTED": "REDACTED", "apikey": "Apikey", "iam_apikey_description": "IamApikeyDescription", "iam_apikey_name": "IamApikeyName", "iam_role_crn": "IamRoleCRN", "iam_serviceid_crn": "IamServiceidCRN"}, "iam_compatible": false, "migrated": true, "resource_instance_url": "ResourceInstanceURL", "resource_alias_url": "ResourceAliasURL"}"####;
/// ListResourceKeys mock.
const LIST_KEYS_C: &str = r####"{"rows_count": 9, "next_url": "NextURL", "resources": [{"id": "ID", "guid": "GUID", "url": "URL", "created_at": "2019-01-01T12:00:00.000Z", "updated_at": "2019-01-01T12:00:00.000Z", "deleted_at": "2019-01-01T12:00:00.000Z", "created_by": "CreatedBy", "updated_by": "UpdatedBy", "deleted_by": "DeletedBy", "source_crn": "SourceCRN", "name": "Name", "crn": "CRN", "state": "State", "account_id": "AccountID", "resource_group_id": "ResourceGroupID", "resource_id": "ResourceID", "onetime_credentials": true, "credentials": {"REDACTED": "REDACTED", "apikey": "Apikey", "iam_apikey_description": "IamApikeyDescription", "iam_apikey_name": "IamApikeyName", "iam_role_crn": "IamRoleCRN", "iam_serviceid_crn": "IamServiceidCRN"}, "iam_compatible": false, "migrated": true, "resource_instance_url": "ResourceInstanceURL", "resource_alias_url": "ResourceAliasURL"}]}"####;
/// ResourceKeysPager page 1 with an absolute next_url.
const PAGER_KEYS_D: &str = r####"{"total_count":2,"limit":1,"next_url":"https://myhost.com/somePath?start=1","resources":[{"id":"ID","guid":"GUID","url":"URL","created_at":"2019-01-01T12:00:00.000Z","updated_at":"2019-01-01T12:00:00.000Z","deleted_at":"2019-01-01T12:00:00.000Z","created_by":"CreatedBy","updated_by":"UpdatedBy","deleted_by":"DeletedBy","source_crn":"SourceCRN","name":"Name","crn":"CRN","state":"State","account_id":"AccountID","resource_group_id":"ResourceGroupID","resource_id":"ResourceID","onetime_credentials":true,"credentials":{"REDACTED":"REDACTED","apikey":"Apikey","iam_apikey_description":"IamApikeyDescription","iam_apikey_name":"IamApikeyName","iam_role_crn":"IamRoleCRN","iam_serviceid_crn":"IamServiceidCRN"},"iam_compatible":false,"migrated":true,"resource_instance_url":"ResourceInstanceURL","resource_alias_url":"ResourceAliasURL"}]}"####;
/// realistic COS resource key from the older official OpenAPI.
const COS_KEY_E: &str = r####"{
  "id": "crn:v1:bluemix:public:cloud-object-storage:global:a/4329073d16d2f3663f74bfa955259139:8d7af921-b136-4078-9666-081bd8470d94:resource-key:23693f48-aaa2-4079-b0c7-334846eff8d0",
  "guid": "23693f48-aaa2-4079-b0c7-334846eff8d0",
  "url": "/v2/resource_keys/23693f48-aaa2-4079-b0c7-334846eff8d0",
  "created_at": "2018-07-02T22:03:43.837979455Z",
  "updated_at": "2018-07-02T22:03:43.837979455Z",
  "deleted_at": null,
  "source_crn": "crn:v1:bluemix:public:cloud-object-storage:global:a/4329073d16d2f3663f74bfa955259139:8d7af921-b136-4078-9666-081bd8470d94::",
  "name": "my-instance-key-1",
  "parameters": {
    "role_crn": "crn:v1:bluemix:public:iam::::serviceRole:Writer"
  },
  "crn": "crn:v1:bluemix:public:cloud-object-storage:global:a/4329073d16d2f3663f74bfa955259139:8d7af921-b136-4078-9666-081bd8470d94:resource-key:23693f48-aaa2-4079-b0c7-334846eff8d0",
  "state": "active",
  "account_id": "4329073d16d2f3663f74bfa955259139",
  "resource_group_id": "0be5ad401ae913d8ff665d92680664ed",
  "resource_id": "dff97f5c-bc5e-4455-b470-411c3edbe49c",
  "credentials": {
    "apikey": "XXXX-YYYY-ZZZZ\"",
    "endpoints": "https://cos-service-armada-s.us-south.containers.mybluemix.net/endpoints",
    "iam_apikey_description": "Auto generated apikey during resource-key operation for Instance - crn:v1:bluemix:public:cloud-object-storage:global:a/4329073d16d2f3663f74bfa955259139:8d7af921-b136-4078-9666-081bd8470d94::",
    "iam_apikey_name": "auto-generated-apikey-23693f48-aaa2-4079-b0c7-334846eff8d0",
    "iam_role_crn": "crn:v1:bluemix:public:iam::::serviceRole:Writer",
    "iam_serviceid_crn": "crn:v1:bluemix:public:iam-identity::a/4329073d16d2f3663f74bfa955259139::serviceid:ServiceId-64c29e4f-422d-468c-a11b-1a8f671b5c89",
    "resource_instance_id": "crn:v1:bluemix:public:cloud-object-storage:global:a/4329073d16d2f3663f74bfa955259139:8d7af921-b136-4078-9666-081bd8470d94::"
  },
  "iam_compatible": true,
  "migrated": false,
  "resource_instance_url": "/v2/resource_instances/8d7af921-b136-4078-9666-081bd8470d94",
  "resource_alias_url": null
}"####;

/// (illustrative, quoted in third-party code).
const RC_TOKEN_EXPIRED: &str = r#"{"error_code":"RC-IamErrorResponse","message":"Token is expired","status_code":401,"transaction_id":"bss-b454461a71ee474d"}"#;
/// the general Identity Services error envelope.
const IDENTITY_ENVELOPE: &str = r#"{"trace": "trace-1234", "errors": [{"code": "invalid_access_token", "message": "The access token is invalid"}], "status_code": 401}"#;

#[test]
fn list_instances_mock_parses() {
    let list: ResourceList<ResourceInstance> = serde_json::from_str(LIST_INSTANCES_A).unwrap();
    assert_eq!(list.rows_count, Some(9));
    assert_eq!(list.next_url.as_deref(), Some("NextURL"));
    assert_eq!(list.resources.len(), 1);
    let i = &list.resources[0];
    assert_eq!(
        [&i.id, &i.guid, &i.crn, &i.name],
        ["ID", "GUID", "CRN", "Name"]
    );
    assert!(i.is_active());
    assert_eq!(i.region_id.as_deref(), Some("RegionID"));
    assert_eq!(i.resource_group_id.as_deref(), Some("ResourceGroupID"));
    assert_eq!(i.account_id.as_deref(), Some("AccountID"));
    assert_eq!(i.instance_type.as_deref(), Some("Type"));
    assert_eq!(i.resource_keys_url.as_deref(), Some("ResourceKeysURL"));
    assert_eq!(i.locked, Some(true));
    assert_eq!(
        i.service_name(),
        None,
        "the placeholder \"CRN\" is not a CRN"
    );
}

#[test]
fn create_key_mock_parses_and_is_redacted() {
    let key: ResourceKey = serde_json::from_str(CREATE_KEY_B).unwrap();
    assert_eq!(
        [&key.id, &key.guid, &key.crn, &key.name],
        ["ID", "GUID", "CRN", "Name"]
    );
    assert_eq!(key.state, "State");
    assert!(!key.is_active(), "only \"active\" keys are reusable");
    assert_eq!(key.source_crn.as_deref(), Some("SourceCRN"));
    assert_eq!(key.iam_compatible, Some(false));
    assert_eq!(key.onetime_credentials, Some(true));
    // The mock carries the REDACTED marker: values next to it are not trusted.
    assert!(key.credentials.is_redacted());
    assert_eq!(
        key.credentials.field("apikey").unwrap_err(),
        CredentialError::Redacted
    );
    assert!(key.credentials.field_names().contains(&"iam_serviceid_crn"));
    assert!(
        !format!("{key:?}").contains("Apikey"),
        "Debug shows no credential value"
    );
}

#[test]
fn list_keys_mock_parses() {
    let list: ResourceList<ResourceKey> = serde_json::from_str(LIST_KEYS_C).unwrap();
    assert_eq!(list.rows_count, Some(9));
    assert_eq!(list.resources.len(), 1);
    assert_eq!(
        list.resources[0].resource_instance_url.as_deref(),
        Some("ResourceInstanceURL")
    );
}

#[test]
fn pager_mock_with_absolute_next_url() {
    let page1: ResourceList<ResourceKey> = serde_json::from_str(PAGER_KEYS_D).unwrap();
    assert_eq!(
        page1.rows_count, None,
        "the pager mock has total_count/limit instead of rows_count"
    );
    assert_eq!(page1.resources.len(), 1);
    let next = page1.next_url.as_deref().unwrap();
    assert_eq!(next, "https://myhost.com/somePath?start=1");
    // Another host: only the start token is used, against our own Resource Controller.
    let endpoints = Endpoints::public();
    let first =
        Url::parse("https://resource-controller.cloud.ibm.com/v2/resource_keys?limit=1").unwrap();
    let url = next_page_url(&endpoints, &first, next).unwrap();
    assert_eq!(
        url.as_str(),
        "https://resource-controller.cloud.ibm.com/v2/resource_keys?limit=1&start=1"
    );

    // Page 2 is the same body without next_url.
    let page2_text =
        PAGER_KEYS_D.replace(r#""next_url":"https://myhost.com/somePath?start=1","#, "");
    assert_ne!(page2_text, PAGER_KEYS_D);
    let page2: ResourceList<ResourceKey> = serde_json::from_str(&page2_text).unwrap();
    assert_eq!(page2.next_url, None);
}

#[test]
fn realistic_cos_key_parses() {
    let key: ResourceKey = serde_json::from_str(COS_KEY_E).unwrap();
    assert_eq!(key.id, key.crn);
    assert_eq!(key.guid, "23693f48-aaa2-4079-b0c7-334846eff8d0");
    assert!(key.is_active());
    assert_eq!(key.name, "my-instance-key-1");
    assert_eq!(key.deleted_at, None);
    assert_eq!(
        key.instance_guid(),
        Some("8d7af921-b136-4078-9666-081bd8470d94")
    );
    assert_eq!(
        key.account_id.as_deref(),
        Some("4329073d16d2f3663f74bfa955259139")
    );
    let crn = Crn::parse(&key.crn).unwrap();
    assert_eq!(crn.service_name, "cloud-object-storage");
    assert_eq!(crn.location, "global");
    assert_eq!(crn.account_id(), Some("4329073d16d2f3663f74bfa955259139"));
    assert_eq!(crn.resource_type, "resource-key");
    assert_eq!(crn.resource, key.guid);
    assert!(!key.credentials.is_redacted());
    assert_eq!(
        key.credentials.field("apikey").unwrap().expose(),
        "XXXX-YYYY-ZZZZ\"",
        "the stray quote is part of the value"
    );
    assert!(
        key.credentials
            .field("iam_role_crn")
            .unwrap()
            .expose()
            .ends_with("serviceRole:Writer")
    );
    assert_eq!(
        key.credentials.field("ingestion_key").unwrap_err(),
        CredentialError::Missing("ingestion_key".into())
    );
    assert!(!format!("{:?}", key.credentials).contains("XXXX-YYYY-ZZZZ"));
}

#[test]
fn iam_token_fixture_parses() {
    let token: TokenResponse = serde_json::from_str(IAM_TOKEN_PYTHON).unwrap();
    assert_eq!(token.access_token.expose(), "oAeisG8yqPY7sFR_x66Z15");
    assert_eq!(token.token_type.as_deref(), Some("Bearer"));
    assert_eq!(token.expires_in, Some(3600));
    assert_eq!(token.expiration, Some(1_524_167_011));
    assert_eq!(
        token.refresh_token.as_ref().map(|t| t.expose()),
        Some("jy4gl91BQ")
    );
    let debug = format!("{token:?}");
    assert!(!debug.contains("oAeisG8yqPY7sFR_x66Z15") && !debug.contains("jy4gl91BQ"));
}

#[test]
fn iam_error_fixture_is_an_api_key_rejection() {
    let e = IbmError::from_iam_response(400, &HeaderMap::new(), IAM_ERROR_400.as_bytes());
    assert_eq!(e.kind(), ErrorKind::ApiKeyRejected);
    assert_eq!(e.status, Some(400));
    assert_eq!(e.code.as_deref(), Some("BXNIM0415E"));
    assert_eq!(e.message, "Provided API key could not be found");
    assert_eq!(
        e.transaction_id.as_deref(),
        Some("38a0e9c226d94764820d92aa623eb0f6"),
        "IAM's context.requestId"
    );
    assert!(!e.is_transient());
}

/// What the client makes of an error response with this body.
fn error_of(action: &'static str, status: u16, headers: &HeaderMap, body: &str) -> IbmError {
    IbmError::from_response_parts(action, status, headers, body.as_bytes())
}

#[test]
fn resource_controller_error_bodies() {
    let mut headers = HeaderMap::new();
    let broker = error_of("create resource key", 400, &headers, RC_BROKER_ERROR);
    assert_eq!(broker.kind(), ErrorKind::BadRequest);
    assert_eq!(
        broker.code.as_deref(),
        Some("RC-ServiceBrokerErrorResponse")
    );
    assert_eq!(
        broker.message,
        "Service Broker returned error status code 403"
    );
    assert_eq!(
        broker.transaction_id.as_deref(),
        Some("7e0090047662faf2670ae36ffbe02011")
    );
    assert!(!broker.is_transient());
    assert_eq!(
        broker.to_string(),
        "create resource key failed: HTTP 400 (bad request) RC-ServiceBrokerErrorResponse: Service Broker returned error status code 403 (transaction id 7e0090047662faf2670ae36ffbe02011)"
    );

    let expired = error_of("get resource key", 401, &headers, RC_TOKEN_EXPIRED);
    assert_eq!(expired.kind(), ErrorKind::Unauthorized);
    assert_eq!(expired.code.as_deref(), Some("RC-IamErrorResponse"));
    assert_eq!(expired.message, "Token is expired");
    assert_eq!(
        expired.transaction_id.as_deref(),
        Some("bss-b454461a71ee474d")
    );

    // The Transaction-Id header, present on every RC response, is preferred.
    headers.insert("Transaction-Id", "header-txn".parse().unwrap());
    let with_header = error_of("get resource key", 401, &headers, RC_TOKEN_EXPIRED);
    assert_eq!(with_header.transaction_id.as_deref(), Some("header-txn"));
}

#[test]
fn identity_envelope_and_plain_text_bodies() {
    let e = error_of(
        "list resource instances",
        401,
        &HeaderMap::new(),
        IDENTITY_ENVELOPE,
    );
    assert_eq!(e.code.as_deref(), Some("invalid_access_token"));
    assert_eq!(e.message, "The access token is invalid");
    assert_eq!(e.transaction_id.as_deref(), Some("trace-1234"));

    // go-sdk-core's non-JSON 403 test body.
    let e = error_of(
        "list resource instances",
        403,
        &HeaderMap::new(),
        "Sorry you are forbidden",
    );
    assert_eq!(e.kind(), ErrorKind::Forbidden);
    assert_eq!(e.code, None);
    assert_eq!(e.message, "Sorry you are forbidden");
    assert!(!e.is_transient());

    for (status, transient) in [
        (429, true),
        (500, true),
        (502, true),
        (503, true),
        (504, true),
        (501, false),
        (409, false),
        (410, false),
    ] {
        let e = error_of("x", status, &HeaderMap::new(), "");
        assert_eq!(e.is_transient(), transient, "status {status}");
    }
}
