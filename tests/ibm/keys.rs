//! Resource keys: create, read, reset, delete (410 and 404 are "already gone"), paging, Cloud Logs
//! keys, redacted credentials for low roles.

use crate::harness::*;

#[tokio::test]
async fn key_lifecycle_create_get_reset_delete() {
    let env = env().await;
    let created = env.create(MANAGER, "ns.request:uid-1").await.unwrap();
    assert_eq!(count(&env.client, CREATE, "201"), 1);
    assert!(created.is_active());
    assert_eq!(created.id, created.crn);
    assert_eq!(created.instance_guid(), Some(AT_GUID));
    assert_eq!(
        created.credentials.field("ingestion_key").unwrap().expose(),
        AT_INGESTION_KEY
    );
    assert!(!created.credentials.field("apikey").unwrap().is_empty());
    assert!(
        created
            .credentials
            .field("iam_role_crn")
            .unwrap()
            .expose()
            .ends_with("serviceRole:Manager")
    );

    let listed = env.keys(MANAGER).await.unwrap();
    assert_eq!(listed.iter().filter(|k| k.guid == created.guid).count(), 1);
    assert_eq!(
        env.read_key(MANAGER, &created.guid).await.unwrap().name,
        "ns.request:uid-1"
    );
    assert_eq!(
        env.read_key(MANAGER, &created.crn).await.unwrap().guid,
        created.guid,
        "by URL-encoded CRN"
    );

    // A reset in the "web UI" shows up in existing keys' credentials.
    let rotated = env.sim.reset_ingestion_key(AT_GUID).unwrap();
    assert_ne!(rotated.expose(), AT_INGESTION_KEY);
    let reread = env.read_key(MANAGER, &created.guid).await.unwrap();
    assert_eq!(
        reread.credentials.field("ingestion_key").unwrap().expose(),
        rotated.expose()
    );

    assert_eq!(
        env.delete(MANAGER, &created.guid).await.unwrap(),
        KeyDeletion::Deleted
    );
    assert_eq!(count(&env.client, DELETE, "204"), 1);
    let removed = env.read_key(MANAGER, &created.guid).await.unwrap();
    assert_eq!(removed.state, "removed");
    assert!(!removed.is_active());
    let after = env.keys(MANAGER).await.unwrap();
    assert!(
        after.iter().all(|k| !k.is_active()),
        "removed keys are never reusable"
    );

    assert_eq!(
        env.delete(MANAGER, &created.guid).await.unwrap(),
        KeyDeletion::AlreadyGone
    );
    assert_eq!(count(&env.client, DELETE, "410"), 1);
    assert_eq!(
        env.delete(MANAGER, "99999999-0000-0000-0000-000000000000")
            .await
            .unwrap(),
        KeyDeletion::AlreadyGone
    );
    assert_eq!(count(&env.client, DELETE, "404"), 1);
    assert_eq!(
        env.sim
            .keys()
            .iter()
            .filter(|k| k.state == "removed")
            .count(),
        1
    );

    let missing = env
        .read_key(MANAGER, "99999999-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn cloud_logs_keys_carry_only_iam_fields() {
    let env = env().await;
    let logs = env.find(MANAGER, "my-cloud-logs").await.unwrap();
    let created = env
        .client
        .create_key(&key(MANAGER), &create_request("logs-agent", &logs[0].guid))
        .await
        .unwrap();
    assert_eq!(
        created.credentials.field("ingestion_key").unwrap_err(),
        CredentialError::Missing("ingestion_key".into())
    );
    assert!(!created.credentials.field("apikey").unwrap().is_empty());
}

#[tokio::test]
async fn instance_keys_are_paged() {
    let env = env_with("page_size: 25", fast_config()).await;
    for i in 0..60 {
        env.create(MANAGER, &format!("key-{i}")).await.unwrap();
    }
    let keys = env.keys(MANAGER).await.unwrap();
    assert_eq!(keys.len(), 60);
    assert_eq!(
        env.sim
            .call_count("GET /v2/resource_instances/{id}/resource_keys"),
        3
    );
}

#[tokio::test]
async fn low_role_callers_get_redacted_credentials() {
    let env = env().await;
    let created = env.create(READER, "reader-made").await.unwrap();
    assert!(created.credentials.is_redacted());
    assert_eq!(
        created.credentials.field("ingestion_key").unwrap_err(),
        CredentialError::Redacted
    );
    let again = env.read_key(READER, &created.guid).await.unwrap();
    assert_eq!(
        again.credentials.field("apikey").unwrap_err(),
        CredentialError::Redacted
    );
    // A Manager caller may read the same key.
    let manager_view = env.read_key(MANAGER, &created.guid).await.unwrap();
    assert_eq!(
        manager_view
            .credentials
            .field("ingestion_key")
            .unwrap()
            .expose(),
        AT_INGESTION_KEY
    );
    // Debug of a key with readable credentials shows field names only.
    let debug = format!("{manager_view:?}");
    assert!(debug.contains("ingestion_key"));
    assert!(!debug.contains(AT_INGESTION_KEY));
}
