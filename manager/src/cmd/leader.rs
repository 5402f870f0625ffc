//! The loops `serve` runs beside its server for its replica: the leader's passes
//! (supervision, rollouts, pruning, audit checkpoints), fenced by its leader key, and the
//! announcements that tell agents whether this replica records their sessions.

use std::sync::Arc;
use std::time::Duration;

use opi_systemd::Notifier;
use tracing::{info, warn};

use crate::fleet::{Fleet, Pass};
use crate::replica::{as_leader, Replica};

/// Interval of the supervisor's pass over the fleet.
pub const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// Interval between prunings of old events.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Tells the connected agents each time this replica starts or stops recording their
/// sessions, so that they move to a replica that records them.
pub async fn announce(fleet: Arc<Fleet>, replica: Arc<Replica>) {
    let mut lost = replica.store_lost();
    while lost.changed().await.is_ok() {
        let recorded = lost.borrow_and_update().is_none();
        if recorded {
            let sessions = fleet.record_unrecorded_sessions().await;
            info!(
                sessions,
                "sessions accepted while the store was unreachable are recorded"
            );
        }
        fleet.announce_recording(recorded, replica.name());
    }
}

/// While this replica leads: runs the supervisor's pass and steps the rollouts every second,
/// prunes old events at start and every minute, and signs an audit checkpoint every
/// `checkpoints`. While it does not: supervises the nodes whose sessions it holds.
pub async fn supervise(
    fleet: Arc<Fleet>,
    replica: Arc<Replica>,
    notifier: Arc<Notifier>,
    checkpoints: Duration,
) {
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<std::time::Instant> = None;
    let mut last_checkpoint = std::time::Instant::now();
    let mut leading = false;
    loop {
        tick.tick().await;
        notifier.watchdog();
        if !replica.is_single() {
            // Node records and rollouts come through `Fleet::follow`'s watch; events and profiles
            // are read back each pass.
            if let Err(error) = fleet.read_back(!leading && replica.is_leader()).await {
                warn!(error = %error, "cannot read back the events and profiles");
                continue;
            }
        }
        // Checked before each pass, whose writes are then fenced (see `crate::replica`).
        let Some(lead) = replica.lead() else {
            leading = false;
            // The nodes whose sessions this replica holds are judged here, leader or not,
            // while it can record what it finds.
            if fleet.store_lost_since().is_none() {
                fleet.supervise(Pass::Held).await;
            }
            continue;
        };
        leading = true;
        as_leader(lead, async {
            fleet.supervise(Pass::Leader).await;
            fleet.advance_rollouts().await;
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(std::time::Instant::now());
                if let Err(error) = fleet.events().prune().await {
                    warn!(error = %error, "cannot prune old events");
                }
            }
            if last_checkpoint.elapsed() >= checkpoints {
                last_checkpoint = std::time::Instant::now();
                if let Err(error) = crate::audit::checkpoint::create_if_moved(&fleet).await {
                    warn!(error = %error, "cannot sign an audit checkpoint");
                }
            }
        })
        .await;
    }
}
