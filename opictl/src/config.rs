//! Finding and reading the operator bundle: `--config`, else `OPICTL_CONFIG`, else
//! `$HOME/.config/opictl/config.toml`.
//!
//! The first source that is set wins, and is not second-guessed: a missing file named by
//! `--config` is an error, not a reason to fall back to the default.

use std::ffi::OsString;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use opi_pki::bundle::{BundleError, OperatorBundle};
use opi_pki::files::FileError;
use opi_pki::tls::{parse_certs, PeerCert};

use crate::error::Error;
use crate::output::rfc3339;

/// Environment variable naming the operator bundle when `--config` is not given.
pub const CONFIG_ENV: &str = "OPICTL_CONFIG";
/// Bundle location under the home directory when neither `--config` nor the variable is set.
pub const HOME_CONFIG: &str = ".config/opictl/config.toml";

/// Where the bundle path came from, named in errors so the user knows what to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--config FILE`.
    Flag,
    /// The `OPICTL_CONFIG` environment variable.
    Env,
    /// The default under `$HOME`.
    Home,
}

/// The inputs of bundle resolution, passed explicitly so that tests need not touch the
/// process environment.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The `--config` flag.
    pub flag: Option<PathBuf>,
    /// The value of `OPICTL_CONFIG`.
    pub env: Option<OsString>,
    /// The value of `HOME`.
    pub home: Option<OsString>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Flag => "named by --config",
            Origin::Env => "named by OPICTL_CONFIG",
            Origin::Home => "the default, as neither --config nor OPICTL_CONFIG is set",
        })
    }
}

impl Sources {
    /// Reads `OPICTL_CONFIG` and `HOME` from the process environment.
    pub fn from_env(flag: Option<PathBuf>) -> Self {
        Self {
            flag,
            env: std::env::var_os(CONFIG_ENV),
            home: std::env::var_os("HOME"),
        }
    }

    /// The bundle path to use and where it came from. Empty values count as unset.
    pub fn resolve(&self) -> Result<(PathBuf, Origin), Error> {
        let set = |value: &Option<OsString>| value.clone().filter(|v| !v.is_empty());

        if let Some(path) = self.flag.clone().filter(|p| !p.as_os_str().is_empty()) {
            return Ok((path, Origin::Flag));
        }
        if let Some(path) = set(&self.env) {
            return Ok((PathBuf::from(path), Origin::Env));
        }
        let home = set(&self.home).ok_or(Error::NoHome)?;
        Ok((Path::new(&home).join(HOME_CONFIG), Origin::Home))
    }
}

/// Resolves and reads the operator bundle, refusing one whose certificate has expired.
pub fn load(sources: &Sources) -> Result<(OperatorBundle, PathBuf), Error> {
    let (path, origin) = sources.resolve()?;
    let bundle = OperatorBundle::read(&path).map_err(|error| match error {
        BundleError::File(FileError::Read { source, .. })
            if source.kind() == ErrorKind::NotFound =>
        {
            Error::BundleMissing {
                path: path.clone(),
                origin,
            }
        }
        other => Error::ReadBundle(other),
    })?;
    check_not_expired(&bundle, &path, SystemTime::now())?;
    Ok((bundle, path))
}

/// Fails early on an expired operator certificate: the manager would only drop the
/// connection, with a far less helpful message.
fn check_not_expired(bundle: &OperatorBundle, path: &Path, now: SystemTime) -> Result<(), Error> {
    let tls = |source| Error::BundleTls {
        path: path.to_path_buf(),
        source,
    };
    let chain = parse_certs(&bundle.cert, "operator certificate").map_err(tls)?;
    // An unreadable identity is the manager's to refuse; only the expiry is checked here.
    let Ok(leaf) = PeerCert::from_der(&chain[0]) else {
        return Ok(());
    };
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(leaf.not_after.unix_timestamp()).unwrap_or(0));
    if not_after > now {
        return Ok(());
    }
    Err(Error::CertificateExpired {
        path: path.to_path_buf(),
        expired_at: rfc3339(not_after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(flag: Option<&str>, env: Option<&str>, home: Option<&str>) -> Sources {
        Sources {
            flag: flag.map(PathBuf::from),
            env: env.map(OsString::from),
            home: home.map(OsString::from),
        }
    }

    #[test]
    fn config_flag_wins_over_env_and_home() {
        let resolved = sources(Some("/a.toml"), Some("/b.toml"), Some("/home/u")).resolve();

        assert_eq!(resolved.unwrap(), (PathBuf::from("/a.toml"), Origin::Flag));
    }

    #[test]
    fn env_wins_over_home_when_no_flag() {
        let resolved = sources(None, Some("/b.toml"), Some("/home/u")).resolve();

        assert_eq!(resolved.unwrap(), (PathBuf::from("/b.toml"), Origin::Env));
    }

    #[test]
    fn home_default_is_used_when_nothing_else_is_set() {
        let resolved = sources(None, None, Some("/home/u")).resolve();

        let expected = PathBuf::from("/home/u/.config/opictl/config.toml");
        assert_eq!(resolved.unwrap(), (expected, Origin::Home));
    }

    #[test]
    fn empty_env_counts_as_unset() {
        let resolved = sources(None, Some(""), Some("/home/u")).resolve();

        assert_eq!(resolved.unwrap().1, Origin::Home);
    }

    #[test]
    fn resolution_fails_without_flag_env_or_home() {
        let error = sources(None, None, None).resolve().unwrap_err();

        assert!(matches!(error, Error::NoHome));
    }

    #[test]
    fn missing_bundle_names_the_path_tried_and_how_to_get_one() {
        let dir = std::env::temp_dir().join(format!("opictl-missing-{}", std::process::id()));
        let missing = dir.join("nope.toml");
        let error = load(&sources(missing.to_str(), None, None)).unwrap_err();

        let text = error.to_string();
        assert!(text.contains(&missing.display().to_string()), "{text}");
        assert!(text.contains("named by --config"), "{text}");
        assert!(text.contains("opi-manager init"), "{text}");
        assert!(text.contains("opi-manager operator issue"), "{text}");
        assert_eq!(error.exit_code(), crate::error::EXIT_USAGE);
    }
}
