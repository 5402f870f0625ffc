//! Telling the manager's own answer from a call that broke in transport.
//!
//! A `tonic::Status` made locally from a transport failure carries the failure as its source;
//! one sent by the manager carries none. Transport failures, and the codes a manager uses for
//! "try again", are worth retrying on another endpoint; any other answer is final.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use tonic::{Code, Status};

/// A failed gRPC call.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The manager answered with an error status.
    #[error("the manager answered {code:?}: {message}")]
    Answered {
        /// The gRPC status code.
        code: Code,
        /// The manager's message.
        message: String,
    },
    /// The call failed below gRPC.
    #[error("the call to the manager broke off")]
    Transport(#[source] TransportFailure),
    /// No answer in time.
    #[error("the manager did not answer within {0:?}")]
    TimedOut(Duration),
}

/// A transport failure reported by tonic, shown by its message and causes.
#[derive(Debug)]
pub struct TransportFailure(Status);

impl RpcError {
    /// Classifies a failed call's status.
    pub fn from_status(status: Status) -> Self {
        let transient = matches!(
            status.code(),
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded
        );
        if status.source().is_some() || transient {
            return RpcError::Transport(TransportFailure(status));
        }
        RpcError::Answered {
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// Whether trying again, possibly elsewhere, may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RpcError::Answered { .. } => false,
            RpcError::Transport(_) | RpcError::TimedOut(_) => true,
        }
    }

    /// Whether the manager refused this node itself (revoked, unknown, an agent version it does
    /// not accept): an operator must act.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            RpcError::Answered {
                code: Code::PermissionDenied | Code::Unauthenticated | Code::FailedPrecondition,
                ..
            }
        )
    }
}

impl fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.message() {
            "" => write!(f, "{}", self.0.code()),
            message => f.write_str(message),
        }
    }
}

impl StdError for TransportFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// Runs a call with a deadline, classifying its failure.
pub async fn with_deadline<T>(
    deadline: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, RpcError> {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(RpcError::from_status(status)),
        Err(_) => Err(RpcError::TimedOut(deadline)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_answers_are_final() {
        let error = RpcError::from_status(Status::permission_denied("token expired"));
        assert!(!error.is_transient());
        assert!(error.is_refusal());
        assert!(error.to_string().contains("token expired"), "{error}");
    }

    #[test]
    fn an_agent_version_the_manager_does_not_accept_is_a_refusal() {
        let refused = Status::failed_precondition("agent 0.2.0 is newer than manager 0.1.0");
        let error = RpcError::from_status(refused);
        assert!(error.is_refusal(), "an operator must upgrade one side");
        assert!(!error.is_transient());
        let other = RpcError::from_status(Status::invalid_argument("bad hello"));
        assert!(!other.is_refusal());
    }

    #[test]
    fn unavailable_and_transport_failures_are_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let broken = Status::from_error(Box::new(io));
        assert!(RpcError::from_status(broken).is_transient());
        assert!(RpcError::from_status(Status::unavailable("busy")).is_transient());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_past_their_deadline_time_out() {
        let never = std::future::pending::<Result<tonic::Response<()>, Status>>();
        let error = with_deadline(Duration::from_secs(30), never)
            .await
            .unwrap_err();
        assert!(matches!(error, RpcError::TimedOut(_)), "{error}");
    }
}
