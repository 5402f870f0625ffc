//! `opictl token create|list|revoke`: enrollment tokens.
//!
//! A token's secret exists in clear only in the answer to `token create`; listing and
//! revoking never see it.

pub mod args;
pub mod create;

use std::collections::BTreeMap;
use std::time::SystemTime;

use opi_proto::v1::Token;
use serde::Serialize;

use crate::cli::TokenCommand;
use crate::output::{self, system_time, timestamp, Format, Table};
use crate::{Context, Error};

/// Whether a token can still enroll a node, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    /// Can enroll a node now.
    Active,
    /// Past its expiry.
    Expired,
    /// Every use spent.
    UsedUp,
    /// Revoked by an operator.
    Revoked,
}

/// The JSON shape of a token in `token list` and `token revoke`.
#[derive(Debug, Serialize)]
pub struct TokenView {
    /// Token id, the public half of `ID.SECRET`.
    pub id: String,
    /// Pool the enrolled nodes join.
    pub pool: String,
    /// Labels given to enrolled nodes.
    pub labels: BTreeMap<String, String>,
    /// Uses allowed.
    pub uses: u32,
    /// Uses spent.
    pub used: u32,
    /// Derived from the fields below at the time of printing.
    pub state: TokenState,
    /// Creation time, RFC 3339.
    pub created_at: Option<String>,
    /// Expiry, RFC 3339.
    pub expires_at: Option<String>,
    /// Whether an operator revoked it.
    pub revoked: bool,
    /// Identity of the operator who created it.
    pub created_by: String,
    /// Free text from its creator.
    pub description: String,
    /// Nodes that enrolled with it.
    pub enrolled_nodes: Vec<String>,
}

impl TokenState {
    /// A token's state at `now`. Revocation is reported first, as an operator's decision, then
    /// spent uses, then expiry.
    pub fn of(token: &Token, now: SystemTime) -> Self {
        let expired = system_time(token.expires_at.as_ref()).is_none_or(|at| at <= now);
        if token.revoked {
            TokenState::Revoked
        } else if token.used >= token.uses {
            TokenState::UsedUp
        } else if expired {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }

    /// How the state reads in tables.
    pub fn name(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::UsedUp => "used up",
            TokenState::Revoked => "revoked",
        }
    }
}

impl TokenView {
    /// A token as seen at `now`.
    pub fn new(token: Token, now: SystemTime) -> Self {
        let state = TokenState::of(&token, now);
        Self {
            id: token.id,
            pool: token.pool,
            labels: token.labels.into_iter().collect(),
            uses: token.uses,
            used: token.used,
            state,
            created_at: timestamp(token.created_at.as_ref()),
            expires_at: timestamp(token.expires_at.as_ref()),
            revoked: token.revoked,
            created_by: token.created_by,
            description: token.description,
            enrolled_nodes: token.enrolled_nodes,
        }
    }
}

/// Runs `opictl token …`.
pub async fn run(context: &Context, command: TokenCommand) -> Result<(), Error> {
    let now = SystemTime::now();
    match command {
        TokenCommand::Create(args) => create::run(context, args).await,
        TokenCommand::List => {
            let tokens = context.connect().await?.list_tokens().await?;
            let views = tokens
                .into_iter()
                .map(|token| TokenView::new(token, now))
                .collect();
            print_tokens(context.format, views)
        }
        TokenCommand::Revoke { id } => {
            let token = context.connect().await?.revoke_token(&id).await?;
            print_tokens(context.format, vec![TokenView::new(token, now)])
        }
    }
}

fn print_tokens(format: Format, views: Vec<TokenView>) -> Result<(), Error> {
    match format {
        Format::Json => output::print_json(&views),
        Format::Table if views.is_empty() => output::print("no tokens\n"),
        Format::Table => output::print(&table(&views, SystemTime::now()).render()),
    }
}

/// Tokens as a table, expiry relative to `now`.
pub fn table(views: &[TokenView], now: SystemTime) -> Table {
    let headers = [
        "ID",
        "POOL",
        "USES",
        "EXPIRES",
        "STATE",
        "LABELS",
        "CREATED-BY",
    ];
    let mut table = Table::new(&headers);
    for view in views {
        let labels: Vec<String> = view
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        table.row(vec![
            view.id.clone(),
            view.pool.clone(),
            format!("{}/{}", view.used, view.uses),
            output::relative_rfc3339(view.expires_at.as_deref(), now).unwrap_or_default(),
            view.state.name().into(),
            labels.join(","),
            view.created_by.clone(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost_types::Timestamp;

    use super::*;

    const NOW: u64 = 1_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn token(uses: u32, used: u32, expires_in: i64, revoked: bool) -> Token {
        Token {
            id: "k3x9q".into(),
            pool: "workers".into(),
            uses,
            used,
            revoked,
            expires_at: Some(Timestamp {
                seconds: NOW as i64 + expires_in,
                nanos: 0,
            }),
            labels: [("zone".to_string(), "a".to_string())].into(),
            created_by: "spiffe://prod/operator/alice".into(),
            ..Token::default()
        }
    }

    #[test]
    fn unexpired_token_with_uses_left_is_active() {
        assert_eq!(
            TokenState::of(&token(2, 1, 60, false), now()),
            TokenState::Active
        );
    }

    #[test]
    fn token_past_its_expiry_is_expired() {
        assert_eq!(
            TokenState::of(&token(1, 0, -1, false), now()),
            TokenState::Expired
        );
        assert_eq!(
            TokenState::of(&token(1, 0, 0, false), now()),
            TokenState::Expired
        );
    }

    #[test]
    fn token_without_expiry_counts_as_expired() {
        let mut token = token(1, 0, 60, false);
        token.expires_at = None;

        assert_eq!(TokenState::of(&token, now()), TokenState::Expired);
    }

    #[test]
    fn token_with_every_use_spent_is_used_up_even_once_expired() {
        assert_eq!(
            TokenState::of(&token(1, 1, 60, false), now()),
            TokenState::UsedUp
        );
        assert_eq!(
            TokenState::of(&token(1, 1, -60, false), now()),
            TokenState::UsedUp
        );
    }

    #[test]
    fn revoked_token_is_revoked_whatever_else_holds() {
        assert_eq!(
            TokenState::of(&token(1, 1, -60, true), now()),
            TokenState::Revoked
        );
        assert_eq!(
            TokenState::of(&token(3, 0, 60, true), now()),
            TokenState::Revoked
        );
    }

    #[test]
    fn token_table_shows_uses_expiry_state_and_labels() {
        let view = TokenView::new(token(3, 1, 3600, false), now());

        let text = table(&[view], now()).render();
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("k3x9q   workers   1/3    in 1h     active   zone=a"),
            "{text}"
        );
    }

    #[test]
    fn token_json_has_state_and_no_secret() {
        let json = serde_json::to_value(TokenView::new(token(1, 1, 60, false), now())).unwrap();

        assert_eq!(json["state"], "used_up");
        assert!(json.get("secret").is_none());
    }
}
