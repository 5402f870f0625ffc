//! The one mapping from fleet errors to gRPC statuses.

use tonic::{Code, Status};

use crate::fleet::FleetError;
use crate::store::StoreError;

impl From<FleetError> for Status {
    fn from(error: FleetError) -> Self {
        let code = match &error {
            FleetError::MalformedToken(_) => Code::InvalidArgument,
            FleetError::UnknownToken { .. } => Code::Unauthenticated,
            FleetError::TokenSecretMismatch { .. } => Code::Unauthenticated,
            FleetError::TokenRevoked { .. } => Code::Unauthenticated,
            FleetError::TokenExpired { .. } => Code::Unauthenticated,
            FleetError::TokenUsedUp { .. } => Code::Unauthenticated,
            FleetError::TooManyFailures { .. } => Code::ResourceExhausted,
            FleetError::BadCsr(_) => Code::InvalidArgument,
            FleetError::InvalidName { .. } => Code::InvalidArgument,
            FleetError::NameTaken { .. } => Code::AlreadyExists,
            FleetError::UnknownNode { .. } => Code::NotFound,
            FleetError::NodeRevoked { .. } => Code::PermissionDenied,
            FleetError::StaleCertificate { .. } => Code::PermissionDenied,
            FleetError::ExpiredPastWindow { .. } => Code::PermissionDenied,
            FleetError::ReenrollNotAllowed { .. } => Code::PermissionDenied,
            FleetError::RotateSelection(_) => Code::InvalidArgument,
            FleetError::UnsignedProfile { .. } => Code::FailedPrecondition,
            FleetError::NoClientCertificate => Code::Unauthenticated,
            FleetError::CertificateRefused(_) => Code::Unauthenticated,
            FleetError::WrongIdentity { .. } => Code::PermissionDenied,
            FleetError::Forbidden { .. } => Code::PermissionDenied,
            FleetError::InvalidArgument(_) => Code::InvalidArgument,
            FleetError::NoSuchToken { .. } => Code::NotFound,
            FleetError::InvalidProfile { .. } => Code::InvalidArgument,
            FleetError::UnknownProfile { .. } => Code::NotFound,
            FleetError::InvalidStrategy { .. } => Code::InvalidArgument,
            FleetError::NoRollout { .. } => Code::NotFound,
            FleetError::NothingToUndo { .. } => Code::FailedPrecondition,
            FleetError::RolloutActionRefused { .. } => Code::FailedPrecondition,
            FleetError::Conflict { .. } => Code::Aborted,
            FleetError::UnsupportedAgent { .. } => Code::FailedPrecondition,
            FleetError::Store(_) => Code::Unavailable,
            FleetError::Issue(_) => Code::Internal,
            FleetError::SignReport(_) => Code::Internal,
            FleetError::SignCheckpoint(_) => Code::Internal,
            FleetError::LoginCodeRefused { .. } => Code::Unauthenticated,
            FleetError::TooManyLoginFailures { .. } => Code::ResourceExhausted,
        };
        let mut text = crate::error_chain(&error);
        if let FleetError::Store(StoreError::Unavailable { .. }) = &error {
            text.push_str(STORE_LOST_HINT);
        }
        Status::new(code, text)
    }
}

/// Said after a change refused because the fleet store is unreachable.
const STORE_LOST_HINT: &str = "; this replica cannot reach its fleet store: it answers reads \
     from memory (marked stale) and refuses changes until the store is back, then retry";
