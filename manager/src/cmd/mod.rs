//! One module per `opi-manager` subcommand.

pub mod ca;
pub mod demo;
pub mod init;
pub mod operator;
pub mod serve;
