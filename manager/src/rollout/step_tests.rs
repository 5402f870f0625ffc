use super::*;
use crate::records::ConfigStatus;
use crate::rollout::{Budget, Strategy, APPLY_DEADLINE, HEALTHY_WITHIN};

const TO: GenerationId = GenerationId {
    epoch: 1,
    generation: 2,
};
const FROM: GenerationId = GenerationId {
    epoch: 1,
    generation: 1,
};

fn facts(name: &str) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        online: true,
        health: Health::Healthy,
        config: ConfigRecord {
            status: ConfigStatus::InSync,
            desired: Some(FROM),
            applied: Some(FROM),
            ..ConfigRecord::default()
        },
        boot_id: "boot-1".into(),
        domain: None,
        problems: vec![],
    }
}

fn pool(names: &[&str]) -> Vec<NodeFacts> {
    names.iter().map(|n| facts(n)).collect()
}

fn rollout(nodes: &[NodeFacts], strategy: Strategy) -> RolloutRecord {
    let names = nodes.iter().map(|n| n.name.clone());
    RolloutRecord::new("workers", TO, Some(FROM), strategy, names, "test", at(0))
}

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs)
}

/// The manager targets what the step decided: the node's desired generation changes.
fn target(nodes: &mut [NodeFacts], decision: &Decision) {
    for (name, id) in &decision.target {
        let node = nodes.iter_mut().find(|n| &n.name == name).expect("node");
        node.config.desired = Some(*id);
        node.config.status = ConfigStatus::Applying;
    }
}

/// The agents of targeted nodes apply the generation at `now` and stay healthy.
fn apply(nodes: &mut [NodeFacts], decision: &Decision, now: OffsetDateTime) {
    target(nodes, decision);
    for (name, id) in &decision.target {
        let node = nodes.iter_mut().find(|n| &n.name == name).expect("node");
        node.config.applied = Some(*id);
        node.config.status = ConfigStatus::InSync;
        node.config.since = Some(now);
    }
}

fn targeted(decision: &Decision) -> Vec<&str> {
    decision.target.iter().map(|(n, _)| n.as_str()).collect()
}

/// Runs steps a second apart from `from`, applying what is targeted, until the rollout ends
/// or halts; returns the waves targeted.
fn run_to_rest(r: &mut RolloutRecord, nodes: &mut [NodeFacts], from: i64) -> Vec<Vec<String>> {
    let mut waves = Vec::new();
    for second in from..from + 600 {
        let decision = step(r, nodes, at(second));
        if !decision.target.is_empty() {
            waves.push(decision.target.iter().map(|(n, _)| n.clone()).collect());
        }
        apply(nodes, &decision, at(second));
        if !r.state.is_active() || r.state == RolloutState::Halted {
            break;
        }
    }
    waves
}

/// Runs steps a second apart from `from` until `done` holds; returns the next second.
fn run_until(
    r: &mut RolloutRecord,
    nodes: &mut [NodeFacts],
    from: i64,
    done: impl Fn(&RolloutRecord) -> bool,
) -> i64 {
    for second in from..from + 600 {
        if done(r) {
            return second;
        }
        let decision = step(r, nodes, at(second));
        apply(nodes, &decision, at(second));
    }
    panic!("never reached the expected state: {r:?}");
}

fn fast(max_unavailable: Budget) -> Strategy {
    Strategy {
        max_unavailable,
        settle_secs: 5,
        ..Strategy::default()
    }
}

#[test]
fn a_good_generation_goes_canary_first_then_waves_of_max_unavailable() {
    let mut nodes = pool(&["n01", "n02", "n03", "n04", "n05", "n06", "n07"]);
    let mut r = rollout(&nodes, fast(Budget::Count(3)));

    let waves = run_to_rest(&mut r, &mut nodes, 0);

    assert_eq!(
        waves,
        [
            vec!["n01"],
            vec!["n02", "n03", "n04"],
            vec!["n05", "n06", "n07"]
        ]
    );
    assert_eq!(r.state, RolloutState::Completed);
    assert_eq!(r.count(NodeStep::Done), 7);
    assert!(r.waves[0].canary && !r.waves[1].canary);
}

#[test]
fn a_percentage_budget_sizes_waves_from_the_pool() {
    let names: Vec<String> = (1..=10).map(|i| format!("n{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut nodes = pool(&refs);
    let mut r = rollout(&nodes, fast(Budget::Percent(30)));

    let waves = run_to_rest(&mut r, &mut nodes, 0);

    let sizes: Vec<usize> = waves.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 3, 3, 3]);
}

#[test]
fn a_wave_starts_with_a_pool_event_followed_by_its_nodes() {
    let nodes = pool(&["a", "b"]);
    let mut r = rollout(&nodes, fast(Budget::Count(1)));

    let decision = step(&mut r, &nodes, at(0));

    let kinds: Vec<(&str, &str, &str)> = decision
        .events
        .iter()
        .map(|e| (e.node.as_str(), e.reason.as_str(), e.to.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("", "WaveStarted", "progressing"),
            ("a", "Targeted", "updating")
        ]
    );
    assert!(decision.events[0]
        .message
        .contains("canary wave 1 started: a"));
    assert!(decision.events.iter().all(|e| e.kind == "rollout"));
}

#[test]
fn a_node_counts_as_done_only_after_the_settle_time() {
    let mut nodes = pool(&["a", "b"]);
    let mut r = rollout(&nodes, fast(Budget::Count(1)));
    let first = step(&mut r, &nodes, at(0));
    apply(&mut nodes, &first, at(0));

    step(&mut r, &nodes, at(1));
    assert_eq!(r.nodes["a"].step, NodeStep::Settling);
    assert!(
        step(&mut r, &nodes, at(5)).target.is_empty(),
        "b waits for a to settle"
    );
    let next = step(&mut r, &nodes, at(6));
    assert_eq!(r.nodes["a"].step, NodeStep::Done);
    assert_eq!(targeted(&next), ["b"]);
}

#[test]
fn a_canary_that_rolls_back_halts_the_rollout_with_only_the_canary_touched() {
    let mut nodes = pool(&["a", "b", "c"]);
    let mut r = rollout(&nodes, fast(Budget::Count(2)));
    let first = step(&mut r, &nodes, at(0));
    assert_eq!(targeted(&first), ["a"]);
    target(&mut nodes, &first);
    nodes[0].config.status = ConfigStatus::Failed;
    nodes[0].config.reason = "containerd did not answer within 30s; restored".into();

    let decision = step(&mut r, &nodes, at(1));

    assert_eq!(r.state, RolloutState::Halted);
    assert!(
        r.reason
            .contains("canary failed: a (containerd did not answer"),
        "{}",
        r.reason
    );
    assert!(decision.target.is_empty());
    assert!(decision
        .events
        .iter()
        .any(|e| e.to == "halted" && e.severity == Severity::Warning));
    assert!(
        step(&mut r, &nodes, at(60)).target.is_empty(),
        "a halted rollout stays put"
    );
    assert_eq!(r.nodes["b"].step, NodeStep::Pending);
    assert_eq!(r.generation_for("b"), Some(FROM));
}

#[test]
fn failures_after_the_canary_halt_only_beyond_the_budget() {
    let mut nodes = pool(&["a", "b", "c", "d", "e"]);
    let strategy = Strategy {
        failure_budget: 1,
        ..fast(Budget::Count(1))
    };
    let mut r = rollout(&nodes, strategy);
    let mut now = run_until(&mut r, &mut nodes, 0, |r| {
        r.nodes["b"].step == NodeStep::Settling
    });
    nodes[1].online = false;
    step(&mut r, &nodes, at(now));
    assert_eq!(
        r.state,
        RolloutState::Progressing,
        "one failure is within the budget"
    );
    assert_eq!(r.nodes["b"].step, NodeStep::Failed);
    assert!(
        r.nodes["b"].reason.contains("went offline"),
        "{}",
        r.nodes["b"].reason
    );

    nodes[1].online = true;
    now = run_until(&mut r, &mut nodes, now + 1, |r| {
        r.nodes["c"].step == NodeStep::Settling
    });
    nodes[2].health = Health::Degraded;
    nodes[2].problems = vec!["KubeletHealthy".into()];
    step(&mut r, &nodes, at(now));
    assert_eq!(r.state, RolloutState::Halted);
    assert!(
        r.reason.contains("2 failure(s), more than the budget of 1"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("KubeletHealthy"), "{}", r.reason);
}

#[test]
fn nodes_unhealthy_for_other_reasons_use_up_the_budget() {
    let mut nodes = pool(&["a", "b", "c", "d"]);
    nodes[3].health = Health::Degraded;
    let mut r = rollout(&nodes, fast(Budget::Count(1)));

    let decision = step(&mut r, &nodes, at(0));

    assert!(decision.target.is_empty(), "d already uses the budget of 1");
    assert!(r.reason.contains("no room"), "{}", r.reason);
    nodes[3].health = Health::Healthy;
    assert_eq!(targeted(&step(&mut r, &nodes, at(1))), ["a"]);
}

#[test]
fn a_wave_is_sized_by_the_room_left_when_nodes_fail_for_other_reasons_during_it() {
    let mut nodes = pool(&["a", "b", "c", "d", "e", "f"]);
    let mut r = rollout(&nodes, fast(Budget::Count(3)));
    let now = run_until(&mut r, &mut nodes, 0, |r| {
        r.nodes["a"].step == NodeStep::Settling
    });
    // While the canary settles, f goes degraded for reasons of its own.
    nodes[5].health = Health::Degraded;

    let next = (now..now + 60)
        .map(|second| step(&mut r, &nodes, at(second)))
        .find(|decision| !decision.target.is_empty())
        .expect("a second wave");

    assert_eq!(
        targeted(&next),
        ["b", "c", "f"],
        "3 out of healthy at most: f already was, so b and c only of the healthy ones"
    );
}

#[test]
fn pending_nodes_out_of_healthy_go_after_the_healthy_ones_at_no_cost_to_the_budget() {
    let mut nodes = pool(&["a", "b", "c", "d"]);
    nodes[0].health = Health::Degraded;
    let mut r = rollout(&nodes, fast(Budget::Count(2)));

    let first = step(&mut r, &nodes, at(0));
    assert_eq!(targeted(&first), ["b"], "the canary is a healthy node");
    apply(&mut nodes, &first, at(0));
    let (now, second) = (1..60)
        .map(|s| (s, step(&mut r, &nodes, at(s))))
        .find(|(_, d)| !d.target.is_empty())
        .expect("a second wave");
    assert_eq!(
        targeted(&second),
        ["c", "a"],
        "a is out of healthy already: room for c only"
    );
    apply(&mut nodes, &second, at(now));
    nodes[0].health = Health::Healthy;

    let waves = run_to_rest(&mut r, &mut nodes, now + 1);
    assert_eq!(waves, [vec!["d"]]);
    assert_eq!(r.state, RolloutState::Completed);
}

#[test]
fn a_pool_with_no_healthy_node_pending_still_gets_a_canary() {
    let mut nodes = pool(&["a"]);
    nodes[0].health = Health::Degraded;
    let mut r = rollout(&nodes, fast(Budget::Count(1)));

    let first = step(&mut r, &nodes, at(0));

    assert_eq!(
        targeted(&first),
        ["a"],
        "already out of healthy: no budget used"
    );
}

#[test]
fn offline_nodes_are_skipped_requeued_when_back_and_targeted_at_completion() {
    let mut nodes = pool(&["a", "b", "c"]);
    nodes[1].online = false;
    let mut r = rollout(&nodes, fast(Budget::Count(2)));

    let waves = run_to_rest(&mut r, &mut nodes, 0);

    assert_eq!(waves, [vec!["a"], vec!["c"], vec!["b"]]);
    assert_eq!(r.state, RolloutState::Completed);
    assert_eq!(r.count(NodeStep::Skipped), 1);
    assert_eq!(r.generation_for("b"), Some(TO), "b gets it when it returns");

    let mut nodes = pool(&["a", "b", "c"]);
    nodes[1].online = false;
    let mut r = rollout(&nodes, fast(Budget::Count(2)));
    step(&mut r, &nodes, at(0));
    assert_eq!(r.nodes["b"].step, NodeStep::Skipped);
    assert_eq!(
        r.generation_for("b"),
        Some(FROM),
        "never the new one before its wave"
    );
    nodes[1].online = true;
    step(&mut r, &nodes, at(1));
    assert_eq!(
        r.nodes["b"].step,
        NodeStep::Pending,
        "back online: queued again"
    );
}

#[test]
fn failure_domains_never_change_at_once() {
    let mut nodes = pool(&["a1", "a2", "b1", "b2", "c1"]);
    for node in &mut nodes {
        node.domain = Some(node.name[..1].to_string());
    }
    let strategy = Strategy {
        failure_domain: Some("zone".into()),
        ..fast(Budget::Count(5))
    };
    let mut r = rollout(&nodes, strategy);

    let waves = run_to_rest(&mut r, &mut nodes, 0);

    assert_eq!(
        waves,
        [vec!["a1"], vec!["a2"], vec!["b1", "b2"], vec!["c1"]]
    );
    let domains: Vec<_> = r.waves.iter().map(|w| w.domain.clone().unwrap()).collect();
    assert_eq!(domains, ["a", "a", "b", "c"]);
}

#[test]
fn a_node_joining_mid_rollout_gets_the_previous_generation_until_its_wave() {
    let mut nodes = pool(&["a", "b"]);
    let mut r = rollout(&nodes, fast(Budget::Count(1)));
    let first = step(&mut r, &nodes, at(0));
    apply(&mut nodes, &first, at(0));
    assert_eq!(
        r.generation_for("z"),
        Some(FROM),
        "not known yet: the previous one"
    );
    nodes.push(facts("z"));

    let joined = step(&mut r, &nodes, at(1));

    assert_eq!(r.nodes["z"].step, NodeStep::Pending);
    assert!(joined
        .events
        .iter()
        .any(|e| e.node == "z" && e.reason == "Queued"));
    assert_eq!(r.generation_for("z"), Some(FROM));
    assert_eq!(r.generation_for("a"), Some(TO));
    let waves = run_to_rest(&mut r, &mut nodes, 2);
    assert_eq!(waves, [vec!["b"], vec!["z"]]);
}

#[test]
fn a_generation_needing_a_reboot_is_pending_until_a_new_boot_id() {
    let mut nodes = pool(&["a", "b"]);
    let mut r = rollout(&nodes, fast(Budget::Count(2)));
    let first = step(&mut r, &nodes, at(0));
    apply(&mut nodes, &first, at(0));
    nodes[0].config.reboot_required = true;

    step(&mut r, &nodes, at(1));
    assert_eq!(r.nodes["a"].step, NodeStep::RebootPending);
    assert_eq!(r.nodes["a"].boot_id, "boot-1");
    nodes[0].online = false;
    for second in 2..40 {
        assert!(
            step(&mut r, &nodes, at(second)).target.is_empty(),
            "b waits"
        );
    }
    assert_eq!(
        r.nodes["a"].step,
        NodeStep::RebootPending,
        "offline while rebooting: no failure"
    );
    assert_eq!(room(&r, &nodes), 1, "it counts against max unavailable");

    nodes[0].online = true;
    nodes[0].boot_id = "boot-2".into();
    step(&mut r, &nodes, at(40));
    assert_eq!(r.nodes["a"].step, NodeStep::Settling);
    assert!(r.nodes["a"].reason.contains("rebooted into generation 2"));
    let waves = run_to_rest(&mut r, &mut nodes, 41);
    assert_eq!(waves, [vec!["b"]]);
}

#[test]
fn a_node_that_never_applies_or_never_gets_healthy_fails_after_its_deadline() {
    let mut nodes = pool(&["a", "b"]);
    let mut r = rollout(&nodes, fast(Budget::Count(1)));
    let first = step(&mut r, &nodes, at(0));
    target(&mut nodes, &first);
    let deadline = APPLY_DEADLINE.as_secs() as i64;
    step(&mut r, &nodes, at(deadline - 1));
    assert_eq!(r.nodes["a"].step, NodeStep::Updating);
    step(&mut r, &nodes, at(deadline));
    assert_eq!(r.nodes["a"].step, NodeStep::Failed);
    assert!(
        r.reason
            .contains("did not report generation 2 applied within 15m"),
        "{}",
        r.reason
    );

    let mut nodes = pool(&["a", "b"]);
    let mut r = rollout(&nodes, fast(Budget::Count(1)));
    let first = step(&mut r, &nodes, at(0));
    apply(&mut nodes, &first, at(0));
    nodes[0].health = Health::Degraded;
    nodes[0].problems = vec!["ContainerRuntimeHealthy".into()];
    let within = HEALTHY_WITHIN.as_secs() as i64;
    step(&mut r, &nodes, at(within - 1));
    assert_eq!(
        r.nodes["a"].step,
        NodeStep::Updating,
        "a brief degradation after applying"
    );
    step(&mut r, &nodes, at(within));
    assert_eq!(r.state, RolloutState::Halted);
    assert!(
        r.reason.contains("degraded (ContainerRuntimeHealthy)"),
        "{}",
        r.reason
    );
}

#[test]
fn a_stored_record_read_back_mid_rollout_continues_where_it_was() {
    let mut nodes = pool(&["n1", "n2", "n3", "n4", "n5"]);
    let mut r = rollout(&nodes, fast(Budget::Count(2)));
    let now = run_until(&mut r, &mut nodes, 0, |r| r.waves.len() == 2);
    let stored = serde_json::to_vec(&r).expect("record serialises");

    let mut restarted: RolloutRecord = serde_json::from_slice(&stored).expect("record reads");
    assert_eq!(restarted, r);
    let waves = run_to_rest(&mut restarted, &mut nodes, now);

    assert_eq!(waves, [vec!["n4", "n5"]], "no wave started again");
    assert_eq!(restarted.state, RolloutState::Completed);
    assert_eq!(restarted.count(NodeStep::Done), 5);
}

#[test]
fn nodes_stored_as_targeted_but_never_targeted_are_targeted_again() {
    let mut nodes = pool(&["a", "b"]);
    let mut r = rollout(&nodes, fast(Budget::Count(1)));
    let first = step(&mut r, &nodes, at(0));
    assert_eq!(targeted(&first), ["a"]);
    // The manager stopped before targeting a: its desired generation is still the old one.

    let again = step(&mut r, &nodes, at(1));

    assert_eq!(targeted(&again), ["a"]);
    assert!(!again.changed, "nothing new to store");
    target(&mut nodes, &again);
    assert!(step(&mut r, &nodes, at(2)).target.is_empty());
}

#[test]
fn paused_rollouts_start_no_wave_but_still_follow_their_nodes() {
    let mut nodes = pool(&["a", "b"]);
    let mut r = rollout(&nodes, fast(Budget::Count(1)));
    let first = step(&mut r, &nodes, at(0));
    apply(&mut nodes, &first, at(0));
    crate::rollout::act(&mut r, crate::rollout::Action::Pause, "op", at(1)).expect("pause");

    for second in 1..30 {
        assert!(step(&mut r, &nodes, at(second)).target.is_empty());
    }
    assert_eq!(
        r.nodes["a"].step,
        NodeStep::Done,
        "the canary settled while paused"
    );
    crate::rollout::act(&mut r, crate::rollout::Action::Resume, "op", at(30)).expect("resume");
    assert_eq!(targeted(&step(&mut r, &nodes, at(30))), ["b"]);
}
