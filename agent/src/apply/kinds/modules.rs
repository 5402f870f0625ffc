//! Kernel module blacklists: the file under `/etc/modprobe.d` is written by the engine; here,
//! which blacklisted modules are loaded right now (a blacklist does not unload them).

use std::collections::BTreeSet;
use std::path::Path;

/// The kernel's list of loaded modules.
pub const PROC_MODULES: &str = "/proc/modules";

/// Names of the loaded modules listed in `proc_modules`, with `-` written `_` as the kernel does;
/// empty when the list cannot be read (a kernel without modules).
pub fn loaded(proc_modules: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(proc_modules)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Which of `blacklisted` are among `loaded`.
pub fn still_loaded(blacklisted: &[String], loaded: &BTreeSet<String>) -> Vec<String> {
    blacklisted
        .iter()
        .filter(|module| loaded.contains(&module.replace('-', "_")))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_modules_are_matched_with_dashes_or_underscores() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("modules");
        std::fs::write(
            &file,
            "usb_storage 81920 0 - Live 0x0\next4 1 0 - Live 0x0\n",
        )
        .unwrap();
        let loaded = loaded(&file);
        let wanted = vec!["usb-storage".to_string(), "cramfs".to_string()];
        assert_eq!(still_loaded(&wanted, &loaded), ["usb-storage"]);
    }
}
