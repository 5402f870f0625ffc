//! `RebootRequired`: Debian's flag file says an upgrade needs a reboot to take effect, and
//! its companion file names the packages.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use opi_proto::v1::Severity;

use super::{blocking, CollectFuture, Collector, NodeFiles, Observation};

/// The condition type.
pub const REBOOT_REQUIRED: &str = "RebootRequired";
/// Present when a reboot is needed (written by package maintainer scripts).
pub const FLAG_FILE: &str = "/var/run/reboot-required";
/// The packages that asked for it, one per line.
pub const PACKAGES_FILE: &str = "/var/run/reboot-required.pkgs";

/// Looks for the flag file under the root.
#[derive(Debug)]
pub struct RebootCollector {
    flag: PathBuf,
    packages: PathBuf,
}

/// Why the flag could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    /// The flag's presence cannot be told (permissions, I/O error).
    #[error("cannot tell whether {path} exists")]
    CheckFlag {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl RebootCollector {
    /// A check of the flag under the root of `files`.
    pub fn new(files: &NodeFiles) -> Self {
        Self {
            flag: files.node(FLAG_FILE),
            packages: files.node(PACKAGES_FILE),
        }
    }

    /// Checks the flag now.
    pub fn observe(&self) -> Result<Observation, RebootError> {
        let flagged = self
            .flag
            .try_exists()
            .map_err(|source| RebootError::CheckFlag {
                path: self.flag.clone(),
                source,
            })?;
        if !flagged {
            let message = format!("no reboot is pending ({} is absent)", FLAG_FILE);
            return Ok(Observation::ok(
                REBOOT_REQUIRED,
                "",
                "NoRebootPending",
                message,
            ));
        }
        let packages = std::fs::read_to_string(&self.packages)
            .map(|text| package_list(&text))
            .unwrap_or_default();
        let message = match packages.is_empty() {
            true => format!("a reboot is pending ({FLAG_FILE} exists)"),
            false => format!(
                "a reboot is pending ({FLAG_FILE} exists) for {}",
                packages.join(", ")
            ),
        };
        let severity = Severity::Info;
        Ok(Observation::problem(
            REBOOT_REQUIRED,
            "",
            severity,
            "RebootPending",
            message,
        ))
    }
}

impl Collector for RebootCollector {
    fn kinds(&self) -> Vec<&'static str> {
        vec![REBOOT_REQUIRED]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        blocking(move || Ok(vec![self.observe()?]))
    }
}

/// The package names of a `.pkgs` file, each once, in order.
pub fn package_list(text: &str) -> Vec<String> {
    let mut packages: Vec<String> = Vec::new();
    for name in text.lines().map(str::trim).filter(|name| !name.is_empty()) {
        if !packages.iter().any(|seen| seen == name) {
            packages.push(name.to_string());
        }
    }
    packages
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_proto::v1::ConditionStatus;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("var/run")).unwrap();
        for (path, text) in files {
            std::fs::write(root.path().join(path), text).unwrap();
        }
        root
    }

    #[test]
    fn no_flag_means_no_reboot_pending() {
        let root = root_with(&[]);
        let seen = RebootCollector::new(&NodeFiles::new(root.path()))
            .observe()
            .unwrap();
        assert_eq!(seen.status, ConditionStatus::Ok);
    }

    #[test]
    fn flag_is_an_informational_problem_listing_the_packages_once() {
        let root = root_with(&[
            (
                "var/run/reboot-required",
                "*** System restart required ***\n",
            ),
            (
                "var/run/reboot-required.pkgs",
                "linux-image-6.1.0-18-amd64\nlibc6\nlibc6\n",
            ),
        ]);
        let seen = RebootCollector::new(&NodeFiles::new(root.path()))
            .observe()
            .unwrap();
        assert_eq!(seen.status, ConditionStatus::Problem);
        assert_eq!(seen.severity, Severity::Info);
        assert!(
            seen.message
                .ends_with("for linux-image-6.1.0-18-amd64, libc6"),
            "{}",
            seen.message
        );
    }

    #[test]
    fn flag_without_package_list_is_still_reported() {
        let root = root_with(&[("var/run/reboot-required", "")]);
        let seen = RebootCollector::new(&NodeFiles::new(root.path()))
            .observe()
            .unwrap();
        assert_eq!(seen.reason, "RebootPending");
        assert!(seen.message.ends_with("exists)"), "{}", seen.message);
    }
}
