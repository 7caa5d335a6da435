//! Instance lookup: pagination (relative and absolute next URLs), exact names narrowed by region,
//! service and group, GUIDs and URL-encoded CRNs, other accounts invisible.

use crate::harness::*;

async fn add_bulk(sim: &Simulator, n: usize) -> Vec<String> {
    let mut guids = Vec::new();
    for i in 0..n {
        guids.push(
            sim.add_instance("acc-one", SeedInstance::new("bulk-instance", "logdna"))
                .unwrap(),
        );
        if i % 10 == 0 {
            sim.add_instance("acc-one", SeedInstance::new(format!("noise-{i}"), "logdna"))
                .unwrap();
        }
    }
    guids
}

#[tokio::test]
async fn pagination_follows_relative_next_url_across_pages() {
    let env = env().await;
    let mut expected = add_bulk(&env.sim, 250).await;
    let mut found: Vec<String> = env
        .find(MANAGER, "bulk-instance")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.guid)
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "all 250 instances across 3 pages");
    assert_eq!(env.sim.call_count(LIST), 3);
}

#[tokio::test]
async fn pagination_follows_absolute_next_url() {
    let env = env_with("absolute_next_url: true\npage_size: 40", fast_config()).await;
    add_bulk(&env.sim, 130).await;
    let found = env.find(MANAGER, "bulk-instance").await.unwrap();
    assert_eq!(found.len(), 130);
    assert_eq!(env.sim.call_count(LIST), 4, "40 + 40 + 40 + 10");
}

/// Where an instance is: region, service, resource group.
type Placement = (&'static str, &'static str, &'static str);

#[tokio::test]
async fn name_lookup_narrows_and_reports_ambiguity() {
    let env = env().await;
    let find = |q: InstanceQuery| {
        let client = env.client.clone();
        async move {
            client
                .find_instances_by_name(&key(MANAGER), &q)
                .await
                .unwrap()
        }
    };
    let both = find(InstanceQuery::by_name("shared-name")).await;
    assert_eq!(both.len(), 2, "ambiguous: the caller decides");
    // (narrowed by, the one instance left: its region, service and group; or none)
    let shared = || InstanceQuery::by_name("shared-name");
    let narrowed: [(InstanceQuery, Option<Placement>); 4] = [
        (
            InstanceQuery {
                region: Some("us-south".into()),
                ..shared()
            },
            Some(("us-south", "logdna", DEFAULT_RESOURCE_GROUP)),
        ),
        (
            InstanceQuery {
                service_name: Some("logdnaat".into()),
                ..shared()
            },
            Some(("eu-gb", "logdnaat", "rg-two")),
        ),
        (
            InstanceQuery {
                resource_group_id: Some("rg-two".into()),
                ..shared()
            },
            Some(("eu-gb", "logdnaat", "rg-two")),
        ),
        (
            InstanceQuery {
                region: Some("eu-de".into()),
                ..shared()
            },
            None,
        ),
    ];
    for (query, expected) in narrowed {
        let found = find(query.clone()).await;
        let seen = found.iter().map(|i| {
            (
                i.region_id.as_deref().unwrap_or_default(),
                i.service_name().unwrap_or_default(),
                i.resource_group_id.as_deref().unwrap_or_default(),
            )
        });
        assert_eq!(
            seen.collect::<Vec<_>>(),
            Vec::from_iter(expected),
            "{query:?}"
        );
    }
    assert!(
        find(InstanceQuery::by_name("shared")).await.is_empty(),
        "names match exactly"
    );
    assert!(
        find(InstanceQuery::by_name("other-account-instance"))
            .await
            .is_empty(),
        "another account's instances are invisible"
    );
    let other = env
        .find(OTHER_ACCOUNT, "other-account-instance")
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    let at = find(InstanceQuery::by_name("my-activity-tracker")).await;
    assert_eq!(at[0].id, at[0].crn);
    assert!(at[0].is_active());
    assert_eq!(at[0].account_id.as_deref(), Some("acc-one"));
}

#[tokio::test]
async fn instance_by_guid_and_by_url_encoded_crn() {
    let env = env().await;
    let by_guid = env.instance(MANAGER, AT_GUID).await.unwrap();
    assert_eq!(by_guid.name, "my-activity-tracker");
    assert_eq!(by_guid.service_name(), Some("logdnaat"));
    assert!(by_guid.crn.contains("a/acc-one"), "the CRN contains a '/'");
    let by_crn = env.instance(MANAGER, &by_guid.crn).await.unwrap();
    assert_eq!(by_crn.guid, AT_GUID);

    let missing = env
        .instance(MANAGER, "00000000-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert_eq!(missing.status, Some(404));
    assert!(missing.transaction_id.is_some());
    assert!(!missing.is_transient());
    let foreign = env.instance(MANAGER, OTHER_GUID).await.unwrap_err();
    assert_eq!(foreign.kind(), ErrorKind::NotFound);
}
