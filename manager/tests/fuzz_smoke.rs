//! The fuzz targets of `fuzz/` on the stable toolchain, without libFuzzer: each target's
//! function is fed seeds (well-formed messages, the shipped profiles) and random mutations of
//! them for a budget of `OPI_FUZZ_SECONDS` (default 1 s) per target. No coverage guides it;
//! `scripts/fuzz` runs the same functions under libFuzzer and AddressSanitizer. A panic fails
//! the test with the input, in hex, to turn into a regression test.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use opi_manager::server::inspect;
use opi_proto::v1 as pb;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Budget per target unless `OPI_FUZZ_SECONDS` says.
const DEFAULT_SECONDS: u64 = 1;
/// Longest input tried.
const MAX_LEN: usize = 16 * 1024;

fn budget() -> Duration {
    let seconds = std::env::var("OPI_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    Duration::from_secs(seconds)
}

/// Feeds `target` the seeds and mutations of them until the budget is spent; returns how
/// many inputs it ran.
fn fuzz(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8])) -> u64 {
    let seed = rand::random::<u64>();
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + budget();
    let mut runs = 0;
    while runs < seeds.len() as u64 || Instant::now() < deadline {
        let base = &seeds[rng.random_range(0..seeds.len())];
        let input = match runs < seeds.len() as u64 {
            true => seeds[runs as usize].clone(),
            false => mutate(base, seeds, &mut rng),
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        assert!(
            outcome.is_ok(),
            "{name} panicked (rng seed {seed}) on input {}",
            hex(&input)
        );
        runs += 1;
    }
    println!("{name}: {runs} inputs in {:?}", budget());
    runs
}

fn mutate(base: &[u8], seeds: &[Vec<u8>], rng: &mut StdRng) -> Vec<u8> {
    let mut input = base.to_vec();
    for _ in 0..rng.random_range(1..8) {
        let at = if input.is_empty() {
            0
        } else {
            rng.random_range(0..input.len())
        };
        match rng.random_range(0..6) {
            0 if !input.is_empty() => input[at] ^= 1 << rng.random_range(0..8),
            1 if !input.is_empty() => input[at] = rng.random(),
            2 => input.insert(at, rng.random()),
            3 if !input.is_empty() => {
                input.remove(at);
            }
            4 => input.truncate(at),
            _ => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let from = rng.random_range(0..=other.len());
                input.splice(at..at, other[from..].iter().copied());
            }
        }
    }
    input.truncate(MAX_LEN);
    input
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn csr() -> Vec<u8> {
    let key = opi_pki::ca::generate_key().expect("key");
    opi_pki::csr::make_node_csr(&key, "node-1").expect("csr")
}

fn agent_seeds() -> Vec<Vec<u8>> {
    use pb::agent_message::Body;
    let condition = pb::Condition {
        r#type: "DiskPressure".into(),
        status: 1,
        ..Default::default()
    };
    let bodies = [
        Body::Hello(pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            boot_id: "b".into(),
            ..Default::default()
        }),
        Body::Heartbeat(pb::Heartbeat::default()),
        Body::Report(pb::HealthReport {
            conditions: vec![condition],
        }),
        Body::Apply(pb::ApplyReport::default()),
        Body::Compliance(pb::ComplianceReport::default()),
    ];
    bodies
        .into_iter()
        .map(|body| pb::AgentMessage { body: Some(body) }.encode_to_vec())
        .collect()
}

#[test]
fn enroll_request_target_runs_clean() {
    let seed = pb::EnrollRequest {
        token: "0123456789ab.abcdefghijklmnopqrstuvwxyz234567".into(),
        csr_der: csr(),
        name: "node-1".into(),
        facts: Some(pb::NodeFacts {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
        reenroll: false,
    };
    let runs = fuzz("enroll_request", &[seed.encode_to_vec(), vec![]], |data| {
        let _ = inspect::enroll_request(data);
    });
    assert!(runs > 2);
}

#[test]
fn agent_message_target_runs_clean() {
    let runs = fuzz("agent_message", &agent_seeds(), |data| {
        let _ = inspect::agent_message(data);
    });
    assert!(runs > 5);
}

#[test]
fn renew_and_login_targets_run_clean() {
    let renew = pb::RenewRequest { csr_der: csr() }.encode_to_vec();
    fuzz("renew_request", &[renew], |data| {
        let _ = inspect::renew_request(data);
    });
    let login = pb::LoginRequest {
        code: "0123456789ab.abcdefghijklmnopqrstuvwxyz234567".into(),
        csr_der: csr(),
    };
    fuzz("login_request", &[login.encode_to_vec()], |data| {
        let _ = inspect::login_request(data);
    });
}

#[test]
fn csr_target_runs_clean() {
    fuzz("csr", &[csr()], |data| {
        let _ = opi_pki::csr::check_node_csr(data, "fuzz", "node-1");
        let _ = opi_pki::csr::check_operator_csr(data, "fuzz", "alice");
    });
}

#[test]
fn profile_target_runs_clean() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let seeds: Vec<Vec<u8>> = [
        "deploy/profiles/worker.yaml",
        "deploy/profiles/control-plane.yaml",
    ]
    .iter()
    .map(|path| std::fs::read(root.join(path)).expect("shipped profile"))
    .collect();
    fuzz("profile", &seeds, |data| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = opi_profile::Profile::from_yaml(text);
        }
    });
}
