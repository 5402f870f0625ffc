//! The `containerd` section: containerd's own TOML, written in the profile as a string block,
//! config `version = 2` (containerd 1.6 and 1.7) or `version = 3` (containerd 2.x), limited
//! to an allowlist of keys and merged over defaults (systemd cgroups for runc).
//!
//! containerd itself accepts unknown keys and wrong types inside plugin sections, so every
//! key is checked here.
//!
//! Shortcoming: version 3 cannot set registry mirrors or credentials inline (only
//! `config_path`), and only the runc runtime can be configured in either version.

use toml::{Table, Value};

use crate::errors::{join, ProfileErrors};

mod allowlist;

pub use allowlist::FORBIDDEN;
use allowlist::{Kind, ALLOWED_V2, ALLOWED_V3};

/// What a secret shows as in plans and redacted profiles.
pub const REDACTED: &str = "<redacted>";
/// Keys whose values are credentials, at any depth.
pub const SECRET_KEYS: [&str; 4] = ["password", "auth", "identitytoken", "registrytoken"];
/// The only registry `config_path` accepted: hosts files stay where the node keeps them.
pub const CERTS_DIR: &str = "/etc/containerd/certs.d";

/// Defaults for config version 2, under the profile.
pub const DEFAULTS_V2: &str = r#"version = 2

[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "registry.k8s.io/pause:3.9"

[plugins."io.containerd.grpc.v1.cri".containerd]
default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
SystemdCgroup = true
"#;

/// Defaults for config version 3, under the profile.
pub const DEFAULTS_V3: &str = r#"version = 3

[plugins."io.containerd.cri.v1.images".pinned_images]
sandbox = "registry.k8s.io/pause:3.10"

[plugins."io.containerd.cri.v1.runtime".containerd]
default_runtime_name = "runc"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
SystemdCgroup = true
"#;

/// The validated containerd configuration, merged over the defaults of its version.
#[derive(Clone, Debug, PartialEq)]
pub struct Containerd {
    /// Config version, 2 or 3.
    pub version: i64,
    /// The configuration as written to `config.toml`.
    pub merged: Table,
    /// The text of the profile, as given.
    pub source: String,
}

impl Containerd {
    /// Parses and checks the TOML text given at `path`, and merges it over the defaults.
    pub fn parse(text: &str, path: &str, errors: &mut ProfileErrors) -> Option<Self> {
        let table: Table = match toml::from_str(text) {
            Ok(table) => table,
            Err(error) => {
                errors.push(path, format!("not valid TOML: {}", error.message()));
                return None;
            }
        };
        let version = match table.get("version").and_then(Value::as_integer) {
            Some(v @ (2 | 3)) => v,
            Some(other) => {
                errors.push(join(path, "version"), format!("config version {other} is not supported; use 2 (containerd 1.6/1.7) or 3 (containerd 2.x)"));
                return None;
            }
            None => {
                errors.push(
                    join(path, "version"),
                    "missing: say version = 2 (containerd 1.6/1.7) or version = 3 (containerd 2.x)",
                );
                return None;
            }
        };
        let allowed = if version == 2 { ALLOWED_V2 } else { ALLOWED_V3 };
        let before = errors.len();
        check_table(&table, &mut Vec::new(), allowed, path, version, errors);
        if errors.len() > before {
            return None;
        }
        let mut merged = defaults(version);
        merge(&mut merged, &table);
        Some(Self {
            version,
            merged,
            source: text.to_string(),
        })
    }

    /// The file content, credentials included (written 0600 then).
    pub fn render(&self) -> String {
        format!(
            "{}{}",
            crate::desired::MANAGED_HEADER_HASH,
            render_table(&self.merged)
        )
    }

    /// The file content with credentials replaced by [`REDACTED`].
    pub fn render_redacted(&self) -> String {
        let mut table = self.merged.clone();
        redact(&mut table);
        format!(
            "{}{}",
            crate::desired::MANAGED_HEADER_HASH,
            render_table(&table)
        )
    }

    /// Whether the file holds registry credentials.
    pub fn has_secrets(&self) -> bool {
        let mut table = self.merged.clone();
        redact(&mut table)
    }
}

/// The defaults of config `version` as a table.
pub fn defaults(version: i64) -> Table {
    let text = if version == 3 {
        DEFAULTS_V3
    } else {
        DEFAULTS_V2
    };
    toml::from_str(text).expect("the built-in containerd defaults are valid TOML")
}

/// `text` (a containerd TOML file) with credentials replaced by [`REDACTED`]; a file that is
/// not TOML is not shown at all, as it might hold anything.
pub fn redact_text(text: &str) -> String {
    match toml::from_str::<Table>(text) {
        Ok(mut table) => {
            if !redact(&mut table) {
                return text.to_string();
            }
            // Keep the comment lines that head the file, such as the agent's own header.
            let head: String = text
                .lines()
                .take_while(|line| line.starts_with('#'))
                .map(|line| format!("{line}\n"))
                .collect();
            format!("{head}{}", render_table(&table))
        }
        Err(_) => "# <not shown: not valid TOML, it may hold credentials>\n".to_string(),
    }
}

/// Replaces every credential in `table`; says whether there was one.
pub fn redact(table: &mut Table) -> bool {
    let mut found = false;
    for (key, value) in table.iter_mut() {
        match value {
            Value::Table(inner) => found |= redact(inner),
            Value::String(text) if SECRET_KEYS.contains(&key.as_str()) => {
                *text = REDACTED.to_string();
                found = true;
            }
            _ => {}
        }
    }
    found
}

fn render_table(table: &Table) -> String {
    toml::to_string(table).expect("a TOML table always serialises")
}

/// Merges `over` into `base`, tables key by key.
fn merge(base: &mut Table, over: &Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(Value::Table(existing)), Value::Table(inner)) => merge(existing, inner),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Checks every key of `table` below `segments` against `allowed`.
fn check_table(
    table: &Table,
    segments: &mut Vec<String>,
    allowed: &[(&[&str], Kind)],
    path: &str,
    version: i64,
    errors: &mut ProfileErrors,
) {
    for (key, value) in table {
        segments.push(key.clone());
        let at = segments.iter().fold(path.to_string(), |p, s| join(&p, s));
        if let Some((_, why)) = FORBIDDEN.iter().find(|(k, _)| k == key) {
            errors.push(at, format!("forbidden containerd key: {why}"));
        } else if let Value::Table(inner) = value {
            if allowed
                .iter()
                .any(|(pattern, _)| is_prefix(pattern, segments))
            {
                check_table(inner, segments, allowed, path, version, errors);
            } else {
                errors.push(at, refusal(segments, version));
            }
        } else {
            match allowed
                .iter()
                .find(|(pattern, _)| matches(pattern, segments))
            {
                Some((_, kind)) => check_value(value, *kind, &at, errors),
                None => errors.push(at, refusal(segments, version)),
            }
        }
        segments.pop();
    }
}

/// The message for a key outside the allowlist.
fn refusal(segments: &[String], version: i64) -> String {
    let parent = segments.len().checked_sub(2).map(|i| segments[i].as_str());
    if parent == Some("runtimes") {
        return "only the runc runtime may be configured: other runtimes name shim binaries the manager must not choose".to_string();
    }
    format!("not in the containerd allowlist for config version {version}")
}

fn check_value(value: &Value, kind: Kind, path: &str, errors: &mut ProfileErrors) {
    let shape_ok = match kind {
        Kind::Bool => value.is_bool(),
        Kind::Int => value.is_integer(),
        Kind::Str | Kind::Secret | Kind::Exactly(_) => value.is_str(),
        Kind::Urls => value
            .as_array()
            .is_some_and(|items| items.iter().all(Value::is_str)),
    };
    if !shape_ok {
        errors.push(path, format!("wrong type: expected {}", describe(kind)));
        return;
    }
    match kind {
        Kind::Exactly(only) if value.as_str() != Some(only) => {
            errors.push(path, format!("must be {only:?}"));
        }
        Kind::Urls => {
            for url in value
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    errors.push(path, format!("{url:?} is not an http(s):// URL"));
                }
            }
        }
        _ => {}
    }
}

fn describe(kind: Kind) -> &'static str {
    match kind {
        Kind::Bool => "true or false",
        Kind::Int => "an integer",
        Kind::Str | Kind::Secret | Kind::Exactly(_) => "a string",
        Kind::Urls => "a list of URLs",
    }
}

fn matches(pattern: &[&str], segments: &[String]) -> bool {
    pattern.len() == segments.len() && is_prefix(pattern, segments)
}

fn is_prefix(pattern: &[&str], segments: &[String]) -> bool {
    pattern.len() >= segments.len()
        && pattern
            .iter()
            .zip(segments)
            .all(|(p, s)| *p == "*" || p == s)
}

#[cfg(test)]
mod tests;
