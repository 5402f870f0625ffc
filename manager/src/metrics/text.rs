//! The Prometheus text exposition format, version 0.0.4: each family opens with its HELP and
//! TYPE lines, then its samples follow, label values escaped.

use std::fmt::Write;

/// Content type of a metrics page in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a family's TYPE line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metrics page being written, family by family.
#[derive(Debug, Default)]
pub struct Page {
    text: String,
}

impl Page {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens a family: its HELP and TYPE lines. Its samples must follow before the next family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    /// The page's text.
    pub fn finish(self) -> String {
        self.text
    }
}

/// A sample value as the format spells it: `+Inf`, `-Inf`, `NaN`, or a decimal number.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        value.to_string()
    }
}

/// A label value with backslash, double quote and line feed escaped.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_open_with_help_and_type_and_samples_escape_label_values() {
        let mut page = Page::new();
        page.family("opi_x", Kind::Gauge, "a help\nwith a \\ line");
        page.sample("opi_x", &[("pool", "a\"b\\c\nd"), ("state", "on")], 2.0);
        page.sample("opi_x", &[], 0.5);

        assert_eq!(
            page.finish(),
            "# HELP opi_x a help\\nwith a \\\\ line\n# TYPE opi_x gauge\n\
             opi_x{pool=\"a\\\"b\\\\c\\nd\",state=\"on\"} 2\nopi_x 0.5\n"
        );
    }

    #[test]
    fn special_values_use_the_spelling_of_the_format() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.0025), "0.0025");
    }
}
