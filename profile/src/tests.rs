//! Whole-profile behaviour: every problem reported with its path, forbidden keys refused by
//! name, the floor enforced, credentials redacted, the desired state rendered.

use super::*;
use crate::desired::{
    CONTAINERD_CONFIG, KUBELET_CONFIG, MODPROBE_FILE, MODULES_LOAD_FILE, SSHD_FILE, SYSCTL_FILE,
};
use crate::hardening::settings;

const WORKER: &str = include_str!("../../deploy/profiles/worker.yaml");
const HEAD: &str = "apiVersion: opi.fleet/v1\nkind: NodeProfile\n";

fn profile(body: &str) -> Result<Profile, ProfileErrors> {
    Profile::from_yaml(&format!("{HEAD}{body}"))
}

#[test]
fn the_shipped_worker_profile_is_valid_and_renders() {
    let profile = Profile::from_yaml(WORKER).unwrap_or_else(|e| panic!("{e}"));
    let state = profile
        .desired_state(&Floor::default())
        .unwrap_or_else(|e| panic!("{e}"));
    for path in [
        SYSCTL_FILE,
        MODPROBE_FILE,
        SSHD_FILE,
        KUBELET_CONFIG,
        CONTAINERD_CONFIG,
    ] {
        assert!(state.file(path).is_some(), "{path} not rendered");
    }
    assert_eq!(state.sysctl("net.ipv4.ip_forward").unwrap().value, "1");
    assert_eq!(state.sysctl("vm.overcommit_memory").unwrap().value, "1");
    assert!(state
        .blacklisted_modules
        .contains(&"usb-storage".to_string()));
    assert!(
        state.blacklisted_modules.contains(&"cramfs".to_string()),
        "floor modules added"
    );
    assert_eq!(
        state.file(CONTAINERD_CONFIG).unwrap().mode,
        0o600,
        "credentials kept 0600"
    );
    assert!(state
        .file(SSHD_FILE)
        .unwrap()
        .content
        .contains("PermitRootLogin no\n"));
}

#[test]
fn a_profile_with_ten_errors_reports_ten_with_their_paths() {
    let text = "apiVersion: opi.fleet/v2
kind: NodeProfile
colour: blue
hardening:
  baseline: anssi-bp028-extreme
  overrides:
    sysctls:
      kernel.core_pattern: core
    sshd:
      ForceCommand: /bin/sh
  exceptions:
    - item: sysctl/kernel.sysrq
kubelet:
  staticPodPath: /etc/kubernetes/manifests
  authorization:
    mode: AlwaysAllow
  maxPods: lots
apply:
  verifyTimeout: forever
";
    let errors = Profile::from_yaml(text).unwrap_err();
    let paths: Vec<&str> = errors.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "colour",
            "apiVersion",
            "hardening.baseline",
            "hardening.overrides.sysctls.\"kernel.core_pattern\"",
            "hardening.overrides.sshd.ForceCommand",
            "hardening.exceptions[0].reason",
            "kubelet.staticPodPath",
            "kubelet.authorization.mode",
            "kubelet.maxPods",
            "apply.verifyTimeout",
        ],
        "{errors}"
    );
    assert_eq!(errors.to_string().lines().count(), 11, "{errors}");
}

#[test]
fn containerd_runtime_binaries_are_refused_by_name() {
    let body = "containerd: |\n  version = 2\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  BinaryName = \"/usr/local/bin/evil\"\n";
    let errors = profile(body).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    let problem = &errors.problems[0];
    assert!(problem.path.ends_with("options.BinaryName"), "{problem}");
    assert!(problem.message.contains("runtime binary path"), "{problem}");
}

#[test]
fn a_floor_sysctl_lowered_by_an_override_is_refused_by_name() {
    let body = "hardening:
  baseline: anssi-bp028-intermediary
  overrides:
    sysctls: {kernel.kptr_restrict: 0}
  exceptions:
    - {item: sysctl/kernel.kptr_restrict, reason: debugging}
";
    let profile = profile(body).unwrap();
    let errors = profile.desired_state(&Floor::default()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    let problem = &errors.problems[0];
    assert_eq!(
        problem.path,
        "hardening.overrides.sysctls.\"kernel.kptr_restrict\""
    );
    assert!(
        problem
            .message
            .contains("lowers the node's hardening floor"),
        "{problem}"
    );
    assert!(problem.message.contains(">= 1"), "{problem}");
}

#[test]
fn an_exception_cannot_remove_a_floor_item() {
    let body = "hardening:
  baseline: anssi-bp028-intermediary
  exceptions:
    - {item: sysctl/kernel.dmesg_restrict, reason: log readers}
";
    let errors = profile(body)
        .unwrap()
        .desired_state(&Floor::default())
        .unwrap_err();
    assert!(errors.mentions("hardening.exceptions[0]"), "{errors}");
    assert!(
        errors.to_string().contains("kernel.dmesg_restrict"),
        "{errors}"
    );
}

#[test]
fn changing_a_baseline_item_needs_an_exception_with_a_reason() {
    let body = "hardening:
  baseline: anssi-bp028-intermediary
  overrides:
    sysctls: {kernel.sysrq: 1}
";
    let errors = profile(body).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    assert!(errors.problems[0].message.contains("R9"), "{errors}");
    assert!(
        errors.problems[0].message.contains("add an exception"),
        "{errors}"
    );
}

#[test]
fn an_exception_alone_removes_the_baseline_item() {
    let body = "hardening:
  baseline: anssi-bp028-intermediary
  exceptions:
    - {item: sysctl/kernel.sysrq, reason: console access on bare metal, expires: \"2020-01-01\"}
";
    let profile = profile(body).unwrap();
    let state = profile.desired_state(&Floor::default()).unwrap();
    assert!(state.sysctl("kernel.sysrq").is_none());
    assert!(state.sysctl("kernel.kptr_restrict").is_some());
    let today = time::macros::date!(2026 - 01 - 01);
    let expired = profile.check_exceptions(today).unwrap_err();
    assert!(
        expired.mentions("hardening.exceptions[0].expires"),
        "{expired}"
    );
}

#[test]
fn baseline_values_under_the_floor_are_raised_and_missing_ones_added() {
    let mut floor = Floor::default();
    floor.sysctls.insert(
        "kernel.kptr_restrict".into(),
        SysctlFloor {
            equals: Some("2".into()),
            ..Default::default()
        },
    );
    floor.sysctls.insert(
        "kernel.sysrq".into(),
        SysctlFloor {
            max: Some(0),
            ..Default::default()
        },
    );
    let state = profile("{}\n")
        .unwrap_or_else(|_| profile("").unwrap())
        .desired_state(&floor)
        .unwrap();
    assert_eq!(state.sysctl("kernel.kptr_restrict").unwrap().value, "2");
    assert_eq!(state.sysctl("kernel.sysrq").unwrap().value, "0");
}

#[test]
fn reboot_scoped_sysctls_are_marked() {
    let state = profile("hardening: {baseline: anssi-bp028-high}\n")
        .unwrap()
        .desired_state(&Floor::default())
        .unwrap();
    assert_eq!(
        state.sysctl("kernel.modules_disabled").unwrap().scope,
        Scope::Reboot
    );
    assert_eq!(
        state.sysctl("kernel.yama.ptrace_scope").unwrap().scope,
        Scope::Reboot
    );
    assert_eq!(
        state.sysctl("kernel.kptr_restrict").unwrap().scope,
        Scope::Live
    );
    let file = &state.file(SYSCTL_FILE).unwrap().content;
    assert!(file.contains("kernel.modules_disabled = 1"), "{file}");
}

#[test]
fn kubelet_kernel_defaults_conflicting_with_the_profile_are_refused() {
    let body = "hardening:
  overrides:
    sysctls: {vm.overcommit_memory: 0}
kubelet: {}
";
    let errors = profile(body)
        .unwrap()
        .desired_state(&Floor::default())
        .unwrap_err();
    assert!(errors.mentions("kubelet.protectKernelDefaults"), "{errors}");
}

#[test]
fn registry_credentials_never_appear_redacted() {
    let profile = Profile::from_yaml(WORKER).unwrap();
    let secret = "change-me-registry-password";
    assert!(profile.to_yaml().contains(secret));
    let redacted = profile.to_yaml_redacted();
    assert!(!redacted.contains(secret), "{redacted}");
    assert!(redacted.contains("<redacted>"), "{redacted}");
    assert!(
        Profile::from_yaml(&redacted).is_ok(),
        "a redacted profile stays valid"
    );
    let state = profile.desired_state(&Floor::default()).unwrap();
    let file = state.file(CONTAINERD_CONFIG).unwrap();
    assert!(file.content.contains(secret));
    assert!(!file.shown.contains(secret));
    assert!(!serde_json::to_string(&state).unwrap().contains(secret));
}

#[test]
fn not_yaml_is_one_problem_naming_the_document() {
    let errors = Profile::from_yaml("apiVersion: [").unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors.problems[0].path, "(document)");
}

#[test]
fn an_exception_without_a_reason_is_refused_naming_it() {
    let body = "hardening:
  baseline: anssi-bp028-intermediary
  exceptions:
    - {item: sudo/requiretty, reason: \"  \", approver: secops@example.gouv.fr}
";
    let errors = profile(body).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors}");
    assert_eq!(errors.problems[0].path, "hardening.exceptions[0].reason");
    assert!(
        errors.problems[0].message.contains("needs a reason"),
        "{errors}"
    );
}

#[test]
fn settings_overrides_are_checked_against_their_allowlists() {
    let body = "hardening:
  overrides:
    sudo: {secure_path: /tmp, use_pty: true}
    loginDefs: {UMASK: \"027\", ENCRYPT_METHOD: MD5}
    shell: {TMOUT: 900}
    coredump: {Storage: \"|/bin/sh\"}
";
    let errors = profile(body).unwrap_err();
    let paths: Vec<&str> = errors.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "hardening.overrides.sudo.secure_path",
            "hardening.overrides.loginDefs.ENCRYPT_METHOD",
            "hardening.overrides.coredump.Storage",
        ],
        "{errors}"
    );
    assert!(errors.to_string().contains("allowlist"), "{errors}");
}

#[test]
fn settings_render_into_drop_ins_and_login_defs_into_an_edit() {
    let state = profile("hardening: {baseline: anssi-bp028-enhanced}\n")
        .unwrap()
        .desired_state(&Floor::default())
        .unwrap();
    let sudo = state.file(settings::SUDO_FILE).expect("sudo drop-in");
    assert_eq!(sudo.mode, 0o440);
    assert!(
        sudo.content.contains("Defaults use_pty\n"),
        "{}",
        sudo.content
    );
    let shell = &state.file(settings::SHELL_FILE).unwrap().content;
    assert!(
        shell.contains("umask 077\n") && shell.contains("readonly TMOUT"),
        "{shell}"
    );
    assert!(state.file(settings::LIMITS_FILE).is_some());
    assert!(state.file(settings::COREDUMP_FILE).is_some());
    assert!(state.file(settings::PWQUALITY_FILE).is_some());
    assert!(
        state.file(settings::LOGIN_DEFS_FILE).is_none(),
        "edited, not owned"
    );
    assert_eq!(state.edits.len(), 1);
    assert_eq!(state.edits[0].keys["UMASK"], "077");
    assert_eq!(state.edits[0].keys["ENCRYPT_METHOD"], "YESCRYPT");
    let load = &state.file(MODULES_LOAD_FILE).unwrap().content;
    assert!(
        load.contains("br_netfilter\n") && load.contains("overlay\n"),
        "{load}"
    );
}

#[test]
fn a_module_both_loaded_and_blacklisted_is_refused() {
    let body = "hardening:
  baseline: anssi-bp028-minimal
  overrides:
    loadModules: [usb-storage]
";
    let errors = profile(body)
        .unwrap()
        .desired_state(&Floor::default())
        .unwrap_err();
    assert!(
        errors.mentions("hardening.overrides.loadModules[0]"),
        "{errors}"
    );
    assert!(errors.to_string().contains("R62"), "{errors}");
}

#[test]
fn the_promise_lists_every_rule_of_the_level_with_exceptions_and_floor_values() {
    let body = "hardening:
  baseline: anssi-bp028-intermediary
  overrides:
    sysctls: {net.ipv4.conf.all.rp_filter: 2}
  exceptions:
    - {item: sysctl/net.ipv4.conf.all.rp_filter, reason: Calico, approver: secops, expires: \"2027-06-30\"}
    - {item: sysctl/kernel.sysrq, reason: console access}
";
    let mut floor = Floor::default();
    floor.sysctls.insert(
        "kernel.perf_event_paranoid".into(),
        SysctlFloor {
            min: Some(3),
            ..Default::default()
        },
    );
    let state = profile(body).unwrap().desired_state(&floor).unwrap();
    let promise = state.promise.expect("a baseline promises");
    assert_eq!(promise.level, Level::Intermediary);
    assert_eq!(promise.rules.len(), 40, "minimal and intermediary rules");
    let item = |id: &str| {
        promise
            .rules
            .iter()
            .flat_map(|r| &r.items)
            .find(|i| i.id.0 == id)
            .unwrap_or_else(|| panic!("{id} promised"))
            .clone()
    };
    let rp = item("sysctl/net.ipv4.conf.all.rp_filter");
    assert_eq!(rp.expected.value_text(), "2");
    assert_eq!(rp.baseline_value.as_deref(), Some("1"));
    let exception = rp.exception.unwrap();
    assert_eq!(exception.expires.as_deref(), Some("2027-06-30"));
    assert!(exception.expired_on(time::macros::date!(2027 - 07 - 01)));
    let sysrq = item("sysctl/kernel.sysrq");
    assert!(!sysrq.applied && sysrq.exception.is_some());
    assert_eq!(
        item("sysctl/kernel.perf_event_paranoid")
            .expected
            .value_text(),
        "3"
    );
    assert!(item("sysctl/net.ipv4.ip_forward").deviation.is_some());
}
