//! Three manager replicas on a real 3-member etcd, agents connected to one of them: the fleet
//! keeps working when one etcd member dies; killing the replica that holds the agents'
//! sessions leaves the nodes online (they reconnect to another within the grace period, and
//! the leader sees their sessions there); killing the leader with SIGKILL makes another
//! replica lead within the lease time, which then still turns a stopped node offline; and the
//! event history has no duplicated or missing revision.

mod common;

use std::time::{Duration, Instant};

use common::{connectivity, events, leader_at, replicas, serve_as, session_nodes, LEADING};

use opi_tests::etcd::Etcd;
use opi_tests::{all_online, free_port, ok, sample, wait_until, Agent, Manager, Opictl, WAIT};

/// `--leader-lease` of every replica.
const LEASE: Duration = Duration::from_secs(3);
/// `--offline-after`: the grace period.
const GRACE: Duration = Duration::from_secs(12);
const NODES: [&str; 2] = ["rep-1", "rep-2"];

#[test]
fn replicas_fail_over_without_losing_nodes_or_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut etcd = Etcd::cluster();
    let url = etcd.url();
    let addrs: Vec<String> = (0..3).map(|_| free_port()).collect();
    // Agents try the replicas in this order: the follower "f1" first, then "f2", then "l".
    let advertise: Vec<String> = [1, 2, 0]
        .iter()
        .flat_map(|&i| ["--advertise".to_string(), format!("https://{}", addrs[i])])
        .collect();
    let args = |name: &str| {
        let mut args: Vec<String> = [
            "--store",
            &url,
            "--leader-lease",
            "3s",
            "--heartbeat",
            "1s",
            "--offline-after",
            "12s",
            "--report-freshness",
            "30s",
            "--replica-name",
            name,
            "--metrics-listen",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(advertise.iter().cloned());
        args
    };
    let first = Manager::init_with(dir.path(), "replicas", &["--store", &url]);
    let copies = ["f1", "f2"].map(|name| first.copy_to(&dir.path().join(name)));
    let mut replicas: Vec<Manager> = std::iter::once(first)
        .chain(copies)
        .zip(["l", "f1", "f2"])
        .enumerate()
        .map(|(i, (replica, name))| {
            let args = args(name);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            replica
                .with_args(&args)
                .with_listen(addrs[i].parse().expect("address"))
        })
        .collect();
    replicas[0].start();
    wait_until(WAIT, "the first replica to lead", || {
        replicas[0].log_text().contains(LEADING)
    });
    replicas[1].start();
    replicas[2].start();
    // Every replica names itself and the leader in `opictl status`, and says on its metrics
    // page whether it leads.
    for (replica, name) in replicas.iter().zip(["l", "f1", "f2"]) {
        wait_until(WAIT, "every replica to name the leader", || {
            leader_at(replica) == Some("l".to_string())
        });
        assert_eq!(replica.opictl().json(&["status"])["replica"], name);
        let leads = format!("opi_manager_leader{{replica=\"{name}\"}}");
        let flag = if name == "l" { 1.0 } else { 0.0 };
        assert_eq!(sample(&replica.scrape(), &leads), Some(flag), "{name}");
    }

    let holder = &replicas[1];
    let (_, token) = holder.opictl().create_token("workers", 2, &[]);
    let mut agents: Vec<Agent> = NODES
        .iter()
        .map(|name| {
            let agent = Agent::new(dir.path(), name);
            ok(agent.enroll(&holder.endpoint(), &holder.ca_pin(), &token));
            agent
        })
        .collect();
    for agent in &mut agents {
        agent.start();
    }
    let leader = replicas[0].opictl();
    wait_until(WAIT, "the leader to see both nodes online", || {
        all_online(&leader, &NODES)
    });
    for follower in &replicas[1..] {
        assert!(
            !follower.log_text().contains(LEADING),
            "a follower leads while the first replica does"
        );
    }

    // One etcd member dies, the first endpoint every replica tries: the fleet keeps working on
    // the other two, changes included, and the rest of this test runs without it.
    etcd.kill(0);
    let (id, _) = replicas[2].opictl().create_token("workers", 1, &[]);
    assert!(!id.is_empty());
    assert!(all_online(&leader, &NODES), "{:?}", leader.nodes());
    assert_eq!(leader_at(&replicas[1]).as_deref(), Some("l"));

    // The follower holding both sessions dies: the agents move to "f2"; the leader keeps
    // them online through the lease expiry of "f1"'s sessions and past the grace period.
    replicas[1].kill();
    let killed = Instant::now();
    wait_until(WAIT, "both sessions recorded at f2", || {
        session_nodes(&etcd, "f2").len() == NODES.len()
    });
    eprintln!(
        "agents reconnected to f2 {:?} after f1 died",
        killed.elapsed()
    );
    std::thread::sleep(GRACE + LEASE);
    assert!(all_online(&leader, &NODES), "{:?}", leader.nodes());

    // The leader dies: "f2" leads within the lease time (plus one campaign round).
    replicas[0].kill();
    let killed = Instant::now();
    let took = wait_until(WAIT, "f2 to say it leads in `opictl status`", || {
        leader_at(&replicas[2]) == Some("f2".to_string())
    });
    eprintln!("f2 leads {took:?} after the leader was killed (lease {LEASE:?})");
    assert!(took <= LEASE * 4 / 3 + Duration::from_secs(1), "{took:?}");
    assert!(replicas[2].log_text().contains(LEADING));
    assert!(!replicas[2].log_text().contains("stopped leading"));
    let leads = sample(&replicas[2].scrape(), r#"opi_manager_leader{replica="f2"}"#);
    assert_eq!(leads, Some(1.0));

    // Supervision goes on at the new leader: a node stopped now becomes offline.
    let new_leader = replicas[2].opictl();
    agents[1].stop();
    let stopped = Instant::now();
    wait_until(GRACE + WAIT, "rep-2 offline at the new leader", || {
        connectivity(&new_leader, "rep-2") == "offline"
    });
    eprintln!(
        "rep-2 offline {:?} after it stopped (grace {GRACE:?}); failover took {:?} in all",
        stopped.elapsed(),
        killed.elapsed()
    );
    assert_eq!(connectivity(&new_leader, "rep-1"), "online");

    let history = events(&etcd);
    let revisions: Vec<u64> = history.iter().map(|e| e.revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[1] == w[0] + 1),
        "event revisions are gapless and unique: {revisions:?}"
    );
    assert_eq!(revisions.first(), Some(&1), "{revisions:?}");
    let offline = |name: &str| {
        history
            .iter()
            .filter(|e| e.node == name && e.kind == "connectivity" && e.to == "offline")
            .count()
    };
    assert_eq!(offline("rep-1"), 0, "rep-1 never went offline: {history:?}");
    assert_eq!(offline("rep-2"), 1, "rep-2 went offline once: {history:?}");
    eprintln!(
        "{} events, revisions 1..={}",
        history.len(),
        revisions.len()
    );
    drop(agents);
}

#[test]
fn a_watch_follows_every_replica_and_resumes_on_another_without_loss_or_repeat() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::cluster();
    let url = etcd.url();
    // Agents try "a" first.
    let stores = [url.clone(), url.clone()];
    let serve = ["--leader-lease", "3s", "--heartbeat", "1s"];
    let mut replicas = replicas(dir.path(), "watches", &["a", "b"], &stores, &serve);
    for replica in &mut replicas {
        replica.start();
    }
    wait_until(WAIT, "a to lead", || {
        leader_at(&replicas[0]).as_deref() == Some("a")
    });

    // A watch on "b" sees, live, the events "a" commits as the agents connect there.
    let online_both = |events: &[opi_proto::v1::Event]| {
        NODES.iter().all(|name| {
            events
                .iter()
                .any(|e| e.node == *name && e.kind == "connectivity" && e.to == "online")
        })
    };
    let (at_b, mut agents) = std::thread::scope(|scope| {
        let watch = scope.spawn(|| replicas[1].events_after(0, WAIT, online_both));
        // Let the watch catch up with the (empty) store before anything happens.
        std::thread::sleep(Duration::from_secs(1));
        let (_, token) = replicas[0].opictl().create_token("workers", 2, &[]);
        let mut agents: Vec<Agent> = NODES
            .iter()
            .map(|name| {
                let agent = Agent::new(dir.path(), name);
                ok(agent.enroll(&replicas[0].endpoint(), &replicas[0].ca_pin(), &token));
                agent
            })
            .collect();
        for agent in &mut agents {
            agent.start();
        }
        let started = Instant::now();
        let events = watch.join().expect("watch at b");
        eprintln!(
            "b's watch saw a's events {:?} after the agents started",
            started.elapsed()
        );
        (events, agents)
    });
    assert_eq!(
        session_nodes(&etcd, "a").len(),
        NODES.len(),
        "the agents are at a"
    );
    assert_consecutive(&at_b, 1);

    // A watch on "a" up to both nodes online; then "a" commits one more event and dies.
    let at_a = replicas[0].events_after(0, WAIT, online_both);
    assert_consecutive(&at_a, 1);
    let last = at_a.last().expect("events at a").revision;
    let maintenance = |name: &str, on: &str| {
        let args = ["node", "maintenance", on, name, "--reason", "watch test"];
        args.map(str::to_owned)
    };
    let on = maintenance(NODES[0], "on");
    ok(replicas[0].opictl().run(&on.each_ref().map(String::as_str)));
    replicas[0].kill();

    // Resumed on "b" from the last revision received: "a"'s last event, then "b"'s own.
    let off = maintenance(NODES[0], "off");
    ok(replicas[1]
        .opictl()
        .run(&off.each_ref().map(String::as_str)));
    let resumed = replicas[1].events_after(last, WAIT, |events| {
        events
            .iter()
            .any(|e| e.kind == "maintenance" && e.node == NODES[0] && e.to == "off")
    });
    assert_consecutive(&resumed, last + 1);
    let kinds: Vec<(&str, &str)> = resumed
        .iter()
        .filter(|e| e.kind == "maintenance")
        .map(|e| (e.node.as_str(), e.to.as_str()))
        .collect();
    assert_eq!(kinds.len(), 2, "{resumed:?}");
    let seen: Vec<u64> = at_a.iter().chain(&resumed).map(|e| e.revision).collect();
    let stored: Vec<u64> = events(&etcd).iter().map(|e| e.revision).collect();
    assert_eq!(
        seen,
        stored[..seen.len()],
        "what the watches saw is the store's history"
    );
    eprintln!(
        "watch resumed at b after revision {last}: revisions {}..={}",
        last + 1,
        resumed.last().map_or(last, |e| e.revision)
    );
    for agent in &mut agents {
        agent.stop();
    }
}

#[test]
fn replicas_joined_with_their_own_issuing_ca_accept_each_others_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::cluster();
    let url = etcd.url();
    let addrs: Vec<String> = (0..2).map(|_| free_port()).collect();
    let a = Manager::init_with(dir.path(), "joined", &["--store", &url, "--replica", "a"]);
    let first_dir = dir.path().join("manager");
    let b_dir = dir.path().join("b");
    let b = Manager::init_with(
        &b_dir,
        "joined",
        &[
            "--store",
            &url,
            "--replica",
            "b",
            "--join",
            first_dir.to_str().expect("path"),
        ],
    );
    let join = |extra: &[&str]| {
        let mut command = std::process::Command::new(opi_tests::bin("opi-manager"));
        command.args(["init", "--fleet", "joined", "--data-dir"]);
        command
            .arg(dir.path().join("refused"))
            .arg("--join")
            .arg(&first_dir);
        opi_tests::fails(opi_tests::run(command.args(extra)))
    };
    let same = join(&["--store", &url, "--replica", "a"]);
    assert!(same.contains("a name of its own"), "{same}");
    let sqlite = join(&["--replica", "c"]);
    assert!(sqlite.contains("--join needs --store etcd://"), "{sqlite}");
    assert!(!dir.path().join("refused").exists());
    let pki = |dir: &std::path::Path, file: &str| dir.join("manager/pki").join(file);
    assert!(
        !pki(&b_dir, "root-ca.key").exists(),
        "a joined replica holds no root key"
    );
    let issuing = |dir: &std::path::Path| {
        std::fs::read_to_string(pki(dir, "issuing-ca.pem")).expect("issuing CA")
    };
    assert_ne!(
        issuing(dir.path()),
        issuing(&b_dir),
        "each replica has its own issuing CA"
    );
    assert_eq!(a.ca_pin(), b.ca_pin(), "one fleet root");

    // Agents enrolled at one replica try the other first.
    let mut replicas: Vec<Manager> = [a, b]
        .into_iter()
        .zip(["a", "b"])
        .enumerate()
        .map(|(i, (replica, name))| {
            let advertise = [&addrs[1 - i], &addrs[i]];
            let serve = ["--leader-lease", "3s", "--heartbeat", "1s"];
            serve_as(replica, name, &url, &serve, &advertise, &addrs[i])
        })
        .collect();
    for replica in &mut replicas {
        replica.start();
    }
    let mut agents = Vec::new();
    for (replica, name) in replicas.iter().zip(["by-a", "by-b"]) {
        let (_, token) = replica.opictl().create_token("workers", 1, &[]);
        let mut agent = Agent::new(dir.path(), name);
        ok(agent.enroll(&replica.endpoint(), &replica.ca_pin(), &token));
        agent.start();
        agents.push(agent);
    }
    // Each node's session is at the replica that did not sign its certificate.
    wait_until(WAIT, "each agent's session at the other replica", || {
        session_nodes(&etcd, "b") == ["by-a"] && session_nodes(&etcd, "a") == ["by-b"]
    });
    for replica in &replicas {
        let opictl = replica.opictl();
        wait_until(WAIT, "both nodes online at every replica", || {
            all_online(&opictl, &["by-a", "by-b"])
        });
    }
    // Each replica's admin certificate is accepted by the other.
    for (signer, other, name) in [(0, 1, "b"), (1, 0, "a")] {
        let crossed = Opictl {
            endpoint: replicas[other].endpoint(),
            ..replicas[signer].opictl()
        };
        assert_eq!(crossed.json(&["status"])["replica"], name);
    }
    for agent in &mut agents {
        agent.stop();
    }
}

/// Asserts that `events` have revisions `first`, `first + 1`, … with none missing or repeated.
fn assert_consecutive(events: &[opi_proto::v1::Event], first: u64) {
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    let expected: Vec<u64> = (first..first + revisions.len() as u64).collect();
    assert_eq!(
        revisions, expected,
        "revisions from {first}, none lost or repeated"
    );
}

#[test]
fn a_leader_that_loses_etcd_stops_leading_before_its_lease_expires() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut etcd = Etcd::cluster();
    let url = etcd.url();
    let mut replica = Manager::init_with(dir.path(), "fenced", &["--store", &url]).with_args(&[
        "--store",
        &url,
        "--leader-lease",
        "3s",
        "--replica-name",
        "alone",
    ]);
    replica.start();
    wait_until(WAIT, "the replica to lead", || {
        replica.log_text().contains(LEADING)
    });

    // Two of three members gone: no quorum, so no keep-alive can succeed.
    etcd.kill(1);
    etcd.kill(2);
    let took = wait_until(WAIT, "the replica to step down", || {
        replica.log_text().contains("stopped leading")
    });
    eprintln!("stepped down {took:?} after etcd lost its quorum (lease {LEASE:?})");
    assert!(
        took < LEASE,
        "{took:?}: the lease could have expired meanwhile"
    );
}

#[test]
fn a_stopping_replica_saves_the_last_seen_times_of_its_own_sessions_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::single();
    let extra = ["--heartbeat", "1s", "--metrics-listen", "127.0.0.1:0"];
    let (mut a, _b, mut agents) = two_replicas_with_an_agent_each(dir.path(), &etcd, &extra);
    // Replica a learns of b's node from etcd, as every replica does, and hears from its own
    // node after the session opened, which makes a last-seen time to save.
    wait_until(WAIT, "replica a to know both nodes", || {
        a.opictl().nodes().len() == 2
    });
    wait_until(WAIT, "a heartbeat at replica a", || {
        sample(&a.scrape(), "opi_heartbeats_total").is_some_and(|n| n >= 1.0)
    });

    a.terminate(WAIT);
    let log = a.log_text();
    let saved = log
        .lines()
        .find(|line| line.contains("last-seen times saved at shutdown"))
        .unwrap_or_else(|| panic!("no last-seen line in the log of replica a:\n{log}"));
    assert!(
        saved.contains("nodes=1") && saved.contains("ended=1"),
        "replica a wrote the last-seen time of its own session only: {saved}"
    );
    assert!(!log.contains("changed during shutdown"), "{log}");
    for agent in &mut agents {
        agent.stop();
    }
}

#[test]
fn each_replica_judges_the_reports_of_the_sessions_it_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::single();
    // Heartbeats carry when the agent last checked its conditions; a report older than the
    // freshness limit makes the node's health unknown.
    let extra = [
        "--heartbeat",
        "1s",
        "--report-freshness",
        "3s",
        "--offline-after",
        "60s",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let (a, b, agents) = two_replicas_with_an_agent_each(dir.path(), &etcd, &extra);
    let leader = wait_for_leader(&a);
    let (follower, held, own) = if leader == "a" {
        (&b, &agents[1], &agents[0])
    } else {
        (&a, &agents[0], &agents[1])
    };

    // Three freshness limits: the leader sees only the record of the follower's node, whose
    // report time is the session's opening; it took that node for one gone stale.
    std::thread::sleep(Duration::from_secs(9));
    let stale = |node: &str| {
        events(&etcd)
            .into_iter()
            .filter(|e| e.node == node && e.reason == "StaleReport")
            .count()
    };
    for agent in &agents {
        assert_eq!(stale(&agent.name), 0, "{} was never stale", agent.name);
        let nodes = follower.opictl().nodes();
        let node = nodes.iter().find(|n| n["name"] == agent.name.as_str());
        // Degraded under a root of its own (no kubelet there), but known.
        let health = &node.expect("node listed")["health"];
        assert_ne!(health, "unknown", "{}", agent.name);
    }

    // The follower judges its own node: frozen, it sends nothing, and its report goes stale.
    held.freeze();
    wait_until(
        WAIT,
        "the follower to mark its frozen node's report stale",
        || stale(&held.name) == 1,
    );
    held.thaw();
    assert_eq!(stale(&own.name), 0, "the leader's own node stayed fresh");
}

/// Replicas "a" and "b" of one fleet on `etcd`, served with `extra`, and agents "at-a" and
/// "at-b" enrolled through each, once each holds its session at the replica it enrolled with.
fn two_replicas_with_an_agent_each(
    dir: &std::path::Path,
    etcd: &Etcd,
    extra: &[&str],
) -> (Manager, Manager, Vec<Agent>) {
    let url = etcd.url();
    let addrs: Vec<String> = (0..2).map(|_| free_port()).collect();
    let first = Manager::init_with(dir, "pair", &["--store", &url]);
    let second = first.copy_to(&dir.join("b"));
    // Each replica advertises itself first, so that an agent enrolled through it holds its
    // session there.
    let mut a = serve_as(first, "a", &url, extra, &[&addrs[0], &addrs[1]], &addrs[0]);
    let mut b = serve_as(second, "b", &url, extra, &[&addrs[1], &addrs[0]], &addrs[1]);
    a.start();
    b.start();
    let agents: Vec<Agent> = [(&a, "at-a"), (&b, "at-b")]
        .into_iter()
        .map(|(replica, name)| {
            let (_, token) = replica.opictl().create_token("workers", 1, &[]);
            let mut agent = Agent::new(dir, name);
            ok(agent.enroll(&replica.endpoint(), &replica.ca_pin(), &token));
            agent.start();
            agent
        })
        .collect();
    wait_until(WAIT, "one session at each replica", || {
        session_nodes(etcd, "a") == ["at-a"] && session_nodes(etcd, "b") == ["at-b"]
    });
    (a, b, agents)
}

/// The name of the replica that leads, once one does.
fn wait_for_leader(replica: &Manager) -> String {
    let mut leader = None;
    wait_until(WAIT, "a leader", || {
        leader = leader_at(replica);
        leader.is_some()
    });
    leader.expect("a leader")
}
