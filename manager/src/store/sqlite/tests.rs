//! Tests of the SQLite backend: the conformance suite, then what only a file on disk shows.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::schema::SCHEMA_VERSION;
use super::*;
use crate::store::conformance;

/// Environment variable telling the child test of [`commits_survive_sigkill`] its database.
const CHILD_DB_ENV: &str = "OPI_STORE_TEST_CHILD_DB";

/// Commits the child must acknowledge before it is killed.
const COMMITS_BEFORE_KILL: Revision = 25;

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("data").join("fleet.db");
    (dir, path)
}

fn open_store(path: &Path) -> SqliteStore {
    SqliteStore::open(path).expect("open sqlite store")
}

async fn commit(store: &SqliteStore, txn: Txn) -> Revision {
    match store.txn(txn).await.expect("txn") {
        TxnOutcome::Committed(revision) => revision,
        conflict => panic!("expected a commit, got {conflict:?}"),
    }
}

async fn put(store: &SqliteStore, key: &str, value: &[u8]) -> Revision {
    commit(store, Txn::new().put(key, value.to_vec())).await
}

async fn get(store: &SqliteStore, key: &str) -> KeyValue {
    let found = store.get(key).await.expect("get");
    found.unwrap_or_else(|| panic!("key `{key}` missing"))
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_conformance_suite() {
    let (_dir, path) = temp_db();
    conformance::run_all(Arc::new(open_store(&path))).await;
}

#[tokio::test]
async fn reopen_keeps_everything_committed() {
    let (_dir, path) = temp_db();
    let store = open_store(&path);
    let first = Txn::new().put("nodes/a", vec![1]).put("nodes/b", vec![2]);
    commit(&store, first).await;
    let second = Txn::new().delete("nodes/a").put("nodes/c", vec![0, 1]);
    let revision = commit(&store, second).await;
    let before = store.list("").await.expect("list");
    drop(store);

    let reopened = open_store(&path);
    assert_eq!(reopened.list("").await.expect("list"), before);
    assert_eq!(reopened.revision().await.expect("revision"), revision);
    assert_eq!(revision, 2);
}

#[tokio::test]
async fn database_file_is_0600() {
    let (_dir, path) = temp_db();
    let store = open_store(&path);
    put(&store, "tokens/t1", b"hash").await;

    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(mode_of(&path.with_extension("db-wal")), 0o600);
    assert_eq!(mode_of(path.parent().expect("parent")), 0o700);
}

#[test]
fn open_tightens_a_readable_database_file() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("fleet.db");
    std::fs::write(&path, b"").expect("create file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    open_store(&path);
    assert_eq!(mode_of(&path), 0o600);
}

#[test]
fn connection_uses_wal_full_sync_and_a_busy_timeout() {
    let (_dir, path) = temp_db();
    let store = open_store(&path);
    let conn = store.inner.conn.lock().expect("lock");
    let pragma = |name: &str| -> String {
        let sql = format!("PRAGMA {name}");
        let value = conn.query_row(&sql, [], |row| row.get::<_, rusqlite::types::Value>(0));
        format!("{:?}", value.expect("read pragma"))
    };

    assert_eq!(pragma("journal_mode"), r#"Text("wal")"#);
    assert_eq!(pragma("synchronous"), "Integer(2)", "2 is FULL");
    assert_eq!(pragma("foreign_keys"), "Integer(1)");
    assert_eq!(pragma("busy_timeout"), "Integer(5000)");
}

#[test]
fn refuses_newer_schema() {
    let (_dir, path) = temp_db();
    drop(open_store(&path));
    let conn = Connection::open(&path).expect("open raw");
    let newer = SCHEMA_VERSION + 1;
    let bump = "UPDATE meta SET value = ?1 WHERE name = 'schema_version'";
    conn.execute(bump, [newer]).expect("bump schema version");
    drop(conn);

    let error = SqliteStore::open(&path).err().expect("refused");
    let message = error.to_string();
    assert!(matches!(error, StoreError::SchemaTooNew { found, .. } if found == newer));
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("newer"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_file_share_revisions() {
    let (_dir, path) = temp_db();
    let (server, operator) = (open_store(&path), open_store(&path));

    assert_eq!(put(&server, "nodes/a", b"1").await, 1);
    let seen = get(&operator, "nodes/a").await;
    assert_eq!((seen.create_revision, seen.mod_revision), (1, 1));

    assert_eq!(put(&operator, "audit/0001", b"issued").await, 2);
    assert_eq!(server.revision().await.expect("revision"), 2);
    assert_eq!(put(&operator, "nodes/a", b"2").await, 3);

    let stale = Txn::new()
        .when_revision("nodes/a", 1)
        .put("nodes/a", vec![]);
    let outcome = server.txn(stale).await.expect("txn");
    let key = "nodes/a".to_owned();
    assert_eq!(outcome, TxnOutcome::Conflict { key });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_racing_on_one_file_lose_no_update() {
    let (_dir, path) = temp_db();
    let handles = [Arc::new(open_store(&path)), Arc::new(open_store(&path))];

    let tasks: Vec<_> = (0..20)
        .map(|n| tokio::spawn(increment(Arc::clone(&handles[n % 2]), "counter")))
        .collect();
    for task in tasks {
        task.await.expect("increment task");
    }

    let counter = get(&handles[0], "counter").await;
    assert_eq!((counter.value, counter.mod_revision), (b"20".to_vec(), 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_keep_their_own_revisions() {
    const WRITES: u64 = 400;
    let (_dir, path) = temp_db();
    let store = Arc::new(open_store(&path));

    let tasks: Vec<_> = (0..WRITES)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { (n, put(&store, &format!("nodes/{n:03}"), b"x").await) })
        })
        .collect();
    let mut revisions = Vec::new();
    for task in tasks {
        let (n, revision) = task.await.expect("put task");
        assert_eq!(
            get(&store, &format!("nodes/{n:03}")).await.mod_revision,
            revision
        );
        revisions.push(revision);
    }

    revisions.sort_unstable();
    assert_eq!(revisions, (1..=WRITES).collect::<Vec<_>>());
    let commits = store.commits();
    assert!(
        commits <= WRITES / 2,
        "{commits} SQLite commits for {WRITES} writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_in_a_group_fails_alone() {
    let (_dir, path) = temp_db();
    let store = Arc::new(open_store(&path));

    // Ten claims of one key and ten writes of keys of their own, all at once: whatever the
    // grouping, one claim and every other write commit.
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let txn = if n % 2 == 0 {
                    Txn::new().when_absent("claim").put("claim", vec![n])
                } else {
                    Txn::new().put(format!("own/{n:02}"), vec![n])
                };
                store.txn(txn).await.expect("txn must not fail")
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("txn task"));
    }

    let committed = outcomes
        .iter()
        .filter(|o| matches!(o, TxnOutcome::Committed(_)));
    assert_eq!(committed.count(), 11, "{outcomes:?}");
    let claim = TxnOutcome::Conflict {
        key: "claim".into(),
    };
    assert_eq!(outcomes.iter().filter(|o| **o == claim).count(), 9);
    assert_eq!(store.list("own/").await.expect("list").len(), 10);
    assert_eq!(store.revision().await.expect("revision"), 11);
}

/// Adds one to the decimal counter at `key`, retrying on conflict; any error fails the test.
async fn increment(store: Arc<SqliteStore>, key: &'static str) {
    loop {
        let current = store.get(key).await.expect("get counter");
        let (count, read_at) = current.map_or((0, 0), |kv| (count_in(&kv), kv.mod_revision));
        let next = (count + 1).to_string().into_bytes();
        let txn = Txn::new().when_revision(key, read_at).put(key, next);
        if let TxnOutcome::Committed(_) = store.txn(txn).await.expect("txn must not fail") {
            return;
        }
    }
}

fn count_in(kv: &KeyValue) -> u32 {
    let text = std::str::from_utf8(&kv.value).expect("counter is text");
    text.parse().expect("counter is a number")
}

#[tokio::test]
async fn commits_survive_sigkill() {
    let (_dir, path) = temp_db();
    let acknowledged = run_child_until_killed(&path);

    let store = open_store(&path);
    let revision = store.revision().await.expect("revision");
    assert!(
        revision >= acknowledged,
        "lost commits: {revision} < {acknowledged}"
    );
    let (a, b) = (get(&store, "pair/a").await, get(&store, "pair/b").await);
    assert_eq!(a.value, b.value, "a txn was applied in part");
    assert_eq!(a.mod_revision, revision);
}

/// Starts [`write_until_killed`] in a child process, SIGKILLs it once it has acknowledged
/// [`COMMITS_BEFORE_KILL`] commits, and returns the last revision it acknowledged.
fn run_child_until_killed(path: &Path) -> Revision {
    let exe = std::env::current_exe().expect("test binary path");
    let test = "store::sqlite::tests::write_until_killed";
    let mut child = Command::new(exe)
        .args([test, "--exact", "--ignored", "--nocapture"])
        .env(CHILD_DB_ENV, path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start child test");

    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut acknowledged = stdout
        .lines()
        .map_while(Result::ok)
        .filter_map(acknowledged_in);
    let acknowledged = acknowledged
        .find(|revision| *revision >= COMMITS_BEFORE_KILL)
        .expect("child stopped before acknowledging enough commits");
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    acknowledged
}

/// The revision a line of the child's output acknowledges; libtest may print its own text
/// before it on the same line.
fn acknowledged_in(line: String) -> Option<Revision> {
    line.split("committed ").nth(1)?.trim().parse().ok()
}

#[tokio::test]
#[ignore = "helper: commits_survive_sigkill runs it in a child process and kills it"]
async fn write_until_killed() {
    let path = std::env::var_os(CHILD_DB_ENV).expect("database path from the parent");
    let store = open_store(Path::new(&path));
    // Bounded so that a child whose parent vanished still stops; printing to a closed pipe
    // would stop it sooner.
    for count in 0..10_000u32 {
        let value = count.to_string().into_bytes();
        let txn = Txn::new().put("pair/a", value.clone()).put("pair/b", value);
        println!("committed {}", commit(&store, txn).await);
    }
}

#[test]
fn prefix_end_bounds_exactly_the_keys_with_the_prefix() {
    assert_eq!(prefix_end(""), None);
    assert_eq!(prefix_end("nodes/").as_deref(), Some("nodes0"));
    assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
    assert_eq!(prefix_end("\u{10FFFF}\u{10FFFF}"), None);
    assert_eq!(prefix_end("x\u{D7FF}").as_deref(), Some("x\u{E000}"));
}
