//! systemd's service notification protocol, for `Type=notify` units: `READY=1` once the
//! manager serves, `WATCHDOG=1` from the supervisor loop, `STOPPING=1` on shutdown. Without
//! `NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::warn;

/// A connection to systemd's notification socket, if the service has one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    last_ping: std::sync::Mutex<Option<Instant>>,
    ready: AtomicBool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        let target = std::env::var("NOTIFY_SOCKET")
            .ok()
            .and_then(|path| connect(&path));
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.parse() == Ok(std::process::id()))
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse().ok())
            .filter(|usec: &u64| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Self {
            target,
            watchdog,
            last_ping: std::sync::Mutex::new(None),
            ready: AtomicBool::new(false),
        }
    }

    /// Tells systemd the service is ready, with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\n"));
        self.ready.store(true, Ordering::Release);
    }

    /// Tells systemd the service is stopping.
    pub fn stopping(&self) {
        self.send("STOPPING=1\n");
    }

    /// Pings the watchdog, once ready and at most every half of its interval; call it from the
    /// main loop so that a stalled loop stops the pings.
    pub fn watchdog(&self) {
        let Some(interval) = self.watchdog.filter(|_| self.ready.load(Ordering::Acquire)) else {
            return;
        };
        let mut last = self.last_ping.lock().expect("watchdog lock poisoned");
        if last.is_some_and(|at| at.elapsed() < interval / 2) {
            return;
        }
        *last = Some(Instant::now());
        self.send("WATCHDOG=1\n");
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(error) = socket.send_to_addr(message.as_bytes(), addr) {
                warn!(error = %error, "cannot notify systemd");
            }
        }
    }
}

/// Opens a datagram socket towards `path` (`@name` is an abstract socket).
fn connect(path: &str) -> Option<(UnixDatagram, SocketAddr)> {
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(path),
    };
    let socket = UnixDatagram::unbound();
    match (socket, addr) {
        (Ok(socket), Ok(addr)) => Some((socket, addr)),
        (Err(error), _) | (_, Err(error)) => {
            warn!(socket = %path, error = %error, "cannot open systemd's notification socket");
            None
        }
    }
}
