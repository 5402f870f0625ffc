//! How results reach stdout: plain aligned tables, vertical field lists, pretty JSON, and the
//! formatting of times and sizes they share.
//!
//! Nothing here colours its output, so what a terminal shows is also what a pipe receives.
//! Text that comes from the fleet (host names, OS strings, manager messages) is stripped of
//! control characters before it reaches a terminal.

use std::io::{ErrorKind, Write};
use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use serde::Serialize;

use crate::error::Error;

/// Spaces between table columns.
const COLUMN_GAP: usize = 3;
/// What an empty table cell or unknown value shows.
pub const NONE: &str = "-";

/// How a command prints its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for programs: pretty-printed, or one object per line for `watch`.
    Json,
}

/// What `-o` accepts: the formats of every command, and CSV for `opictl compliance`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputChoice {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for programs.
    Json,
    /// Comma-separated values, one row per node and recommendation (`opictl compliance`).
    Csv,
}

impl OutputChoice {
    /// The format of commands that have no CSV form.
    pub fn format(self) -> Format {
        match self {
            OutputChoice::Json => Format::Json,
            OutputChoice::Table | OutputChoice::Csv => Format::Table,
        }
    }
}

/// A table, with or without a header row, rendered as left-aligned columns.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// An empty table without a header row, for aligned lines under a heading of their own.
    pub fn headless() -> Self {
        Self::new(&[])
    }

    /// Appends a row; empty cells show as [`NONE`].
    pub fn row(&mut self, cells: Vec<String>) {
        let cells = cells
            .into_iter()
            .map(|cell| {
                if cell.is_empty() {
                    NONE.into()
                } else {
                    sanitize(&cell)
                }
            })
            .collect();
        self.rows.push(cells);
    }

    /// The table as text, one line per row, without trailing spaces.
    pub fn render(&self) -> String {
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        let header = Some(&header).filter(|header| !header.is_empty());
        let lines = header.into_iter().chain(&self.rows);
        let widths = self.widths();

        let mut text = String::new();
        for cells in lines {
            let mut line = String::new();
            for (cell, width) in cells.iter().zip(&widths) {
                line.push_str(cell);
                let pad = width + COLUMN_GAP - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        if widths.len() < columns {
            widths.resize(columns, 0);
        }
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        widths
    }
}

/// Renders `key  value` lines with the values aligned; empty values show as [`NONE`].
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (key, value) in pairs {
        let value = if value.is_empty() {
            NONE.into()
        } else {
            sanitize(value)
        };
        text.push_str(&format!("{key:width$}   {value}\n"));
    }
    text
}

/// Writes text to stdout. A reader that went away (`opictl nodes | head`) is not an error.
pub fn print(text: &str) -> Result<(), Error> {
    write_out(text).map(|_| ())
}

/// Writes text to stdout and flushes it, so that a stream reaches its reader at once;
/// `Ok(false)` when the reader went away (`opictl watch | head -1`), so a stream can stop.
pub fn write_out(text: &str) -> Result<bool, Error> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(Error::Output(error)),
    }
}

/// Writes a value to stdout as pretty JSON followed by a newline.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Error> {
    let mut text = serde_json::to_string_pretty(value)
        .expect("output views hold only strings, numbers and string-keyed maps");
    text.push('\n');
    print(&text)
}

/// Replaces control characters with their escaped form, so fleet-supplied text cannot move
/// the cursor or change the colours of the operator's terminal.
pub fn sanitize(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// [`sanitize`] for text of several lines: each line is cleaned, the line breaks are kept.
pub fn sanitize_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.strip_suffix('\n') {
            Some(line) => format!("{}\n", sanitize(line)),
            None => sanitize(line),
        })
        .collect()
}

/// A protobuf timestamp as a time; absent and zero (the epoch, a protobuf default) mean unset.
pub fn system_time(ts: Option<&Timestamp>) -> Option<SystemTime> {
    let ts = ts.filter(|ts| ts.seconds != 0 || ts.nanos != 0)?;
    SystemTime::try_from(*ts).ok()
}

/// How long ago a protobuf timestamp was, or `None` when unset. A time ahead of ours (another
/// machine's clock) reads as zero rather than as a negative age.
pub fn age(ts: Option<&Timestamp>, now: SystemTime) -> Option<Duration> {
    let then = system_time(ts)?;
    Some(now.duration_since(then).unwrap_or_default())
}

/// A time in RFC 3339, UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A protobuf timestamp in RFC 3339, or `None` when unset.
pub fn timestamp(ts: Option<&Timestamp>) -> Option<String> {
    system_time(ts).map(rfc3339)
}

/// An RFC 3339 time followed by how far it is from `now`: `2024-05-01T10:00:00Z (4s ago)`;
/// empty when absent.
pub fn when(time: Option<&str>, now: SystemTime) -> String {
    match (time, relative_rfc3339(time, now)) {
        (Some(time), Some(relative)) => format!("{time} ({relative})"),
        (Some(time), None) => time.to_string(),
        (None, _) => String::new(),
    }
}

/// How far `time` is from `now`, in one or two units: `4s ago`, `2h5m ago`, `in 59m`.
pub fn relative(time: SystemTime, now: SystemTime) -> String {
    match now.duration_since(time) {
        Ok(past) => format!("{} ago", short_duration(past)),
        Err(future) => format!("in {}", short_duration(future.duration())),
    }
}

/// An RFC 3339 time, as the views hold it, relative to `now`; `None` when absent or unreadable.
pub fn relative_rfc3339(time: Option<&str>, now: SystemTime) -> Option<String> {
    let time = humantime::parse_rfc3339(time?).ok()?;
    Some(relative(time, now))
}

/// A duration rounded down to what a person needs: `42s`, `17m`, `3h20m`, `30h`, `12d`.
pub fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (minutes, hours) = (secs / 60, secs / 3600);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{minutes}m"),
        3600..36_000 if minutes % 60 == 0 => format!("{hours}h"),
        3600..36_000 => format!("{hours}h{}m", minutes % 60),
        36_000..172_800 => format!("{hours}h"),
        _ => format!("{}d", secs / 86_400),
    }
}

/// A byte count in binary units with one decimal: `512 B`, `1.5 GiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn relative_time_reads_as_seconds_minutes_hours_or_days_ago() {
        let now = at(1_000_000);

        assert_eq!(relative(at(1_000_000), now), "0s ago");
        assert_eq!(relative(at(1_000_000 - 4), now), "4s ago");
        assert_eq!(relative(at(1_000_000 - 59), now), "59s ago");
        assert_eq!(relative(at(1_000_000 - 60), now), "1m ago");
        assert_eq!(relative(at(1_000_000 - 3599), now), "59m ago");
        assert_eq!(relative(at(1_000_000 - 3600), now), "1h ago");
        assert_eq!(relative(at(1_000_000 - 2 * 3600 - 5 * 60), now), "2h5m ago");
        assert_eq!(relative(at(1_000_000 - 30 * 3600), now), "30h ago");
        assert_eq!(relative(at(1_000_000 - 3 * 86_400), now), "3d ago");
    }

    #[test]
    fn relative_time_in_the_future_reads_as_in() {
        assert_eq!(relative(at(3600 + 100), at(100)), "in 1h");
        assert_eq!(relative(at(159), at(100)), "in 59s");
    }

    #[test]
    fn unset_and_epoch_timestamps_count_as_absent() {
        assert_eq!(timestamp(None), None);
        assert_eq!(timestamp(Some(&Timestamp::default())), None);
    }

    #[test]
    fn when_shows_absolute_then_relative_time() {
        let now = at(1_700_000_000 - 60);

        assert_eq!(
            when(Some("2023-11-14T22:13:20Z"), now),
            "2023-11-14T22:13:20Z (in 1m)"
        );
        assert_eq!(when(None, now), "");
    }

    #[test]
    fn rfc3339_text_reads_back_relative_to_now() {
        let now = at(1_700_000_004);

        assert_eq!(
            relative_rfc3339(Some("2023-11-14T22:13:20Z"), now).as_deref(),
            Some("4s ago")
        );
        assert_eq!(relative_rfc3339(Some("yesterday"), now), None);
        assert_eq!(relative_rfc3339(None, now), None);
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc() {
        let ts = Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };

        assert_eq!(
            timestamp(Some(&ts)).as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
    }

    #[test]
    fn table_aligns_columns_and_marks_empty_cells() {
        let mut table = Table::new(&["NAME", "POOL"]);
        table.row(vec!["web-1".into(), "workers".into()]);
        table.row(vec!["db".into(), String::new()]);

        assert_eq!(table.render(), "NAME    POOL\nweb-1   workers\ndb      -\n");
    }

    #[test]
    fn headless_table_aligns_rows_without_a_header() {
        let mut table = Table::headless();
        table.row(vec!["DiskPressure".into(), "/var".into()]);
        table.row(vec!["KubeletHealthy".into(), String::new()]);

        assert_eq!(
            table.render(),
            "DiskPressure     /var\nKubeletHealthy   -\n"
        );
    }

    #[test]
    fn age_is_zero_for_a_time_ahead_of_ours_and_none_when_unset() {
        let ahead = Timestamp {
            seconds: 1_060,
            nanos: 0,
        };

        assert_eq!(age(Some(&ahead), at(1_000)), Some(Duration::ZERO));
        assert_eq!(age(Some(&ahead), at(1_300)), Some(Duration::from_secs(240)));
        assert_eq!(age(None, at(1_000)), None);
    }

    #[test]
    fn table_escapes_control_characters_from_the_fleet() {
        let mut table = Table::new(&["OS"]);
        table.row(vec!["Debian\u{1b}[31m".into()]);

        assert!(!table.render().contains('\u{1b}'));
    }

    #[test]
    fn fields_align_values() {
        let text = fields(&[("name", "web-1".into()), ("last seen", String::new())]);

        assert_eq!(text, "name        web-1\nlast seen   -\n");
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(8 * 1024 * 1024 * 1024), "8.0 GiB");
    }
}
