//! Every bad input of the foundation is refused with a message that says what was wrong,
//! is audited without the secret, and leaves fleet state unchanged.

use std::time::Duration;

use opi_proto::v1::{EnrollRequest, NodeFacts};
use opi_tests::{fails, grpc, ok, wait_until, Agent, Manager, Opictl, WAIT};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use tempfile::TempDir;
use tonic::Code;

struct Fleet {
    dir: TempDir,
    manager: Manager,
    opictl: Opictl,
}

fn fleet() -> Fleet {
    let dir = TempDir::new().unwrap();
    let mut manager = Manager::init(dir.path(), "e2e");
    manager.start();
    let opictl = manager.opictl();
    Fleet {
        dir,
        manager,
        opictl,
    }
}

impl Fleet {
    fn token_used(&self, id: &str) -> u64 {
        let tokens = self.opictl.json(&["token", "list"]);
        let token = tokens
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .expect("token listed");
        token["used"].as_u64().expect("used count")
    }

    fn enroll(&self, name: &str, token: &str) -> String {
        let agent = Agent::new(self.dir.path(), name);
        fails(agent.enroll(&self.manager.endpoint(), &self.manager.ca_pin(), token))
    }

    /// Sends an enrollment with a hand-made CSR; returns the refusal.
    fn enroll_raw(&self, token: &str, csr_der: Vec<u8>, name: &str) -> tonic::Status {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut client = grpc::enrollment(&self.manager.endpoint(), &self.manager.ca_pin())
                .await
                .unwrap();
            let request = EnrollRequest {
                reenroll: false,
                token: token.into(),
                csr_der,
                name: name.into(),
                facts: Some(grpc::facts()),
            };
            client
                .enroll(request)
                .await
                .expect_err("enrollment must be refused")
        })
    }

    fn assert_audited_refusal(&self, needle: &str) {
        let audit = ok(self.opictl.run(&["audit", "--limit", "200"]));
        assert!(
            audit
                .lines()
                .any(|l| l.contains("refused") && l.contains(needle)),
            "no refusal with `{needle}` in:\n{audit}"
        );
    }
}

fn csr(params: CertificateParams, key: &KeyPair) -> Vec<u8> {
    params.serialize_request(key).unwrap().der().to_vec()
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

#[test]
fn rejects_reused_single_use_token() {
    let f = fleet();
    let (id, token) = f.opictl.create_token("workers", 1, &[]);
    let first = Agent::new(f.dir.path(), "first");
    ok(first.enroll(&f.manager.endpoint(), &f.manager.ca_pin(), &token));
    let error = f.enroll("second", &token);
    assert!(error.contains("used up"), "{error}");
    assert!(
        error.contains("opictl token create"),
        "says what to do: {error}"
    );
    assert_eq!(f.token_used(&id), 1);
    assert_eq!(f.opictl.nodes().len(), 1);
    f.assert_audited_refusal("second");
}

#[test]
fn rejects_expired_token() {
    let f = fleet();
    let (id, token) = f.opictl.create_token("workers", 1, &["--ttl", "1s"]);
    wait_until(WAIT, "the token to expire", || {
        f.opictl
            .json(&["token", "list"])
            .to_string()
            .contains("expired")
    });
    let agent = Agent::new(f.dir.path(), "late");
    let refused = agent.enroll(&f.manager.endpoint(), &f.manager.ca_pin(), &token);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a refusal is a runtime failure"
    );
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("expired"), "{error}");
    assert!(
        error.contains("opictl token create"),
        "says what to do: {error}"
    );
    assert!(
        error.contains("Unauthenticated"),
        "names the gRPC code: {error}"
    );
    assert!(!agent.state_dir().join("agent.toml").exists());
    assert_eq!(f.token_used(&id), 0);
    assert!(f.opictl.nodes().is_empty());
}

#[test]
fn rejects_revoked_token() {
    let f = fleet();
    let (id, token) = f.opictl.create_token("workers", 1, &[]);
    ok(f.opictl.run(&["token", "revoke", &id]));
    let error = f.enroll("n1", &token);
    assert!(error.contains("revoked"), "{error}");
    assert_eq!(f.token_used(&id), 0);
    f.assert_audited_refusal("n1");
}

#[test]
fn rejects_malformed_and_unknown_tokens() {
    let f = fleet();
    let error = f.enroll("n1", "not-a-token");
    assert!(error.contains("malformed"), "{error}");
    let unknown = format!("{}.{}", "0".repeat(12), "a".repeat(32));
    let error = f.enroll("n2", &unknown);
    assert!(error.contains("unknown"), "{error}");
    assert!(f.opictl.nodes().is_empty());
}

#[test]
fn rejects_wrong_token_secret() {
    let f = fleet();
    let (id, token) = f.opictl.create_token("workers", 1, &[]);
    let forged = format!("{id}.{}", "a".repeat(32));
    assert_ne!(forged, token);
    let error = f.enroll("n1", &forged);
    assert!(error.contains("wrong secret"), "{error}");
    assert_eq!(f.token_used(&id), 0);
}

#[test]
fn refuses_manager_whose_ca_does_not_match_the_pin_and_sends_nothing() {
    let f = fleet();
    let (id, token) = f.opictl.create_token("workers", 1, &[]);
    let agent = Agent::new(f.dir.path(), "n1");
    let wrong_pin = format!("sha256:{}", "ab".repeat(32));
    let error = fails(agent.enroll(&f.manager.endpoint(), &wrong_pin, &token));
    assert!(error.contains(&wrong_pin), "names the pin given: {error}");
    assert!(error.contains("--ca-pin"), "says what to check: {error}");
    assert!(!agent.state_dir().join("agent.toml").exists());
    assert!(!agent.state_dir().join("node.pem").exists());
    assert_eq!(f.token_used(&id), 0);
    let audit = ok(f.opictl.run(&["audit", "--limit", "200"]));
    assert!(
        !audit.contains("node.enroll"),
        "nothing reached the manager: {audit}"
    );
}

#[test]
fn rejects_a_name_already_taken() {
    let f = fleet();
    let (_, token) = f.opictl.create_token("workers", 2, &[]);
    let first = Agent::new(f.dir.path(), "twin");
    ok(first.enroll(&f.manager.endpoint(), &f.manager.ca_pin(), &token));
    let other_dir = TempDir::new().unwrap();
    let second = Agent::new(other_dir.path(), "twin");
    let error = fails(second.enroll(&f.manager.endpoint(), &f.manager.ca_pin(), &token));
    assert!(error.contains("already enrolled"), "{error}");
    assert!(error.contains("opictl node remove twin"), "{error}");
    assert_eq!(f.opictl.nodes().len(), 1);
}

#[test]
fn rejects_bad_csrs_without_consuming_the_token() {
    let f = fleet();
    let (id, token) = f.opictl.create_token("workers", 1, &[]);

    let status = f.enroll_raw(&token, b"garbage".to_vec(), "n1");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("CSR"), "{status}");

    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let status = f.enroll_raw(&token, csr(CertificateParams::default(), &p384), "n1");
    assert!(status.message().contains("P-256"), "{status}");

    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let status = f.enroll_raw(&token, csr(ca, &p256()), "n1");
    assert!(status.message().contains("CA"), "{status}");

    for uri in [
        "spiffe://e2e/manager/manager",
        "spiffe://e2e/node/someone-else",
    ] {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().unwrap())];
        let status = f.enroll_raw(&token, csr(params, &p256()), "n1");
        assert!(
            status.message().contains("another identity"),
            "{uri}: {status}"
        );
    }

    assert_eq!(f.token_used(&id), 0);
    assert!(f.opictl.nodes().is_empty());
    f.assert_audited_refusal("invalid CSR");
}

#[test]
fn rejects_oversized_messages() {
    let f = fleet();
    let (id, token) = f.opictl.create_token("workers", 1, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        let mut client = grpc::enrollment(&f.manager.endpoint(), &f.manager.ca_pin())
            .await
            .unwrap();
        let facts = NodeFacts {
            hostname: "x".repeat(200_000),
            ..Default::default()
        };
        let request = EnrollRequest {
            reenroll: false,
            token,
            csr_der: vec![],
            name: "big".into(),
            facts: Some(facts),
        };
        client
            .enroll(request)
            .await
            .expect_err("oversized request refused")
    });
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status}"
    );
    assert!(status.message().contains("too large"), "{status}");
    assert_eq!(f.token_used(&id), 0);
}

#[test]
fn retried_enrollment_with_same_key_gets_same_answer_without_second_use() {
    let f = fleet();
    let (id, token) = f.opictl.create_token("workers", 2, &[]);
    let key = p256();
    let der = opi_pki::csr::make_node_csr(&key, "retry").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (first, second) = runtime.block_on(async {
        let mut client = grpc::enrollment(&f.manager.endpoint(), &f.manager.ca_pin())
            .await
            .unwrap();
        let request = EnrollRequest {
            reenroll: false,
            token: token.clone(),
            csr_der: der.clone(),
            name: "retry".into(),
            facts: Some(grpc::facts()),
        };
        let first = client.enroll(request.clone()).await.unwrap().into_inner();
        let second = client.enroll(request).await.unwrap().into_inner();
        (first, second)
    });
    assert_eq!(first.cert_chain_pem, second.cert_chain_pem);
    assert_eq!(f.token_used(&id), 1);
}

#[test]
fn refuses_client_certificates_from_another_ca_or_expired() {
    let f = fleet();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let foreign_root = opi_pki::ca::create_root_ca("e2e").unwrap();
    let foreign_issuing = opi_pki::ca::create_issuing_ca("e2e", "rogue", &foreign_root).unwrap();
    let foreign = opi_pki::Issuer::new("e2e", &foreign_issuing).unwrap();
    let (cert, key) = foreign
        .issue_operator("mallory", opi_pki::Role::Admin, Duration::from_secs(600))
        .unwrap();
    let refused = runtime.block_on(operator_call(&f, &cert.chain_pem, key.expose()));
    assert!(refused.contains("certificate"), "{refused}");

    let expired = expired_operator_cert(&f);
    let refused = runtime.block_on(operator_call(&f, &expired.0, &expired.1));
    assert!(refused.to_lowercase().contains("expired"), "{refused}");
    let log = f.manager.log_text();
    assert!(
        log.contains("client certificate refused"),
        "manager logs the refusal: {log}"
    );
}

#[test]
fn refuses_node_certificate_used_as_operator() {
    let f = fleet();
    let (_, token) = f.opictl.create_token("workers", 1, &[]);
    let agent = Agent::new(f.dir.path(), "sneaky");
    ok(agent.enroll(&f.manager.endpoint(), &f.manager.ca_pin(), &token));
    let chain = std::fs::read_to_string(agent.state_dir().join("node.pem")).unwrap();
    let key = std::fs::read_to_string(agent.state_dir().join("node.key")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime.block_on(operator_call(&f, &chain, &key));
    assert!(refused.contains("operator certificate"), "{refused}");
    assert!(refused.contains("spiffe://e2e/node/sneaky"), "{refused}");
}

#[test]
fn agent_refuses_a_node_certificate_posing_as_manager() {
    let f = fleet();
    let (_, token) = f.opictl.create_token("workers", 1, &[]);
    let issuer = grpc::issuer(&f.manager.data_dir, "e2e");
    let key = p256();
    let cert = issuer
        .issue_node("impostor", &key, Duration::from_secs(600))
        .unwrap();
    let bundle = std::fs::read_to_string(f.manager.data_dir.join("pki/trust-bundle.pem")).unwrap();
    let key_pem = opi_pki::SecretPem::new(key.serialize_pem());
    let client_auth = opi_pki::tls::ClientAuth::new(&bundle).unwrap();
    let tls = opi_pki::tls::server_config(&cert.chain_pem, &key_pem, client_auth).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        let acceptor = tokio_rustls_acceptor(tls);
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let agent = Agent::new(f.dir.path(), "victim");
    let error = fails(agent.enroll(&format!("https://{addr}"), &f.manager.ca_pin(), &token));
    assert!(
        error.contains("not a manager") || error.contains("certificate"),
        "{error}"
    );
}

fn tokio_rustls_acceptor(tls: std::sync::Arc<rustls::ServerConfig>) -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(tls)
}

async fn operator_call(f: &Fleet, chain: &str, key: &str) -> String {
    match grpc::operator(
        &f.manager.endpoint(),
        &f.manager.data_dir,
        "e2e",
        chain,
        key,
    )
    .await
    {
        Err(error) => format!("{error:#}"),
        Ok(mut client) => match client
            .list_nodes(opi_proto::v1::ListNodesRequest::default())
            .await
        {
            Ok(_) => panic!("the call was accepted"),
            Err(status) => error_chain(&status),
        },
    }
}

fn expired_operator_cert(f: &Fleet) -> (String, String) {
    let ca_pem = std::fs::read_to_string(f.manager.data_dir.join("pki/issuing-ca.pem")).unwrap();
    let ca_key = KeyPair::from_pem(
        &std::fs::read_to_string(f.manager.data_dir.join("pki/issuing-ca.key")).unwrap(),
    )
    .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "admin");
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://e2e/operator/old".to_string().try_into().unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let key = p256();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (format!("{}{ca_pem}", cert.pem()), key.serialize_pem())
}

/// A status and every cause under it, as one line.
fn error_chain(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[test]
fn rate_limits_failed_enrollment_attempts_per_address() {
    let f = fleet();
    let (id, token) = f.opictl.create_token("workers", 1, &[]);
    let forged = format!("{id}.{}", "a".repeat(32));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (failures, limited, with_real_token) = runtime.block_on(async {
        let mut client = grpc::enrollment(&f.manager.endpoint(), &f.manager.ca_pin())
            .await
            .unwrap();
        let mut failures = Vec::new();
        for _ in 0..10 {
            let request = EnrollRequest {
                reenroll: false,
                token: forged.clone(),
                ..Default::default()
            };
            failures.push(client.enroll(request).await.unwrap_err().code());
        }
        let request = EnrollRequest {
            reenroll: false,
            token: forged.clone(),
            ..Default::default()
        };
        let limited = client.enroll(request).await.unwrap_err();
        let csr = opi_pki::csr::make_node_csr(&p256(), "n1").unwrap();
        let request = EnrollRequest {
            reenroll: false,
            token,
            csr_der: csr,
            name: "n1".into(),
            facts: Some(grpc::facts()),
        };
        let with_real_token = client.enroll(request).await.unwrap_err();
        (failures, limited, with_real_token)
    });
    assert!(
        failures.iter().all(|c| *c == Code::Unauthenticated),
        "{failures:?}"
    );
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited}");
    assert!(
        limited
            .message()
            .contains("too many failed enrollment attempts"),
        "{limited}"
    );
    assert_eq!(
        with_real_token.code(),
        Code::ResourceExhausted,
        "blocked address stays blocked"
    );
    assert_eq!(f.token_used(&id), 0);
}
