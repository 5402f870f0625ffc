//! `opictl profile set|show|diff`: pool profiles, stored as generations by the manager.
//! Secrets in profiles (registry credentials) come back redacted in every answer.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use opi_proto::v1::{DiffProfileRequest, ProfileInfo, RolloutStrategy};
use serde::Serialize;

use crate::cli::{ProfileCommand, StrategyArgs};
use crate::output::{self, fields, timestamp, Format};
use crate::{Context, Error};

/// Largest profile document read (the manager refuses larger ones too).
pub const MAX_PROFILE_BYTES: u64 = 256 * 1024;

/// The JSON shape of one profile generation.
#[derive(Debug, Serialize)]
pub struct ProfileView {
    /// The pool the profile belongs to.
    pub pool: String,
    /// Fleet-wide generation number.
    pub generation: u64,
    /// The store epoch the generation was made in.
    pub epoch: u64,
    /// `sha256:` of the document as stored.
    pub digest: String,
    /// When the generation was stored, RFC 3339.
    pub created_at: Option<String>,
    /// Who stored it.
    pub created_by: String,
    /// `profile set` only: whether a new generation was made.
    pub changed: bool,
    /// The document, secrets redacted.
    pub yaml: String,
}

/// The JSON shape of `opictl profile diff`.
#[derive(Debug, Serialize)]
pub struct DiffView {
    /// The pool.
    pub pool: String,
    /// The older generation (0: none, or a draft diff's base is `from`).
    pub from: u64,
    /// The newer generation (0: the draft).
    pub to: u64,
    /// Unified diff of the redacted documents, empty when equal.
    pub diff: String,
}

/// Runs `opictl profile …`.
pub async fn run(context: &Context, command: ProfileCommand) -> Result<(), Error> {
    match command {
        ProfileCommand::Set {
            pool,
            file,
            sign_key,
            strategy,
        } => {
            let yaml = read_document(&file)?;
            let signatures = sign(&yaml, &sign_key)?;
            let strategy = strategy_message(&strategy);
            let mut client = context.connect().await?;
            let info = client
                .set_profile(&pool, yaml, strategy, signatures)
                .await?;
            let view = ProfileView::from(info);
            match context.format {
                Format::Json => output::print_json(&view),
                Format::Table => output::print(&set_summary(&view)),
            }
        }
        ProfileCommand::Show { pool, generation } => {
            let mut client = context.connect().await?;
            let info = client.get_profile(&pool, generation.unwrap_or(0)).await?;
            let view = ProfileView::from(info);
            match context.format {
                Format::Json => output::print_json(&view),
                Format::Table => output::print(&show(&view, SystemTime::now())),
            }
        }
        ProfileCommand::Diff {
            pool,
            file,
            from,
            to,
        } => {
            let draft_yaml = match &file {
                Some(file) => read_document(file)?,
                None => String::new(),
            };
            let message = DiffProfileRequest {
                pool,
                from: from.unwrap_or(0),
                to: to.unwrap_or(0),
                draft_yaml,
            };
            let answer = context.connect().await?.diff_profile(message).await?;
            let view = DiffView {
                pool: answer.pool,
                from: answer.from,
                to: answer.to,
                diff: answer.diff,
            };
            match context.format {
                Format::Json => output::print_json(&view),
                Format::Table if view.diff.is_empty() => output::print("no difference\n"),
                Format::Table => output::print(&output::sanitize_lines(&view.diff)),
            }
        }
    }
}

impl From<ProfileInfo> for ProfileView {
    fn from(info: ProfileInfo) -> Self {
        Self {
            created_at: timestamp(info.created_at.as_ref()),
            pool: info.pool,
            generation: info.generation,
            epoch: info.epoch,
            digest: info.digest,
            created_by: info.created_by,
            changed: info.changed,
            yaml: info.yaml,
        }
    }
}

/// The strategy options as the protocol carries them.
fn strategy_message(args: &StrategyArgs) -> RolloutStrategy {
    RolloutStrategy {
        canary: args.canary,
        max_unavailable: args.max_unavailable.clone(),
        failure_domain: args.failure_domain.clone().unwrap_or_default(),
        settle_secs: args.settle.as_secs(),
        failure_budget: args.failure_budget,
    }
}

/// Reads a profile document from `path`, or standard input for `-`.
/// Signs the document with each key file; the signature covers its bytes exactly as sent.
fn sign(yaml: &str, keys: &[PathBuf]) -> Result<Vec<opi_proto::v1::ProfileSignature>, Error> {
    let mut signatures = Vec::new();
    for path in keys {
        let unusable = |reason: String| Error::SignerKey {
            path: path.clone(),
            reason,
        };
        let pem = opi_pki::files::read_secret(path).map_err(|e| unusable(e.to_string()))?;
        let what = path.display().to_string();
        let signed =
            opi_pki::profile_sig::sign(&opi_pki::SecretPem::new(pem), &what, yaml.as_bytes())
                .map_err(|e| unusable(e.to_string()))?;
        signatures.push(opi_proto::v1::ProfileSignature {
            public_key: signed.public_key,
            signature: signed.signature,
        });
    }
    Ok(signatures)
}

fn read_document(path: &Path) -> Result<String, Error> {
    let failed = |source| Error::ReadProfile {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    let limit = MAX_PROFILE_BYTES + 1;
    if path == Path::new("-") {
        std::io::stdin()
            .take(limit)
            .read_to_string(&mut text)
            .map_err(failed)?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit).read_to_string(&mut text))
            .map_err(failed)?;
    }
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(Error::ProfileTooLarge {
            path: PathBuf::from(path),
            limit: MAX_PROFILE_BYTES,
        });
    }
    Ok(text)
}

fn set_summary(view: &ProfileView) -> String {
    if !view.changed {
        return format!(
            "pool {} profile unchanged: same document as generation {} ({})\n",
            view.pool, view.generation, view.digest
        );
    }
    format!(
        "pool {pool} profile stored as generation {} ({})\nrollout started; follow it with `opictl rollout status {pool} --watch`\n",
        view.generation,
        view.digest,
        pool = view.pool
    )
}

fn show(view: &ProfileView, now: SystemTime) -> String {
    let mut text = fields(&[
        ("pool", view.pool.clone()),
        ("generation", view.generation.to_string()),
        ("epoch", view.epoch.to_string()),
        ("digest", view.digest.clone()),
        ("created", output::when(view.created_at.as_deref(), now)),
        ("created by", view.created_by.clone()),
    ]);
    text.push('\n');
    text.push_str(&output::sanitize_lines(&view.yaml));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_profile_file_and_refuses_one_too_large() {
        let dir = tempfile::tempdir().expect("temp dir");
        let small = dir.path().join("small.yaml");
        std::fs::write(&small, "apiVersion: opi.fleet/v1\n").expect("write");
        assert_eq!(
            read_document(&small).expect("small file"),
            "apiVersion: opi.fleet/v1\n"
        );

        let large = dir.path().join("large.yaml");
        std::fs::write(&large, vec![b'#'; MAX_PROFILE_BYTES as usize + 1]).expect("write");
        let error = read_document(&large).expect_err("too large").to_string();
        assert!(error.contains("large.yaml"), "{error}");
        assert!(error.contains("262144"), "{error}");
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let error = read_document(Path::new("/nonexistent/p.yaml"))
            .expect_err("missing")
            .to_string();
        assert!(error.contains("/nonexistent/p.yaml"), "{error}");
    }
}
