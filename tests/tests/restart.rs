//! A manager restart as real agents see it: the stopping manager tells each agent it is going
//! away, stops without waiting out its drain, and agents come back within seconds of the
//! restart however long the manager stayed down, instead of backing off for up to a minute.

use std::time::{Duration, Instant};

use opi_agent::run::reconnect::NOTICE_RETRY_CAP;
use opi_tests::{
    node, ok, sample, wait_until, wait_until_every, Agent, Manager, POLL_OPICTL, WAIT,
};
use tempfile::TempDir;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Agents of the test.
const AGENTS: [&str; 3] = ["r1", "r2", "r3"];
/// Failed attempts each agent makes while the manager is down. After as many failures the
/// backoff alone would wait up to a minute (its ceiling doubles from 1 s, capped at 60 s).
const FAILURES_WHILE_DOWN: usize = 6;
/// Longest wait for the agents' failures: they take a few seconds after the notice (its
/// delay, then one attempt per spread: 1 s for three agents), and up to about a minute with
/// the backoff alone, which this wait allows so that a regression fails on the return time.
const DOWN_WAIT: Duration = Duration::from_secs(90);
/// Slack over [`NOTICE_RETRY_CAP`] for the agents to be back: connection, handshake and hello
/// on a loaded machine.
const BACK_SLACK: Duration = Duration::from_secs(6);
/// How long the agent of the last-seen test sends heartbeats before the manager stops.
const HEARD_FOR: Duration = Duration::from_secs(5);
/// Its last heartbeat may come up to one interval (1 s) before the stop, and the saved time
/// is in whole seconds.
const LAST_HEARTBEAT_SLACK: time::Duration = time::Duration::seconds(2);
/// What an agent logs on the notice.
const NOTICE_LINE: &str = "the manager is going away";
/// What an agent logs on each failed attempt.
const FAILURE_LINE: &str = "session with the manager failed";

#[test]
fn agents_come_back_within_seconds_of_a_restart_however_long_the_manager_was_down() {
    let dir = TempDir::new().unwrap();
    let mut manager =
        Manager::init(dir.path(), "e2e").with_args(&["--metrics-listen", "127.0.0.1:0"]);
    manager.start();
    let mut agents: Vec<Agent> = AGENTS.iter().map(|n| enrolled(&dir, &manager, n)).collect();
    agents.iter_mut().for_each(Agent::start);
    wait_until_every(POLL_OPICTL, WAIT, "every session open", || {
        sessions(&manager) == AGENTS.len()
    });

    let stopped_in = manager.terminate(WAIT);
    println!("the manager stopped {stopped_in:?} after SIGTERM");
    let log = manager.log_text();
    assert!(!log.contains("connections still open"), "{log}");
    for agent in &agents {
        wait_until(WAIT, "the going-away notice in the agent's log", || {
            agent.log_text().contains(NOTICE_LINE)
        });
    }

    // Down long enough for the backoff alone to reach its longest delays.
    let down = Instant::now();
    for agent in &agents {
        wait_until(
            DOWN_WAIT,
            "failed attempts while the manager is down",
            || failures_after_notice(agent) >= FAILURES_WHILE_DOWN,
        );
    }
    println!(
        "{FAILURES_WHILE_DOWN} failures each took {:?}",
        down.elapsed()
    );

    manager.start();
    let back = wait_until_every(
        POLL_OPICTL,
        NOTICE_RETRY_CAP + BACK_SLACK,
        "every agent back after the restart",
        || sessions(&manager) == AGENTS.len(),
    );
    println!("every agent was back {back:?} after the restart");
}

#[test]
fn a_node_that_stays_away_after_a_restart_keeps_the_last_seen_time_saved_at_shutdown() {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "e2e").with_args(&[
        "--heartbeat",
        "1s",
        "--offline-after",
        "3s",
        "--report-freshness",
        "3s",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    manager.start();
    let mut agent = enrolled(&dir, &manager, "away");
    agent.start();
    wait_until_every(POLL_OPICTL, WAIT, "the session open", || {
        sessions(&manager) == 1
    });
    // Heartbeats for a while, so that the last one is well after the session opened, which
    // is when the node record was last written.
    std::thread::sleep(HEARD_FOR);
    let heard = OffsetDateTime::now_utc();

    manager.terminate(WAIT);
    agent.stop();
    let log = manager.log_text();
    assert!(
        log.lines()
            .any(|line| line.contains("last-seen times saved at shutdown")
                && line.contains("nodes=1")),
        "{log}"
    );
    manager.start();
    let opictl = manager.opictl();
    let offline = wait_until(WAIT, "the node offline after the grace period", || {
        node(&opictl.nodes(), "away").is_some_and(|n| n["connectivity"] == "offline")
    });
    println!("the node was offline {offline:?} after the restart");
    let nodes = opictl.nodes();
    let shown = node(&nodes, "away").expect("node listed")["last_seen"]
        .as_str()
        .expect("a last-seen time")
        .to_string();
    let seen = OffsetDateTime::parse(&shown, &Rfc3339).expect("an RFC 3339 time");
    assert!(
        seen >= heard - LAST_HEARTBEAT_SLACK,
        "last seen {shown}, though heartbeats came until {heard}"
    );
}

/// An agent named `name`, enrolled in pool `workers` with a single-use token.
fn enrolled(dir: &TempDir, manager: &Manager, name: &str) -> Agent {
    let (_, token) = manager.opictl().create_token("workers", 1, &[]);
    let agent = Agent::new(dir.path(), name);
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    agent
}

/// Agent sessions open at the manager, from its metrics; 0 while it does not answer.
fn sessions(manager: &Manager) -> usize {
    let page = opi_tests::http::get(manager.metrics_addr(), "/metrics").map(|r| r.body);
    sample(&page.unwrap_or_default(), "opi_agent_sessions").unwrap_or(0.0) as usize
}

/// Failed connection attempts the agent logged since the manager's last going-away notice.
fn failures_after_notice(agent: &Agent) -> usize {
    let log = agent.log_text();
    let after = log.rfind(NOTICE_LINE).map_or("", |at| &log[at..]);
    after.matches(FAILURE_LINE).count()
}
