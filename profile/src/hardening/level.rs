//! The four levels of ANSSI-BP-028 v2.0, each including the one below: minimal (M),
//! intermediary (I), reinforced (R, which the baselines call "enhanced") and high (E, "élevé").

use std::fmt;

use serde::{Deserialize, Serialize};

/// A level of the guide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// M: what every system should have.
    Minimal,
    /// I: most systems.
    Intermediary,
    /// R: systems with higher needs ("renforcé").
    Enhanced,
    /// E: the most exposed systems ("élevé").
    High,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 4] = [
        Level::Minimal,
        Level::Intermediary,
        Level::Enhanced,
        Level::High,
    ];

    /// The level's name in baselines and reports.
    pub fn name(self) -> &'static str {
        match self {
            Level::Minimal => "minimal",
            Level::Intermediary => "intermediary",
            Level::Enhanced => "enhanced",
            Level::High => "high",
        }
    }

    /// The letter the guide prints beside each recommendation.
    pub fn guide_letter(self) -> char {
        match self {
            Level::Minimal => 'M',
            Level::Intermediary => 'I',
            Level::Enhanced => 'R',
            Level::High => 'E',
        }
    }

    /// The built-in baseline of this level.
    pub fn baseline(self) -> String {
        format!("anssi-bp028-{}", self.name())
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
