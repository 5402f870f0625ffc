//! containerd: its configuration is checked by the real `containerd config dump` when
//! containerd is installed, and its health after a restart by the `Version` call of
//! [`crate::conditions::containerd`].

use std::time::Duration;

use super::{check_with, find_program};
use crate::conditions::config::HealthConfig;
use crate::conditions::containerd::version;
use crate::conditions::NodeFiles;
use crate::ErrorChain;

/// Checks a `config.toml` content with containerd itself; `Ok(note)` says how.
pub fn validate(content: &str) -> Result<String, String> {
    match find_program("containerd") {
        Some(containerd) => {
            check_with(&containerd, &["--config", "{}", "config", "dump"], content)?;
            Ok(format!("checked with {} config dump", containerd.display()))
        }
        None => {
            Ok("containerd is not installed: keys checked against the allowlist only".to_string())
        }
    }
}

/// Whether containerd answers on the socket `health.toml` names, under the root of `files`.
pub async fn healthy(config: &HealthConfig, files: &NodeFiles) -> Result<String, String> {
    let socket = files.node(&config.containerd.socket);
    let timeout = Duration::from_millis(config.containerd.timeout_ms);
    match version(&socket, timeout).await {
        Ok(answer) => Ok(format!(
            "containerd {} answered on {}",
            answer.version,
            socket.display()
        )),
        Err(error) => Err(ErrorChain(&error).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_profile::desired::CONTAINERD_CONFIG;
    use opi_profile::{Floor, Profile};

    const WORKER: &str = include_str!("../../../../deploy/profiles/worker.yaml");

    /// The rendered `config.toml` of a profile whose `containerd` section is `section`.
    fn rendered(section: &str) -> String {
        let text = format!("apiVersion: opi.fleet/v1\nkind: NodeProfile\ncontainerd: |\n{section}");
        config_of(&text)
    }

    fn config_of(profile: &str) -> String {
        let profile = Profile::from_yaml(profile).unwrap_or_else(|e| panic!("{e}"));
        let state = profile.desired_state(&Floor::default()).unwrap();
        state
            .file(CONTAINERD_CONFIG)
            .expect("containerd config rendered")
            .content
            .clone()
    }

    /// Runs the real `containerd config dump` on `config`, failing the test if it refuses.
    fn dump(config: &str) {
        let containerd = find_program("containerd")
            .expect("containerd not installed: install Debian's containerd package (scripts/install-test-deps does)");
        if let Err(refusal) = check_with(&containerd, &["--config", "{}", "config", "dump"], config)
        {
            panic!("containerd refused our config: {refusal}\n{config}");
        }
    }

    #[test]
    fn default_config_version_2_passes_containerd_config_dump() {
        let config = rendered("  version = 2\n");
        assert!(config.contains("SystemdCgroup = true"), "{config}");
        dump(&config);
    }

    #[test]
    fn config_with_mirrors_and_credentials_passes_containerd_config_dump() {
        let config = config_of(WORKER);
        assert!(
            config.contains("mirror.registry.example.gouv.fr"),
            "{config}"
        );
        dump(&config);
    }

    #[test]
    fn default_config_version_3_passes_containerd_config_dump() {
        // Debian 12's containerd 1.6 accepts a version 3 file in `config dump` (it checks the
        // TOML and its top level only); the plugin names of version 3 are containerd 2.x's.
        let config = rendered("  version = 3\n  [plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"overlayfs\"\n");
        assert!(config.contains("io.containerd.cri.v1.runtime"), "{config}");
        dump(&config);
    }

    #[test]
    fn containerd_itself_refuses_a_broken_config() {
        let containerd = find_program("containerd").expect("containerd installed");
        let refusal = check_with(
            &containerd,
            &["--config", "{}", "config", "dump"],
            "version = 2\n[plugins\n",
        )
        .unwrap_err();
        assert!(refusal.contains("refused"), "{refusal}");
    }
}
