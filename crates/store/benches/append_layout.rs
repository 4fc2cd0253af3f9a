//! The experiment that picked the disk layout (see `docs/PERFORMANCE.md`, "store: storage
//! and append"). Not a criterion benchmark: it prints one line per (layout, workload).
//!
//! Layouts compared, each writing what one feed append writes (blocks, two tree nodes per
//! block, a head):
//! - `log`: one checksummed record per batch appended to one file per feed, fsync per
//!   durable point (the layout `DiskStorage` uses);
//! - `segment+redb`: block bytes appended to a segment file, index entries, nodes and the
//!   head in a redb table; a durable point is `sync_data` on the segment, then a redb
//!   commit with `Durability::Immediate`.
//!
//! Run: `cargo bench -p replic8-store --bench append_layout`

#![allow(missing_docs, clippy::unwrap_used)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use redb::{Database, Durability, TableDefinition};

const NODES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("nodes");
const BLOCKS: TableDefinition<(u64, u64), (u64, u32)> = TableDefinition::new("blocks");
const HEADS: TableDefinition<u64, &[u8]> = TableDefinition::new("heads");

struct Workload {
    name: &'static str,
    block: usize,
    per_batch: usize,
    batches: usize,
    sync_every_batch: bool,
}

trait Layout {
    fn write_batch(&mut self, first: u64, blocks: &[Vec<u8>]);
    fn sync(&mut self);
}

struct LogLayout {
    file: File,
    buf: Vec<u8>,
}

impl Layout for LogLayout {
    fn write_batch(&mut self, first: u64, blocks: &[Vec<u8>]) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; 16]);
        for (i, b) in blocks.iter().enumerate() {
            self.buf
                .extend_from_slice(&(first + i as u64).to_le_bytes());
            self.buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(&[0u8; 2 * 48]);
        }
        self.buf.extend_from_slice(&[0u8; 104]);
        for b in blocks {
            self.buf.extend_from_slice(b);
        }
        let crc = crc32fast::hash(&self.buf[16..]);
        self.buf[0..4].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all(&self.buf).unwrap();
    }

    fn sync(&mut self) {
        self.file.sync_data().unwrap();
    }
}

struct RedbLayout {
    segment: File,
    offset: u64,
    db: Database,
    durable: bool,
}

impl Layout for RedbLayout {
    fn write_batch(&mut self, first: u64, blocks: &[Vec<u8>]) {
        let mut entries = Vec::with_capacity(blocks.len());
        for b in blocks {
            self.segment.write_all(b).unwrap();
            entries.push((self.offset, b.len() as u32));
            self.offset += b.len() as u64;
        }
        if self.durable {
            self.segment.sync_data().unwrap();
        }
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(if self.durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .unwrap();
        {
            let mut nodes = tx.open_table(NODES).unwrap();
            let mut index = tx.open_table(BLOCKS).unwrap();
            let mut heads = tx.open_table(HEADS).unwrap();
            for (i, e) in entries.into_iter().enumerate() {
                let n = first + i as u64;
                index.insert((1, n), e).unwrap();
                nodes.insert((1, 2 * n), &[0u8; 40][..]).unwrap();
                nodes.insert((1, 2 * n + 1), &[0u8; 40][..]).unwrap();
            }
            heads.insert(1, &[0u8; 104][..]).unwrap();
        }
        tx.commit().unwrap();
    }

    fn sync(&mut self) {
        if !self.durable {
            self.segment.sync_data().unwrap();
            let mut tx = self.db.begin_write().unwrap();
            tx.set_durability(Durability::Immediate).unwrap();
            tx.commit().unwrap();
        }
    }
}

fn run(layout: &mut dyn Layout, w: &Workload) -> Duration {
    let blocks: Vec<Vec<u8>> = (0..w.per_batch).map(|i| vec![i as u8; w.block]).collect();
    let start = Instant::now();
    for b in 0..w.batches {
        layout.write_batch((b * w.per_batch) as u64, &blocks);
        if w.sync_every_batch {
            layout.sync();
        }
    }
    layout.sync();
    start.elapsed()
}

fn main() {
    let workloads = [
        Workload {
            name: "1 KiB, 1 block/batch, sync each",
            block: 1024,
            per_batch: 1,
            batches: 150,
            sync_every_batch: true,
        },
        Workload {
            name: "64 KiB, 1 block/batch, sync each",
            block: 65536,
            per_batch: 1,
            batches: 150,
            sync_every_batch: true,
        },
        Workload {
            name: "64 KiB, 16 blocks/batch, sync each",
            block: 65536,
            per_batch: 16,
            batches: 60,
            sync_every_batch: true,
        },
        Workload {
            name: "1 KiB, 1 block/batch, sync at end",
            block: 1024,
            per_batch: 1,
            batches: 20_000,
            sync_every_batch: false,
        },
        Workload {
            name: "64 KiB, 1 block/batch, sync at end",
            block: 65536,
            per_batch: 1,
            batches: 2_000,
            sync_every_batch: false,
        },
    ];
    for w in &workloads {
        for layout_name in ["log", "segment+redb"] {
            let dir =
                tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or(".".into())).unwrap();
            let mut layout: Box<dyn Layout> = if layout_name == "log" {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join("log"))
                    .unwrap();
                Box::new(LogLayout {
                    file,
                    buf: Vec::new(),
                })
            } else {
                let segment = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join("segment"))
                    .unwrap();
                Box::new(RedbLayout {
                    segment,
                    offset: 0,
                    db: Database::create(dir.path().join("db.redb")).unwrap(),
                    durable: w.sync_every_batch,
                })
            };
            let took = run(layout.as_mut(), w);
            let bytes = (w.block * w.per_batch * w.batches) as f64;
            let batches = w.batches as f64;
            println!(
                "{:<14} {:<36} {:>9.1} MB/s {:>10.0} batches/s",
                layout_name,
                w.name,
                bytes / took.as_secs_f64() / 1e6,
                batches / took.as_secs_f64()
            );
        }
    }
}
