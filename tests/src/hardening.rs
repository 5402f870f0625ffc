//! Hardening profiles for nodes that are containers: a baseline with an exception for every
//! sysctl a container cannot set (`kernel.*`, `vm.*`, `fs.*` are read-only inside, and
//! host-wide `net.core` ones absent), each exception saying so.

use opi_profile::hardening::{baseline, Change};

/// Network sysctls that are the host's, not the network namespace's: absent inside.
pub const HOST_WIDE_NET: [&str; 1] = ["net.core.bpf_jit_harden"];
/// Why a container profile lifts a sysctl.
pub const READ_ONLY: &str = "read-only inside a container: the host kernel's value";

/// Whether a container can set sysctl `key`: per-network-namespace ones only.
pub fn settable(key: &str) -> bool {
    key.starts_with("net.") && !HOST_WIDE_NET.contains(&key)
}

/// A profile of `name`'s baseline lifting every sysctl a container cannot set, then `rest`
/// (more top-level sections, YAML).
pub fn container_profile(name: &str, rest: &str) -> String {
    let items = baseline::resolve(name).expect("a built-in baseline");
    let mut text = format!(
        "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening:\n  baseline: {name}\n  exceptions:\n"
    );
    for item in items.values() {
        if let Change::Sysctl { key, .. } = &item.change {
            if !settable(key) {
                text.push_str(&format!(
                    "    - {{item: {}, reason: \"{READ_ONLY}\", approver: ci}}\n",
                    item.id
                ));
            }
        }
    }
    text.push_str(rest);
    text
}
