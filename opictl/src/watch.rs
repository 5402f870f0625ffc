//! `opictl watch`: the fleet's events as they happen, one line each, until Ctrl-C.
//!
//! When the stream breaks (a manager restart, a network cut), the watch reconnects and asks
//! for the events after the last one it printed, so none is skipped or printed twice. Notes
//! about this go to stderr: with `-o json`, stdout carries nothing but events.

pub mod resume;

use opi_proto::v1::{Event, WatchRequest};
use tracing::debug;

use crate::cli::WatchArgs;
use crate::client::{Client, EventStream};
use crate::event::{self, EventView};
use crate::filter::wire_name;
use crate::output::{write_out, Format};
use crate::{Context, Error};
use resume::{explain, verdict, Backoff, Resume, Verdict};

/// How a watch ended without a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// Whoever read stdout went away (`opictl watch | head -3`).
    ReaderGone,
    /// The manager closed the stream on purpose.
    ManagerClosed,
}

/// Prints events in the chosen format, flushing each one.
#[derive(Clone, Copy, Debug)]
struct Printer(Format);

/// Runs `opictl watch` until Ctrl-C, the end of the stream, or a failure retrying cannot fix.
pub async fn run(context: &Context, args: WatchArgs) -> Result<(), Error> {
    tokio::select! {
        result = follow(context, &args) => result,
        () = interrupted() => Ok(()),
    }
}

/// The request `args` ask for, as first sent: filters, and where to start.
pub fn first_request(args: &WatchArgs) -> WatchRequest {
    WatchRequest {
        since_revision: args.since.unwrap_or(0),
        pools: args.pools.clone(),
        nodes: args.nodes.clone(),
        kinds: args.kinds.iter().map(wire_name).collect(),
        min_severity: args.severity.map_or(0, |s| s.severity() as i32),
        replay_last: args.last.unwrap_or(0),
    }
}

/// Opens the watch, then relays events and reopens it whenever it breaks.
async fn follow(context: &Context, args: &WatchArgs) -> Result<(), Error> {
    let mut client = context.connect().await?;
    let mut resume = Resume::new(anchored(&mut client, first_request(args)).await?);
    let mut stream = client
        .watch(resume.request())
        .await
        .map_err(|error| explain(error, resume.after()))?;
    let printer = Printer(context.format);
    if !printer.header()? {
        return Ok(());
    }

    let mut backoff = Backoff::default();
    loop {
        let error = match relay(&mut stream, &mut resume, printer).await {
            Ok(Ended::ReaderGone) => return Ok(()),
            Ok(Ended::ManagerClosed) => {
                note(&ended(&resume));
                return Ok(());
            }
            Err(error) => error,
        };
        if verdict(&error) == Verdict::GiveUp {
            return Err(explain(error, resume.after()));
        }
        stream = reconnect(context, &resume, &mut backoff, error).await?;
    }
}

/// Prints the events of `stream` that were not printed yet, until it ends.
async fn relay(
    stream: &mut EventStream,
    resume: &mut Resume,
    printer: Printer,
) -> Result<Ended, Error> {
    while let Some(event) = stream.next().await? {
        if !resume.receive(event.revision) {
            debug!(revision = event.revision, "event already printed, skipped");
            continue;
        }
        if !printer.event(event)? {
            return Ok(Ended::ReaderGone);
        }
    }
    Ok(Ended::ManagerClosed)
}

/// Waits, then reopens the watch where it stands, as long as the failures are worth a retry.
async fn reconnect(
    context: &Context,
    resume: &Resume,
    backoff: &mut Backoff,
    mut error: Error,
) -> Result<EventStream, Error> {
    loop {
        let delay = backoff.next_delay();
        note(&format!(
            "{}; reconnecting in {}s, then {}",
            brief(&error),
            delay.as_secs(),
            position(resume)
        ));
        tokio::time::sleep(delay).await;

        match reopen(context, resume.request()).await {
            Ok(stream) => {
                backoff.reset();
                note(&format!("reconnected to {}", stream.endpoint()));
                return Ok(stream);
            }
            Err(failure) if verdict(&failure) == Verdict::Retry => error = failure,
            Err(failure) => return Err(explain(failure, resume.after())),
        }
    }
}

/// Connects afresh, reading the bundle again, and sends `request`.
async fn reopen(context: &Context, request: WatchRequest) -> Result<EventStream, Error> {
    let mut client = context.connect().await?;
    client.watch(request).await
}

/// `request` with a revision to start after when it asks for new events only, so that a
/// reconnection before the first event does not lose the events of the outage.
async fn anchored(client: &mut Client, mut request: WatchRequest) -> Result<WatchRequest, Error> {
    if request.since_revision != 0 || request.replay_last != 0 {
        return Ok(request);
    }
    match client.status().await {
        Ok(status) => request.since_revision = status.event_revision,
        // Roles that may only watch (alerting) cannot read it; they start from new events.
        Err(Error::Refused {
            code: tonic::Code::PermissionDenied,
            ..
        }) => debug!("no fleet status for this role, watching new events only"),
        Err(error) => return Err(error),
    }
    Ok(request)
}

/// Where the watch resumes, as said in notes.
fn position(resume: &Resume) -> String {
    match resume.after() {
        0 => "following new events".into(),
        revision => format!("resuming after revision {revision}"),
    }
}

/// The note for a watch the manager ended, with the command that continues it.
fn ended(resume: &Resume) -> String {
    match resume.after() {
        0 => "the manager ended the watch".into(),
        revision => {
            format!("the manager ended the watch; `opictl watch --since {revision}` continues it")
        }
    }
}

/// A failure in a few words, for the note of a retry: the full messages carry hints meant
/// for a command that stops.
fn brief(error: &Error) -> String {
    match error {
        Error::Lost {
            endpoint, cause, ..
        } => {
            format!("lost the connection to the manager at {endpoint}: {cause}")
        }
        Error::Connect { endpoint, source } => {
            let mut cause: &dyn std::error::Error = source;
            while let Some(deeper) = cause.source() {
                cause = deeper;
            }
            format!("cannot connect to the manager at {endpoint}: {cause}")
        }
        other => other.to_string(),
    }
}

/// A note for the person running the watch: on stderr, never mixed with the events.
fn note(text: &str) {
    eprintln!("note: {text}");
}

/// Resolves on Ctrl-C; never when the signal cannot be caught (it then ends the process).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Printer {
    /// The column header of table output; `Ok(false)` when the reader went away.
    fn header(self) -> Result<bool, Error> {
        match self.0 {
            Format::Table => write_out(&event::header_line()),
            Format::Json => Ok(true),
        }
    }

    /// One event, flushed; `Ok(false)` when the reader went away.
    fn event(self, event: Event) -> Result<bool, Error> {
        let view = EventView::from(event);
        match self.0 {
            Format::Table => write_out(&event::line(&view)),
            Format::Json => write_out(&view.json_line()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use opi_proto::v1::Severity;

    use super::*;
    use crate::cli::{Cli, Command};

    fn watch_args(line: &[&str]) -> WatchArgs {
        let cli = Cli::try_parse_from(line).unwrap();
        let Command::Watch(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        args
    }

    #[test]
    fn first_request_carries_every_filter() {
        let args = watch_args(&[
            "opictl",
            "watch",
            "--pool",
            "workers",
            "--pool",
            "db",
            "--node",
            "db-1",
            "--kind",
            "condition",
            "--kind",
            "health",
            "--severity",
            "warning",
            "--since",
            "1041",
        ]);

        let request = first_request(&args);
        assert_eq!(request.pools, ["workers", "db"]);
        assert_eq!(request.nodes, ["db-1"]);
        assert_eq!(request.kinds, ["condition", "health"]);
        assert_eq!(request.min_severity(), Severity::Warning);
        assert_eq!(request.since_revision, 1041);
        assert_eq!(request.replay_last, 0);
    }

    #[test]
    fn first_request_without_filters_asks_for_everything_new() {
        let request = first_request(&watch_args(&["opictl", "watch"]));

        assert_eq!(request, WatchRequest::default());
    }

    #[test]
    fn last_asks_for_a_replay() {
        let request = first_request(&watch_args(&["opictl", "watch", "--last", "20"]));

        assert_eq!(request.replay_last, 20);
        assert_eq!(request.since_revision, 0);
    }

    #[test]
    fn since_and_last_cannot_be_combined() {
        let parsed = Cli::try_parse_from(["opictl", "watch", "--since", "3", "--last", "2"]);

        assert!(parsed.is_err());
    }

    #[test]
    fn unknown_kind_and_severity_are_usage_errors() {
        for line in [
            ["opictl", "watch", "--kind", "conditon"],
            ["opictl", "watch", "--severity", "high"],
            ["opictl", "watch", "--since", "0"],
        ] {
            let error = Cli::try_parse_from(line).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{line:?}");
        }
    }

    #[test]
    fn retry_notes_leave_out_the_hints_of_a_final_error() {
        let io = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed");
        let status = tonic::Status::from_error(Box::new(io));
        let lost = Error::failed("to watch events", "https://m1:7443", status);

        assert_eq!(
            brief(&lost),
            "lost the connection to the manager at https://m1:7443: peer closed"
        );
    }

    #[test]
    fn a_watch_the_manager_ended_says_how_to_continue_it() {
        let mut resume = Resume::new(WatchRequest::default());
        assert_eq!(ended(&resume), "the manager ended the watch");

        resume.receive(17);
        assert!(ended(&resume).ends_with("`opictl watch --since 17` continues it"));
    }

    #[test]
    fn notes_say_where_the_watch_resumes() {
        let mut resume = Resume::new(WatchRequest::default());
        assert_eq!(position(&resume), "following new events");

        resume.receive(17);
        assert_eq!(position(&resume), "resuming after revision 17");
    }
}
