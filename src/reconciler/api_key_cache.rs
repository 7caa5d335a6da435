//! API key Secrets already read, kept while the metadata watch on Secrets says they have not
//! changed. A burst of new requests shares a few API key Secrets, and each request is reconciled
//! two or three times (its own writes come back as watch events): without this, every one of
//! those reconciles made a quorum read of the same Secret, the API server's largest cost in the
//! bench (docs/performance.md).
//!
//! Soundness: a slot is opened before the Secret is read, and from then on the watch records the
//! resourceVersion of every event on that Secret. A read is used again only while no event has
//! come since it, or the latest event carries the very resourceVersion that was read. A change
//! after the read therefore always shows as a different version, however the read, the event
//! and the store interleave. A deletion, or the watch starting again (a relist, after which
//! events may have been missed), drops the slots. Nothing is kept for a namespace no watch
//! follows (a reconcile called outside the controller reads every time).

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{ResourceExt, core::PartialObjectMeta, runtime::watcher};

use super::watched::WatchedScopes;
use crate::{lock::lock, redact::SecretString};

/// (namespace, Secret name).
type SecretKey = (String, String);

/// One read of an API key Secret: its metadata (for the access checks and the hold) and the
/// values of the keys that requests asked for.
#[derive(Clone)]
pub(super) struct ApiKeyRead {
    pub metadata: ObjectMeta,
    values: HashMap<String, SecretString>,
}

impl ApiKeyRead {
    /// The Secret as read (metadata only) and, if it had one, the value of `key`.
    pub fn new(secret: &Secret, key: &str) -> (Self, Option<SecretString>) {
        let value = secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .and_then(|bytes| std::str::from_utf8(&bytes.0).ok())
            .map(str::trim) // `kubectl create secret --from-file` keeps the file's trailing newline
            .filter(|value| !value.is_empty())
            .map(SecretString::from);
        let values = value
            .iter()
            .map(|value| (key.to_owned(), value.clone()))
            .collect();
        let read = Self {
            metadata: secret.metadata.clone(),
            values,
        };
        (read, value)
    }

    pub fn value(&self, key: &str) -> Option<&SecretString> {
        self.values.get(key)
    }

    fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }
}

#[derive(Default)]
struct Slot {
    /// The resourceVersion of the latest watch event since the slot was opened.
    seen: Option<String>,
    read: Option<ApiKeyRead>,
}

impl Slot {
    fn current(&self) -> Option<&ApiKeyRead> {
        let read = self.read.as_ref()?;
        let unchanged = match &self.seen {
            None => true,
            Some(seen) => read.resource_version() == Some(seen.as_str()),
        };
        unchanged.then_some(read)
    }
}

#[derive(Default)]
pub(super) struct ApiKeyCache {
    slots: Mutex<HashMap<SecretKey, Slot>>,
    watched: WatchedScopes,
}

impl ApiKeyCache {
    /// The last read of the Secret if it still holds `key` and nothing changed since; else
    /// `None`, and the slot is open: the caller reads the Secret and calls [`Self::store`].
    pub fn lookup(&self, namespace: &str, name: &str, key: &str) -> Option<ApiKeyRead> {
        if !self.watched.covers(namespace) {
            return None;
        }
        let mut slots = lock(&self.slots);
        let slot = slots
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default();
        slot.current()
            .filter(|read| read.value(key).is_some())
            .cloned()
    }

    /// Keeps a read made after [`Self::lookup`] opened the slot (a slot dropped meanwhile, by a
    /// deletion or a relist, keeps nothing: the read may predate events that were not recorded).
    pub fn store(&self, namespace: &str, name: &str, read: ApiKeyRead) {
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(&(namespace.to_owned(), name.to_owned())) else {
            return;
        };
        match slot.read.as_mut() {
            // The same version read for another key of the Secret: add its values.
            Some(kept) if kept.resource_version() == read.resource_version() => {
                kept.values.extend(read.values);
            }
            _ => slot.read = Some(read),
        }
    }

    /// Follows one event of the watch on Secrets of `scope` (all namespaces when `None`).
    pub fn observe(&self, scope: Option<&str>, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        let mut slots = lock(&self.slots);
        match event {
            watcher::Event::Apply(secret) | watcher::Event::InitApply(secret) => {
                let key = (secret.namespace().unwrap_or_default(), secret.name_any());
                if let Some(slot) = slots.get_mut(&key) {
                    slot.seen = secret.metadata.resource_version.clone();
                }
            }
            watcher::Event::Delete(secret) => {
                slots.remove(&(secret.namespace().unwrap_or_default(), secret.name_any()));
            }
            // Events may have been missed before a relist: nothing read before it is trusted.
            watcher::Event::Init => {
                self.watched.start(scope);
                slots.retain(|(namespace, _), _| scope.is_some_and(|s| s != namespace));
            }
            watcher::Event::InitDone => {}
        }
    }

    #[cfg(test)]
    fn slots(&self) -> usize {
        lock(&self.slots).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    fn secret(version: &str, value: &str) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "key", "namespace": "ns", "resourceVersion": version},
            "data": {"apikey": k8s_openapi::ByteString(value.into())},
        }))
        .expect("Secret JSON")
    }

    fn event(version: &str) -> PartialObjectMeta<Secret> {
        PartialObjectMeta {
            metadata: secret(version, "").metadata,
            ..Default::default()
        }
    }

    fn read(version: &str, value: &str) -> ApiKeyRead {
        ApiKeyRead::new(&secret(version, value), "apikey").0
    }

    /// A cache fed by the watch of namespace `ns`.
    fn watched() -> ApiKeyCache {
        let cache = ApiKeyCache::default();
        cache.observe(Some("ns"), &Event::Init);
        cache
    }

    fn cached(cache: &ApiKeyCache) -> Option<String> {
        cache
            .lookup("ns", "key", "apikey")
            .and_then(|r| r.value("apikey").map(|v| v.expose().to_owned()))
    }

    #[test]
    fn a_read_is_used_again_until_the_watch_shows_another_version() {
        let cache = watched();
        assert_eq!(cached(&cache), None, "nothing read yet");
        cache.store("ns", "key", read("5", "first"));
        assert_eq!(cached(&cache).as_deref(), Some("first"));
        // The watch catching up with the version read changes nothing.
        cache.observe(None, &Event::Apply(event("5")));
        assert_eq!(cached(&cache).as_deref(), Some("first"));
        // A change: not used again until read anew.
        cache.observe(None, &Event::Apply(event("6")));
        assert_eq!(cached(&cache), None);
        cache.store("ns", "key", read("6", "second"));
        assert_eq!(cached(&cache).as_deref(), Some("second"));
    }

    #[test]
    fn a_change_seen_before_the_read_is_stored_still_wins() {
        let cache = watched();
        assert_eq!(cached(&cache), None);
        // The Secret changed while it was being read, and the event came first.
        cache.observe(None, &Event::Apply(event("6")));
        cache.store("ns", "key", read("5", "stale"));
        assert_eq!(cached(&cache), None);
    }

    #[test]
    fn a_read_is_kept_only_in_a_slot_opened_before_it() {
        let cache = watched();
        cache.store("ns", "key", read("5", "unasked"));
        assert_eq!(cached(&cache), None, "no slot was open: nothing kept");
        assert_eq!(cache.slots(), 1, "the lookup opened one");

        // A deletion or a relist while a read is in flight: that read is not kept.
        cache.observe(None, &Event::Delete(event("5")));
        cache.store("ns", "key", read("5", "gone"));
        assert_eq!(cache.slots(), 0);
        assert_eq!(cached(&cache), None);
        cache.observe(Some("ns"), &Event::Init);
        cache.store("ns", "key", read("5", "relisted"));
        assert_eq!(cached(&cache), None);
        // A relist of another namespace's watch leaves this one's slots.
        cache.store("ns", "key", read("5", "kept"));
        cache.observe(Some("other"), &Event::Init);
        assert_eq!(cached(&cache).as_deref(), Some("kept"));
    }

    #[test]
    fn a_secret_without_the_key_asked_for_is_read_again() {
        let cache = watched();
        assert_eq!(cached(&cache), None);
        cache.store("ns", "key", ApiKeyRead::new(&secret("5", "x"), "other").0);
        assert_eq!(cached(&cache), None);
        assert!(
            cache.lookup("ns", "key", "other").is_none(),
            "no value kept for a missing key"
        );
    }

    #[test]
    fn nothing_is_kept_where_no_watch_runs() {
        let cache = ApiKeyCache::default();
        assert_eq!(cached(&cache), None);
        cache.store("ns", "key", read("5", "unwatched"));
        assert_eq!(cached(&cache), None);
        cache.observe(Some("other"), &Event::Init);
        assert_eq!(cached(&cache), None, "another namespace's watch");
        cache.observe(None, &Event::Init);
        assert_eq!(cached(&cache), None, "the slot opens now");
        cache.store("ns", "key", read("5", "watched"));
        assert_eq!(cached(&cache).as_deref(), Some("watched"));
    }
}
