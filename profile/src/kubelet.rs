//! The `kubelet` section: an upstream `KubeletConfiguration` (`kubelet.config.k8s.io/v1beta1`,
//! as read by kubelet 1.29, 1.30 and 1.31), limited to an allowlist of keys and merged over
//! secure defaults.
//!
//! Shortcoming: one allowlist serves 1.29 to 1.31, so keys new in 1.30 or 1.31 are refused.

use serde_norway::{Mapping, Value};

use crate::errors::{join, ProfileErrors};
use crate::yaml;

/// The only `apiVersion` accepted.
pub const KUBELET_API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
/// The only `kind` accepted.
pub const KUBELET_KIND: &str = "KubeletConfiguration";
/// Kubernetes minor versions whose kubelet reads every allowlisted key.
pub const KUBERNETES_VERSIONS: [&str; 3] = ["1.29", "1.30", "1.31"];

/// The secure defaults the profile is merged over.
pub const KUBELET_DEFAULTS: &str = "\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
    cacheTTL: 2m0s
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 5m0s
    cacheUnauthorizedTTL: 30s
readOnlyPort: 0
protectKernelDefaults: true
rotateCertificates: true
serverTLSBootstrap: true
eventRecordQPS: 5
podPidsLimit: 4096
cgroupDriver: systemd
tlsMinVersion: VersionTLS12
";

/// Sysctls kubelet requires when `protectKernelDefaults` is on: it refuses to start otherwise.
pub const KERNEL_DEFAULTS: [(&str, &str); 6] = [
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("kernel.keys.root_maxkeys", "1000000"),
    ("kernel.keys.root_maxbytes", "25000000"),
];

/// Keys refused by name, with the rule they break.
pub const FORBIDDEN: [(&str, &str); 10] = [
    (
        "staticPodPath",
        "a static pod path runs whatever pods are written there, bypassing the API server",
    ),
    (
        "staticPodURL",
        "a static pod URL runs pods fetched from anywhere, bypassing the API server",
    ),
    (
        "containerRuntimeEndpoint",
        "the container runtime socket is fixed by the node",
    ),
    (
        "imageServiceEndpoint",
        "the image service socket is fixed by the node",
    ),
    (
        "volumePluginDir",
        "it names a directory of plugin binaries kubelet runs",
    ),
    (
        "tlsCertFile",
        "kubelet's serving certificate comes from certificate rotation",
    ),
    (
        "tlsPrivateKeyFile",
        "kubelet's serving key comes from certificate rotation",
    ),
    (
        "allowedUnsafeSysctls",
        "it lets pods change node kernel settings",
    ),
    (
        "authentication.x509.clientCAFile",
        "the client CA that kubelet trusts is fixed by the node",
    ),
    (
        "enableDebuggingHandlers",
        "debugging handlers are left at kubelet's default",
    ),
];

/// The shape a key's value must have.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Bool,
    Int,
    Str,
    Duration,
    StrList,
    StrMap,
    BoolMap,
    Enum(&'static [&'static str]),
    Object(&'static [(&'static str, Kind)]),
}

use Kind::*;

const AUTHENTICATION: &[(&str, Kind)] = &[
    ("anonymous", Object(&[("enabled", Bool)])),
    (
        "webhook",
        Object(&[("enabled", Bool), ("cacheTTL", Duration)]),
    ),
    ("x509", Object(&[])),
];
const AUTHORIZATION: &[(&str, Kind)] = &[
    ("mode", Enum(&["Webhook"])),
    (
        "webhook",
        Object(&[
            ("cacheAuthorizedTTL", Duration),
            ("cacheUnauthorizedTTL", Duration),
        ]),
    ),
];

/// Every key a profile may set, with the shape of its value.
const FIELDS: &[(&str, Kind)] = &[
    ("apiVersion", Enum(&[KUBELET_API_VERSION])),
    ("kind", Enum(&[KUBELET_KIND])),
    ("address", Str),
    ("port", Int),
    ("readOnlyPort", Int),
    ("healthzPort", Int),
    ("healthzBindAddress", Str),
    ("clusterDomain", Str),
    ("clusterDNS", StrList),
    ("cgroupDriver", Enum(&["systemd", "cgroupfs"])),
    ("maxPods", Int),
    ("podsPerCore", Int),
    ("podPidsLimit", Int),
    ("eventRecordQPS", Int),
    ("eventBurst", Int),
    ("registryPullQPS", Int),
    ("registryBurst", Int),
    ("serializeImagePulls", Bool),
    ("maxParallelImagePulls", Int),
    ("evictionHard", StrMap),
    ("evictionSoft", StrMap),
    ("evictionSoftGracePeriod", StrMap),
    ("evictionMinimumReclaim", StrMap),
    ("evictionPressureTransitionPeriod", Duration),
    ("evictionMaxPodGracePeriod", Int),
    ("imageGCHighThresholdPercent", Int),
    ("imageGCLowThresholdPercent", Int),
    ("imageMinimumGCAge", Duration),
    ("kubeReserved", StrMap),
    ("systemReserved", StrMap),
    ("enforceNodeAllocatable", StrList),
    ("containerLogMaxSize", Str),
    ("containerLogMaxFiles", Int),
    ("rotateCertificates", Bool),
    ("serverTLSBootstrap", Bool),
    ("protectKernelDefaults", Bool),
    ("tlsCipherSuites", StrList),
    ("tlsMinVersion", Enum(&["VersionTLS12", "VersionTLS13"])),
    ("featureGates", BoolMap),
    ("shutdownGracePeriod", Duration),
    ("shutdownGracePeriodCriticalPods", Duration),
    ("cpuManagerPolicy", Enum(&["none", "static"])),
    ("cpuManagerReconcilePeriod", Duration),
    ("memoryManagerPolicy", Enum(&["None", "Static"])),
    (
        "topologyManagerPolicy",
        Enum(&["none", "best-effort", "restricted", "single-numa-node"]),
    ),
    ("topologyManagerScope", Enum(&["container", "pod"])),
    ("makeIPTablesUtilChains", Bool),
    ("streamingConnectionIdleTimeout", Duration),
    ("nodeStatusUpdateFrequency", Duration),
    ("nodeStatusReportFrequency", Duration),
    ("runtimeRequestTimeout", Duration),
    ("syncFrequency", Duration),
    ("failSwapOn", Bool),
    ("seccompDefault", Bool),
    ("localStorageCapacityIsolation", Bool),
    (
        "logging",
        Object(&[("format", Enum(&["text", "json"])), ("verbosity", Int)]),
    ),
    ("authentication", Object(AUTHENTICATION)),
    ("authorization", Object(AUTHORIZATION)),
];

/// The validated kubelet configuration, merged over [`KUBELET_DEFAULTS`].
#[derive(Clone, Debug, PartialEq)]
pub struct Kubelet {
    /// The configuration as written to kubelet's file.
    pub merged: Value,
}

impl Kubelet {
    /// Checks the section at `path` and merges it over the defaults.
    pub fn parse(value: &Value, path: &str, errors: &mut ProfileErrors) -> Option<Self> {
        let before = errors.len();
        check_object(value, FIELDS, path, "", errors);
        if errors.len() > before {
            return None;
        }
        let mut merged = defaults();
        merge(&mut merged, value);
        Some(Self { merged })
    }

    /// The file content: the merged configuration as YAML, with a header.
    pub fn render(&self) -> String {
        let body = serde_norway::to_string(&self.merged).expect("a YAML tree always serialises");
        format!("{}{body}", crate::desired::MANAGED_HEADER_HASH)
    }

    /// Whether kubelet will insist on [`KERNEL_DEFAULTS`].
    pub fn protects_kernel_defaults(&self) -> bool {
        self.merged
            .get("protectKernelDefaults")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// The secure defaults as a tree.
pub fn defaults() -> Value {
    serde_norway::from_str(KUBELET_DEFAULTS).expect("the built-in kubelet defaults are valid YAML")
}

/// Checks a mapping against `fields`; `dotted` is the key path inside the kubelet config.
fn check_object(
    value: &Value,
    fields: &[(&str, Kind)],
    path: &str,
    dotted: &str,
    errors: &mut ProfileErrors,
) {
    for (key, child) in yaml::entries(value, path, errors) {
        let at = join(path, &key);
        let inner = if dotted.is_empty() {
            key.clone()
        } else {
            format!("{dotted}.{key}")
        };
        if let Some((_, why)) = FORBIDDEN.iter().find(|(k, _)| *k == inner) {
            errors.push(at, format!("forbidden kubelet key: {why}"));
            continue;
        }
        match fields.iter().find(|(k, _)| *k == key) {
            Some((_, kind)) => check_value(child, *kind, &at, &inner, errors),
            None => errors.push(at, "not in the kubelet allowlist (kubelet.config.k8s.io/v1beta1 keys the agent accepts)"),
        }
    }
}

/// Checks one value against its kind and the value rules.
fn check_value(value: &Value, kind: Kind, path: &str, dotted: &str, errors: &mut ProfileErrors) {
    match kind {
        Bool => {
            let flag = yaml::boolean(value, path, errors);
            if dotted == "authentication.anonymous.enabled" && flag == Some(true) {
                errors.push(
                    path,
                    "forbidden: anonymous authentication lets anyone who reaches kubelet call it",
                );
            }
        }
        Int => {
            let number = yaml::integer(value, path, errors);
            if dotted == "readOnlyPort" && number.is_some_and(|n| n != 0) {
                errors.push(path, "forbidden: the read-only port serves node and pod data without authentication; keep it 0");
            }
            if number.is_some_and(|n| n < 0) {
                errors.push(path, "must not be negative");
            }
        }
        Str => {
            yaml::string(value, path, errors);
        }
        Duration => {
            if let Some(text) = yaml::string(value, path, errors) {
                if !is_go_duration(&text) {
                    errors.push(
                        path,
                        format!("{text:?} is not a duration such as 10s or 2m0s"),
                    );
                }
            }
        }
        StrList => {
            for (i, item) in yaml::sequence(value, path, errors).iter().enumerate() {
                yaml::string(item, &crate::errors::index(path, i), errors);
            }
        }
        StrMap | BoolMap => {
            for (key, item) in yaml::entries(value, path, errors) {
                let at = join(path, &key);
                if matches!(kind, BoolMap) {
                    yaml::boolean(item, &at, errors);
                } else {
                    yaml::scalar_text(item, &at, errors);
                }
            }
        }
        Enum(allowed) => {
            if let Some(text) = yaml::string(value, path, errors) {
                if dotted == "authorization.mode" && text == "AlwaysAllow" {
                    errors.push(path, "forbidden: authorization mode AlwaysAllow lets every authenticated caller do anything; use Webhook");
                } else if !allowed.contains(&text.as_str()) {
                    errors.push(
                        path,
                        format!(
                            "{text:?} is not allowed; expected one of: {}",
                            allowed.join(", ")
                        ),
                    );
                }
            }
        }
        Object(fields) => check_object(value, fields, path, dotted, errors),
    }
}

/// Whether `text` reads as a Go duration (`1h30m`, `500ms`, `0s`).
fn is_go_duration(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "ms", "h", "m", "s"]
            .iter()
            .find(|u| rest.starts_with(**u));
        match unit {
            Some(unit) => rest = &rest[unit.len()..],
            None => return false,
        }
    }
    true
}

/// Merges `over` into `base`: mappings key by key, anything else replaced.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => merge_mappings(base, over),
        (base, over) => *base = over.clone(),
    }
}

fn merge_mappings(base: &mut Mapping, over: &Mapping) {
    for (key, value) in over {
        match base.get_mut(key) {
            Some(existing) => merge(existing, value),
            None => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Kubelet, ProfileErrors> {
        let value: Value = serde_norway::from_str(text).unwrap();
        let mut errors = ProfileErrors::default();
        let kubelet = Kubelet::parse(&value, "kubelet", &mut errors);
        if errors.is_empty() {
            Ok(kubelet.expect("no errors means parsed"))
        } else {
            Err(errors)
        }
    }

    #[test]
    fn profile_values_merge_over_secure_defaults() {
        let kubelet =
            parse("maxPods: 50\nauthorization:\n  webhook:\n    cacheAuthorizedTTL: 1m0s\n")
                .unwrap();
        let text = kubelet.render();
        assert!(text.contains("maxPods: 50"), "{text}");
        assert!(text.contains("mode: Webhook"), "{text}");
        assert!(text.contains("cacheAuthorizedTTL: 1m0s"), "{text}");
        assert!(text.contains("cacheUnauthorizedTTL: 30s"), "{text}");
        assert!(text.contains("readOnlyPort: 0"), "{text}");
        assert!(kubelet.protects_kernel_defaults());
    }

    #[test]
    fn dangerous_keys_and_values_are_refused_by_name() {
        let errors = parse(
            "staticPodPath: /etc/kubernetes/manifests\nauthorization:\n  mode: AlwaysAllow\nauthentication:\n  anonymous:\n    enabled: true\nreadOnlyPort: 10255\n",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors}");
        assert!(errors.mentions("kubelet.staticPodPath"), "{errors}");
        assert!(errors.mentions("kubelet.authorization.mode"), "{errors}");
        assert!(errors.to_string().contains("AlwaysAllow"), "{errors}");
        assert!(
            errors.mentions("kubelet.authentication.anonymous.enabled"),
            "{errors}"
        );
        assert!(errors.mentions("kubelet.readOnlyPort"), "{errors}");
    }

    #[test]
    fn wrong_types_and_unknown_keys_are_each_reported() {
        let errors = parse("maxPods: many\nshutdownGracePeriod: soon\ncolour: blue\n").unwrap_err();
        assert_eq!(errors.len(), 3, "{errors}");
    }

    #[test]
    fn go_durations_are_recognised() {
        for good in ["10s", "2m0s", "1h30m", "500ms", "0s"] {
            assert!(is_go_duration(good), "{good}");
        }
        for bad in ["", "10", "s", "ten seconds"] {
            assert!(!is_go_duration(bad), "{bad}");
        }
    }
}
