//! Small readers over a parsed YAML tree that record a problem, with its path, instead of
//! stopping at the first one.

use serde_norway::{Mapping, Value};

use crate::errors::{join, ProfileErrors};

/// The entries of a mapping with string keys; other shapes are recorded as problems.
pub fn entries<'a>(
    value: &'a Value,
    path: &str,
    errors: &mut ProfileErrors,
) -> Vec<(String, &'a Value)> {
    let Some(mapping) = as_mapping(value, path, errors) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (key, value) in mapping {
        match key.as_str() {
            Some(key) => found.push((key.to_string(), value)),
            None => errors.push(path, format!("key {key:?} is not a string")),
        }
    }
    found
}

/// `value` as a mapping, or a problem.
pub fn as_mapping<'a>(
    value: &'a Value,
    path: &str,
    errors: &mut ProfileErrors,
) -> Option<&'a Mapping> {
    match value {
        Value::Mapping(mapping) => Some(mapping),
        other => {
            errors.push(path, format!("expected a mapping, found {}", kind(other)));
            None
        }
    }
}

/// `value` as a string, or a problem.
pub fn string(value: &Value, path: &str, errors: &mut ProfileErrors) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        other => {
            errors.push(path, format!("expected a string, found {}", kind(other)));
            None
        }
    }
}

/// `value` as a boolean, or a problem.
pub fn boolean(value: &Value, path: &str, errors: &mut ProfileErrors) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        other => {
            errors.push(
                path,
                format!("expected true or false, found {}", kind(other)),
            );
            None
        }
    }
}

/// `value` as an integer, or a problem.
pub fn integer(value: &Value, path: &str, errors: &mut ProfileErrors) -> Option<i64> {
    match value.as_i64() {
        Some(number) => Some(number),
        None => {
            errors.push(path, format!("expected an integer, found {}", kind(value)));
            None
        }
    }
}

/// A scalar (string, number or boolean) as text, as a sysctl or sshd value is written.
pub fn scalar_text(value: &Value, path: &str, errors: &mut ProfileErrors) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        other => {
            errors.push(
                path,
                format!("expected a single value, found {}", kind(other)),
            );
            None
        }
    }
}

/// `value` as a list, or a problem.
pub fn sequence<'a>(value: &'a Value, path: &str, errors: &mut ProfileErrors) -> &'a [Value] {
    match value {
        Value::Sequence(items) => items,
        other => {
            errors.push(path, format!("expected a list, found {}", kind(other)));
            &[]
        }
    }
}

/// Records every key of `found` not in `known`, as "unknown key", under `path`.
pub fn refuse_unknown(
    found: &[(String, &Value)],
    known: &[&str],
    path: &str,
    errors: &mut ProfileErrors,
) {
    for (key, _) in found {
        if !known.contains(&key.as_str()) {
            errors.push(
                join(path, key),
                format!("unknown key; expected one of: {}", known.join(", ")),
            );
        }
    }
}

/// The value under `key` among `found`, if any.
pub fn get<'a>(found: &[(String, &'a Value)], key: &str) -> Option<&'a Value> {
    found.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// A word for the shape of a value, for messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
