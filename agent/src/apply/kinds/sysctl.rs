//! Sysctls: the live value under `/proc/sys` (or the directory given with `--proc-sys`), read
//! and written by dotted name. The file under `/etc/sysctl.d` is written by the engine.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where kernel parameters live by default.
pub const DEFAULT_PROC_SYS: &str = "/proc/sys";

/// The file of sysctl `key` under `proc_sys` (`net.ipv4.ip_forward` → `net/ipv4/ip_forward`).
pub fn live_path(proc_sys: &Path, key: &str) -> PathBuf {
    key.split('.')
        .fold(proc_sys.to_path_buf(), |path, part| path.join(part))
}

/// The live value of `key`, whitespace normalised; `None` when this kernel has no such sysctl.
pub fn read_live(proc_sys: &Path, key: &str) -> io::Result<Option<String>> {
    match fs::read_to_string(live_path(proc_sys, key)) {
        Ok(text) => Ok(Some(normalise(&text))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Sets the live value of `key`.
pub fn write_live(proc_sys: &Path, key: &str, value: &str) -> io::Result<()> {
    fs::write(live_path(proc_sys, key), format!("{value}\n"))
}

/// A value with its whitespace runs made single spaces (the kernel prints tabs).
pub fn normalise(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_values_are_read_and_written_by_dotted_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = live_path(dir.path(), "net.ipv4.ip_local_port_range");
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, "32768\t60999\n").unwrap();
        assert_eq!(
            read_live(dir.path(), "net.ipv4.ip_local_port_range")
                .unwrap()
                .unwrap(),
            "32768 60999"
        );
        write_live(dir.path(), "net.ipv4.ip_local_port_range", "40000 50000").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "40000 50000\n");
        assert_eq!(read_live(dir.path(), "net.ipv4.nope").unwrap(), None);
    }
}
