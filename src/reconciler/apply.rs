//! The apply phase: from a request to a resource key in IBM Cloud and a Secret in the cluster.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use tracing::{info, warn};

use super::{Context, ReconcileError, jitter, lock, status};
use crate::{
    crd::{
        DeletionPolicy, FIELD_MANAGER, IngestionKeyRequest, InstanceSelector, READY_CONDITION,
        default_key_name, validate,
    },
    ibm::{
        CreateKeyRequest, CredentialError, ErrorKind, InstanceQuery, KeyDeletion, ResourceInstance,
        ResourceKey,
    },
    redact::SecretString,
    render::{SecretOwnership, needs_update, ownership, render_secret, stored_credential},
};

pub(super) async fn apply(
    request: &IngestionKeyRequest,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let namespace = request.namespace().unwrap_or_default();
    let name = request.name_any();
    let valid = validate(request)?;
    let api_key = read_api_key(ctx, request).await?;
    let previous_api_key =
        lock(&ctx.last_api_keys).insert(ObjectRef::from_obj(request), api_key.clone());
    if previous_api_key.as_ref() == Some(&api_key)
        && let Some(wait) = in_sync_for(ctx, request, valid.refresh_interval).await?
    {
        info!(%namespace, %name, reason = super::reason::KEY_SYNCED, next_refresh_seconds = wait.as_secs(), "in sync; nothing to do");
        return Ok(Action::requeue(wait));
    }
    let secret_name = &request.spec.api_key_secret_ref.name;

    let instance = resolve_instance(ctx, &api_key, &valid.instance, secret_name).await?;
    let key = match ensure_key(
        ctx,
        request,
        &api_key,
        &instance,
        &valid.key_name,
        secret_name,
    )
    .await?
    {
        KeyLookup::Found(key) => *key,
        KeyLookup::CreationInFlight(wait) => {
            info!(%namespace, %name, wait_seconds = wait.as_secs(), "a key creation may still be completing in IBM Cloud; waiting before creating again");
            return Ok(Action::requeue(wait));
        }
    };

    let field = &request.spec.resource_key.credential_field;
    let credential = key.credentials.field(field).map_err(|error| match error {
        CredentialError::Redacted => ReconcileError::CredentialsRedacted {
            key_name: key.name.clone(),
            role: request.spec.resource_key.role.clone(),
        },
        CredentialError::Missing(_) | CredentialError::NotAString(_) => {
            ReconcileError::CredentialFieldMissing {
                key_name: key.name.clone(),
                field: field.clone(),
                present: key
                    .credentials
                    .field_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            }
        }
    })?;

    let outcome = sync_secret(ctx, request, &credential).await?;
    let fingerprint = credential.fingerprint();
    let secret = &request.spec.secret.name;
    match outcome {
        SecretOutcome::Created => {
            ctx.publish(
                request,
                EventType::Normal,
                "SecretCreated",
                format!("created Secret {secret} from resource key {}", key.name),
            )
            .await
        }
        SecretOutcome::Updated => {
            ctx.publish(
                request,
                EventType::Normal,
                "SecretUpdated",
                format!("updated Secret {secret} (credential {fingerprint})"),
            )
            .await
        }
        SecretOutcome::Unchanged => {}
    }
    let message = format!(
        "Secret {secret} holds {field} of resource key {} on instance {}",
        key.name, instance.name
    );
    status::synced(ctx, request, &instance, &fingerprint, message).await?;
    info!(%namespace, %name, reason = super::reason::KEY_SYNCED, secret = %secret, key_fingerprint = %fingerprint, ?outcome, "reconciled");
    Ok(Action::requeue(jitter(
        valid.refresh_interval,
        &ObjectRef::from_obj(request),
    )))
}

/// How long the request stays in sync without asking IBM Cloud: it is Ready for its current
/// generation, its refresh is not due, and its Secret still holds the synced credential. Reconciles
/// triggered by the operator's own status writes or by unrelated updates then cost one Secret read
/// and no IBM Cloud call. `None`: do the full sync.
async fn in_sync_for(
    ctx: &Context,
    request: &IngestionKeyRequest,
    refresh_interval: Duration,
) -> Result<Option<Duration>, ReconcileError> {
    let Some(status) = &request.status else {
        return Ok(None);
    };
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == READY_CONDITION && c.status == "True");
    let (Some(fingerprint), Some(last_sync)) = (&status.key_fingerprint, &status.last_sync_time)
    else {
        return Ok(None);
    };
    if !ready
        || status.observed_generation != request.metadata.generation
        || status.pending_key_creation.is_some()
    {
        return Ok(None);
    }
    let age =
        Duration::try_from(Timestamp::now().duration_since(last_sync.0)).unwrap_or(Duration::MAX);
    // Refreshes are spread by +-10%: one that fires early must still do the full sync.
    let due = refresh_interval.mul_f64(0.85);
    if age >= due {
        return Ok(None);
    }
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &request.namespace().unwrap_or_default());
    let Some(secret) = api
        .get_opt(&request.spec.secret.name)
        .await
        .map_err(ReconcileError::kube("read the Secret"))?
    else {
        return Ok(None);
    };
    if ownership(&secret, request) != SecretOwnership::Ours {
        return Ok(None);
    }
    let Some(stored) = stored_credential(&secret, &request.spec.secret.key) else {
        return Ok(None);
    };
    if stored.fingerprint() != *fingerprint {
        return Ok(None);
    }
    let in_sync =
        render_secret(request, &stored).is_some_and(|desired| !needs_update(&secret, &desired));
    Ok(in_sync.then(|| refresh_interval.saturating_sub(age)))
}

/// Reads the API key from the referenced Secret, in the request's own namespace only.
pub(super) async fn read_api_key(
    ctx: &Context,
    request: &IngestionKeyRequest,
) -> Result<SecretString, ReconcileError> {
    let reference = &request.spec.api_key_secret_ref;
    let namespace = request.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = api
        .get_opt(&reference.name)
        .await
        .map_err(ReconcileError::kube("read the API key Secret"))?;
    let Some(secret) = secret else {
        return Err(ReconcileError::ApiKeySecretNotFound {
            name: reference.name.clone(),
            key: reference.key.clone(),
        });
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .and_then(|bytes| std::str::from_utf8(&bytes.0).ok())
        .map(str::trim) // `kubectl create secret --from-file` keeps the file's trailing newline
        .filter(|value| !value.is_empty());
    value
        .map(SecretString::from)
        .ok_or_else(|| ReconcileError::ApiKeyMissingInSecret {
            name: reference.name.clone(),
            key: reference.key.clone(),
        })
}

/// Name, GUID or CRN -> instance, cached per API key for a while: name lookups page through
/// every instance of that name, and instances rarely move.
async fn resolve_instance(
    ctx: &Context,
    api_key: &SecretString,
    selector: &InstanceSelector,
    secret_name: &str,
) -> Result<ResourceInstance, ReconcileError> {
    let cache_key = format!("{}|{selector:?}", api_key.digest_hex());
    if let Some(instance) = ctx.cached_instance(&cache_key) {
        return Ok(instance);
    }
    let instance = match selector {
        InstanceSelector::Name {
            name,
            resource_group_id,
            region,
            service_name,
        } => {
            let query = InstanceQuery {
                name: name.clone(),
                resource_group_id: resource_group_id.clone(),
                region: region.clone(),
                service_name: service_name.clone(),
            };
            let mut found = ctx
                .ibm
                .find_instances_by_name(api_key, &query)
                .await
                .map_err(|e| ReconcileError::from_ibm("list resource instances", secret_name, e))?;
            match found.len() {
                0 => {
                    let narrowing: Vec<String> = [
                        ("resource group", resource_group_id),
                        ("region", region),
                        ("service", service_name),
                    ]
                    .into_iter()
                    .filter_map(|(what, value)| value.as_ref().map(|v| format!("{what} {v:?}")))
                    .collect();
                    let what = if narrowing.is_empty() {
                        format!("name {name:?}")
                    } else {
                        format!("name {name:?} with {}", narrowing.join(", "))
                    };
                    return Err(ReconcileError::InstanceNotFound { what });
                }
                1 => found.remove(0),
                count => {
                    return Err(ReconcileError::InstanceAmbiguous {
                        name: name.clone(),
                        count,
                        crns: found.into_iter().map(|i| i.crn).collect(),
                    });
                }
            }
        }
        InstanceSelector::Guid(id) | InstanceSelector::Crn(id) => {
            match ctx.ibm.get_instance(api_key, id).await {
                Ok(instance) => instance,
                Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::Gone => {
                    return Err(ReconcileError::InstanceNotFound {
                        what: format!("{id:?}"),
                    });
                }
                Err(e) => {
                    return Err(ReconcileError::from_ibm(
                        "get resource instance",
                        secret_name,
                        e,
                    ));
                }
            }
        }
    };
    if !instance.is_active() {
        ctx.forget_instance(&cache_key);
        return Err(ReconcileError::InstanceNotActive {
            name: instance.name,
            crn: instance.crn,
            state: instance.state,
        });
    }
    ctx.cache_instance(cache_key, &instance);
    Ok(instance)
}

enum KeyLookup {
    Found(Box<ResourceKey>),
    /// A creation recorded in status may still complete in IBM Cloud: wait this long, then look
    /// again before creating.
    CreationInFlight(Duration),
}

/// Finds the request's key by its deterministic name on the instance, or creates it. Never
/// creates while an earlier creation may still land, and removes duplicates of a default-named
/// key (which only this request can have made).
async fn ensure_key(
    ctx: &Context,
    request: &IngestionKeyRequest,
    api_key: &SecretString,
    instance: &ResourceInstance,
    key_name: &str,
    secret_name: &str,
) -> Result<KeyLookup, ReconcileError> {
    let namespace = request.namespace().unwrap_or_default();
    let name = request.name_any();
    let keys = ctx
        .ibm
        .list_instance_keys(api_key, &instance.guid)
        .await
        .map_err(|e| ReconcileError::from_ibm("list resource keys", secret_name, e))?;
    let mut ours: Vec<ResourceKey> = keys
        .into_iter()
        .filter(|k| k.name == key_name && k.is_active())
        .collect();
    let status = request.status.clone().unwrap_or_default();
    let recorded_guid = status.resource_key.as_ref().map(|k| k.guid.clone());

    if !ours.is_empty() {
        ours.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        let keep = ours
            .iter()
            .position(|k| Some(&k.guid) == recorded_guid.as_ref())
            .unwrap_or(0);
        let key = ours.remove(keep);
        if default_key_name(request).as_deref() == Some(key_name) {
            for duplicate in ours {
                // Only this request makes keys of this name (it carries its UID): an extra one is
                // a creation that landed after a crash or timeout.
                match ctx.ibm.delete_key(api_key, &duplicate.guid).await {
                    Ok(_) => {
                        warn!(%namespace, %name, key = %duplicate.guid, "deleted a duplicate resource key");
                        let note = format!(
                            "deleted duplicate resource key {} ({})",
                            duplicate.name, duplicate.guid
                        );
                        ctx.publish(
                            request,
                            EventType::Normal,
                            "DuplicateResourceKeyDeleted",
                            note,
                        )
                        .await;
                    }
                    Err(e) => {
                        warn!(%namespace, %name, key = %duplicate.guid, error = %e, "could not delete a duplicate resource key")
                    }
                }
            }
        } else if !ours.is_empty() {
            warn!(%namespace, %name, count = ours.len() + 1, "several active resource keys carry the configured name; using the oldest");
        }
        if recorded_guid.as_ref() != Some(&key.guid) || status.pending_key_creation.is_some() {
            status::record_key(ctx, request, instance, &key).await?;
            let note = format!(
                "reusing resource key {} ({}) on instance {}",
                key.name, key.guid, instance.name
            );
            ctx.publish(request, EventType::Normal, "ResourceKeyReused", note)
                .await;
        }
        retire_replaced_key(ctx, request, api_key, recorded_guid.as_deref(), &key).await;
        return Ok(KeyLookup::Found(Box::new(key)));
    }

    if let Some(pending) = &status.pending_key_creation
        && pending.name == key_name
        && pending.instance_guid == instance.guid
    {
        let age = Timestamp::now().duration_since(pending.started_at.0);
        let age = Duration::try_from(age).unwrap_or(Duration::ZERO);
        if age < ctx.settings.key_creation_grace {
            return Ok(KeyLookup::CreationInFlight(
                ctx.settings.key_creation_grace - age + Duration::from_secs(1),
            ));
        }
    }

    status::record_pending(ctx, request, key_name, instance).await?;
    let create = CreateKeyRequest {
        name: key_name.to_owned(),
        source: instance.guid.clone(),
        role: request.spec.resource_key.role.clone(),
    };
    let key = ctx
        .ibm
        .create_key(api_key, &create)
        .await
        .map_err(|e| ReconcileError::from_ibm("create resource key", secret_name, e))?;
    status::record_key(ctx, request, instance, &key).await?;
    let note = format!(
        "created resource key {} ({}) with role {} on instance {}",
        key.name, key.guid, create.role, instance.name
    );
    ctx.publish(request, EventType::Normal, "ResourceKeyCreated", note)
        .await;
    info!(%namespace, %name, key = %key.guid, "created resource key");
    retire_replaced_key(ctx, request, api_key, recorded_guid.as_deref(), &key).await;
    Ok(KeyLookup::Found(Box::new(key)))
}

/// A request owns one key. When it moved to another one (the spec now names another instance or
/// key name, or the old key vanished), the key recorded before is deleted, unless the policy is
/// Retain. A failure is logged and not retried: the new key already serves the request.
async fn retire_replaced_key(
    ctx: &Context,
    request: &IngestionKeyRequest,
    api_key: &SecretString,
    previous_guid: Option<&str>,
    current: &ResourceKey,
) {
    let Some(previous) = previous_guid.filter(|guid| *guid != current.guid) else {
        return;
    };
    if request.spec.deletion_policy == DeletionPolicy::Retain {
        return;
    }
    let namespace = request.namespace().unwrap_or_default();
    let name = request.name_any();
    match ctx.ibm.delete_key(api_key, previous).await {
        Ok(KeyDeletion::Deleted) => {
            info!(%namespace, %name, key = %previous, "deleted the resource key this request used before");
            let note = format!(
                "deleted resource key {previous}, replaced by {} ({})",
                current.name, current.guid
            );
            ctx.publish(request, EventType::Normal, "ResourceKeyDeleted", note)
                .await;
        }
        Ok(KeyDeletion::AlreadyGone) => {}
        Err(error) => {
            warn!(%namespace, %name, key = %previous, %error, "could not delete the resource key this request used before")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretOutcome {
    Created,
    Updated,
    Unchanged,
}

/// Writes the credential into the request's Secret, unless that Secret belongs to someone else.
async fn sync_secret(
    ctx: &Context,
    request: &IngestionKeyRequest,
    credential: &SecretString,
) -> Result<SecretOutcome, ReconcileError> {
    let namespace = request.namespace().unwrap_or_default();
    let secret_name = request.spec.secret.name.clone();
    let mut desired = render_secret(request, credential)
        .ok_or_else(|| ReconcileError::Unexpected("the request has no uid".into()))?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(existing) = api
        .get_opt(&secret_name)
        .await
        .map_err(ReconcileError::kube("read the Secret"))?
    else {
        // Create, not apply: if someone else creates the Secret meanwhile, this fails (409) and
        // the next reconcile classifies it instead of taking it over.
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.create(&params, &desired)
            .await
            .map_err(ReconcileError::kube("create the Secret"))?;
        return Ok(SecretOutcome::Created);
    };
    match ownership(&existing, request) {
        SecretOwnership::Ours | SecretOwnership::OrphanOfOurs => {}
        SecretOwnership::Foreign => {
            return Err(ReconcileError::SecretConflict {
                secret: secret_name,
                detail: format!(
                    "it lacks the label {}={}",
                    crate::crd::MANAGED_BY_LABEL,
                    crate::crd::MANAGED_BY_VALUE
                ),
            });
        }
        SecretOwnership::OtherRequest { name, uid } => {
            let requests: Api<IngestionKeyRequest> =
                Api::namespaced(ctx.client.clone(), &namespace);
            let owner = requests
                .get_opt(&name)
                .await
                .map_err(ReconcileError::kube("read the Secret's owner"))?;
            if owner.is_some_and(|o| o.metadata.uid.as_deref() == Some(uid.as_str())) {
                return Err(ReconcileError::SecretConflict {
                    secret: secret_name,
                    detail: format!("it belongs to IngestionKeyRequest {name:?}"),
                });
            }
            // The owner is gone: an orphan of ours, adopted below.
        }
    }
    if !needs_update(&existing, &desired) {
        return Ok(SecretOutcome::Unchanged);
    }
    // The resourceVersion makes the apply conditional: had the Secret changed hands since it
    // was read, the API server refuses (409) and the next reconcile looks again.
    desired.metadata.resource_version = existing.metadata.resource_version.clone();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&secret_name, &params, &Patch::Apply(&desired))
        .await
        .map_err(ReconcileError::kube("apply the Secret"))?;
    Ok(SecretOutcome::Updated)
}
