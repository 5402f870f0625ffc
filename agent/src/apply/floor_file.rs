//! `floor.toml`: the node's own hardening floor, which no profile can lower. Optional: without
//! the file the floor is [`opi_profile::Floor::default`]; with it, the file is the whole floor.
//!
//! ```toml
//! version = 1
//! blacklisted_modules = ["cramfs", "hfs"]
//! [sysctls."kernel.kptr_restrict"]
//! min = 1
//! [sysctls."net.ipv4.conf.all.accept_redirects"]
//! max = 0
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use opi_profile::{Floor, SysctlFloor};
use serde::Deserialize;

use crate::paths::under_root;

/// The file, under `--root`.
pub const FLOOR_FILE: &str = "/etc/opi-agent/floor.toml";
/// The only `version` read.
pub const FLOOR_VERSION: u32 = 1;

/// Why the floor cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// The file exists but cannot be read.
    #[error("cannot read the hardening floor {path}")]
    ReadFloor {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not TOML of the expected shape.
    #[error("{path} is not a valid hardening floor; fix it or remove it to use the defaults")]
    ParseFloor {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The values break rules.
    #[error("{path} is invalid: {}", problems.join("; "))]
    ValidateFloor {
        /// The file.
        path: PathBuf,
        /// Every problem.
        problems: Vec<String>,
    },
}

/// `floor.toml` as written.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FloorFile {
    /// Format version: 1.
    pub version: u32,
    /// Bounds per sysctl, by its dotted name.
    #[serde(default)]
    pub sysctls: BTreeMap<String, SysctlFloor>,
    /// Modules that must stay blacklisted.
    #[serde(default)]
    pub blacklisted_modules: BTreeSet<String>,
}

/// The floor of the node rooted at `root`.
pub fn load(root: &Path) -> Result<Floor, FloorError> {
    let path = under_root(root, Path::new(FLOOR_FILE));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Floor::default()),
        Err(source) => return Err(FloorError::ReadFloor { path, source }),
    };
    let file: FloorFile = toml::from_str(&text).map_err(|source| FloorError::ParseFloor {
        path: path.clone(),
        source: Box::new(source),
    })?;
    let floor = Floor {
        sysctls: file.sysctls,
        blacklisted_modules: file.blacklisted_modules,
    };
    let mut problems = floor.validate();
    if file.version != FLOOR_VERSION {
        problems.insert(
            0,
            format!(
                "version is {}, this agent reads version {FLOOR_VERSION}",
                file.version
            ),
        );
    }
    if problems.is_empty() {
        Ok(floor)
    } else {
        Err(FloorError::ValidateFloor { path, problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, text: &str) {
        let path = under_root(root, Path::new(FLOOR_FILE));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn missing_file_means_the_default_floor() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Floor::default());
    }

    #[test]
    fn the_file_replaces_the_defaults_and_bad_bounds_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "version = 1\n[sysctls.\"kernel.sysrq\"]\nmax = 0\n",
        );
        let floor = load(dir.path()).unwrap();
        assert_eq!(floor.sysctls.len(), 1);
        write(
            dir.path(),
            "version = 2\nblacklisted_modules = [\"Bad Name\"]\n",
        );
        let error = load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("version is 2") && error.contains("Bad Name"),
            "{error}"
        );
    }
}
