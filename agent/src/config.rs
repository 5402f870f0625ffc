//! `agent.toml`: who this node is and where its managers are. Written last at enrollment, so
//! its presence means "enrolled"; rewritten atomically when the managers announce new
//! endpoints.

use std::path::{Path, PathBuf};

use opi_pki::files::{self, FileError};
use opi_pki::identity::validate_name;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The only `version` this agent reads and writes.
pub const CONFIG_VERSION: u32 = 1;
/// Heartbeat interval used when the manager names none.
pub const DEFAULT_HEARTBEAT_SECS: u32 = 10;

/// The agent's settings, as stored in `agent.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Format version, [`CONFIG_VERSION`].
    pub version: u32,
    /// The fleet, as named in the manager's certificate.
    pub fleet: String,
    /// This node's name in the fleet.
    pub node: String,
    /// The pool the enrollment token placed the node in.
    pub pool: String,
    /// Every manager endpoint, `https://HOST:PORT`, tried in order.
    pub managers: Vec<String>,
    /// Heartbeat interval until the manager says otherwise.
    pub heartbeat_interval_secs: u32,
    /// When the node enrolled.
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
}

/// Why `agent.toml` could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `agent.toml` does not exist.
    #[error("this node is not enrolled ({path} does not exist); enroll it first with `opi-agent enroll`")]
    NotEnrolled {
        /// The file concerned.
        path: PathBuf,
    },
    /// The file cannot be read.
    #[error("cannot read the agent settings")]
    Read(#[source] FileError),
    /// The file is not valid TOML of the expected shape.
    #[error("{path} is not a valid agent settings file; fix it or re-enroll the node")]
    Parse {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The values break rules.
    #[error("{path} is invalid: {}; fix it or re-enroll the node", problems.join("; "))]
    Invalid {
        /// The file concerned.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The settings cannot be encoded as TOML.
    #[error("cannot encode the agent settings for {path}")]
    Encode {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<toml::ser::Error>,
    },
    /// The file cannot be written.
    #[error("cannot write the agent settings")]
    Write(#[source] FileError),
}

impl ConfigError {
    /// The process exit code for this error: settings that are missing or wrong are
    /// configuration errors, failing I/O is a runtime one.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::NotEnrolled { .. }
            | ConfigError::Parse { .. }
            | ConfigError::Invalid { .. } => crate::EXIT_USAGE,
            ConfigError::Read(_) | ConfigError::Encode { .. } | ConfigError::Write(_) => {
                crate::EXIT_RUNTIME
            }
        }
    }
}

impl AgentConfig {
    /// Reads and validates `agent.toml` at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::NotEnrolled {
                path: path.to_path_buf(),
            });
        }
        let text = files::read_text(path).map_err(ConfigError::Read)?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(config)
    }

    /// Writes `agent.toml` at `path` atomically.
    pub fn store(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string(self).map_err(|source| ConfigError::Encode {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        files::write_public(path, text.as_bytes()).map_err(ConfigError::Write)
    }

    /// Every problem with these settings; empty when they are usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.version != CONFIG_VERSION {
            problems.push(format!(
                "version is {}, this agent reads version {CONFIG_VERSION}",
                self.version
            ));
        }
        for (field, name) in [("fleet", &self.fleet), ("node", &self.node)] {
            if let Err(error) = validate_name(name) {
                problems.push(format!("{field}: {error}"));
            }
        }
        if self.managers.is_empty() {
            problems.push("managers: no endpoint listed".to_string());
        }
        for endpoint in &self.managers {
            if let Err(error) = opi_pki::channel::host_port(endpoint) {
                problems.push(format!("managers: {error}"));
            }
        }
        problems
    }

    /// The heartbeat interval, [`DEFAULT_HEARTBEAT_SECS`] when unset.
    pub fn heartbeat_secs(&self) -> u32 {
        match self.heartbeat_interval_secs {
            0 => DEFAULT_HEARTBEAT_SECS,
            secs => secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentConfig {
        AgentConfig {
            version: CONFIG_VERSION,
            fleet: "prod".into(),
            node: "worker-1".into(),
            pool: "workers".into(),
            managers: vec!["https://m1:7443".into(), "https://m2:7443".into()],
            heartbeat_interval_secs: 10,
            enrolled_at: time::macros::datetime!(2025-01-02 03:04:05 UTC),
        }
    }

    #[test]
    fn settings_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        sample().store(&path).unwrap();
        assert_eq!(AgentConfig::load(&path).unwrap(), sample());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("enrolled_at = \"2025-01-02T03:04:05Z\""),
            "{text}"
        );
    }

    #[test]
    fn missing_file_means_not_enrolled() {
        let dir = tempfile::tempdir().unwrap();
        let error = AgentConfig::load(&dir.path().join("agent.toml")).unwrap_err();
        assert!(matches!(error, ConfigError::NotEnrolled { .. }), "{error}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let text = toml::to_string(&sample()).unwrap() + "colour = \"blue\"\n";
        std::fs::write(&path, text).unwrap();
        let error = AgentConfig::load(&path).unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        let mut config = sample();
        config.version = 2;
        config.node = "Bad_Name".into();
        config.managers = vec!["m1:7443".into()];
        let problems = config.validate();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
