//! API server writes: a new request costs the fewest, an in-sync refresh none.

use crate::harness::*;

/// The writes the API server makes to one object from now on, seen by a watch (each event is one
/// write), as (kind, resourceVersion).
struct Writes {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writes {
    async fn watch<K>(api: &Api<K>, name: &str) -> Writes
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        use futures::TryStreamExt;
        let fields = format!("metadata.name={name}");
        let list = api
            .list_metadata(&kube::api::ListParams::default().fields(&fields))
            .await
            .expect("list");
        let from = list
            .metadata
            .resource_version
            .expect("list resourceVersion");
        let params = kube::api::WatchParams::default()
            .fields(&fields)
            .timeout(120);
        let stream = api.watch(&params, &from).await.expect("watch");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Ok(Some(event)) = stream.try_next().await {
                let (kind, object) = match event {
                    kube::api::WatchEvent::Added(o) => ("ADDED", o),
                    kube::api::WatchEvent::Modified(o) => ("MODIFIED", o),
                    kube::api::WatchEvent::Deleted(o) => ("DELETED", o),
                    other => panic!("unexpected watch event {other:?}"),
                };
                let version = object.meta().resource_version.clone().unwrap_or_default();
                sink.lock().unwrap().push((kind.to_owned(), version));
            }
        });
        Writes { seen, task }
    }

    /// The kinds of the writes seen, once the one that made `version` has arrived.
    async fn until(&self, version: &str) -> Vec<String> {
        support::wait_for("the watch to catch up", Duration::from_secs(30), || async {
            self.seen.lock().unwrap().iter().any(|(_, v)| v == version)
        })
        .await;
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Drop for Writes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn resource_version<K: kube::Resource>(object: &K) -> String {
    object
        .meta()
        .resource_version
        .clone()
        .expect("resourceVersion")
}

#[tokio::test]
async fn a_new_request_costs_the_fewest_writes_and_an_in_sync_refresh_none() {
    let mut h = Harness::new("rec-writes").await;
    let request_writes = Writes::watch(&h.requests(), "at").await;
    let secret_writes = Writes::watch(&h.secrets(), "logdna-agent-key").await;
    h.create("at", spec_on(AT_GUID)).await;
    h.reconcile("at").await.expect("apply");
    // The request: created, then the finalizer with the announced creation (one write), then
    // Ready with the key (one write).
    let request = h.get("at").await;
    assert_eq!(
        request_writes.until(&resource_version(&request)).await,
        ["ADDED", "MODIFIED", "MODIFIED"]
    );
    let secret = h.secret("logdna-agent-key").await;
    assert_eq!(
        secret_writes.until(&resource_version(&secret)).await,
        ["ADDED"],
        "one Secret write"
    );
    let created = h.events("ResourceKeyCreated").await;
    assert_eq!(created.len(), 1, "one event: {created:?}");
    assert!(
        created[0].contains("created Secret logdna-agent-key"),
        "it names the Secret: {created:?}"
    );
    assert!(
        h.events("SecretCreated").await.is_empty(),
        "no second event"
    );
    // A refresh that finds everything in sync (a full sync) writes nothing: the lastSyncTime that
    // `refresh_due` moved back would be a real change (a new resourceVersion) if it were rewritten.
    h.refresh_due("at").await;
    let request = h.get("at").await;
    h.sim.reset_calls();
    h.reconcile("at").await.expect("refresh");
    assert_eq!(
        resource_version(&h.get("at").await),
        resource_version(&request),
        "no status write"
    );
    assert_eq!(
        resource_version(&h.secret("logdna-agent-key").await),
        resource_version(&secret),
        "no Secret write"
    );
    // One call for the key; the instance lookup is shared by every request on the instance and
    // cached (--instance-cache-ttl), here made once because the restart emptied the cache.
    let key_calls: u64 = h
        .sim
        .calls()
        .iter()
        .filter(|(e, _)| e.contains("resource_keys"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(key_calls, 1, "{:?}", h.sim.calls());
    assert_eq!(h.sim.call_count(GET_KEY), 1);
}
