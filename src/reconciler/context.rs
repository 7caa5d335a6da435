//! What every reconcile shares: the settings, the clients, the events, and the operator's memory
//! of each request. That memory is only an optimisation or a bridge over a gap (the API key of a
//! request whose Secret went first), keyed by the request's UID so that a request deleted and
//! re-created under the same name starts clean, and dropped when the request goes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::{Client, ResourceExt, runtime::reflector::Store};

use k8s_openapi::api::core::v1::Secret;
use kube::{core::PartialObjectMeta, runtime::watcher};

use super::{
    api_key_cache::ApiKeyCache, events::Events, keys::CreationAttempt, watched::WatchedScopes,
};
use crate::{
    crd::{ClusterId, IngestionKeyRequest},
    ibm::{IbmApi, IbmError, ResourceInstance},
    lock::lock,
    metrics::{Metrics, RequestSample},
    redact::SecretString,
};

/// Settings of the controller that are not part of any request.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// How long a name/GUID/CRN -> instance resolution is reused.
    pub instance_cache_ttl: Duration,
    /// After a key creation that may not have completed (crash, timeout), how long to wait for
    /// the key to appear before creating it again.
    pub key_creation_grace: Duration,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// The shortest `spec.rotation.interval` accepted (1h; lower only in tests).
    pub min_rotation_interval: Duration,
    /// The longest one reconcile may take; past it, it stops where it is (every step resumes
    /// from status) and is retried, so that hung calls do not hold a slot for ever.
    pub reconcile_deadline: Duration,
    /// Use only API key Secrets labelled `keysync.dev/api-key=true` and restart only workloads
    /// annotated `keysync.dev/restart-on-credential-change=true` (`--require-opt-in`).
    pub require_opt_in: bool,
    /// This cluster's identity, written into every default key name: the operator deletes only
    /// keys of its own cluster's name family.
    pub cluster_id: ClusterId,
    /// How often the leader counts orphan keys (`--orphan-audit-interval`); `None`: never.
    pub orphan_audit_interval: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            instance_cache_ttl: Duration::from_secs(300),
            key_creation_grace: Duration::from_secs(60),
            concurrency: 16,
            min_rotation_interval: crate::crd::MIN_ROTATION_INTERVAL,
            reconcile_deadline: Duration::from_secs(300),
            require_opt_in: false,
            cluster_id: ClusterId::unidentified(),
            orphan_audit_interval: None,
        }
    }
}

/// One running reconcile of a namespace, given back when dropped.
pub(super) struct NamespaceSlot {
    busy: Arc<Mutex<HashMap<String, usize>>>,
    namespace: String,
}

impl Drop for NamespaceSlot {
    fn drop(&mut self) {
        let mut busy = lock(&self.busy);
        if let Some(running) = busy.get_mut(&self.namespace) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                busy.remove(&self.namespace);
            }
        }
    }
}

/// The operator's last successful sync of a request.
pub(super) struct LastSync {
    pub generation: Option<i64>,
    pub fingerprint: String,
    pub at: Instant,
}

/// The last creation IBM Cloud refused (4xx), and when.
struct Refusal {
    attempt: CreationAttempt,
    at: Instant,
    error: IbmError,
}

/// What the operator remembers of one request between reconciles.
#[derive(Default)]
struct Memory {
    /// The last API key it used: lets deletion proceed when the API key Secret went first
    /// (namespace deletion removes both at once).
    api_key: Option<SecretString>,
    /// Failed reconciles in a row (the back-off's attempt count).
    failures: u32,
    /// Not asked again for the same spec, API key and instance until the permanent back-off has
    /// passed, so that the status writes of a failure do not turn into a loop of refused
    /// creations. Boxed: rare, and large next to the rest of an entry kept for every request.
    refusal: Option<Box<Refusal>>,
    /// The generation and fingerprint of the last successful sync (see `apply::last_sync`);
    /// forgotten on any failure.
    synced: Option<LastSync>,
    /// The agents' Secret as this process last wrote or read it holding a credential, and the
    /// latest version the Secrets' watch reported since (see [`Context::secret_unchanged`]).
    secret_in_sync: Option<Box<SecretVersion>>,
    secret_seen: Option<Box<(String, String)>>,
}

/// The agents' Secret, at one version, holding the credential of one fingerprint.
#[derive(PartialEq, Eq)]
pub(super) struct SecretVersion {
    pub name: String,
    pub resource_version: String,
    pub fingerprint: String,
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    /// For calls: every read of a reply is bounded (see [`Context::with_watch_client`]).
    pub client: Client,
    /// For the watches, whose replies may stay silent for minutes.
    pub watch_client: Client,
    pub ibm: Arc<dyn IbmApi>,
    pub(super) events: Events,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Resolved instances by selector, with when they were resolved.
    instances: Mutex<HashMap<String, (ResourceInstance, Instant)>>,
    /// Per request, by UID.
    memory: Mutex<HashMap<String, Memory>>,
    /// The controllers' caches of requests, while this replica reconciles: the per-request
    /// metrics are read from them at scrape time (a deleted request's series go with it).
    pub(super) stores: Mutex<Vec<Store<IngestionKeyRequest>>>,
    /// Reconciles running per namespace (entries go when they reach 0).
    busy: Arc<Mutex<HashMap<String, usize>>>,
    /// API key Secrets already read (see `api_key_cache`).
    pub(super) api_keys: ApiKeyCache,
    /// Where the watch on the operator's own Secrets runs.
    owned_secrets_watched: WatchedScopes,
}

impl Context {
    pub fn new(
        client: Client,
        ibm: impl IbmApi,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        Self {
            events: Events::new(client.clone()),
            watch_client: client.clone(),
            client,
            ibm: Arc::new(ibm),
            metrics,
            settings,
            instances: Mutex::default(),
            memory: Mutex::default(),
            stores: Mutex::default(),
            busy: Arc::default(),
            api_keys: ApiKeyCache::default(),
            owned_secrets_watched: WatchedScopes::default(),
        }
    }

    /// A reconcile slot in `namespace`, unless that namespace already holds its share: all slots
    /// but a quarter (at least one left for the others), so that one tenant's slow or hung calls
    /// never take every slot while other namespaces wait.
    pub(super) fn namespace_slot(&self, namespace: &str) -> Option<NamespaceSlot> {
        let concurrency = usize::from(self.settings.concurrency.max(1));
        let share = (concurrency - concurrency / 4).max(1);
        let share = if concurrency > 1 {
            share.min(concurrency - 1)
        } else {
            1
        };
        let mut busy = lock(&self.busy);
        let running = busy.entry(namespace.to_owned()).or_insert(0);
        if *running >= share {
            return None;
        }
        *running += 1;
        Some(NamespaceSlot {
            busy: self.busy.clone(),
            namespace: namespace.to_owned(),
        })
    }

    /// Watches through `client` instead of the calls' client: a watch's reply is read for
    /// minutes, a call's within seconds, so each gets a client with its own read timeout.
    pub fn with_watch_client(mut self, client: Client) -> Self {
        self.watch_client = client;
        self
    }

    /// The per-request metrics of every request this replica reconciles.
    pub fn request_samples(&self) -> Vec<RequestSample> {
        let now = k8s_openapi::jiff::Timestamp::now();
        lock(&self.stores)
            .iter()
            .flat_map(|store| store.state())
            .map(|request| RequestSample::of(&request, now))
            .collect()
    }

    pub(super) fn cached_instance(&self, cache_key: &str) -> Option<ResourceInstance> {
        let cache = lock(&self.instances);
        let (instance, at) = cache.get(cache_key)?;
        (at.elapsed() < self.settings.instance_cache_ttl).then(|| instance.clone())
    }

    pub(super) fn cache_instance(&self, cache_key: String, instance: &ResourceInstance) {
        let mut cache = lock(&self.instances);
        // Expired entries go whenever one is added, so the cache holds at most what one TTL saw.
        let ttl = self.settings.instance_cache_ttl;
        cache.retain(|_, (_, at)| at.elapsed() < ttl);
        cache.insert(cache_key, (instance.clone(), Instant::now()));
    }

    pub(super) fn forget_instance(&self, cache_key: &str) {
        lock(&self.instances).remove(cache_key);
    }

    fn with_memory<T>(&self, request: &IngestionKeyRequest, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut memory = lock(&self.memory);
        f(memory.entry(request.uid().unwrap_or_default()).or_default())
    }

    /// Changes the memory of a request only if there is one: a request that is gone (its last
    /// reconcile ran after `forget`) gets no new entry.
    fn if_remembered(&self, request: &IngestionKeyRequest, f: impl FnOnce(&mut Memory)) {
        if let Some(memory) = lock(&self.memory).get_mut(&request.uid().unwrap_or_default()) {
            f(memory);
        }
    }

    fn read_memory<T>(
        &self,
        request: &IngestionKeyRequest,
        f: impl FnOnce(&Memory) -> Option<T>,
    ) -> Option<T> {
        let memory = lock(&self.memory);
        f(memory.get(&request.uid().unwrap_or_default())?)
    }

    /// Remembers the API key a request used; returns the one it used before.
    pub(super) fn remember_api_key(
        &self,
        request: &IngestionKeyRequest,
        api_key: SecretString,
    ) -> Option<SecretString> {
        self.with_memory(request, |m| m.api_key.replace(api_key))
    }

    pub(super) fn last_api_key(&self, request: &IngestionKeyRequest) -> Option<SecretString> {
        self.read_memory(request, |m| m.api_key.clone())
    }

    /// Counts one more failed reconcile; returns how many in a row.
    pub(super) fn count_failure(&self, request: &IngestionKeyRequest) -> u32 {
        self.with_memory(request, |m| {
            m.failures = m.failures.saturating_add(1);
            m.failures
        })
    }

    pub(super) fn clear_failures(&self, request: &IngestionKeyRequest) {
        self.if_remembered(request, |m| m.failures = 0);
    }

    pub(super) fn remember_refusal(
        &self,
        request: &IngestionKeyRequest,
        attempt: CreationAttempt,
        error: IbmError,
    ) {
        let refusal = Refusal {
            attempt,
            at: Instant::now(),
            error,
        };
        self.with_memory(request, |m| m.refusal = Some(Box::new(refusal)));
    }

    /// The refusal of this very creation, if it is recent enough to stand.
    pub(super) fn refused_creation(
        &self,
        request: &IngestionKeyRequest,
        attempt: &CreationAttempt,
    ) -> Option<IbmError> {
        let stands = super::requeue::PERMANENT.after(1);
        self.read_memory(request, |m| {
            let refusal = m.refusal.as_ref()?;
            (&refusal.attempt == attempt && refusal.at.elapsed() < stands)
                .then(|| refusal.error.clone())
        })
    }

    pub(super) fn remember_sync(&self, request: &IngestionKeyRequest, fingerprint: &str) {
        let entry = LastSync {
            generation: request.metadata.generation,
            fingerprint: fingerprint.to_owned(),
            at: Instant::now(),
        };
        self.with_memory(request, |m| m.synced = Some(entry));
    }

    /// The last sync of this generation of the request, as (fingerprint, age).
    pub(super) fn remembered_sync(
        &self,
        request: &IngestionKeyRequest,
    ) -> Option<(String, Duration)> {
        self.read_memory(request, |m| {
            let last = m.synced.as_ref()?;
            (last.generation == request.metadata.generation)
                .then(|| (last.fingerprint.clone(), last.at.elapsed()))
        })
    }

    pub(super) fn forget_sync(&self, request: &IngestionKeyRequest) {
        self.if_remembered(request, |m| {
            m.synced = None;
            m.secret_in_sync = None;
        });
    }

    /// The agents' Secret, as this process just wrote or read it, holds the credential.
    pub(super) fn remember_secret_in_sync(
        &self,
        request: &IngestionKeyRequest,
        secret: Option<SecretVersion>,
    ) {
        self.with_memory(request, |m| m.secret_in_sync = secret.map(Box::new));
    }

    /// Whether the agents' Secret is known to hold the credential of `fingerprint` without
    /// reading it: this process wrote or read it so, and the watch on Secrets has reported no
    /// other version since. Sound because the request's memory exists before any reconcile reads
    /// or writes the Secret, so every later event is recorded ([`Self::observe_owned_secret`]).
    pub(super) fn secret_unchanged(
        &self,
        request: &IngestionKeyRequest,
        fingerprint: &str,
    ) -> bool {
        let namespace = request.namespace().unwrap_or_default();
        if !self.owned_secrets_watched.covers(&namespace) {
            return false;
        }
        let name = &request.spec.secret.name;
        self.read_memory(request, |m| {
            let known = m.secret_in_sync.as_deref()?;
            let unchanged = match m.secret_seen.as_deref() {
                None => true,
                Some((seen_name, seen)) => {
                    *seen_name == known.name && *seen == known.resource_version
                }
            };
            (unchanged && known.name == *name && known.fingerprint == fingerprint).then_some(())
        })
        .is_some()
    }

    /// Follows one event of the watch on the operator's Secrets of `scope`: records the version
    /// of each event in the memory of the request that owns the Secret.
    pub(super) fn observe_owned_secret(
        &self,
        scope: Option<&str>,
        event: &watcher::Event<PartialObjectMeta<Secret>>,
    ) {
        let record = |secret: &PartialObjectMeta<Secret>, version: String| {
            let owner = secret
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone());
            let Some(owner) = owner else { return };
            if let Some(memory) = lock(&self.memory).get_mut(&owner) {
                memory.secret_seen = Some(Box::new((secret.name_any(), version)));
            }
        };
        match event {
            watcher::Event::Apply(secret) | watcher::Event::InitApply(secret) => {
                record(secret, secret.resource_version().unwrap_or_default());
            }
            // No resourceVersion is ever empty: a deleted (or no longer labelled) Secret matches
            // no version this process knows.
            watcher::Event::Delete(secret) => record(secret, String::new()),
            // Events may have been missed before a relist: nothing known before it stands.
            watcher::Event::Init => {
                self.owned_secrets_watched.start(scope);
                for memory in lock(&self.memory).values_mut() {
                    memory.secret_in_sync = None;
                    memory.secret_seen = None;
                }
            }
            watcher::Event::InitDone => {}
        }
    }

    /// Forgets everything about a request that is gone.
    pub(super) fn forget(&self, request: &IngestionKeyRequest) {
        let uid = request.uid().unwrap_or_default();
        lock(&self.memory).remove(&uid);
        self.events.forget(&uid);
    }
}
