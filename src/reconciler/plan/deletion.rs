//! What deleting a request must remove in IBM Cloud.

use super::{Recorded, key_instance_guid};
use crate::crd::{ResourceKeyStatus, replacement_number};

/// What deletion of a request must do in IBM Cloud.
#[derive(Clone, Debug, PartialEq)]
pub enum DeletionPlan {
    /// Nothing to delete: `retained` names the key kept by `deletionPolicy: Retain`.
    Release { retained: Option<ResourceKeyStatus> },
    /// Delete the recorded key (if any), then every active key named `search.1` on instance
    /// `search.0` (a default-named key only this request can have made, possibly landed unseen).
    Delete {
        recorded: Option<ResourceKeyStatus>,
        search: Option<(String, String)>,
    },
}

pub fn plan_deletion(
    recorded: &Recorded,
    retain: bool,
    default_name: Option<&str>,
) -> DeletionPlan {
    if retain {
        return DeletionPlan::Release {
            retained: recorded.key.cloned(),
        };
    }
    if recorded.key.is_none() && recorded.pending.is_none() {
        return DeletionPlan::Release { retained: None };
    }
    let in_default_family =
        |name: &str| default_name.is_some_and(|base| replacement_number(base, name).is_some());
    if let Some(key) = recorded.key
        && recorded.pending.is_none()
        && !key.created_by_operator
        && !in_default_family(&key.name)
    {
        // Found by a custom name, made by someone else: used, never deleted.
        return DeletionPlan::Release {
            retained: Some(key.clone()),
        };
    }
    let from_pending = recorded
        .pending
        .map(|p| (p.instance_guid.as_str(), p.name.as_str()));
    let from_key = recorded
        .key
        .and_then(|k| Some((key_instance_guid(k)?, k.name.as_str())));
    let search = from_pending
        .or(from_key)
        .filter(|(_, name)| in_default_family(name))
        .map(|(guid, name)| (guid.to_owned(), name.to_owned()));
    DeletionPlan::Delete {
        recorded: recorded.key.cloned(),
        search,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    /// The deletion plan of a request using `key`.
    fn plan_using(key: &ResourceKeyStatus, retain: bool) -> DeletionPlan {
        plan_deletion(&using(key), retain, Some(NAME))
    }

    fn retained(key: &ResourceKeyStatus) -> DeletionPlan {
        DeletionPlan::Release {
            retained: Some(key.clone()),
        }
    }

    #[test]
    fn deletion_searches_a_pending_replacement_of_the_default_name() {
        let name = format!("{NAME}:r2");
        let p = pending(&name, INSTANCE, ago(5));
        let recorded = awaiting(&p);
        assert_eq!(
            plan_deletion(&recorded, false, Some(NAME)),
            DeletionPlan::Delete {
                recorded: None,
                search: Some((INSTANCE.into(), name)),
            }
        );
    }

    #[test]
    fn deletion_with_retain_deletes_nothing() {
        let k = status_key("k1", NAME, INSTANCE);
        assert_eq!(plan_using(&k, true), retained(&k));
    }

    #[test]
    fn deletion_without_any_key_asks_nothing() {
        assert_eq!(
            plan_deletion(&Recorded::default(), false, Some(NAME)),
            DeletionPlan::Release { retained: None }
        );
    }

    #[test]
    fn deletion_deletes_the_recorded_key_and_searches_its_default_name() {
        let k = status_key("k1", NAME, INSTANCE);
        assert_eq!(
            plan_using(&k, false),
            DeletionPlan::Delete {
                recorded: Some(k.clone()),
                search: Some((INSTANCE.into(), NAME.into())),
            }
        );
    }

    #[test]
    fn deletion_of_a_pending_creation_searches_where_it_was_started() {
        let p = pending(NAME, OTHER_INSTANCE, ago(5));
        let recorded = awaiting(&p);
        assert_eq!(
            plan_deletion(&recorded, false, Some(NAME)),
            DeletionPlan::Delete {
                recorded: None,
                search: Some((OTHER_INSTANCE.into(), NAME.into())),
            }
        );
    }

    #[test]
    fn deletion_never_deletes_a_custom_named_key_it_did_not_create() {
        let k = status_key("k1", "team-key", INSTANCE);
        assert_eq!(plan_using(&k, false), retained(&k));
    }

    #[test]
    fn deletion_never_searches_a_custom_name() {
        let mut k = status_key("k1", "team-key", INSTANCE);
        k.created_by_operator = true;
        let recorded = using(&k);
        assert_eq!(
            plan_deletion(&recorded, false, Some(NAME)),
            DeletionPlan::Delete {
                recorded: Some(k.clone()),
                search: None,
            }
        );
    }
}
