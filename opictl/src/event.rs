//! Events as `opictl watch` and `opictl node show` print them: the JSON shape, the fixed-width
//! line of a stream, and the table of a node's last events.

use opi_proto::v1::Event;
use serde::Serialize;

use crate::health::severity_name;
use crate::output::{sanitize, timestamp, Table, NONE};

/// Width of each column of a streamed event line but the last; longer values push the rest
/// of their line to the right rather than being cut.
const LINE_WIDTHS: [usize; 8] = [6, 20, 14, 10, 12, 24, 20, 8];
/// Headers of a streamed event line.
const LINE_HEADERS: [&str; 9] = [
    "REV", "TIME", "NODE", "POOL", "KIND", "SUBJECT", "CHANGE", "SEVERITY", "MESSAGE",
];
/// Spaces between the columns of a streamed event line.
const LINE_GAP: usize = 2;

/// The JSON shape of an event. Every key is always present; text the manager left empty is
/// `""`, an unknown time or severity `null`.
#[derive(Debug, Serialize)]
pub struct EventView {
    /// Fleet-wide, increasing by one per event; `--since` takes it.
    pub revision: u64,
    /// When the manager recorded it, RFC 3339.
    pub time: Option<String>,
    /// The node it is about; empty for a rollout event about the whole pool.
    pub node: String,
    /// The node's pool.
    pub pool: String,
    /// `connectivity`, `health`, `condition`, `flapping`, `maintenance`, `lifecycle`, `config`
    /// or `rollout`.
    pub kind: String,
    /// The condition (`Type` or `Type:subject`) of condition and flapping events.
    pub subject: String,
    /// The state before.
    pub from: String,
    /// The state after.
    pub to: String,
    /// Machine-readable cause.
    pub reason: String,
    /// For people.
    pub message: String,
    /// `info`, `warning`, `critical`, or `null` when the event has none.
    pub severity: Option<&'static str>,
}

impl From<Event> for EventView {
    fn from(event: Event) -> Self {
        let severity = severity_name(event.severity());
        Self {
            revision: event.revision,
            time: timestamp(event.time.as_ref()),
            node: event.node,
            pool: event.pool,
            kind: event.kind,
            subject: event.subject,
            from: event.from,
            to: event.to,
            reason: event.reason,
            message: event.message,
            severity,
        }
    }
}

impl EventView {
    /// The event as one line of JSON, for JSON Lines output.
    pub fn json_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("an event view holds only text");
        line.push('\n');
        line
    }

    /// `from -> to`, or only the side that is set.
    fn change(&self) -> String {
        match (self.from.as_str(), self.to.as_str()) {
            ("", to) => to.to_string(),
            (from, "") => format!("{from} -> {NONE}"),
            (from, to) => format!("{from} -> {to}"),
        }
    }

    /// The message, else the reason.
    fn said(&self) -> &str {
        match self.message.as_str() {
            "" => &self.reason,
            message => message,
        }
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.revision.to_string(),
            self.time.clone().unwrap_or_default(),
            self.node.clone(),
            self.pool.clone(),
            self.kind.clone(),
            self.subject.clone(),
            self.change(),
            self.severity.unwrap_or_default().into(),
            self.said().into(),
        ]
    }
}

/// The header of a stream of event lines.
pub fn header_line() -> String {
    aligned(LINE_HEADERS.iter().map(|h| h.to_string()).collect())
}

/// An event as one line of a stream, its columns at the widths of [`header_line`].
pub fn line(view: &EventView) -> String {
    aligned(view.cells())
}

/// A node's events as a table, without the node and pool every row would repeat.
pub fn table(views: &[EventView]) -> Table {
    let headers = [
        "REV", "TIME", "KIND", "SUBJECT", "CHANGE", "SEVERITY", "MESSAGE",
    ];
    let mut table = Table::new(&headers);
    for view in views {
        let mut cells = view.cells();
        cells.drain(2..4);
        table.row(cells);
    }
    table
}

/// Cells padded to [`LINE_WIDTHS`], control characters escaped, empty cells shown as `-`.
fn aligned(cells: Vec<String>) -> String {
    let mut text = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let cell = if cell.is_empty() {
            NONE.to_string()
        } else {
            sanitize(cell)
        };
        let width = LINE_WIDTHS.get(i).copied().unwrap_or(0);
        let pad = width.saturating_sub(cell.chars().count()) + LINE_GAP;
        text.push_str(&cell);
        text.extend(std::iter::repeat_n(' ', pad));
    }
    let mut text = text.trim_end().to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use opi_proto::v1::Severity;
    use prost_types::Timestamp;

    use super::*;

    /// Every key a JSON event line must carry.
    const EVENT_KEYS: [&str; 11] = [
        "revision", "time", "node", "pool", "kind", "subject", "from", "to", "reason", "message",
        "severity",
    ];

    fn disk_event() -> Event {
        Event {
            revision: 1042,
            time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            node: "worker-1".into(),
            pool: "workers".into(),
            kind: "condition".into(),
            subject: "DiskPressure:/var".into(),
            from: "ok".into(),
            to: "problem".into(),
            reason: "DiskAlmostFull".into(),
            message: "disk 96% used (threshold 95%)".into(),
            severity: Severity::Critical as i32,
        }
    }

    #[test]
    fn event_json_line_is_one_line_with_every_required_key() {
        let line = EventView::from(disk_event()).json_line();

        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        let object = json.as_object().unwrap();
        for key in EVENT_KEYS {
            assert!(object.contains_key(key), "missing `{key}` in {line}");
        }
        assert_eq!(object.len(), EVENT_KEYS.len(), "{line}");
        assert_eq!(json["revision"], 1042);
        assert_eq!(json["time"], "2023-11-14T22:13:20Z");
        assert_eq!(json["severity"], "critical");
        assert_eq!(json["subject"], "DiskPressure:/var");
    }

    #[test]
    fn event_without_severity_or_time_has_null_there_and_empty_text_elsewhere() {
        let event = Event {
            revision: 7,
            node: "worker-1".into(),
            kind: "maintenance".into(),
            ..Event::default()
        };

        let json = serde_json::to_value(EventView::from(event)).unwrap();
        assert!(json["severity"].is_null());
        assert!(json["time"].is_null());
        assert_eq!(json["subject"], "");
    }

    #[test]
    fn event_line_aligns_with_the_header() {
        let header = header_line();
        let line = line(&EventView::from(disk_event()));

        assert_eq!(
            header,
            "REV     TIME                  NODE            POOL        KIND          \
             SUBJECT                   CHANGE                SEVERITY  MESSAGE\n"
        );
        assert_eq!(
            line,
            "1042    2023-11-14T22:13:20Z  worker-1        workers     condition     \
             DiskPressure:/var         ok -> problem         critical  \
             disk 96% used (threshold 95%)\n"
        );
        assert_eq!(header.find("MESSAGE"), line.find("disk 96%"));
    }

    #[test]
    fn event_line_shows_missing_parts_as_dashes_and_keeps_long_names_whole() {
        let event = Event {
            revision: 3,
            node: "a-node-name-longer-than-its-column".into(),
            kind: "lifecycle".into(),
            to: "active".into(),
            reason: "Enrolled".into(),
            ..Event::default()
        };

        let line = line(&EventView::from(event));
        assert!(
            line.starts_with("3       -                     a-node-name-longer-than-its-column  -"),
            "{line}"
        );
        assert!(line.contains("  active  "), "{line}");
        assert!(line.ends_with("-         Enrolled\n"), "{line}");
    }

    #[test]
    fn event_line_escapes_control_characters_from_the_fleet() {
        let mut event = disk_event();
        event.message = "bad\u{1b}[2Jthing".into();

        assert!(!line(&EventView::from(event)).contains('\u{1b}'));
    }

    #[test]
    fn node_event_table_leaves_out_node_and_pool() {
        let text = table(&[EventView::from(disk_event())]).render();

        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "REV    TIME                   KIND        SUBJECT             CHANGE          \
             SEVERITY   MESSAGE"
        );
        assert!(lines
            .next()
            .unwrap()
            .starts_with("1042   2023-11-14T22:13:20Z   condition"));
    }
}
