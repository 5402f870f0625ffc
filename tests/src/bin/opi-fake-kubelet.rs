//! Stands in for kubelet in the real-node tests, because kubelet is not packaged in Debian: it
//! serves only kubelet's health endpoint, `GET /healthz` answering `200 ok`.
//!
//! `opi-fake-kubelet [--listen ADDR] [--unhealthy-file PATH]`: while PATH exists, `/healthz`
//! answers `500` with the file's content, so a test can make the node's kubelet unhealthy
//! without stopping it. Each request is answered on its own thread and the connection closed.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// kubelet's own healthz address.
const DEFAULT_LISTEN: &str = "127.0.0.1:10248";
/// The file whose presence makes `/healthz` fail.
const DEFAULT_UNHEALTHY_FILE: &str = "/run/opi-fake-kubelet/unhealthy";

/// The command line.
struct Args {
    listen: String,
    unhealthy_file: PathBuf,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("opi-fake-kubelet: {message}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&args.listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "opi-fake-kubelet: cannot listen on {}: {error}",
                args.listen
            );
            return ExitCode::from(1);
        }
    };
    eprintln!(
        "opi-fake-kubelet: serving /healthz on {} (unhealthy while {} exists)",
        args.listen,
        args.unhealthy_file.display()
    );
    for stream in listener.incoming().flatten() {
        let unhealthy_file = args.unhealthy_file.clone();
        std::thread::spawn(move || answer(stream, &unhealthy_file));
    }
    ExitCode::SUCCESS
}

/// Reads `--listen` and `--unhealthy-file`.
fn parse_args(mut words: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        listen: DEFAULT_LISTEN.into(),
        unhealthy_file: DEFAULT_UNHEALTHY_FILE.into(),
    };
    while let Some(word) = words.next() {
        let mut value = || words.next().ok_or(format!("{word} needs a value"));
        match word.as_str() {
            "--listen" => args.listen = value()?,
            "--unhealthy-file" => args.unhealthy_file = value()?.into(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// Answers one request; a client that goes away is not an error worth reporting.
fn answer(stream: TcpStream, unhealthy_file: &Path) {
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let (status, body) = respond(&request_line, unhealthy_file);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = (&stream).write_all(response.as_bytes());
}

/// The status line and body for a request line.
fn respond(request_line: &str, unhealthy_file: &Path) -> (&'static str, String) {
    let mut words = request_line.split_whitespace();
    if words.next() != Some("GET") || words.next() != Some("/healthz") {
        return ("404 Not Found", "404 page not found\n".into());
    }
    match std::fs::read_to_string(unhealthy_file) {
        Ok(reason) => ("500 Internal Server Error", unhealthy_body(&reason)),
        Err(_) => ("200 OK", "ok".into()),
    }
}

/// What a failing kubelet's healthz says, with the test's reason.
fn unhealthy_body(reason: &str) -> String {
    match reason.trim() {
        "" => "healthz check failed\n".into(),
        reason => format!("healthz check failed: {reason}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_is_ok_until_the_unhealthy_file_appears() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("unhealthy");
        assert_eq!(
            respond("GET /healthz HTTP/1.1\r\n", &file),
            ("200 OK", "ok".to_string())
        );
        std::fs::write(&file, "containerd gone\n").unwrap();
        let (status, body) = respond("GET /healthz HTTP/1.1\r\n", &file);
        assert_eq!(status, "500 Internal Server Error");
        assert_eq!(body, "healthz check failed: containerd gone\n");
    }

    #[test]
    fn other_paths_are_not_found() {
        let (status, _) = respond("GET /metrics HTTP/1.1\r\n", Path::new("/nonexistent"));
        assert_eq!(status, "404 Not Found");
    }

    #[test]
    fn unknown_arguments_are_refused_by_name() {
        let error = parse_args(["--port".to_string()].into_iter())
            .err()
            .expect("refused");
        assert!(error.contains("--port"), "{error}");
    }
}
