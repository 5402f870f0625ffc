//! The private network of one test node: a network namespace made for it and a veth pair, one
//! end on the host and one in the namespace, with addresses of their own in `10.231.N.0/30`.
//! Nothing else is routed: the container reaches the host-side address and nothing beyond.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{ok, run};

/// Third octet range of the addresses: one `/30` per node, 256 nodes at most at once.
pub const SUBNETS: u32 = 256;
/// Prefix of the namespaces' names, so that leftovers are recognisable.
pub const NETNS_PREFIX: &str = "opi-node-";

/// Spreads the namespaces of concurrent tests (and test processes) over the subnets.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace and the veth pair linking it to the host; removed on drop.
#[derive(Debug)]
pub struct NodeNetwork {
    /// The namespace's name under `/run/netns`.
    pub netns: String,
    /// The veth end left on the host.
    pub host_if: String,
    /// The veth end inside the namespace.
    pub node_if: String,
    /// The host end's address: what the node reaches the host at.
    pub host_addr: Ipv4Addr,
    /// The node end's address.
    pub node_addr: Ipv4Addr,
}

impl NodeNetwork {
    /// Creates a namespace with a free subnet and links it to the host; panics if all 256
    /// subnets are taken or `ip` fails.
    pub fn create() -> Self {
        let start = std::process::id().wrapping_mul(31);
        for _ in 0..SUBNETS {
            let index = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SUBNETS;
            let netns = format!("{NETNS_PREFIX}{index}");
            // `ip netns add` fails when the name exists: that makes it the subnet's lock.
            if run(Command::new("ip").args(["netns", "add", &netns]))
                .status
                .success()
            {
                let network = Self::named(netns, index);
                network.link();
                return network;
            }
        }
        panic!("no free {NETNS_PREFIX}N network namespace: remove leftovers with `ip netns del`")
    }

    /// The path nspawn's `--network-namespace-path` takes.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    fn named(netns: String, index: u32) -> Self {
        let octet = u8::try_from(index).expect("index below 256");
        Self {
            netns,
            host_if: format!("opin{index}h"),
            node_if: format!("opin{index}c"),
            host_addr: Ipv4Addr::new(10, 231, octet, 1),
            node_addr: Ipv4Addr::new(10, 231, octet, 2),
        }
    }

    /// Makes the veth pair, moves one end into the namespace and addresses both ends.
    fn link(&self) {
        let host_cidr = format!("{}/30", self.host_addr);
        let node_cidr = format!("{}/30", self.node_addr);
        let steps: [&[&str]; 7] = [
            &[
                "link",
                "add",
                &self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &self.node_if,
            ],
            &["link", "set", &self.node_if, "netns", &self.netns],
            &["addr", "add", &host_cidr, "dev", &self.host_if],
            &["link", "set", &self.host_if, "up"],
            &[
                "-n",
                &self.netns,
                "addr",
                "add",
                &node_cidr,
                "dev",
                &self.node_if,
            ],
            &["-n", &self.netns, "link", "set", &self.node_if, "up"],
            &["-n", &self.netns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ok(run(Command::new("ip").args(step)));
        }
    }
}

impl Drop for NodeNetwork {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both. The namespace goes last: while it
        // exists, no other test can take this subnet and its interface names.
        let _ = run(Command::new("ip").args(["link", "del", &self.host_if]));
        let _ = run(Command::new("ip").args(["netns", "del", &self.netns]));
    }
}
