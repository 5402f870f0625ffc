//! The sudo `Defaults` drop-in: checked by `visudo -c -f` when sudo is installed, so that a
//! drop-in sudo would refuse (and with it every sudo call) is never written; otherwise its
//! keys were already checked against the profile's allowlist.

use super::{check_with, find_program};

/// Checks the drop-in's content; `Ok(note)` says how it was checked.
pub fn validate(content: &str) -> Result<String, String> {
    match find_program("visudo") {
        Some(visudo) => {
            check_with(&visudo, &["-c", "-q", "-f", "{}"], content)?;
            Ok(format!("checked with {} -c", visudo.display()))
        }
        None => Ok("sudo is not installed: keys checked against the allowlist only".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_profile::hardening::settings::SUDO_FILE;
    use opi_profile::{Floor, Profile};

    /// The baseline's sudo drop-in, as the intermediary level renders it.
    fn rendered() -> String {
        let text = "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening: {baseline: anssi-bp028-intermediary}\n";
        let state = Profile::from_yaml(text)
            .unwrap()
            .desired_state(&Floor::default())
            .unwrap();
        state.file(SUDO_FILE).expect("sudo drop-in").content.clone()
    }

    #[test]
    fn the_baselines_drop_in_passes_visudo_and_a_broken_one_is_refused() {
        let visudo = find_program("visudo").expect(
            "visudo not installed: install Debian's sudo package (scripts/install-test-deps does)",
        );
        let note = validate(&rendered()).unwrap_or_else(|e| panic!("{e}"));
        assert!(note.contains(&visudo.display().to_string()), "{note}");
        let refusal = validate("Defaults use_pty=\nDefaults no_such_default\n").unwrap_err();
        assert!(refusal.contains("refused"), "{refusal}");
    }
}
