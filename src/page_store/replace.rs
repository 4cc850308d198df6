//! Replacing the whole content of the store in one write transaction: what installing a raft
//! snapshot does. The new content is merged with the transaction's base in key order, so only
//! what differs is written (a follower a little behind rewrites little), and it becomes visible
//! and durable at once, at the caller's publish or commit.

use super::{PageStoreError, Snapshot, WriteTxn};

/// What a replace changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplaceStats {
    /// Records put (new keys or changed values).
    pub written: u64,
    /// Keys of the base the new content lacks, deleted.
    pub deleted: u64,
    /// Records already in the base with the same value.
    pub unchanged: u64,
}

impl WriteTxn<'_> {
    /// Makes this transaction hold exactly `records` (strictly ascending keys), given `base`,
    /// a snapshot of what the transaction started from (taken under the writer lock, so it is
    /// the transaction's own base). Memory: the transaction's dirty pages, in proportion to what
    /// differs.
    pub fn replace_all<E: From<PageStoreError>>(
        &mut self,
        base: &Snapshot,
        records: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
    ) -> Result<ReplaceStats, E> {
        let mut stats = ReplaceStats::default();
        let mut old = base.range(b"", None).peekable();
        let mut previous: Option<Vec<u8>> = None;
        for record in records {
            let (key, value) = record?;
            assert!(
                previous.as_deref().is_none_or(|p| p < key.as_slice()),
                "replace_all: keys must be strictly ascending"
            );
            // Delete every base key below this one; compare the value of an equal one.
            let mut same = false;
            while let Some(entry) = old.peek() {
                let Ok((old_key, old_value)) = entry else {
                    return Err(old.next().expect("peeked").unwrap_err().into());
                };
                if old_key.as_slice() > key.as_slice() {
                    break;
                }
                if old_key == &key {
                    same = old_value == &value;
                } else {
                    self.delete(old_key)?;
                    stats.deleted += 1;
                }
                old.next();
            }
            if same {
                stats.unchanged += 1;
            } else {
                self.put(&key, &value)?;
                stats.written += 1;
            }
            previous = Some(key);
        }
        for entry in old {
            let (old_key, _) = entry?;
            self.delete(&old_key)?;
            stats.deleted += 1;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_store::{PageStore, PageStoreConfig, SimDisk};
    use std::sync::Arc;

    fn contents(store: &PageStore) -> Vec<(Vec<u8>, Vec<u8>)> {
        store
            .snapshot()
            .range(b"", None)
            .map(|r| r.unwrap())
            .collect()
    }

    #[test]
    fn replaces_content_and_writes_only_differences() {
        let store =
            PageStore::open_on(Arc::new(SimDisk::new()), PageStoreConfig::default()).unwrap();
        let mut txn = store.begin_write();
        for i in 0..2000u32 {
            txn.put(format!("k{i:05}").as_bytes(), &i.to_be_bytes())
                .unwrap();
        }
        txn.commit(5).unwrap();
        // Keep the even keys, change every tenth, add some past the end and one before all.
        let mut new: Vec<(Vec<u8>, Vec<u8>)> = (0..2000u32)
            .filter(|i| i % 2 == 0)
            .map(|i| {
                let v = if i % 10 == 0 { i + 1 } else { i };
                (format!("k{i:05}").into_bytes(), v.to_be_bytes().to_vec())
            })
            .collect();
        new.insert(0, (b"a".to_vec(), b"first".to_vec()));
        new.extend((0..10u32).map(|i| (format!("z{i}").into_bytes(), vec![1])));
        let base = store.snapshot();
        let mut txn = store.begin_write();
        let stats = txn
            .replace_all::<PageStoreError>(&base, new.clone().into_iter().map(Ok))
            .unwrap();
        drop(base);
        txn.commit(9).unwrap();
        assert_eq!(
            stats,
            ReplaceStats {
                written: 1 + 200 + 10,
                deleted: 1000,
                unchanged: 800,
            }
        );
        assert_eq!(contents(&store), new);
        assert_eq!(store.consistent_index(), 9);
        store.check_integrity().unwrap();

        let base = store.snapshot();
        let mut txn = store.begin_write();
        let stats = txn
            .replace_all::<PageStoreError>(&base, std::iter::empty())
            .unwrap();
        drop(base);
        txn.commit(10).unwrap();
        assert_eq!(stats.deleted, new.len() as u64);
        assert!(contents(&store).is_empty());
    }
}
