//! "Manager reachable", checked after an apply that changed the node: a new mTLS connection to
//! the manager of the current session, verified against the fleet's roots with the node's
//! certificate, as the next session would open it.

use std::sync::Arc;

use opi_pki::channel;
use rustls::ClientConfig;
use tokio::sync::watch;

use crate::apply::verify::{ManagerProbe, ProbeFuture};
use crate::ErrorChain;

/// The manager a probe connects to, and how.
#[derive(Clone)]
pub struct Target {
    /// Its endpoint.
    pub endpoint: String,
    /// The client configuration of the session.
    pub tls: Arc<ClientConfig>,
}

/// Probes the manager the run loop last connected to.
pub struct SessionProbe {
    target: watch::Receiver<Option<Target>>,
}

impl SessionProbe {
    /// A probe following `target`, which the run loop sets at each connection.
    pub fn new(target: watch::Receiver<Option<Target>>) -> Self {
        Self { target }
    }
}

impl ManagerProbe for SessionProbe {
    fn reachable(&self) -> ProbeFuture<'_> {
        let target = self.target.borrow().clone();
        Box::pin(async move {
            let Some(target) = target else {
                return Err("no manager was reached yet".to_string());
            };
            match channel::connect(&target.endpoint, target.tls).await {
                Ok(_) => Ok(format!(
                    "{} accepted a new mTLS connection",
                    target.endpoint
                )),
                Err(failure) => Err(ErrorChain(&failure).to_string()),
            }
        })
    }
}
