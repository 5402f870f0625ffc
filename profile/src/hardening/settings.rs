//! Settings written in the syntax of the program that reads them: sudo's `Defaults`, keys of
//! `/etc/login.defs`, the login shells' timeout and umask, the core dump limit, systemd's
//! coredump handling and the password quality rules. Each file has a fixed table of the keys
//! a profile may set, each with the rule its value follows; nothing else can be written, so
//! no setting names a program to run or a path to write.
//!
//! Every file but `/etc/login.defs` is a drop-in the agent owns whole. `/etc/login.defs` has
//! no drop-in directory on Debian 12: the agent edits the lines of its keys and keeps the rest.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::desired::{ChangeKind, MANAGED_HEADER_HASH};

/// sudo's drop-in; sudo skips names with a dot, so this one has none.
pub const SUDO_FILE: &str = "/etc/sudoers.d/opi-fleet";
/// The file whose keys are edited in place.
pub const LOGIN_DEFS_FILE: &str = "/etc/login.defs";
/// Read by every login shell through `/etc/profile`.
pub const SHELL_FILE: &str = "/etc/profile.d/opi-fleet.sh";
/// Read by `pam_limits` at every session.
pub const LIMITS_FILE: &str = "/etc/security/limits.d/opi-fleet.conf";
/// Read by `systemd-coredump` at every crash.
pub const COREDUMP_FILE: &str = "/etc/systemd/coredump.conf.d/opi-fleet.conf";
/// Read by `pam_pwquality` at every password change (libpwquality 1.4.1 and later).
pub const PWQUALITY_FILE: &str = "/etc/security/pwquality.conf.d/opi-fleet.conf";

/// A file of settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SettingFile {
    /// sudo `Defaults`.
    Sudo,
    /// Keys of `/etc/login.defs`.
    LoginDefs,
    /// Login shells: `TMOUT` and `umask`.
    Shell,
    /// The core dump limit of every session.
    Limits,
    /// systemd-coredump.
    Coredump,
    /// Password quality.
    Pwquality,
}

/// What a value must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueRule {
    /// `true` or `false`.
    Flag,
    /// An octal mode or umask of 3 or 4 digits, at most 0777.
    Octal,
    /// An integer in a range.
    Integer {
        /// Smallest accepted.
        min: i64,
        /// Largest accepted.
        max: i64,
    },
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A size: digits with an optional K, M, G or T suffix, or `infinity`.
    Size,
}

/// A key a profile may set, with its rule.
#[derive(Clone, Copy, Debug)]
pub struct SettingKey {
    /// The key as the program spells it.
    pub key: &'static str,
    /// What its value must be.
    pub rule: ValueRule,
}

const fn key(key: &'static str, rule: ValueRule) -> SettingKey {
    SettingKey { key, rule }
}

const fn int(min: i64, max: i64) -> ValueRule {
    ValueRule::Integer { min, max }
}

/// sudo `Defaults` a profile may set: flags and bounded numbers only (no path, editor,
/// secure_path or log file: each would let the manager point sudo at a program or a file).
pub const SUDO_KEYS: [SettingKey; 10] = [
    key("env_reset", ValueRule::Flag),
    key("ignore_dot", ValueRule::Flag),
    key("noexec", ValueRule::Flag),
    key("requiretty", ValueRule::Flag),
    key("use_pty", ValueRule::Flag),
    key("umask", ValueRule::Octal),
    key("umask_override", ValueRule::Flag),
    key("passwd_tries", int(1, 10)),
    key("timestamp_timeout", int(0, 1440)),
    key("log_denied", ValueRule::Flag),
];

/// `/etc/login.defs` keys a profile may set.
pub const LOGIN_DEFS_KEYS: [SettingKey; 14] = [
    key("UMASK", ValueRule::Octal),
    key("HOME_MODE", ValueRule::Octal),
    key("ENCRYPT_METHOD", ValueRule::Choice(&["SHA512", "YESCRYPT"])),
    key("YESCRYPT_COST_FACTOR", int(1, 11)),
    key("SHA_CRYPT_MIN_ROUNDS", int(5000, 999_999_999)),
    key("SHA_CRYPT_MAX_ROUNDS", int(5000, 999_999_999)),
    key("PASS_MAX_DAYS", int(1, 99999)),
    key("PASS_MIN_DAYS", int(0, 99999)),
    key("PASS_WARN_AGE", int(0, 99999)),
    key("LOGIN_RETRIES", int(1, 10)),
    key("LOGIN_TIMEOUT", int(1, 3600)),
    key("FAILLOG_ENAB", ValueRule::Choice(&["yes", "no"])),
    key("LOG_OK_LOGINS", ValueRule::Choice(&["yes", "no"])),
    key("SYSLOG_SU_ENAB", ValueRule::Choice(&["yes", "no"])),
];

/// Login shell settings.
pub const SHELL_KEYS: [SettingKey; 2] =
    [key("TMOUT", int(60, 86400)), key("umask", ValueRule::Octal)];

/// Session limits.
pub const LIMITS_KEYS: [SettingKey; 1] = [key("core", int(0, 1 << 40))];

/// systemd-coredump settings.
pub const COREDUMP_KEYS: [SettingKey; 4] = [
    key(
        "Storage",
        ValueRule::Choice(&["none", "external", "journal"]),
    ),
    key("ProcessSizeMax", ValueRule::Size),
    key("ExternalSizeMax", ValueRule::Size),
    key("JournalSizeMax", ValueRule::Size),
];

/// Password quality settings.
pub const PWQUALITY_KEYS: [SettingKey; 11] = [
    key("minlen", int(6, 128)),
    key("minclass", int(0, 4)),
    key("dcredit", int(-16, 16)),
    key("ucredit", int(-16, 16)),
    key("lcredit", int(-16, 16)),
    key("ocredit", int(-16, 16)),
    key("maxrepeat", int(0, 128)),
    key("difok", int(0, 128)),
    key("retry", int(1, 10)),
    key("dictcheck", int(0, 1)),
    key("enforce_for_root", ValueRule::Flag),
];

impl SettingFile {
    /// Every file, in the order the README lists them.
    pub const ALL: [SettingFile; 6] = [
        SettingFile::Sudo,
        SettingFile::LoginDefs,
        SettingFile::Shell,
        SettingFile::Limits,
        SettingFile::Coredump,
        SettingFile::Pwquality,
    ];

    /// The first part of its items' names (`sudo/use_pty`, `login.defs/UMASK`).
    pub fn prefix(self) -> &'static str {
        match self {
            SettingFile::Sudo => "sudo",
            SettingFile::LoginDefs => "login.defs",
            SettingFile::Shell => "shell",
            SettingFile::Limits => "limits",
            SettingFile::Coredump => "coredump",
            SettingFile::Pwquality => "pwquality",
        }
    }

    /// Its key under `hardening.overrides` and in baseline items.
    pub fn section(self) -> &'static str {
        match self {
            SettingFile::LoginDefs => "loginDefs",
            other => other.prefix(),
        }
    }

    /// The node path of the file.
    pub fn path(self) -> &'static str {
        match self {
            SettingFile::Sudo => SUDO_FILE,
            SettingFile::LoginDefs => LOGIN_DEFS_FILE,
            SettingFile::Shell => SHELL_FILE,
            SettingFile::Limits => LIMITS_FILE,
            SettingFile::Coredump => COREDUMP_FILE,
            SettingFile::Pwquality => PWQUALITY_FILE,
        }
    }

    /// The kind of change it belongs to.
    pub fn kind(self) -> ChangeKind {
        match self {
            SettingFile::Sudo => ChangeKind::Sudo,
            SettingFile::LoginDefs => ChangeKind::LoginDefs,
            SettingFile::Shell => ChangeKind::Shell,
            SettingFile::Limits | SettingFile::Coredump => ChangeKind::Coredump,
            SettingFile::Pwquality => ChangeKind::Pwquality,
        }
    }

    /// Mode of the drop-in: sudo refuses a sudoers file others can read or write.
    pub fn mode(self) -> u32 {
        match self {
            SettingFile::Sudo => 0o440,
            _ => 0o644,
        }
    }

    /// Whether the agent edits keys in an existing file rather than owning a drop-in.
    pub fn is_edit(self) -> bool {
        self == SettingFile::LoginDefs
    }

    /// The keys a profile may set in it.
    pub fn keys(self) -> &'static [SettingKey] {
        match self {
            SettingFile::Sudo => &SUDO_KEYS,
            SettingFile::LoginDefs => &LOGIN_DEFS_KEYS,
            SettingFile::Shell => &SHELL_KEYS,
            SettingFile::Limits => &LIMITS_KEYS,
            SettingFile::Coredump => &COREDUMP_KEYS,
            SettingFile::Pwquality => &PWQUALITY_KEYS,
        }
    }

    /// The file whose items start with `prefix`, if any.
    pub fn from_prefix(prefix: &str) -> Option<SettingFile> {
        Self::ALL.into_iter().find(|f| f.prefix() == prefix)
    }

    /// `value` of `key` as written, or why it is refused.
    pub fn check(self, key: &str, value: &str) -> Result<String, String> {
        let Some(known) = self.keys().iter().find(|k| k.key == key) else {
            let names: Vec<&str> = self.keys().iter().map(|k| k.key).collect();
            return Err(format!(
                "{} key not in the allowlist; allowed: {}",
                self.prefix(),
                names.join(", ")
            ));
        };
        known.rule.check(value.trim())
    }

    /// Whether two values of `key` mean the same (`077` and `0077`, `yes` and `true`).
    pub fn same(self, key: &str, a: &str, b: &str) -> bool {
        let rule = self.keys().iter().find(|k| k.key == key).map(|k| k.rule);
        match (rule, parse_octal(a), parse_octal(b)) {
            (Some(ValueRule::Octal), Some(a), Some(b)) => a == b,
            _ => a.trim() == b.trim(),
        }
    }

    /// The drop-in's content for `settings` (not for [`SettingFile::LoginDefs`]).
    pub fn render(self, settings: &BTreeMap<String, String>) -> String {
        let mut text = MANAGED_HEADER_HASH.to_string();
        match self {
            SettingFile::Sudo => {
                for (key, value) in settings {
                    text.push_str(&match value.as_str() {
                        "true" => format!("Defaults {key}\n"),
                        "false" => format!("Defaults !{key}\n"),
                        _ => format!("Defaults {key}={value}\n"),
                    });
                }
            }
            SettingFile::Shell => render_shell(settings, &mut text),
            SettingFile::Limits => {
                for (key, value) in settings {
                    // `*` leaves root out: root gets its own lines.
                    for who in ["*", "root"] {
                        for kind in ["soft", "hard"] {
                            text.push_str(&format!("{who} {kind} {key} {value}\n"));
                        }
                    }
                }
            }
            SettingFile::Coredump => {
                text.push_str("[Coredump]\n");
                for (key, value) in settings {
                    text.push_str(&format!("{key}={value}\n"));
                }
            }
            SettingFile::Pwquality => {
                for (key, value) in settings {
                    match value.as_str() {
                        "true" => text.push_str(&format!("{key}\n")),
                        "false" => {}
                        _ => text.push_str(&format!("{key} = {value}\n")),
                    }
                }
            }
            SettingFile::LoginDefs => {
                for (key, value) in settings {
                    text.push_str(&format!("{key}\t{value}\n"));
                }
            }
        }
        text
    }

    /// `current` with every line setting a key of `settings` replaced by its value, and the
    /// keys it lacks appended; used for [`SettingFile::LoginDefs`].
    pub fn edit(self, current: &str, settings: &BTreeMap<String, String>) -> String {
        let mut written = std::collections::BTreeSet::new();
        let mut text = String::new();
        for line in current.lines() {
            let key = line.split_whitespace().next().unwrap_or_default();
            match settings.get(key) {
                Some(_) if written.contains(key) => {}
                Some(value) => {
                    text.push_str(&format!("{key}\t{value}\n"));
                    written.insert(key.to_string());
                }
                None => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        let missing: Vec<_> = settings
            .iter()
            .filter(|(key, _)| !written.contains(key.as_str()))
            .collect();
        if !missing.is_empty() {
            text.push_str("# Set by opi-agent from the node profile.\n");
        }
        for (key, value) in missing {
            text.push_str(&format!("{key}\t{value}\n"));
        }
        text
    }

    /// The settings found in `content`, as the program would read them (the last line of a
    /// key wins), for evidence and drift.
    pub fn read(self, content: &str) -> BTreeMap<String, String> {
        let lines = content
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        let mut found = BTreeMap::new();
        for line in lines {
            if let Some((key, value)) = self.read_line(line) {
                found.insert(key, value);
            }
        }
        found
    }

    fn read_line(self, line: &str) -> Option<(String, String)> {
        let pair = |k: &str, v: &str| Some((k.trim().to_string(), v.trim().to_string()));
        match self {
            SettingFile::Sudo => {
                let rest = line.strip_prefix("Defaults")?.trim();
                match rest.split_once('=') {
                    Some((key, value)) => pair(key, value),
                    None => match rest.strip_prefix('!') {
                        Some(flag) => pair(flag, "false"),
                        None => pair(rest, "true"),
                    },
                }
            }
            SettingFile::LoginDefs => {
                let mut words = line.split_whitespace();
                pair(words.next()?, words.next().unwrap_or_default())
            }
            SettingFile::Shell => match line.strip_prefix("umask ") {
                Some(value) => pair("umask", value),
                None => {
                    let at = line.find("TMOUT=")? + "TMOUT=".len();
                    let digits: String = line[at..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    pair("TMOUT", &digits)
                }
            },
            SettingFile::Limits => match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["*", "hard", key, value] => pair(key, value),
                _ => None,
            },
            SettingFile::Coredump => line.split_once('=').and_then(|(k, v)| pair(k, v)),
            SettingFile::Pwquality => match line.split_once('=') {
                Some((key, value)) => pair(key, value),
                None => pair(line, "true"),
            },
        }
    }
}

impl ValueRule {
    /// The value as written, or why it is refused.
    pub fn check(self, value: &str) -> Result<String, String> {
        let ok = match self {
            ValueRule::Flag => matches!(value, "true" | "false"),
            ValueRule::Octal => {
                (3..=4).contains(&value.len()) && parse_octal(value).is_some_and(|m| m <= 0o777)
            }
            ValueRule::Integer { min, max } => {
                value.parse::<i64>().is_ok_and(|n| (min..=max).contains(&n))
            }
            ValueRule::Choice(words) => words.contains(&value),
            ValueRule::Size => {
                let digits = value.trim_end_matches(['K', 'M', 'G', 'T']);
                value == "infinity"
                    || (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
            }
        };
        if ok {
            Ok(value.to_string())
        } else {
            Err(format!("{value:?} is not {self}"))
        }
    }
}

impl fmt::Display for ValueRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueRule::Flag => f.write_str("true or false"),
            ValueRule::Octal => {
                f.write_str("an octal mask of 3 or 4 digits, quoted in YAML, such as \"077\"")
            }
            ValueRule::Integer { min, max } => write!(f, "an integer from {min} to {max}"),
            ValueRule::Choice(words) => write!(f, "one of {}", words.join(", ")),
            ValueRule::Size => f.write_str("a size such as 0, 512M or infinity"),
        }
    }
}

impl fmt::Display for SettingFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// `umask` first, then a timeout no later profile script can lift.
///
/// Shortcoming: non-login interactive shells do not read `/etc/profile.d`, so the timeout
/// covers login shells only.
fn render_shell(settings: &BTreeMap<String, String>, text: &mut String) {
    if let Some(umask) = settings.get("umask") {
        text.push_str(&format!("umask {umask}\n"));
    }
    if let Some(timeout) = settings.get("TMOUT") {
        // Sourced twice in a nested login shell: set it only once, then it is read-only.
        text.push_str(&format!(
            "if [ \"${{TMOUT:-}}\" != {timeout} ]; then TMOUT={timeout}; readonly TMOUT; export TMOUT; fi\n"
        ));
    }
}

fn parse_octal(text: &str) -> Option<u32> {
    let text = text.trim();
    (!text.is_empty() && text.len() <= 4)
        .then(|| u32::from_str_radix(text, 8).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_drop_in_reads_back_what_it_renders() {
        let cases = [
            (
                SettingFile::Sudo,
                map(&[
                    ("use_pty", "true"),
                    ("requiretty", "false"),
                    ("umask", "0077"),
                ]),
            ),
            (
                SettingFile::Shell,
                map(&[("TMOUT", "600"), ("umask", "077")]),
            ),
            (SettingFile::Limits, map(&[("core", "0")])),
            (
                SettingFile::Coredump,
                map(&[("Storage", "none"), ("ProcessSizeMax", "0")]),
            ),
            (
                SettingFile::Pwquality,
                map(&[("minlen", "15"), ("enforce_for_root", "true")]),
            ),
        ];
        for (file, settings) in cases {
            let text = file.render(&settings);
            assert_eq!(file.read(&text), settings, "{file}:\n{text}");
        }
    }

    #[test]
    fn sudo_defaults_are_written_as_sudo_reads_them() {
        let text = SettingFile::Sudo.render(&map(&[("noexec", "true"), ("umask", "0077")]));
        assert!(
            text.ends_with("Defaults noexec\nDefaults umask=0077\n"),
            "{text}"
        );
    }

    #[test]
    fn login_defs_keys_are_replaced_in_place_and_missing_ones_appended() {
        let current = "# comment\nUMASK\t\t022\nMAIL_DIR /var/mail\nUMASK 027\n";
        let settings = map(&[("UMASK", "077"), ("ENCRYPT_METHOD", "YESCRYPT")]);
        let edited = SettingFile::LoginDefs.edit(current, &settings);
        assert_eq!(
            edited,
            "# comment\nUMASK\t077\nMAIL_DIR /var/mail\n# Set by opi-agent from the node profile.\nENCRYPT_METHOD\tYESCRYPT\n"
        );
        let read = SettingFile::LoginDefs.read(&edited);
        assert_eq!(read["UMASK"], "077");
        assert_eq!(read["MAIL_DIR"], "/var/mail");
        assert_eq!(
            SettingFile::LoginDefs.edit(&edited, &settings),
            edited,
            "idempotent"
        );
    }

    #[test]
    fn values_outside_their_rule_and_unknown_keys_are_refused() {
        assert!(SettingFile::Sudo.check("secure_path", "/tmp").is_err());
        assert!(SettingFile::Sudo
            .check("logfile", "/etc/shadow")
            .unwrap_err()
            .contains("allowlist"));
        assert!(SettingFile::Sudo.check("umask", "0777").is_ok());
        assert!(SettingFile::Sudo.check("umask", "0778").is_err());
        assert!(SettingFile::LoginDefs
            .check("ENCRYPT_METHOD", "MD5")
            .is_err());
        assert!(SettingFile::Shell.check("TMOUT", "600").is_ok());
        assert!(SettingFile::Shell.check("TMOUT", "600; rm -rf /").is_err());
        assert!(SettingFile::Coredump
            .check("ProcessSizeMax", "512M")
            .is_ok());
        assert!(SettingFile::Coredump.check("Storage", "|/bin/sh").is_err());
        assert!(SettingFile::Shell.same("umask", "077", "0077"));
    }
}
