//! A minimal HTTP/1.1 GET over plain TCP, enough for a local health endpoint such as
//! kubelet's healthz: one request, `Connection: close`, the answer read to its end (fixed
//! length or chunked) within a size limit.
//!
//! Shortcoming: only plain `http://` is supported (kubelet's healthz port serves plain HTTP
//! on loopback); an endpoint behind TLS cannot be probed.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read; a health endpoint answers a few bytes.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
/// The URL scheme understood.
pub const SCHEME: &str = "http://";

/// A parsed `http://HOST[:PORT]/PATH` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// `HOST:PORT`, as connected to and sent in `Host`.
    pub authority: String,
    /// The path and query, starting with `/`.
    pub path: String,
}

/// What the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The body, decoded from chunks if needed.
    pub body: Vec<u8>,
}

/// Why a URL is not usable.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not `http://`.
    #[error("{url} is not a plain http:// URL")]
    ParseScheme {
        /// The URL.
        url: String,
    },
    /// No host, or a port that is not a number.
    #[error("{url} has no usable HOST[:PORT]")]
    ParseAuthority {
        /// The URL.
        url: String,
    },
}

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// TCP connection failed.
    #[error("cannot connect to {authority}")]
    Connect {
        /// `HOST:PORT`.
        authority: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the request or reading the answer failed.
    #[error("the exchange with {authority} broke")]
    Exchange {
        /// `HOST:PORT`.
        authority: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No full answer in time.
    #[error("{authority} did not answer within {after:?}")]
    TimedOut {
        /// `HOST:PORT`.
        authority: String,
        /// The time allowed.
        after: Duration,
    },
    /// The answer is not HTTP/1.x.
    #[error("{authority} sent an answer that is not HTTP/1.x: {detail}")]
    ParseAnswer {
        /// `HOST:PORT`.
        authority: String,
        /// What was wrong.
        detail: &'static str,
    },
}

impl HttpUrl {
    /// Parses `http://HOST[:PORT][/PATH]`; the port defaults to 80 and the path to `/`.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let rest = url
            .strip_prefix(SCHEME)
            .ok_or_else(|| UrlError::ParseScheme {
                url: url.to_string(),
            })?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let bad = || UrlError::ParseAuthority {
            url: url.to_string(),
        };
        let authority = match authority.rsplit_once(':') {
            // An IPv6 literal's last colon is inside its brackets.
            Some((host, port)) if !port.contains(']') => {
                port.parse::<u16>().map_err(|_| bad())?;
                (!host.is_empty())
                    .then(|| authority.to_string())
                    .ok_or_else(bad)?
            }
            _ if authority.is_empty() => return Err(bad()),
            _ => format!("{authority}:80"),
        };
        Ok(Self {
            authority,
            path: path.to_string(),
        })
    }
}

/// GETs `url`, all of it within `timeout`.
pub async fn get(url: &HttpUrl, timeout: Duration) -> Result<HttpAnswer, GetError> {
    match tokio::time::timeout(timeout, exchange(url)).await {
        Ok(answer) => answer,
        Err(_) => Err(GetError::TimedOut {
            authority: url.authority.clone(),
            after: timeout,
        }),
    }
}

async fn exchange(url: &HttpUrl) -> Result<HttpAnswer, GetError> {
    let authority = &url.authority;
    let mut stream = TcpStream::connect(authority)
        .await
        .map_err(|source| GetError::Connect {
            authority: authority.clone(),
            source,
        })?;
    let broke = |source| GetError::Exchange {
        authority: authority.clone(),
        source,
    };

    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: opi-agent/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.path,
        crate::AGENT_VERSION,
    );
    stream.write_all(request.as_bytes()).await.map_err(broke)?;

    let mut raw = Vec::new();
    let mut limited = stream.take(MAX_RESPONSE_BYTES);
    limited.read_to_end(&mut raw).await.map_err(broke)?;
    parse_answer(&raw).map_err(|detail| GetError::ParseAnswer {
        authority: authority.clone(),
        detail,
    })
}

/// Splits an HTTP/1.x answer into its status and body.
pub fn parse_answer(raw: &[u8]) -> Result<HttpAnswer, &'static str> {
    let end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    if !parts
        .next()
        .is_some_and(|version| version.starts_with("HTTP/1."))
    {
        return Err("no HTTP/1.x status line");
    }
    let status = parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("no status code")?;

    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &raw[end + 4..];
    let body = match chunked {
        true => dechunk(body).ok_or("broken chunked body")?,
        false => body.to_vec(),
    };
    Ok(HttpAnswer { status, body })
}

/// Joins the chunks of a chunked body; `None` when cut short.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut joined = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        if size == 0 {
            return Some(joined);
        }
        let data = body.get(line_end + 2..line_end + 2 + size)?;
        joined.extend_from_slice(data);
        body = body.get(line_end + 2 + size + 2..)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_default_port_and_path() {
        let url = HttpUrl::parse("http://127.0.0.1:10248/healthz").unwrap();
        assert_eq!(url.authority, "127.0.0.1:10248");
        assert_eq!(url.path, "/healthz");
        let url = HttpUrl::parse("http://localhost").unwrap();
        assert_eq!(
            (url.authority.as_str(), url.path.as_str()),
            ("localhost:80", "/")
        );
        let url = HttpUrl::parse("http://[::1]:8080/x?y=1").unwrap();
        assert_eq!(
            (url.authority.as_str(), url.path.as_str()),
            ("[::1]:8080", "/x?y=1")
        );
    }

    #[test]
    fn urls_other_than_plain_http_with_a_host_are_refused() {
        for url in [
            "https://h/healthz",
            "http:///healthz",
            "http://h:port/",
            "http://:80/",
        ] {
            assert!(HttpUrl::parse(url).is_err(), "{url} accepted");
        }
    }

    #[test]
    fn answers_with_a_length_or_chunks_are_read_whole() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(
            parse_answer(plain).unwrap(),
            HttpAnswer {
                status: 200,
                body: b"ok".to_vec()
            }
        );
        let chunked =
            b"HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbad\r\n2\r\n!!\r\n0\r\n\r\n";
        let answer = parse_answer(chunked).unwrap();
        assert_eq!((answer.status, answer.body), (500, b"bad!!".to_vec()));
    }

    #[test]
    fn answers_that_are_not_http_are_refused() {
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        let cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab";
        assert!(parse_answer(cut).is_err());
    }
}
