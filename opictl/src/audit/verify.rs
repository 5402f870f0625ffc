//! `opictl audit verify` and `opictl audit checkpoint`: the whole log, read a page at a time,
//! checked here against its hash chain ([`opi_pki::chain`]) and against checkpoints whose
//! signatures are checked with the operator's own fleet CA, not the manager's word.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use opi_pki::chain::{check_against, verify_chain, Link, SignedCheckpoint};
use opi_proto::v1::{AuditEntry, ListAuditRequest};
use serde::Serialize;

use crate::cli::{AuditCheckpointArgs, AuditVerifyArgs};
use crate::client::Client;
use crate::output::{self, fields, Format};
use crate::{Context, Error};

/// Entries asked for per page.
const PAGE: u32 = 1000;

/// What `opictl audit verify -o json` prints when the log holds.
#[derive(Debug, Serialize)]
pub struct VerifiedView {
    /// Chained entries checked.
    pub entries: u64,
    /// Entries older than the chain, which nothing protects.
    pub unchained: u64,
    /// The last entry's sequence number.
    pub last: u64,
    /// Checkpoints checked: the manager's and the files given.
    pub checkpoints: usize,
    /// The highest sequence number a checkpoint vouches for.
    pub covered_up_to: u64,
}

/// What `opictl audit checkpoint -o json` prints.
#[derive(Debug, Serialize)]
pub struct ExportedView {
    /// The file written.
    pub file: String,
    /// The last entry covered.
    pub seq: u64,
    /// Its hash.
    pub head: String,
    /// The manager replica that signed it.
    pub signer: String,
}

/// Runs `opictl audit verify`.
pub async fn run(context: &Context, args: AuditVerifyArgs) -> Result<(), Error> {
    let (bundle, _) = context.bundle()?;
    let mut checkpoints = Vec::new();
    for path in &args.checkpoints {
        checkpoints.push(read_checkpoint(path)?);
    }
    let mut client = context.connect().await?;
    for kept in client.list_audit_checkpoints().await? {
        checkpoints.push(parse_checkpoint(&kept.signed_json, "from the manager")?);
    }
    let entries = read_all(&mut client).await?;

    let report = verify_chain(entries.iter().map(|e| (link(e), e.hash.as_str())));
    let mut problems = report.problems;
    let hashes: HashMap<u64, &str> = entries.iter().map(|e| (e.seq, e.hash.as_str())).collect();
    for (checkpoint, what) in &checkpoints {
        if let Err(why) = checkpoint.verify(&bundle.ca) {
            problems.push(format!(
                "checkpoint {what} does not verify: {}",
                chain_text(&why)
            ));
            continue;
        }
        if checkpoint.checkpoint.fleet != bundle.fleet {
            problems.push(format!(
                "checkpoint {what} is of fleet {}",
                checkpoint.checkpoint.fleet
            ));
            continue;
        }
        let hash_at = |seq| hashes.get(&seq).map(|h| h.to_string());
        problems.extend(check_against(&checkpoint.checkpoint, report.last, hash_at));
    }
    if !problems.is_empty() {
        return Err(Error::AuditTampered { problems });
    }

    let view = VerifiedView {
        entries: report.chained,
        unchained: report.unchained,
        last: report.last,
        checkpoints: checkpoints.len(),
        covered_up_to: checkpoints
            .iter()
            .map(|(c, _)| c.checkpoint.seq)
            .max()
            .unwrap_or(0),
    };
    match context.format {
        Format::Json => output::print_json(&view),
        Format::Table => output::print(&fields(&[
            (
                "verified",
                format!("{} entries, the last one {}", view.entries, view.last),
            ),
            (
                "checkpoints",
                format!("{} (up to entry {})", view.checkpoints, view.covered_up_to),
            ),
            (
                "unchained",
                format!("{} (older than the chain)", view.unchained),
            ),
        ])),
    }
}

/// Runs `opictl audit checkpoint --out FILE`.
pub async fn export(context: &Context, args: AuditCheckpointArgs) -> Result<(), Error> {
    let (bundle, _) = context.bundle()?;
    let answer = context.connect().await?.create_audit_checkpoint().await?;
    let (signed, _) = parse_checkpoint(&answer.signed_json, "from the manager")?;
    let signer = signed
        .verify(&bundle.ca)
        .map_err(|why| Error::BadCheckpoint {
            what: "from the manager".into(),
            why: chain_text(&why),
        })?;
    let mut text = serde_json::to_string_pretty(&signed).expect("a checkpoint serialises");
    text.push('\n');
    fs::write(&args.out, text).map_err(|source| Error::WriteFile {
        path: args.out.clone(),
        source,
    })?;

    let view = ExportedView {
        file: args.out.display().to_string(),
        seq: signed.checkpoint.seq,
        head: signed.checkpoint.head.clone(),
        signer: signer.identity.uri(),
    };
    match context.format {
        Format::Json => output::print_json(&view),
        Format::Table => output::print(&fields(&[
            ("written", view.file),
            ("covers", format!("entries 1 to {}", view.seq)),
            ("head", view.head),
            ("signed by", view.signer),
        ])),
    }
}

/// Every entry, oldest first, a page at a time.
async fn read_all(client: &mut Client) -> Result<Vec<AuditEntry>, Error> {
    let mut entries = Vec::new();
    let mut page_after = String::new();
    loop {
        let message = ListAuditRequest {
            limit: PAGE,
            oldest_first: true,
            page_after,
            ..Default::default()
        };
        let page = client.list_audit(message).await?;
        entries.extend(page.entries);
        if page.next_page.is_empty() {
            return Ok(entries);
        }
        page_after = page.next_page;
    }
}

fn link(entry: &AuditEntry) -> Link<'_> {
    let at = entry.at.as_ref().map_or(0, |t| {
        i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
    });
    Link {
        seq: entry.seq,
        prev_hash: &entry.prev_hash,
        at_unix_nanos: at,
        actor: &entry.actor,
        action: &entry.action,
        subject: &entry.subject,
        outcome: &entry.outcome,
        detail: &entry.detail,
        remote_addr: &entry.remote_addr,
    }
}

fn read_checkpoint(path: &Path) -> Result<(SignedCheckpoint, String), Error> {
    let text = fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_checkpoint(&text, &path.display().to_string())
}

fn parse_checkpoint(text: &str, what: &str) -> Result<(SignedCheckpoint, String), Error> {
    let signed = serde_json::from_str(text).map_err(|e| Error::BadCheckpoint {
        what: what.into(),
        why: e.to_string(),
    })?;
    Ok((signed, what.to_string()))
}

/// An error and its causes on one line.
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
