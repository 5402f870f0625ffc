//! The systemd units pass `systemd-analyze verify`, and the manager speaks systemd's
//! notification protocol: ready once it listens, watchdog pings from its main loop, stopping
//! on SIGTERM. The notification socket is a real Unix datagram socket made by the test.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opi_tests::{bin, run, Manager};
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
