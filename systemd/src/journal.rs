//! Logging to journald natively. Under systemd, stderr is already captured by journald, but
//! as lines of text only; this layer sends each event over journald's native protocol
//! instead, so that every field of the event and of its spans is a journal field of its own
//! (`NODE=`, `POOL=`, `ENDPOINT=`, `ERROR=`…) that `journalctl NODE=worker-1` or `-o json`
//! can select, while `MESSAGE=` keeps the line a person reads (`session open
//! endpoint=https://…`).
//!
//! [`init_logging`] picks it only when stderr is the journal (systemd's `JOURNAL_STREAM`
//! names stderr's device and inode), and logs to stderr otherwise.

use std::fmt::{self, Write as _};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// journald's socket for the native protocol.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Field names journald or its readers give a meaning to: an event field of one of these
/// names is written with the prefix `F_` instead.
const RESERVED: [&str; 17] = [
    "MESSAGE",
    "MESSAGE_ID",
    "PRIORITY",
    "CODE_FILE",
    "CODE_LINE",
    "CODE_FUNC",
    "ERRNO",
    "SYSLOG_FACILITY",
    "SYSLOG_IDENTIFIER",
    "SYSLOG_PID",
    "SYSLOG_TIMESTAMP",
    "TID",
    "DOCUMENTATION",
    "INVOCATION_ID",
    "UNIT",
    "USER_UNIT",
    "TARGET",
];

/// Sets up the global logger: to journald when stderr is the journal and `json` was not asked
/// for, else to stderr (text, or JSON lines when `json`).
pub fn init_logging(filter: EnvFilter, json: bool) {
    if !json && stderr_is_journal() {
        match JournalLayer::connect() {
            Ok(journal) => {
                tracing_subscriber::registry()
                    .with(journal.with_filter(filter))
                    .init();
                return;
            }
            Err(error) => {
                eprintln!("cannot log to journald at {JOURNAL_SOCKET} ({error}); logging to stderr")
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Whether stderr is the stream systemd connected to the journal (`JOURNAL_STREAM=DEV:INODE`).
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(io::stderr().as_fd()) else {
        return false;
    };
    stream == format!("{}:{}", stat.st_dev, stat.st_ino)
}

/// A `tracing` layer sending events to journald's native socket.
#[derive(Debug)]
pub struct JournalLayer {
    socket: UnixDatagram,
    path: PathBuf,
    identifier: String,
}

/// The fields of a span, kept in its extensions until its events are sent.
struct SpanFields(Vec<(String, String)>);

/// Collects an event's or a span's fields as (name, value) pairs.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    pairs: Vec<(String, String)>,
}

impl JournalLayer {
    /// A layer sending to [`JOURNAL_SOCKET`], named after the program.
    pub fn connect() -> io::Result<Self> {
        let identifier = std::env::args_os()
            .next()
            .as_deref()
            .and_then(|arg0| Path::new(arg0).file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::to_socket(Path::new(JOURNAL_SOCKET), &identifier)
    }

    /// A layer sending to the socket at `path`, with `SYSLOG_IDENTIFIER=identifier`. An empty
    /// datagram (which journald ignores) checks now that someone listens.
    pub fn to_socket(path: &Path, identifier: &str) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.send_to(&[], path)?;
        Ok(Self {
            socket,
            path: path.to_path_buf(),
            identifier: identifier.to_string(),
        })
    }

    /// One journal entry in the native format: `MESSAGE` for people, then every field.
    fn entry(
        &self,
        level: &Level,
        target: &str,
        event: Fields,
        spans: &[(String, String)],
    ) -> Vec<u8> {
        let mut message = event.message.unwrap_or_default();
        for (name, value) in event.pairs.iter().chain(spans) {
            let _ = write!(message, " {name}={value}");
        }
        let mut entry = Vec::with_capacity(256 + message.len());
        put(&mut entry, "MESSAGE", &message);
        put(&mut entry, "PRIORITY", priority(level));
        put(&mut entry, "SYSLOG_IDENTIFIER", &self.identifier);
        put(&mut entry, "TARGET", target);
        for (name, value) in spans.iter().chain(&event.pairs) {
            if let Some(name) = journal_name(name) {
                put(&mut entry, &name, value);
            }
        }
        entry
    }
}

impl<S> Layer<S> for JournalLayer
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.pairs));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            if let Some(kept) = span.extensions_mut().get_mut::<SpanFields>() {
                kept.0.extend(fields.pairs);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(kept) = span.extensions().get::<SpanFields>() {
                    spans.extend(kept.0.iter().cloned());
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        let entry = self.entry(metadata.level(), metadata.target(), fields, &spans);

        // Too large for a datagram, or journald away: the line still reaches the journal
        // through stderr, without its fields.
        if self.socket.send_to(&entry, &self.path).is_err() {
            eprintln!("{}", String::from_utf8_lossy(first_value(&entry)));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = Some(value);
        } else {
            self.pairs.push((field.name().to_string(), value));
        }
    }
}

/// Appends one field: `NAME=value\n`, or the binary form when the value spans lines.
fn put(entry: &mut Vec<u8>, name: &str, value: &str) {
    entry.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value.as_bytes());
    entry.push(b'\n');
}

/// The value of the first field of an entry (its `MESSAGE`, written first by `entry`).
fn first_value(entry: &[u8]) -> &[u8] {
    let start = entry
        .iter()
        .position(|&b| b == b'=' || b == b'\n')
        .map_or(0, |i| i + 1);
    let rest = &entry[start..];
    &rest[..rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())]
}

/// A field name as journald accepts it: upper case letters, digits and `_`, not starting
/// with `_` or a digit; names journald gives a meaning to get the prefix `F_`.
fn journal_name(name: &str) -> Option<String> {
    let upper: String = name
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9') => c,
            _ => '_',
        })
        .collect();
    let trimmed = upper.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    if trimmed.is_empty() {
        return None;
    }
    if RESERVED.contains(&trimmed) {
        return Some(format!("F_{trimmed}"));
    }
    Some(trimmed.to_string())
}

/// The syslog priority of a level.
fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        Level::DEBUG | Level::TRACE => "7",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Parses native-format entries made of `NAME=value` lines and binary fields.
    fn parse(mut entry: &[u8]) -> BTreeMap<String, String> {
        let mut fields = BTreeMap::new();
        while !entry.is_empty() {
            let end = entry.iter().position(|&b| b == b'\n').unwrap();
            let line = &entry[..end];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                let name = String::from_utf8_lossy(&line[..eq]).into_owned();
                fields.insert(name, String::from_utf8_lossy(&line[eq + 1..]).into_owned());
                entry = &entry[end + 1..];
            } else {
                let name = String::from_utf8_lossy(line).into_owned();
                let rest = &entry[end + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                let value = String::from_utf8_lossy(&rest[8..8 + len]).into_owned();
                fields.insert(name, value);
                entry = &rest[8 + len + 1..];
            }
        }
        fields
    }

    #[test]
    fn events_reach_the_socket_with_their_fields_and_their_spans_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sock");
        let journal = UnixDatagram::bind(&path).unwrap();
        let layer = JournalLayer::to_socket(&path, "opi-agent").unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);

        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("agent", node = "worker-1", fleet = "prod");
            let _entered = span.enter();
            tracing::warn!(endpoint = "https://m1:7443", error = %"refused\nby m1", priority = 1, "session failed");
        });

        let mut buffer = vec![0u8; 4096];
        let n = journal.recv(&mut buffer).unwrap();
        assert_eq!(n, 0, "the empty datagram that checks the socket");
        let n = journal.recv(&mut buffer).unwrap();
        let fields = parse(&buffer[..n]);
        assert_eq!(
            fields["MESSAGE"],
            "session failed endpoint=https://m1:7443 error=refused\nby m1 priority=1 node=worker-1 fleet=prod"
        );
        assert_eq!(fields["PRIORITY"], "4");
        assert_eq!(fields["SYSLOG_IDENTIFIER"], "opi-agent");
        assert_eq!(fields["NODE"], "worker-1");
        assert_eq!(fields["FLEET"], "prod");
        assert_eq!(fields["ENDPOINT"], "https://m1:7443");
        assert_eq!(fields["ERROR"], "refused\nby m1");
        assert_eq!(fields["F_PRIORITY"], "1", "a reserved name is prefixed");
    }

    #[test]
    fn field_names_are_made_acceptable_to_journald() {
        assert_eq!(journal_name("retry_in").as_deref(), Some("RETRY_IN"));
        assert_eq!(journal_name("http.status").as_deref(), Some("HTTP_STATUS"));
        assert_eq!(journal_name("_pid").as_deref(), Some("PID"));
        assert_eq!(journal_name("message_id").as_deref(), Some("F_MESSAGE_ID"));
        assert_eq!(journal_name("__"), None);
    }

    #[test]
    fn a_missing_journal_socket_is_an_error_at_connect() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        assert!(JournalLayer::to_socket(&missing, "x").is_err());
    }
}
