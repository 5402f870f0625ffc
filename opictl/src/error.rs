//! What can go wrong in `opictl`, the exit code each failure maps to, and how a failure is
//! reported on stderr.

use std::error::Error as StdError;
use std::path::PathBuf;

use opi_pki::bundle::BundleError;
use opi_pki::tls::{ManagerRefused, TlsError};

use crate::config::Origin;
use crate::output::{sanitize, sanitize_lines};

/// Exit code of usage and configuration errors: the command cannot work as typed.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of runtime failures: the manager was unreachable or refused the request.
pub const EXIT_FAILURE: u8 = 1;

/// A failed `opictl` command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator bundle does not exist where it was looked for.
    #[error(
        "no operator bundle at {path} ({origin}); pass --config FILE or set OPICTL_CONFIG: \
         `opi-manager init` writes DATA_DIR/opictl-admin.toml and \
         `opi-manager operator issue NAME --role ROLE` writes bundles for others"
    )]
    BundleMissing {
        /// The path that was tried.
        path: PathBuf,
        /// Why that path was chosen.
        origin: Origin,
    },
    /// No bundle was named and there is no home directory to look in.
    #[error(
        "no operator bundle given and HOME is not set; pass --config FILE or set OPICTL_CONFIG"
    )]
    NoHome,
    /// The bundle exists but cannot be used as it is.
    #[error(transparent)]
    ReadBundle(BundleError),
    /// The bundle's CA, certificate or key cannot make a TLS configuration.
    #[error("the operator bundle {path} holds unusable TLS material; ask an admin for a new one")]
    BundleTls {
        /// The bundle file.
        path: PathBuf,
        /// What rustls or the PEM parser refused.
        #[source]
        source: TlsError,
    },
    /// The operator certificate of the bundle has expired.
    #[error(
        "the operator certificate in {path} expired at {expired_at}; ask an admin for a new \
         bundle with `opi-manager operator issue`"
    )]
    CertificateExpired {
        /// The bundle file.
        path: PathBuf,
        /// When the certificate stopped being valid, RFC 3339.
        expired_at: String,
    },
    /// The manager URL (from the bundle or `--manager`) is not usable.
    #[error(
        "manager endpoint `{0}` is not a valid https://HOST:PORT URL; fix --manager or the \
         bundle's `endpoint`"
    )]
    BadEndpoint(String),
    /// The command line is well formed but asks for something contradictory.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The manager could not be reached.
    #[error(
        "cannot connect to the manager at {endpoint}; check that it runs and that --manager or \
         the bundle's `endpoint` is right"
    )]
    Connect {
        /// The endpoint that was dialled.
        endpoint: String,
        /// The transport failure.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered but its certificate is not that of a manager of our fleet.
    #[error("refused the certificate of the server at {endpoint}: {reason}")]
    ServerRefused {
        /// The endpoint that was dialled.
        endpoint: String,
        /// Why its certificate was refused.
        reason: ManagerRefused,
    },
    /// The manager answered the request with an error status.
    #[error("the manager refused {what}: {message} ({code:?}){hint}", hint = code_hint(*.code, .message))]
    Refused {
        /// What was asked, as a phrase following "refused" ("to list nodes").
        what: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message, stripped of control characters.
        message: String,
    },
    /// The connection failed under a request, before the manager could answer it.
    #[error(
        "lost the connection to the manager at {endpoint} while asking {what}: {cause}; if this \
         repeats, the manager may refuse your operator certificate (revoked, or of another \
         fleet): ask an admin for a new bundle"
    )]
    Lost {
        /// What was asked, as a phrase following "asking" ("to list nodes").
        what: String,
        /// The endpoint of the connection.
        endpoint: String,
        /// The innermost transport failure. Text, not a source: tonic lends it, never gives it.
        cause: String,
    },
    /// A watch asked to start after a revision older than the manager keeps: the events in
    /// between are gone.
    #[error("the manager no longer keeps the events after revision {after}: {message}")]
    EventsGone {
        /// The revision the watch asked to start after.
        after: u64,
        /// The manager's message, stripped of control characters.
        message: String,
    },
    /// A profile document could not be read.
    #[error("cannot read profile document {path}")]
    ReadProfile {
        /// The file, or `-` for standard input.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A profile document is larger than the manager accepts.
    #[error("profile document {path} is larger than {limit} bytes; split secrets or comments out")]
    ProfileTooLarge {
        /// The file, or `-` for standard input.
        path: PathBuf,
        /// The largest document accepted, in bytes.
        limit: u64,
    },
    /// A signer key given with `--sign-key` cannot be read or used.
    #[error("cannot sign with {path}: {reason}")]
    SignerKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing the result to stdout failed.
    #[error("cannot write the result to stdout")]
    Output(#[source] std::io::Error),
    /// A file of a compliance report cannot be written.
    #[error("cannot write the compliance report file {path}")]
    WriteReport {
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A file of a compliance report cannot be read.
    #[error("cannot read {path}; pass the report's files with --signature, --chain and --ca")]
    ReadReport {
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A compliance report document is not one the manager writes.
    #[error("not a compliance report document: {0}")]
    BadReport(String),
    /// A compliance report's signature does not verify.
    #[error("the compliance report does not verify")]
    Unverified(#[source] opi_pki::signature::VerifyError),
    /// A file cannot be read.
    #[error("cannot read {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be written.
    #[error("cannot write {path}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file or answer is not a checkpoint, or its signature does not verify.
    #[error("audit checkpoint {what} is not valid: {why}")]
    BadCheckpoint {
        /// The file, or `from the manager`.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// The audit log does not hold together.
    #[error("the audit log was tampered with:\n  {}", .problems.join("\n  "))]
    AuditTampered {
        /// Every problem found, each naming its entry.
        problems: Vec<String>,
    },
    /// A login code is not even well formed.
    #[error("malformed login code: expected ID.SECRET as `opictl operator invite` prints it")]
    BadLoginCode,
    /// The new operator key or its CSR cannot be made.
    #[error("cannot make the operator key and its CSR: {0}")]
    MakeKey(String),
}

/// A command line that parses but cannot be acted on.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The same label key was given twice.
    #[error("label `{0}` is given twice; give each key once")]
    DuplicateLabel(String),
    /// `opictl login` was not told which manager to log in to.
    #[error("opictl login needs --manager https://HOST:PORT, as printed with the login code")]
    LoginNeedsManager,
    /// `-o csv` was asked of a command that prints no table of rows.
    #[error("-o csv is only for `opictl compliance`; use -o table or -o json here")]
    CsvOnlyForCompliance,
}

impl Error {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BundleMissing { .. }
            | Error::NoHome
            | Error::ReadBundle(_)
            | Error::BundleTls { .. }
            | Error::CertificateExpired { .. }
            | Error::BadEndpoint(_)
            | Error::Usage(_)
            | Error::ReadProfile { .. }
            | Error::ProfileTooLarge { .. }
            | Error::SignerKey { .. }
            | Error::ReadReport { .. }
            | Error::ReadFile { .. }
            | Error::BadLoginCode
            | Error::BadReport(_) => EXIT_USAGE,
            Error::Connect { .. }
            | Error::ServerRefused { .. }
            | Error::Refused { .. }
            | Error::Lost { .. }
            | Error::EventsGone { .. }
            | Error::Output(_)
            | Error::WriteReport { .. }
            | Error::Unverified(_)
            | Error::WriteFile { .. }
            | Error::BadCheckpoint { .. }
            | Error::AuditTampered { .. }
            | Error::MakeKey(_) => EXIT_FAILURE,
        }
    }

    /// Maps the failure of a request to `endpoint` asking `what` ("to list nodes"): a lost
    /// connection when the status comes from the transport, else the manager's refusal.
    pub fn failed(what: impl Into<String>, endpoint: &str, status: tonic::Status) -> Self {
        let Some(mut cause) = StdError::source(&status) else {
            return Self::refused(what, status);
        };
        while let Some(deeper) = cause.source() {
            cause = deeper;
        }
        Error::Lost {
            what: what.into(),
            endpoint: endpoint.to_string(),
            cause: sanitize(&cause.to_string()),
        }
    }

    /// Maps a status the manager answered with to a refusal of `what` ("to list nodes").
    pub fn refused(what: impl Into<String>, status: tonic::Status) -> Self {
        let message = match status.message() {
            "" => status.code().description().to_string(),
            // Kept on several lines: a refused profile lists one problem per line.
            text => sanitize_lines(text),
        };
        Error::Refused {
            what: what.into(),
            code: status.code(),
            message,
        }
    }
}

/// The report printed on stderr: the error, then each distinct cause on its own line.
pub fn report(error: &(dyn StdError + 'static)) -> String {
    let mut text = format!("error: {error}");
    let mut previous = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let line = current.to_string();
        // Some libraries repeat their cause in their own message; print each text once.
        if !previous.contains(&line) {
            text.push_str(&format!("\n  caused by: {line}"));
        }
        previous = line;
        cause = current.source();
    }
    text
}

/// A hint, appended to a refusal, for the codes where the operator can act, unless the
/// manager's message already ends with its own.
fn code_hint(code: tonic::Code, message: &str) -> &'static str {
    if message.ends_with("then retry") {
        return "";
    }
    match code {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            "; `opictl whoami` shows the role your bundle carries"
        }
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            "; check that the manager runs and is reachable, then retry"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_names_what_was_asked_the_message_and_the_code() {
        let status = tonic::Status::not_found("node `web-9` is not enrolled");
        let error = Error::refused("to show node `web-9`", status);

        assert_eq!(
            error.to_string(),
            "the manager refused to show node `web-9`: node `web-9` is not enrolled (NotFound)"
        );
        assert_eq!(error.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn unavailable_refusal_gets_one_hint_the_managers_own_when_it_gives_one() {
        let generic = Error::refused("to list nodes", tonic::Status::unavailable("overloaded"));
        assert!(generic
            .to_string()
            .ends_with("(Unavailable); check that the manager runs and is reachable, then retry"));

        let message =
            "fleet store etcd://e1/ is unavailable; … until the store is back, then retry";
        let own = Error::refused("to create a token", tonic::Status::unavailable(message));
        assert!(
            own.to_string().ends_with("then retry (Unavailable)"),
            "{own}"
        );
    }

    #[test]
    fn refusal_for_lack_of_permission_hints_at_whoami() {
        let error = Error::refused(
            "to remove node `a`",
            tonic::Status::permission_denied("viewer"),
        );

        assert!(error
            .to_string()
            .ends_with("(PermissionDenied); `opictl whoami` shows the role your bundle carries"));
    }

    #[test]
    fn refusal_strips_control_characters_from_the_managers_message() {
        let error = Error::refused(
            "to list nodes",
            tonic::Status::internal("bad\u{1b}[2Jthing"),
        );

        assert!(!error.to_string().contains('\u{1b}'));
    }

    #[test]
    fn status_from_the_transport_reads_as_a_lost_connection() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed");
        let status = tonic::Status::from_error(Box::new(io));

        let error = Error::failed("to list nodes", "https://m1:7443", status);
        let text = error.to_string();
        let expected = "lost the connection to the manager at https://m1:7443 while asking to \
                        list nodes: stream closed;";
        assert!(text.starts_with(expected), "{text}");
        assert_eq!(error.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn status_answered_by_the_manager_reads_as_a_refusal() {
        let status = tonic::Status::failed_precondition("token `k3x9q` is used up");

        let error = Error::failed("to revoke token `k3x9q`", "https://m1:7443", status);
        assert!(matches!(error, Error::Refused { .. }), "{error}");
    }

    #[test]
    fn usage_and_config_errors_exit_with_two() {
        assert_eq!(Error::NoHome.exit_code(), EXIT_USAGE);
        assert_eq!(Error::BadEndpoint("m".into()).exit_code(), EXIT_USAGE);
        let duplicate = Error::from(UsageError::DuplicateLabel("zone".into()));
        assert_eq!(duplicate.exit_code(), EXIT_USAGE);
    }

    #[test]
    fn report_prints_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe closed");
        let report = report(&Error::Output(io));

        assert_eq!(
            report,
            "error: cannot write the result to stdout\n  caused by: pipe closed"
        );
    }
}
