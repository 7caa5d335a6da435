//! Which requests name an API key Secret, kept up to date from the requests' watch: an event on a
//! Secret finds its requests in one lookup. Scanning the whole request cache instead costs
//! requests x Secrets comparisons on every relist (hundreds of millions with 50,000 Secrets and
//! 5,000 requests).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use kube::{ResourceExt, runtime::reflector::ObjectRef, runtime::watcher};

use crate::{crd::IngestionKeyRequest, lock::lock};

/// (namespace, API key Secret name).
type SecretKey = (String, String);

#[derive(Default)]
struct Index {
    by_secret: HashMap<SecretKey, HashSet<ObjectRef<IngestionKeyRequest>>>,
    by_request: HashMap<ObjectRef<IngestionKeyRequest>, SecretKey>,
}

impl Index {
    fn insert(&mut self, request: &IngestionKeyRequest) {
        let reference = reference_to(request);
        let secret = (
            request.namespace().unwrap_or_default(),
            request.spec.api_key_secret_ref.name.clone(),
        );
        if self.by_request.get(&reference) == Some(&secret) {
            return;
        }
        self.remove(&reference);
        self.by_secret
            .entry(secret.clone())
            .or_default()
            .insert(reference.clone());
        self.by_request.insert(reference, secret);
    }

    fn remove(&mut self, reference: &ObjectRef<IngestionKeyRequest>) {
        let Some(secret) = self.by_request.remove(reference) else {
            return;
        };
        if let Some(requests) = self.by_secret.get_mut(&secret) {
            requests.remove(reference);
            if requests.is_empty() {
                self.by_secret.remove(&secret);
            }
        }
    }
}

/// The request's name and namespace: what the controller needs to find it, without the
/// resourceVersion and UID that `ObjectRef::from_obj` copies too (two strings fewer per request,
/// in two maps).
fn reference_to(request: &IngestionKeyRequest) -> ObjectRef<IngestionKeyRequest> {
    let reference = ObjectRef::new(&request.name_any());
    match request.namespace() {
        Some(namespace) => reference.within(&namespace),
        None => reference,
    }
}

/// The index, and the one being rebuilt while the watch relists.
#[derive(Default)]
pub(super) struct ApiKeyIndex {
    current: Mutex<Index>,
    relisting: Mutex<Option<Index>>,
}

impl ApiKeyIndex {
    /// Follows one event of the requests' watch.
    pub(super) fn observe(&self, event: &watcher::Event<IngestionKeyRequest>) {
        match event {
            watcher::Event::Apply(request) => lock(&self.current).insert(request),
            watcher::Event::Delete(request) => {
                lock(&self.current).remove(&reference_to(request));
            }
            watcher::Event::Init => *lock(&self.relisting) = Some(Index::default()),
            watcher::Event::InitApply(request) => {
                if let Some(index) = lock(&self.relisting).as_mut() {
                    index.insert(request);
                }
            }
            watcher::Event::InitDone => {
                if let Some(index) = lock(&self.relisting).take() {
                    *lock(&self.current) = index;
                }
            }
        }
    }

    /// The requests whose API key Secret is `name` in `namespace`.
    pub(super) fn requests_of(
        &self,
        namespace: Option<String>,
        name: &str,
    ) -> Vec<ObjectRef<IngestionKeyRequest>> {
        let key = (namespace.unwrap_or_default(), name.to_owned());
        lock(&self.current)
            .by_secret
            .get(&key)
            .map(|requests| requests.iter().cloned().collect())
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn secrets(&self) -> usize {
        lock(&self.current).by_secret.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    fn request(ns: &str, name: &str, secret: &str) -> IngestionKeyRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "keysync.dev/v1alpha1", "kind": "IngestionKeyRequest",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"instance": {"name": "at"}, "apiKeySecretRef": {"name": secret}},
        }))
        .expect("request JSON")
    }

    fn names(found: Vec<ObjectRef<IngestionKeyRequest>>) -> Vec<String> {
        let mut names: Vec<String> = found.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    #[test]
    fn follows_applies_moves_deletes_and_relists() {
        let index = ApiKeyIndex::default();
        index.observe(&Event::Apply(request("a", "one", "key")));
        index.observe(&Event::Apply(request("a", "two", "key")));
        index.observe(&Event::Apply(request("b", "one", "key")));
        assert_eq!(
            names(index.requests_of(Some("a".into()), "key")),
            ["one", "two"]
        );
        assert_eq!(names(index.requests_of(Some("b".into()), "key")), ["one"]);

        // A request moved to another Secret leaves the old one.
        index.observe(&Event::Apply(request("a", "two", "other")));
        assert_eq!(names(index.requests_of(Some("a".into()), "key")), ["one"]);
        assert_eq!(names(index.requests_of(Some("a".into()), "other")), ["two"]);

        index.observe(&Event::Delete(request("a", "one", "key")));
        assert!(index.requests_of(Some("a".into()), "key").is_empty());

        // A relist replaces everything at once when it is done, and not before.
        index.observe(&Event::Init);
        index.observe(&Event::InitApply(request("c", "three", "key")));
        assert_eq!(names(index.requests_of(Some("a".into()), "other")), ["two"]);
        index.observe(&Event::InitDone);
        assert!(index.requests_of(Some("a".into()), "other").is_empty());
        assert_eq!(names(index.requests_of(Some("c".into()), "key")), ["three"]);
        assert_eq!(index.secrets(), 1, "entries go with their last request");
    }
}
