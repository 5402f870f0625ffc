//! `opictl whoami`: the identity the manager reads from your certificate.

use std::time::SystemTime;

use opi_proto::v1::WhoAmIResponse;
use serde::Serialize;

use crate::output::{self, fields, timestamp, Format};
use crate::{Context, Error};

/// The JSON shape of `opictl whoami`.
#[derive(Debug, Serialize)]
pub struct WhoAmIView {
    /// The caller's identity, `spiffe://FLEET/operator/NAME`.
    pub identity: String,
    /// The role in the caller's certificate.
    pub role: String,
    /// When the caller's certificate expires, RFC 3339.
    pub not_after: Option<String>,
    /// The manager that answered.
    pub manager: String,
}

/// Runs `opictl whoami`.
pub async fn run(context: &Context) -> Result<(), Error> {
    let mut client = context.connect().await?;
    let answer = client.who_am_i().await?;
    let view = WhoAmIView::new(answer, client.endpoint());

    match context.format {
        Format::Json => output::print_json(&view),
        Format::Table => output::print(&render(&view, SystemTime::now())),
    }
}

impl WhoAmIView {
    /// The manager's answer, with the endpoint that gave it.
    pub fn new(answer: WhoAmIResponse, manager: &str) -> Self {
        Self {
            identity: answer.identity,
            role: answer.role,
            not_after: timestamp(answer.not_after.as_ref()),
            manager: manager.to_string(),
        }
    }
}

fn render(view: &WhoAmIView, now: SystemTime) -> String {
    fields(&[
        ("identity", view.identity.clone()),
        ("role", view.role.clone()),
        (
            "certificate expires",
            output::when(view.not_after.as_deref(), now),
        ),
        ("manager", view.manager.clone()),
    ])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost_types::Timestamp;

    use super::*;

    #[test]
    fn whoami_shows_identity_role_and_certificate_expiry() {
        let answer = WhoAmIResponse {
            identity: "spiffe://prod/operator/alice".into(),
            role: "admin".into(),
            not_after: Some(Timestamp {
                seconds: 90_000,
                nanos: 0,
            }),
        };
        let view = WhoAmIView::new(answer, "https://m1:7443");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(3_600);

        let text = render(&view, now);
        assert!(
            text.contains("identity              spiffe://prod/operator/alice\n"),
            "{text}"
        );
        assert!(text.contains("role                  admin\n"), "{text}");
        assert!(
            text.contains("certificate expires   1970-01-02T01:00:00Z (in 24h)\n"),
            "{text}"
        );
    }
}
