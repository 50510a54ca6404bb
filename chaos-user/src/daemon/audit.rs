//! The audit trail: every change to the daemon's faults, who asked, when, what and why, as
//! JSON lines appended to `--audit-log` (opened once, flushed per record) and kept in memory
//! for `GET /v1/history` and `chaos history`.

use std::{
    collections::VecDeque, fs::File, io::Write as _, path::Path, sync::Mutex, time::SystemTime,
};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// Records kept in memory (the file keeps them all).
const KEPT: usize = 1000;

/// One change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    /// Who asked: `uid N` (the API client's, from the unix socket's peer credentials), `token`
    /// (the TCP API's bearer), `config` (the config file), `kubernetes` (the node agent), or
    /// `daemon` (its own timers: a start delay, a duration).
    pub who: String,
    /// `create`, `update`, `delete`, `start`, `end`, `fail`, `halt`, `unhalt`.
    pub action: String,
    /// The experiment changed, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// What: the experiment's target and rules, or what was stopped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub what: String,
    /// Why, when there is a reason (a halt's, a failure's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The trail.
#[derive(Default)]
pub struct Audit {
    file: Option<Mutex<File>>,
    recent: Mutex<VecDeque<Record>>,
    /// Where records also go (the node agent's Kubernetes Events), once set.
    forward: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Record>>>,
}

impl Audit {
    /// A trail that also appends to `path` (created if missing, mode 0600).
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            file: Some(Mutex::new(file)),
            recent: Mutex::default(),
            forward: Mutex::default(),
        })
    }

    /// Records one change.
    pub fn record(
        &self,
        who: &str,
        action: &str,
        experiment: Option<&str>,
        what: String,
        why: Option<String>,
    ) {
        let record = Record {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            who: who.to_owned(),
            action: action.to_owned(),
            experiment: experiment.map(str::to_owned),
            what,
            why,
        };
        if let Some(file) = &self.file {
            let mut line = serde_json::to_vec(&record).expect("a record serializes");
            line.push(b'\n');
            let mut file = file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // One write per line: appends from one process never interleave.
            if let Err(e) = file.write_all(&line) {
                warn!("writing the audit log: {e}");
            }
        }
        if let Some(tx) = &*self
            .forward
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            // The receiver is gone only when the daemon stops.
            let _ = tx.send(record.clone());
        }
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    /// Every record from now on is also sent to the returned receiver.
    pub fn feed(&self) -> tokio::sync::mpsc::UnboundedReceiver<Record> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self
            .forward
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        rx
    }

    /// The records kept in memory, oldest first.
    pub fn recent(&self) -> Vec<Record> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_go_to_the_file_as_json_lines_and_stay_in_memory() {
        let dir = tempfile_dir();
        let path = dir.join("audit.log");
        let audit = Audit::to_file(&path).unwrap();
        audit.record("uid 0", "create", Some("a"), "drop=1%".into(), None);
        audit.record(
            "daemon",
            "end",
            Some("a"),
            String::new(),
            Some("duration over".into()),
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Record> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, audit.recent());
        assert_eq!(lines[0].who, "uid 0");
        assert_eq!(lines[1].why.as_deref(), Some("duration over"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("chaos-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
