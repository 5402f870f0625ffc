//! Health-gated rollouts end to end, with ten real `opi-agent run` processes (each under its
//! own `--root`, files only) and a real manager: waves of the asked size in the order the
//! event stream (`opictl watch --kind rollout -o json`) shows; a profile breaking containerd
//! on the canary halting the rollout with only the canary touched and back on its
//! last-known-good, and `OpiRolloutHalted` reaching a real Alertmanager; pause and resume, with
//! a node joining meanwhile; a manager killed mid-rollout that continues where it was; undo as
//! a new generation with the old content.
//!
//! The agents' only check is `ContainerRuntimeHealthy`, against a real containerd (Debian's
//! package). The canary's socket goes through `opi_tests::containerd::Gate`: under `--root`
//! the agent restarts nothing, so the gate plays a containerd restarted on the breaking
//! configuration.

use opi_tests::alertmanager::{has_label, Alertmanager};
use opi_tests::rollout::{
    each_wave_waits_for_the_one_before, names, waves, worker, worker_with_max_pods, Fleet, Watch,
    BROKEN_IMAGE, CONTAINERD_FILE, KUBELET_FILE, NODES, ROLLOUT_WAIT,
};
use opi_tests::{ok, wait_until, wait_until_every, Manager, POLL_OPICTL, WAIT};
use serde_json::Value;
use tempfile::TempDir;

#[test]
fn a_good_profile_reaches_all_ten_nodes_in_waves_of_the_asked_size() {
    let fleet = Fleet::start();
    let mut watch = Watch::since(&fleet.opictl(), fleet.event_revision());

    let options = ["--max-unavailable", "3", "--settle", "1s"];
    let generation = fleet.set("good.yaml", &worker(), &options);
    let mut follow = fleet.follow_status();
    watch.until_state(generation, "completed");

    assert_eq!(
        waves(&watch.events, generation),
        [
            names(&["n01"]),
            names(&["n02", "n03", "n04"]),
            names(&["n05", "n06", "n07"]),
            names(&["n08", "n09", "n10"]),
        ]
    );
    each_wave_waits_for_the_one_before(&watch.events, generation);

    let status = fleet.status();
    assert_eq!(status["state"], "completed");
    assert_eq!(status["to_generation"], generation);
    let waves_shown: Vec<u64> = status["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["done"].as_u64().unwrap())
        .collect();
    assert_eq!(waves_shown, [1, 3, 3, 3]);
    for name in NODES {
        let config = fleet.config(name);
        assert_eq!(config["state"], "in-sync", "{name}: {config}");
        assert_eq!(config["applied_generation"], generation, "{name}");
        assert!(
            fleet.read(name, KUBELET_FILE).contains("maxPods: 110"),
            "{name}"
        );
    }
    // `status --watch` printed each change and ended by itself once completed.
    wait_until(WAIT, "status --watch to end by itself", || {
        follow.try_wait().expect("opictl status").is_some()
    });
    let followed = ok(follow.wait_with_output().expect("status --watch output"));
    let states: Vec<String> = followed
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("a JSON status per line"))
        .map(|status| status["state"].as_str().unwrap().to_string())
        .collect();
    assert!(states.len() >= 5, "one line per change: {states:?}");
    assert_eq!(states.last().map(String::as_str), Some("completed"));
    let table = ok(fleet.opictl().run(&["rollout", "status", "workers"]));
    assert!(table.contains("10 of 10 done, 0 failed"), "{table}");
    assert!(
        !table.contains("PROGRESS"),
        "no bars when stdout is not a terminal: {table}"
    );
}

#[test]
fn a_profile_that_breaks_containerd_on_the_canary_halts_with_only_the_canary_touched() {
    let dir = TempDir::new().unwrap();
    let alertmanager = Alertmanager::start(dir.path());
    let url = alertmanager.url();
    let fleet = Fleet::start_in(dir, &["--alertmanager", &url, "--alert-resend", "2s"]);
    let first = fleet.set(
        "good.yaml",
        &worker(),
        &["--max-unavailable", "9", "--settle", "1s"],
    );
    fleet.wait_state("completed");
    let last_known_good = fleet.read("n01", CONTAINERD_FILE);
    let mut watch = Watch::since(&fleet.opictl(), fleet.event_revision());

    let breaking = worker_with_max_pods(80).replace("registry.k8s.io/pause:3.9", BROKEN_IMAGE);
    assert!(breaking.contains(BROKEN_IMAGE));
    let options = ["--max-unavailable", "3", "--settle", "1s"];
    let second = fleet.set("breaking.yaml", &breaking, &options);
    watch.until_state(second, "halted");

    let status = fleet.status();
    assert_eq!(status["state"], "halted", "{status}");
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.starts_with("canary failed: n01 ("), "{reason}");
    assert!(
        reason.contains("rolled back to the last-known-good"),
        "{reason}"
    );
    assert!(
        reason.contains("containerd.service was not healthy within 3s"),
        "{reason}"
    );
    assert_eq!(status["failures"], serde_json::json!(["n01"]));
    assert_eq!(waves(&watch.events, second), [names(&["n01"])]);

    // Only the canary was given the generation, and it runs its last-known-good again.
    let canary = fleet.config("n01");
    assert_eq!(canary["state"], "failed", "{canary}");
    assert_eq!(canary["desired_generation"], second);
    assert_eq!(canary["applied_generation"], first);
    assert_eq!(fleet.read("n01", CONTAINERD_FILE), last_known_good);
    assert!(fleet.read("n01", KUBELET_FILE).contains("maxPods: 110"));
    for name in &NODES[1..] {
        let config = fleet.config(name);
        assert_eq!(config["desired_generation"], first, "{name}: {config}");
        assert_eq!(config["state"], "in-sync", "{name}: {config}");
        assert!(
            !fleet.read(name, CONTAINERD_FILE).contains(BROKEN_IMAGE),
            "{name}"
        );
    }
    let halted = watch
        .events
        .iter()
        .find(|e| e["to"] == "halted")
        .expect("a halted event");
    assert_eq!(halted["severity"], "warning");
    assert_eq!(halted["node"], "");
    let table = ok(fleet.opictl().run(&["rollout", "status", "workers"]));
    assert!(table.contains("halted since"), "{table}");
    assert!(table.contains("n01    failed"), "{table}");

    // On-call is told, and told again when it is over.
    let generation = second.to_string();
    let halted_alert = |status: &str| {
        alertmanager.notified().into_iter().find(|alert| {
            has_label(alert, "alertname", "OpiRolloutHalted")
                && has_label(alert, "pool", "workers")
                && has_label(alert, "generation", &generation)
                && alert["notification_status"] == status
        })
    };
    wait_until(WAIT, "OpiRolloutHalted at the webhook", || {
        halted_alert("firing").is_some()
    });
    let alert = halted_alert("firing").unwrap();
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    let description = alert["annotations"]["description"].as_str().unwrap();
    assert!(description.contains("canary failed: n01"), "{description}");
    assert!(description.contains("failed nodes: n01"), "{description}");
    let aborted = fleet.opictl().json(&["rollout", "abort", "workers"]);
    assert_eq!(aborted["state"], "aborted");
    wait_until(WAIT, "OpiRolloutHalted resolved at the webhook", || {
        halted_alert("resolved").is_some()
    });
}

#[test]
fn a_paused_rollout_starts_no_wave_until_resumed_and_a_node_joining_meanwhile_waits_its_wave() {
    let mut fleet = Fleet::start();
    let fast = ["--max-unavailable", "9", "--settle", "1s"];
    let first = fleet.set("first.yaml", &worker(), &fast);
    fleet.wait_state("completed");
    let mut watch = Watch::since(&fleet.opictl(), fleet.event_revision());
    let options = ["--max-unavailable", "3", "--settle", "2s"];
    let generation = fleet.set("second.yaml", &worker_with_max_pods(90), &options);
    watch.until(ROLLOUT_WAIT, "the canary targeted", |events| {
        events
            .iter()
            .any(|e| e["node"] == "n01" && e["to"] == "updating")
    });

    let paused = fleet.opictl().json(&["rollout", "pause", "workers"]);
    assert_eq!(paused["state"], "paused", "{paused}");
    // The canary is still followed while paused, and no other wave starts: the step that
    // saw it done would have started the next one.
    watch.until(ROLLOUT_WAIT, "the canary done", |events| {
        events
            .iter()
            .any(|e| e["node"] == "n01" && e["to"] == "done")
    });
    let status = fleet.status();
    assert_eq!(status["state"], "paused");
    assert_eq!(status["waves"].as_array().unwrap().len(), 1, "{status}");
    let refused = fleet.opictl().run(&["rollout", "pause", "workers"]);
    let error = opi_tests::fails(refused);
    assert!(
        error.contains("cannot pause the rollout of pool workers: it is paused"),
        "{error}"
    );

    // A node enrolled now runs the generation the pool had before, until its wave.
    fleet.join("n11");
    let what = "n11 in sync with the previous generation";
    wait_until_every(POLL_OPICTL, ROLLOUT_WAIT, what, || {
        let config = fleet.config("n11");
        config["state"] == "in-sync" && config["applied_generation"] == first
    });
    assert_eq!(fleet.config("n11")["desired_generation"], first);
    watch.until(ROLLOUT_WAIT, "n11 queued", |events| {
        events
            .iter()
            .any(|e| e["node"] == "n11" && e["to"] == "pending")
    });
    assert!(fleet.read("n11", KUBELET_FILE).contains("maxPods: 110"));

    let resumed = fleet.opictl().json(&["rollout", "resume", "workers"]);
    assert_eq!(resumed["state"], "progressing");
    watch.until_state(generation, "completed");
    let waves = waves(&watch.events, generation);
    let sizes: Vec<usize> = waves.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 3, 3, 3, 1], "{waves:?}");
    assert_eq!(waves.last().unwrap(), &names(&["n11"]));
    assert_eq!(fleet.config("n11")["applied_generation"], generation);
    assert!(fleet.read("n11", KUBELET_FILE).contains("maxPods: 90"));
    let audit = ok(fleet.opictl().run(&["audit", "--limit", "20"]));
    assert!(
        audit.contains("rollout.pause") && audit.contains("rollout.resume"),
        "{audit}"
    );
}

#[test]
fn a_manager_killed_mid_rollout_continues_where_it_was() {
    let mut fleet = Fleet::start();
    let mut watch = Watch::since(&fleet.opictl(), fleet.event_revision());
    let options = ["--max-unavailable", "2", "--settle", "2s"];
    let generation = fleet.set("good.yaml", &worker(), &options);
    watch.until(ROLLOUT_WAIT, "the second wave started", |events| {
        events
            .iter()
            .filter(|e| e["reason"] == "WaveStarted")
            .count()
            == 2
    });

    fleet.manager.kill();
    fleet.manager.start();
    // The watch reconnects by itself and resumes after the last event it printed.
    watch.until_state(generation, "completed");

    let waves = waves(&watch.events, generation);
    let sizes: Vec<usize> = waves.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 2, 2, 2, 2, 1], "{waves:?}");
    let mut targeted: Vec<String> = waves.concat();
    targeted.sort();
    assert_eq!(targeted, names(&NODES), "every node targeted once");
    for name in NODES {
        assert_eq!(
            fleet.config(name)["applied_generation"],
            generation,
            "{name}"
        );
    }
    assert_eq!(fleet.status()["state"], "completed");
}

#[test]
fn undo_rolls_the_pool_back_with_a_new_generation_of_the_old_content() {
    let fleet = Fleet::start();
    let options = ["--max-unavailable", "5", "--settle", "1s"];
    let first = fleet.set("first.yaml", &worker(), &options);
    fleet.wait_state("completed");
    let second = fleet.set("second.yaml", &worker_with_max_pods(90), &options);
    let status = fleet.wait_state("completed");
    assert_eq!(status["from_generation"], first);
    assert!(fleet.read("n05", KUBELET_FILE).contains("maxPods: 90"));
    let mut watch = Watch::since(&fleet.opictl(), fleet.event_revision());

    let undone = fleet.opictl().json(&["rollout", "undo", "workers"]);
    let third = undone["to_generation"].as_u64().unwrap();
    assert!(third > second, "generations only grow: {undone}");
    assert_eq!(undone["from_generation"], second);
    assert_eq!(undone["reverts_to"], first);
    assert_eq!(
        undone["strategy"]["max_unavailable"], "5",
        "the same gating"
    );
    watch.until_state(third, "completed");

    let sizes: Vec<usize> = waves(&watch.events, third).iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 5, 4]);
    let old = fleet.opictl().json(&[
        "profile",
        "show",
        "workers",
        "--generation",
        &first.to_string(),
    ]);
    let new = fleet.opictl().json(&["profile", "show", "workers"]);
    assert_eq!(new["generation"], third);
    assert_eq!(new["yaml"], old["yaml"], "the same content");
    for name in NODES {
        assert_eq!(fleet.config(name)["applied_generation"], third, "{name}");
        assert!(
            fleet.read(name, KUBELET_FILE).contains("maxPods: 110"),
            "{name}"
        );
    }
    let audit = ok(fleet.opictl().run(&["audit", "--limit", "20"]));
    assert!(audit.contains("rollout.undo"), "{audit}");
    assert!(
        audit.contains(&format!("generation {third} repeats generation {first}")),
        "{audit}"
    );
}

#[test]
fn a_change_needing_a_reboot_holds_its_node_as_reboot_pending_visibly() {
    let fleet = Fleet::start();
    let high = "apiVersion: opi.fleet/v1\nkind: NodeProfile\nhardening: {baseline: anssi-bp028-high}\napply: {allowReboot: true, verifyTimeout: 3s}\n";
    let generation = fleet.set(
        "high.yaml",
        high,
        &["--max-unavailable", "3", "--settle", "1s"],
    );

    // Under `--root` the agent never reboots: the node reports the reboot it needs.
    let what = "the canary reboot-pending";
    wait_until_every(POLL_OPICTL, ROLLOUT_WAIT, what, || {
        fleet.status()["nodes"][0]["step"] == "reboot-pending"
    });
    let config = fleet.config("n01");
    assert_eq!(config["applied_generation"], generation, "{config}");
    assert_eq!(config["reboot_required"], true, "{config}");
    assert!(fleet
        .agent("n01")
        .root
        .join("var/run/reboot-required")
        .exists());
    let status = fleet.status();
    assert_eq!(status["state"], "progressing");
    assert_eq!(status["waves"].as_array().unwrap().len(), 1, "{status}");
    let reason = status["nodes"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("waits for a reboot"), "{reason}");
    let table = ok(fleet.opictl().run(&["rollout", "status", "workers"]));
    assert!(
        table.contains("1 in flight") && table.contains("1 reboot-pending"),
        "{table}"
    );
    assert!(table.contains("n01    reboot-pending"), "{table}");
    for name in &NODES[1..] {
        assert_eq!(
            fleet.config(name)["desired_generation"],
            0,
            "{name}: not given it yet"
        );
    }
}

#[test]
fn rollout_calls_name_the_pool_and_say_what_to_do() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "rollouts");
    manager.start();
    let opictl = manager.opictl();

    let missing = opi_tests::fails(opictl.run(&["rollout", "status", "edge"]));
    assert!(
        missing.contains("no rollout for pool edge; `opictl profile set edge -f FILE` starts one"),
        "{missing}"
    );
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, worker()).unwrap();
    let file = path.to_str().unwrap();
    ok(opictl.run(&["profile", "set", "edge", "-f", file]));
    let undo = opi_tests::fails(opictl.run(&["rollout", "undo", "edge"]));
    assert!(
        undo.contains("has no previous generation to go back to"),
        "{undo}"
    );
    let bad = opictl.run(&[
        "profile",
        "set",
        "edge",
        "-f",
        file,
        "--max-unavailable",
        "0%",
    ]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    let audit = ok(opictl.run(&["audit", "--limit", "5"]));
    assert!(
        audit.contains("rollout.undo") && audit.contains("refused"),
        "{audit}"
    );

    let bundle = dir.path().join("vera.toml");
    ok(opi_tests::run(
        std::process::Command::new(opi_tests::bin("opi-manager"))
            .args([
                "operator", "issue", "vera", "--role", "viewer", "--ttl", "1h",
            ])
            .arg("--data-dir")
            .arg(&manager.data_dir)
            .arg("--out")
            .arg(&bundle),
    ));
    let viewer = opi_tests::Opictl {
        config: bundle,
        endpoint: manager.endpoint(),
    };
    assert_eq!(viewer.json(&["rollout", "status", "edge"])["pool"], "edge");
    let refused = opi_tests::fails(viewer.run(&["rollout", "pause", "edge"]));
    assert!(
        refused.contains("role viewer may not pause, resume, abort or undo rollouts"),
        "{refused}"
    );
}
