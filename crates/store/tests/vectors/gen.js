// Writes reference vectors for replic8-store's Merkle tree, discovery keys and ed25519
// keys, computed by the npm packages hypercore-crypto and flat-tree (versions pinned in
// package.json / package-lock.json).
//
//   cd crates/store/tests/vectors && npm ci && node gen.js > vectors.json
//
// Block contents are not stored: block `i` of a case has `sizes[i]` bytes and byte `j`
// of it is `(seed + 31 * i + 7 * j) & 0xff`. The Rust test regenerates them by the same
// rule. Sizes are given as a list of [size, count] runs to keep the file small.
'use strict'

const crypto = require('hypercore-crypto')
const flat = require('flat-tree')

function block(seed, i, size) {
  const b = Buffer.alloc(size)
  for (let j = 0; j < size; j++) b[j] = (seed + 31 * i + 7 * j) & 0xff
  return b
}

function expand(runs) {
  const sizes = []
  for (const [size, count] of runs) for (let k = 0; k < count; k++) sizes.push(size)
  return sizes
}

// Builds the whole tree of `blocks` the way hypercore does (leaves at even flat-tree
// indices, parents over full pairs) and returns every node by index.
function buildTree(blocks) {
  const nodes = new Map()
  const roots = []
  blocks.forEach((data, i) => {
    let node = { index: 2 * i, size: data.byteLength, hash: crypto.data(data) }
    nodes.set(node.index, node)
    while (roots.length && flat.sibling(node.index) === roots[roots.length - 1].index) {
      const left = roots.pop()
      const parent = {
        index: flat.parent(node.index),
        size: left.size + node.size,
        hash: crypto.parent(left, node)
      }
      nodes.set(parent.index, parent)
      node = parent
    }
    roots.push(node)
  })
  return nodes
}

function rootsAt(nodes, length) {
  return flat.fullRoots(2 * length).map((i) => nodes.get(i))
}

function hex(b) {
  return Buffer.from(b).toString('hex')
}

const cases = [
  { name: 'one', seed: 1, runs: [[10, 1]] },
  { name: 'two', seed: 2, runs: [[10, 2]] },
  { name: 'three', seed: 3, runs: [[10, 3]] },
  { name: 'five', seed: 5, runs: [[100, 5]] },
  { name: 'sixteen', seed: 16, runs: [[64, 16]] },
  { name: 'thousand', seed: 100, runs: [[33, 1000]] },
  { name: 'empty-blocks', seed: 7, runs: [[0, 4], [1, 1], [0, 2]] },
  {
    name: 'mixed',
    seed: 9,
    runs: [[0, 1], [1, 1], [252, 1], [17, 2], [4096, 1], [3, 1], [1024, 3]]
  },
  {
    name: 'varint-boundaries',
    seed: 11,
    runs: [[252, 1], [253, 1], [254, 1], [65535, 1], [65536, 1], [65537, 1]]
  }
]

const out = { generator: 'hypercore-crypto 3.7.0 + flat-tree 1.13.0', rule: '(seed + 31*i + 7*j) & 0xff', cases: [], keys: [] }

for (const c of cases) {
  const sizes = expand(c.runs)
  const blocks = sizes.map((size, i) => block(c.seed, i, size))
  const nodes = buildTree(blocks)
  // Tree hashes at a few lengths, including the full one.
  const lengths = [...new Set([1, 2, 3, Math.ceil(sizes.length / 2), sizes.length - 1, sizes.length])]
    .filter((n) => n >= 1 && n <= sizes.length)
    .sort((a, b) => a - b)
  out.cases.push({
    name: c.name,
    seed: c.seed,
    runs: c.runs,
    leaves: blocks.slice(0, 4).map((b) => hex(crypto.data(b))),
    roots: rootsAt(nodes, sizes.length).map((n) => ({ index: n.index, size: n.size, hash: hex(n.hash) })),
    trees: lengths.map((n) => ({ length: n, full_roots: flat.fullRoots(2 * n), hash: hex(crypto.tree(rootsAt(nodes, n))) }))
  })
}

for (const s of [0, 1, 42]) {
  const seed = Buffer.alloc(32, s)
  const kp = crypto.keyPair(seed)
  const message = Buffer.from('replic8 vector message ' + s)
  out.keys.push({
    seed: hex(seed),
    public_key: hex(kp.publicKey),
    discovery_key: hex(crypto.discoveryKey(kp.publicKey)),
    message: hex(message),
    signature: hex(crypto.sign(message, kp.secretKey))
  })
}

process.stdout.write(JSON.stringify(out, null, 1) + '\n')
