//! One module per `opi-manager` subcommand.

pub mod backup;
pub mod ca;
pub mod demo;
pub mod init;
mod leader;
pub mod operator;
pub mod serve;
pub mod store;
