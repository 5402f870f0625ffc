//! Bootstrap tokens. A token is a credential: it is read from one place, trimmed, and never
//! shown by `Debug`, `Display` or the logs.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Longest token file or standard input accepted, in bytes; a token is about 60.
pub const MAX_TOKEN_LEN: u64 = 4096;
/// What `--token` takes to mean "read the token from standard input".
pub const STDIN_MARKER: &str = "-";

/// A bootstrap token, `ID.SECRET`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

/// The value of `--token`: the token itself, or `-` for standard input.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenArg {
    /// Read the token from standard input.
    Stdin,
    /// The token was given on the command line.
    Value(Token),
}

/// Where the token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token T`: visible in process lists and shell history.
    Argument(Token),
    /// `--token-file F`.
    File(PathBuf),
    /// `--token -`.
    Stdin,
}

/// Why no token could be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A credential file cannot be read.
    #[error("cannot read the token file {path}")]
    ReadFile {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Standard input cannot be read.
    #[error("cannot read the token from standard input")]
    ReadStdin(#[source] std::io::Error),
    /// The token is empty.
    #[error("the token from {from} is empty; pass the token that `opictl token create` printed")]
    Empty {
        /// Where the token was read from.
        from: String,
    },
    /// The token is implausibly long.
    #[error("the token from {from} is longer than {MAX_TOKEN_LEN} bytes; pass the token that `opictl token create` printed")]
    TooLong {
        /// Where the token was read from.
        from: String,
    },
}

impl Token {
    /// The token text, for the enrollment request only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Debug for TokenArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenArg::Stdin => f.write_str("Stdin"),
            TokenArg::Value(token) => write!(f, "Value({token:?})"),
        }
    }
}

impl TokenArg {
    /// Parses the value of `--token`; a clap value parser.
    pub fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            STDIN_MARKER => TokenArg::Stdin,
            other => TokenArg::Value(Token(other.trim().to_string())),
        })
    }
}

impl TokenSource {
    /// The source named by `--token` or `--token-file`; clap makes sure exactly one is set.
    pub fn from_args(token: Option<TokenArg>, file: Option<PathBuf>) -> Option<Self> {
        match (token, file) {
            (Some(TokenArg::Stdin), _) => Some(TokenSource::Stdin),
            (Some(TokenArg::Value(token)), _) => Some(TokenSource::Argument(token)),
            (None, Some(path)) => Some(TokenSource::File(path)),
            (None, None) => None,
        }
    }

    /// Reads the token, using `stdin` for [`TokenSource::Stdin`].
    pub fn read(&self, stdin: impl Read) -> Result<Token, TokenError> {
        match self {
            TokenSource::Argument(token) => checked(token.0.clone(), "--token"),
            TokenSource::File(path) => read_file(path),
            TokenSource::Stdin => {
                let text = read_bounded(stdin).map_err(TokenError::ReadStdin)?;
                checked(text, "standard input")
            }
        }
    }
}

fn read_file(path: &Path) -> Result<Token, TokenError> {
    let read_error = |source| TokenError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let text = read_bounded(file).map_err(read_error)?;
    checked(text, &path.display().to_string())
}

/// Reads at most one byte more than allowed, so that an oversized input is noticed.
fn read_bounded(reader: impl Read) -> std::io::Result<String> {
    let mut text = String::new();
    reader.take(MAX_TOKEN_LEN + 1).read_to_string(&mut text)?;
    Ok(text)
}

fn checked(text: String, from: &str) -> Result<Token, TokenError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(TokenError::Empty { from: from.into() });
    }
    if trimmed.len() as u64 > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong { from: from.into() });
    }
    Ok(Token(trimmed.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "abc123.s3cr3t-value";

    #[test]
    fn token_is_read_from_a_file_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("  {SECRET}\n\n")).unwrap();
        let token = TokenSource::File(path).read(std::io::empty()).unwrap();
        assert_eq!(token.expose(), SECRET);
    }

    #[test]
    fn token_is_read_from_standard_input_and_trimmed() {
        let stdin = format!("{SECRET}\n");
        let token = TokenSource::Stdin.read(stdin.as_bytes()).unwrap();
        assert_eq!(token.expose(), SECRET);
    }

    #[test]
    fn empty_token_is_refused_with_its_source() {
        let error = TokenSource::Stdin.read(&b" \n"[..]).unwrap_err();
        assert!(error.to_string().contains("standard input"), "{error}");
    }

    #[test]
    fn oversized_token_is_refused() {
        let huge = "x".repeat(MAX_TOKEN_LEN as usize + 10);
        let error = TokenSource::Stdin.read(huge.as_bytes()).unwrap_err();
        assert!(matches!(error, TokenError::TooLong { .. }), "{error}");
    }

    #[test]
    fn missing_token_file_names_the_path() {
        let error = TokenSource::File("/nonexistent/token".into())
            .read(std::io::empty())
            .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/token"), "{error}");
    }

    #[test]
    fn token_never_shows_in_debug_or_display() {
        let token = TokenSource::Stdin.read(SECRET.as_bytes()).unwrap();
        let arg = TokenArg::parse(SECRET).unwrap();
        let source = TokenSource::from_args(Some(arg.clone()), None).unwrap();
        for shown in [
            format!("{token:?}"),
            format!("{token}"),
            format!("{arg:?}"),
            format!("{source:?}"),
        ] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
    }

    #[test]
    fn dash_means_standard_input() {
        let source = TokenSource::from_args(Some(TokenArg::parse("-").unwrap()), None);
        assert_eq!(source, Some(TokenSource::Stdin));
    }
}
