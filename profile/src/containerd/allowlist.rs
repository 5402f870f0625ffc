//! The containerd keys a profile may set, per config version, and the keys refused by name.

use super::CERTS_DIR;

/// Keys refused by name anywhere in the file, with the rule they break.
pub const FORBIDDEN: [(&str, &str); 12] = [
    (
        "BinaryName",
        "a runtime binary path lets the manager run any program as root",
    ),
    (
        "runtime_path",
        "a runtime binary path lets the manager run any program as root",
    ),
    (
        "runtime_engine",
        "a runtime engine path lets the manager run any program as root",
    ),
    (
        "runtime_root",
        "the runtime state directory is fixed by the node",
    ),
    (
        "stream_processors",
        "stream processors run programs on every image layer",
    ),
    ("imports", "imported files are not managed by the agent"),
    (
        "bin_dir",
        "it names a directory of CNI plugin binaries containerd runs",
    ),
    (
        "conf_dir",
        "the CNI configuration directory is fixed by the node",
    ),
    ("disable_apparmor", "AppArmor stays enabled for containers"),
    ("insecure_skip_verify", "registry TLS verification stays on"),
    (
        "root",
        "containerd's state directories are fixed by the node",
    ),
    (
        "state",
        "containerd's state directories are fixed by the node",
    ),
];

/// The shape of an allowlisted value.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Bool,
    Int,
    Str,
    Secret,
    Urls,
    Exactly(&'static str),
}

const CRI_V2: &str = "io.containerd.grpc.v1.cri";
const IMAGES_V3: &str = "io.containerd.cri.v1.images";
const RUNTIME_V3: &str = "io.containerd.cri.v1.runtime";

/// Allowlisted keys of version 2, as path segments; `*` matches any one segment.
pub(super) const ALLOWED_V2: &[(&[&str], Kind)] = &[
    (&["version"], Kind::Int),
    (&["plugins", CRI_V2, "sandbox_image"], Kind::Str),
    (&["plugins", CRI_V2, "enable_selinux"], Kind::Bool),
    (
        &["plugins", CRI_V2, "max_container_log_line_size"],
        Kind::Int,
    ),
    (&["plugins", CRI_V2, "max_concurrent_downloads"], Kind::Int),
    (&["plugins", CRI_V2, "restrict_oom_score_adj"], Kind::Bool),
    (
        &["plugins", CRI_V2, "enable_unprivileged_ports"],
        Kind::Bool,
    ),
    (&["plugins", CRI_V2, "enable_unprivileged_icmp"], Kind::Bool),
    (
        &["plugins", CRI_V2, "device_ownership_from_security_context"],
        Kind::Bool,
    ),
    (
        &["plugins", CRI_V2, "image_pull_progress_timeout"],
        Kind::Str,
    ),
    (&["plugins", CRI_V2, "containerd", "snapshotter"], Kind::Str),
    (
        &["plugins", CRI_V2, "containerd", "default_runtime_name"],
        Kind::Exactly("runc"),
    ),
    (
        &["plugins", CRI_V2, "containerd", "discard_unpacked_layers"],
        Kind::Bool,
    ),
    (
        &[
            "plugins",
            CRI_V2,
            "containerd",
            "runtimes",
            "runc",
            "runtime_type",
        ],
        Kind::Exactly("io.containerd.runc.v2"),
    ),
    (
        &[
            "plugins",
            CRI_V2,
            "containerd",
            "runtimes",
            "runc",
            "options",
            "SystemdCgroup",
        ],
        Kind::Bool,
    ),
    (
        &["plugins", CRI_V2, "registry", "config_path"],
        Kind::Exactly(CERTS_DIR),
    ),
    (
        &["plugins", CRI_V2, "registry", "mirrors", "*", "endpoint"],
        Kind::Urls,
    ),
    (
        &[
            "plugins", CRI_V2, "registry", "configs", "*", "auth", "username",
        ],
        Kind::Str,
    ),
    (
        &[
            "plugins", CRI_V2, "registry", "configs", "*", "auth", "password",
        ],
        Kind::Secret,
    ),
    (
        &[
            "plugins", CRI_V2, "registry", "configs", "*", "auth", "auth",
        ],
        Kind::Secret,
    ),
    (
        &[
            "plugins",
            CRI_V2,
            "registry",
            "configs",
            "*",
            "auth",
            "identitytoken",
        ],
        Kind::Secret,
    ),
];

/// Allowlisted keys of version 3.
pub(super) const ALLOWED_V3: &[(&[&str], Kind)] = &[
    (&["version"], Kind::Int),
    (&["plugins", IMAGES_V3, "snapshotter"], Kind::Str),
    (
        &["plugins", IMAGES_V3, "discard_unpacked_layers"],
        Kind::Bool,
    ),
    (
        &["plugins", IMAGES_V3, "max_concurrent_downloads"],
        Kind::Int,
    ),
    (
        &["plugins", IMAGES_V3, "image_pull_progress_timeout"],
        Kind::Str,
    ),
    (
        &["plugins", IMAGES_V3, "pinned_images", "sandbox"],
        Kind::Str,
    ),
    (
        &["plugins", IMAGES_V3, "registry", "config_path"],
        Kind::Exactly(CERTS_DIR),
    ),
    (&["plugins", RUNTIME_V3, "enable_selinux"], Kind::Bool),
    (
        &["plugins", RUNTIME_V3, "max_container_log_line_size"],
        Kind::Int,
    ),
    (
        &["plugins", RUNTIME_V3, "restrict_oom_score_adj"],
        Kind::Bool,
    ),
    (
        &["plugins", RUNTIME_V3, "enable_unprivileged_ports"],
        Kind::Bool,
    ),
    (
        &["plugins", RUNTIME_V3, "enable_unprivileged_icmp"],
        Kind::Bool,
    ),
    (
        &[
            "plugins",
            RUNTIME_V3,
            "device_ownership_from_security_context",
        ],
        Kind::Bool,
    ),
    (
        &["plugins", RUNTIME_V3, "containerd", "default_runtime_name"],
        Kind::Exactly("runc"),
    ),
    (
        &[
            "plugins",
            RUNTIME_V3,
            "containerd",
            "runtimes",
            "runc",
            "runtime_type",
        ],
        Kind::Exactly("io.containerd.runc.v2"),
    ),
    (
        &[
            "plugins",
            RUNTIME_V3,
            "containerd",
            "runtimes",
            "runc",
            "options",
            "SystemdCgroup",
        ],
        Kind::Bool,
    ),
];
