//! How a plan and an apply's outcome read on standard output.

use std::io::{self, Write};

use super::plan::{FileAction, Plan};

/// Prints `plan` for people: a summary, each file with its changed lines, the live steps, the
/// restarts, the reboot, and the live steps skipped.
pub fn write_plan(out: &mut impl Write, plan: &Plan) -> io::Result<()> {
    let root = match plan.live {
        true => plan.root.clone(),
        false => format!("{} (not /: files only, live steps skipped)", plan.root),
    };
    let reboot = match plan.reboot_required.is_empty() {
        true => "not required".to_string(),
        false => format!("required for {}", plan.reboot_required.join(", ")),
    };
    let changed = plan.changed_files().count();
    crate::output::write_table(
        out,
        &[
            ("root", root),
            (
                "files",
                format!(
                    "{changed} to change, {} unchanged",
                    plan.files.len() - changed
                ),
            ),
            ("modes", format!("{} to change", plan.permissions.len())),
            ("live sysctls", format!("{} to set", plan.sysctls.len())),
            ("restart", list_or_none(&plan.restart)),
            ("reboot", reboot),
        ],
    )?;
    for step in &plan.files {
        let action = match step.action {
            FileAction::Create => "create",
            FileAction::Update => "update",
            FileAction::Remove => "remove",
            FileAction::Unchanged => "unchanged",
        };
        writeln!(
            out,
            "\n{action:<9} {}  ({}, {})",
            step.path, step.kind, step.mode
        )?;
        for line in &step.lines {
            writeln!(out, "    {line}")?;
        }
    }
    write_live_steps(out, plan)
}

fn write_live_steps(out: &mut impl Write, plan: &Plan) -> io::Result<()> {
    for change in &plan.permissions {
        writeln!(
            out,
            "\nmode      {}  {:04o} {}:{} -> {:04o} {}:{}",
            change.path,
            change.from.mode,
            change.from.uid,
            change.from.gid,
            change.to.mode,
            change.to.uid,
            change.to.gid
        )?;
    }
    if !plan.sysctls.is_empty() {
        writeln!(out, "\nlive sysctls:")?;
        for step in &plan.sysctls {
            let from = step.from.as_deref().unwrap_or("absent");
            writeln!(
                out,
                "    {} {from} -> {}  ({})",
                step.key, step.to, step.origin
            )?;
        }
    }
    let sections = [
        (
            "blacklisted but loaded now (unloaded at the next boot)",
            &plan.modules_still_loaded,
        ),
        ("skipped", &plan.skipped),
        ("notes", &plan.notes),
    ];
    for (title, lines) in sections {
        if !lines.is_empty() {
            writeln!(out, "\n{title}:")?;
            for line in lines {
                writeln!(out, "    {line}")?;
            }
        }
    }
    Ok(())
}

fn list_or_none(items: &[String]) -> String {
    match items.is_empty() {
        true => "none".to_string(),
        false => items.join(", "),
    }
}
