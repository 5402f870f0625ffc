//! Tamper evidence for the audit log: a hash chain over its entries and signed checkpoints of
//! the chain head.
//!
//! Entry `n` carries `hash(n) = SHA-256(domain, n, hash(n-1), its fields)`, the first one
//! chaining from [`GENESIS`]. Whoever holds the store can still rewrite the whole chain from
//! an edited entry on; a [`Checkpoint`] signed by a manager's document signer (chaining to
//! the fleet root CA) and exported off the manager pins the head at a sequence number, so a
//! rewrite up to that point no longer matches it.
//!
//! Pure: no I/O. The manager writes chains and checkpoints; `opictl audit verify` checks them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::signature::{self, Signer, VerifyError};
use crate::SecretPem;

/// The `prev_hash` of the first entry of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The `format` of checkpoints this crate writes and reads.
pub const CHECKPOINT_FORMAT: &str = "opi-audit-checkpoint/v1";
/// Domain separation of entry hashes, so that no other SHA-256 input of the fleet collides.
const ENTRY_DOMAIN: &[u8] = b"opi-audit-entry/v1";

/// The fields of one audit entry that its hash covers.
#[derive(Clone, Copy, Debug)]
pub struct Link<'a> {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// Hash of the entry before, or [`GENESIS`].
    pub prev_hash: &'a str,
    /// When it happened, nanoseconds since the Unix epoch.
    pub at_unix_nanos: i128,
    pub actor: &'a str,
    pub action: &'a str,
    pub subject: &'a str,
    pub outcome: &'a str,
    pub detail: &'a str,
    pub remote_addr: &'a str,
}

impl Link<'_> {
    /// The entry's hash, lowercase hex.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(ENTRY_DOMAIN);
        hasher.update(self.seq.to_be_bytes());
        hasher.update(self.at_unix_nanos.to_be_bytes());
        // Each text is length-prefixed, so moving bytes from one field to the next changes it.
        for field in [
            self.prev_hash,
            self.actor,
            self.action,
            self.subject,
            self.outcome,
            self.detail,
            self.remote_addr,
        ] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field.as_bytes());
        }
        crate::ca::hex(&hasher.finalize())
    }
}

/// The chain head at a sequence number, as signed by a manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// The fleet whose audit log this is.
    pub fleet: String,
    /// Sequence number of the last entry covered.
    pub seq: u64,
    /// That entry's hash.
    pub head: String,
    /// When the manager signed it, RFC 3339.
    pub at: String,
}

/// A checkpoint with its detached signature and the signer's chain: what `opictl audit
/// checkpoint -o FILE` writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    /// DER signature over [`Checkpoint::signed_bytes`], base64.
    pub signature: String,
    /// The signer certificate then the issuing CA, PEM.
    pub chain_pem: String,
}

/// Why a checkpoint does not verify.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Not a checkpoint this version reads.
    #[error("checkpoint format `{0}` is not {CHECKPOINT_FORMAT}")]
    Format(String),
    /// Its time does not parse.
    #[error("checkpoint time `{0}` is not RFC 3339")]
    Time(String),
    /// Its signature is not base64.
    #[error("checkpoint signature is not base64")]
    Encoding,
    /// The signature or its chain does not verify.
    #[error("checkpoint signature does not verify")]
    Signature(#[source] VerifyError),
    /// Signing failed.
    #[error("cannot sign the checkpoint")]
    Sign(#[source] signature::SignError),
}

impl Checkpoint {
    /// The checkpoint of `fleet` at `seq` with head `head`, made now.
    pub fn new(fleet: &str, seq: u64, head: &str, at: OffsetDateTime) -> Self {
        let at = at
            .format(&time::format_description::well_known::Rfc3339)
            .expect("a current time formats as RFC 3339");
        Self {
            format: CHECKPOINT_FORMAT.into(),
            fleet: fleet.into(),
            seq,
            head: head.into(),
            at,
        }
    }

    /// The bytes the signature covers: the checkpoint's JSON, fields in declaration order.
    pub fn signed_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a checkpoint always serialises")
    }

    /// Signs it with a document signer's key.
    pub fn sign(
        self,
        key: &SecretPem,
        chain_pem: &str,
    ) -> Result<SignedCheckpoint, CheckpointError> {
        let signature =
            signature::sign(key, &self.signed_bytes()).map_err(CheckpointError::Sign)?;
        Ok(SignedCheckpoint {
            checkpoint: self,
            signature: data_encoding::BASE64.encode(&signature),
            chain_pem: chain_pem.into(),
        })
    }
}

impl SignedCheckpoint {
    /// Verifies the signature against the fleet roots `roots_pem`, the signer's certificates
    /// valid at the time the checkpoint states.
    pub fn verify(&self, roots_pem: &str) -> Result<Signer, CheckpointError> {
        let checkpoint = &self.checkpoint;
        if checkpoint.format != CHECKPOINT_FORMAT {
            return Err(CheckpointError::Format(checkpoint.format.clone()));
        }
        let at = OffsetDateTime::parse(
            &checkpoint.at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| CheckpointError::Time(checkpoint.at.clone()))?;
        let signature = data_encoding::BASE64
            .decode(self.signature.as_bytes())
            .map_err(|_| CheckpointError::Encoding)?;
        let bytes = checkpoint.signed_bytes();
        signature::verify(&bytes, &signature, &self.chain_pem, roots_pem, at)
            .map_err(CheckpointError::Signature)
    }
}

/// What [`verify_chain`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// Chained entries seen.
    pub chained: u64,
    /// Entries without a sequence number (written before the chain existed).
    pub unchained: u64,
    /// The highest sequence number seen, 0 for none.
    pub last: u64,
    /// Every problem, each naming the entry it is about; empty when the chain holds.
    pub problems: Vec<String>,
}

/// Checks a chain: every hash over its entry, every link to the entry before, no number
/// missing or repeated. `entries` come with their stored hash, in any order.
pub fn verify_chain<'a>(entries: impl IntoIterator<Item = (Link<'a>, &'a str)>) -> ChainReport {
    let mut report = ChainReport::default();
    let mut chained: Vec<(Link<'a>, &'a str)> = Vec::new();
    for (link, hash) in entries {
        match link.seq {
            0 => report.unchained += 1,
            _ => chained.push((link, hash)),
        }
    }
    chained.sort_by_key(|(link, _)| link.seq);
    report.chained = chained.len() as u64;
    report.last = chained.last().map_or(0, |(link, _)| link.seq);

    let mut before: Option<(u64, &str)> = None;
    for (link, hash) in &chained {
        let expected = before.map_or(1, |(seq, _)| seq + 1);
        if before.is_some_and(|(seq, _)| seq == link.seq) {
            report
                .problems
                .push(format!("{} appears twice", describe(link)));
            continue;
        }
        if link.seq > expected {
            report.problems.push(missing(expected, link.seq - 1));
        }
        if link.hash() != *hash {
            report.problems.push(format!(
                "{} was edited: its contents no longer match its hash",
                describe(link)
            ));
        }
        let prev = match before {
            Some((seq, prev)) if seq + 1 == link.seq => Some(prev),
            None if link.seq == 1 => Some(GENESIS),
            _ => None,
        };
        if prev.is_some_and(|prev| prev != link.prev_hash) {
            report.problems.push(format!(
                "{} does not follow the entry before it: that one was edited and rehashed, or \
                 entries were reordered",
                describe(link)
            ));
        }
        before = Some((link.seq, hash));
    }
    report
}

/// Checks the chain against a verified checkpoint: the entry it names must be there, with its
/// hash. `hash_at` gives the stored hash of an entry.
pub fn check_against(
    checkpoint: &Checkpoint,
    last: u64,
    hash_at: impl Fn(u64) -> Option<String>,
) -> Option<String> {
    let signed = format!("the checkpoint signed at {}", checkpoint.at);
    if checkpoint.seq > last {
        return Some(format!(
            "{signed} covers entries up to {}, but the log ends at entry {last}: entries {} to {} \
             were deleted",
            checkpoint.seq,
            last + 1,
            checkpoint.seq
        ));
    }
    match hash_at(checkpoint.seq) {
        Some(hash) if hash == checkpoint.head => None,
        Some(_) => Some(format!(
            "entry {} does not match {signed}: the log was rewritten up to it",
            checkpoint.seq
        )),
        None => Some(format!(
            "entry {} named by {signed} is missing",
            checkpoint.seq
        )),
    }
}

fn missing(from: u64, to: u64) -> String {
    match from == to {
        true => format!("entry {from} is missing (deleted)"),
        false => format!("entries {from} to {to} are missing (deleted)"),
    }
}

fn describe(link: &Link<'_>) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(link.at_unix_nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "an invalid time".into());
    format!(
        "entry {} ({} {} by {} at {at})",
        link.seq, link.action, link.subject, link.actor
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{create_issuing_ca, create_root_ca, SIGNER_CERT_TTL};
    use crate::Issuer;

    fn link(seq: u64, prev: &str) -> Link<'_> {
        Link {
            seq,
            prev_hash: prev,
            at_unix_nanos: 1_700_000_000_000_000_000,
            actor: "spiffe://prod/operator/alice",
            action: "node.revoke",
            subject: "web-1",
            outcome: "ok",
            detail: "",
            remote_addr: "10.0.0.5:5000",
        }
    }

    #[test]
    fn every_field_and_the_previous_hash_change_the_hash() {
        let base = link(1, GENESIS).hash();
        assert_eq!(base, link(1, GENESIS).hash());
        assert_ne!(base, link(2, GENESIS).hash());
        assert_ne!(base, link(1, &base).hash());
        let mut moved = link(1, GENESIS);
        moved.action = "node.revokeweb-1";
        moved.subject = "";
        assert_ne!(base, moved.hash(), "bytes moved between fields must show");
        let mut edited = link(1, GENESIS);
        edited.outcome = "refused";
        assert_ne!(base, edited.hash());
    }

    fn chain_of(n: u64) -> Vec<(u64, String, String)> {
        let mut out = Vec::new();
        let mut prev = GENESIS.to_string();
        for seq in 1..=n {
            let hash = link(seq, &prev).hash();
            out.push((seq, prev.clone(), hash.clone()));
            prev = hash;
        }
        out
    }

    fn check(chain: &[(u64, String, String)]) -> ChainReport {
        verify_chain(
            chain
                .iter()
                .map(|(seq, prev, hash)| (link(*seq, prev), hash.as_str())),
        )
    }

    #[test]
    fn an_intact_chain_passes_and_a_deleted_or_edited_entry_is_named() {
        let chain = chain_of(5);
        let report = check(&chain);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!((report.chained, report.last), (5, 5));

        let mut deleted = chain.clone();
        deleted.remove(2);
        let problems = check(&deleted).problems;
        assert!(
            problems.iter().any(|p| p == "entry 3 is missing (deleted)"),
            "{problems:?}"
        );

        let mut edited = chain.clone();
        edited[1].2 = "f".repeat(64);
        let problems = check(&edited).problems;
        assert!(
            problems[0].starts_with("entry 2 (node.revoke web-1"),
            "{problems:?}"
        );

        let mut rehashed = chain;
        rehashed[1].1 = "e".repeat(64);
        rehashed[1].2 = link(2, &rehashed[1].1).hash();
        let problems = check(&rehashed).problems;
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("entry 2") && p.contains("does not follow")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_checkpoint_catches_truncation_and_a_rewrite() {
        let chain = chain_of(4);
        let checkpoint = Checkpoint::new("prod", 4, &chain[3].2, OffsetDateTime::now_utc());
        let hash_at = |seq: u64| chain.iter().find(|c| c.0 == seq).map(|c| c.2.clone());
        assert_eq!(check_against(&checkpoint, 4, hash_at), None);
        let truncated = check_against(&checkpoint, 2, hash_at).unwrap();
        assert!(
            truncated.contains("entries 3 to 4 were deleted"),
            "{truncated}"
        );
        let rewritten = check_against(&checkpoint, 4, |_| Some("0".repeat(64))).unwrap();
        assert!(
            rewritten.starts_with("entry 4 does not match"),
            "{rewritten}"
        );
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_an_edited_one_does_not() {
        let root = create_root_ca("prod").unwrap();
        let issuer = Issuer::new("prod", &create_issuing_ca("prod", "m1", &root).unwrap()).unwrap();
        let (cert, key) = issuer.issue_signer("m1", SIGNER_CERT_TTL).unwrap();
        let checkpoint = Checkpoint::new(
            "prod",
            7,
            &link(7, GENESIS).hash(),
            OffsetDateTime::now_utc(),
        );
        let signed = checkpoint.sign(&key, &cert.chain_pem).unwrap();

        let signer = signed.verify(&root.cert_pem).unwrap();
        assert_eq!(signer.identity.uri(), "spiffe://prod/manager/m1");

        let mut edited = signed.clone();
        edited.checkpoint.seq = 6;
        assert!(matches!(
            edited.verify(&root.cert_pem),
            Err(CheckpointError::Signature(VerifyError::BadSignature))
        ));
    }
}
