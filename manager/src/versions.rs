//! The version skew policy between the manager and its agents: a manager accepts agents of
//! its own major version, of its own minor version or one minor version behind (any patch
//! level), so that managers are upgraded first and agents follow through their packages.
//! Newer agents, agents two or more minor versions behind and agents of another major
//! version are refused at enrollment and at every session, naming both versions.

use std::collections::BTreeMap;
use std::fmt;

use opi_proto::v1 as pb;

use crate::records::{NodeRecord, NodeState};

/// This manager's version.
pub const MANAGER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The policy, as refusals state it.
pub const POLICY: &str =
    "a manager accepts agents of its major version, of its minor version or one minor behind";

/// A `MAJOR.MINOR.PATCH` version; a pre-release or build suffix is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Patch level.
    pub patch: u64,
}

/// How far an accepted agent is from the manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skew {
    /// Same major and minor version.
    Current,
    /// One minor version behind: supported until the next manager minor version.
    OneMinorBehind,
}

/// Why an agent's version is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionRefused {
    /// Not a `MAJOR.MINOR.PATCH` version.
    #[error("agent version {agent:?} is not a MAJOR.MINOR.PATCH version (manager {manager}); install the opi-agent package of the manager's version")]
    Unparsable { agent: String, manager: String },
    /// Newer than the manager.
    #[error("agent {agent} is newer than manager {manager} ({POLICY}); upgrade the managers before the agents")]
    Newer { agent: String, manager: String },
    /// Too old, or of another major version.
    #[error("agent {agent} is too old for manager {manager} ({POLICY}); upgrade the node's opi-agent package to {supported} or later")]
    TooOld {
        agent: String,
        manager: String,
        supported: String,
    },
}

impl Version {
    /// Parses `MAJOR.MINOR.PATCH`, ignoring a `-pre` or `+build` suffix.
    pub fn parse(text: &str) -> Option<Self> {
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|part| part.parse::<u64>().ok());
        let version = Self {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next()??,
        };
        parts.next().is_none().then_some(version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Skew {
    /// How the skew reads in `opictl status`.
    pub fn label(self) -> &'static str {
        match self {
            Skew::Current => "current",
            Skew::OneMinorBehind => "one minor behind",
        }
    }
}

/// Checks an agent's version against this manager's.
pub fn check(agent: &str) -> Result<Skew, VersionRefused> {
    check_against(agent, MANAGER_VERSION)
}

/// Checks an agent's version against `manager`'s.
pub fn check_against(agent: &str, manager: &str) -> Result<Skew, VersionRefused> {
    let ours = Version::parse(manager).expect("the manager's own version is MAJOR.MINOR.PATCH");
    let Some(theirs) = Version::parse(agent) else {
        return Err(VersionRefused::Unparsable {
            agent: agent.to_string(),
            manager: manager.to_string(),
        });
    };
    let newer = (theirs.major, theirs.minor) > (ours.major, ours.minor);
    if newer {
        return Err(VersionRefused::Newer {
            agent: agent.to_string(),
            manager: manager.to_string(),
        });
    }
    if theirs.major == ours.major && theirs.minor == ours.minor {
        return Ok(Skew::Current);
    }
    if theirs.major == ours.major && theirs.minor + 1 == ours.minor {
        return Ok(Skew::OneMinorBehind);
    }
    let oldest = Version {
        major: ours.major,
        minor: ours.minor.saturating_sub(1),
        patch: 0,
    };
    Err(VersionRefused::TooOld {
        agent: agent.to_string(),
        manager: manager.to_string(),
        supported: oldest.to_string(),
    })
}

/// How many nodes (revoked ones left out) run each agent version, newest first.
pub fn counts<'a>(records: impl Iterator<Item = &'a NodeRecord>) -> Vec<pb::AgentVersionCount> {
    // Counted by text first: a fleet runs a handful of versions, each parsed once.
    let mut by_text: BTreeMap<&str, u32> = BTreeMap::new();
    for record in records.filter(|r| r.state != NodeState::Revoked) {
        *by_text.entry(&record.facts.agent_version).or_default() += 1;
    }
    let mut by_version: BTreeMap<Option<Version>, (String, u32)> = BTreeMap::new();
    for (text, nodes) in by_text {
        let entry = by_version
            .entry(Version::parse(text))
            .or_insert_with(|| (text.to_string(), 0));
        entry.1 += nodes;
    }
    by_version
        .into_values()
        .rev()
        .map(|(version, nodes)| pb::AgentVersionCount {
            skew: skew_label(&version),
            version,
            nodes,
        })
        .collect()
}

/// `current`, `one minor behind`, or `unsupported` for a version this manager would refuse
/// (a node last seen before the manager was upgraded).
fn skew_label(version: &str) -> String {
    match check(version) {
        Ok(skew) => skew.label().to_string(),
        Err(_) => "unsupported".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_same_minor_version_and_one_minor_behind_at_any_patch_level() {
        assert_eq!(check_against("1.4.0", "1.4.2"), Ok(Skew::Current));
        assert_eq!(check_against("1.4.7", "1.4.2"), Ok(Skew::Current));
        assert_eq!(check_against("1.3.9", "1.4.2"), Ok(Skew::OneMinorBehind));
        assert_eq!(check_against("0.0.9", "0.1.0"), Ok(Skew::OneMinorBehind));
        assert_eq!(check_against("1.4.0-rc.1", "1.4.0"), Ok(Skew::Current));
    }

    #[test]
    fn refuses_newer_agents_naming_both_versions_and_the_order_of_upgrades() {
        let refused = check_against("1.5.0", "1.4.2").unwrap_err();
        assert_eq!(
            refused.to_string(),
            "agent 1.5.0 is newer than manager 1.4.2 (a manager accepts agents of its major \
             version, of its minor version or one minor behind); upgrade the managers before the \
             agents"
        );
        assert!(matches!(
            check_against("2.0.0", "1.4.2"),
            Err(VersionRefused::Newer { .. })
        ));
    }

    #[test]
    fn refuses_agents_two_minor_versions_behind_or_of_an_older_major() {
        let refused = check_against("1.2.9", "1.4.2").unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("agent 1.2.9 is too old for manager 1.4.2"),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .ends_with("upgrade the node's opi-agent package to 1.3.0 or later"),
            "{refused}"
        );
        assert!(matches!(
            check_against("0.9.0", "1.0.0"),
            Err(VersionRefused::TooOld { .. })
        ));
    }

    #[test]
    fn refuses_versions_that_do_not_parse() {
        for bad in ["", "banana", "1.4", "1.4.x", "1.4.0.1"] {
            assert!(
                matches!(
                    check_against(bad, "1.4.0"),
                    Err(VersionRefused::Unparsable { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
