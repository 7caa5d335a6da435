//! Name, GUID or CRN -> the service instance, cached per API key for a while: name lookups page
//! through every instance of that name, and instances rarely move.

use super::{Context, ReconcileError};
use crate::{
    crd::InstanceSelector,
    ibm::{ErrorKind, InstanceQuery, ResourceInstance},
    redact::SecretString,
};

pub(super) async fn resolve(
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
            by_name(ctx, api_key, &query, secret_name).await?
        }
        InstanceSelector::Guid(id) | InstanceSelector::Crn(id) => {
            by_id(ctx, api_key, id, secret_name).await?
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

/// Exactly one instance of that name (after narrowing), or the error that says what to fix.
async fn by_name(
    ctx: &Context,
    api_key: &SecretString,
    query: &InstanceQuery,
    secret_name: &str,
) -> Result<ResourceInstance, ReconcileError> {
    let mut found = ctx
        .ibm
        .find_instances_by_name(api_key, query)
        .await
        .map_err(|e| ReconcileError::from_ibm("list resource instances", secret_name, e))?;
    match found.len() {
        0 => Err(ReconcileError::InstanceNotFound {
            what: describe(query),
        }),
        1 => Ok(found.remove(0)),
        count => Err(ReconcileError::InstanceAmbiguous {
            name: query.name.clone(),
            count,
            crns: found.into_iter().map(|i| i.crn).collect(),
        }),
    }
}

/// `name "x" with region "y", ...`: what was searched for, in the words of the spec.
fn describe(query: &InstanceQuery) -> String {
    let narrowing: Vec<String> = [
        ("resource group", &query.resource_group_id),
        ("region", &query.region),
        ("service", &query.service_name),
    ]
    .into_iter()
    .filter_map(|(what, value)| value.as_ref().map(|v| format!("{what} {v:?}")))
    .collect();
    if narrowing.is_empty() {
        format!("name {:?}", query.name)
    } else {
        format!("name {:?} with {}", query.name, narrowing.join(", "))
    }
}

async fn by_id(
    ctx: &Context,
    api_key: &SecretString,
    id: &str,
    secret_name: &str,
) -> Result<ResourceInstance, ReconcileError> {
    match ctx.ibm.get_instance(api_key, id).await {
        Ok(instance) => Ok(instance),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Gone) => {
            Err(ReconcileError::InstanceNotFound {
                what: format!("{id:?}"),
            })
        }
        Err(e) => Err(ReconcileError::from_ibm(
            "get resource instance",
            secret_name,
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_messages_name_every_narrowing() {
        let mut query = InstanceQuery::by_name("logs");
        assert_eq!(describe(&query), r#"name "logs""#);
        query.region = Some("eu-de".into());
        query.service_name = Some("logdna".into());
        assert_eq!(
            describe(&query),
            r#"name "logs" with region "eu-de", service "logdna""#
        );
    }
}
