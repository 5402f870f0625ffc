//! `opi-gen-docs OUT_DIR`: writes the man pages and shell completions of `opi-agent`,
//! `opi-manager` and `opictl`, generated from their clap definitions, for the Debian packages
//! (`scripts/build-debs`):
//!
//! - `OUT_DIR/man/man1/NAME.1`, and `NAME-SUB.1` for every subcommand, at any depth;
//! - `OUT_DIR/completions/bash/NAME`, `zsh/_NAME`, `fish/NAME.fish`.
//!
//! `opi-gen-docs --config-reference` prints the configuration reference
//! (`docs/config-reference.md`) instead.

mod reference;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Parser};
use clap_complete::Shell;

/// Shells completions are generated for, and the file name each expects.
const SHELLS: [(Shell, &str, &str); 3] = [
    (Shell::Bash, "bash", ""),
    (Shell::Zsh, "zsh", "_"),
    (Shell::Fish, "fish", ""),
];

/// Generate man pages and shell completions for the OPI Fleet commands.
#[derive(Debug, Parser)]
#[command(name = "opi-gen-docs", version)]
struct Args {
    /// Directory to write `man/` and `completions/` into (created if missing)
    #[arg(required_unless_present = "config_reference")]
    out_dir: Option<PathBuf>,

    /// Print the configuration reference (Markdown) on standard output instead
    #[arg(long, conflicts_with = "out_dir")]
    config_reference: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(out_dir) = args.out_dir else {
        print!("{}", reference::render(&commands()));
        return Ok(());
    };
    for command in commands() {
        write_man_pages(&command, &out_dir.join("man/man1"))?;
        write_completions(command, &out_dir.join("completions"))?;
    }
    Ok(())
}

/// The three command lines, as their binaries parse them.
fn commands() -> [clap::Command; 3] {
    [
        opi_agent::cli::Cli::command(),
        opi_manager::cli::Cli::command(),
        opictl::cli::Cli::command(),
    ]
}

/// Writes the page of `command` and, recursively, of each of its subcommands.
fn write_man_pages(command: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut command = command.clone();
    // Building propagates global options and the version into the subcommands.
    command.build();
    write_page(&command, command.get_name(), dir)
}

fn write_page(command: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<()> {
    // clap takes only static names here; a one-shot generator can afford to leak a few.
    let static_name: &'static str = Box::leak(name.to_string().into_boxed_str());
    let page = command.clone().name(static_name);
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .with_context(|| format!("cannot render the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;

    // `help` is clap's own subcommand: its page would only repeat the others.
    let documented = |sub: &&clap::Command| !sub.is_hide_set() && sub.get_name() != "help";
    for sub in command.get_subcommands().filter(documented) {
        write_page(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

/// Writes the bash, zsh and fish completions of `command`.
fn write_completions(mut command: clap::Command, dir: &Path) -> anyhow::Result<()> {
    let name = command.get_name().to_string();
    for (shell, shell_dir, prefix) in SHELLS {
        let dir = dir.join(shell_dir);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let suffix = if shell == Shell::Fish { ".fish" } else { "" };
        let path = dir.join(format!("{prefix}{name}{suffix}"));
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, &name, &mut script);
        fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_and_subcommand_gets_a_page_and_each_shell_a_completion() {
        let out = tempfile::TempDir::new().unwrap();
        for command in commands() {
            write_man_pages(&command, &out.path().join("man/man1")).unwrap();
            write_completions(command, &out.path().join("completions")).unwrap();
        }
        let man = out.path().join("man/man1");
        for page in [
            "opi-agent.1",
            "opi-agent-enroll.1",
            "opi-manager-init.1",
            "opictl-nodes.1",
        ] {
            let text = fs::read_to_string(man.join(page)).unwrap();
            assert!(text.starts_with(".ie \\n(.g .ds Aq"), "{page} is roff");
        }
        let enroll = fs::read_to_string(man.join("opi-agent-enroll.1")).unwrap();
        assert!(enroll.contains("token\\-file"), "options are documented");
        let opictl = fs::read_to_string(man.join("opictl.1")).unwrap();
        assert!(
            opictl.contains("Exit status: 0 on success"),
            "exit codes are documented"
        );
        assert!(
            !man.join("opictl-help.1").exists(),
            "clap's help has no page"
        );
        let bash = fs::read_to_string(out.path().join("completions/bash/opictl")).unwrap();
        assert!(bash.contains("complete -F"), "{bash}");
        assert!(out.path().join("completions/zsh/_opi-manager").is_file());
        assert!(out.path().join("completions/fish/opi-agent.fish").is_file());
    }

    #[test]
    fn the_committed_config_reference_is_what_the_code_generates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config-reference.md");
        let committed = fs::read_to_string(&path).unwrap_or_default();
        let generated = reference::render(&commands());
        assert!(
            committed == generated,
            "{} is stale: regenerate it with `{}`",
            path.display(),
            reference::REGENERATE
        );
    }

    #[test]
    fn the_config_reference_lists_every_command_option_and_file_key() {
        let text = reference::render(&commands());
        for needle in [
            "### `opictl token create`",
            "| `--ttl DURATION` | `1h` |",
            "### `opi-agent enroll`",
            "### `opi-manager serve`",
            "| `-o, --output FORMAT` | `table` |",
            "| `disk.warning_used_percent` | number | `85.0` |",
            "| `[sysctls.\"NAME\"]` | table per name |",
            "| `listen` | string | - |",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert_eq!(
            text.matches("| `--config FILE` |").count(),
            1,
            "global options once"
        );
    }
}
