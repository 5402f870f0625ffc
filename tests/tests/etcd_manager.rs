//! The manager on etcd end to end: `serve --store etcd://…` enrolls an agent and keeps its node
//! and events across a restart; one single-use token raced through two manager processes
//! on the same etcd enrolls exactly one node, a hundred times over; and a simulated fleet
//! enrolling and connecting at once is committed in transactions etcd takes.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opi_manager::store::{EtcdStore, Store};
use opi_proto::v1::{CreateTokenRequest, EnrollRequest, Event, WatchRequest};
use opi_tests::etcd::Etcd;
use opi_tests::free_port;
use opi_tests::sim::Report;
use opi_tests::{all_online, bin, grpc, http, node, ok, sample, wait_until, Agent, Manager, WAIT};
use tonic::Code;

/// Rounds of the single-use token race.
const RACES: usize = 100;
/// Tries of one enrollment aborted by the concurrent use of its token (as an agent retries).
const ATTEMPTS: usize = 20;

/// Enrollments aborted back to the client (the manager ran out of compare-and-swap tries).
static ABORTED: AtomicUsize = AtomicUsize::new(0);
/// What a manager logs when its commit of a token use lost the compare-and-swap to the other.
const LOST_CAS: &str = "token changed since it was read";

#[test]
fn manager_on_etcd_keeps_nodes_and_events_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::cluster();
    let url = etcd.url();
    let mut manager =
        Manager::init_with(dir.path(), "e2e", &["--store", &url]).with_args(&["--store", &url]);
    manager.start();
    let opictl = manager.opictl();
    let (_, token) = opictl.create_token("workers", 1, &[]);
    let mut agent = Agent::new(dir.path(), "etcd-node");
    ok(agent.enroll(&manager.endpoint(), &manager.ca_pin(), &token));
    agent.start();
    wait_until(WAIT, "the node online", || {
        all_online(&opictl, &["etcd-node"])
    });
    ok(opictl.run(&[
        "node",
        "maintenance",
        "on",
        "etcd-node",
        "--reason",
        "disk swap",
    ]));
    let before = events(&manager, |events| {
        events.iter().any(|e| e.kind == "maintenance")
    });

    manager.terminate(WAIT);
    let started = Instant::now();
    manager.start();
    let opictl = manager.opictl();
    wait_until(Duration::from_secs(15), "the agent to reconnect", || {
        all_online(&opictl, &["etcd-node"])
    });
    eprintln!("agent back online {:?} after restart", started.elapsed());

    let nodes = opictl.nodes();
    let kept = node(&nodes, "etcd-node").expect("node survives the restart");
    assert_eq!(kept["pool"], "workers");
    assert_eq!(kept["maintenance"]["reason"], "disk swap", "{kept}");
    let after = events(&manager, |events| events.len() >= before.len());
    let revisions = |events: &[Event]| -> Vec<(u64, String, String)> {
        events
            .iter()
            .map(|e| (e.revision, e.kind.clone(), e.to.clone()))
            .collect()
    };
    assert_eq!(
        revisions(&after[..before.len()]),
        revisions(&before),
        "every event before the restart is still there, at its revision"
    );
    assert!(
        !manager.data_dir.join("fleet.db").exists(),
        "nothing went to the default SQLite store"
    );
    let audit = ok(opictl.run(&["audit", "--limit", "100"]));
    for action in ["fleet.init", "token.create", "node.enroll"] {
        assert!(audit.contains(action), "{action} audited in etcd:\n{audit}");
    }
}

#[test]
fn serve_on_an_unreachable_etcd_exits_naming_each_endpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = Manager::init(dir.path(), "down");
    let closed = [free_port(), free_port()];
    let url = format!("etcd://{},{}?timeout=1s", closed[0], closed[1]);

    let started = Instant::now();
    let output = opi_tests::run(
        std::process::Command::new(opi_tests::bin("opi-manager"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--store",
                &url,
                "--data-dir",
            ])
            .arg(&manager.data_dir),
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "a store failure is a runtime failure"
    );
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("is unavailable"), "{error}");
    for endpoint in &closed {
        assert!(
            error.contains(endpoint.as_str()),
            "{endpoint} not named: {error}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_fleet_enrolling_and_connecting_at_once_is_committed_in_transactions_etcd_takes() {
    const AGENTS: usize = 200;
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::single();
    let url = etcd.url();
    let mut manager = Manager::init_with(dir.path(), "batches", &["--store", &url]).with_args(&[
        "--store",
        &url,
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    manager.start();

    // 64 enrollments in flight through one token fill its lane beyond one transaction's
    // worth, and the sessions opening after them queue their events together.
    let output = Command::new(bin("opi-fleet-sim"))
        .args([
            "--manager",
            &manager.endpoint(),
            "--agents",
            &AGENTS.to_string(),
        ])
        .args([
            "--concurrency",
            "64",
            "--duration",
            "1s",
            "--json",
            "--data-dir",
        ])
        .arg(&manager.data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("opi-fleet-sim runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "simulator failed: {stderr}");
    let report: Report = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(
        (report.enrolled, report.connected),
        (AGENTS, AGENTS),
        "{stderr}"
    );
    assert_eq!(
        report.enroll_retries, 0,
        "no enrollment was aborted back to the simulator"
    );

    let member = etcd.members[0].client.parse().expect("etcd client address");
    let page = http::get(member, "/metrics").expect("etcd metrics").body;
    let refused = r#"grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    assert_eq!(
        sample(&page, refused).unwrap_or(0.0),
        0.0,
        "etcd refused transactions (more than its 128 operations?)"
    );
    let enrolled = r#"opi_enrollments_total{outcome="ok",reason="none"}"#;
    assert_eq!(sample(&manager.scrape(), enrolled), Some(AGENTS as f64));
    let last = sample(&manager.scrape(), "opi_event_revision").expect("event revision") as usize;
    assert!(last >= AGENTS, "at least an event per node, got {last}");
    let events = manager.events_after(0, WAIT, |events| events.len() >= last);
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    let expected: Vec<u64> = (1..=last as u64).collect();
    assert_eq!(revisions, expected, "event revisions without gap or repeat");
}

#[test]
fn single_use_token_raced_through_two_managers_enrolls_one_node_each_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::cluster();
    let url = etcd.url();
    let mut first =
        Manager::init_with(dir.path(), "race", &["--store", &url]).with_args(&["--store", &url]);
    let second_dir = dir.path().join("second");
    let mut second = first.copy_to(&second_dir);
    first.start();
    second.start();

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let outcomes = runtime.block_on(race(&first, &second));
    let elapsed = started.elapsed();
    for (round, winners) in outcomes.iter().enumerate() {
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
    }
    let through_second = outcomes.iter().filter(|w| w[0].ends_with("-b")).count();
    let lost =
        first.log_text().matches(LOST_CAS).count() + second.log_text().matches(LOST_CAS).count();
    eprintln!(
        "{RACES} races in {elapsed:?}; the second manager won {through_second}, the first {}; \
         {lost} commits lost the compare-and-swap in etcd, {} calls were aborted",
        RACES - through_second,
        ABORTED.load(Ordering::Relaxed)
    );
    assert!(
        lost > 0,
        "no race reached etcd's compare-and-swap: the test raced nothing"
    );

    let store = EtcdStore::open(&url).expect("open etcd store");
    let nodes = runtime
        .block_on(store.list(opi_manager::records::NODES))
        .expect("list nodes");
    assert_eq!(nodes.len(), RACES, "one node per token in the store");
    let tokens = runtime
        .block_on(store.list(opi_manager::records::TOKENS))
        .expect("list tokens");
    for kv in tokens.iter().filter(|kv| !kv.key.contains("/enrollments/")) {
        let token: serde_json::Value = serde_json::from_slice(&kv.value).expect("token JSON");
        assert_eq!(token["used"], 1, "{}: {token}", kv.key);
    }
}

/// Runs [`RACES`] rounds: a new single-use token, then two enrollments with it at once, one
/// through each manager. Returns the names that enrolled, per round.
async fn race(first: &Manager, second: &Manager) -> Vec<Vec<String>> {
    let mut admin = grpc::admin(&first.endpoint(), &first.data_dir)
        .await
        .expect("admin client");
    let pin = first.ca_pin();
    let mut rounds = Vec::new();
    for round in 0..RACES {
        // Each round's losing call is a failed enrollment: a new source address per round
        // keeps the manager's per-address limit on failures out of the race.
        let source = |side| std::net::IpAddr::from([127, 1, round as u8, side]);
        let clients = [
            grpc::enrollment_from(&first.endpoint(), &pin, source(1))
                .await
                .expect("first"),
            grpc::enrollment_from(&second.endpoint(), &pin, source(2))
                .await
                .expect("second"),
        ];
        let created = admin
            .create_token(CreateTokenRequest {
                pool: "race".into(),
                ttl_secs: 3600,
                uses: 1,
                ..Default::default()
            })
            .await
            .expect("create token")
            .into_inner();
        let [a, b] =
            ["a", "b"].map(|side| request(&created.secret, &format!("race-{round}-{side}")));
        let (left, right) =
            tokio::join!(enroll(clients[0].clone(), a), enroll(clients[1].clone(), b));
        rounds.push([left, right].into_iter().flatten().collect());
    }
    rounds
}

fn request(token: &str, name: &str) -> EnrollRequest {
    let key = opi_pki::ca::generate_key().expect("key");
    EnrollRequest {
        token: token.to_string(),
        csr_der: opi_pki::csr::make_node_csr(&key, name).expect("CSR"),
        name: name.into(),
        facts: Some(grpc::facts()),
        reenroll: false,
    }
}

/// The node's name if it enrolled, `None` if the token was used up; retries aborted calls
/// (the other manager's commit won the compare-and-swap on the token), counting them.
async fn enroll(
    mut client: opi_proto::v1::enrollment_client::EnrollmentClient<tonic::transport::Channel>,
    request: EnrollRequest,
) -> Option<String> {
    for _ in 0..ATTEMPTS {
        match client.enroll(request.clone()).await {
            Ok(_) => return Some(request.name),
            Err(status) if status.code() == Code::Aborted => {
                ABORTED.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(status) if status.code() == Code::Unauthenticated => {
                assert!(status.message().contains("used up"), "{status:?}");
                return None;
            }
            Err(status) => panic!("enroll {}: {status}", request.name),
        }
    }
    panic!("enroll {}: aborted {ATTEMPTS} times", request.name)
}

/// Every event about the node so far, replayed by a watch, once `done` holds.
fn events(manager: &Manager, done: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut client = runtime
        .block_on(grpc::admin(&manager.endpoint(), &manager.data_dir))
        .expect("admin client");
    let request = WatchRequest {
        since_revision: 0,
        replay_last: 10_000,
        nodes: vec!["etcd-node".into()],
        ..Default::default()
    };
    runtime.block_on(grpc::collect_events(&mut client, request, WAIT, done))
}
