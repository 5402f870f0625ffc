//! The configuration reference (`docs/config-reference.md`), generated from the code so that
//! it cannot drift: every command, subcommand and option from the clap definitions, and every
//! key of the configuration files from their serde types (descriptions from their doc
//! comments through their JSON schemas, defaults from their `Default` values). A test fails
//! when the committed file differs from what this prints.

use std::fmt::Write as _;

use clap::{Arg, Command};
use serde_json::Value;

/// How to regenerate the file, said in its header and by the freshness test.
pub const REGENERATE: &str = "opi-gen-docs --config-reference > docs/config-reference.md";

/// A configuration file: its title, where it lives, its schema and its default value.
struct FileDoc {
    title: &'static str,
    intro: &'static str,
    schema: Value,
    defaults: Option<Value>,
}

/// The whole reference, Markdown.
pub fn render(commands: &[Command]) -> String {
    let mut out = String::new();
    out.push_str("# Configuration reference\n\n");
    let _ = writeln!(
        out,
        "Generated from the code by `{REGENERATE}`; do not edit by hand (a test compares this \
         file with what the generator prints).\n"
    );
    out.push_str("## Commands\n\n");
    for command in commands {
        let mut command = command.clone();
        // Building propagates global options and the version into the subcommands.
        command.build();
        render_command(&mut out, &command, command.get_name(), true);
    }
    out.push_str("## Files\n\n");
    for file in files() {
        render_file(&mut out, &file);
    }
    out
}

fn files() -> [FileDoc; 3] {
    let health = opi_agent::conditions::config::HealthConfig::default();
    [
        FileDoc {
            title: "`/etc/opi-agent/health.toml` (opi-agent)",
            intro: "Which node conditions the agent checks and their thresholds. Optional: \
                    without it every default below applies; every key but `version` may be left \
                    out. A file the agent cannot use stops it with every problem listed.",
            schema: schema::<opi_agent::conditions::config::HealthConfig>(),
            defaults: Some(serde_json::to_value(health).expect("defaults serialize")),
        },
        FileDoc {
            title: "`/etc/opi-agent/floor.toml` (opi-agent)",
            intro: "The node's hardening floor, which no profile can lower. Without the file \
                    the built-in floor below applies; with it, the file is the whole floor.",
            schema: schema::<opi_agent::apply::floor_file::FloorFile>(),
            defaults: None,
        },
        FileDoc {
            title: "`DATA_DIR/manager.toml` (opi-manager)",
            intro: "Written by `opi-manager init`; `serve` reads it. Command-line options of \
                    `serve` override it.",
            schema: schema::<opi_manager::datadir::ManagerConfig>(),
            defaults: None,
        },
    ]
}

fn schema<T: schemars::JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

/// A command's section: what it does, its usage, its options; then its subcommands.
fn render_command(out: &mut String, command: &Command, path: &str, top: bool) {
    let _ = writeln!(out, "### `{path}`\n");
    if let Some(about) = command.get_long_about().or(command.get_about()) {
        let _ = writeln!(out, "{}\n", about.to_string().trim());
    }
    let usage = command.clone().render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ");
    let _ = writeln!(out, "```text\n{usage}\n```\n");
    if let Some(after) = command.get_after_long_help().filter(|_| top) {
        let _ = writeln!(out, "{}\n", after.to_string().trim());
    }

    // Global options are listed once, with the command that defines them.
    let shown = |arg: &&Arg| {
        let builtin = matches!(arg.get_id().as_str(), "help" | "version");
        !builtin && !arg.is_hide_set() && (top || !arg.is_global_set())
    };
    let args: Vec<&Arg> = command.get_arguments().filter(shown).collect();
    if !args.is_empty() {
        out.push_str("| argument | default | description |\n|---|---|---|\n");
        for arg in args {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                name(arg),
                default(arg),
                describe(arg)
            );
        }
        out.push('\n');
    }

    let documented = |sub: &&Command| !sub.is_hide_set() && sub.get_name() != "help";
    for sub in command.get_subcommands().filter(documented) {
        render_command(out, sub, &format!("{path} {}", sub.get_name()), false);
    }
}

/// `--token-file FILE`, `-o, --output FORMAT`, or `NAME` for a positional argument.
fn name(arg: &Arg) -> String {
    let value = arg
        .get_value_names()
        .map(|names| names.join(" "))
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    let takes_value = arg.get_num_args().is_none_or(|n| n.takes_values());
    if arg.is_positional() {
        return format!("`{value}`");
    }
    let mut flag = String::new();
    if let Some(short) = arg.get_short() {
        let _ = write!(flag, "-{short}, ");
    }
    if let Some(long) = arg.get_long() {
        let _ = write!(flag, "--{long}");
    }
    if takes_value {
        let _ = write!(flag, " {value}");
    }
    format!("`{flag}`")
}

fn default(arg: &Arg) -> String {
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
    match (defaults.is_empty(), env) {
        (true, None) if arg.is_required_set() => "required".to_string(),
        (true, None) => "-".to_string(),
        (true, Some(env)) => format!("`${env}`"),
        (false, None) => format!("`{}`", defaults.join(",")),
        (false, Some(env)) => format!("`${env}`, else `{}`", defaults.join(",")),
    }
}

/// The help text on one line, with the accepted values of an enumerated argument.
fn describe(arg: &Arg) -> String {
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|help| help.to_string())
        .unwrap_or_default();
    let mut text = cell(&help);
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|value| !value.is_hide_set())
        .map(|value| format!("`{}`", value.get_name()))
        .collect();
    let is_bool = arg.get_num_args().is_some_and(|n| !n.takes_values());
    if !values.is_empty() && !is_bool {
        let _ = write!(text, " (one of {})", values.join(", "));
    }
    text
}

/// A file's section: one row per key, sections and maps descended into.
fn render_file(out: &mut String, file: &FileDoc) {
    let _ = writeln!(out, "### {}\n\n{}\n", file.title, file.intro);
    out.push_str("| key | type | default | description |\n|---|---|---|---|\n");
    let defs = file.schema.get("$defs").cloned().unwrap_or_default();
    let mut rows = Vec::new();
    keys(&file.schema, &defs, "", file.defaults.as_ref(), &mut rows);
    for row in rows {
        out.push_str(&row);
    }
    out.push('\n');
    if file.title.contains("floor.toml") {
        let floor = opi_profile::floor::Floor::default();
        let text = toml::to_string(&floor).expect("the built-in floor serializes");
        let _ = writeln!(
            out,
            "The built-in floor, as a file:\n\n```toml\nversion = 1\n{text}```\n"
        );
    }
}

/// Rows for the properties of `schema` (an object), under `prefix`.
fn keys(
    schema: &Value,
    defs: &Value,
    prefix: &str,
    defaults: Option<&Value>,
    rows: &mut Vec<String>,
) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, property) in properties {
        let property = resolve(property, defs);
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let default = defaults.and_then(|d| d.get(key));
        if property.get("properties").is_some() {
            rows.push(format!(
                "| `[{path}]` | section | | {} |\n",
                cell(description(&property))
            ));
            keys(&property, defs, &path, default, rows);
            continue;
        }
        if let Some(entry) = property
            .get("additionalProperties")
            .filter(|v| v.is_object())
        {
            let entry = resolve(entry, defs);
            rows.push(format!(
                "| `[{path}.\"NAME\"]` | table per name | | {} |\n",
                cell(description(&property))
            ));
            keys(&entry, defs, &format!("{path}.\"NAME\""), None, rows);
            continue;
        }
        rows.push(format!(
            "| `{path}` | {} | {} | {} |\n",
            type_of(&property, defs),
            default.map(toml_value).unwrap_or_else(|| "-".into()),
            cell(description(&property))
        ));
    }
}

/// `schema`, or the definition its `$ref` names.
fn resolve(schema: &Value, defs: &Value) -> Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.trim_start_matches("#/$defs/");
            let mut resolved = defs.get(name).cloned().unwrap_or_default();
            if let (Some(own), Value::Object(map)) = (schema.get("description"), &mut resolved) {
                map.insert("description".into(), own.clone());
            }
            resolved
        }
        None => schema.clone(),
    }
}

fn description(schema: &Value) -> &str {
    schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `integer`, `string`, `array of string`, `integer (optional)`…
fn type_of(schema: &Value, defs: &Value) -> String {
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => vec!["value"],
    };
    let optional = types.contains(&"null");
    let mut named: Vec<String> = types
        .iter()
        .filter(|t| **t != "null")
        .map(|t| match *t {
            "array" => {
                let items = schema
                    .get("items")
                    .map(|i| resolve(i, defs))
                    .unwrap_or_default();
                format!("array of {}", type_of(&items, defs))
            }
            other => other.to_string(),
        })
        .collect();
    if named.is_empty() {
        named.push("value".into());
    }
    let mut text = named.join(" or ");
    if optional {
        text.push_str(" (optional)");
    }
    text
}

/// A default value as TOML writes it, in code quotes.
fn toml_value(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        other => format!("`{}`", toml_text(other).replace('`', "'")),
    }
}

fn toml_text(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_text).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Number(n) if n.is_f64() => format!("{:.1}", n.as_f64().unwrap_or_default()),
        other => other.to_string(),
    }
}

/// Text fit for a table cell: one line, pipes escaped, rustdoc links as plain code.
fn cell(text: &str) -> String {
    let joined: Vec<&str> = text.split_whitespace().collect();
    joined
        .join(" ")
        .replace("[`", "`")
        .replace("`]", "`")
        .replace('|', "\\|")
}
