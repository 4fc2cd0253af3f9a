//! [`MemoryStorage`]: feeds held in memory, for tests and nodes that keep nothing on disk.
//!
//! A feed opened twice from the same [`MemoryStorage`] (or a clone of it) sees the same
//! state: reopening a feed after dropping its handle finds every batch written before,
//! just as it would on disk. Nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{take_range, FeedStorage, Storage, StorageError, StoredHead, StoredNode, WriteBatch};

/// Feeds kept in memory. Cheap to clone; clones share the same feeds.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    feeds: Arc<Mutex<HashMap<[u8; 32], SharedState>>>,
}

/// One feed of a [`MemoryStorage`]. Handles to the same feed share its state.
#[derive(Debug, Clone)]
pub struct MemoryFeed {
    key: [u8; 32],
    state: Arc<Mutex<FeedState>>,
}

/// One feed's state, shared by every handle to it.
type SharedState = Arc<Mutex<FeedState>>;

#[derive(Debug, Default)]
struct FeedState {
    secret_key: Option<[u8; 32]>,
    blocks: BTreeMap<u64, Vec<u8>>,
    nodes: super::IndexMap<StoredNode>,
    head: Option<StoredHead>,
}

/// Lock a mutex, carrying on after a panic in another holder: every update below is a
/// single map operation, so a poisoned state is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }
}

impl MemoryFeed {
    /// The feed's public key.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// Number of blocks stored (not the head's length: a sparse replica stores fewer).
    pub fn stored_blocks(&self) -> usize {
        lock(&self.state).blocks.len()
    }
}

impl Storage for MemoryStorage {
    type Feed = MemoryFeed;

    fn create(
        &self,
        key: [u8; 32],
        secret_key: Option<[u8; 32]>,
    ) -> Result<MemoryFeed, StorageError> {
        let mut feeds = lock(&self.feeds);
        if feeds.contains_key(&key) {
            return Err(StorageError::Exists);
        }
        let state = Arc::new(Mutex::new(FeedState {
            secret_key,
            ..FeedState::default()
        }));
        feeds.insert(key, Arc::clone(&state));
        Ok(MemoryFeed { key, state })
    }

    fn open(&self, key: &[u8; 32]) -> Result<Option<MemoryFeed>, StorageError> {
        Ok(lock(&self.feeds).get(key).map(|state| MemoryFeed {
            key: *key,
            state: Arc::clone(state),
        }))
    }

    fn list(&self) -> Result<Vec<[u8; 32]>, StorageError> {
        let mut keys: Vec<[u8; 32]> = lock(&self.feeds).keys().copied().collect();
        keys.sort_unstable();
        Ok(keys)
    }
}

impl FeedStorage for MemoryFeed {
    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        for (index, data) in batch.blocks {
            state.blocks.insert(index, data);
        }
        for node in batch.nodes {
            state.nodes.insert(node.index, node);
        }
        if let Some(head) = batch.head {
            state.head = Some(head);
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn block(&mut self, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(lock(&self.state).blocks.get(&index).cloned())
    }

    fn blocks(
        &mut self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let state = lock(&self.state);
        let found = take_range(start, end, max_bytes, |index| Ok(state.blocks.get(&index)))?;
        Ok(found.into_iter().cloned().collect())
    }

    fn has_block(&self, index: u64) -> bool {
        lock(&self.state).blocks.contains_key(&index)
    }

    fn node(&mut self, index: u64) -> Result<Option<StoredNode>, StorageError> {
        Ok(lock(&self.state).nodes.get(&index).copied())
    }

    fn head(&self) -> Option<StoredHead> {
        lock(&self.state).head
    }

    fn secret_key(&self) -> Option<[u8; 32]> {
        lock(&self.state).secret_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance;

    #[test]
    fn memory_conformance() {
        conformance::run_all(&mut MemoryStorage::new, &mut |s| s);
    }

    #[test]
    fn clones_share_feeds() {
        let a = MemoryStorage::new();
        let b = a.clone();
        let mut feed = a.create([1; 32], None).unwrap();
        feed.write(WriteBatch {
            blocks: vec![(0, b"x".to_vec())],
            ..WriteBatch::default()
        })
        .unwrap();
        let mut other = b.open(&[1; 32]).unwrap().unwrap();
        assert_eq!(other.block(0).unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(other.key(), &[1; 32]);
        assert_eq!(other.stored_blocks(), 1);
    }
}
