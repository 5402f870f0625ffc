//! What the node says about itself: informative only, the manager never derives identity from
//! it. Everything here is read, never written; files are looked for under `--root` first, then
//! on the host.

use std::path::Path;

use opi_proto::v1::NodeFacts;
use tracing::debug;

/// The kernel's identifier of the current boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// The OS release file, relative to a root.
pub const OS_RELEASE: &str = "etc/os-release";
/// The machine id file, relative to a root.
pub const MACHINE_ID: &str = "etc/machine-id";

/// Collects the node's facts, reading files under `root` first.
pub fn collect(root: &Path) -> NodeFacts {
    NodeFacts {
        hostname: host_name(),
        os: read_under(root, OS_RELEASE)
            .and_then(|text| os_release_value(&text, "PRETTY_NAME"))
            .unwrap_or_default(),
        kernel: kernel_release(),
        machine_id: read_under(root, MACHINE_ID)
            .map(|id| id.trim().to_string())
            .unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        agent_version: crate::AGENT_VERSION.to_string(),
    }
}

/// The host name, empty if it cannot be read.
pub fn host_name() -> String {
    hostname::get()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The current boot's id, empty if the kernel does not expose it.
pub fn boot_id() -> String {
    match std::fs::read_to_string(BOOT_ID_PATH) {
        Ok(id) => id.trim().to_string(),
        Err(error) => {
            debug!(path = BOOT_ID_PATH, %error, "boot id unavailable");
            String::new()
        }
    }
}

/// The value of `key` in an os-release text, unquoted.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().split_once('='))
        .find(|(name, _)| *name == key)
        .map(|(_, value)| value.trim().trim_matches(['"', '\'']).to_string())
}

/// Reads `relative` under `root`, falling back to the host's copy.
fn read_under(root: &Path, relative: &str) -> Option<String> {
    std::fs::read_to_string(root.join(relative))
        .or_else(|_| std::fs::read_to_string(Path::new("/").join(relative)))
        .ok()
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|uts| uts.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quoted_and_bare_os_release_values() {
        let text = "NAME=Debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            os_release_value(text, "PRETTY_NAME").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os_release_value(text, "ID").as_deref(), Some("debian"));
        assert_eq!(os_release_value(text, "VERSION"), None);
    }

    #[test]
    fn facts_prefer_files_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join(OS_RELEASE), "PRETTY_NAME='Test OS 1'\n").unwrap();
        std::fs::write(root.path().join(MACHINE_ID), "0123abcd\n").unwrap();
        let facts = collect(root.path());
        assert_eq!(facts.os, "Test OS 1");
        assert_eq!(facts.machine_id, "0123abcd");
        assert_eq!(facts.agent_version, crate::AGENT_VERSION);
    }
}
