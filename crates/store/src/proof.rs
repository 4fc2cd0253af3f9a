//! Proofs: blocks `[start, end)` belong to the tree of `length` blocks, which extends a
//! tree of `base` blocks whose full roots the verifier already trusts.
//!
//! One [`Proof`] type covers three uses:
//! - **data** (`base == length`): blocks against a tree the verifier already holds; no
//!   signature is needed, only sibling hashes up to the trusted roots;
//! - **upgrade** (`start == end`, `base < length`): moves a verifier from its roots at
//!   `base` to a new signed head at `length`, with one signature check;
//! - **standalone** (`base == 0`): blocks against a signed head, for a verifier that
//!   knows nothing but the feed key.
//!
//! Both sides walk the full roots of the tree at `length` the same way, so the proof
//! carries only the nodes the verifier cannot compute, in walk order: for every subtree
//! that holds no block of the range and is not under a trusted root, its top node; trusted
//! roots at `base` are used as they are, and the ones above the range are recomputed
//! from the blocks and checked. For a contiguous range that is at most two nodes per tree
//! level, so a batch of `k` blocks costs `k` leaf hashes, about `k` parent hashes, and
//! at most one signature check, whatever `k` is.

use serde::{Deserialize, Serialize};

use crate::keys::{FeedKey, SignedHead};
use crate::storage::StorageError;
use crate::tree::{self, flat, full_roots, Node};

/// Longest feed, in blocks (2^60): flat-tree indices then stay below 2^62, so no index
/// arithmetic can overflow whatever lengths a peer claims.
pub const MAX_FEED_LENGTH: u64 = 1 << 60;

/// Most nodes one proof may carry: two per tree level for a contiguous range plus the
/// roots, with room to spare. Larger proofs are malformed.
pub const MAX_PROOF_NODES: usize = 256;

/// A proof that blocks `[start, end)` are in the tree of `length` blocks, extending the
/// verifier's trusted tree of `base` blocks. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// Length of the tree whose full roots the verifier already trusts (0: none).
    pub base: u64,
    /// Length of the tree the blocks are proven against.
    pub length: u64,
    /// First block of the range.
    pub start: u64,
    /// End of the range (exclusive); `start == end` proves no block.
    pub end: u64,
    /// The nodes the verifier cannot compute, in walk order.
    pub nodes: Vec<Node>,
    /// The signed head at `length`; required when `length > base`.
    pub head: Option<SignedHead>,
}

/// What a successfully verified proof established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// Length of the proven tree.
    pub length: u64,
    /// Full roots of the tree at `length`.
    pub roots: Vec<Node>,
    /// Every node the proof taught: the ones it carried and the ones computed from the
    /// blocks (trusted base roots are not repeated).
    pub nodes: Vec<Node>,
    /// The verified signed head, when the proof moved past `base`.
    pub head: Option<SignedHead>,
}

/// Why a proof or the blocks it came with were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The proof's fields or node list do not have the shape its range requires.
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    /// The proof claims a tree shorter than the one it extends.
    #[error("length goes backward: proof of length {length} extends length {base}")]
    LengthBackward {
        /// The trusted length the proof extends.
        base: u64,
        /// The shorter length it claims.
        length: u64,
    },
    /// The verifier holds no trusted roots for the proof's base length.
    #[error("unknown base: no trusted roots at length {base}")]
    UnknownBase {
        /// The base length the proof names.
        base: u64,
    },
    /// An upgrade's base is not the verifier's current length (it raced another upgrade).
    #[error("stale upgrade: base {base} but the feed has length {current}")]
    StaleUpgrade {
        /// The base length the proof names.
        base: u64,
        /// The verifier's length.
        current: u64,
    },
    /// The blocks hash to something other than the trusted tree.
    #[error("block does not verify: blocks {start}..{end} do not hash to the trusted tree")]
    BlockMismatch {
        /// First block of the range.
        start: u64,
        /// End of the range.
        end: u64,
    },
    /// The blocks and nodes hash to a tree other than the signed one.
    #[error("proof for another tree: it does not hash to the signed tree of length {length}")]
    TreeMismatch {
        /// Length of the signed head.
        length: u64,
    },
    /// The head's signature is not by the feed key.
    #[error("bad signature: head of length {length} is not signed by the feed key")]
    BadSignature {
        /// Length of the signed head.
        length: u64,
    },
}

/// Why a proof could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The requested range or lengths are out of bounds for this feed.
    #[error("cannot prove blocks {start}..{end} at length {length} from base {base}")]
    Range {
        /// Requested base.
        base: u64,
        /// Requested length.
        length: u64,
        /// Requested start.
        start: u64,
        /// Requested end.
        end: u64,
    },
    /// A tree node the proof needs is not stored here (a sparse replica).
    #[error("tree node {0} is not stored")]
    MissingNode(u64),
    /// Reading a node failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

struct Walk {
    base: u64,
    start: u64,
    end: u64,
}

impl Walk {
    fn touches_range(&self, lo: u64, hi: u64) -> bool {
        self.start < self.end && lo < self.end && self.start < hi
    }
}

impl Proof {
    /// Build the proof for `[start, end)` at `length` extending `base`, reading the nodes
    /// it needs through `node`. `head` must be the signed head at `length` when
    /// `length > base`.
    pub fn create(
        base: u64,
        length: u64,
        start: u64,
        end: u64,
        head: Option<SignedHead>,
        mut node: impl FnMut(u64) -> Result<Option<Node>, StorageError>,
    ) -> Result<Proof, ProofError> {
        let head_ok = length == base || head.is_some_and(|h| h.length == length);
        if base > length || start > end || end > length || length > MAX_FEED_LENGTH || !head_ok {
            return Err(ProofError::Range {
                base,
                length,
                start,
                end,
            });
        }
        let walk = Walk { base, start, end };
        let mut nodes = Vec::new();
        for root in full_roots(length) {
            collect(&walk, root, false, &mut node, &mut nodes)?;
        }
        Ok(Proof {
            base,
            length,
            start,
            end,
            nodes,
            head: if length > base { head } else { None },
        })
    }

    /// Verify the proof with `blocks` (exactly the range's blocks) against `base_roots`,
    /// the trusted full roots at `self.base`, for the feed `key`.
    pub fn verify<B: AsRef<[u8]> + Sync>(
        &self,
        key: &FeedKey,
        base_roots: &[Node],
        blocks: &[B],
    ) -> Result<VerifiedProof, VerifyError> {
        self.verify_with(key, base_roots, blocks, None)
    }

    /// As [`Proof::verify`], skipping the signature check when the proof's head is
    /// exactly `trusted` (a head whose signature was already checked).
    pub(crate) fn verify_with<B: AsRef<[u8]> + Sync>(
        &self,
        key: &FeedKey,
        base_roots: &[Node],
        blocks: &[B],
        trusted: Option<&SignedHead>,
    ) -> Result<VerifiedProof, VerifyError> {
        if self.length < self.base {
            return Err(VerifyError::LengthBackward {
                base: self.base,
                length: self.length,
            });
        }
        if self.length > MAX_FEED_LENGTH {
            return Err(VerifyError::Malformed("length over the limit"));
        }
        if self.start > self.end || self.end > self.length {
            return Err(VerifyError::Malformed("range outside the tree"));
        }
        if (self.end - self.start) != blocks.len() as u64 {
            return Err(VerifyError::Malformed(
                "block count does not match the range",
            ));
        }
        if self.nodes.len() > MAX_PROOF_NODES {
            return Err(VerifyError::Malformed("too many nodes"));
        }
        let head = if self.length > self.base {
            match self.head {
                Some(h) if h.length == self.length => Some(h),
                _ => {
                    return Err(VerifyError::Malformed(
                        "no signed head at the proof's length",
                    ))
                }
            }
        } else {
            None
        };
        let expected_base = full_roots(self.base);
        if expected_base.len() != base_roots.len()
            || expected_base
                .iter()
                .zip(base_roots)
                .any(|(i, n)| *i != n.index)
        {
            return Err(VerifyError::UnknownBase { base: self.base });
        }

        let leaves = tree::hash_leaves(self.start, blocks);
        let mut v = Verifier {
            walk: Walk {
                base: self.base,
                start: self.start,
                end: self.end,
            },
            base_roots,
            leaves: &leaves,
            proof_nodes: &self.nodes,
            next: 0,
            learned: Vec::with_capacity(2 * leaves.len() + self.nodes.len()),
        };
        v.learned.extend_from_slice(&leaves);
        let mut roots = Vec::new();
        for root in full_roots(self.length) {
            roots.push(v.node(root, false)?);
        }
        if v.next != self.nodes.len() {
            return Err(VerifyError::Malformed("unused nodes"));
        }
        if let Some(head) = head {
            if tree::tree_hash(&roots) != head.tree_hash {
                return Err(VerifyError::TreeMismatch {
                    length: self.length,
                });
            }
            if trusted != Some(&head) && !key.verify_head(&head) {
                return Err(VerifyError::BadSignature {
                    length: self.length,
                });
            }
        }
        let mut nodes = v.learned;
        nodes.extend_from_slice(&self.nodes);
        Ok(VerifiedProof {
            length: self.length,
            roots,
            nodes,
            head,
        })
    }
}

fn collect(
    walk: &Walk,
    index: u64,
    in_base: bool,
    node: &mut impl FnMut(u64) -> Result<Option<Node>, StorageError>,
    out: &mut Vec<Node>,
) -> Result<(), ProofError> {
    let (lo, hi) = flat::block_span(index);
    if !walk.touches_range(lo, hi) {
        if !in_base && hi <= walk.base {
            return Ok(()); // a trusted root
        }
        if in_base || lo >= walk.base {
            out.push(node(index)?.ok_or(ProofError::MissingNode(index))?);
            return Ok(());
        }
    }
    let Some((left, right)) = flat::children(index) else {
        return Ok(()); // a leaf in the range: the verifier hashes the block
    };
    let below_base = in_base || (walk.touches_range(lo, hi) && hi <= walk.base);
    collect(walk, left, below_base, node, out)?;
    collect(walk, right, below_base, node, out)
}

struct Verifier<'a> {
    walk: Walk,
    base_roots: &'a [Node],
    leaves: &'a [Node],
    proof_nodes: &'a [Node],
    next: usize,
    learned: Vec<Node>,
}

impl Verifier<'_> {
    fn base_root(&self, index: u64) -> Result<Node, VerifyError> {
        self.base_roots
            .iter()
            .find(|n| n.index == index)
            .copied()
            .ok_or(VerifyError::UnknownBase {
                base: self.walk.base,
            })
    }

    fn node(&mut self, index: u64, in_base: bool) -> Result<Node, VerifyError> {
        let (lo, hi) = flat::block_span(index);
        let touches = self.walk.touches_range(lo, hi);
        if !touches {
            if !in_base && hi <= self.walk.base {
                return self.base_root(index);
            }
            if in_base || lo >= self.walk.base {
                let n = self
                    .proof_nodes
                    .get(self.next)
                    .copied()
                    .ok_or(VerifyError::Malformed("too few nodes"))?;
                if n.index != index {
                    return Err(VerifyError::Malformed("node out of order"));
                }
                self.next += 1;
                return Ok(n);
            }
        }
        let is_base_root = touches && !in_base && hi <= self.walk.base;
        let n = match flat::children(index) {
            // A leaf of the range (a leaf outside it returned above).
            None => self
                .leaves
                .get((lo - self.walk.start) as usize)
                .copied()
                .ok_or(VerifyError::Malformed("leaf outside the range"))?,
            Some((left, right)) => {
                let below_base = in_base || is_base_root;
                let l = self.node(left, below_base)?;
                let r = self.node(right, below_base)?;
                let n = tree::parent(&l, &r);
                if !is_base_root {
                    self.learned.push(n);
                }
                n
            }
        };
        if is_base_root && self.base_root(index)? != n {
            return Err(VerifyError::BlockMismatch {
                start: self.walk.start,
                end: self.walk.end,
            });
        }
        Ok(n)
    }
}
