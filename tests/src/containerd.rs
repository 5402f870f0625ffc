//! A real containerd for agents running under `--root`, and a gate in front of it that stops
//! answering while a node's containerd configuration holds a given text.
//!
//! Under a `--root` other than `/` the agent restarts no service, so a profile cannot break
//! containerd by itself there. The gate plays what a containerd restarted on a broken
//! configuration does: while the node's `etc/containerd/config.toml` contains the marker, it
//! accepts connections and never answers; otherwise it relays them to the real containerd.
//! The agent's real health check and verification talk to it through the node's socket path.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::{system_bin, wait_until, WAIT};

/// Where the agents' containerd check looks, under their root.
pub const NODE_SOCKET: &str = "run/containerd/containerd.sock";
/// How often a held connection looks whether the marker went away.
const HOLD_CHECK: Duration = Duration::from_millis(50);

/// A containerd process with everything it writes under one directory.
pub struct Containerd {
    pub socket: PathBuf,
    child: Child,
}

/// Relays a node's containerd socket to a real containerd, unless the node's configuration
/// holds the marker.
pub struct Gate {
    stop: Arc<AtomicBool>,
    socket: PathBuf,
}

impl Containerd {
    /// Starts containerd in `dir` (its CRI plugin off: it cannot run containers here).
    pub fn start(dir: &Path) -> Self {
        fs::create_dir_all(dir).expect("containerd dir");
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        let text = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = {socket:?}\n[ttrpc]\n  address = {:?}\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            dir.join("root"),
            dir.join("state"),
            socket.with_extension("ttrpc"),
        );
        fs::write(&config, text).expect("containerd config");
        let log = fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let child = Command::new(system_bin("containerd", "containerd"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        wait_until(WAIT, "containerd's socket", || socket.exists());
        Self { socket, child }
    }

    /// Makes `root`'s containerd socket this containerd's.
    pub fn serve_node(&self, root: &Path) {
        let link = root.join(NODE_SOCKET);
        fs::create_dir_all(link.parent().expect("socket dir")).expect("node run dir");
        std::os::unix::fs::symlink(&self.socket, &link).expect("node socket link");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gate {
    /// Serves `root`'s containerd socket: relayed to `upstream`, held unanswered while
    /// `root`'s containerd configuration contains `marker`.
    pub fn start(root: &Path, upstream: &Path, marker: &str) -> Self {
        let socket = root.join(NODE_SOCKET);
        fs::create_dir_all(socket.parent().expect("socket dir")).expect("node run dir");
        let listener = UnixListener::bind(&socket).expect("gate socket");
        listener.set_nonblocking(true).expect("non-blocking gate");
        let stop = Arc::new(AtomicBool::new(false));
        let config = root.join("etc/containerd/config.toml");
        let (marker, upstream) = (marker.to_string(), upstream.to_path_buf());
        let stopping = stop.clone();
        thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => serve(client, &config, &marker, &upstream),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return,
                }
            }
        });
        Self { stop, socket }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = fs::remove_file(&self.socket);
    }
}

/// Whether the node's configuration holds the marker now.
fn broken(config: &Path, marker: &str) -> bool {
    fs::read_to_string(config).is_ok_and(|text| text.contains(marker))
}

/// Holds `client` unanswered while the configuration is broken, else relays it.
fn serve(client: UnixStream, config: &Path, marker: &str, upstream: &Path) {
    client.set_nonblocking(false).expect("blocking client");
    if broken(config, marker) {
        let (config, marker) = (config.to_path_buf(), marker.to_string());
        thread::spawn(move || {
            while broken(&config, &marker) {
                thread::sleep(HOLD_CHECK);
            }
            drop(client);
        });
        return;
    }
    let Ok(server) = UnixStream::connect(upstream) else {
        return;
    };
    relay(client, server);
}

/// Copies bytes both ways until either side closes.
fn relay(client: UnixStream, server: UnixStream) {
    let pairs = [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ];
    for (from, to) in pairs {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        thread::spawn(move || {
            let mut buffer = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
}
