//! OPI Fleet's side of systemd, shared by the agent and the manager:
//! - [`notify`]: the service notification protocol of `Type=notify` units (`READY=1`,
//!   `STATUS=`, `WATCHDOG=1`, `STOPPING=1`);
//! - [`journal`]: logging to journald natively, each event field a journal field, when the
//!   process's stderr is the journal.
//!
//! The units themselves are the `.service` files beside this crate's `src/`.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod journal;
pub mod notify;

pub use notify::Notifier;
