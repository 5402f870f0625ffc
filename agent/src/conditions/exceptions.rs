//! `HardeningExceptionExpired`: an exception of the applied profile (a baseline item lifted
//! with a reason, an approver and a last day) is past its day, so the node no longer meets its
//! baseline with an approval on record. A warning: someone must renew the exception or remove
//! it, and the next generation with it expired is refused.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use opi_proto::v1::Severity;
use time::OffsetDateTime;

use super::{blocking, CollectFuture, Collector, Observation};
use crate::apply::kinds::sysctl::DEFAULT_PROC_SYS;
use crate::apply::node::{Node, DEFAULT_DBUS_SOCKET};
use crate::apply::record::AppliedRecord;
use crate::paths::StatePaths;

/// The condition type.
pub const HARDENING_EXCEPTION_EXPIRED: &str = "HardeningExceptionExpired";
/// Most exceptions named in the message; the rest are counted.
pub const MAX_NAMED: usize = 10;

/// Reads the exceptions of the last committed apply.
#[derive(Debug)]
pub struct ExceptionCollector {
    node: Node,
}

impl ExceptionCollector {
    /// A check of the node at `paths`.
    pub fn new(paths: &StatePaths) -> Self {
        let proc_sys = PathBuf::from(DEFAULT_PROC_SYS);
        let dbus = PathBuf::from(DEFAULT_DBUS_SOCKET);
        Self {
            node: Node::new(paths, &proc_sys, &dbus),
        }
    }

    /// Checks as of `today`.
    pub fn observe(&self, today: time::Date) -> io::Result<Observation> {
        let kind = HARDENING_EXCEPTION_EXPIRED;
        let promise = AppliedRecord::load(&self.node)?.and_then(|record| record.promise);
        let Some(promise) = promise else {
            let message = "no hardening baseline was applied on this node".to_string();
            return Ok(Observation::ok(kind, "", "NoBaseline", message));
        };
        let items = promise.rules.iter().flat_map(|rule| {
            rule.items
                .iter()
                .filter_map(move |item| Some((rule, item, item.exception.as_ref()?)))
        });
        let (mut valid, mut expired) = (0, Vec::new());
        for (rule, item, exception) in items {
            match exception.expired_on(today) {
                true => expired.push(format!(
                    "{} {} expired {} (approved by {})",
                    rule.number,
                    item.id,
                    exception.expires.as_deref().unwrap_or_default(),
                    exception.approver.as_deref().unwrap_or("nobody on record"),
                )),
                false => valid += 1,
            }
        }
        if expired.is_empty() {
            let message = format!("{valid} exception(s) of {} hold", promise.baseline);
            return Ok(Observation::ok(kind, "", "ExceptionsValid", message));
        }
        let mut message = format!(
            "{} exception(s) of {} expired: {}",
            expired.len(),
            promise.baseline,
            expired
                .iter()
                .take(MAX_NAMED)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
        if expired.len() > MAX_NAMED {
            message.push_str(&format!("; and {} more", expired.len() - MAX_NAMED));
        }
        message.push_str("; renew them in the pool's profile with a new date, or remove them");
        Ok(Observation::problem(
            kind,
            "",
            Severity::Warning,
            "ExceptionExpired",
            message,
        ))
    }
}

impl Collector for ExceptionCollector {
    fn kinds(&self) -> Vec<&'static str> {
        vec![HARDENING_EXCEPTION_EXPIRED]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        blocking(move || Ok(vec![self.observe(OffsetDateTime::now_utc().date())?]))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use opi_profile::{Floor, Profile};
    use opi_proto::v1::ConditionStatus;
    use time::macros::date;

    use super::*;
    use crate::apply::engine;
    use crate::apply::verify::Verifier;
    use crate::conditions::config::HealthConfig;
    use crate::conditions::NodeFiles;

    const PROFILE: &str = "apiVersion: opi.fleet/v1
kind: NodeProfile
hardening:
  baseline: anssi-bp028-minimal
  exceptions:
    - {item: module/usb-storage, reason: install media, approver: secops, expires: \"2030-06-30\"}
    - {item: module/firewire-core, reason: lab hardware}
";

    #[tokio::test]
    async fn an_exception_past_its_day_is_a_warning_naming_it_and_its_approver() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(dir.path(), Path::new(crate::paths::DEFAULT_STATE_DIR));
        let collector = ExceptionCollector::new(&paths);
        let none = collector.observe(date!(2030 - 01 - 01)).unwrap();
        assert_eq!(
            (none.status, none.reason),
            (ConditionStatus::Ok, "NoBaseline")
        );

        let desired = Profile::from_yaml(PROFILE)
            .unwrap()
            .desired_state(&Floor::default())
            .unwrap();
        let health = HealthConfig::parse(Path::new("h"), "version = 1\nchecks = []\n").unwrap();
        let verifier = Verifier {
            health,
            files: NodeFiles::new(dir.path()),
            manager: None,
        };
        engine::apply(&collector.node, &desired, "sha", &verifier)
            .await
            .unwrap();

        let valid = collector.observe(date!(2030 - 06 - 30)).unwrap();
        assert_eq!(valid.status, ConditionStatus::Ok, "{}", valid.message);
        assert!(
            valid.message.starts_with("2 exception(s)"),
            "{}",
            valid.message
        );
        let expired = collector.observe(date!(2030 - 07 - 01)).unwrap();
        assert_eq!(expired.status, ConditionStatus::Problem);
        assert_eq!(expired.severity, Severity::Warning);
        assert!(
            expired
                .message
                .contains("R62 module/usb-storage expired 2030-06-30 (approved by secops)"),
            "{}",
            expired.message
        );
        assert!(!expired.message.contains("firewire"), "{}", expired.message);
    }
}
