//! `opi-agent plan`: what `opi-agent apply` would change, without changing anything (but an
//! interrupted apply is recovered first).

use std::io::Write;

use clap::Args;

use super::plan;
use super::record::AppliedRecord;
use super::{prepare, render, ApplyError, TargetArgs};
use crate::output::{self, OutputFormat};

/// Arguments of `opi-agent plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The profile and the node.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Prints the plan of the profile on this node.
pub async fn run(args: PlanArgs) -> Result<(), ApplyError> {
    let prepared = prepare(&args.target).await?;
    let node = &prepared.node;
    let read = |source| {
        ApplyError::Engine(super::engine::EngineError::ReadNode {
            root: node.root.clone(),
            source,
        })
    };
    let previous = AppliedRecord::load(node).map_err(read)?;
    let plan = plan::compute(node, &prepared.desired, previous.as_ref()).map_err(read)?;

    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Table => render::write_plan(&mut out, &plan),
        OutputFormat::Json => output::write_json(&mut out, &plan),
    }
    .and_then(|()| out.flush())
    .map_err(ApplyError::WriteOutput)
}
