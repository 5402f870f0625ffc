//! Disk health from `smartctl`, when it is installed: `smartctl --scan --json` lists the
//! disks, then `smartctl -H --json DISK` gives each one's overall verdict. This is a fixed,
//! read-only program the agent runs for its own checks, never a command from the manager.
//!
//! Shortcoming: smartctl is not installed on the project's test machines, so this is tested
//! only against fixture JSON and a stand-in program, never against a real disk.

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use opi_proto::v1::Severity;
use serde_json::Value;
use tokio::process::Command;
use tokio::task::JoinSet;

use super::hardware::HARDWARE_ERRORS;
use super::Observation;

/// The program looked for on `PATH`.
pub const SMARTCTL: &str = "smartctl";
/// Time one run of smartctl has; disks are asked concurrently after the scan.
pub const SMARTCTL_TIMEOUT: Duration = Duration::from_millis(800);

/// Why smartctl gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum SmartError {
    /// The program could not be started.
    #[error("cannot run {program} {}", args.join(" "))]
    RunSmartctl {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The program did not finish in time (it is killed).
    #[error("{program} {} did not finish within {after:?}", args.join(" "))]
    TimedOut {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// The time allowed.
        after: Duration,
    },
    /// The output is not JSON.
    #[error("{program} {} printed no JSON", args.join(" "))]
    ParseOutput {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// `smartctl` on `PATH`, if any.
pub fn find() -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(SMARTCTL))
        .find(|candidate| is_executable(candidate))
}

/// The verdict of every disk smartctl finds: a problem per failing disk, `UNKNOWN` for a
/// disk it could not ask, nothing for a disk without SMART.
pub async fn observe(smartctl: &Path) -> Vec<Observation> {
    let scan = match run_json(smartctl, &["--scan", "--json"]).await {
        Ok(scan) => scan,
        Err(error) => return vec![failed("smartctl", &error)],
    };
    let mut asks = JoinSet::new();
    for disk in disks(&scan) {
        let program = smartctl.to_path_buf();
        asks.spawn(async move {
            let answer = run_json(&program, &["-H", "--json", &disk]).await;
            match answer {
                Ok(health) => verdict(&disk, &health),
                Err(error) => Some(failed(&disk, &error)),
            }
        });
    }
    let mut seen: Vec<Observation> = asks.join_all().await.into_iter().flatten().collect();
    seen.sort_by(|a, b| a.subject.cmp(&b.subject));
    seen
}

/// The device names of a `--scan --json` answer.
pub fn disks(scan: &Value) -> Vec<String> {
    let devices = scan["devices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    devices
        .iter()
        .filter_map(|device| device["name"].as_str().map(str::to_string))
        .collect()
}

/// The condition of one disk from its `-H --json` answer; `None` without a SMART verdict.
pub fn verdict(disk: &str, health: &Value) -> Option<Observation> {
    let passed = health["smart_status"]["passed"].as_bool()?;
    let model = health["model_name"].as_str().unwrap_or("disk");
    if passed {
        let message = format!("{model} {disk} passes its SMART self-assessment");
        return Some(Observation::ok(
            HARDWARE_ERRORS,
            disk,
            "SmartPassed",
            message,
        ));
    }
    let message = format!("{model} {disk} FAILS its SMART self-assessment: replace it");
    let severity = Severity::Critical;
    Some(Observation::problem(
        HARDWARE_ERRORS,
        disk,
        severity,
        "SmartFailed",
        message,
    ))
}

fn failed(subject: &str, error: &SmartError) -> Observation {
    let message = crate::ErrorChain(error).to_string();
    Observation::unknown(HARDWARE_ERRORS, subject, "SmartctlFailed", message)
}

/// Runs smartctl and parses its JSON, whatever its exit status (a bit mask that is non-zero
/// for a failing disk too).
async fn run_json(program: &Path, args: &[&str]) -> Result<Value, SmartError> {
    let output = run(program, args).await?;
    serde_json::from_slice(&output.stdout).map_err(|source| SmartError::ParseOutput {
        program: program.to_path_buf(),
        args: owned(args),
        source,
    })
}

async fn run(program: &Path, args: &[&str]) -> Result<Output, SmartError> {
    let mut command = Command::new(program);
    command.args(args).kill_on_drop(true);
    match tokio::time::timeout(SMARTCTL_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(source)) => Err(SmartError::RunSmartctl {
            program: program.to_path_buf(),
            args: owned(args),
            source,
        }),
        Err(_) => Err(SmartError::TimedOut {
            program: program.to_path_buf(),
            args: owned(args),
            after: SMARTCTL_TIMEOUT,
        }),
    }
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_proto::v1::ConditionStatus;
    use serde_json::json;

    // The shapes below are those smartctl 7 prints with --json, reduced to the keys read.

    #[test]
    fn scan_lists_device_names() {
        let scan = json!({"devices": [
            {"name": "/dev/sda", "type": "scsi"},
            {"name": "/dev/nvme0", "type": "nvme"}
        ]});
        assert_eq!(disks(&scan), ["/dev/sda", "/dev/nvme0"]);
        assert!(disks(&json!({})).is_empty());
    }

    #[test]
    fn failing_self_assessment_is_critical() {
        let health = json!({"model_name": "WDC WD40", "smart_status": {"passed": false}});
        let seen = verdict("/dev/sda", &health).unwrap();
        assert_eq!(seen.status, ConditionStatus::Problem);
        assert_eq!(seen.severity, Severity::Critical);
        assert_eq!(seen.subject, "/dev/sda");
        let passing = json!({"smart_status": {"passed": true}});
        assert_eq!(
            verdict("/dev/sdb", &passing).unwrap().status,
            ConditionStatus::Ok
        );
    }

    #[test]
    fn disks_without_smart_give_no_condition() {
        let health = json!({"device": {"name": "/dev/vda"}, "smartctl": {"exit_status": 4}});
        assert_eq!(verdict("/dev/vda", &health), None);
    }

    #[tokio::test]
    async fn a_program_that_prints_no_json_leaves_the_disks_unknown() {
        // `true` stands in for smartctl: it runs and prints nothing.
        let program = PathBuf::from("/bin/true");
        let seen = observe(&program).await;
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].status, ConditionStatus::Unknown);
        assert!(
            seen[0].message.contains("--scan --json"),
            "{}",
            seen[0].message
        );
    }
}
