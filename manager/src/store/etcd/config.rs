//! The etcd store URL: `etcd://HOST:PORT[,HOST:PORT…][?OPTIONS]`, or `etcds://` for client TLS.
//!
//! Options are query parameters: `prefix` (where the fleet's keys live, default `/opi-fleet/`),
//! `timeout` (of every call, default 5s), and with `etcds://` the PEM files `ca` (required),
//! `cert` and `key` (etcd's client certificate, both or neither).

use std::path::PathBuf;
use std::time::Duration;

/// The scheme of a plain-text etcd URL.
pub const SCHEME: &str = "etcd://";
/// The scheme of an etcd URL whose endpoints speak TLS.
pub const TLS_SCHEME: &str = "etcds://";
/// Where the fleet's keys live unless the URL says otherwise, so that one etcd can hold
/// other data too.
pub const DEFAULT_PREFIX: &str = "/opi-fleet/";
/// Bound of every etcd call unless the URL says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach etcd, parsed from a store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `HOST:PORT` of each member, tried in this order.
    pub endpoints: Vec<String>,
    /// Prefix of every key the store writes; ends with `/`.
    pub prefix: String,
    /// Bound of every call, connecting included.
    pub timeout: Duration,
    /// Client TLS, for `etcds://`.
    pub tls: Option<TlsFiles>,
}

/// The PEM files of etcd's client TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle that signed the members' server certificates.
    pub ca: PathBuf,
    /// Client certificate chain and key, when etcd asks for client certificates.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Why an etcd store URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The URL names no endpoint.
    #[error("etcd store url `{url}` names no endpoint; use etcd://HOST:PORT[,HOST:PORT…]")]
    NoEndpoint {
        /// The URL.
        url: String,
    },
    /// An endpoint is not `HOST:PORT`.
    #[error("etcd endpoint `{endpoint}` in `{url}` is not HOST:PORT")]
    BadEndpoint {
        /// The URL.
        url: String,
        /// The endpoint.
        endpoint: String,
    },
    /// The URL has a path; the key prefix is the `prefix` option.
    #[error("etcd store url `{url}` has a path; set the key prefix with ?prefix=/PATH/")]
    Path {
        /// The URL.
        url: String,
    },
    /// An option is unknown, repeated, or has a bad value.
    #[error("etcd store url `{url}`: option `{option}` {problem}")]
    BadOption {
        /// The URL.
        url: String,
        /// The option.
        option: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl EtcdConfig {
    /// Parses `url`, which starts with [`SCHEME`] or [`TLS_SCHEME`].
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let (rest, tls) = match url.strip_prefix(TLS_SCHEME) {
            Some(rest) => (rest, true),
            None => (url.strip_prefix(SCHEME).unwrap_or(url), false),
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        if authority.contains('/') {
            return Err(ConfigError::Path { url: url.into() });
        }
        let endpoints = parse_endpoints(url, authority)?;

        let mut options = Options::parse(url, query)?;
        let prefix = options.prefix()?;
        let timeout = options.timeout()?;
        let tls = options.tls(tls)?;
        options.refuse_unknown()?;
        Ok(Self {
            endpoints,
            prefix,
            timeout,
            tls,
        })
    }
}

/// The query options of a URL, taken out one by one so that leftovers are unknown.
struct Options<'a> {
    url: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Options<'a> {
    fn parse(url: &'a str, query: &'a str) -> Result<Self, ConfigError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if pairs.iter().any(|(seen, _)| *seen == name) {
                return Err(bad_option(url, name, "is given twice"));
            }
            pairs.push((name, value));
        }
        Ok(Self { url, pairs })
    }

    fn take(&mut self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        let Some(at) = self.pairs.iter().position(|(n, _)| *n == name) else {
            return Ok(None);
        };
        let (_, value) = self.pairs.remove(at);
        if value.is_empty() {
            return Err(bad_option(self.url, name, "has no value"));
        }
        Ok(Some(value))
    }

    fn prefix(&mut self) -> Result<String, ConfigError> {
        let Some(prefix) = self.take("prefix")? else {
            return Ok(DEFAULT_PREFIX.into());
        };
        if !prefix.ends_with('/') {
            return Err(bad_option(self.url, "prefix", "must end with `/`"));
        }
        Ok(prefix.into())
    }

    fn timeout(&mut self) -> Result<Duration, ConfigError> {
        let Some(value) = self.take("timeout")? else {
            return Ok(DEFAULT_TIMEOUT);
        };
        match humantime::parse_duration(value) {
            Ok(timeout) if !timeout.is_zero() => Ok(timeout),
            _ => Err(bad_option(
                self.url,
                "timeout",
                "is not a duration such as 5s",
            )),
        }
    }

    fn tls(&mut self, tls: bool) -> Result<Option<TlsFiles>, ConfigError> {
        let ca = self.take("ca")?.map(PathBuf::from);
        let cert = self.take("cert")?.map(PathBuf::from);
        let key = self.take("key")?.map(PathBuf::from);
        if !tls {
            return match [("ca", &ca), ("cert", &cert), ("key", &key)]
                .into_iter()
                .find(|(_, v)| v.is_some())
            {
                Some((name, _)) => Err(bad_option(self.url, name, "needs an etcds:// url")),
                None => Ok(None),
            };
        }
        let ca = ca.ok_or_else(|| bad_option(self.url, "ca", "is required with etcds://"))?;
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => return Err(bad_option(self.url, "key", "is missing for `cert`")),
            (None, Some(_)) => return Err(bad_option(self.url, "cert", "is missing for `key`")),
        };
        Ok(Some(TlsFiles { ca, client }))
    }

    fn refuse_unknown(&self) -> Result<(), ConfigError> {
        match self.pairs.first() {
            Some((name, _)) => Err(bad_option(
                self.url,
                name,
                "is unknown; known options: prefix, timeout, ca, cert, key",
            )),
            None => Ok(()),
        }
    }
}

/// The comma-separated `HOST:PORT` list of a URL.
fn parse_endpoints(url: &str, authority: &str) -> Result<Vec<String>, ConfigError> {
    let endpoints: Vec<String> = authority
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        return Err(ConfigError::NoEndpoint { url: url.into() });
    }
    for endpoint in &endpoints {
        let valid = endpoint
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(ConfigError::BadEndpoint {
                url: url.into(),
                endpoint: endpoint.clone(),
            });
        }
    }
    Ok(endpoints)
}

fn bad_option(url: &str, option: &str, problem: &str) -> ConfigError {
    ConfigError::BadOption {
        url: url.into(),
        option: option.into(),
        problem: problem.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_url_takes_defaults() {
        let config = EtcdConfig::parse("etcd://h1:2379,h2:2379,[::1]:2379").expect("parse");
        assert_eq!(config.endpoints, ["h1:2379", "h2:2379", "[::1]:2379"]);
        assert_eq!(config.prefix, DEFAULT_PREFIX);
        assert_eq!(config.timeout, DEFAULT_TIMEOUT);
        assert_eq!(config.tls, None);
    }

    #[test]
    fn tls_url_reads_its_files_and_options() {
        let url = "etcds://h1:2379?ca=/e/ca.pem&cert=/e/c.pem&key=/e/k.pem&prefix=/f/&timeout=2s";
        let config = EtcdConfig::parse(url).expect("parse");
        let tls = config.tls.expect("tls");
        assert_eq!(tls.ca, PathBuf::from("/e/ca.pem"));
        assert_eq!(tls.client, Some(("/e/c.pem".into(), "/e/k.pem".into())));
        assert_eq!(config.prefix, "/f/");
        assert_eq!(config.timeout, Duration::from_secs(2));
    }

    #[test]
    fn bad_urls_are_refused_naming_the_problem() {
        let cases = [
            ("etcd://", "names no endpoint"),
            ("etcd://h1", "`h1`"),
            ("etcd://h1:x", "`h1:x`"),
            ("etcd://h1:2379/fleet", "has a path"),
            ("etcd://h1:2379?ca=/ca.pem", "needs an etcds:// url"),
            ("etcds://h1:2379", "`ca` is required"),
            ("etcds://h1:2379?ca=/c&cert=/c", "`key` is missing"),
            ("etcd://h1:2379?prefix=/f", "must end with `/`"),
            ("etcd://h1:2379?timeout=soon", "`timeout` is not a duration"),
            ("etcd://h1:2379?color=blue", "`color` is unknown"),
            ("etcd://h1:2379?prefix=/a/&prefix=/b/", "given twice"),
        ];
        for (url, expected) in cases {
            let error = EtcdConfig::parse(url).expect_err(url).to_string();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }
}
