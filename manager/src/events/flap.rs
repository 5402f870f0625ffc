//! Flap damping. A condition that changes status `FLAP_THRESHOLD` times within `FLAP_WINDOW`
//! is flapping: one `flapping` event says so, its further changes are not emitted, and it
//! counts as a problem for the node's health, until it has not changed for `CALM_AFTER`; then
//! one event says it is stable again, followed by its final status if that differs from the
//! last one emitted.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Changes within the window that make a condition flapping.
pub const FLAP_THRESHOLD: usize = 5;
/// Window in which changes are counted.
pub const FLAP_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Quiet time after which a flapping condition is stable again.
pub const CALM_AFTER: Duration = Duration::from_secs(5 * 60);

/// What to do with one condition change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlapVerdict {
    /// Emit the change as usual.
    Emit,
    /// The condition just started flapping after `changes` changes: emit a flapping event.
    StartFlapping { changes: usize },
    /// The condition is flapping: do not emit.
    Suppress,
}

#[derive(Debug, Default)]
struct Track {
    changes: VecDeque<Instant>,
    flapping: bool,
    /// Status in the last emitted condition event.
    emitted: String,
}

/// Change history of every (node, condition) pair.
#[derive(Debug, Default)]
pub struct FlapDetector {
    tracks: HashMap<(String, String), Track>,
}

/// A condition that became stable: the status last emitted for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calmed {
    pub node: String,
    pub condition: String,
    pub emitted: String,
}

impl FlapDetector {
    /// Records a change of `condition` on `node` from `from` to `to`.
    pub fn on_change(
        &mut self,
        node: &str,
        condition: &str,
        from: &str,
        to: &str,
        now: Instant,
    ) -> FlapVerdict {
        let track = self
            .tracks
            .entry((node.into(), condition.into()))
            .or_default();
        if track.emitted.is_empty() {
            track.emitted = from.into();
        }
        track.changes.push_back(now);
        while track
            .changes
            .front()
            .is_some_and(|t| now.duration_since(*t) > FLAP_WINDOW)
        {
            track.changes.pop_front();
        }
        if track.flapping {
            return FlapVerdict::Suppress;
        }
        if track.changes.len() >= FLAP_THRESHOLD {
            track.flapping = true;
            return FlapVerdict::StartFlapping {
                changes: track.changes.len(),
            };
        }
        track.emitted = to.into();
        FlapVerdict::Emit
    }

    /// Whether `condition` on `node` is flapping now.
    pub fn is_flapping(&self, node: &str, condition: &str) -> bool {
        self.tracks
            .get(&(node.into(), condition.into()))
            .is_some_and(|t| t.flapping)
    }

    /// Flapping conditions quiet for `CALM_AFTER`; they are stable again from now on.
    pub fn calm_down(&mut self, now: Instant) -> Vec<Calmed> {
        let mut calmed = Vec::new();
        for ((node, condition), track) in &mut self.tracks {
            let quiet = track
                .changes
                .back()
                .is_none_or(|t| now.duration_since(*t) >= CALM_AFTER);
            if track.flapping && quiet {
                track.flapping = false;
                track.changes.clear();
                calmed.push(Calmed {
                    node: node.clone(),
                    condition: condition.clone(),
                    emitted: track.emitted.clone(),
                });
            }
        }
        calmed
    }

    /// Records the status emitted after a calm-down.
    pub fn set_emitted(&mut self, node: &str, condition: &str, status: &str) {
        if let Some(track) = self.tracks.get_mut(&(node.into(), condition.into())) {
            track.emitted = status.into();
        }
    }

    /// Forgets a node.
    pub fn forget(&mut self, node: &str) {
        self.tracks.retain(|(n, _), _| n != node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flip(detector: &mut FlapDetector, i: usize, now: Instant) -> FlapVerdict {
        let (from, to) = if i.is_multiple_of(2) {
            ("ok", "problem")
        } else {
            ("problem", "ok")
        };
        detector.on_change("n1", "DiskPressure:/var", from, to, now)
    }

    #[test]
    fn fifth_change_in_window_starts_flapping_then_suppresses() {
        let mut detector = FlapDetector::default();
        let start = Instant::now();
        for i in 0..FLAP_THRESHOLD - 1 {
            assert_eq!(
                flip(&mut detector, i, start + Duration::from_secs(i as u64)),
                FlapVerdict::Emit
            );
        }
        let verdict = flip(&mut detector, 4, start + Duration::from_secs(4));
        assert_eq!(
            verdict,
            FlapVerdict::StartFlapping {
                changes: FLAP_THRESHOLD
            }
        );
        assert_eq!(
            flip(&mut detector, 5, start + Duration::from_secs(5)),
            FlapVerdict::Suppress
        );
        assert!(detector.is_flapping("n1", "DiskPressure:/var"));
    }

    #[test]
    fn slow_changes_never_flap() {
        let mut detector = FlapDetector::default();
        let start = Instant::now();
        for i in 0..20 {
            let at = start + FLAP_WINDOW / 3 * i as u32;
            assert_eq!(flip(&mut detector, i, at), FlapVerdict::Emit, "change {i}");
        }
    }

    #[test]
    fn calms_down_after_quiet_time_and_remembers_last_emitted_status() {
        let mut detector = FlapDetector::default();
        let start = Instant::now();
        for i in 0..FLAP_THRESHOLD + 2 {
            flip(&mut detector, i, start);
        }
        assert!(detector.calm_down(start + CALM_AFTER / 2).is_empty());
        let calmed = detector.calm_down(start + CALM_AFTER);
        assert_eq!(calmed.len(), 1);
        assert_eq!(
            calmed[0].emitted, "ok",
            "4 emitted changes from ok end on ok"
        );
        assert!(!detector.is_flapping("n1", "DiskPressure:/var"));
    }
}
