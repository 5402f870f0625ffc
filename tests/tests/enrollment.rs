//! Many enrollments on one bootstrap token: concurrent uses all succeed, the token list names
//! every node, and a retry after many other uses still gets its first answer back.

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
            answers.push(answer.expect("enrollment task"));
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
        enroll(client, first).await
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
    let key = opi_pki::ca::generate_key().expect("key");
    EnrollRequest {
        reenroll: false,
        token: token.to_string(),
        csr_der: opi_pki::csr::make_node_csr(&key, &name(i)).expect("CSR"),
        name: name(i),
        facts: Some(opi_tests::grpc::facts()),
    }
}

/// Enrolls, retrying as an agent does when a concurrent use of the token aborted the call;
/// returns the certificate chain.
async fn enroll(
    mut client: opi_proto::v1::enrollment_client::EnrollmentClient<tonic::transport::Channel>,
    request: EnrollRequest,
) -> String {
    for _ in 0..ATTEMPTS {
        match client.enroll(request.clone()).await {
            Ok(answer) => return answer.into_inner().cert_chain_pem,
            Err(status) if status.code() == Code::Aborted => continue,
            Err(status) => panic!("enroll {}: {status}", request.name),
        }
    }
    panic!("enroll {}: aborted {ATTEMPTS} times", request.name)
}
