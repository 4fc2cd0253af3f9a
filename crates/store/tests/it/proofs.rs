//! Proof creation and verification over every (base, length, range) of small trees, and
//! each way a proof can be wrong.

use std::collections::HashMap;

use replic8_store::tree::{self, full_roots, Node};
use replic8_store::{FeedSecret, Proof, VerifyError};

struct Tree {
    blocks: Vec<Vec<u8>>,
    nodes: HashMap<u64, Node>,
}

impl Tree {
    fn new(n: u64, salt: u8) -> Tree {
        let blocks: Vec<Vec<u8>> = (0..n)
            .map(|i| vec![salt.wrapping_add(i as u8); (i % 7) as usize * 3])
            .collect();
        let mut nodes = HashMap::new();
        let mut roots: Vec<Node> = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            let mut node = tree::leaf(i as u64, b);
            nodes.insert(node.index, node);
            while roots
                .last()
                .is_some_and(|r| r.index == tree::flat::sibling(node.index))
            {
                let left = roots.pop().expect("a root");
                node = tree::parent(&left, &node);
                nodes.insert(node.index, node);
            }
            roots.push(node);
        }
        Tree { blocks, nodes }
    }

    fn roots(&self, length: u64) -> Vec<Node> {
        full_roots(length).iter().map(|i| self.nodes[i]).collect()
    }

    fn proof(&self, secret: &FeedSecret, base: u64, length: u64, start: u64, end: u64) -> Proof {
        let head = secret.sign_head(length, tree::tree_hash(&self.roots(length)));
        Proof::create(base, length, start, end, Some(head), |i| {
            Ok(self.nodes.get(&i).copied())
        })
        .expect("proof")
    }
}

#[test]
fn every_proof_of_small_trees_verifies() {
    let secret = FeedSecret::from_bytes(&[1; 32]);
    let key = secret.key();
    let t = Tree::new(16, 0);
    let mut count = 0;
    for length in 0..=16u64 {
        for base in 0..=length {
            for start in 0..=length {
                for end in start..=length {
                    let p = t.proof(&secret, base, length, start, end);
                    let blocks = &t.blocks[start as usize..end as usize];
                    let v = p
                        .verify(&key, &t.roots(base), blocks)
                        .unwrap_or_else(|e| panic!("b{base} l{length} {start}..{end}: {e}"));
                    assert_eq!(v.roots, t.roots(length));
                    for n in &v.nodes {
                        assert_eq!(Some(n), t.nodes.get(&n.index), "learned node {}", n.index);
                    }
                    for i in start..end {
                        assert!(v.nodes.iter().any(|n| n.index == 2 * i), "leaf {i} learned");
                    }
                    assert!(p.nodes.len() <= 2 * 64);
                    count += 1;
                }
            }
        }
    }
    assert!(count > 5_000);
}

#[test]
fn contiguous_range_needs_few_nodes() {
    let secret = FeedSecret::from_bytes(&[1; 32]);
    let t = Tree::new(1000, 0);
    let p = t.proof(&secret, 0, 1000, 300, 364);
    // Two siblings per level at most, plus the other roots.
    assert!(
        p.nodes.len() <= 2 * 10 + full_roots(1000).len(),
        "{}",
        p.nodes.len()
    );
    let data = t.proof(&secret, 1000, 1000, 300, 364);
    assert!(data.head.is_none());
    assert!(data.nodes.len() <= 2 * 10);
}

#[test]
fn wrong_proofs_are_rejected_with_their_reason() {
    let secret = FeedSecret::from_bytes(&[1; 32]);
    let key = secret.key();
    let t = Tree::new(40, 0);
    let other = Tree::new(40, 99);

    // A block that does not verify, against trusted roots.
    let p = t.proof(&secret, 40, 40, 10, 20);
    let mut blocks = t.blocks[10..20].to_vec();
    blocks[3].push(1);
    assert_eq!(
        p.verify(&key, &t.roots(40), &blocks),
        Err(VerifyError::BlockMismatch { start: 10, end: 20 })
    );
    // The same through a signed head.
    let p = t.proof(&secret, 0, 40, 10, 20);
    assert_eq!(
        p.verify(&key, &[], &blocks),
        Err(VerifyError::TreeMismatch { length: 40 })
    );
    // A proof for another tree under our signed head.
    let mut p = other.proof(&secret, 0, 40, 10, 20);
    p.head = Some(secret.sign_head(40, tree::tree_hash(&t.roots(40))));
    assert_eq!(
        p.verify(&key, &[], &other.blocks[10..20]),
        Err(VerifyError::TreeMismatch { length: 40 })
    );
    // A signature by another key.
    let stranger = FeedSecret::from_bytes(&[2; 32]);
    let p = t.proof(&stranger, 0, 40, 10, 20);
    assert_eq!(
        p.verify(&key, &[], &t.blocks[10..20]),
        Err(VerifyError::BadSignature { length: 40 })
    );
    // A length that goes backward.
    let mut p = t.proof(&secret, 20, 30, 0, 0);
    p.base = 31;
    assert_eq!(
        p.verify(&key, &t.roots(31), &[] as &[Vec<u8>]),
        Err(VerifyError::LengthBackward {
            base: 31,
            length: 30
        })
    );
    // Trusted roots that are not the proof's base.
    let p = t.proof(&secret, 20, 30, 0, 0);
    assert_eq!(
        p.verify(&key, &t.roots(21), &[] as &[Vec<u8>]),
        Err(VerifyError::UnknownBase { base: 20 })
    );
    // Shape errors: missing node, extra node, wrong block count, no head.
    let good = t.proof(&secret, 0, 40, 10, 20);
    let mut p = good.clone();
    p.nodes.pop();
    assert!(matches!(
        p.verify(&key, &[], &t.blocks[10..20]),
        Err(VerifyError::Malformed(_))
    ));
    let mut p = good.clone();
    p.nodes.push(p.nodes[0]);
    assert!(matches!(
        p.verify(&key, &[], &t.blocks[10..20]),
        Err(VerifyError::Malformed(_))
    ));
    assert!(matches!(
        good.verify(&key, &[], &t.blocks[10..19]),
        Err(VerifyError::Malformed(_))
    ));
    let mut p = good.clone();
    p.head = None;
    assert!(matches!(
        p.verify(&key, &[], &t.blocks[10..20]),
        Err(VerifyError::Malformed(_))
    ));
    // A tampered sibling hash.
    let mut p = good;
    p.nodes[0].hash[0] ^= 1;
    assert_eq!(
        p.verify(&key, &[], &t.blocks[10..20]),
        Err(VerifyError::TreeMismatch { length: 40 })
    );
}
