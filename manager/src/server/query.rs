//! On-call queries: counts per pool and node filters.

use std::collections::BTreeMap;

use opi_proto::v1 as pb;

use crate::fleet::FleetError;
use crate::records::{ConditionStatus, ConfigStatus, Connectivity, Health, NodeRecord, NodeState};

/// Every state of the config axis, as `--config` accepts them.
const CONFIG_STATES: [ConfigStatus; 5] = [
    ConfigStatus::None,
    ConfigStatus::Applying,
    ConfigStatus::InSync,
    ConfigStatus::Failed,
    ConfigStatus::Drifted,
];

/// Node counts per pool, by connectivity, health and maintenance, sorted by pool; taken from
/// the records in place, so that a status call copies no node.
pub fn pool_counts<'a>(records: impl Iterator<Item = &'a NodeRecord>) -> Vec<pb::PoolStatus> {
    let mut pools: BTreeMap<&str, pb::PoolStatus> = BTreeMap::new();
    for record in records {
        let pool = pools.entry(&record.pool).or_insert_with(|| pb::PoolStatus {
            pool: record.pool.clone(),
            ..Default::default()
        });
        pool.nodes += 1;
        if record.state == NodeState::Revoked {
            pool.revoked += 1;
            continue;
        }
        if record.supervision.connectivity == Connectivity::Online {
            pool.online += 1;
        } else {
            pool.offline += 1;
        }
        match record.supervision.health {
            Health::Healthy => pool.healthy += 1,
            Health::Degraded => pool.degraded += 1,
            Health::Unknown => pool.unknown += 1,
        }
        if record.supervision.maintenance.is_some() {
            pool.maintenance += 1;
        }
    }
    pools.into_values().collect()
}

/// A checked `ListNodes` filter.
#[derive(Clone, Debug, Default)]
pub struct NodeQuery {
    pub pool: String,
    health: Option<Health>,
    online: Option<bool>,
    condition: Option<String>,
    config: Option<ConfigStatus>,
}

impl NodeQuery {
    /// Checks the request's filters, naming every bad one.
    pub fn parse(request: pb::ListNodesRequest) -> Result<Self, FleetError> {
        let mut problems = Vec::new();
        let health = match request.health.as_str() {
            "" => None,
            "healthy" => Some(Health::Healthy),
            "degraded" => Some(Health::Degraded),
            "unknown" => Some(Health::Unknown),
            other => {
                problems.push(format!(
                    "health `{other}` is not healthy, degraded or unknown"
                ));
                None
            }
        };
        let online = match request.connectivity.as_str() {
            "" => None,
            "online" => Some(true),
            "offline" => Some(false),
            other => {
                problems.push(format!("connectivity `{other}` is not online or offline"));
                None
            }
        };
        let config = match request.config.as_str() {
            "" => None,
            name => {
                let status = CONFIG_STATES.into_iter().find(|s| s.name() == name);
                if status.is_none() {
                    problems.push(format!(
                        "config `{name}` is not none, applying, in-sync, failed or drifted"
                    ));
                }
                status
            }
        };
        if !problems.is_empty() {
            return Err(FleetError::InvalidArgument(problems.join("; ")));
        }
        let condition = (!request.condition.is_empty()).then_some(request.condition);
        Ok(Self {
            pool: request.pool,
            health,
            online,
            condition,
            config,
        })
    }

    /// Whether a node passes every filter, judged on its record alone.
    pub fn matches(&self, record: &NodeRecord) -> bool {
        let sup = &record.supervision;
        let online = sup.connectivity == Connectivity::Online;
        (self.pool.is_empty() || self.pool == record.pool)
            && self.health.is_none_or(|h| h == sup.health)
            && self.online.is_none_or(|wanted| wanted == online)
            && self.config.is_none_or(|c| c == record.config.status)
            && self.condition.as_ref().is_none_or(|kind| {
                sup.conditions
                    .iter()
                    .any(|c| &c.kind == kind && c.status == ConditionStatus::Problem)
            })
    }
}
