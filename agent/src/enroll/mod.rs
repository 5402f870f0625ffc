//! `opi-agent enroll`: trades a bootstrap token and a locally made key for a node certificate.
//!
//! The manager is trusted only through the CA pin until the answer brings the fleet's trust
//! bundle. The answer is checked before anything is stored, and `agent.toml` is written last.

use std::io;
use std::path::PathBuf;

use clap::{ArgGroup, Args};
use opi_pki::identity::validate_name;
use opi_pki::tls::{ManagerRefused, TlsError};
use opi_pki::CaPin;
use opi_proto::v1::EnrollRequest;
use rcgen::KeyPair;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::config::{AgentConfig, ConfigError, CONFIG_VERSION};
use crate::output::timestamp;
use crate::paths::{LocationArgs, StatePaths};
use crate::store::{self, StoreError};
use crate::token::{Token, TokenArg, TokenError, TokenSource};
use crate::{facts, EXIT_RUNTIME, EXIT_USAGE};

pub mod answer;
mod reenroll;
pub mod request;

use answer::AnswerError;
use request::EndpointFailure;

/// Arguments of `opi-agent enroll`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("token_source").required(true).args(["token", "token_file"])))]
pub struct EnrollArgs {
    /// Manager endpoint, https://HOST:PORT (port 7443 if omitted); repeat it for each replica,
    /// tried in order [default with --reenroll: the enrolled node's]
    #[arg(long = "manager", value_name = "URL", required_unless_present = "reenroll", value_parser = parse_endpoint)]
    pub managers: Vec<String>,

    /// Pin of the fleet's root CA, as printed by `opictl token create` [default with
    /// --reenroll: the enrolled node's trust bundle]
    #[arg(long, value_name = "sha256:HEX", required_unless_present = "reenroll")]
    pub ca_pin: Option<CaPin>,

    /// Re-enroll this already enrolled node under its name, keeping its pool and history,
    /// after its certificate expired past the manager's renewal window; an operator must
    /// first allow it with `opictl node allow-reenroll NAME`
    #[arg(long)]
    pub reenroll: bool,

    /// Bootstrap token, or `-` to read it from standard input. A token given here shows in
    /// process lists and shell history: prefer `--token -` or --token-file
    #[arg(long, value_name = "TOKEN", value_parser = TokenArg::parse)]
    pub token: Option<TokenArg>,

    /// File holding the bootstrap token
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Node name to ask for (default: the host name)
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,

    /// Where the node's files are.
    #[command(flatten)]
    pub location: LocationArgs,
}

/// Why the enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token could not be read.
    #[error("cannot read the bootstrap token")]
    ReadToken(#[source] TokenError),
    /// `agent.toml` exists.
    #[error("this node is already enrolled as node {node} of fleet {fleet}; to start over, stop the agent, remove {state_dir} and enroll again")]
    AlreadyEnrolled {
        /// The enrolled node.
        node: String,
        /// Its fleet.
        fleet: String,
        /// The state directory.
        state_dir: PathBuf,
    },
    /// `agent.toml` exists but cannot be read.
    #[error("this node looks enrolled ({config} exists); to start over, stop the agent, remove {state_dir} and enroll again")]
    AlreadyEnrolledUnreadable {
        /// The settings file.
        config: PathBuf,
        /// The state directory.
        state_dir: PathBuf,
        /// The cause.
        #[source]
        source: ConfigError,
    },
    /// The pending key could not be made or read.
    #[error("cannot prepare the node's key")]
    PrepareKey(#[source] Box<StoreError>),
    /// The CSR could not be built.
    #[error("cannot build the certificate request")]
    BuildCsr(#[source] opi_pki::csr::CsrError),
    /// The TLS configuration could not be built.
    #[error("cannot build the TLS configuration")]
    BuildTls(#[source] TlsError),
    /// The manager's certificate failed verification.
    #[error("refusing manager {endpoint}; nothing was sent to it")]
    RefuseManager {
        /// The manager endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: ManagerRefused,
    },
    /// The handshake ended without a verified manager identity.
    #[error("manager {endpoint} completed the handshake without a verified identity")]
    Unverified {
        /// The manager endpoint.
        endpoint: String,
    },
    /// The manager answered with an error.
    #[error("manager {endpoint} refused the enrollment ({code:?}): {message}")]
    Rejected {
        /// The manager endpoint.
        endpoint: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The manager's message.
        message: String,
    },
    /// Every endpoint failed in transport, every round.
    #[error("no manager answered after {rounds} rounds over {endpoints}; check that a manager runs there and that this node can reach it")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// How many times the list was tried.
        rounds: u32,
        /// The cause.
        #[source]
        source: EndpointFailure,
    },
    /// The manager's answer failed the checks.
    #[error("refusing the answer of manager {endpoint}; nothing was stored")]
    CheckAnswer {
        /// The manager endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: AnswerError,
    },
    /// `--reenroll` on a node that is not enrolled.
    #[error("--reenroll needs an enrolled node, but {state_dir} holds none; enroll it without --reenroll")]
    NotEnrolled {
        /// The state directory.
        state_dir: PathBuf,
        /// The cause.
        #[source]
        source: Box<StoreError>,
    },
    /// The stored trust bundle yields no pin.
    #[error("the stored trust bundle {path} is unusable ({reason}); pass --ca-pin")]
    StoredBundle {
        /// The bundle file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `--reenroll --name` names another node.
    #[error("--reenroll takes back this node's name {node}; --name {asked} names another node")]
    ReenrollOtherName {
        /// The enrolled node.
        node: String,
        /// The name asked for.
        asked: String,
    },
    /// The enrollment could not be stored.
    #[error("cannot store the enrollment in {state_dir}")]
    StoreEnrollment {
        /// The state directory.
        state_dir: PathBuf,
        /// The cause.
        #[source]
        source: Box<StoreError>,
    },
}

impl EnrollError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            EnrollError::ReadToken(_)
            | EnrollError::NotEnrolled { .. }
            | EnrollError::ReenrollOtherName { .. }
            | EnrollError::StoredBundle { .. }
            | EnrollError::AlreadyEnrolled { .. }
            | EnrollError::AlreadyEnrolledUnreadable { .. } => EXIT_USAGE,
            EnrollError::PrepareKey(_)
            | EnrollError::BuildCsr(_)
            | EnrollError::BuildTls(_)
            | EnrollError::RefuseManager { .. }
            | EnrollError::Unverified { .. }
            | EnrollError::Rejected { .. }
            | EnrollError::Unreachable { .. }
            | EnrollError::CheckAnswer { .. }
            | EnrollError::StoreEnrollment { .. } => EXIT_RUNTIME,
        }
    }
}

/// Enrolls the node and prints how to start the agent.
pub async fn run(args: EnrollArgs) -> Result<(), EnrollError> {
    let token = read_token(&args)?;
    let paths = args.location.resolve();
    if args.reenroll {
        return reenroll::run(&args, &token, &paths).await;
    }
    refuse_if_enrolled(&paths)?;
    let pin = args
        .ca_pin
        .expect("clap requires --ca-pin without --reenroll");

    let (key, reused) =
        store::pending_key(&paths).map_err(|e| EnrollError::PrepareKey(Box::new(e)))?;
    if reused {
        info!(
            path = %paths.pending_key().display(),
            "reusing the key of an interrupted enrollment",
        );
    }
    let request = build_request(&token, &key, args.name.as_deref(), &paths)?;

    let answered = request::send(&args.managers, pin, &request).await?;
    let leaf =
        answer::check(&answered.response, &answered.fleet, &key, &pin).map_err(|source| {
            EnrollError::CheckAnswer {
                endpoint: answered.endpoint.clone(),
                source,
            }
        })?;
    let config = settings(&answered, &args.managers);
    let response = &answered.response;
    if !response.profile_signers.is_empty() {
        store::store_signers(&paths, &response.profile_signers).map_err(|source| {
            EnrollError::StoreEnrollment {
                state_dir: paths.dir.clone(),
                source: Box::new(source),
            }
        })?;
        info!(
            keys = response.profile_signers.len(),
            "profile signer keys pinned"
        );
    }
    store::commit_enrollment(
        &paths,
        &response.cert_chain_pem,
        &response.ca_bundle_pem,
        &config,
    )
    .map_err(|source| EnrollError::StoreEnrollment {
        state_dir: paths.dir.clone(),
        source: Box::new(source),
    })?;

    info!(node = %config.node, pool = %config.pool, fleet = %config.fleet, "node enrolled");
    println!(
        "enrolled as node {} in pool {} of fleet {}; certificate valid until {}; start the agent with: opi-agent run{}",
        config.node,
        config.pool,
        config.fleet,
        timestamp(leaf.not_after),
        args.location.as_flags()
    );
    Ok(())
}

/// Reads the token from where the arguments say, warning if it was on the command line.
fn read_token(args: &EnrollArgs) -> Result<Token, EnrollError> {
    let source = TokenSource::from_args(args.token.clone(), args.token_file.clone())
        .expect("clap requires --token or --token-file");
    if matches!(source, TokenSource::Argument(_)) {
        warn!("the token given with --token is visible in process lists and shell history; prefer --token-file FILE or --token - (standard input)");
    }
    source
        .read(io::stdin().lock())
        .map_err(EnrollError::ReadToken)
}

/// The request sent to every endpoint and every round: same token, same key.
pub(super) fn build_request(
    token: &Token,
    key: &KeyPair,
    name: Option<&str>,
    paths: &StatePaths,
) -> Result<EnrollRequest, EnrollError> {
    let facts = facts::collect(&paths.root);
    let csr_name = name.unwrap_or(&facts.hostname);
    let csr_der = opi_pki::csr::make_node_csr(key, csr_name).map_err(EnrollError::BuildCsr)?;
    Ok(EnrollRequest {
        token: token.expose().to_string(),
        csr_der,
        name: name.unwrap_or_default().to_string(),
        facts: Some(facts),
        reenroll: false,
    })
}

/// Refuses to enroll over an existing enrollment, naming it.
fn refuse_if_enrolled(paths: &StatePaths) -> Result<(), EnrollError> {
    if !paths.config().exists() {
        return Ok(());
    }
    match AgentConfig::load(&paths.config()) {
        Ok(config) => Err(EnrollError::AlreadyEnrolled {
            node: config.node,
            fleet: config.fleet,
            state_dir: paths.dir.clone(),
        }),
        Err(source) => Err(EnrollError::AlreadyEnrolledUnreadable {
            config: paths.config(),
            state_dir: paths.dir.clone(),
            source,
        }),
    }
}

/// The settings to store: the fleet the manager's certificate proved, the manager's
/// endpoints (or the ones given on the command line if it lists none).
fn settings(answered: &request::Answered, given: &[String]) -> AgentConfig {
    let response = &answered.response;
    let managers = match response.manager_endpoints.is_empty() {
        true => given.to_vec(),
        false => response.manager_endpoints.clone(),
    };
    AgentConfig {
        version: CONFIG_VERSION,
        fleet: answered.fleet.clone(),
        node: response.node_name.clone(),
        pool: response.pool.clone(),
        managers,
        heartbeat_interval_secs: response.heartbeat_interval_secs,
        enrolled_at: OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("zero is a valid nanosecond"),
    }
}

/// Checks a `--manager` value; a clap value parser.
fn parse_endpoint(value: &str) -> Result<String, String> {
    opi_pki::channel::host_port(value)
        .map(|_| value.to_string())
        .map_err(|error| error.to_string())
}

/// Checks a `--name` value; a clap value parser.
fn parse_name(value: &str) -> Result<String, String> {
    validate_name(value)
        .map(|()| value.to_string())
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_enroll_over_an_existing_enrollment_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StatePaths::new(dir.path(), std::path::Path::new("state"));
        std::fs::create_dir_all(&paths.dir).unwrap();
        let config = AgentConfig {
            version: CONFIG_VERSION,
            fleet: "prod".into(),
            node: "worker-1".into(),
            pool: "workers".into(),
            managers: vec!["https://m1:7443".into()],
            heartbeat_interval_secs: 10,
            enrolled_at: OffsetDateTime::now_utc(),
        };
        config.store(&paths.config()).unwrap();
        let error = refuse_if_enrolled(&paths).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("worker-1") && message.contains("prod"),
            "{message}"
        );
        assert!(
            message.contains(&paths.dir.display().to_string()),
            "{message}"
        );
        assert_eq!(error.exit_code(), EXIT_USAGE);
    }

    #[test]
    fn node_names_are_checked_on_the_command_line() {
        assert!(parse_name("worker-1").is_ok());
        assert!(parse_name("Worker_1").is_err());
    }
}
