//! Backups: digests, refused paths, hidden keys, the epoch after a restore.

use std::sync::Arc;

use super::*;
use crate::store::SqliteStore;

/// A data directory with a manager.toml and a CA key, and a store with one key.
async fn fleet(root: &Path) -> (DataDir, Arc<dyn Store>) {
    let dir = DataDir::new(root.join("manager"));
    std::fs::create_dir_all(dir.pki()).expect("pki dir");
    std::fs::write(dir.config(), "version = 1\n").expect("manager.toml");
    opi_pki::files::write_secret(
        &dir.issuing_ca_key(),
        b"-----BEGIN PRIVATE KEY-----\nsecret",
    )
    .expect("key");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&root.join("fleet.db")).expect("store"));
    let txn = Txn::new().put("nodes/a", b"{}".to_vec());
    store.txn(txn).await.expect("write");
    (dir, store)
}

#[tokio::test]
async fn a_changed_backup_is_refused_naming_the_digest() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (dir, store) = fleet(temp.path()).await;
    let path = temp.path().join("fleet.backup");
    create(&dir, &*store)
        .await
        .expect("backup")
        .write(&path)
        .expect("write");
    assert!(BackupFile::read(&path).is_ok());

    let text = std::fs::read_to_string(&path).expect("read");
    let changed = text.replace("nodes/a", "nodes/b");
    opi_pki::files::write_secret(&path, changed.as_bytes()).expect("write");
    let error = BackupFile::read(&path).expect_err("changed");
    assert!(
        error.to_string().contains("was changed or damaged"),
        "{error}"
    );
}

#[tokio::test]
async fn a_file_path_leaving_the_data_directory_is_refused() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (dir, store) = fleet(temp.path()).await;
    let mut backup = create(&dir, &*store).await.expect("backup");
    backup.body.files[0].path = "../outside".into();
    let target = DataDir::new(temp.path().join("restored"));
    let empty: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&temp.path().join("new.db")).expect("store"));

    let error = restore(&backup, &target, &*empty, false)
        .await
        .expect_err("escape");
    assert!(
        error.to_string().contains("leaves the data directory"),
        "{error}"
    );
    assert!(!temp.path().join("outside").exists());
    assert!(
        empty.list("").await.expect("list").is_empty(),
        "nothing restored"
    );
}

#[tokio::test]
async fn debug_output_hides_the_ca_keys() {
    let temp = tempfile::tempdir().expect("temp dir");
    let (dir, store) = fleet(temp.path()).await;
    let backup = create(&dir, &*store).await.expect("backup");
    let encoded = BASE64.encode(b"-----BEGIN PRIVATE KEY-----\nsecret");
    let printed = format!("{backup:?}");
    assert!(!printed.contains(&encoded), "{printed}");
    assert!(printed.contains("bytes hidden"), "{printed}");
}

#[test]
fn next_epoch_is_above_both_epochs_and_at_least_the_clock() {
    let at = |secs| OffsetDateTime::from_unix_timestamp(secs).expect("time");
    assert_eq!(next_epoch(1, 0, at(0)), 2);
    assert_eq!(next_epoch(1, 7, at(0)), 8);
    assert_eq!(next_epoch(3, 2, at(1_800_000_000)), 1_800_000_000);
    assert_eq!(
        next_epoch(1_800_000_005, 0, at(1_800_000_000)),
        1_800_000_006
    );
}
