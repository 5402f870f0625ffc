//! What the hardening section may change: sysctl keys and values, module names, sshd keys and
//! the files whose mode and owner it may set. Each check answers the rule it broke.

/// First component of every sysctl a profile may set.
pub const SYSCTL_TREES: [&str; 5] = ["kernel", "net", "fs", "vm", "user"];

/// Sysctls a profile may never set: each one makes the kernel run a program or load a file.
pub const FORBIDDEN_SYSCTLS: [(&str, &str); 6] = [
    (
        "kernel.core_pattern",
        "a core pattern may pipe core dumps to any program",
    ),
    (
        "kernel.modprobe",
        "it names the program the kernel runs to load modules",
    ),
    (
        "kernel.hotplug",
        "it names a program the kernel runs on hotplug events",
    ),
    (
        "kernel.poweroff_cmd",
        "it names a program the kernel runs to power off",
    ),
    (
        "kernel.core_uses_pid",
        "core dump naming is left to the node image",
    ),
    (
        "fs.binfmt_misc.register",
        "it registers interpreters for executables",
    ),
];

/// sshd keywords a profile may set in the agent's drop-in.
pub const SSHD_KEYS: [&str; 30] = [
    "AllowAgentForwarding",
    "AllowGroups",
    "AllowTcpForwarding",
    "AllowUsers",
    "Ciphers",
    "ClientAliveCountMax",
    "ClientAliveInterval",
    "Compression",
    "DenyGroups",
    "DenyUsers",
    "GSSAPIAuthentication",
    "HostbasedAuthentication",
    "IgnoreRhosts",
    "KbdInteractiveAuthentication",
    "KexAlgorithms",
    "LogLevel",
    "LoginGraceTime",
    "MACs",
    "MaxAuthTries",
    "MaxSessions",
    "MaxStartups",
    "PasswordAuthentication",
    "PermitEmptyPasswords",
    "PermitRootLogin",
    "PermitUserEnvironment",
    "PrintLastLog",
    "PubkeyAuthentication",
    "StrictModes",
    "TCPKeepAlive",
    "X11Forwarding",
];

/// sshd keywords refused by name: each runs a program or trusts keys from elsewhere.
pub const FORBIDDEN_SSHD_KEYS: [(&str, &str); 8] = [
    (
        "AuthorizedKeysCommand",
        "it runs a program to find authorized keys",
    ),
    ("AuthorizedKeysFile", "it moves where sshd trusts keys from"),
    (
        "AuthorizedPrincipalsCommand",
        "it runs a program to find principals",
    ),
    ("ForceCommand", "it runs a program at every login"),
    ("Include", "it pulls in files the agent does not manage"),
    (
        "Match",
        "conditional blocks are not supported in the drop-in",
    ),
    ("Subsystem", "it names programs sshd runs"),
    (
        "TrustedUserCAKeys",
        "it trusts a certificate authority from a file",
    ),
];

/// Files and directories whose mode and owner the hardening section may set, never their
/// content.
pub const PERMISSION_FILES: [&str; 20] = [
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/passwd",
    "/etc/group",
    "/etc/shells",
    "/etc/crontab",
    "/etc/cron.d",
    "/etc/cron.hourly",
    "/etc/cron.daily",
    "/etc/cron.weekly",
    "/etc/cron.monthly",
    "/etc/ssh/sshd_config",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_rsa_key",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/boot",
    "/boot/grub/grub.cfg",
    "/var/lib/kubelet/config.yaml",
];

/// Groups a permission rule may give a file.
pub const PERMISSION_GROUPS: [&str; 2] = ["root", "shadow"];

/// Mode bits a permission rule may never set: set-id, sticky, and write for group or others.
pub const FORBIDDEN_MODE_BITS: u32 = 0o7022;

/// Why a sysctl key is refused, if it is.
pub fn check_sysctl_key(key: &str) -> Result<(), String> {
    if let Some((_, why)) = FORBIDDEN_SYSCTLS.iter().find(|(k, _)| *k == key) {
        return Err(format!("forbidden sysctl: {why}"));
    }
    let well_formed = key.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    if !well_formed {
        return Err("not a sysctl name (dot-separated letters, digits, _ and -)".to_string());
    }
    let tree = key.split('.').next().unwrap_or_default();
    if !SYSCTL_TREES.contains(&tree) || !key.contains('.') {
        return Err(format!(
            "sysctl outside the allowed trees ({})",
            SYSCTL_TREES.join(", ")
        ));
    }
    Ok(())
}

/// Why a sysctl value is refused, if it is: numbers, or one plain word.
pub fn check_sysctl_value(value: &str) -> Result<(), String> {
    let numbers =
        !value.trim().is_empty() && value.split_whitespace().all(|n| n.parse::<i64>().is_ok());
    let word = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    if numbers || word {
        Ok(())
    } else {
        Err(format!(
            "sysctl value {value:?} is neither numbers nor one plain word (letters, digits, _.:-)"
        ))
    }
}

/// Why a module name is refused, if it is.
pub fn check_module(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a module name (a-z, 0-9, _ and -)"))
    }
}

/// Why an sshd keyword or its value is refused, if it is.
pub fn check_sshd(key: &str, value: &str) -> Result<(), String> {
    if let Some((_, why)) = FORBIDDEN_SSHD_KEYS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
    {
        return Err(format!("forbidden sshd keyword: {why}"));
    }
    if !SSHD_KEYS.contains(&key) {
        return Err(format!(
            "sshd keyword not in the allowlist; allowed: {}",
            SSHD_KEYS.join(", ")
        ));
    }
    let printable = !value.trim().is_empty()
        && value.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        && !value.contains('#');
    if printable {
        Ok(())
    } else {
        Err(format!(
            "sshd value {value:?} must be printable ASCII on one line, without #"
        ))
    }
}

/// Why a permission rule is refused, if it is.
pub fn check_permission(path: &str, mode: u32, owner: &str, group: &str) -> Vec<String> {
    let mut refusals = Vec::new();
    if !PERMISSION_FILES.contains(&path) {
        refusals.push(format!(
            "file not in the permission allowlist; allowed: {}",
            PERMISSION_FILES.join(", ")
        ));
    }
    if mode & FORBIDDEN_MODE_BITS != 0 || mode > 0o7777 {
        refusals.push(format!(
            "mode {mode:04o} may not set set-id, sticky or group/other write bits"
        ));
    }
    if owner != "root" {
        refusals.push(format!(
            "owner {owner:?} refused: managed files belong to root"
        ));
    }
    if !PERMISSION_GROUPS.contains(&group) {
        refusals.push(format!(
            "group {group:?} refused; allowed: {}",
            PERMISSION_GROUPS.join(", ")
        ));
    }
    refusals
}

/// Parses an octal mode written `"0640"` or `"640"`.
pub fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.trim();
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_hidden_in_sysctls_are_refused_by_name() {
        let refusal = check_sysctl_key("kernel.core_pattern").unwrap_err();
        assert!(refusal.contains("forbidden sysctl"), "{refusal}");
        assert!(check_sysctl_key("net.ipv4.ip_forward").is_ok());
        assert!(check_sysctl_key("debug.exception-trace").is_err());
        assert!(check_sysctl_value("|/bin/sh").is_err());
        assert!(check_sysctl_value("32768 60999").is_ok());
        assert!(check_sysctl_value("bbr").is_ok());
    }

    #[test]
    fn sshd_commands_are_refused_and_known_keys_accepted() {
        assert!(check_sshd("ForceCommand", "/bin/sh")
            .unwrap_err()
            .contains("forbidden"));
        assert!(check_sshd("PermitRootLogin", "no").is_ok());
        assert!(check_sshd("PermitRootLogin", "no\nForceCommand x").is_err());
        assert!(check_sshd("Banner", "/etc/issue")
            .unwrap_err()
            .contains("allowlist"));
    }

    #[test]
    fn permission_rules_cannot_open_files() {
        assert!(check_permission("/etc/shadow", 0o640, "root", "shadow").is_empty());
        assert_eq!(
            check_permission("/etc/shadow", 0o666, "root", "shadow").len(),
            1
        );
        assert_eq!(
            check_permission("/root/.ssh/authorized_keys", 0o600, "bob", "root").len(),
            2
        );
        assert_eq!(parse_mode("0640"), Some(0o640));
        assert_eq!(parse_mode("rw-"), None);
    }
}
