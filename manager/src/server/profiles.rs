//! The profile calls of the Operator service: set, show and diff, secrets redacted in every
//! answer.

use opi_profile::Profile;
use opi_proto::v1 as pb;
use similar::TextDiff;

use super::convert::profile_to_proto;
use crate::fleet::{Fleet, FleetError};
use crate::records::ProfileRecord;
use crate::rollout::{Budget, Strategy};

/// Validates and stores a pool's profile; answers with the generation now in force.
pub async fn set(
    fleet: &Fleet,
    request: pb::SetProfileRequest,
    actor: &str,
    from: &str,
) -> Result<pb::ProfileInfo, FleetError> {
    let strategy = strategy_from_proto(&request.pool, request.strategy)?;
    let hex = |bytes: &[u8]| data_encoding::HEXLOWER.encode(bytes);
    let signatures = request
        .signatures
        .iter()
        .map(|s| crate::records::SignatureRecord {
            public_key: hex(&s.public_key),
            signature: hex(&s.signature),
        })
        .collect();
    let outcome = fleet
        .set_profile(
            &request.pool,
            &request.yaml,
            strategy,
            actor,
            from,
            signatures,
        )
        .await?;
    Ok(info(&outcome.profile, outcome.changed))
}

/// One generation of a pool's profile, the latest when none is named.
pub async fn get(
    fleet: &Fleet,
    request: pb::GetProfileRequest,
) -> Result<pb::ProfileInfo, FleetError> {
    let profile = fleet.profile(&request.pool, request.generation).await?;
    Ok(info(&profile, false))
}

/// A unified diff of two redacted generations, or of the latest and a draft.
pub async fn diff(
    fleet: &Fleet,
    request: pb::DiffProfileRequest,
) -> Result<pb::DiffProfileResponse, FleetError> {
    let pool = request.pool.as_str();
    let to = fleet.profile(pool, request.to).await?;
    if !request.draft_yaml.is_empty() {
        let draft = Profile::from_yaml(&request.draft_yaml).map_err(|errors| {
            FleetError::InvalidProfile {
                pool: pool.into(),
                problems: errors.to_string(),
            }
        })?;
        let from_label = format!("{pool} generation {}", to.generation);
        let diff = unified(
            &redacted(&to),
            &draft.to_yaml_redacted(),
            &from_label,
            "draft",
        );
        return Ok(pb::DiffProfileResponse {
            pool: pool.into(),
            from: to.generation,
            to: 0,
            diff,
        });
    }

    let from = match request.from {
        0 => fleet.previous_profile(pool, to.generation).await?,
        generation => Some(fleet.profile(pool, generation).await?),
    };
    let (before, from_label, from_generation) = match &from {
        Some(p) => (
            redacted(p),
            format!("{pool} generation {}", p.generation),
            p.generation,
        ),
        None => (String::new(), format!("{pool} (no earlier generation)"), 0),
    };
    let to_label = format!("{pool} generation {}", to.generation);
    Ok(pb::DiffProfileResponse {
        pool: pool.into(),
        from: from_generation,
        to: to.generation,
        diff: unified(&before, &redacted(&to), &from_label, &to_label),
    })
}

/// The strategy a request asks for; the defaults when it names none.
fn strategy_from_proto(
    pool: &str,
    strategy: Option<pb::RolloutStrategy>,
) -> Result<Strategy, FleetError> {
    let Some(asked) = strategy else {
        return Ok(Strategy::default());
    };
    let invalid = |problems: String| FleetError::InvalidStrategy {
        pool: pool.into(),
        problems,
    };
    let max_unavailable = match asked.max_unavailable.as_str() {
        "" => Strategy::default().max_unavailable,
        text => text.parse::<Budget>().map_err(invalid)?,
    };
    let failure_domain = Some(asked.failure_domain).filter(|label| !label.is_empty());
    Ok(Strategy {
        canary: asked.canary,
        max_unavailable,
        failure_domain,
        settle_secs: asked.settle_secs,
        failure_budget: asked.failure_budget,
    })
}

fn info(profile: &ProfileRecord, changed: bool) -> pb::ProfileInfo {
    profile_to_proto(profile, redacted(profile), changed)
}

/// The stored document with its secrets redacted. Stored documents were validated before
/// they were stored; one that no longer parses (written by a newer manager) is withheld.
fn redacted(profile: &ProfileRecord) -> String {
    match Profile::from_yaml(&profile.yaml) {
        Ok(parsed) => parsed.to_yaml_redacted(),
        Err(errors) => format!(
            "# generation {} does not parse with this opi-manager, not shown: {}\n",
            profile.generation,
            errors.to_string().lines().next().unwrap_or_default()
        ),
    }
}

/// A unified diff with three lines of context; empty when the documents are equal.
fn unified(before: &str, after: &str, from: &str, to: &str) -> String {
    if before == after {
        return String::new();
    }
    TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(from, to)
        .to_string()
}
