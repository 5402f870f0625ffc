//! Node identities for simulated agents, each enrolled with its own key over its own TLS
//! connection: through real bootstrap tokens against the manager, or against the echo ceiling,
//! which signs every CSR it gets and keeps nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use opi_pki::bundle::OperatorBundle;
use opi_pki::tls::{client_config, ManagerVerifier};
use opi_pki::SecretPem;
use opi_proto::v1::enrollment_client::EnrollmentClient;
use opi_proto::v1::{CreateTokenRequest, EnrollRequest, NodeFacts};
use rustls::ClientConfig;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::Code;

use super::{Config, Target};

/// Uses of one bootstrap token at most (the manager's own limit), the default per token.
pub const USES_PER_TOKEN: usize = 10_000;
/// Lifetime of the tokens the simulator creates.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Attempts of one enrollment that the manager aborts because another one changed the same
/// token at the same time, as a real agent retries them.
const ENROLL_ATTEMPTS: u32 = 50;
/// Longest pause before retrying an aborted enrollment (picked at random below it).
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// What the simulator presents as a token to the echo ceiling, which checks none.
const ECHO_TOKEN: &str = "echo.ceiling";

/// Enrollments retried after an abort, in this process.
pub static RETRIES: AtomicU64 = AtomicU64::new(0);

/// What a simulated agent presents on its session.
#[derive(Clone)]
pub struct Credentials {
    pub name: String,
    pub chain_pem: String,
    pub key: SecretPem,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The fleet's name, from the admin bundle `opi-manager init` wrote.
pub fn fleet_name(config: &Config) -> anyhow::Result<String> {
    let path = config.data_dir.join("opictl-admin.toml");
    let bundle = OperatorBundle::read(&path).with_context(|| format!("{}", path.display()))?;
    Ok(bundle.fleet)
}

/// Name of simulated agent `i`.
pub fn node_name(i: usize) -> String {
    format!("sim-{i:05}")
}

/// Creates the tokens (on the manager), then enrolls every agent, each with its own key over
/// its own TLS connection, `concurrency` at a time. Agents that fail are left out, after one
/// line on stderr naming the first failure.
pub async fn enroll_all(config: &Arc<Config>) -> anyhow::Result<Vec<Credentials>> {
    let (secrets, verifier) = match config.target {
        Target::Manager => {
            let (secrets, pin) = create_tokens(config).await?;
            let pin = pin.parse().context("CA pin from the manager")?;
            (secrets, ManagerVerifier::with_pin(pin))
        }
        Target::Echo => (vec![ECHO_TOKEN.to_string()], fleet_verifier(config)?),
    };
    let tls = client_config(verifier, None)?;

    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut tasks = JoinSet::new();
    for i in 0..config.agents {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let token = secrets[(i / config.uses_per_token).min(secrets.len() - 1)].clone();
        let (config, tls) = (config.clone(), tls.clone());
        tasks.spawn(async move {
            let _permit = permit;
            enroll_one(&config, tls, i, &token).await
        });
    }
    collect(tasks, "enroll").await
}

/// The manager verifier of `config`'s fleet, from the trust bundle in its data directory.
pub fn fleet_verifier(config: &Config) -> anyhow::Result<Arc<ManagerVerifier>> {
    let path = config.data_dir.join("pki/trust-bundle.pem");
    let bundle = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(ManagerVerifier::with_roots(&bundle, &fleet_name(config)?)?)
}

/// One token per `uses_per_token` agents; returns their secrets and the fleet CA pin.
async fn create_tokens(config: &Config) -> anyhow::Result<(Vec<String>, String)> {
    let mut admin = crate::grpc::admin(&config.endpoint, &config.data_dir).await?;
    let mut secrets = Vec::new();
    let mut pin = String::new();
    for first in (0..config.agents).step_by(config.uses_per_token) {
        let uses = (config.agents - first).min(config.uses_per_token) as u32;
        let created = admin
            .create_token(CreateTokenRequest {
                pool: config.pool.clone(),
                ttl_secs: TOKEN_TTL.as_secs(),
                uses,
                labels: HashMap::from([("source".to_string(), "fleet-sim".to_string())]),
                description: "fleet simulator".into(),
            })
            .await
            .context("create a bootstrap token")?
            .into_inner();
        secrets.push(created.secret);
        pin = created.ca_pin;
    }
    Ok((secrets, pin))
}

async fn enroll_one(
    config: &Config,
    tls: Arc<ClientConfig>,
    i: usize,
    token: &str,
) -> anyhow::Result<Credentials> {
    enroll_named(
        &config.endpoint,
        tls,
        config.source(i),
        &node_name(config.first + i),
        token,
    )
    .await
}

/// Enrolls node `name` with a new key over a new connection from `source`, retrying calls
/// the manager aborted because of a concurrent use of the token.
pub async fn enroll_named(
    endpoint: &str,
    tls: Arc<ClientConfig>,
    source: Option<std::net::IpAddr>,
    name: &str,
    token: &str,
) -> anyhow::Result<Credentials> {
    let name = name.to_string();
    let key = opi_pki::ca::generate_key()?;
    let csr_der = opi_pki::csr::make_node_csr(&key, &name)?;

    let channel = opi_pki::channel::connect_from(endpoint, tls, source).await?;
    let mut client = EnrollmentClient::new(channel);
    let request = EnrollRequest {
        reenroll: false,
        token: token.to_string(),
        csr_der,
        name: name.clone(),
        facts: Some(facts(&name)),
    };
    let mut attempt = 1;
    let response = loop {
        match client.enroll(request.clone()).await {
            Err(status) if status.code() == Code::Aborted && attempt < ENROLL_ATTEMPTS => {
                RETRIES.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                tokio::time::sleep(RETRY_PAUSE.mul_f64(rand::random_range(0.0..1.0))).await;
            }
            other => {
                break other
                    .with_context(|| format!("enroll {name}"))?
                    .into_inner()
            }
        }
    };
    Ok(Credentials {
        name,
        chain_pem: response.cert_chain_pem,
        key: SecretPem::new(key.serialize_pem()),
    })
}

/// What a simulated node says about itself.
pub fn facts(name: &str) -> NodeFacts {
    NodeFacts {
        hostname: name.to_string(),
        os: "OPI fleet simulator".into(),
        kernel: "simulated".into(),
        machine_id: String::new(),
        arch: std::env::consts::ARCH.into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The successes of `tasks`; fails only when none succeeded.
async fn collect(
    mut tasks: JoinSet<anyhow::Result<Credentials>>,
    what: &str,
) -> anyhow::Result<Vec<Credentials>> {
    let mut done = Vec::new();
    let mut failures = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("task panicked")? {
            Ok(creds) => done.push(creds),
            Err(error) => {
                failures += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        eprintln!("{failures} agent(s) failed to {what}; first: {error:#}");
        if done.is_empty() {
            return Err(error);
        }
    }
    done.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(done)
}
