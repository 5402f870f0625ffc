//! A client of systemd's D-Bus API (`org.freedesktop.systemd1.Manager`), on a configurable
//! socket so that tests can reach the systemd of a container through
//! `/proc/PID/root/run/dbus/system_bus_socket`. It reloads units and restarts one, waiting for
//! systemd's job to finish.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use zbus::zvariant::OwnedObjectPath;
use zbus::{Connection, Proxy};

/// systemd's bus name.
pub const SYSTEMD_SERVICE: &str = "org.freedesktop.systemd1";
/// systemd's manager object.
pub const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
/// systemd's manager interface.
pub const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
/// Longest wait for a restart job.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(90);

/// Why systemd could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// The bus socket cannot be reached.
    #[error("cannot connect to systemd's D-Bus socket {socket}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: zbus::Error,
    },
    /// A method call failed.
    #[error("systemd refused {method} on {socket}")]
    Call {
        /// The method, with its unit.
        method: String,
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: zbus::Error,
    },
    /// The job ended otherwise than `done`.
    #[error("restarting {unit} ended with {result:?}; see `journalctl -u {unit}`")]
    JobFailed {
        /// The unit.
        unit: String,
        /// systemd's job result (`failed`, `timeout`, `dependency`…).
        result: String,
    },
    /// The job did not finish in time.
    #[error("restarting {unit} did not finish within {after:?}")]
    JobTimedOut {
        /// The unit.
        unit: String,
        /// The time allowed.
        after: Duration,
    },
}

/// A connection to one systemd.
pub struct Systemd {
    connection: Connection,
    socket: PathBuf,
}

impl Systemd {
    /// Connects to the bus at `socket`.
    pub async fn connect(socket: &Path) -> Result<Self, SystemdError> {
        let failed = |source| SystemdError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        let address = format!("unix:path={}", socket.display());
        let connection = zbus::connection::Builder::address(address.as_str())
            .map_err(failed)?
            .build()
            .await
            .map_err(failed)?;
        Ok(Self {
            connection,
            socket: socket.to_path_buf(),
        })
    }

    /// `daemon-reload`: systemd reads its unit files and drop-ins again.
    pub async fn reload(&self) -> Result<(), SystemdError> {
        let manager = self.manager().await?;
        manager
            .call::<_, _, ()>("Reload", &())
            .await
            .map_err(|source| self.failed("Reload", source))
    }

    /// Restarts `unit` and waits until systemd's job for it is done.
    pub async fn restart(&self, unit: &str, timeout: Duration) -> Result<(), SystemdError> {
        let manager = self.manager().await?;
        // Subscribe before asking, so that the end of a quick job is not missed.
        let mut removed = manager
            .receive_signal("JobRemoved")
            .await
            .map_err(|source| self.failed("receive JobRemoved", source))?;
        manager
            .call::<_, _, ()>("Subscribe", &())
            .await
            .map_err(|source| self.failed("Subscribe", source))?;
        let job: OwnedObjectPath = manager
            .call("RestartUnit", &(unit, "replace"))
            .await
            .map_err(|source| self.failed(&format!("RestartUnit {unit}"), source))?;

        let wait = async {
            while let Some(message) = removed.next().await {
                let body = message.body();
                let Ok((_, path, _, result)) =
                    body.deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == job {
                    return Some(result);
                }
            }
            None
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(result)) if result == "done" => Ok(()),
            Ok(Some(result)) => Err(SystemdError::JobFailed {
                unit: unit.to_string(),
                result,
            }),
            Ok(None) | Err(_) => Err(SystemdError::JobTimedOut {
                unit: unit.to_string(),
                after: timeout,
            }),
        }
    }

    /// Asks systemd to reboot the node (`reboot.target`, as `systemctl reboot` does); returns
    /// once the job is queued.
    pub async fn reboot(&self) -> Result<(), SystemdError> {
        let manager = self.manager().await?;
        manager
            .call::<_, _, OwnedObjectPath>("StartUnit", &("reboot.target", "replace-irreversibly"))
            .await
            .map(drop)
            .map_err(|source| self.failed("StartUnit reboot.target", source))
    }

    async fn manager(&self) -> Result<Proxy<'_>, SystemdError> {
        Proxy::new(
            &self.connection,
            SYSTEMD_SERVICE,
            SYSTEMD_PATH,
            MANAGER_INTERFACE,
        )
        .await
        .map_err(|source| self.failed("open the manager object", source))
    }

    fn failed(&self, method: &str, source: zbus::Error) -> SystemdError {
        SystemdError::Call {
            method: method.to_string(),
            socket: self.socket.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_bus_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("system_bus_socket");
        let error = Systemd::connect(&socket)
            .await
            .err()
            .expect("nothing listens there");
        assert!(
            error.to_string().contains(&socket.display().to_string()),
            "{error}"
        );
    }
}
