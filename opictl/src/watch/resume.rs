//! The pure part of following a watch across broken connections: which request continues it,
//! which events were already printed, how long to wait, and which failures are worth a retry.

use std::time::Duration;

use opi_proto::v1::WatchRequest;

use crate::error::Error;

/// Wait before the first reconnection.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between two reconnections.
pub const MAX_RETRY: Duration = Duration::from_secs(10);

/// Where a watch stands: the request that started it and the last event it received.
#[derive(Clone, Debug)]
pub struct Resume {
    first: WatchRequest,
    last: Option<u64>,
}

/// Waits between reconnections: [`FIRST_RETRY`], doubling up to [`MAX_RETRY`].
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

/// What to do after a watch failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The manager or the network may come back: reconnect.
    Retry,
    /// Asking again would fail the same way: stop and report.
    GiveUp,
}

impl Resume {
    /// A watch about to send `first`.
    pub fn new(first: WatchRequest) -> Self {
        Self { first, last: None }
    }

    /// The request that continues the watch: the same filters, from the last event received,
    /// without replaying anything; the first request while nothing was received.
    pub fn request(&self) -> WatchRequest {
        match self.last {
            Some(revision) => WatchRequest {
                since_revision: revision,
                replay_last: 0,
                ..self.first.clone()
            },
            None => self.first.clone(),
        }
    }

    /// Records an event; `false` when it is not after what the watch has already covered,
    /// so that an event the manager sends twice is printed once.
    pub fn receive(&mut self, revision: u64) -> bool {
        if revision <= self.request().since_revision {
            return false;
        }
        self.last = Some(revision);
        true
    }

    /// The revision the next request starts after; 0 for only new events.
    pub fn after(&self) -> u64 {
        self.request().since_revision
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_RETRY }
    }
}

impl Backoff {
    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(MAX_RETRY);
        delay
    }

    /// Starts again from [`FIRST_RETRY`], once a watch is open again.
    pub fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}

/// Whether a failed watch is worth reopening: yes when the manager could not be reached or
/// went away, no when it refused the request or opictl's own setup is wrong.
pub fn verdict(error: &Error) -> Verdict {
    match error {
        Error::Connect { .. } | Error::Lost { .. } => Verdict::Retry,
        Error::Refused { code, .. } => code_verdict(*code),
        Error::BundleMissing { .. }
        | Error::NoHome
        | Error::ReadBundle(_)
        | Error::BundleTls { .. }
        | Error::CertificateExpired { .. }
        | Error::BadEndpoint(_)
        | Error::Usage(_)
        | Error::ServerRefused { .. }
        | Error::EventsGone { .. }
        | Error::ReadProfile { .. }
        | Error::ProfileTooLarge { .. }
        | Error::SignerKey { .. }
        | Error::Output(_)
        | Error::WriteReport { .. }
        | Error::ReadReport { .. }
        | Error::BadReport(_)
        | Error::Unverified(_)
        | Error::ReadFile { .. }
        | Error::WriteFile { .. }
        | Error::BadCheckpoint { .. }
        | Error::AuditTampered { .. }
        | Error::BadLoginCode
        | Error::MakeKey(_) => Verdict::GiveUp,
    }
}

/// The error to report for a failed watch that started after revision `after`: a refusal for
/// a precondition means the manager no longer keeps those events.
pub fn explain(error: Error, after: u64) -> Error {
    match error {
        Error::Refused {
            code: tonic::Code::FailedPrecondition,
            message,
            ..
        } => Error::EventsGone { after, message },
        other => other,
    }
}

/// Codes of a manager shutting down, restarting or overloaded are retried; the others say
/// the request itself is refused.
fn code_verdict(code: tonic::Code) -> Verdict {
    use tonic::Code;
    match code {
        Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unavailable => Verdict::Retry,
        Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::DataLoss
        | Code::Unauthenticated => Verdict::GiveUp,
    }
}

#[cfg(test)]
mod tests {
    use opi_proto::v1::Severity;

    use super::*;

    fn filtered(since_revision: u64, replay_last: u32) -> WatchRequest {
        WatchRequest {
            since_revision,
            pools: vec!["workers".into()],
            nodes: vec!["worker-1".into()],
            kinds: vec!["condition".into()],
            min_severity: Severity::Warning as i32,
            replay_last,
        }
    }

    #[test]
    fn before_any_event_the_first_request_is_sent_again() {
        let resume = Resume::new(filtered(40, 0));

        assert_eq!(resume.request(), filtered(40, 0));
        assert_eq!(resume.after(), 40);
    }

    #[test]
    fn after_events_the_watch_resumes_after_the_last_one_with_the_same_filters() {
        let mut resume = Resume::new(filtered(40, 0));
        assert!(resume.receive(41));
        assert!(resume.receive(57));

        assert_eq!(resume.request(), filtered(57, 0));
    }

    #[test]
    fn a_replay_is_not_asked_for_again_once_events_arrived() {
        let mut resume = Resume::new(filtered(0, 20));
        assert_eq!(resume.request(), filtered(0, 20));

        assert!(resume.receive(980));
        assert_eq!(resume.request(), filtered(980, 0));
    }

    #[test]
    fn events_already_covered_are_refused_so_none_prints_twice() {
        let mut resume = Resume::new(filtered(40, 0));

        assert!(!resume.receive(40), "the request asked for events after 40");
        assert!(resume.receive(41));
        assert!(!resume.receive(41));
        assert!(!resume.receive(39));
        assert!(resume.receive(42));
        assert_eq!(resume.after(), 42);
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_ten_then_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..6).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);

        backoff.reset();
        assert_eq!(backoff.next_delay(), FIRST_RETRY);
    }

    #[test]
    fn lost_connections_and_unavailable_managers_are_retried() {
        let lost = Error::failed(
            "to watch events",
            "https://m1:7443",
            tonic::Status::from_error(Box::new(std::io::Error::other("reset"))),
        );
        let unavailable = Error::refused("to watch events", tonic::Status::unavailable("bye"));
        let truncated = Error::refused("to watch events", tonic::Status::unknown("no trailer"));

        assert_eq!(verdict(&lost), Verdict::Retry);
        assert_eq!(verdict(&unavailable), Verdict::Retry);
        assert_eq!(verdict(&truncated), Verdict::Retry);
    }

    #[test]
    fn refusals_are_not_retried() {
        let denied = Error::refused("to watch events", tonic::Status::permission_denied("no"));
        let invalid = Error::refused("to watch events", tonic::Status::invalid_argument("kind"));

        assert_eq!(verdict(&denied), Verdict::GiveUp);
        assert_eq!(verdict(&invalid), Verdict::GiveUp);
    }

    #[test]
    fn failed_precondition_means_the_events_are_gone_and_keeps_the_managers_message() {
        let status = tonic::Status::failed_precondition("oldest kept event is 5001");
        let error = explain(Error::refused("to watch events", status), 12);

        assert!(
            matches!(error, Error::EventsGone { after: 12, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("oldest kept event is 5001"),
            "{error}"
        );
        assert_eq!(error.exit_code(), crate::error::EXIT_FAILURE);
        assert_eq!(verdict(&error), Verdict::GiveUp);
    }
}
