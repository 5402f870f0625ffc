//! One module per kind of change. The engine writes every file the same way; what differs per
//! kind lives here: live kernel values (sysctl), loaded modules (modules), modes and owners
//! (files), keys edited in a file the image owns (login_defs), validation by the real program
//! when it is installed (sshd, sudo, containerd), and the health checks that tell whether a
//! restarted service came back (kubelet, containerd). The other settings drop-ins (shell,
//! core dumps, password quality) need nothing but the engine's atomic write.

pub mod containerd;
pub mod files;
pub mod kubelet;
pub mod login_defs;
pub mod modules;
pub mod sshd;
pub mod sudo;
pub mod sysctl;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Directories searched for the programs that validate a configuration.
pub const PROGRAM_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The path of program `name`, if installed.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(PROGRAM_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `program` on `content` written to a private temporary file, passing the file's path
/// where `args` says `{}`; `Err` carries what the program said when it refused.
pub fn check_with(program: &Path, args: &[&str], content: &str) -> Result<(), String> {
    let dir =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let file = dir.path().join("candidate");
    std::fs::write(&file, content).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let file_arg = file.to_string_lossy().to_string();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "{}" { file_arg.as_str() } else { a })
        .collect();
    let output = Command::new(program)
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Err(format!(
        "{} {} refused it ({}): {said}",
        program.display(),
        args.join(" "),
        output.status
    ))
}
