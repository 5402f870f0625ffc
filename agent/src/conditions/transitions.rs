//! When each condition last changed status, kept in `STATE_DIR/conditions.json` so that an
//! agent restart does not make a long-standing problem look new.
//!
//! The file holds the last status, severity and reason of every condition too: a change of
//! any of them, or a condition appearing or disappearing, is what makes the agent send a
//! report at once, and what makes it rewrite the file (not every round).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use opi_pki::files::{self, FileError};
use opi_proto::v1::Condition;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{severity_name, status_name, to_timestamp, Observation};

/// The only `version` of the file this agent reads and writes.
pub const TRANSITIONS_VERSION: u32 = 1;

/// The last known state of every condition.
#[derive(Debug)]
pub struct Transitions {
    path: PathBuf,
    records: BTreeMap<(String, String), Record>,
}

/// One condition's last known state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The condition type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its subject; empty when node-wide.
    pub subject: String,
    /// `OK`, `PROBLEM` or `UNKNOWN`.
    pub status: String,
    /// `info`, `warning`, `critical` or empty.
    pub severity: String,
    /// The CamelCase reason.
    pub reason: String,
    /// When the status last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub last_transition: OffsetDateTime,
}

/// What one round of observations gave.
#[derive(Debug)]
pub struct Applied {
    /// Every condition, ordered by type then subject.
    pub conditions: Vec<Condition>,
    /// Whether a condition appeared, disappeared, or changed status, severity or reason.
    pub changed: bool,
}

/// Why the file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TransitionsError {
    /// The file exists but cannot be read.
    #[error("cannot read the condition history {path}")]
    ReadTransitions {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not what this agent writes.
    #[error("{path} is not a condition history of version {TRANSITIONS_VERSION}")]
    ParseTransitions {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The file cannot be written.
    #[error("cannot store the condition history")]
    WriteTransitions(#[source] FileError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    conditions: Vec<Record>,
}

impl Transitions {
    /// No history, stored at `path`.
    pub fn empty(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            records: BTreeMap::new(),
        }
    }

    /// The history stored at `path`; empty when there is no file yet.
    pub fn load(path: &Path) -> Result<Self, TransitionsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Self::empty(path)),
            Err(source) => {
                let path = path.to_path_buf();
                return Err(TransitionsError::ReadTransitions { path, source });
            }
        };
        let parse_error = |source| TransitionsError::ParseTransitions {
            path: path.to_path_buf(),
            source,
        };
        let stored: Stored = serde_json::from_str(&text).map_err(parse_error)?;
        if stored.version != TRANSITIONS_VERSION {
            let wrong = format!("version {} is not {TRANSITIONS_VERSION}", stored.version);
            return Err(parse_error(serde::de::Error::custom(wrong)));
        }
        let records = stored
            .conditions
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            records,
        })
    }

    /// Writes the history atomically.
    pub fn save(&self) -> Result<(), TransitionsError> {
        let stored = Stored {
            version: TRANSITIONS_VERSION,
            conditions: self.records.values().cloned().collect(),
        };
        let text = serde_json::to_vec_pretty(&stored).expect("records always encode as JSON");
        files::write_public(&self.path, &text).map_err(TransitionsError::WriteTransitions)
    }

    /// Where the history is stored.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The subjects last seen for conditions of type `kind`.
    pub fn subjects(&self, kind: &str) -> Vec<String> {
        let records = self.records.values();
        records
            .filter(|r| r.kind == kind)
            .map(|r| r.subject.clone())
            .collect()
    }

    /// Stamps a round of observations made at `observed_at`, keeping the last transition of
    /// every condition whose status did not change, and replaces the history with them.
    pub fn apply(
        &mut self,
        observations: Vec<Observation>,
        observed_at: OffsetDateTime,
    ) -> Applied {
        let mut next = BTreeMap::new();
        let mut changed = false;
        for observation in observations {
            let key = (observation.kind.to_string(), observation.subject.clone());
            let previous = self.records.get(&key);
            let status = status_name(observation.status);
            let since = match previous {
                Some(record) if record.status == status => record.last_transition,
                _ => observed_at,
            };
            let record = Record::of(&observation, since);
            changed |= previous != Some(&record);
            next.insert(key, (record, observation));
        }
        changed |= self.records.keys().any(|key| !next.contains_key(key));

        let conditions = next
            .values()
            .map(|(record, observation)| {
                condition(observation, record.last_transition, observed_at)
            })
            .collect();
        self.records = next
            .into_iter()
            .map(|(key, (record, _))| (key, record))
            .collect();
        Applied {
            conditions,
            changed,
        }
    }
}

impl Record {
    fn of(observation: &Observation, last_transition: OffsetDateTime) -> Self {
        Self {
            kind: observation.kind.to_string(),
            subject: observation.subject.clone(),
            status: status_name(observation.status).to_string(),
            severity: severity_name(observation.severity).to_string(),
            reason: observation.reason.to_string(),
            last_transition,
        }
    }

    fn key(&self) -> (String, String) {
        (self.kind.clone(), self.subject.clone())
    }
}

/// The wire form of an observation.
pub fn condition(
    observation: &Observation,
    last_transition: OffsetDateTime,
    observed_at: OffsetDateTime,
) -> Condition {
    Condition {
        r#type: observation.kind.to_string(),
        subject: observation.subject.clone(),
        status: observation.status.into(),
        severity: observation.severity.into(),
        reason: observation.reason.to_string(),
        message: observation.message.clone(),
        last_transition: Some(to_timestamp(last_transition)),
        last_observed: Some(to_timestamp(observed_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::from_timestamp;
    use opi_proto::v1::Severity;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2025-05-01 10:00 UTC);
    const T1: OffsetDateTime = datetime!(2025-05-01 10:00:10 UTC);
    const T2: OffsetDateTime = datetime!(2025-05-01 10:00:20 UTC);

    fn disk(percent: u32, severity: Option<Severity>) -> Observation {
        let message = format!("/var is {percent} % full");
        match severity {
            None => Observation::ok("DiskPressure", "/var", "SpaceAvailable", message),
            Some(severity) => {
                Observation::problem("DiskPressure", "/var", severity, "DiskFillingUp", message)
            }
        }
    }

    fn since(applied: &Applied) -> OffsetDateTime {
        from_timestamp(applied.conditions[0].last_transition.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time_and_is_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = Transitions::load(&dir.path().join("conditions.json")).unwrap();
        assert!(history.apply(vec![disk(50, None)], T0).changed);
        let again = history.apply(vec![disk(51, None)], T1);
        assert!(!again.changed, "only the figures changed");
        assert_eq!(since(&again), T0);
        assert_eq!(again.conditions[0].message, "/var is 51 % full");
    }

    #[test]
    fn a_new_severity_is_a_change_but_not_a_new_transition() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = Transitions::empty(&dir.path().join("conditions.json"));
        history.apply(vec![disk(50, None)], T0);
        let warned = history.apply(vec![disk(90, Some(Severity::Warning))], T1);
        assert!(warned.changed);
        assert_eq!(since(&warned), T1);
        let worse = history.apply(vec![disk(96, Some(Severity::Critical))], T2);
        assert!(worse.changed);
        assert_eq!(since(&worse), T1, "still a problem since T1");
    }

    #[test]
    fn a_vanished_condition_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = Transitions::empty(&dir.path().join("conditions.json"));
        history.apply(vec![disk(50, None)], T0);
        assert!(history.apply(Vec::new(), T1).changed);
        assert!(history.subjects("DiskPressure").is_empty());
    }

    #[test]
    fn history_survives_a_reload_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conditions.json");
        let mut first = Transitions::load(&path).unwrap();
        first.apply(vec![disk(90, Some(Severity::Warning))], T0);
        first.save().unwrap();

        let mut second = Transitions::load(&path).unwrap();
        assert_eq!(second.subjects("DiskPressure"), ["/var"]);
        let applied = second.apply(vec![disk(91, Some(Severity::Warning))], T2);
        assert!(!applied.changed);
        assert_eq!(since(&applied), T0);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conditions.json");
        std::fs::write(&path, "{\"version\": 9, \"conditions\": []}").unwrap();
        let error = Transitions::load(&path).unwrap_err();
        assert!(error.to_string().contains("conditions.json"), "{error}");
    }
}
