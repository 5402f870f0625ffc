//! Results on standard output, as an aligned table or as JSON.

use std::io::{self, Write};

use clap::ValueEnum;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How a result is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned `field  value` lines, for people
    #[default]
    Table,
    /// One JSON object, for scripts
    Json,
}

/// Prints `rows` as aligned `field  value` lines.
pub fn write_table(out: &mut impl Write, rows: &[(&str, String)]) -> io::Result<()> {
    let width = rows.iter().map(|(field, _)| field.len()).max().unwrap_or(0);
    for (field, value) in rows {
        writeln!(out, "{field:<width$}  {value}")?;
    }
    Ok(())
}

/// Prints `rows` under `headers` in aligned columns; the last column is not padded.
pub fn write_columns(
    out: &mut impl Write,
    headers: &[&str],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|header| header.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            match column == last {
                true => line.push_str(cell),
                false => line.push_str(&format!("{cell:<width$}  ", width = widths[column])),
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Prints `value` as pretty JSON.
pub fn write_json(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::other)?;
    writeln!(out)
}

/// A time as RFC 3339, in UTC, to the second.
pub fn timestamp(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("zero is a valid nanosecond")
        .format(&Rfc3339)
        .expect("every UTC date of a certificate has an RFC 3339 form")
}

/// A byte count for people: `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_values() {
        let mut out = Vec::new();
        let rows = [("node", "n1".to_string()), ("not after", "t".to_string())];
        write_table(&mut out, &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "node       n1\nnot after  t\n"
        );
    }

    #[test]
    fn columns_align_under_their_headers() {
        let mut out = Vec::new();
        let rows = [
            vec![
                "DiskPressure".to_string(),
                "/var".to_string(),
                "97 % full".to_string(),
            ],
            vec!["Clock".to_string(), "-".to_string(), "ok".to_string()],
        ];
        write_columns(&mut out, &["TYPE", "SUBJECT", "MESSAGE"], &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "TYPE          SUBJECT  MESSAGE\nDiskPressure  /var     97 % full\nClock         -        ok\n"
        );
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
