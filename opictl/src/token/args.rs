//! Checking the arguments of `opictl token create`: the lifetime and the labels.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::UsageError;

/// The longest a token may live: enrollment tokens are meant for a day's work, not a season.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a `--ttl` value was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    /// Not a duration at all.
    #[error("not a duration; write a number and a unit, such as 30m, 1h or 2d")]
    Invalid,
    /// Zero, which no node could use.
    #[error("a token must live longer than zero; try 1h")]
    Zero,
    /// Beyond [`MAX_TTL`].
    #[error("a token may live at most 7 days; use 7d or less")]
    TooLong,
}

/// Why a `--label` value was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// No `=` between key and value.
    #[error("expected KEY=VALUE, such as zone=eu-west-1a")]
    NoEquals,
    /// An empty key, or one with characters other than letters, digits, `.`, `_`, `-`, `/`.
    #[error(
        "label key `{0}` must be non-empty and use only letters, digits, `.`, `_`, `-` and `/`"
    )]
    BadKey(String),
    /// A value holding control characters.
    #[error("the value of label `{0}` holds control characters")]
    BadValue(String),
}

/// One `--label KEY=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// The key, before the first `=`.
    pub key: String,
    /// The value, after the first `=`; may be empty.
    pub value: String,
}

/// Parses a `--ttl` value with humantime (`90s`, `30m`, `1h`, `2d`) within (0, 7 days].
pub fn parse_ttl(text: &str) -> Result<Duration, TtlError> {
    let ttl = humantime::parse_duration(text.trim()).map_err(|_| TtlError::Invalid)?;
    if ttl.is_zero() {
        return Err(TtlError::Zero);
    }
    if ttl > MAX_TTL {
        return Err(TtlError::TooLong);
    }
    Ok(ttl)
}

/// Parses a `--label KEY=VALUE`; the value may itself contain `=`.
pub fn parse_label(text: &str) -> Result<Label, LabelError> {
    let (key, value) = text.split_once('=').ok_or(LabelError::NoEquals)?;
    let key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    if key.is_empty() || !key.chars().all(key_char) {
        return Err(LabelError::BadKey(key.to_string()));
    }
    if value.chars().any(char::is_control) {
        return Err(LabelError::BadValue(key.to_string()));
    }
    Ok(Label {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// Gathers labels into a map, refusing a key given twice even with the same value.
pub fn collect_labels(labels: Vec<Label>) -> Result<BTreeMap<String, String>, UsageError> {
    let mut map = BTreeMap::new();
    for Label { key, value } in labels {
        if map.contains_key(&key) {
            return Err(UsageError::DuplicateLabel(key));
        }
        map.insert(key, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_accepts_humantime_durations() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h 30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn ttl_accepts_exactly_seven_days() {
        assert_eq!(parse_ttl("7d"), Ok(MAX_TTL));
    }

    #[test]
    fn ttl_rejects_zero() {
        assert_eq!(parse_ttl("0s"), Err(TtlError::Zero));
        assert_eq!(parse_ttl("0"), Err(TtlError::Zero));
    }

    #[test]
    fn ttl_rejects_more_than_seven_days() {
        assert_eq!(parse_ttl("7d 1s"), Err(TtlError::TooLong));
        assert_eq!(parse_ttl("2weeks"), Err(TtlError::TooLong));
    }

    #[test]
    fn ttl_rejects_text_that_is_no_duration() {
        assert_eq!(parse_ttl("soon"), Err(TtlError::Invalid));
        assert_eq!(parse_ttl("10"), Err(TtlError::Invalid));
        assert_eq!(parse_ttl(""), Err(TtlError::Invalid));
    }

    #[test]
    fn label_splits_at_the_first_equals_sign() {
        let label = parse_label("note=a=b").unwrap();

        assert_eq!((label.key.as_str(), label.value.as_str()), ("note", "a=b"));
        assert_eq!(parse_label("rack=").unwrap().value, "");
    }

    #[test]
    fn label_without_equals_sign_is_malformed() {
        assert_eq!(parse_label("zone"), Err(LabelError::NoEquals));
    }

    #[test]
    fn label_with_empty_or_odd_key_is_malformed() {
        assert_eq!(parse_label("=a"), Err(LabelError::BadKey(String::new())));
        assert_eq!(
            parse_label("my zone=a"),
            Err(LabelError::BadKey("my zone".into()))
        );
        assert_eq!(parse_label("z\n=a"), Err(LabelError::BadKey("z\n".into())));
    }

    #[test]
    fn label_value_with_control_characters_is_malformed() {
        assert_eq!(
            parse_label("zone=a\u{1b}b"),
            Err(LabelError::BadValue("zone".into()))
        );
    }

    #[test]
    fn duplicate_label_keys_are_refused() {
        let labels = vec![
            parse_label("zone=a").unwrap(),
            parse_label("zone=a").unwrap(),
        ];

        let error = collect_labels(labels).unwrap_err();
        assert_eq!(
            error.to_string(),
            "label `zone` is given twice; give each key once"
        );
    }

    #[test]
    fn distinct_label_keys_are_collected() {
        let labels = vec![
            parse_label("zone=a").unwrap(),
            parse_label("rack=r1").unwrap(),
        ];

        let map = collect_labels(labels).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map["rack"], "r1");
    }
}
