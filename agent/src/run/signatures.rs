//! Profile signatures: a node that pinned signer keys at enrollment applies only profiles
//! signed by one of them, and by two distinct ones when the profile lowers the hardening level
//! below the one the node runs, whatever the manager says (it holds no signer key).

use std::collections::BTreeSet;

use opi_proto::v1::DesiredProfile;

use super::profile_state::AppliedProfile;

/// Distinct pinned signers a profile lowering the hardening level needs.
pub const SIGNERS_TO_LOWER: usize = 2;

/// Why `profile` must be refused for its signatures, if it must; `signers` are the keys the
/// node pinned (none: every profile is taken, as before signatures existed).
pub fn refusal(
    signers: &[Vec<u8>],
    profile: &DesiredProfile,
    applied: Option<&AppliedProfile>,
) -> Option<String> {
    if signers.is_empty() {
        return None;
    }
    let valid = valid_signers(signers, profile);
    if valid.is_empty() {
        return Some(format!(
            "not signed by any of the {} signer key(s) this node pinned at enrollment ({} signature(s) given); sign it with `opictl profile set --sign-key`",
            signers.len(),
            profile.signatures.len()
        ));
    }
    let (from, to) = (
        level(applied.map(|a| a.yaml.as_str())),
        level(Some(&profile.yaml)),
    );
    if to < from && valid.len() < SIGNERS_TO_LOWER {
        return Some(format!(
            "lowers the hardening level from {} to {}, which needs {SIGNERS_TO_LOWER} distinct pinned signers; it has {}",
            name(from),
            name(to),
            valid.len()
        ));
    }
    None
}

/// The pinned keys with a valid signature of the document.
fn valid_signers<'a>(signers: &'a [Vec<u8>], profile: &DesiredProfile) -> BTreeSet<&'a [u8]> {
    let document = profile.yaml.as_bytes();
    signers
        .iter()
        .filter(|key| {
            profile.signatures.iter().any(|s| {
                s.public_key == **key && opi_pki::profile_sig::verifies(key, document, &s.signature)
            })
        })
        .map(Vec::as_slice)
        .collect()
}

/// The hardening level of a document; none for no document, no baseline or one that does not
/// parse (the apply refuses that one on its own).
fn level(yaml: Option<&str>) -> Option<opi_profile::hardening::Level> {
    opi_profile::Profile::from_yaml(yaml?).ok()?.hardening.level
}

fn name(level: Option<opi_profile::hardening::Level>) -> String {
    level.map_or_else(|| "none".to_string(), |l| format!("{l:?}").to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_pki::SecretPem;
    use opi_proto::v1::ProfileSignature;

    const ENHANCED: &str = "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening:\n  baseline: anssi-bp028-enhanced\n";
    const MINIMAL: &str = "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening:\n  baseline: anssi-bp028-minimal\n";

    fn key() -> (SecretPem, Vec<u8>) {
        let pair = opi_pki::ca::generate_key().unwrap();
        let public = opi_pki::profile_sig::public_key_der(&pair.public_key_pem(), "k").unwrap();
        (SecretPem::new(pair.serialize_pem()), public)
    }

    fn signed(yaml: &str, keys: &[&SecretPem]) -> DesiredProfile {
        let signatures = keys
            .iter()
            .map(|k| {
                let s = opi_pki::profile_sig::sign(k, "k", yaml.as_bytes()).unwrap();
                ProfileSignature {
                    public_key: s.public_key,
                    signature: s.signature,
                }
            })
            .collect();
        DesiredProfile {
            yaml: yaml.into(),
            signatures,
            ..Default::default()
        }
    }

    fn applied(yaml: &str) -> AppliedProfile {
        AppliedProfile {
            pool: "workers".into(),
            id: super::super::profile_state::GenerationId {
                epoch: 1,
                generation: 1,
            },
            digest: String::new(),
            yaml: yaml.into(),
        }
    }

    #[test]
    fn a_node_without_pinned_signers_takes_unsigned_profiles() {
        assert_eq!(refusal(&[], &signed(MINIMAL, &[]), None), None);
    }

    #[test]
    fn a_profile_not_signed_by_a_pinned_key_is_refused() {
        let (alice, alice_pub) = key();
        let (mallory, _) = key();
        let pinned = std::slice::from_ref(&alice_pub);
        let reason = refusal(pinned, &signed(ENHANCED, &[&mallory]), None).unwrap();
        assert!(
            reason.contains("not signed by any of the 1 signer key(s)"),
            "{reason}"
        );
        assert_eq!(
            refusal(&[alice_pub], &signed(ENHANCED, &[&alice]), None),
            None
        );
    }

    #[test]
    fn a_signature_of_another_document_does_not_count() {
        let (alice, alice_pub) = key();
        let mut profile = signed(ENHANCED, &[&alice]);
        profile.yaml = MINIMAL.into();
        assert!(refusal(&[alice_pub], &profile, None).is_some());
    }

    #[test]
    fn lowering_the_hardening_level_needs_two_distinct_signers() {
        let (alice, alice_pub) = key();
        let (bob, bob_pub) = key();
        let pinned = [alice_pub, bob_pub];
        let running = applied(ENHANCED);
        let reason = refusal(&pinned, &signed(MINIMAL, &[&alice, &alice]), Some(&running)).unwrap();
        assert!(
            reason.contains("from enhanced to minimal, which needs 2"),
            "{reason}"
        );
        assert_eq!(
            refusal(&pinned, &signed(MINIMAL, &[&alice, &bob]), Some(&running)),
            None
        );
        assert_eq!(
            refusal(&pinned, &signed(ENHANCED, &[&bob]), Some(&applied(MINIMAL))),
            None
        );
    }
}
