//! [`check_whole`]: a feed sent whole (its head and every block), hashed into its tree
//! and checked against the head before storage takes it ([`Storage::write_whole`]).
//!
//! [`Storage::write_whole`]: crate::storage::Storage::write_whole

use crate::feed::MAX_BLOCK_SIZE;
use crate::keys::SignedHead;
use crate::proof::VerifyError;
use crate::storage::{StoredNode, WholeWrite};
use crate::tree;

/// Hashes `blocks` into a tree the way an append does and checks it against `head`:
/// one block per unit of the head's length, none over [`MAX_BLOCK_SIZE`], and the tree
/// hash the head's. Returns what storage writes for feed `key` (the public key's bytes:
/// the key itself is not needed here, so a caller that checked the head's signature
/// already need not decode it again). The head's signature is not checked here: verify
/// it first ([`crate::FeedKey::verify_head`], or [`crate::verify_heads`] for many).
pub fn check_whole(
    key: [u8; 32],
    head: &SignedHead,
    blocks: Vec<Vec<u8>>,
) -> Result<WholeWrite, VerifyError> {
    if head.length == 0 || blocks.len() as u64 != head.length {
        return Err(VerifyError::Malformed(
            "a whole feed needs one block per unit of its head's length",
        ));
    }
    if blocks.iter().any(|b| b.len() > MAX_BLOCK_SIZE) {
        return Err(VerifyError::Malformed(
            "a block over the largest block size",
        ));
    }
    let mut roots = Vec::new();
    let nodes = tree::append_leaves(&mut roots, tree::hash_leaves(0, &blocks));
    if tree::tree_hash(&roots) != head.tree_hash {
        return Err(VerifyError::TreeMismatch {
            length: head.length,
        });
    }
    Ok(WholeWrite {
        key,
        blocks,
        nodes: nodes.into_iter().map(StoredNode::from).collect(),
        head: (*head).into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FeedStorage, MemoryStorage};
    use crate::{Feed, FeedSecret};

    #[test]
    fn a_feed_checks_whole_against_its_head_and_a_changed_block_does_not() {
        let mut feed = Feed::create(&MemoryStorage::new(), FeedSecret::generate()).unwrap();
        let blocks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        feed.append_batch(&blocks).unwrap();
        let head = *feed.head().unwrap();
        let written = check_whole(*feed.key().as_bytes(), &head, blocks.clone()).unwrap();
        // The same nodes the append stored.
        let mut stored = feed.storage().clone();
        for node in &written.nodes {
            assert_eq!(stored.node(node.index).unwrap(), Some(*node));
        }
        assert_eq!(written.nodes.len(), 8);
        let mut bad = blocks.clone();
        bad[3][7] ^= 1;
        assert!(matches!(
            check_whole(*feed.key().as_bytes(), &head, bad),
            Err(VerifyError::TreeMismatch { length: 5 })
        ));
        assert!(matches!(
            check_whole(*feed.key().as_bytes(), &head, blocks[..4].to_vec()),
            Err(VerifyError::Malformed(_))
        ));
    }
}
