//! The evaluator with small collectors written for these tests (a fixed answer, a failure,
//! a hang), and once with every real collector against a temporary root.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::conditions::{config, from_timestamp, CollectFuture};

/// Always reports the same observations.
struct Fixed(Vec<Observation>);

/// Never finishes, and counts how often it was started.
#[derive(Default)]
struct Hanging {
    starts: AtomicUsize,
}

/// Always fails.
struct Failing;

impl Collector for Fixed {
    fn kinds(&self) -> Vec<&'static str> {
        self.0.iter().map(|observation| observation.kind).collect()
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

impl Collector for Hanging {
    fn kinds(&self) -> Vec<&'static str> {
        vec!["KubeletHealthy"]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        self.starts.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

impl Collector for Failing {
    fn kinds(&self) -> Vec<&'static str> {
        vec!["DiskPressure"]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        Box::pin(async { Err("mountinfo vanished".into()) })
    }
}

fn memory_ok() -> Arc<Fixed> {
    let message = "8.0 GiB available of 16.0 GiB (50.0 %)".to_string();
    Arc::new(Fixed(vec![Observation::ok(
        "MemoryPressure",
        "",
        "MemoryAvailable",
        message,
    )]))
}

fn disk_full() -> Arc<Fixed> {
    let message = "/var is 97.0 % full".to_string();
    let severity = Severity::Critical;
    let observation =
        Observation::problem("DiskPressure", "/var", severity, "DiskAlmostFull", message);
    Arc::new(Fixed(vec![observation]))
}

fn evaluator(collectors: Vec<Arc<dyn Collector>>, history: &Path) -> Evaluator {
    let transitions = Transitions::load(history).unwrap();
    Evaluator::new(collectors, Duration::from_secs(2), transitions, true)
}

fn find<'a>(evaluation: &'a Evaluation, kind: &str) -> &'a Condition {
    let found = evaluation.conditions.iter().find(|c| c.r#type == kind);
    found.unwrap_or_else(|| panic!("no {kind} in {:?}", evaluation.conditions))
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_is_unknown_and_degrades_the_agent_while_others_report() {
    let dir = tempfile::tempdir().unwrap();
    let hanging = Arc::new(Hanging::default());
    let collectors: Vec<Arc<dyn Collector>> = vec![hanging.clone(), memory_ok()];
    let mut evaluator = evaluator(collectors, &dir.path().join("conditions.json"));

    let first = evaluator.evaluate().await;
    let kubelet = find(&first, "KubeletHealthy");
    assert_eq!(kubelet.status(), ConditionStatus::Unknown);
    assert_eq!(kubelet.reason, "CheckTimedOut");
    assert!(kubelet.message.contains("2s"), "{}", kubelet.message);
    assert_eq!(find(&first, "MemoryPressure").status(), ConditionStatus::Ok);
    let degraded = find(&first, AGENT_DEGRADED);
    assert_eq!(degraded.status(), ConditionStatus::Problem);
    assert_eq!(degraded.severity(), Severity::Warning);
    assert!(
        degraded.message.ends_with(": KubeletHealthy"),
        "{}",
        degraded.message
    );

    let second = evaluator.evaluate().await;
    assert_eq!(find(&second, "KubeletHealthy").reason, "CheckStuck");
    assert_eq!(
        hanging.starts.load(Ordering::SeqCst),
        1,
        "a stuck check is not restarted"
    );
    assert_eq!(
        find(&second, "MemoryPressure").status(),
        ConditionStatus::Ok
    );
}

#[tokio::test]
async fn a_failing_check_is_unknown_for_the_subjects_it_had_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("conditions.json");
    let mut before = evaluator(vec![disk_full()], &history);
    before.evaluate().await;

    let mut after = evaluator(vec![Arc::new(Failing), memory_ok()], &history);
    let evaluation = after.evaluate().await;
    let disk = find(&evaluation, "DiskPressure");
    assert_eq!(
        (disk.subject.as_str(), disk.status()),
        ("/var", ConditionStatus::Unknown)
    );
    assert_eq!(disk.message, "mountinfo vanished");
    assert!(evaluation.changed);
    let degraded = find(&evaluation, AGENT_DEGRADED);
    assert!(
        degraded.message.contains("DiskPressure:/var"),
        "{}",
        degraded.message
    );
}

#[tokio::test]
async fn transition_times_survive_a_restart_on_the_same_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("conditions.json");
    let mut first = evaluator(vec![disk_full(), memory_ok()], &history);
    let before = first.evaluate().await;
    assert!(before.changed, "the first round is news");
    drop(first);

    let mut restarted = evaluator(vec![disk_full(), memory_ok()], &history);
    let after = restarted.evaluate().await;
    assert!(!after.changed, "nothing changed across the restart");
    for kind in ["DiskPressure", "MemoryPressure", AGENT_DEGRADED] {
        assert_eq!(
            find(&after, kind).last_transition,
            find(&before, kind).last_transition,
            "{kind}"
        );
    }
    let observed = from_timestamp(find(&after, "DiskPressure").last_observed.as_ref().unwrap());
    assert_eq!(observed, Some(after.observed_at));
}

#[tokio::test]
async fn an_evaluator_that_does_not_persist_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("conditions.json");
    let transitions = Transitions::load(&history).unwrap();
    let collectors: Vec<Arc<dyn Collector>> = vec![memory_ok()];
    let mut evaluator = Evaluator::new(collectors, Duration::from_secs(2), transitions, false);
    evaluator.evaluate().await;
    assert!(!history.exists());
}

#[tokio::test]
async fn every_default_check_reports_on_a_fresh_root() {
    let root = tempfile::tempdir().unwrap();
    let paths = StatePaths::new(root.path(), Path::new(crate::paths::DEFAULT_STATE_DIR));
    std::fs::create_dir_all(&paths.dir).unwrap();
    // Point kubelet's probe at a port just freed, so that the test never meets a real one.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let settings = root.path().join("etc/opi-agent/health.toml");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    let text = format!("version = 1\n[kubelet]\nhealthz_url = \"http://{closed}/healthz\"\n");
    std::fs::write(&settings, text).unwrap();
    let (_keep, certificate) = watch::channel(None);
    let mut evaluator = Evaluator::open(&paths, certificate, true).unwrap();
    let evaluation = evaluator.evaluate().await;

    let kinds: std::collections::BTreeSet<&str> = evaluation
        .conditions
        .iter()
        .map(|c| c.r#type.as_str())
        .collect();
    // Without a certificate there is nothing to check; hardware depends on this host.
    let expected = config::CHECKS
        .iter()
        .filter(|kind| **kind != "CertificateExpiring" && **kind != "HardwareErrors");
    for kind in expected {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    let kubelet = find(&evaluation, "KubeletHealthy");
    assert_eq!(kubelet.reason, "HealthzUnreachable", "{}", kubelet.message);
    let runtime = find(&evaluation, "ContainerRuntimeHealthy");
    assert_eq!(runtime.reason, "SocketMissing");
    assert!(paths.conditions().exists());
}
