//! `opi-agent apply`: applies a profile as one transaction and says what it did, or why it
//! rolled back.

use std::io::Write;

use clap::Args;
use serde::Serialize;

use super::engine::{self, Applied};
use super::plan::Plan;
use super::{prepare, render, ApplyError, TargetArgs};
use crate::output::{self, OutputFormat};

/// Arguments of `opi-agent apply`.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The profile and the node.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// The outcome as printed with `-o json`.
#[derive(Serialize)]
struct AppliedView<'a> {
    result: &'static str,
    plan: &'a Plan,
    verified: &'a [String],
}

/// Applies the profile on this node.
pub async fn run(args: ApplyArgs) -> Result<(), ApplyError> {
    let prepared = prepare(&args.target).await?;
    let applied = engine::apply(
        &prepared.node,
        &prepared.desired,
        &prepared.profile_sha256,
        &prepared.verifier,
    )
    .await
    .map_err(ApplyError::Engine)?;

    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Table => write_outcome(&mut out, &applied),
        OutputFormat::Json => {
            let result = if applied.changed {
                "committed"
            } else {
                "unchanged"
            };
            let view = AppliedView {
                result,
                plan: &applied.plan,
                verified: &applied.verified,
            };
            output::write_json(&mut out, &view)
        }
    }
    .and_then(|()| out.flush())
    .map_err(ApplyError::WriteOutput)
}

fn write_outcome(out: &mut impl Write, applied: &Applied) -> std::io::Result<()> {
    if !applied.changed {
        return writeln!(
            out,
            "nothing to change: the node already matches the profile"
        );
    }
    render::write_plan(out, &applied.plan)?;
    writeln!(
        out,
        "\ncommitted: {} file(s) changed",
        applied.plan.changed_files().count()
    )?;
    for line in &applied.verified {
        writeln!(out, "verify: {line}")?;
    }
    Ok(())
}
