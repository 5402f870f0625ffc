//! `PidPressure`: tasks (processes and threads, each holding a pid) against the lower of the
//! kernel's `pid_max` and `threads-max`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use opi_proto::v1::Severity;

use super::config::HealthConfig;
use super::{blocking, grade_at_least, CollectFuture, Collector, NodeFiles, Observation};

/// The condition type.
pub const PID_PRESSURE: &str = "PidPressure";
/// Load averages, then `RUNNING/TASKS`: the count of tasks without listing `/proc`.
pub const LOADAVG: &str = "/proc/loadavg";
/// Highest pid plus one.
pub const PID_MAX: &str = "/proc/sys/kernel/pid_max";
/// Most threads the kernel allows.
pub const THREADS_MAX: &str = "/proc/sys/kernel/threads-max";

/// Checks the number of tasks.
#[derive(Debug)]
pub struct PidCollector {
    loadavg: PathBuf,
    pid_max: PathBuf,
    threads_max: PathBuf,
    warning: f64,
    critical: f64,
}

/// Tasks and the kernel's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tasks {
    /// Tasks now.
    pub count: u64,
    /// `pid_max`.
    pub pid_max: u64,
    /// `threads-max`.
    pub threads_max: u64,
}

/// Why the counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PidsError {
    /// A file cannot be read.
    #[error("cannot read {path}")]
    ReadCounter {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold the number expected.
    #[error("{path} does not hold a task count or limit: {text:?}")]
    ParseCounter {
        /// The file concerned.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
}

impl PidCollector {
    /// A check with the thresholds of `config`.
    pub fn new(config: &HealthConfig, files: &NodeFiles) -> Self {
        Self {
            loadavg: files.kernel(LOADAVG),
            pid_max: files.kernel(PID_MAX),
            threads_max: files.kernel(THREADS_MAX),
            warning: config.pids.warning_used_percent,
            critical: config.pids.critical_used_percent,
        }
    }

    /// Reads the counters and judges them.
    pub fn observe(&self) -> Result<Observation, PidsError> {
        let tasks = Tasks {
            count: read_number(&self.loadavg, task_count)?,
            pid_max: read_number(&self.pid_max, |text| text.trim().parse().ok())?,
            threads_max: read_number(&self.threads_max, |text| text.trim().parse().ok())?,
        };
        Ok(self.judge(tasks))
    }

    fn judge(&self, tasks: Tasks) -> Observation {
        let limit = tasks.pid_max.min(tasks.threads_max);
        let percent = match limit {
            0 => 100.0,
            limit => tasks.count as f64 * 100.0 / limit as f64,
        };
        let message = format!(
            "{} tasks of {limit} allowed ({percent:.1} %; pid_max {}, threads-max {}); warning at {} %, critical at {} %",
            tasks.count, tasks.pid_max, tasks.threads_max, self.warning, self.critical,
        );
        match grade_at_least(percent, self.warning, self.critical) {
            None => Observation::ok(PID_PRESSURE, "", "PidsAvailable", message),
            Some(severity) => {
                let reason = match severity {
                    Severity::Critical => "PidsExhausted",
                    _ => "PidsRunningOut",
                };
                Observation::problem(PID_PRESSURE, "", severity, reason, message)
            }
        }
    }
}

impl Collector for PidCollector {
    fn kinds(&self) -> Vec<&'static str> {
        vec![PID_PRESSURE]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        blocking(move || Ok(vec![self.observe()?]))
    }
}

/// The task count in loadavg text: the number after the slash of the fourth field.
pub fn task_count(loadavg: &str) -> Option<u64> {
    let field = loadavg.split_whitespace().nth(3)?;
    field.split_once('/')?.1.parse().ok()
}

fn read_number(path: &Path, parse: impl Fn(&str) -> Option<u64>) -> Result<u64, PidsError> {
    let text = std::fs::read_to_string(path).map_err(|source| PidsError::ReadCounter {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).ok_or_else(|| PidsError::ParseCounter {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_proto::v1::ConditionStatus;

    fn staged(
        loadavg: &str,
        pid_max: &str,
        threads_max: &str,
    ) -> (tempfile::TempDir, PidCollector) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/sys/kernel")).unwrap();
        std::fs::write(root.path().join("proc/loadavg"), loadavg).unwrap();
        std::fs::write(root.path().join("proc/sys/kernel/pid_max"), pid_max).unwrap();
        std::fs::write(root.path().join("proc/sys/kernel/threads-max"), threads_max).unwrap();
        let collector = PidCollector::new(&HealthConfig::default(), &NodeFiles::new(root.path()));
        (root, collector)
    }

    #[test]
    fn task_count_is_the_fourth_loadavg_field() {
        assert_eq!(task_count("0.10 0.20 0.30 2/345 6789\n"), Some(345));
        assert_eq!(task_count("0.10 0.20\n"), None);
    }

    #[test]
    fn tasks_are_graded_against_the_lower_limit() {
        let (_root, collector) = staged("0 0 0 1/850 1\n", "32768\n", "1000\n");
        let seen = collector.observe().unwrap();
        assert_eq!(seen.severity, Severity::Warning, "{}", seen.message);
        assert!(
            seen.message.starts_with("850 tasks of 1000 allowed"),
            "{}",
            seen.message
        );
        let (_root, collector) = staged("0 0 0 1/100 1\n", "32768\n", "1000\n");
        assert_eq!(collector.observe().unwrap().status, ConditionStatus::Ok);
    }

    #[test]
    fn a_counter_that_is_not_a_number_fails_the_check() {
        let (_root, collector) = staged("0 0 0 1/100 1\n", "lots\n", "1000\n");
        let error = collector.observe().unwrap_err();
        assert!(error.to_string().contains("pid_max"), "{error}");
    }

    #[test]
    fn this_host_has_tasks_below_its_limits() {
        let collector = PidCollector::new(&HealthConfig::default(), &NodeFiles::new("/".as_ref()));
        let seen = collector.observe().unwrap();
        assert_eq!(seen.status, ConditionStatus::Ok, "{}", seen.message);
    }
}
