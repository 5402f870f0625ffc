//! The systemd units pass `systemd-analyze verify`, and the manager and the agent speak
//! systemd's notification protocol: ready once the manager listens and once the agent has a
//! session (or has decided to run offline), status lines, watchdog pings from their main
//! loops, stopping on SIGTERM. The notification socket is a real Unix datagram socket made
//! by the test.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opi_tests::{bin, ok, run, Agent, Manager};
use tempfile::TempDir;

fn units() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

/// A root holding the units, the binaries they start and systemd's own units (read from the
/// host), for `systemd-analyze verify --root`.
fn unit_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    for binary in ["opi-manager", "opi-agent"] {
        std::fs::copy(bin(binary), root.join("usr/bin").join(binary)).unwrap();
    }
    for unit in ["opi-manager.service", "opi-agent.service"] {
        std::fs::copy(
            units().join(unit),
            root.join("etc/systemd/system").join(unit),
        )
        .unwrap();
    }
    let copied = run(Command::new("cp")
        .arg("-r")
        .arg("/lib/systemd/system")
        .arg(root.join("usr/lib/systemd")));
    assert!(copied.status.success(), "systemd's units are readable");
    root
}

#[test]
fn units_pass_systemd_analyze_verify_without_warnings() {
    let dir = TempDir::new().unwrap();
    let root = unit_root(dir.path());
    for unit in ["opi-manager.service", "opi-agent.service"] {
        let output = run(Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(format!("/etc/systemd/system/{unit}")));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.trim().is_empty(),
            "{unit}: {stderr}"
        );
    }
}

#[test]
fn manager_notifies_ready_feeds_the_watchdog_and_says_when_it_stops() {
    let dir = TempDir::new().unwrap();
    let manager = Manager::init(dir.path(), "e2e");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let mut child = Command::new(bin("opi-manager"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&manager.data_dir)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let receive = || {
        let mut buffer = [0u8; 512];
        let n = socket
            .recv(&mut buffer)
            .expect("a notification within 10 s");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };

    let ready = receive();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=serving fleet e2e"), "{ready}");
    let listen_addr = std::fs::read_to_string(manager.data_dir.join("run/listen-addr")).unwrap();
    assert!(
        std::net::TcpStream::connect(listen_addr.trim()).is_ok(),
        "ready only once it listens"
    );

    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let message = receive();
        if message.contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(4),
        "three pings at about half the 1 s interval: {elapsed:?}"
    );

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopping = loop {
        let message = receive();
        if !message.contains("WATCHDOG=1") {
            break message;
        }
    };
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

/// A notification socket bound in `dir`, and a reader of its messages.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("agent-notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(45)))
            .unwrap();
        Self { path, socket }
    }

    /// The next message, within 45 s (longer than the agent's 30 s offline deadline).
    fn receive(&self) -> String {
        let mut buffer = [0u8; 2048];
        let n = self
            .socket
            .recv(&mut buffer)
            .expect("a notification within 45 s");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }

    /// Messages until one contains `wanted`; returns it.
    fn receive_until(&self, wanted: &str) -> String {
        loop {
            let message = self.receive();
            if message.contains(wanted) {
                return message;
            }
        }
    }

    /// Counts watchdog pings until `count` arrived; returns how long that took.
    fn watchdog_pings(&self, count: usize) -> Duration {
        let start = Instant::now();
        let mut pings = 0;
        while pings < count {
            if self.receive().contains("WATCHDOG=1") {
                pings += 1;
            }
        }
        start.elapsed()
    }
}

/// A started manager and an agent enrolled with it (not started).
fn enrolled_agent(dir: &Path, fleet: &str) -> (Manager, Agent) {
    let mut manager = Manager::init(dir, fleet);
    manager.start();
    let (_, token) = manager.opictl().create_token("workers", 1, &[]);
    let agent = Agent::new(dir, "notify-node");
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    (manager, agent)
}

/// `opi-agent run` with the notification socket and a 1 s watchdog.
fn start_notifying_agent(agent: &Agent, socket: &NotifySocket) -> std::process::Child {
    let log = std::fs::File::create(&agent.log).unwrap();
    Command::new(bin("opi-agent"))
        .args(["run", "--root"])
        .arg(&agent.root)
        .env("NOTIFY_SOCKET", &socket.path)
        .env("WATCHDOG_USEC", "1000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn sigterm(child: &std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

#[test]
fn agent_is_ready_once_its_session_opens_and_reports_losing_it() {
    let dir = TempDir::new().unwrap();
    let (mut manager, agent) = enrolled_agent(dir.path(), "notify");
    let socket = NotifySocket::bind(dir.path());

    let mut child = start_notifying_agent(&agent, &socket);

    let ready = socket.receive();
    assert!(ready.contains("READY=1"), "{ready}");
    let endpoint = manager.endpoint();
    assert!(
        ready.contains(&format!("STATUS=connected to {endpoint}")),
        "{ready}"
    );
    let online = manager.opictl().nodes();
    assert_eq!(online[0]["connectivity"], "online", "ready once in session");
    let elapsed = socket.watchdog_pings(3);
    assert!(
        elapsed < Duration::from_secs(4),
        "three pings from the session loop at most 0.75 s apart: {elapsed:?}"
    );

    manager.terminate(Duration::from_secs(10));
    let lost = socket.receive_until("STATUS=");
    assert!(
        lost.contains(&format!("STATUS=offline: {endpoint}")),
        "{lost}"
    );
    assert!(lost.contains("retrying in"), "{lost}");
    assert!(!lost.contains("READY=1"), "ready once only: {lost}");

    sigterm(&child);
    let stopping = socket.receive_until("STOPPING=1");
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

#[test]
fn agent_without_a_reachable_manager_is_ready_offline_and_keeps_feeding_the_watchdog() {
    let dir = TempDir::new().unwrap();
    let (mut manager, agent) = enrolled_agent(dir.path(), "offline");
    let endpoint = manager.endpoint();
    manager.terminate(Duration::from_secs(10));
    let socket = NotifySocket::bind(dir.path());

    let mut child = start_notifying_agent(&agent, &socket);

    let ready = socket.receive();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=offline: {endpoint}: ")),
        "explicitly offline after every endpoint failed once: {ready}"
    );
    assert!(ready.contains("retrying in"), "{ready}");
    let elapsed = socket.watchdog_pings(3);
    assert!(
        elapsed < Duration::from_secs(4),
        "pings from the reconnection loop while offline: {elapsed:?}"
    );

    sigterm(&child);
    socket.receive_until("STOPPING=1");
    assert!(child.wait().unwrap().success());
}
