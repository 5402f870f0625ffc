//! Many enrollments on one bootstrap token: concurrent uses all succeed without being aborted
//! (the manager commits them together), the token list names every node, a retry after many
//! other uses still gets its first answer back, and a token never grants more uses than it has
//! nor one name twice, however many ask at once.

use std::collections::BTreeSet;

use opi_proto::v1::EnrollRequest;
use opi_tests::{grpc, Manager};
use tokio::task::JoinSet;
use tonic::Code;

const NODES: usize = 40;
/// Rounds a simulated agent retries an enrollment aborted by a concurrent use of its token.
const ATTEMPTS: usize = 50;

#[test]
fn one_token_enrolls_many_nodes_concurrently_and_remembers_each_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut manager = Manager::init(dir.path(), "e2e");
    manager.start();
    let opictl = manager.opictl();
    let (id, token) = opictl.create_token("workers", NODES as u32, &[]);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (endpoint, pin) = (manager.endpoint(), manager.ca_pin());
    let (requests, answers) = runtime.block_on(async {
        let client = grpc::enrollment(&endpoint, &pin)
            .await
            .expect("enrollment client");
        let requests: Vec<EnrollRequest> = (0..NODES).map(|i| request(&token, i)).collect();
        let mut tasks = JoinSet::new();
        for request in requests.clone() {
            tasks.spawn(enroll(client.clone(), request));
        }
        let mut answers = Vec::new();
        while let Some(answer) = tasks.join_next().await {
            let (chain, aborts) = answer.expect("enrollment task");
            assert_eq!(
                aborts, 0,
                "one manager commits concurrent uses without aborting"
            );
            answers.push(chain);
        }
        (requests, answers)
    });
    assert_eq!(answers.len(), NODES);

    let tokens = opictl.json(&["token", "list"]);
    let listed = tokens
        .as_array()
        .expect("token list")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("token listed")
        .clone();
    assert_eq!(listed["used"], NODES as u64);
    let named: BTreeSet<&str> = listed["enrolled_nodes"]
        .as_array()
        .expect("enrolled nodes")
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    let expected: BTreeSet<String> = (0..NODES).map(name).collect();
    assert_eq!(named, expected.iter().map(String::as_str).collect());

    let first = requests[0].clone();
    let again = runtime.block_on(async {
        let client = grpc::enrollment(&endpoint, &pin)
            .await
            .expect("enrollment client");
        enroll(client, first).await.0
    });
    assert!(
        answers.contains(&again),
        "a retry gets the certificate issued first"
    );
    assert_eq!(opictl.json(&["token", "list"])[0]["used"], NODES as u64);
}

fn name(i: usize) -> String {
    format!("bulk-{i:02}")
}

fn request(token: &str, i: usize) -> EnrollRequest {
    request_named(token, &name(i))
}

/// A request for `name` with a key of its own.
fn request_named(token: &str, name: &str) -> EnrollRequest {
    let key = opi_pki::ca::generate_key().expect("key");
    EnrollRequest {
        reenroll: false,
        token: token.to_string(),
        csr_der: opi_pki::csr::make_node_csr(&key, name).expect("CSR"),
        name: name.to_string(),
        facts: Some(opi_tests::grpc::facts()),
    }
}

#[test]
fn concurrent_enrollments_get_exactly_the_uses_a_token_has_and_each_name_once() {
    const USES: u32 = 25;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut manager = Manager::init(dir.path(), "e2e");
    manager.start();
    let opictl = manager.opictl();
    let (id, token) = opictl.create_token("workers", USES, &[]);

    // 30 distinct nodes and 5 more asking for names among the first ones, all at once: at
    // most 10 refusals, below the failures that would rate-limit this address.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (endpoint, pin) = (manager.endpoint(), manager.ca_pin());
    let outcomes = runtime.block_on(async {
        let client = grpc::enrollment(&endpoint, &pin)
            .await
            .expect("enrollment client");
        let mut tasks = JoinSet::new();
        for i in 0..35 {
            let request = request_named(&token, &name(i % 30));
            let mut client = client.clone();
            tasks.spawn(async move { client.enroll(request).await.map(|_| ()) });
        }
        let mut outcomes = Vec::new();
        while let Some(outcome) = tasks.join_next().await {
            outcomes.push(outcome.expect("enrollment task"));
        }
        outcomes
    });

    let granted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(granted, USES as usize, "{outcomes:?}");
    for status in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        let message = status.message();
        assert!(
            message.contains("used up") || message.contains("already"),
            "a refusal says why: {status}"
        );
    }
    let tokens = opictl.json(&["token", "list"]);
    let listed = &tokens.as_array().expect("token list")[0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["used"], u64::from(USES));
    let nodes = opictl.json(&["nodes"]);
    let names: BTreeSet<&str> = nodes
        .as_array()
        .expect("node list")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(
        names.len(),
        USES as usize,
        "each name enrolled once: {names:?}"
    );
}

/// Enrolls, retrying as an agent does when a concurrent use of the token aborted the call;
/// returns the certificate chain and how many attempts were aborted.
async fn enroll(
    mut client: opi_proto::v1::enrollment_client::EnrollmentClient<tonic::transport::Channel>,
    request: EnrollRequest,
) -> (String, usize) {
    for aborts in 0..ATTEMPTS {
        match client.enroll(request.clone()).await {
            Ok(answer) => return (answer.into_inner().cert_chain_pem, aborts),
            Err(status) if status.code() == Code::Aborted => continue,
            Err(status) => panic!("enroll {}: {status}", request.name),
        }
    }
    panic!("enroll {}: aborted {ATTEMPTS} times", request.name)
}
