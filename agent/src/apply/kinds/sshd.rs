//! The sshd drop-in: checked by `sshd -t -f` when sshd is installed; otherwise its keys were
//! already checked against the profile's allowlist, and that is all.

use super::{check_with, find_program};

/// Checks the drop-in's content; `Ok(note)` says how it was checked.
pub fn validate(content: &str) -> Result<String, String> {
    match find_program("sshd") {
        Some(sshd) => {
            check_with(&sshd, &["-t", "-f", "{}"], content)?;
            Ok(format!("checked with {} -t", sshd.display()))
        }
        None => Ok("sshd is not installed: keys checked against the allowlist only".to_string()),
    }
}
