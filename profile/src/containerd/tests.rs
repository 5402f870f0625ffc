use super::*;

fn parse(text: &str) -> Result<Containerd, ProfileErrors> {
    let mut errors = ProfileErrors::default();
    let parsed = Containerd::parse(text, "containerd", &mut errors);
    if errors.is_empty() {
        Ok(parsed.expect("no errors means parsed"))
    } else {
        Err(errors)
    }
}

#[test]
fn defaults_turn_on_systemd_cgroups_for_runc() {
    let config = parse("version = 2\n").unwrap();
    let text = config.render();
    assert!(text.contains("SystemdCgroup = true"), "{text}");
    let v3 = parse("version = 3\n").unwrap().render();
    assert!(v3.contains("io.containerd.cri.v1.runtime"), "{v3}");
}

#[test]
fn runtime_binaries_and_stream_processors_are_refused_by_name() {
    let errors = parse(
        r#"version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
runtime_path = "/tmp/evil"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
BinaryName = "/tmp/evil-runc"
[stream_processors."io.containerd.ocicrypt.decoder.v1.tar"]
path = "/tmp/evil"
"#,
    )
    .unwrap_err();
    assert_eq!(errors.len(), 3, "{errors}");
    for key in ["runtime_path", "BinaryName", "stream_processors"] {
        assert!(
            errors
                .problems
                .iter()
                .any(|p| p.path.ends_with(key) && p.message.contains("forbidden")),
            "{key} not refused by name: {errors}"
        );
    }
}

#[test]
fn other_runtimes_and_unknown_plugin_keys_are_refused() {
    let errors = parse(
        r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = 3
colour = "blue"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
runtime_type = "io.containerd.kata.v2"
"#,
    )
    .unwrap_err();
    assert_eq!(errors.len(), 3, "{errors}");
    assert!(
        errors.to_string().contains("only the runc runtime"),
        "{errors}"
    );
}

#[test]
fn registry_credentials_are_redacted() {
    let config = parse(
        r#"version = 2
[plugins."io.containerd.grpc.v1.cri".registry.configs."registry.example".auth]
username = "robot"
password = "hunter2-secret"
"#,
    )
    .unwrap();
    assert!(config.has_secrets());
    assert!(config.render().contains("hunter2-secret"));
    let shown = config.render_redacted();
    assert!(!shown.contains("hunter2-secret"), "{shown}");
    assert!(shown.contains(REDACTED), "{shown}");
    assert!(!redact_text(&config.render()).contains("hunter2-secret"));
    assert!(!redact_text("password = \"x\" [broken").contains("password"));
}

#[test]
fn missing_or_unsupported_version_is_refused() {
    assert!(parse("[plugins]\n")
        .unwrap_err()
        .mentions("containerd.version"));
    assert!(parse("version = 1\n")
        .unwrap_err()
        .mentions("containerd.version"));
    assert!(parse("version = [").unwrap_err().mentions("containerd"));
}
