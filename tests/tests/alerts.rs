//! Alerts end to end: a real manager pushes to a real Alertmanager on loopback, which notifies
//! a webhook receiver in the test as soon as an alert fires or resolves.

use std::time::{Duration, Instant};

use opi_tests::admin::Admin;
use opi_tests::alertmanager::{has_label, Alertmanager};
use opi_tests::{ok, sample, wait_until, Agent, Manager, WAIT};
use serde_json::Value;
use tempfile::TempDir;

/// The grace period the managers of these tests run with.
const GRACE: Duration = Duration::from_secs(3);
/// Bound on the wait for a storm summary: grace, grouping window and a slow machine's margin.
const STORM_WAIT: Duration = Duration::from_secs(20);

fn manager(dir: &TempDir, alertmanager: &Alertmanager) -> Manager {
    manager_with(dir, alertmanager, &[])
}

fn manager_with(dir: &TempDir, alertmanager: &Alertmanager, extra: &[&str]) -> Manager {
    let url = alertmanager.url();
    let mut args = vec![
        "--offline-after",
        "3s",
        "--heartbeat",
        "1s",
        "--alertmanager",
        &url,
        "--alert-resend",
        "2s",
    ];
    args.extend(extra);
    let mut manager = Manager::init(dir.path(), "e2e").with_args(&args);
    manager.start();
    manager
}

/// Enrolls `names` in `pool` with one token, starts them and waits until all are online.
fn running_agents(dir: &TempDir, manager: &Manager, pool: &str, names: &[String]) -> Vec<Agent> {
    let mut admin = Admin::connect(manager);
    let token = admin.create_token(pool, names.len() as u32);
    let (endpoint, pin) = (manager.endpoint(), manager.ca_pin());
    let mut agents: Vec<Agent> = names
        .iter()
        .map(|name| {
            let agent = Agent::new(dir.path(), name);
            ok(agent.enroll(&endpoint, &pin, &token));
            agent
        })
        .collect();
    agents.iter_mut().for_each(Agent::start);
    wait_until(WAIT, "the agents online", || {
        names.iter().all(|name| admin.online(name))
    });
    agents
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("{prefix}-{i}")).collect()
}

/// Whether `alerts` holds one named `alertname` whose `label` is `value`, in `status` when
/// given (a webhook alert's `status` is `firing` or `resolved`).
fn holds(alerts: &[Value], alertname: &str, label: (&str, &str), status: Option<&str>) -> bool {
    alerts.iter().any(|alert| {
        has_label(alert, "alertname", alertname)
            && has_label(alert, label.0, label.1)
            && status.is_none_or(|s| alert["status"] == s)
    })
}

fn named<'a>(alerts: &'a [Value], alertname: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| has_label(a, "alertname", alertname))
        .collect()
}

/// Waits until Alertmanager has received at least one more push of the always-firing
/// heartbeat, proving that the manager evaluated and pushed again since this call.
fn wait_for_another_push(alertmanager: &Alertmanager) {
    let updated = || {
        let alerts = alertmanager.alerts();
        named(&alerts, "OpiManagerHeartbeat")
            .first()
            .map(|a| a["updatedAt"].as_str().unwrap_or_default().to_string())
    };
    let before = updated();
    wait_until(
        Duration::from_secs(10),
        "another push of the alerts",
        || updated() != before,
    );
}

#[test]
fn a_killed_agent_fires_node_offline_in_alertmanager_then_resolves_when_it_returns() {
    let dir = TempDir::new().unwrap();
    let alertmanager = Alertmanager::start(dir.path());
    let manager = manager(&dir, &alertmanager);
    let mut agents = running_agents(&dir, &manager, "workers", &names("node", 1));
    let node = ("node", "node-1");

    let killed = Instant::now();
    agents[0].stop();
    wait_until(
        GRACE + Duration::from_secs(5),
        "OpiNodeOffline at the webhook",
        || {
            holds(
                &alertmanager.notified(),
                "OpiNodeOffline",
                node,
                Some("firing"),
            )
        },
    );
    println!(
        "offline alert notified {:?} after SIGKILL",
        killed.elapsed()
    );

    let notified = alertmanager.notified();
    let offline = named(&notified, "OpiNodeOffline")[0];
    assert_eq!(offline["labels"]["pool"], "workers", "{offline}");
    assert_eq!(offline["labels"]["severity"], "critical", "{offline}");
    assert_eq!(offline["labels"]["fleet"], "e2e", "{offline}");
    let description = offline["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(description.contains("offline since"), "{description}");
    let held = alertmanager.alerts();
    assert!(holds(&held, "OpiNodeOffline", node, None), "{held:?}");
    let active = named(&held, "OpiNodeOffline")[0];
    assert_eq!(active["status"]["state"], "active", "{active}");

    agents[0].start();
    wait_until(WAIT, "OpiNodeOffline resolved at the webhook", || {
        holds(
            &alertmanager.notified(),
            "OpiNodeOffline",
            node,
            Some("resolved"),
        )
    });
    wait_until(WAIT, "Alertmanager to drop the resolved alert", || {
        !holds(&alertmanager.alerts(), "OpiNodeOffline", node, None)
    });
}

#[test]
fn seven_agents_of_a_pool_killed_at_once_fire_one_pool_alert_and_no_node_alerts() {
    let dir = TempDir::new().unwrap();
    let alertmanager = Alertmanager::start(dir.path());
    let manager = manager(&dir, &alertmanager);
    let workers = names("worker", 7);
    let mut killed = running_agents(&dir, &manager, "workers", &workers);
    // Enough nodes stay up that losing the workers is not losing most of the fleet.
    let _steady = running_agents(&dir, &manager, "steady", &names("steady", 8));

    killed.iter_mut().for_each(Agent::stop);
    let pool = ("pool", "workers");
    wait_until(STORM_WAIT, "OpiPoolNodesOffline at the webhook", || {
        holds(
            &alertmanager.notified(),
            "OpiPoolNodesOffline",
            pool,
            Some("firing"),
        )
    });
    wait_until(WAIT, "the pool alert to count all seven", || {
        let alerts = alertmanager.alerts();
        named(&alerts, "OpiPoolNodesOffline")
            .first()
            .is_some_and(|a| a["annotations"]["summary"] == "7 nodes of pool workers are offline")
    });
    wait_for_another_push(&alertmanager);

    let held = alertmanager.alerts();
    let storm = named(&held, "OpiPoolNodesOffline")[0];
    assert_eq!(storm["labels"]["severity"], "critical", "{storm}");
    let description = storm["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    for worker in &workers {
        assert!(
            description.contains(worker.as_str()),
            "{worker} in {description}"
        );
    }
    for alerts in [&held, &alertmanager.notified()] {
        assert!(named(alerts, "OpiNodeOffline").is_empty(), "{alerts:?}");
        assert!(
            named(alerts, "OpiManagerLostMostAgents").is_empty(),
            "{alerts:?}"
        );
        assert_eq!(named(alerts, "OpiPoolNodesOffline").len(), 1, "{alerts:?}");
    }
}

#[test]
fn losing_every_agent_at_once_fires_one_manager_alert_and_no_offline_alerts() {
    let dir = TempDir::new().unwrap();
    let alertmanager = Alertmanager::start(dir.path());
    let manager = manager(&dir, &alertmanager);
    let mut agents = running_agents(&dir, &manager, "workers", &names("worker", 7));

    agents.iter_mut().for_each(Agent::stop);
    let fleet = ("fleet", "e2e");
    wait_until(
        STORM_WAIT,
        "OpiManagerLostMostAgents at the webhook",
        || {
            holds(
                &alertmanager.notified(),
                "OpiManagerLostMostAgents",
                fleet,
                Some("firing"),
            )
        },
    );
    wait_for_another_push(&alertmanager);

    for alerts in [&alertmanager.alerts(), &alertmanager.notified()] {
        assert!(named(alerts, "OpiNodeOffline").is_empty(), "{alerts:?}");
        assert!(
            named(alerts, "OpiPoolNodesOffline").is_empty(),
            "{alerts:?}"
        );
    }
}

#[test]
fn a_node_in_maintenance_raises_no_alert_when_it_goes_offline() {
    let dir = TempDir::new().unwrap();
    let alertmanager = Alertmanager::start(dir.path());
    let manager = manager(&dir, &alertmanager);
    let names = vec!["resting".to_string(), "busy".to_string()];
    let mut agents = running_agents(&dir, &manager, "workers", &names);
    let mut admin = Admin::connect(&manager);
    admin.set_maintenance("resting", true, "disk swap");

    // The resting node goes first, so that any alert of its own would come due first.
    agents[0].stop();
    wait_until(Duration::from_secs(10), "the resting node offline", || {
        admin.offline("resting")
    });
    agents[1].stop();
    wait_until(STORM_WAIT, "OpiNodeOffline of the busy node", || {
        holds(
            &alertmanager.notified(),
            "OpiNodeOffline",
            ("node", "busy"),
            None,
        )
    });

    for alerts in [&alertmanager.alerts(), &alertmanager.notified()] {
        let about_resting: Vec<&Value> = alerts
            .iter()
            .filter(|a| has_label(a, "node", "resting"))
            .collect();
        assert!(about_resting.is_empty(), "{about_resting:?}");
    }
}

#[test]
fn alerts_return_after_an_alertmanager_restart_and_failed_pushes_are_counted_and_logged() {
    let dir = TempDir::new().unwrap();
    let mut alertmanager = Alertmanager::start(dir.path());
    let manager = manager_with(&dir, &alertmanager, &["--metrics-listen", "127.0.0.1:0"]);
    let heartbeat = |alertmanager: &Alertmanager| {
        holds(
            &alertmanager.alerts(),
            "OpiManagerHeartbeat",
            ("fleet", "e2e"),
            None,
        )
    };
    wait_until(WAIT, "the heartbeat alert in Alertmanager", || {
        heartbeat(&alertmanager)
    });

    alertmanager.stop();
    let failed = r#"opi_alert_deliveries_total{outcome="failed"}"#;
    wait_until(WAIT, "a failed push in the metrics", || {
        sample(&manager.scrape(), failed).is_some_and(|n| n >= 1.0)
    });
    let log = manager.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("cannot deliver alerts"))
        .unwrap_or_else(|| panic!("no warning in the manager log:\n{log}"));
    assert!(warning.contains(&alertmanager.url()), "{warning}");

    alertmanager.restart();
    wait_until(Duration::from_secs(40), "the heartbeat alert back", || {
        heartbeat(&alertmanager)
    });
    // The alert shows in Alertmanager as soon as it took the push; the manager counts the push
    // once it has read the answer, a moment later.
    let ok = r#"opi_alert_deliveries_total{outcome="ok"}"#;
    wait_until(WAIT, "a second successful push in the metrics", || {
        sample(&manager.scrape(), ok).is_some_and(|n| n >= 2.0)
    });
}
