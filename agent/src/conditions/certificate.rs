//! `CertificateExpiring`: how much of the node certificate's lifetime is left. The agent
//! renews it at 60–80 % of its life, so a warning means renewal is overdue.

use std::sync::Arc;

use opi_proto::v1::Severity;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::config::HealthConfig;
use super::{grade_below, CollectFuture, Collector, Observation};
use crate::cert::LeafInfo;
use crate::output::timestamp;

/// The condition type.
pub const CERTIFICATE_EXPIRING: &str = "CertificateExpiring";

/// The validity period of the node certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// Checks the certificate the agent currently holds; reports nothing before enrollment.
#[derive(Debug)]
pub struct CertificateCollector {
    current: watch::Receiver<Option<Validity>>,
    warning: f64,
    critical: f64,
}

impl Validity {
    /// The validity of a loaded certificate.
    pub fn of(leaf: &LeafInfo) -> Self {
        Self {
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        }
    }

    /// Percentage of the lifetime left at `now`; 0 once expired.
    pub fn remaining_percent(&self, now: OffsetDateTime) -> f64 {
        let lifetime = (self.not_after - self.not_before).as_seconds_f64();
        let left = (self.not_after - now).as_seconds_f64();
        match lifetime > 0.0 {
            true => (left / lifetime * 100.0).clamp(0.0, 100.0),
            false => 0.0,
        }
    }
}

impl CertificateCollector {
    /// A check of the certificate `current` holds, with the thresholds of `config`.
    pub fn new(config: &HealthConfig, current: watch::Receiver<Option<Validity>>) -> Self {
        Self {
            current,
            warning: config.certificate.warning_remaining_percent,
            critical: config.certificate.critical_remaining_percent,
        }
    }

    /// The condition at `now`; `None` when the node holds no certificate yet.
    pub fn observe(&self, now: OffsetDateTime) -> Option<Observation> {
        let validity = (*self.current.borrow())?;
        Some(self.judge(validity, now))
    }

    fn judge(&self, validity: Validity, now: OffsetDateTime) -> Observation {
        let percent = validity.remaining_percent(now);
        let until = timestamp(validity.not_after);
        if validity.not_after <= now {
            let message = format!(
                "the node certificate expired at {until}; the manager refuses it: re-enroll the node"
            );
            let severity = Severity::Critical;
            return Observation::problem(
                CERTIFICATE_EXPIRING,
                "",
                severity,
                "CertificateExpired",
                message,
            );
        }
        let left =
            std::time::Duration::from_secs((validity.not_after - now).whole_seconds() as u64);
        let message = format!(
            "the node certificate expires at {until}, in {} ({percent:.1} % of its lifetime left); warning below {} %, critical below {} %",
            humantime::format_duration(left),
            self.warning,
            self.critical,
        );
        match grade_below(percent, self.warning, self.critical) {
            None => Observation::ok(CERTIFICATE_EXPIRING, "", "CertificateValid", message),
            Some(severity) => {
                let message = format!("{message}; renewal is overdue: see the agent's log");
                let reason = "CertificateRenewalOverdue";
                Observation::problem(CERTIFICATE_EXPIRING, "", severity, reason, message)
            }
        }
    }
}

impl Collector for CertificateCollector {
    fn kinds(&self) -> Vec<&'static str> {
        vec![CERTIFICATE_EXPIRING]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        Box::pin(async move {
            Ok(self
                .observe(OffsetDateTime::now_utc())
                .into_iter()
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_proto::v1::ConditionStatus;
    use time::macros::datetime;

    const NOT_BEFORE: OffsetDateTime = datetime!(2025-01-01 00:00 UTC);
    const NOT_AFTER: OffsetDateTime = datetime!(2025-01-02 00:00 UTC);

    fn collector(validity: Option<Validity>) -> CertificateCollector {
        let (_, current) = watch::channel(validity);
        CertificateCollector::new(&HealthConfig::default(), current)
    }

    fn day() -> Option<Validity> {
        Some(Validity {
            not_before: NOT_BEFORE,
            not_after: NOT_AFTER,
        })
    }

    #[test]
    fn fresh_certificate_is_valid() {
        let seen = collector(day())
            .observe(datetime!(2025-01-01 12:00 UTC))
            .unwrap();
        assert_eq!(seen.status, ConditionStatus::Ok);
        assert!(
            seen.message.contains("50.0 % of its lifetime left"),
            "{}",
            seen.message
        );
        assert!(seen.message.contains("in 12h"), "{}", seen.message);
    }

    #[test]
    fn certificate_past_its_renewal_window_is_a_warning_then_critical() {
        let check = collector(day());
        // 19 % of a day is left at 19:26:24.
        let warning = check.observe(datetime!(2025-01-01 19:30 UTC)).unwrap();
        assert_eq!(warning.severity, Severity::Warning, "{}", warning.message);
        assert_eq!(warning.reason, "CertificateRenewalOverdue");
        let critical = check.observe(datetime!(2025-01-01 23:00 UTC)).unwrap();
        assert_eq!(
            critical.severity,
            Severity::Critical,
            "{}",
            critical.message
        );
    }

    #[test]
    fn expired_certificate_is_critical_and_says_to_re_enroll() {
        let seen = collector(day())
            .observe(datetime!(2025-01-03 00:00 UTC))
            .unwrap();
        assert_eq!(seen.severity, Severity::Critical);
        assert_eq!(seen.reason, "CertificateExpired");
        assert!(seen.message.contains("re-enroll"), "{}", seen.message);
    }

    #[test]
    fn a_node_without_certificate_reports_nothing() {
        assert_eq!(collector(None).observe(NOT_BEFORE), None);
    }

    #[test]
    fn a_renewed_certificate_is_checked_from_then_on() {
        let (sender, current) = watch::channel(day());
        let check = CertificateCollector::new(&HealthConfig::default(), current);
        let now = datetime!(2025-01-01 23:00 UTC);
        assert_eq!(check.observe(now).unwrap().severity, Severity::Critical);
        sender.send_replace(Some(Validity {
            not_before: datetime!(2025-01-01 22:00 UTC),
            not_after: datetime!(2025-01-02 22:00 UTC),
        }));
        assert_eq!(check.observe(now).unwrap().status, ConditionStatus::Ok);
    }
}
