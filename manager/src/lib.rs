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
