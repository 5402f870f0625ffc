//! OPI Fleet node profiles: the YAML format, its validation (every problem listed with its
//! path), the allowlists per kind of change, the secure defaults, secret redaction, the node's
//! hardening floor and the rendering of a profile into a [`DesiredState`].
//!
//! No I/O here: the manager validates with this crate before storing a profile, and the agent
//! renders what it applies with it.
//!
//! ```yaml
//! apiVersion: opi.fleet/v1
//! kind: NodeProfile
//! hardening:
//!   baseline: anssi-bp028-intermediary
//!   overrides:
//!     sysctls: {net.ipv4.ip_forward: 1}
//!   exceptions:
//!     - {item: sysctl/net.ipv4.ip_forward, reason: pods are routed by the node}
//! kubelet: {maxPods: 110}
//! containerd: |
//!   version = 2
//! apply: {verifyTimeout: 90s}
//! ```
//!
//! Module map: [`errors`] (problems with paths), [`hardening`] (baselines, overrides,
//! exceptions, rules, settings files, the guide's coverage), [`kubelet`], [`containerd`],
//! [`options`] (the `apply` section), [`floor`], [`desired`] (the rendered state),
//! [`compliance`] (what the baseline promises, for evidence).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod compliance;
pub mod containerd;
pub mod desired;
pub mod errors;
pub mod floor;
pub mod hardening;
pub mod kubelet;
pub mod options;
mod yaml;

use serde_norway::Value;

pub use compliance::{ExceptionRecord, ItemPromise, Promise, RulePromise};
pub use containerd::Containerd;
pub use desired::{
    ChangeKind, DesiredState, KeyEdit, ManagedFile, Permission, Service, SysctlSetting,
};
pub use errors::{Problem, ProfileErrors};
pub use floor::{Floor, SysctlFloor};
pub use hardening::settings::SettingFile;
pub use hardening::{Hardening, Level, Scope};
pub use kubelet::Kubelet;
pub use options::{ApplyOptions, DriftRemediation};

/// The only `apiVersion` of a profile.
pub const API_VERSION: &str = "opi.fleet/v1";
/// The only `kind` of a profile.
pub const KIND: &str = "NodeProfile";
/// Top-level keys of a profile.
pub const TOP_KEYS: [&str; 6] = [
    "apiVersion",
    "kind",
    "hardening",
    "kubelet",
    "containerd",
    "apply",
];

/// A validated node profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// The resolved `hardening` section (empty when absent).
    pub hardening: Hardening,
    /// The `kubelet` section merged over the defaults, when present.
    pub kubelet: Option<Kubelet>,
    /// The `containerd` section merged over the defaults, when present.
    pub containerd: Option<Containerd>,
    /// The `apply` section.
    pub apply: ApplyOptions,
    /// The document as written, for [`Profile::to_yaml`].
    document: Value,
}

impl Profile {
    /// Parses and validates a profile, reporting every problem at once.
    pub fn from_yaml(text: &str) -> Result<Profile, ProfileErrors> {
        let mut errors = ProfileErrors::default();
        let document: Value = match serde_norway::from_str(text) {
            Ok(document) => document,
            Err(error) => {
                errors.push("(document)", format!("not valid YAML: {error}"));
                return Err(errors);
            }
        };
        let found = yaml::entries(&document, "(document)", &mut errors);
        yaml::refuse_unknown(&found, &TOP_KEYS, "", &mut errors);
        expect_text(&found, "apiVersion", API_VERSION, &mut errors);
        expect_text(&found, "kind", KIND, &mut errors);

        let hardening = yaml::get(&found, "hardening")
            .map(|v| Hardening::parse(v, "hardening", &mut errors))
            .unwrap_or_default();
        let kubelet =
            yaml::get(&found, "kubelet").and_then(|v| Kubelet::parse(v, "kubelet", &mut errors));
        let containerd = yaml::get(&found, "containerd").and_then(|v| match v {
            Value::String(text) => Containerd::parse(text, "containerd", &mut errors),
            _ => {
                errors.push(
                    "containerd",
                    "expected containerd's own TOML as a string block (containerd: |)",
                );
                None
            }
        });
        let apply = yaml::get(&found, "apply")
            .map(|v| ApplyOptions::parse(v, "apply", &mut errors))
            .unwrap_or_default();

        let profile = Profile {
            hardening,
            kubelet,
            containerd,
            apply,
            document,
        };
        errors.into_result(profile)
    }

    /// The profile as written, credentials included.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(&self.document).expect("a YAML tree always serialises")
    }

    /// The profile with registry credentials replaced by `<redacted>`.
    pub fn to_yaml_redacted(&self) -> String {
        let mut document = self.document.clone();
        if let Some(Value::String(text)) = document.get_mut("containerd") {
            *text = containerd::redact_text(text);
        }
        serde_norway::to_string(&document).expect("a YAML tree always serialises")
    }

    /// The state this profile wants on a node whose hardening floor is `floor`.
    pub fn desired_state(&self, floor: &Floor) -> Result<DesiredState, ProfileErrors> {
        desired::build(self, floor)
    }

    /// Problems for exceptions that expired before `today`; the agent refuses to apply them.
    pub fn check_exceptions(&self, today: time::Date) -> Result<(), ProfileErrors> {
        self.hardening.expired_exceptions(today).into_result(())
    }
}

/// Records a problem unless `key` holds exactly `expected`.
fn expect_text(found: &[(String, &Value)], key: &str, expected: &str, errors: &mut ProfileErrors) {
    match yaml::get(found, key).map(Value::as_str) {
        Some(Some(text)) if text == expected => {}
        Some(Some(text)) => errors.push(
            key,
            format!("{text:?} is not supported; expected {expected}"),
        ),
        Some(None) => errors.push(key, format!("expected the string {expected}")),
        None => errors.push(key, format!("missing; expected {expected}")),
    }
}

#[cfg(test)]
mod tests;
