//! Faults between manager replicas and etcd, with real processes: etcd stopped entirely (the
//! replicas keep their agents, answer reads from memory marked stale, refuse changes with an
//! error that says why, and recover by themselves), and one replica cut from etcd by an
//! nftables drop in the test's own network namespace (it steps down, another leads, and its
//! agents move to a replica that records their sessions before the grace period ends), and
//! the leader SIGKILLed while an operator writes without pause. Each run ends with the check
//! that the event history is gapless and every acknowledged change is stored.

mod common;

use std::time::{Duration, Instant};

use common::{assert_nothing_lost, leader_at, replicas, session_nodes, Acknowledged, LEADING};
use opi_manager::records::EventRecord;
use opi_tests::etcd::Etcd;
use opi_tests::netns::Netns;
use opi_tests::{all_online, fails, ok, sample, wait_until, Agent, Manager, WAIT};

/// `--leader-lease` of every replica.
const LEASE: Duration = Duration::from_secs(3);
/// `--offline-after`: the grace period.
const GRACE: Duration = Duration::from_secs(12);
/// Agents of each run: `OPI_FAULT_AGENTS` (scripts/soak raises it), 2 by default.
const AGENTS_ENV: &str = "OPI_FAULT_AGENTS";
/// The loopback address replica a alone reaches etcd at, in the partition test.
const A_PATH: &str = "127.0.0.2";
/// What `opictl` says of an answer from a replica that cannot reach its store.
const STALE: &str = "may be stale";

fn serve_args() -> Vec<&'static str> {
    vec![
        "--leader-lease",
        "3s",
        "--heartbeat",
        "1s",
        "--offline-after",
        "12s",
        "--report-freshness",
        "30s",
        "--metrics-listen",
        "127.0.0.1:0",
    ]
}

#[test]
fn with_etcd_stopped_replicas_keep_their_agents_answer_stale_reads_refuse_changes_and_recover() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut etcd = Etcd::single();
    let url = etcd.url();
    let nodes = node_names();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let names = ["a", "b"];
    let stores = [url.clone(), url.clone()];
    let (replicas, mut agents, mut acknowledged) = start(dir.path(), &names, &stores, &nodes);
    wait_until(WAIT, "both nodes online", || {
        all_online(&replicas[0].opictl(), &nodes)
    });
    let sessions = |agents: &[Agent]| -> Vec<usize> {
        agents
            .iter()
            .map(|a| a.log_text().matches("session open").count())
            .collect()
    };
    // The manager counts a node online before its agent logs the session.
    wait_until(WAIT, "every agent to log its session", || {
        sessions(&agents).iter().all(|&opened| opened == 1)
    });
    let opened = sessions(&agents);

    etcd.kill(0);
    let stopped = Instant::now();
    for replica in &replicas {
        wait_until(WAIT, "the replica to mark its answers stale", || {
            status_of(replica)["store_unavailable_since"].is_string()
        });
    }
    eprintln!(
        "both replicas mark answers stale {:?} after etcd stopped",
        stopped.elapsed()
    );

    // Reads come from memory, with a warning; `opictl status` says so in its store line.
    let listed = replicas[1].opictl().run(&["nodes"]);
    assert!(listed.status.success(), "{listed:?}");
    let (stdout, stderr) = texts(&listed);
    assert!(nodes.iter().all(|n| stdout.contains(n)), "{stdout}");
    assert!(stderr.contains(STALE), "{stderr}");
    let status = ok(replicas[0].opictl().run(&["status"]));
    assert!(status.contains("UNREACHABLE since"), "{status}");

    // Changes are refused, saying why; nothing of them is stored later.
    let stderr = fails(
        replicas[0]
            .opictl()
            .run(&["token", "create", "--pool", "workers"]),
    );
    assert!(stderr.contains("is unavailable"), "{stderr}");
    assert!(
        stderr.contains("refuses changes until the store is back"),
        "{stderr}"
    );

    // The agents keep their sessions through the outage, past the lease: every replica
    // says it cannot record sessions, so none moves.
    wait_until(
        WAIT,
        "the agents to hear that their replica records nothing",
        || {
            agents
                .iter()
                .all(|a| a.log_text().contains("cannot record this session"))
        },
    );
    std::thread::sleep(LEASE * 2);
    assert_eq!(
        sessions(&agents),
        opened,
        "no agent reconnected during the outage"
    );

    // An agent restarted during the outage gets a session from memory at once, recorded when
    // etcd is back.
    agents[0].stop();
    agents[0].start();
    let mut opened = opened;
    opened[0] += 1;
    wait_until(WAIT, "the restarted agent to have a session", || {
        sessions(&agents) == opened
    });
    assert!(replicas
        .iter()
        .any(|r| r.log_text().contains("session accepted from memory")));

    etcd.restart(0);
    let restarted = Instant::now();
    let took = wait_until(WAIT, "a replica to lead again", || {
        replicas
            .iter()
            .all(|r| status_of(r)["store_unavailable_since"].is_null())
            && leader_at(&replicas[0]).is_some()
    });
    eprintln!("replicas fresh and a leader elected {took:?} after etcd returned");
    wait_until(
        WAIT,
        "the agents to hear their sessions are recorded again",
        || {
            agents
                .iter()
                .all(|a| a.log_text().contains("records this session again"))
        },
    );
    let (id, _) = replicas[1].opictl().create_token("workers", 1, &[]);
    acknowledged.tokens.insert(id);
    let leader = leader_at(&replicas[0]).expect("a leader");
    let leader = &replicas[names.iter().position(|n| *n == leader).expect("named")];
    wait_until(WAIT, "both nodes online at the leader", || {
        all_online(&leader.opictl(), &nodes)
    });
    assert_eq!(
        sessions(&agents),
        opened,
        "no agent reconnected after the outage"
    );
    wait_until(
        WAIT,
        "the session opened from memory to be recorded",
        || {
            replicas.iter().any(|r| {
                r.log_text().contains(
                    "sessions accepted while the store was unreachable are recorded sessions=1",
                )
            })
        },
    );
    eprintln!("recovered {:?} after etcd returned", restarted.elapsed());

    assert_none_offline(&assert_nothing_lost(&etcd, &acknowledged));
}

#[test]
fn a_replica_cut_from_etcd_steps_down_and_its_agents_move_to_one_that_records_them() {
    // Everything below runs in a network namespace of this test's own; replica a reaches
    // etcd at a second loopback address, which the cut drops both ways.
    let netns = Netns::enter();
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::single_also_on(A_PATH);
    let nodes = node_names();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let names = ["a", "b"];
    let stores = [etcd.url_via(A_PATH), etcd.url()];
    let (replicas, agents, mut acknowledged) = start(dir.path(), &names, &stores, &nodes);
    wait_until(WAIT, "both sessions recorded at a", || {
        session_nodes(&etcd, "a").len() == nodes.len()
    });

    // Revoked before the cut: must still be revoked at the end.
    let (_, token) = replicas[0].opictl().create_token("workers", 1, &[]);
    let spare = Agent::new(dir.path(), "fault-spare");
    ok(spare.enroll(&replicas[0].endpoint(), &replicas[0].ca_pin(), &token));
    ok(replicas[0]
        .opictl()
        .run(&["node", "revoke", "fault-spare", "--reason", "test"]));
    acknowledged.enrolled.insert("fault-spare".into());
    acknowledged.revoked.insert("fault-spare".into());

    netns.nft(&["add table inet opi_fault"]);
    netns.nft(&["add chain inet opi_fault output { type filter hook output priority 0 ; }"]);
    netns.nft(&[&format!(
        "add rule inet opi_fault output ip daddr {A_PATH} drop"
    )]);
    netns.nft(&[&format!(
        "add rule inet opi_fault output ip saddr {A_PATH} drop"
    )]);
    let cut = Instant::now();
    let took = wait_until(WAIT, "b to lead", || {
        replicas[1].log_text().contains(LEADING)
    });
    eprintln!("b leads {took:?} after a was cut from etcd (lease {LEASE:?})");
    assert!(
        replicas[0].log_text().contains("stopped leading"),
        "a stepped down"
    );
    assert!(took <= LEASE * 4 / 3 + Duration::from_secs(2), "{took:?}");
    // One leader at a time: a says it does not lead (fencing keeps a stalled write out too,
    // see tests/fencing.rs).
    let leads = |replica: &Manager, name: &str| {
        sample(
            &replica.scrape(),
            &format!("opi_manager_leader{{replica=\"{name}\"}}"),
        )
    };
    assert_eq!(leads(&replicas[0], "a"), Some(0.0));
    assert_eq!(leads(&replicas[1], "b"), Some(1.0));

    let took = wait_until(GRACE, "both sessions recorded at b", || {
        session_nodes(&etcd, "b").len() == nodes.len()
    });
    eprintln!(
        "agents moved to b {took:?} after b led, {:?} after the cut",
        cut.elapsed()
    );
    assert!(
        agents.iter().all(|a| a
            .log_text()
            .contains("moving the session to a manager replica")),
        "each agent moved because a could not record its session"
    );
    // Past a's lease and the grace period, b still counts both nodes online.
    std::thread::sleep(GRACE.saturating_sub(cut.elapsed()) + LEASE);
    assert!(all_online(&replicas[1].opictl(), &nodes));
    assert!(status_of(&replicas[0])["store_unavailable_since"].is_string());

    netns.nft(&["delete table inet opi_fault"]);
    let healed = Instant::now();
    wait_until(WAIT, "a to reach etcd again", || {
        status_of(&replicas[0])["store_unavailable_since"].is_null()
    });
    eprintln!("a fresh again {:?} after the link healed", healed.elapsed());
    assert_eq!(
        leader_at(&replicas[0]).as_deref(),
        Some("b"),
        "b still leads"
    );

    assert_none_offline(&assert_nothing_lost(&etcd, &acknowledged));
}

#[test]
fn the_leader_killed_under_load_loses_no_acknowledged_change_and_no_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::cluster();
    let url = etcd.url();
    let nodes = node_names();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let names = ["a", "b", "c"];
    let stores = [url.clone(), url.clone(), url.clone()];
    // The agents are at the leader: its death cuts every stream. They run until the end.
    let (mut replicas, _agents, mut acknowledged) = start(dir.path(), &names, &stores, &nodes);
    wait_until(WAIT, "every session recorded at a", || {
        session_nodes(&etcd, "a").len() == nodes.len()
    });

    // An operator keeps creating tokens at b through the failover; each one answered must be
    // stored at the end, each one refused must not be.
    let writing = std::sync::atomic::AtomicBool::new(true);
    let operator = replicas[1].opictl();
    let (created, refused, took, moved) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let opictl = &operator;
            let (mut created, mut refused) = (Vec::new(), 0);
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = opictl.run(&["token", "create", "--pool", "load", "-o", "json"]);
                match answer.status.success() {
                    true => {
                        let token: serde_json::Value =
                            serde_json::from_slice(&answer.stdout).expect("token JSON");
                        created.push(token["id"].as_str().expect("id").to_string());
                    }
                    false => refused += 1,
                }
            }
            (created, refused)
        });
        std::thread::sleep(Duration::from_secs(1));
        replicas[0].kill();
        let killed = Instant::now();
        let moved = wait_until(GRACE, "every session recorded at b or c", || {
            session_nodes(&etcd, "b").len() + session_nodes(&etcd, "c").len() == nodes.len()
        });
        wait_until(WAIT, "b or c to lead", || {
            matches!(leader_at(&replicas[1]).as_deref(), Some("b" | "c"))
        });
        let took = killed.elapsed();
        // Past a's lease and the grace period, no node went offline.
        std::thread::sleep(GRACE.saturating_sub(killed.elapsed()) + LEASE);
        writing.store(false, std::sync::atomic::Ordering::Relaxed);
        let (created, refused) = writer.join().expect("writer");
        (created, refused, took, moved)
    });
    eprintln!(
        "new leader within {took:?} after a was killed (lease {LEASE:?}); {} agents back at b or c \
         {moved:?} after the kill; {} tokens created during the failover, {refused} refused",
        nodes.len(),
        created.len()
    );
    assert!(took <= LEASE * 4 / 3 + Duration::from_secs(2), "{took:?}");
    assert!(!created.is_empty(), "the operator's writes went on");
    acknowledged.tokens.extend(created);

    assert_none_offline(&assert_nothing_lost(&etcd, &acknowledged));
    let tokens = replicas[2].opictl().json(&["token", "list"]);
    let listed = tokens.as_array().map_or(0, Vec::len);
    assert_eq!(
        listed,
        acknowledged.tokens.len(),
        "only the acknowledged tokens exist: {tokens}"
    );
}

/// `fault-1`, `fault-2`, … as many as [`AGENTS_ENV`] says.
fn node_names() -> Vec<String> {
    let count: usize = std::env::var(AGENTS_ENV)
        .ok()
        .map(|v| v.parse().expect("OPI_FAULT_AGENTS is a number"))
        .unwrap_or(2);
    (1..=count).map(|i| format!("fault-{i}")).collect()
}

/// Asserts that no node of `history` went offline.
fn assert_none_offline(history: &[EventRecord]) {
    let offline: Vec<_> = history
        .iter()
        .filter(|e| e.kind == "connectivity" && e.to == "offline")
        .collect();
    assert!(offline.is_empty(), "no node went offline: {offline:?}");
}

/// Starts replicas `names` of one fleet on `stores`, the first one leading, and `nodes`
/// enrolled at it, with what was acknowledged.
fn start(
    dir: &std::path::Path,
    names: &[&str],
    stores: &[String],
    nodes: &[&str],
) -> (Vec<Manager>, Vec<Agent>, Acknowledged) {
    let mut replicas = replicas(dir, "faults", names, stores, &serve_args());
    replicas[0].start();
    wait_until(WAIT, "the first replica to lead", || {
        replicas[0].log_text().contains(LEADING)
    });
    for replica in &mut replicas[1..] {
        replica.start();
    }
    let mut acknowledged = Acknowledged::default();
    let agents = enroll_and_start(dir, &replicas[0], nodes, &mut acknowledged);
    (replicas, agents, acknowledged)
}

/// Enrolls and starts `nodes` at `replica`, recording what was acknowledged.
fn enroll_and_start(
    dir: &std::path::Path,
    replica: &Manager,
    nodes: &[&str],
    acknowledged: &mut Acknowledged,
) -> Vec<Agent> {
    let (id, token) = replica
        .opictl()
        .create_token("workers", nodes.len() as u32, &[]);
    acknowledged.tokens.insert(id);
    nodes
        .iter()
        .map(|name| {
            let mut agent = Agent::new(dir, name);
            ok(agent.enroll(&replica.endpoint(), &replica.ca_pin(), &token));
            acknowledged.enrolled.insert(name.to_string());
            agent.start();
            agent
        })
        .collect()
}

fn status_of(replica: &Manager) -> serde_json::Value {
    replica.opictl().json(&["status"])
}

fn texts(output: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
