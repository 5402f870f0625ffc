//! JSON values on top of the byte-valued store, with the revisions needed to update them.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{KeyValue, Revision, Store, StoreError};

/// A decoded value with the revision to compare against when updating it.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    /// The decoded value.
    pub value: T,
    /// Revision that last wrote the key: pass it to [`super::Txn::when_revision`].
    pub mod_revision: Revision,
    /// Revision that created the key.
    pub create_revision: Revision,
}

/// Reads and decodes the JSON value at `key`; a value that does not decode is
/// [`StoreError::Corrupt`], naming the key.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<Versioned<T>>, StoreError> {
    match store.get(key).await? {
        Some(kv) => decode(store, &kv).map(Some),
        None => Ok(None),
    }
}

/// Reads and decodes every JSON value under `prefix`, in key order.
pub async fn list_json<T: DeserializeOwned>(
    store: &dyn Store,
    prefix: &str,
) -> Result<Vec<Versioned<T>>, StoreError> {
    let kvs = store.list(prefix).await?;
    kvs.iter().map(|kv| decode(store, kv)).collect()
}

/// Encodes a value as JSON for [`super::Txn::put`].
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // serde_json fails only on maps with non-string keys or failing custom serialisers.
    serde_json::to_vec(value).expect("serialising to JSON cannot fail for our types")
}

/// Decodes one stored JSON value; a `Corrupt` error names the key.
pub fn decode<T: DeserializeOwned>(
    store: &dyn Store,
    kv: &KeyValue,
) -> Result<Versioned<T>, StoreError> {
    let value = serde_json::from_slice(&kv.value).map_err(|source| StoreError::Corrupt {
        store: store.describe(),
        key: kv.key.clone(),
        source: source.into(),
    })?;
    Ok(Versioned {
        value,
        mod_revision: kv.mod_revision,
        create_revision: kv.create_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Txn, TxnOutcome};

    #[tokio::test]
    async fn json_values_round_trip_with_their_revisions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("fleet.db")).expect("open store");
        let txn = Txn::new().put("pools/a", to_json(&vec!["x", "y"]));
        assert_eq!(store.txn(txn).await.expect("txn"), TxnOutcome::Committed(1));

        let got: Versioned<Vec<String>> = get_json(&store, "pools/a")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(
            (got.value, got.create_revision, got.mod_revision),
            (vec!["x".into(), "y".into()], 1, 1)
        );
        let listed: Vec<Versioned<Vec<String>>> = list_json(&store, "pools/").await.expect("list");
        assert_eq!(listed.len(), 1);
    }

    #[tokio::test]
    async fn bad_json_is_corrupt_and_names_the_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("fleet.db")).expect("open store");
        store
            .txn(Txn::new().put("nodes/n1", b"{not json".to_vec()))
            .await
            .expect("txn");

        let error = get_json::<u32>(&store, "nodes/n1")
            .await
            .expect_err("must not decode");
        assert!(matches!(&error, StoreError::Corrupt { key, .. } if key == "nodes/n1"));
        assert!(error.to_string().contains("`nodes/n1`"), "{error}");
    }
}
