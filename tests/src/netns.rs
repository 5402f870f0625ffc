//! A network namespace of the test's own, with only its loopback up, that the calling test
//! thread enters: every process the test starts afterwards (etcd, managers, agents, opictl)
//! lives there, so nftables rules made in it cut links between them without touching the
//! host. The thread goes back to its own namespace, and the namespace is deleted, on drop.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables), installed by scripts/install-test-deps.

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{setns, CloneFlags};

use crate::{ok, run};

/// Tells apart the namespaces of one test process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The test thread's stay in a namespace of its own.
pub struct Netns {
    /// The namespace's name under `/run/netns`.
    pub name: String,
    /// The thread's own namespace, to return to.
    home: File,
}

impl Netns {
    /// Creates a namespace, brings its loopback up and moves the calling thread into it.
    pub fn enter() -> Self {
        let name = format!(
            "opi-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ok(run(Command::new("ip").args(["netns", "add", &name])));
        ok(run(
            Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"])
        ));
        let home = File::open("/proc/thread-self/ns/net").expect("this thread's namespace");
        let inside = File::open(format!("/run/netns/{name}")).expect("the new namespace");
        setns(&inside, CloneFlags::CLONE_NEWNET).expect("enter the test's network namespace");
        Self { name, home }
    }

    /// Runs `nft ARGS` inside the namespace.
    pub fn nft(&self, args: &[&str]) {
        ok(run(Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = setns(&self.home, CloneFlags::CLONE_NEWNET);
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}
