//! `opictl token create`: makes a token and prints the one line that enrolls a node with it.
//!
//! The secret is printed here and nowhere else: it is never logged, and the manager keeps only
//! its hash.

use std::time::SystemTime;

use opi_proto::v1::{CreateTokenRequest, CreateTokenResponse};
use serde::Serialize;

use super::args::collect_labels;
use crate::cli::TokenCreateArgs;
use crate::output::{self, fields, timestamp, Format};
use crate::{Context, Error};

/// The tip printed under the enroll line.
pub const TOKEN_TIP: &str = "tip: `--token-file FILE` or `--token -` (read from stdin) keeps \
                             the token out of process lists and shell history";

/// The JSON answer of `opictl token create`. Its `Debug` hides the secret.
#[derive(Serialize)]
pub struct CreatedView {
    /// Token id, the public half of the token.
    pub id: String,
    /// Pool the enrolled nodes join.
    pub pool: String,
    /// How many nodes can enroll with it.
    pub uses: u32,
    /// Expiry, RFC 3339.
    pub expires_at: Option<String>,
    /// The whole token, `ID.SECRET`.
    pub secret: String,
    /// `sha256:` pin of the fleet root CA.
    pub ca_pin: String,
    /// Every endpoint the agent may use.
    pub manager_endpoints: Vec<String>,
    /// The ready-to-paste `opi-agent enroll` command line.
    pub enroll_command: String,
}

impl std::fmt::Debug for CreatedView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedView")
            .field("id", &self.id)
            .field("pool", &self.pool)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Runs `opictl token create`.
pub async fn run(context: &Context, args: TokenCreateArgs) -> Result<(), Error> {
    let request = CreateTokenRequest {
        labels: collect_labels(args.labels)?.into_iter().collect(),
        pool: args.pool,
        ttl_secs: args.ttl.as_secs(),
        uses: args.uses,
        description: args.description.unwrap_or_default(),
    };

    let mut client = context.connect().await?;
    let created = client.create_token(request).await?;
    let view = CreatedView::new(created, client.endpoint());

    match context.format {
        Format::Json => output::print_json(&view),
        Format::Table => output::print(&render(&view, SystemTime::now())),
    }
}

impl CreatedView {
    /// The answer, with `fallback` as the only endpoint if the manager listed none.
    pub fn new(created: CreateTokenResponse, fallback: &str) -> Self {
        let token = created.token.unwrap_or_default();
        let mut endpoints = created.manager_endpoints;
        if endpoints.is_empty() {
            endpoints.push(fallback.to_string());
        }
        let enroll_command = enroll_line(&endpoints, &created.ca_pin, &created.secret);
        Self {
            id: token.id,
            pool: token.pool,
            uses: token.uses,
            expires_at: timestamp(token.expires_at.as_ref()),
            secret: created.secret,
            ca_pin: created.ca_pin,
            manager_endpoints: endpoints,
            enroll_command,
        }
    }
}

/// `opi-agent enroll --manager URL… --ca-pin PIN --token ID.SECRET`, every value quoted for a
/// POSIX shell when it needs to be.
pub fn enroll_line(endpoints: &[String], ca_pin: &str, secret: &str) -> String {
    let mut line = String::from("opi-agent enroll");
    for endpoint in endpoints {
        line.push_str(&format!(" --manager {}", shell_quote(endpoint)));
    }
    line.push_str(&format!(" --ca-pin {}", shell_quote(ca_pin)));
    line.push_str(&format!(" --token {}", shell_quote(secret)));
    line
}

/// A word as a POSIX shell reads it back unchanged: bare when it is made of safe characters,
/// single-quoted otherwise. What the manager sends is pasted into a root shell on a node.
fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Id, pool, uses and expiry, then the enroll line and the tip.
fn render(view: &CreatedView, now: SystemTime) -> String {
    let mut text = fields(&[
        ("token", view.id.clone()),
        ("pool", view.pool.clone()),
        ("uses", view.uses.to_string()),
        ("expires", output::when(view.expires_at.as_deref(), now)),
    ]);
    // Escape sequences from the manager must not reach the terminal the line is copied from.
    let enroll = output::sanitize(&view.enroll_command);
    text.push_str(&format!("\n{enroll}\n\n{TOKEN_TIP}\n"));
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opi_proto::v1::Token;
    use prost_types::Timestamp;

    use super::*;

    const PIN: &str = "sha256:4f2c0a9e";

    fn created(endpoints: &[&str]) -> CreateTokenResponse {
        CreateTokenResponse {
            token: Some(Token {
                id: "k3x9q".into(),
                pool: "workers".into(),
                uses: 1,
                expires_at: Some(Timestamp {
                    seconds: 3_600,
                    nanos: 0,
                }),
                ..Token::default()
            }),
            secret: "k3x9q.s3cr3t".into(),
            manager_endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            ca_pin: PIN.into(),
        }
    }

    #[test]
    fn enroll_line_repeats_manager_for_each_endpoint() {
        let endpoints = ["https://m1:7443".to_string(), "https://m2:7443".to_string()];

        assert_eq!(
            enroll_line(&endpoints, PIN, "k3x9q.s3cr3t"),
            "opi-agent enroll --manager https://m1:7443 --manager https://m2:7443 \
             --ca-pin sha256:4f2c0a9e --token k3x9q.s3cr3t"
        );
    }

    #[test]
    fn enroll_line_quotes_values_a_shell_would_interpret() {
        let endpoints = ["https://m1:7443;reboot".to_string()];

        let line = enroll_line(&endpoints, PIN, "it's");
        assert!(
            line.contains("--manager 'https://m1:7443;reboot'"),
            "{line}"
        );
        assert!(line.ends_with(r"--token 'it'\''s'"), "{line}");
    }

    #[test]
    fn enroll_line_quotes_ipv6_endpoints_so_brackets_are_not_globbed() {
        let line = enroll_line(&["https://[::1]:7443".to_string()], PIN, "a.b");

        assert!(line.contains("--manager 'https://[::1]:7443' "), "{line}");
    }

    #[test]
    fn created_view_falls_back_to_the_dialled_endpoint() {
        let view = CreatedView::new(created(&[]), "https://dialled:7443");

        assert_eq!(view.manager_endpoints, ["https://dialled:7443"]);
        assert!(view
            .enroll_command
            .contains("--manager https://dialled:7443 "));
    }

    #[test]
    fn created_json_has_every_documented_key() {
        let view = CreatedView::new(created(&["https://m1:7443"]), "https://unused");
        let json = serde_json::to_value(&view).unwrap();

        let keys = [
            "id",
            "pool",
            "uses",
            "expires_at",
            "secret",
            "ca_pin",
            "manager_endpoints",
        ];
        for key in keys.into_iter().chain(["enroll_command"]) {
            assert!(json.get(key).is_some(), "missing `{key}` in {json}");
        }
        assert_eq!(json["expires_at"], "1970-01-01T01:00:00Z");
        assert_eq!(json["secret"], "k3x9q.s3cr3t");
    }

    #[test]
    fn created_view_debug_hides_the_secret() {
        let view = CreatedView::new(created(&["https://m1:7443"]), "https://unused");

        assert!(!format!("{view:?}").contains("s3cr3t"));
    }

    #[test]
    fn created_table_ends_with_enroll_line_then_tip() {
        let view = CreatedView::new(created(&["https://m1:7443"]), "https://unused");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(60);

        let text = render(&view, now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            text.contains("expires   1970-01-01T01:00:00Z (in 59m)\n"),
            "{text}"
        );
        assert_eq!(lines[lines.len() - 3], view.enroll_command);
        assert_eq!(lines[lines.len() - 1], TOKEN_TIP);
    }
}
