//! Waiting for the signals that end a long-running command.

use tokio::signal::unix::{signal, SignalKind};

/// Completes on SIGINT or SIGTERM.
pub async fn terminated() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler can be installed");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler can be installed");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
