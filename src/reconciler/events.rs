//! Kubernetes Events about requests. A failure to publish one is logged, never fatal.

use std::{collections::HashMap, sync::Mutex};

use kube::{
    Client, Resource, ResourceExt,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tracing::warn;

use crate::crd::{FIELD_MANAGER, IngestionKeyRequest};
use crate::lock::lock;

/// The API server refuses event notes over 1 kB.
const MAX_EVENT_NOTE: usize = 1024;

pub(super) struct Events {
    client: Client,
    reporter: Reporter,
    /// Per (request uid, event reason): the last note published and the recorder that published
    /// it. kube's recorder merges events by reason and keeps the first note; a different note is
    /// a different happening, so it gets a fresh recorder and a new event, while a repeat of the
    /// same note still becomes a series (count) on one event.
    recorders: Mutex<HashMap<(String, String), (String, Recorder)>>,
}

impl Events {
    pub(super) fn new(client: Client) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            client,
            reporter,
            recorders: Mutex::default(),
        }
    }

    /// Publishes a Normal event about `request`: something the operator did.
    pub(super) async fn normal(&self, request: &IngestionKeyRequest, reason: &str, note: String) {
        self.publish(request, EventType::Normal, reason, note).await;
    }

    /// Publishes a Warning event about `request`: something that failed or needs a person.
    pub(super) async fn warning(&self, request: &IngestionKeyRequest, reason: &str, note: String) {
        self.publish(request, EventType::Warning, reason, note)
            .await;
    }

    /// Publishes an event about `request`.
    pub(super) async fn publish(
        &self,
        request: &IngestionKeyRequest,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let note = truncate(note, MAX_EVENT_NOTE);
        // Warnings repeat (a failure retried with back-off) and become a series on one event:
        // their recorder, which caches the last event, is kept. Normal events name what happened
        // (a key's GUID, a fingerprint) and do not repeat: a recorder kept for each would hold an
        // event per request in memory for nothing.
        let recorder = match type_ {
            EventType::Warning => self.recorder_for(request, reason, &note),
            EventType::Normal => Recorder::new(self.client.clone(), self.reporter.clone()),
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &request.object_ref(&())).await {
            warn!(%error, "could not publish event");
        }
    }

    /// The recorder that publishes `note` as its own event (see `recorders`).
    fn recorder_for(&self, request: &IngestionKeyRequest, reason: &str, note: &str) -> Recorder {
        let key = (request.uid().unwrap_or_default(), reason.to_owned());
        let mut recorders = lock(&self.recorders);
        match recorders.get(&key) {
            Some((last, recorder)) if last == note => recorder.clone(),
            _ => {
                let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
                recorders.insert(key, (note.to_owned(), recorder.clone()));
                recorder
            }
        }
    }

    /// Forgets the recorders of a request that is gone.
    pub(super) fn forget(&self, uid: &str) {
        lock(&self.recorders).retain(|(owner, _), _| owner != uid);
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked with an ellipsis when cut.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_fit_the_api_limit() {
        assert_eq!(truncate("short".into(), MAX_EVENT_NOTE), "short");
        let long = truncate("é".repeat(2000), MAX_EVENT_NOTE);
        assert!(
            long.len() <= MAX_EVENT_NOTE && long.ends_with('…'),
            "{}",
            long.len()
        );
    }
}
