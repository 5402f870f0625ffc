//! Real etcd for tests: one member or a cluster of three on free loopback ports, data under a
//! temporary directory removed on drop (each member preallocates ~62 MB of WAL).
//!
//! Needs Debian's `etcd-server` and `etcd-client` packages (scripts/install-test-deps).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{free_port, system_bin, wait_until, POLL_OPICTL};

/// Bound of the wait for a cluster to elect a leader and answer.
pub const READY: Duration = Duration::from_secs(20);

/// Tells apart the clusters one test process starts, in their `--initial-cluster-token`.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// A running etcd cluster started by the test.
pub struct Etcd {
    /// Every member, started or killed.
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    token: String,
    cluster: String,
    /// A second loopback address every member also serves clients on (see
    /// [`Etcd::single_also_on`]).
    also: Option<String>,
}

/// One etcd member.
pub struct Member {
    /// Its `--name`.
    pub name: String,
    /// `127.0.0.1:PORT` of its client URL.
    pub client: String,
    peer: String,
    child: Option<Child>,
}

/// TLS files for an `etcds://` cluster: a CA, the members' server certificate, a client one.
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// Server certificate and key, for 127.0.0.1.
    pub server: (PathBuf, PathBuf),
    /// Client certificate and key.
    pub client: (PathBuf, PathBuf),
}

impl Etcd {
    /// One member, answering.
    pub fn single() -> Self {
        Self::start(1, None)
    }

    /// Three members, with a leader elected.
    pub fn cluster() -> Self {
        Self::start(3, None)
    }

    /// One member serving client TLS with `tls`, requiring client certificates.
    pub fn single_tls(tls: &TlsFiles) -> Self {
        Self::start(1, Some(tls))
    }

    /// One member that also serves clients on loopback address `host` (e.g. `127.0.0.2`, same
    /// port): a client given [`Etcd::url_via`] that address can be cut off alone by a drop
    /// rule on it.
    pub fn single_also_on(host: &str) -> Self {
        Self::start_also_on(1, None, Some(host))
    }

    /// `count` members on free ports, waited for until all answer.
    fn start(count: usize, tls: Option<&TlsFiles>) -> Self {
        Self::start_also_on(count, tls, None)
    }

    fn start_also_on(count: usize, tls: Option<&TlsFiles>, also: Option<&str>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("opi-etcd-")
            .tempdir()
            .expect("etcd temp dir");
        let serial = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let token = format!("opi-test-{}-{serial}", std::process::id());
        let members: Vec<Member> = (0..count)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Self {
            members,
            dir,
            token,
            cluster,
            also: also.map(str::to_owned),
        };
        for index in 0..count {
            etcd.launch(index, tls);
        }
        etcd.wait_healthy(tls);
        etcd
    }

    /// The store URL of every member: `etcd://127.0.0.1:A,127.0.0.1:B,…`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints())
    }

    /// The store URL of every member at the second address of [`Etcd::single_also_on`].
    pub fn url_via(&self, host: &str) -> String {
        assert_eq!(
            self.also.as_deref(),
            Some(host),
            "etcd serves clients on {host}"
        );
        let clients: Vec<String> = self
            .members
            .iter()
            .map(|m| m.client.replace("127.0.0.1", host))
            .collect();
        format!("etcd://{}", clients.join(","))
    }

    /// The members' client addresses, comma-separated.
    pub fn endpoints(&self) -> String {
        let clients: Vec<&str> = self.members.iter().map(|m| m.client.as_str()).collect();
        clients.join(",")
    }

    /// Kills member `index` with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        self.members[index].kill();
    }

    /// Starts member `index` again on its data and ports, after [`Etcd::kill`], and waits
    /// until the cluster answers.
    pub fn restart(&mut self, index: usize) {
        assert!(
            self.members[index].child.is_none(),
            "member {index} still runs"
        );
        self.launch(index, None);
        self.wait_healthy(None);
    }

    /// Where the members keep their data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self, index: usize, tls: Option<&TlsFiles>) {
        let member = &self.members[index];
        let data = self.dir.path().join(&member.name);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://{}", member.client);
        let listen_urls = match &self.also {
            Some(host) => format!("{client_url},{}", client_url.replace("127.0.0.1", host)),
            None => client_url.clone(),
        };
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", member.name)))
            .expect("etcd log file");
        let mut command = Command::new(system_bin("etcd", "etcd-server"));
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &listen_urls])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &format!("http://{}", member.peer)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", member.peer),
            ])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "300"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(tls) = tls {
            command
                .arg("--cert-file")
                .arg(&tls.server.0)
                .arg("--key-file")
                .arg(&tls.server.1)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        self.members[index].child = Some(command.spawn().expect("etcd starts"));
    }

    /// Waits until every member reports healthy through `etcdctl endpoint health`.
    fn wait_healthy(&self, tls: Option<&TlsFiles>) {
        let etcdctl = system_bin("etcdctl", "etcd-client");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{scheme}://{}", m.client))
            .collect();
        wait_until(READY, "etcd to be healthy", || {
            let mut command = Command::new(&etcdctl);
            command
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", endpoints.join(",")))
                .args(["--dial-timeout=200ms", "--command-timeout=500ms"]);
            if let Some(tls) = tls {
                command
                    .arg("--cacert")
                    .arg(&tls.ca)
                    .arg("--cert")
                    .arg(&tls.client.0)
                    .arg("--key")
                    .arg(&tls.client.1);
            }
            let healthy = command
                .args(["endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !healthy {
                std::thread::sleep(POLL_OPICTL);
            }
            healthy
        });
    }

    /// The log of member `index` so far, to explain a failure.
    pub fn log_text(&self, index: usize) -> String {
        let path = self
            .dir
            .path()
            .join(format!("{}.log", self.members[index].name));
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

impl Member {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

impl TlsFiles {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate, written under `dir`.
    pub fn create(dir: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Usage};
        use rcgen::{IsCa, KeyPair, SanType};

        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write TLS file");
            path
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let leaf = |name: &str, sans: Vec<SanType>, usage: Usage| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![usage];
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
            (
                write(&format!("{name}.pem"), cert.pem()),
                write(&format!("{name}.key"), key.serialize_pem()),
            )
        };
        let loopback = SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        Self {
            ca: write("ca.pem", ca.pem()),
            server: leaf("etcd-server", vec![loopback], Usage::ServerAuth),
            client: leaf("etcd-client", Vec::new(), Usage::ClientAuth),
        }
    }
}
