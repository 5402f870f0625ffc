//! OPI Fleet manager: fleet CA, enrollment, agent sessions, the fleet store and the
//! operator API, on one TLS port.
//!
//! - [`cli`]: the command line, parsed by `main.rs`;
//! - [`cmd`]: one module per `opi-manager` subcommand;
//! - [`fleet`]: the fleet's state and every operation on it;
//! - [`rollout`]: health-gated rollouts of pool profiles, as pure decisions;
//! - [`server`]: the gRPC services and the TLS listener;
//! - [`store`]: the store interface and its backends;
//! - [`metrics`], [`alerts`]: the Prometheus metrics page and the alerts pushed to Alertmanager;
//! - [`versions`]: the version skew policy between the manager and its agents;
//! - [`compliance`]: the nodes' ANSSI-BP-028 evidence, its history and the signed report;
//! - [`backup`]: backups of the store and CA material, and their restore;
//! - [`datadir`], [`records`], [`tokens`], [`audit`], [`bundles`]: supporting pieces.

pub mod alerts;
pub mod audit;
pub mod backup;
pub mod bundles;
pub mod cli;
pub mod cmd;
pub mod compliance;
pub mod datadir;
pub mod events;
pub mod fleet;
pub mod identity;
pub mod metrics;
pub mod records;
pub mod replica;
pub mod rollout;
pub mod rollover;
pub mod server;
pub mod signals;
pub mod store;
pub mod tokens;
pub mod versions;

/// An error and its causes on one line, separated by colons, a cause whose text the line
/// already holds left out: for log fields and for errors passed on as text.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
