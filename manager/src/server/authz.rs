//! Who may do what: the one table of operator permissions (mirrored in the README).

use opi_pki::Role;

use Role::{Admin, Alerting, Operator, Viewer};

/// Every operator call, named as in `opictl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Status,
    ListNodes,
    ShowNode,
    RevokeNode,
    RemoveNode,
    CreateToken,
    ListTokens,
    RevokeToken,
    ListAudit,
    AuditCheckpoint,
    InviteOperator,
    Watch,
    ListEvents,
    Maintenance,
    MoveNode,
    SetProfile,
    ShowProfile,
    RolloutStatus,
    RolloutAction,
    ShowCompliance,
    ComplianceReport,
    RotateNode,
    AllowReenroll,
    WhoAmI,
}

impl Action {
    /// Every action, in table order.
    pub const ALL: [Action; 24] = [
        Action::Status,
        Action::ListNodes,
        Action::ShowNode,
        Action::RevokeNode,
        Action::RemoveNode,
        Action::CreateToken,
        Action::ListTokens,
        Action::RevokeToken,
        Action::ListAudit,
        Action::AuditCheckpoint,
        Action::InviteOperator,
        Action::Watch,
        Action::ListEvents,
        Action::Maintenance,
        Action::MoveNode,
        Action::SetProfile,
        Action::ShowProfile,
        Action::RolloutStatus,
        Action::RolloutAction,
        Action::ShowCompliance,
        Action::ComplianceReport,
        Action::RotateNode,
        Action::AllowReenroll,
        Action::WhoAmI,
    ];

    /// The roles allowed to perform this action.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Action::Status | Action::ListNodes | Action::ShowNode => &[Admin, Operator, Viewer],
            Action::ListTokens => &[Admin, Operator, Viewer],
            Action::CreateToken | Action::RevokeToken => &[Admin, Operator],
            Action::RevokeNode => &[Admin, Operator],
            Action::RemoveNode => &[Admin],
            Action::ListAudit => &[Admin, Operator],
            Action::AuditCheckpoint => &[Admin, Operator],
            Action::InviteOperator => &[Admin],
            Action::Watch => &[Admin, Operator, Viewer, Alerting],
            Action::ListEvents => &[Admin, Operator, Viewer],
            Action::Maintenance | Action::MoveNode => &[Admin, Operator],
            Action::SetProfile => &[Admin, Operator],
            Action::ShowProfile => &[Admin, Operator, Viewer],
            Action::RolloutStatus => &[Admin, Operator, Viewer],
            Action::RolloutAction => &[Admin, Operator],
            Action::ShowCompliance => &[Admin, Operator, Viewer],
            Action::ComplianceReport => &[Admin, Operator],
            Action::RotateNode | Action::AllowReenroll => &[Admin, Operator],
            Action::WhoAmI => &[Admin, Operator, Viewer, Alerting],
        }
    }

    /// What the action does, as said in refusals ("role viewer may not create tokens").
    pub fn describe(self) -> &'static str {
        match self {
            Action::Status => "read fleet status",
            Action::ListNodes => "list nodes",
            Action::ShowNode => "show nodes",
            Action::RevokeNode => "revoke nodes",
            Action::RemoveNode => "remove nodes",
            Action::CreateToken => "create tokens",
            Action::ListTokens => "list tokens",
            Action::RevokeToken => "revoke tokens",
            Action::ListAudit => "read the audit log",
            Action::AuditCheckpoint => "sign audit checkpoints",
            Action::InviteOperator => "invite operators",
            Action::Watch => "watch events",
            Action::ListEvents => "list node events",
            Action::Maintenance => "put nodes in maintenance",
            Action::MoveNode => "move nodes between pools",
            Action::SetProfile => "set pool profiles",
            Action::ShowProfile => "read pool profiles",
            Action::RolloutStatus => "read rollouts",
            Action::RolloutAction => "pause, resume, abort or undo rollouts",
            Action::ShowCompliance => "read compliance evidence",
            Action::ComplianceReport => "sign compliance reports",
            Action::RotateNode => "rotate node certificates",
            Action::AllowReenroll => "allow nodes to re-enroll",
            Action::WhoAmI => "ask who it is",
        }
    }

    /// Whether `role` may perform this action.
    pub fn allows(self, role: Role) -> bool {
        self.roles().contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_may_do_everything() {
        assert!(Action::ALL.iter().all(|a| a.allows(Admin)));
    }

    #[test]
    fn viewer_cannot_create_tokens_or_revoke() {
        for action in [
            Action::CreateToken,
            Action::RevokeToken,
            Action::RevokeNode,
            Action::RemoveNode,
        ] {
            assert!(!action.allows(Viewer), "{action:?}");
        }
        assert!(Action::ListNodes.allows(Viewer));
    }

    #[test]
    fn viewers_read_rollouts_and_only_admins_and_operators_act_on_them() {
        assert!(Action::RolloutStatus.allows(Viewer));
        assert!(!Action::RolloutAction.allows(Viewer));
        assert!(Action::RolloutAction.allows(Operator));
    }

    #[test]
    fn viewers_read_compliance_evidence_but_only_operators_sign_reports() {
        assert!(Action::ShowCompliance.allows(Viewer));
        assert!(!Action::ComplianceReport.allows(Viewer));
        assert!(Action::ComplianceReport.allows(Operator));
        assert!(!Action::ShowCompliance.allows(Alerting));
    }

    /// The README's role table: one row per action, `yes`/`no` per role in this order.
    const README: &str = include_str!("../../../README.md");
    const README_ROLES: [Role; 4] = [Admin, Operator, Viewer, Alerting];

    #[test]
    fn the_readme_table_is_the_code_table() {
        let section = README
            .split("## Who may do what")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("README has a `Who may do what` section");
        let rows: Vec<Vec<&str>> = section
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        let named: Vec<String> = rows
            .iter()
            .map(|r| r[0].trim_matches('`').to_string())
            .collect();
        let actions: Vec<String> = Action::ALL.iter().map(|a| format!("{a:?}")).collect();
        assert_eq!(named, actions, "README rows must be Action::ALL, in order");
        for (row, action) in rows.iter().zip(Action::ALL) {
            let cells = &row[2..];
            for (cell, role) in cells.iter().zip(README_ROLES) {
                let yes = *cell == "yes";
                assert!(
                    yes || *cell == "no",
                    "{action:?}: `{cell}` is neither yes nor no"
                );
                assert_eq!(
                    yes,
                    action.allows(role),
                    "README says {cell} for {action:?} and {role}"
                );
            }
        }
    }

    #[test]
    fn alerting_can_only_watch() {
        let allowed: Vec<_> = Action::ALL
            .into_iter()
            .filter(|a| a.allows(Alerting))
            .collect();
        assert_eq!(allowed, vec![Action::Watch, Action::WhoAmI]);
    }
}
