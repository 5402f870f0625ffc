//! `opi-agent compliance`: the node's evidence now, per ANSSI-BP-028 recommendation of the
//! baseline last applied, observed on this node; `--profile` observes a profile not applied.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;
use opi_profile::Profile;
use time::OffsetDateTime;

use super::{collect, evaluate, Evidence, Status};
use crate::apply::floor_file::{self, FloorError};
use crate::apply::kinds::sysctl::DEFAULT_PROC_SYS;
use crate::apply::node::{Node, DEFAULT_DBUS_SOCKET};
use crate::output::{self, timestamp, OutputFormat};
use crate::paths::LocationArgs;

/// Arguments of `opi-agent compliance`.
#[derive(Args, Debug)]
pub struct ComplianceArgs {
    /// Where the node's files are; kernel values are read live only when --root is /
    #[command(flatten)]
    pub location: LocationArgs,

    /// Observe the baseline of this profile instead of the one last applied
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,

    /// Where live sysctls are read when --root is /
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PROC_SYS)]
    pub proc_sys: PathBuf,

    /// List every item, not only those that do not pass
    #[arg(long)]
    pub all: bool,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Why `opi-agent compliance` failed.
#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    /// The node's files cannot be read.
    #[error("cannot observe the node under {root}")]
    Observe {
        /// The root.
        root: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Nothing with a baseline was applied here and no profile was given.
    #[error("no profile with a hardening baseline was applied under {root}; apply one, or pass --profile FILE")]
    NothingApplied {
        /// The root.
        root: PathBuf,
    },
    /// The profile cannot be read or used.
    #[error("cannot use the profile {path}: {why}")]
    Profile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The node's floor cannot be read.
    #[error(transparent)]
    LoadFloor(FloorError),
    /// Standard output cannot be written.
    #[error("cannot write the result to standard output")]
    WriteOutput(#[source] io::Error),
}

impl ComplianceError {
    /// The process exit code: a missing or bad profile is a usage error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ComplianceError::NothingApplied { .. }
            | ComplianceError::Profile { .. }
            | ComplianceError::LoadFloor(_) => crate::EXIT_USAGE,
            ComplianceError::Observe { .. } | ComplianceError::WriteOutput(_) => {
                crate::EXIT_RUNTIME
            }
        }
    }
}

/// Prints the evidence of this node.
pub fn run(args: ComplianceArgs) -> Result<(), ComplianceError> {
    let paths = args.location.resolve();
    let node = Node::new(
        &paths,
        &args.proc_sys,
        PathBuf::from(DEFAULT_DBUS_SOCKET).as_path(),
    );
    let observe = |source| ComplianceError::Observe {
        root: paths.root.clone(),
        source,
    };
    let now = OffsetDateTime::now_utc();
    let evidence = match &args.profile {
        Some(path) => of_profile(&node, path, now)?,
        None => collect(&node, now).map_err(observe)?,
    };
    let evidence = evidence.ok_or_else(|| ComplianceError::NothingApplied {
        root: paths.root.clone(),
    })?;

    let mut out = io::stdout().lock();
    match args.output {
        OutputFormat::Table => write_evidence(&mut out, &evidence, args.all),
        OutputFormat::Json => output::write_json(&mut out, &evidence),
    }
    .and_then(|()| out.flush())
    .map_err(ComplianceError::WriteOutput)
}

/// The evidence of `path`'s baseline on `node`, as if it were applied.
fn of_profile(
    node: &Node,
    path: &PathBuf,
    now: OffsetDateTime,
) -> Result<Option<Evidence>, ComplianceError> {
    let failed = |why: String| ComplianceError::Profile {
        path: path.clone(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let profile = Profile::from_yaml(&text).map_err(|e| failed(e.to_string()))?;
    let floor = floor_file::load(&node.root).map_err(ComplianceError::LoadFloor)?;
    let desired = profile
        .desired_state(&floor)
        .map_err(|e| failed(e.to_string()))?;
    let Some(promise) = &desired.promise else {
        return Ok(None);
    };
    let mut evidence =
        evaluate(node, promise, now.date()).map_err(|source| ComplianceError::Observe {
            root: node.root.clone(),
            source,
        })?;
    evidence.observed_at = timestamp(now);
    Ok(Some(evidence))
}

/// A summary, one line per recommendation, then the items that do not pass (or every item).
fn write_evidence(out: &mut impl Write, evidence: &Evidence, all: bool) -> io::Result<()> {
    let summary = evidence.summary;
    let source = match evidence.live {
        true => "live kernel values and files",
        false => "files only (root is not /)",
    };
    output::write_table(
        out,
        &[
            ("baseline", evidence.baseline.clone()),
            (
                "observed",
                format!("{} from {source}", evidence.observed_at),
            ),
            (
                "rules",
                format!(
                    "{} pass, {} fail, {} exception, {} out of scope",
                    summary.pass, summary.fail, summary.exception, summary.out_of_scope
                ),
            ),
        ],
    )?;
    let rows: Vec<Vec<String>> = evidence
        .rules
        .iter()
        .map(|rule| {
            let passing = rule
                .items
                .iter()
                .filter(|i| i.status == Status::Pass)
                .count();
            vec![
                rule.number.clone(),
                rule.level.guide_letter().to_string(),
                status_text(rule.status).to_string(),
                format!("{passing}/{}", rule.items.len()),
                rule.title.clone(),
            ]
        })
        .collect();
    writeln!(out)?;
    output::write_columns(out, &["RULE", "LEVEL", "STATUS", "ITEMS", "TITLE"], &rows)?;

    let items: Vec<Vec<String>> = evidence
        .rules
        .iter()
        .flat_map(|rule| rule.items.iter().map(move |item| (rule, item)))
        .filter(|(_, item)| all || item.status != Status::Pass)
        .map(|(rule, item)| {
            let why = match (&item.exception, &item.note) {
                (Some(exception), _) => exception.reason.clone(),
                (None, Some(note)) => note.clone(),
                (None, None) => String::new(),
            };
            vec![
                rule.number.clone(),
                status_text(item.status).to_string(),
                item.id.clone(),
                item.expected.clone(),
                item.observed.clone(),
                why,
            ]
        })
        .collect();
    if !items.is_empty() {
        writeln!(out)?;
        let headers = ["RULE", "STATUS", "ITEM", "EXPECTED", "OBSERVED", "WHY"];
        output::write_columns(out, &headers, &items)?;
    }
    Ok(())
}

/// How a verdict reads.
pub fn status_text(status: Status) -> &'static str {
    match status {
        Status::Pass => "pass",
        Status::Fail => "fail",
        Status::Exception => "exception",
        Status::ExpiredException => "expired",
        Status::OutOfScope => "out of scope",
    }
}
