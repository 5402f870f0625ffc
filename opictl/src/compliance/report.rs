//! `opictl compliance report` and `opictl compliance verify`: the manager signs the report;
//! opictl writes the document, its detached signature, the signer's chain and the Markdown
//! rendering side by side, checks the signature against the operator's own fleet CA before
//! saying it is done, and verifies such a set offline against a root CA file.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use opi_pki::signature::{self, Signer};
use serde::Serialize;

use crate::cli::{ComplianceReportArgs, ComplianceVerifyArgs};
use crate::output::{self, fields, Format};
use crate::{Context, Error};

/// The document, as written in the output directory.
pub const DOCUMENT: &str = "compliance-report.json";
/// Its detached signature (DER).
pub const SIGNATURE: &str = "compliance-report.json.sig";
/// The signer certificate then the issuing CA (PEM).
pub const CHAIN: &str = "compliance-report.chain.pem";
/// The rendering for people.
pub const MARKDOWN: &str = "compliance-report.md";

/// What `opictl compliance report -o json` prints.
#[derive(Debug, Serialize)]
pub struct WrittenView {
    /// The document's path.
    pub document: String,
    /// The signature's path.
    pub signature: String,
    /// The chain's path.
    pub chain: String,
    /// The Markdown rendering's path.
    pub rendering: String,
    /// SHA-256 of the document.
    pub sha256: String,
    /// Who signed it.
    pub signer: SignerView,
}

/// What `opictl compliance verify -o json` prints.
#[derive(Debug, Serialize)]
pub struct VerifiedView {
    /// The document verified.
    pub verified: String,
    /// Its SHA-256.
    pub sha256: String,
    /// Who signed it.
    pub signer: SignerView,
    /// The document's own summary.
    pub summary: serde_json::Value,
}

/// A verified signer.
#[derive(Debug, Serialize)]
pub struct SignerView {
    /// The manager replica, `spiffe://FLEET/manager/REPLICA`.
    pub identity: String,
    /// Its certificate's serial.
    pub serial: String,
    /// The issuing CA that signed its certificate.
    pub issuer: String,
    /// The pin of the root CA the chain led to.
    pub root_pin: String,
}

/// Asks the manager for a signed report and writes it under `args.out`.
pub async fn write(context: &Context, args: ComplianceReportArgs) -> Result<(), Error> {
    let (bundle, _) = context.bundle()?;
    let pool = args.pool.unwrap_or_default();
    let signed = context
        .connect()
        .await?
        .get_compliance_report(&pool, args.history)
        .await?;
    let signer = check(
        &signed.document,
        &signed.signature,
        &signed.chain_pem,
        &bundle.ca,
    )?;

    let out = &args.out;
    fs::create_dir_all(out).map_err(|source| Error::WriteReport {
        path: out.clone(),
        source,
    })?;
    let files: [(&str, &[u8]); 4] = [
        (DOCUMENT, &signed.document),
        (SIGNATURE, &signed.signature),
        (CHAIN, signed.chain_pem.as_bytes()),
        (MARKDOWN, signed.markdown.as_bytes()),
    ];
    for (name, bytes) in files {
        let path = out.join(name);
        fs::write(&path, bytes).map_err(|source| Error::WriteReport { path, source })?;
    }
    let document = out.join(DOCUMENT);
    let view = WrittenView {
        document: document.display().to_string(),
        signature: out.join(SIGNATURE).display().to_string(),
        chain: out.join(CHAIN).display().to_string(),
        rendering: out.join(MARKDOWN).display().to_string(),
        sha256: sha256_hex(&signed.document),
        signer: SignerView::from(&signer),
    };
    if context.format == Format::Json {
        return output::print_json(&view);
    }
    let verify_with = format!(
        "opictl compliance verify {} --ca ROOT-CA.pem",
        view.document
    );
    output::print(&fields(&[
        ("document", view.document),
        ("signature", view.signature),
        ("chain", view.chain),
        ("rendering", view.rendering),
        ("sha256", view.sha256),
        ("signed by", describe(&signer)),
        ("verify with", verify_with),
    ]))
}

/// Verifies a written report against the root CA file `args.ca`.
pub fn verify(context: &Context, args: ComplianceVerifyArgs) -> Result<(), Error> {
    let beside = |name: &str| args.file.with_file_name(name);
    let signature_path = args.signature.clone().unwrap_or_else(|| {
        let mut name = args.file.as_os_str().to_os_string();
        name.push(".sig");
        PathBuf::from(name)
    });
    let chain_path = args.chain.clone().unwrap_or_else(|| beside(CHAIN));
    let document = read(&args.file)?;
    let signature = read(&signature_path)?;
    let chain = text(&chain_path)?;
    let roots = text(&args.ca)?;

    let signer = check(&document, &signature, &chain, &roots)?;
    let summary = serde_json::from_slice::<serde_json::Value>(&document)
        .ok()
        .map(|doc| doc["summary"].clone())
        .unwrap_or_default();
    if context.format == Format::Json {
        return output::print_json(&VerifiedView {
            verified: args.file.display().to_string(),
            sha256: sha256_hex(&document),
            signer: SignerView::from(&signer),
            summary,
        });
    }
    output::print(&fields(&[
        ("verified", args.file.display().to_string()),
        ("sha256", sha256_hex(&document)),
        ("signed by", describe(&signer)),
        ("root CA", signer.root_pin.clone()),
        (
            "nodes",
            format!(
                "{} ({} with evidence, {} compliant, {} exception(s), {} expired)",
                summary["nodes"],
                summary["with_evidence"],
                summary["compliant"],
                summary["exceptions"],
                summary["expired_exceptions"]
            ),
        ),
    ]))
}

/// Checks `signature` over `document` with the chain against `roots`, at the time the
/// document says it was made.
fn check(document: &[u8], signature: &[u8], chain: &str, roots: &str) -> Result<Signer, Error> {
    let generated_at = generated_at(document)?;
    signature::verify(document, signature, chain, roots, generated_at).map_err(Error::Unverified)
}

/// `generated_at` of the document.
fn generated_at(document: &[u8]) -> Result<SystemTime, Error> {
    let bad = |why: &str| Error::BadReport(why.to_string());
    let value: serde_json::Value =
        serde_json::from_slice(document).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let text = value["generated_at"]
        .as_str()
        .ok_or_else(|| bad("it has no generated_at"))?;
    humantime::parse_rfc3339(text).map_err(|e| bad(&format!("generated_at {text:?}: {e}")))
}

impl From<&Signer> for SignerView {
    fn from(signer: &Signer) -> Self {
        Self {
            identity: signer.identity.uri(),
            serial: signer.serial.clone(),
            issuer: signer.issuer.clone(),
            root_pin: signer.root_pin.clone(),
        }
    }
}

fn describe(signer: &Signer) -> String {
    format!(
        "{} (certificate {}, issued by {})",
        signer.identity.uri(),
        signer.serial,
        signer.issuer
    )
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|source| Error::ReadReport {
        path: path.to_path_buf(),
        source,
    })
}

fn text(path: &Path) -> Result<String, Error> {
    String::from_utf8(read(path)?)
        .map_err(|_| Error::BadReport(format!("{} is not PEM text", path.display())))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
