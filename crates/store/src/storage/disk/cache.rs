//! [`FileCache`]: the open handles of every feed's files, bounded, least recently used
//! closed first.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::files::lock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum FileKind {
    /// The log, opened to append.
    Log,
    /// The log again, opened to write at an offset (the blocks of an append written
    /// while they are hashed, `FeedInner::write_append_hashing`).
    LogAt,
    Tree,
    Index,
}

impl FileKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            FileKind::Log | FileKind::LogAt => "log",
            FileKind::Tree => "tree",
            FileKind::Index => "index",
        }
    }
}

/// Open file handles, bounded, least recently used closed first.
#[derive(Debug, Default)]
pub(super) struct FileCache {
    entries: HashMap<(u64, FileKind), (Arc<File>, u64)>,
    by_use: BTreeMap<u64, (u64, FileKind)>,
    tick: u64,
}

impl FileCache {
    /// Whether the handle of `key` is held.
    #[cfg(test)]
    pub(super) fn holds(&self, key: (u64, FileKind)) -> bool {
        self.entries.contains_key(&key)
    }

    /// Number of handles held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn get(&mut self, key: (u64, FileKind)) -> Option<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        let (file, used) = self.entries.get_mut(&key)?;
        self.by_use.remove(used);
        *used = tick;
        self.by_use.insert(tick, key);
        Some(Arc::clone(file))
    }

    pub(super) fn insert(&mut self, key: (u64, FileKind), file: Arc<File>, max: usize) {
        self.tick += 1;
        if let Some((_, used)) = self.entries.insert(key, (file, self.tick)) {
            self.by_use.remove(&used);
        }
        self.by_use.insert(self.tick, key);
        while self.entries.len() > max.max(1) {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    pub(super) fn remove_feed(&mut self, id: u64) {
        for kind in [
            FileKind::Log,
            FileKind::LogAt,
            FileKind::Tree,
            FileKind::Index,
        ] {
            if let Some((_, used)) = self.entries.remove(&(id, kind)) {
                self.by_use.remove(&used);
            }
        }
    }
}

/// The handle of feed `id`'s file of `kind` at `path`, from `cache` or opened and put
/// there (at most `max` kept); `None` if it does not exist and `create` is false.
pub(super) fn open(
    cache: &Mutex<FileCache>,
    id: u64,
    kind: FileKind,
    path: &Path,
    create: bool,
    max: usize,
) -> io::Result<Option<Arc<File>>> {
    let key = (id, kind);
    if let Some(f) = lock(cache).get(key) {
        return Ok(Some(f));
    }
    let mut options = OpenOptions::new();
    options.read(true);
    match kind {
        FileKind::Log => options.append(true),
        FileKind::LogAt | FileKind::Tree | FileKind::Index => options.write(true),
    };
    options.create(create);
    let file = match options.open(path) {
        Ok(f) => Arc::new(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
        Err(e) => return Err(e),
    };
    lock(cache).insert(key, Arc::clone(&file), max);
    Ok(Some(file))
}
