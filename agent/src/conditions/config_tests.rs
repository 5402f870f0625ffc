//! `health.toml` parsing and validation.

use super::*;

fn parse(text: &str) -> Result<HealthConfig, ConfigError> {
    HealthConfig::parse(Path::new("/etc/opi-agent/health.toml"), text)
}

#[test]
fn missing_file_means_the_defaults() {
    let root = tempfile::tempdir().unwrap();
    let config = HealthConfig::load(&NodeFiles::new(root.path())).unwrap();
    assert_eq!(config, HealthConfig::default());
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    assert!(CHECKS.iter().all(|check| config.enabled(check)));
}

#[test]
fn a_partial_file_keeps_the_defaults_of_what_it_leaves_out() {
    let config =
        parse("version = 1\nchecks = [\"DiskPressure\"]\n[disk]\nextra_mounts = [\"/data\"]\n")
            .unwrap();
    assert!(config.enabled("DiskPressure"));
    assert!(!config.enabled("KubeletHealthy"));
    assert_eq!(config.disk.extra_mounts, [PathBuf::from("/data")]);
    assert_eq!(config.disk.warning_used_percent, 85.0);
    assert_eq!(config.kubelet, KubeletSettings::default());
}

#[test]
fn validation_lists_every_problem_with_its_key() {
    let text = r#"
        version = 2
        checks = ["DiskPressure", "Bogus", "DiskPressure"]
        check_timeout_ms = 2000
        [kubelet]
        healthz_url = "https://127.0.0.1:10250/healthz"
        timeout_ms = 5000
        [disk]
        mounts = ["var"]
        warning_used_percent = 96
        critical_used_percent = 90
        inode_critical_used_percent = 120
        [memory]
        warning_available_percent = 2
    "#;
    let error = parse(text).unwrap_err();
    let ConfigError::ValidateHealthConfig { problems, path } = &error else {
        panic!("expected a validation error, got {error}");
    };
    assert_eq!(path, Path::new("/etc/opi-agent/health.toml"));
    let shown = problems.join("\n");
    for expected in [
        "version is 2",
        "unknown check `Bogus`",
        "`DiskPressure` is listed twice",
        "kubelet.healthz_url",
        "kubelet.timeout_ms is 5000",
        "disk.mounts: var is not an absolute path",
        "disk.inode_critical_used_percent is 120, not between 0 and 100",
        "disk.warning_used_percent (96) must be at most disk.critical_used_percent (90)",
        "memory.warning_available_percent (2) must be at least memory.critical_available_percent (5)",
    ] {
        assert!(shown.contains(expected), "missing {expected:?} in:\n{shown}");
    }
    assert_eq!(problems.len(), 9, "{shown}");
    assert_eq!(error.exit_code(), crate::EXIT_USAGE);
}

#[test]
fn unknown_keys_are_refused_naming_the_file_and_key() {
    let error = parse("version = 1\n[disk]\nwarning_percent = 80\n").unwrap_err();
    let shown = crate::ErrorChain(&error).to_string();
    assert!(shown.contains("/etc/opi-agent/health.toml"), "{shown}");
    assert!(shown.contains("warning_percent"), "{shown}");
    assert_eq!(error.exit_code(), crate::EXIT_USAGE);
}

#[test]
fn a_file_under_the_root_is_read() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("etc/opi-agent/health.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "version = 1\ncheck_timeout_ms = 5000\n").unwrap();
    let config = HealthConfig::load(&NodeFiles::new(root.path())).unwrap();
    assert_eq!(config.check_timeout_ms, 5000);
}
