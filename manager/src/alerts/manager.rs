//! Alerts about the manager itself: the always-firing heartbeat that lets Alertmanager notice
//! a dead manager, and failing fleet store calls.

use std::time::Duration;

use time::OffsetDateTime;

use super::model::{Alert, MANAGER_CERTIFICATE_EXPIRING, MANAGER_HEARTBEAT, MANAGER_STORE_ERRORS};
use crate::identity::Expiry;
use crate::records::rfc3339;

/// `OpiManagerStoreErrors` keeps firing this long after the last store error.
pub const STORE_ERRORS_HOLD: Duration = Duration::from_secs(5 * 60);

/// The dead-man's switch: firing for as long as the manager runs and pushes. It carries no
/// replica label, so the heartbeats of several manager replicas (not supported yet) would
/// merge into one alert and hide the death of all but one.
pub fn heartbeat(fleet: &str, started_at: OffsetDateTime) -> Alert {
    let description = format!(
        "always firing while the manager of fleet {fleet} runs (started {}); route it to a \
         dead-man's-switch receiver, which must page when these notifications stop",
        rfc3339(started_at)
    );
    Alert::new(MANAGER_HEARTBEAT, fleet, "none", started_at).describe(
        format!("the OPI manager of fleet {fleet} is alive"),
        description,
    )
}

/// One alert per manager certificate or CA within its warning threshold: a CA months before
/// its expiry, the server certificate once it is past its renewal point (renewal failing).
pub fn certificates(fleet: &str, expiries: &[Expiry]) -> Vec<Alert> {
    expiries
        .iter()
        .filter(|expiry| expiry.warning)
        .map(|expiry| {
            let severity = if expiry.what == "server" { "critical" } else { "warning" };
            let until = rfc3339(expiry.not_after);
            let description = match expiry.what {
                "server" => format!("the manager's server certificate ({}) is past its renewal point and expires at {until}; agents and operators cannot connect after that; see the manager's log for why renewal fails", expiry.subject),
                _ => format!("{} ({}) expires at {until}; every certificate it signs stops working then: replace it before", expiry.what, expiry.subject),
            };
            Alert::new(MANAGER_CERTIFICATE_EXPIRING, fleet, severity, expiry.not_after)
                .label("certificate", expiry.what)
                .describe(
                    format!("the {} of fleet {fleet} expires at {until}", expiry.what),
                    description,
                )
        })
        .collect()
}

/// Follows the store error counter: an episode starts at the first increase and ends
/// [`STORE_ERRORS_HOLD`] after the last.
#[derive(Debug, Default)]
pub struct StoreErrorWatch {
    seen: u64,
    episode: Option<Episode>,
}

/// Store errors since the episode began.
#[derive(Debug)]
struct Episode {
    first_at: OffsetDateTime,
    last_at: OffsetDateTime,
    errors: u64,
}

impl StoreErrorWatch {
    /// Takes the counter's value at `now`.
    pub fn observe(&mut self, total: u64, now: OffsetDateTime) {
        let new = total.saturating_sub(self.seen);
        self.seen = total;
        if let Some(episode) = &self.episode {
            if now - episode.last_at >= STORE_ERRORS_HOLD {
                self.episode = None;
            }
        }
        if new == 0 {
            return;
        }
        let episode = self.episode.get_or_insert(Episode {
            first_at: now,
            last_at: now,
            errors: 0,
        });
        episode.last_at = now;
        episode.errors += new;
    }

    /// The alert, while an episode lasts.
    pub fn alert(&self, fleet: &str) -> Option<Alert> {
        let episode = self.episode.as_ref()?;
        let description = format!(
            "{} fleet store calls failed since {}, the last at {}; state changes may not be \
             saved: see the manager's log for the store and the error",
            episode.errors,
            rfc3339(episode.first_at),
            rfc3339(episode.last_at),
        );
        let summary = format!("fleet store calls are failing on the manager of fleet {fleet}");
        Some(
            Alert::new(MANAGER_STORE_ERRORS, fleet, "critical", episode.first_at)
                .describe(summary, description),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-03-01 12:00:00 UTC);

    #[test]
    fn store_errors_fire_from_the_first_increase_until_quiet_for_the_hold() {
        let mut watch = StoreErrorWatch::default();
        watch.observe(0, NOW);
        assert!(watch.alert("prod").is_none());

        watch.observe(2, NOW + Duration::from_secs(1));
        watch.observe(3, NOW + Duration::from_secs(60));
        let alert = watch.alert("prod").expect("firing");
        assert_eq!(alert.name(), MANAGER_STORE_ERRORS);
        assert_eq!(alert.starts_at, NOW + Duration::from_secs(1));
        assert!(alert.annotations["description"].starts_with("3 fleet store calls failed"));

        watch.observe(3, NOW + Duration::from_secs(60) + STORE_ERRORS_HOLD);
        assert!(watch.alert("prod").is_none(), "quiet for the hold");
    }

    #[test]
    fn the_heartbeat_has_severity_none_and_starts_with_the_manager() {
        let alert = heartbeat("prod", NOW);
        assert_eq!(alert.name(), MANAGER_HEARTBEAT);
        assert_eq!(alert.labels["severity"], "none");
        assert_eq!(alert.starts_at, NOW);
        assert!(!alert.labels.contains_key("node"));
    }

    #[test]
    fn an_expiring_ca_raises_a_warning_and_a_server_past_renewal_a_critical_alert() {
        let expiry = |what, warning| Expiry {
            what,
            subject: format!("{what} of prod"),
            not_after: NOW + time::Duration::days(90),
            warning,
        };
        let expiries = [
            expiry("server", true),
            expiry("issuing-ca", true),
            expiry("root-ca", false),
        ];
        let alerts = certificates("prod", &expiries);
        let labels: Vec<(&str, &str)> = alerts
            .iter()
            .map(|a| {
                (
                    a.labels["certificate"].as_str(),
                    a.labels["severity"].as_str(),
                )
            })
            .collect();
        assert_eq!(labels, [("server", "critical"), ("issuing-ca", "warning")]);
        assert_eq!(alerts[1].labels["alertname"], MANAGER_CERTIFICATE_EXPIRING);
        assert!(alerts[1].annotations["description"].contains("issuing-ca of prod"));
    }
}
