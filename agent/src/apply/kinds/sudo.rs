//! The sudo `Defaults` drop-in: checked by `visudo -c -f` when sudo is installed, so that a
//! drop-in sudo would refuse (and with it every sudo call) is never written; otherwise its
//! keys were already checked against the profile's allowlist.

use super::{check_with, find_program};

/// Checks the drop-in's content; `Ok(note)` says how it was checked.
pub fn validate(content: &str) -> Result<String, String> {
    match find_program("visudo") {
        Some(visudo) => {
            check_with(&visudo, &["-c", "-q", "-f", "{}"], content)?;
            Ok(format!("checked with {} -c", visudo.display()))
        }
        None => Ok("sudo is not installed: keys checked against the allowlist only".to_string()),
    }
}
