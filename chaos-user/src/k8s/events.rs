//! The audit trail as Kubernetes Events: in Kubernetes mode every change the daemon records
//! (whoever asked: the API, the config file, a campaign, the agent, its own timers) is also an
//! Event on the agent's Node, so `kubectl get events --field-selector involvedObject.name=NODE`
//! tells the story next to everything else in the cluster.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::warn;

use crate::daemon::audit::Record;

/// The API server's limit on an Event's note.
const NOTE_MAX: usize = 1024;

/// Publishes each record from `records` as an Event on Node `node`, until the feed ends.
pub async fn publish_audit(client: Client, node: String, mut records: UnboundedReceiver<Record>) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "chaos-daemon".into(),
            instance: Some(node.clone()),
        },
    );
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.clone()),
        ..ObjectReference::default()
    };
    while let Some(record) = records.recv().await {
        if let Err(e) = recorder.publish(&event(&record), &regarding).await {
            warn!(action = record.action, "publishing an audit event: {e}");
        }
    }
}

/// The Event of one record: a warning for what ends faults against someone's will or fails.
pub fn event(r: &Record) -> Event {
    let type_ = match r.action.as_str() {
        "trip" | "fail" | "halt" => EventType::Warning,
        _ => EventType::Normal,
    };
    // `campaign-create` → `CampaignCreate`: Events' reasons are UpperCamelCase.
    let reason: String = r
        .action
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let mut note = format!("{}: {}", r.who, r.action);
    if let Some(e) = &r.experiment {
        note.push_str(&format!(" {e}"));
    }
    if !r.what.is_empty() {
        note.push_str(&format!(": {}", r.what));
    }
    if let Some(why) = &r.why {
        note.push_str(&format!(" ({why})"));
    }
    if note.len() > NOTE_MAX {
        let mut cut = NOTE_MAX - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    Event {
        type_,
        reason: reason.clone(),
        note: Some(note),
        action: reason,
        secondary: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{daemon::audit::Audit, k8s::fake::Shared};

    #[tokio::test]
    async fn every_audit_record_becomes_an_event_on_the_node() {
        let server = Shared::default();
        let audit = Audit::default();
        let feed = audit.feed();
        let task = tokio::spawn(publish_audit(
            crate::k8s::fake::client(server.clone()),
            "n1".into(),
            feed,
        ));
        audit.record(
            "uid 0",
            "campaign-create",
            Some("weekday"),
            "every 15m..45m".into(),
            None,
        );
        audit.record(
            "daemon",
            "trip",
            Some("slow"),
            "x".repeat(2000),
            Some("stop condition tripped".into()),
        );
        drop(audit);
        task.await.unwrap();
        let events = server.lock().unwrap().events.clone();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0]["reason"], "CampaignCreate");
        assert_eq!(events[0]["type"], "Normal");
        assert_eq!(
            events[0]["note"],
            "uid 0: campaign-create weekday: every 15m..45m"
        );
        assert_eq!(events[0]["regarding"]["kind"], "Node");
        assert_eq!(events[0]["regarding"]["name"], "n1");
        assert_eq!(events[0]["reportingInstance"], "n1");
        assert_eq!(events[1]["type"], "Warning");
        assert_eq!(events[1]["reason"], "Trip");
        let note = events[1]["note"].as_str().unwrap();
        assert_eq!(note.len(), NOTE_MAX);
        assert!(note.starts_with("daemon: trip slow: xxx") && note.ends_with("..."));
    }
}
