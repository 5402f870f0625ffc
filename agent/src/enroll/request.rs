//! Sending the enrollment request: each manager endpoint in order, the whole list up to
//! [`ENROLL_ROUNDS`] times while the failures are only transport ones. The same request (same
//! key, same token) is sent every time, so the manager can recognise a retry.

use std::sync::Arc;
use std::time::Duration;

use opi_pki::channel::{self, ChannelError};
use opi_pki::tls::{client_config, ManagerVerifier};
use opi_pki::CaPin;
use opi_proto::v1::enrollment_client::EnrollmentClient;
use opi_proto::v1::{EnrollRequest, EnrollResponse};
use tracing::{info, warn};

use super::EnrollError;
use crate::rpc::{self, RpcError};
use crate::ErrorChain;

/// How many times the whole endpoint list is tried.
pub const ENROLL_ROUNDS: u32 = 3;
/// Pause before the second round; it doubles before each further one.
pub const ROUND_PAUSE: Duration = Duration::from_secs(1);
/// Time allowed for the manager to answer an enrollment.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// A manager's answer, with who gave it.
#[derive(Debug)]
pub struct Answered {
    /// The endpoint that answered.
    pub endpoint: String,
    /// The fleet named by the manager's verified certificate.
    pub fleet: String,
    /// The answer itself.
    pub response: EnrollResponse,
}

/// A failure worth trying the next endpoint for.
#[derive(Debug, thiserror::Error)]
pub enum EndpointFailure {
    /// TCP or TLS failed.
    #[error(transparent)]
    Connect(ChannelError),
    /// The call broke off or timed out.
    #[error("the enrollment call to {endpoint} failed")]
    Call {
        /// The manager endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: RpcError,
    },
}

/// How one endpoint's attempt ended, when it did not succeed.
enum Attempt {
    /// Try the next endpoint.
    Transient(EndpointFailure),
    /// Stop: trying elsewhere would not help, or would not be safe.
    Final(EnrollError),
}

/// Sends `request` to the first manager that answers.
pub async fn send(
    endpoints: &[String],
    pin: CaPin,
    request: &EnrollRequest,
) -> Result<Answered, EnrollError> {
    let mut last_failure = None;
    for round in 0..ENROLL_ROUNDS {
        if round > 0 {
            tokio::time::sleep(ROUND_PAUSE * 2u32.pow(round - 1)).await;
        }
        for endpoint in endpoints {
            match attempt(endpoint, pin, request.clone()).await {
                Ok(answered) => return Ok(answered),
                Err(Attempt::Final(error)) => return Err(error),
                Err(Attempt::Transient(failure)) => {
                    warn!(
                        endpoint = %endpoint,
                        round = round + 1,
                        error = %ErrorChain(&failure),
                        "manager unreachable",
                    );
                    last_failure = Some(failure);
                }
            }
        }
    }
    Err(EnrollError::Unreachable {
        endpoints: endpoints.join(", "),
        rounds: ENROLL_ROUNDS,
        source: last_failure.expect("clap requires at least one --manager"),
    })
}

/// One try at one endpoint: connect with the pin, then call `Enroll`.
async fn attempt(endpoint: &str, pin: CaPin, request: EnrollRequest) -> Result<Answered, Attempt> {
    let verifier = ManagerVerifier::with_pin(pin);
    let tls = client_config(verifier.clone(), None)
        .map_err(|source| Attempt::Final(EnrollError::BuildTls(source)))?;
    let channel = match channel::connect(endpoint, tls).await {
        Ok(channel) => channel,
        Err(source) => return Err(connect_failure(endpoint, &verifier, source)),
    };
    let fleet = verified_fleet(endpoint, &verifier).map_err(Attempt::Final)?;

    let call = async move { EnrollmentClient::new(channel).enroll(request).await };
    match rpc::with_deadline(ENROLL_TIMEOUT, call).await {
        Ok(response) => Ok(Answered {
            endpoint: endpoint.to_string(),
            fleet,
            response,
        }),
        Err(RpcError::Answered { code, message }) => Err(Attempt::Final(EnrollError::Rejected {
            endpoint: endpoint.to_string(),
            code,
            message,
        })),
        Err(source) => Err(Attempt::Transient(EndpointFailure::Call {
            endpoint: endpoint.to_string(),
            source,
        })),
    }
}

/// A refused manager stops the enrollment: nothing was sent to it, and the pin is either wrong
/// or the endpoint is not our fleet's. Anything else is a transport failure.
fn connect_failure(
    endpoint: &str,
    verifier: &Arc<ManagerVerifier>,
    source: ChannelError,
) -> Attempt {
    match verifier.last_outcome() {
        Some(Err(refused)) => Attempt::Final(EnrollError::RefuseManager {
            endpoint: endpoint.to_string(),
            source: refused,
        }),
        Some(Ok(_)) | None => Attempt::Transient(EndpointFailure::Connect(source)),
    }
}

fn verified_fleet(endpoint: &str, verifier: &ManagerVerifier) -> Result<String, EnrollError> {
    match verifier.last_outcome() {
        Some(Ok(manager)) => {
            info!(endpoint = %endpoint, manager = %manager, "manager verified against the CA pin");
            Ok(manager.fleet)
        }
        Some(Err(_)) | None => Err(EnrollError::Unverified {
            endpoint: endpoint.to_string(),
        }),
    }
}
