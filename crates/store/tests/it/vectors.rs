//! Checks the Merkle tree, discovery keys and ed25519 keys against the vectors that
//! `tests/vectors/gen.js` computed with the npm reference packages.

use replic8_store::tree::{self, full_roots, Node};
use replic8_store::{DiscoveryKey, FeedSecret};
use serde_json::Value;

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/vectors.json"
    ))
    .expect("read vectors.json");
    serde_json::from_str(&text).expect("parse vectors.json")
}

fn block(seed: u64, i: u64, size: usize) -> Vec<u8> {
    (0..size as u64)
        .map(|j| ((seed + 31 * i + 7 * j) & 0xff) as u8)
        .collect()
}

fn hex32(v: &Value) -> [u8; 32] {
    let mut out = [0; 32];
    hex::decode_to_slice(v.as_str().expect("hex string"), &mut out).expect("32 hex bytes");
    out
}

/// Builds every node of the tree over `blocks` by appending leaves and merging equal
/// siblings, independently of the proof code.
fn build(blocks: &[Vec<u8>]) -> std::collections::HashMap<u64, Node> {
    let mut nodes = std::collections::HashMap::new();
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
    nodes
}

#[test]
fn tree_hashes_match_hypercore_crypto() {
    let v = vectors();
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 9);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let seed = case["seed"].as_u64().expect("seed");
        let mut sizes = Vec::new();
        for run in case["runs"].as_array().expect("runs") {
            let size = run[0].as_u64().expect("size") as usize;
            for _ in 0..run[1].as_u64().expect("count") {
                sizes.push(size);
            }
        }
        let blocks: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| block(seed, i as u64, s))
            .collect();
        for (i, leaf) in case["leaves"]
            .as_array()
            .expect("leaves")
            .iter()
            .enumerate()
        {
            assert_eq!(tree::leaf_hash(&blocks[i]), hex32(leaf), "{name}: leaf {i}");
        }
        let nodes = build(&blocks);
        let roots: Vec<Node> = full_roots(blocks.len() as u64)
            .iter()
            .map(|i| nodes[i])
            .collect();
        let expected = case["roots"].as_array().expect("roots");
        assert_eq!(roots.len(), expected.len(), "{name}: root count");
        for (r, e) in roots.iter().zip(expected) {
            assert_eq!(r.index, e["index"].as_u64().expect("index"), "{name}");
            assert_eq!(r.size, e["size"].as_u64().expect("size"), "{name}");
            assert_eq!(r.hash, hex32(&e["hash"]), "{name}: root {}", r.index);
        }
        for t in case["trees"].as_array().expect("trees") {
            let length = t["length"].as_u64().expect("length");
            let indices: Vec<u64> = t["full_roots"]
                .as_array()
                .expect("full_roots")
                .iter()
                .map(|i| i.as_u64().expect("index"))
                .collect();
            assert_eq!(full_roots(length), indices, "{name}: fullRoots at {length}");
            let roots: Vec<Node> = indices.iter().map(|i| nodes[i]).collect();
            assert_eq!(
                tree::tree_hash(&roots),
                hex32(&t["hash"]),
                "{name}: tree hash at length {length}"
            );
        }
    }
}

#[test]
fn keys_match_hypercore_crypto() {
    let v = vectors();
    for k in v["keys"].as_array().expect("keys") {
        let secret = FeedSecret::from_bytes(&hex32(&k["seed"]));
        let key = secret.key();
        assert_eq!(key.as_bytes(), &hex32(&k["public_key"]));
        assert_eq!(
            key.discovery_key(),
            DiscoveryKey(hex32(&k["discovery_key"]))
        );
        let message = hex::decode(k["message"].as_str().expect("message")).expect("hex");
        let signature = hex::decode(k["signature"].as_str().expect("signature")).expect("hex");
        assert_eq!(secret.sign_raw(&message).to_vec(), signature);
    }
}

#[test]
fn feed_append_gives_the_reference_tree_hash() {
    use replic8_store::storage::MemoryStorage;
    use replic8_store::Feed;
    let v = vectors();
    for case in v["cases"].as_array().expect("cases") {
        let seed = case["seed"].as_u64().expect("seed");
        let mut sizes = Vec::new();
        for run in case["runs"].as_array().expect("runs") {
            for _ in 0..run[1].as_u64().expect("count") {
                sizes.push(run[0].as_u64().expect("size") as usize);
            }
        }
        let storage = MemoryStorage::new();
        let mut feed = Feed::create(&storage, FeedSecret::from_bytes(&[5; 32])).expect("create");
        // Append in uneven batches, so batch boundaries fall everywhere.
        let mut i = 0usize;
        let mut batch = 1usize;
        while i < sizes.len() {
            let end = (i + batch).min(sizes.len());
            let blocks: Vec<Vec<u8>> = (i..end).map(|k| block(seed, k as u64, sizes[k])).collect();
            feed.append_batch(&blocks).expect("append");
            i = end;
            batch = batch % 7 + 1;
        }
        let last = case["trees"]
            .as_array()
            .expect("trees")
            .last()
            .expect("a tree")
            .clone();
        assert_eq!(feed.length(), last["length"].as_u64().expect("length"));
        assert_eq!(
            feed.head().expect("head").tree_hash,
            hex32(&last["hash"]),
            "{}",
            case["name"]
        );
    }
}
