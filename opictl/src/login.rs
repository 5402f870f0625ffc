//! `opictl login` and `opictl operator invite`: an admin invites an operator with a one-time
//! code; the operator's opictl makes a key on this machine, sends only a CSR with the code,
//! and writes the bundle with the short-lived certificate it gets back. The login checks the
//! manager against the CA pin printed with the code, as `opi-agent enroll` does.

use std::path::PathBuf;

use opi_pki::bundle::OperatorBundle;
use opi_pki::tls::{client_config, ManagerVerifier};
use opi_proto::v1::login_client::LoginClient;
use opi_proto::v1::{CreateLoginCodeRequest, LoginRequest};
use serde::Serialize;

use crate::cli::{InviteArgs, LoginArgs};
use crate::client::request;
use crate::output::{self, fields, timestamp, Format};
use crate::{Context, Error};

/// What `opictl operator invite -o json` prints; the code is shown once.
#[derive(Debug, Serialize)]
pub struct InvitedView {
    /// The operator invited.
    pub name: String,
    /// The role its certificate will carry.
    pub role: String,
    /// The one-time code, `ID.SECRET`.
    pub code: String,
    /// When the code stops working, RFC 3339.
    pub expires_at: Option<String>,
    /// The command the operator runs.
    pub login_command: String,
}

/// What `opictl login -o json` prints.
#[derive(Debug, Serialize)]
pub struct LoggedInView {
    /// The bundle written.
    pub bundle: String,
    /// The operator's identity.
    pub name: String,
    /// Its role.
    pub role: String,
    /// When the certificate expires, RFC 3339.
    pub not_after: Option<String>,
}

/// Runs `opictl operator invite`.
pub async fn invite(context: &Context, args: InviteArgs) -> Result<(), Error> {
    let message = CreateLoginCodeRequest {
        name: args.name.clone(),
        role: args.role.clone(),
        ttl_secs: args.ttl.as_secs(),
        cert_ttl_secs: args.cert_ttl.as_secs(),
    };
    let mut client = context.connect().await?;
    let answer = client.create_login_code(message).await?;
    // Login is served where the operator API is, which may not be the agents' endpoints.
    let endpoint = client.endpoint().to_string();
    let view = InvitedView {
        name: args.name,
        role: args.role,
        login_command: format!(
            "opictl login --manager {endpoint} --ca-pin {} --code-file CODE-FILE --out BUNDLE",
            answer.ca_pin
        ),
        code: answer.code,
        expires_at: timestamp(answer.expires_at.as_ref()),
    };
    match context.format {
        Format::Json => output::print_json(&view),
        Format::Table => output::print(&fields(&[
            ("operator", format!("{} (role {})", view.name, view.role)),
            ("code", view.code.clone()),
            ("expires", view.expires_at.clone().unwrap_or_default()),
            ("login with", view.login_command.clone()),
        ])),
    }
}

/// Runs `opictl login`.
pub async fn login(context: &Context, args: LoginArgs) -> Result<(), Error> {
    let manager = context
        .manager()
        .ok_or(crate::error::UsageError::LoginNeedsManager)?
        .to_string();
    let code = read_code(&args)?;
    let pin = args
        .ca_pin
        .parse()
        .map_err(|_| Error::BadEndpoint(args.ca_pin.clone()))?;
    let key = opi_pki::ca::generate_key().map_err(|e| Error::MakeKey(e.to_string()))?;
    let csr_der =
        opi_pki::csr::make_node_csr(&key, "operator").map_err(|e| Error::MakeKey(e.to_string()))?;

    let verifier = ManagerVerifier::with_pin(pin);
    let tls = client_config(verifier, None).map_err(|source| Error::BundleTls {
        path: args.out.clone(),
        source,
    })?;
    let channel = opi_pki::channel::connect(&manager, tls)
        .await
        .map_err(|error| match error {
            opi_pki::channel::ChannelError::BadEndpoint(url) => Error::BadEndpoint(url),
            opi_pki::channel::ChannelError::Connect { endpoint, source } => {
                Error::Connect { endpoint, source }
            }
        })?;
    let answer = LoginClient::new(channel)
        .login(request(LoginRequest { code, csr_der }))
        .await
        .map_err(|status| Error::failed("to log you in", &manager, status))?
        .into_inner();

    let bundle = OperatorBundle {
        endpoint: manager.clone(),
        fleet: answer.fleet,
        name: answer.name.clone(),
        role: answer.role.clone(),
        ca: answer.ca_bundle_pem,
        cert: answer.cert_chain_pem,
        key: key.serialize_pem(),
    };
    bundle.write(&args.out).map_err(Error::ReadBundle)?;
    let view = LoggedInView {
        bundle: args.out.display().to_string(),
        name: answer.name,
        role: answer.role,
        not_after: timestamp(answer.not_after.as_ref()),
    };
    match context.format {
        Format::Json => output::print_json(&view),
        Format::Table => output::print(&fields(&[
            (
                "logged in as",
                format!("{} (role {})", view.name, view.role),
            ),
            ("bundle", view.bundle),
            ("valid until", view.not_after.unwrap_or_default()),
        ])),
    }
}

/// The code from `--code-file` (`-`: standard input), else from `OPICTL_LOGIN_CODE`.
fn read_code(args: &LoginArgs) -> Result<String, Error> {
    let text = match &args.code_file {
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_line(&mut text)
                .map_err(|source| Error::ReadFile {
                    path: PathBuf::from("-"),
                    source,
                })?;
            text
        }
        Some(path) => std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.clone(),
            source,
        })?,
        None => std::env::var("OPICTL_LOGIN_CODE").map_err(|_| Error::BadLoginCode)?,
    };
    let code = text.trim().to_string();
    match code.split_once('.') {
        Some((id, secret)) if !id.is_empty() && !secret.is_empty() => Ok(code),
        _ => Err(Error::BadLoginCode),
    }
}
