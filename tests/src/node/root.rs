//! The Debian 12 root a test node boots: built once by `scripts/build-node-root` and cached,
//! then overlaid for each node with a layer of its own holding its host name, the kubelet
//! stand-in and whatever the node writes.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use crate::{bin, ok, run};

/// Where the kubelet stand-in is installed inside the node.
pub const FAKE_KUBELET: &str = "/usr/local/bin/opi-fake-kubelet";
/// While this file exists inside the node, the stand-in's `/healthz` fails.
pub const KUBELET_UNHEALTHY_FILE: &str = "/run/opi-fake-kubelet/unhealthy";

/// The unit running the kubelet stand-in under kubelet's own unit name.
const KUBELET_UNIT: &str = "\
# Stands in for kubelet, which is not packaged in Debian: serves /healthz on kubelet's port.
[Unit]
Description=kubelet stand-in for OPI Fleet tests (healthz only)
After=containerd.service

[Service]
ExecStart=/usr/local/bin/opi-fake-kubelet --listen 127.0.0.1:10248 --unhealthy-file /run/opi-fake-kubelet/unhealthy
Restart=always
RestartSec=1s

[Install]
WantedBy=multi-user.target
";

/// The cached root, built on first use by `scripts/build-node-root` (which serialises builds
/// across processes with a lock); the build's duration is printed when it happens.
pub fn cached() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-node-root");
        let started = Instant::now();
        let output = run(&mut Command::new(&script));
        let path = ok(output).trim().to_string();
        eprintln!("node root {path} ready in {:?}", started.elapsed());
        PathBuf::from(path)
    })
}

/// The layers of one node's root: the cached root below, read-only and shared, and a
/// directory of the node's own above it that takes every write (an overlay mounted in the
/// node's private mount namespace, so the host never sees the mount).
#[derive(Clone, Debug)]
pub struct RootLayers {
    /// The cached root.
    pub lower: PathBuf,
    /// The node's changes.
    pub upper: PathBuf,
    /// overlayfs' work directory, on the same file system as `upper`.
    pub work: PathBuf,
    /// Where the overlay is mounted, inside the node's mount namespace.
    pub merged: PathBuf,
}

impl RootLayers {
    /// Layers in `dir` over the cached root (built first if needed).
    pub fn create(dir: &Path) -> Self {
        let layers = Self {
            lower: cached().to_path_buf(),
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("root"),
        };
        for path in [&layers.upper, &layers.work, &layers.merged] {
            fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        }
        layers
    }

    /// overlayfs' mount options for these layers.
    pub fn mount_options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        )
    }
}

/// Names the node and installs the enabled kubelet stand-in, writing into the upper layer
/// `root` before boot.
pub fn prepare(root: &Path, hostname: &str) {
    fs::create_dir_all(root.join("etc/systemd/system")).expect("mkdir etc/systemd/system");
    fs::write(root.join("etc/hostname"), format!("{hostname}\n")).expect("write etc/hostname");

    let binary = root.join(FAKE_KUBELET.trim_start_matches('/'));
    fs::create_dir_all(binary.parent().expect("has a parent")).expect("mkdir usr/local/bin");
    fs::copy(bin("opi-fake-kubelet"), &binary).expect("copy the kubelet stand-in");

    let units = root.join("etc/systemd/system");
    fs::write(units.join("kubelet.service"), KUBELET_UNIT).expect("write kubelet.service");
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants).expect("mkdir multi-user.target.wants");
    symlink(
        "/etc/systemd/system/kubelet.service",
        wants.join("kubelet.service"),
    )
    .expect("enable kubelet.service");
}
