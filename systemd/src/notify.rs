//! systemd's service notification protocol, for `Type=notify` units: `READY=1` once the
//! service does its job, `STATUS=` lines for `systemctl status`, `WATCHDOG=1` from the main
//! loop, `STOPPING=1` on shutdown. Without `NOTIFY_SOCKET` (not started by systemd) every
//! call does nothing.

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
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.parse() == Ok(std::process::id()))
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse().ok())
            .filter(|usec: &u64| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Self::new(socket.as_deref(), watchdog)
    }

    /// Notifies `socket` (a path, or `@name` for an abstract socket), with a watchdog of
    /// `watchdog` if any; with no socket every call does nothing.
    pub fn new(socket: Option<&str>, watchdog: Option<Duration>) -> Self {
        Self {
            target: socket.and_then(connect),
            watchdog,
            last_ping: std::sync::Mutex::new(None),
            ready: AtomicBool::new(false),
        }
    }

    /// Tells systemd the service is ready, with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
        self.ready.store(true, Ordering::Release);
    }

    /// Whether [`Notifier::ready`] was called.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Replaces the status line `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}\n", one_line(status)));
    }

    /// The watchdog interval systemd asked for, if any.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
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

/// `text` on one line: a newline would end the `STATUS=` assignment.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn listen() -> (tempfile::TempDir, UnixDatagram, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        (dir, socket, path.display().to_string())
    }

    fn received(socket: &UnixDatagram) -> Vec<String> {
        let mut messages = Vec::new();
        let mut buffer = [0u8; 512];
        while let Ok(n) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        messages
    }

    #[test]
    fn status_lines_stay_on_one_line() {
        let (_dir, socket, path) = listen();
        let notifier = Notifier::new(Some(&path), None);

        notifier.ready("offline:\nno manager");
        notifier.status("connected\rto m1");

        assert_eq!(
            received(&socket),
            [
                "READY=1\nSTATUS=offline: no manager\n",
                "STATUS=connected to m1\n"
            ]
        );
        assert!(notifier.is_ready());
    }

    #[test]
    fn watchdog_pings_only_once_ready_and_at_most_every_half_interval() {
        let (_dir, socket, path) = listen();
        let notifier = Notifier::new(Some(&path), Some(Duration::from_secs(60)));

        notifier.watchdog();
        assert!(received(&socket).is_empty(), "no ping before READY=1");
        notifier.ready("up");
        notifier.watchdog();
        notifier.watchdog();

        assert_eq!(received(&socket), ["READY=1\nSTATUS=up\n", "WATCHDOG=1\n"]);
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier::new(None, Some(Duration::from_secs(1)));
        notifier.ready("up");
        notifier.watchdog();
        notifier.stopping();
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(1)));
    }
}
