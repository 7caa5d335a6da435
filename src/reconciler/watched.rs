//! The scopes whose watch has started. A version remembered from a read stands for "unchanged"
//! only while a watch would have reported a change: nowhere else (a reconcile called outside the
//! controller, or before its watches run, reads every time).

use std::sync::Mutex;

use crate::lock::lock;

#[derive(Default)]
pub(super) struct WatchedScopes(Mutex<Vec<Option<String>>>);

impl WatchedScopes {
    /// A watch of `scope` (a namespace, or all of them when `None`) has started.
    pub fn start(&self, scope: Option<&str>) {
        let mut scopes = lock(&self.0);
        if !scopes.iter().any(|s| s.as_deref() == scope) {
            scopes.push(scope.map(str::to_owned));
        }
    }

    pub fn covers(&self, namespace: &str) -> bool {
        lock(&self.0)
            .iter()
            .any(|scope| scope.as_deref().is_none_or(|s| s == namespace))
    }
}
