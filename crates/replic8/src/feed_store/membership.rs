//! Which namespaces each feed of a store belongs to, and the file that keeps it.
//!
//! A feed belongs to the namespaces it was shared in ([`super::ShareFeed`]) or accepted
//! in (from an offer). A feed created here and never shared belongs to the public
//! namespace `""` (so peers that know its key replicate it by discovery key); sharing it
//! in any namespace other than `""` ends that implicit public membership, so a feed
//! shared only in a secret namespace is private. Sharing it in `""` makes it public for
//! good.
//!
//! A replica accepted under a forwarding policy also keeps the headers it was offered
//! with, so that it is offered again, with them, after a restart.
//!
//! On disk the map is one small file in the storage's directory, replaced atomically
//! (a temporary file written and fsynced, renamed over the old one, the directory
//! fsynced); writes carry a generation so an older snapshot never replaces a newer one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use actix::Message;
use bincode::Options;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::keys::FeedKey;
use replic8_store::storage::write_atomic;

/// The file's name inside the storage's directory.
pub const MEMBERSHIP_FILE: &str = "namespaces";
/// What the file starts with: its format and version (2: with the headers of forwarded
/// replicas).
const MAGIC: &[u8; 8] = b"r8ns\0\0\0\x02";
/// Version 1, without headers: still read.
const MAGIC_V1: &[u8; 8] = b"r8ns\0\0\0\x01";
/// Most bytes the file may have: a million feeds in a few namespaces each. The decoder
/// allocates no more than this.
const MAX_FILE_LEN: u64 = 256 << 20;

/// Values by namespace name, sorted by name, in one allocation the size of its
/// entries. A feed belongs to a namespace or two, and a `BTreeMap` (or `BTreeSet`)
/// allocates room for eleven entries at its first: 0.3–0.5 KB per feed, a hundred
/// thousand times in a store that holds that many. A name is an `Arc<str>` that the
/// store's [`NameTable`] hands out, so the feeds of one namespace share its one copy.
/// Encoded as the map it stands for (the same bytes as a `BTreeMap`, so the file's
/// format is unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ByName<V>(Vec<(Arc<str>, V)>);

impl<V> Default for ByName<V> {
    fn default() -> Self {
        ByName(Vec::new())
    }
}

impl<V> ByName<V> {
    /// One entry.
    fn one(name: Arc<str>, value: V) -> Self {
        ByName(vec![(name, value)])
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    /// The value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&V> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// Whether `name` has an entry.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets the value of `name`; returns whether `name` is new. Grows by one entry, not
    /// by the doubling of a `Vec` (which starts at four: 192 bytes for one forwarded
    /// namespace).
    pub(crate) fn insert(&mut self, name: Arc<str>, value: V) -> bool {
        match self.find(&name) {
            Ok(i) => {
                self.0[i].1 = value;
                false
            }
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (name, value));
                true
            }
        }
    }

    /// The names, sorted.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| &**n)
    }

    /// Whether there is no entry.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces each name with the table's copy of it.
    fn intern(&mut self, table: &mut NameTable) {
        for (name, _) in &mut self.0 {
            *name = table.intern(name);
        }
    }
}

impl<V> FromIterator<(String, V)> for ByName<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let sorted: BTreeMap<String, V> = iter.into_iter().collect();
        let mut entries = Vec::with_capacity(sorted.len());
        entries.extend(sorted.into_iter().map(|(n, v)| (Arc::from(n), v)));
        ByName(entries)
    }
}

impl<V: Serialize> Serialize for ByName<V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(n, v)| (&**n, v)))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for ByName<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, V>::deserialize(deserializer)?;
        Ok(map.into_iter().collect())
    }
}

/// Namespace names, sorted, in one allocation (see [`ByName`]); encoded as a set (the
/// same bytes as a `BTreeSet`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Names(ByName<()>);

impl Names {
    fn one(name: Arc<str>) -> Self {
        Names(ByName::one(name, ()))
    }

    /// Whether `name` is in.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    /// Adds `name`; returns whether it is new.
    pub(crate) fn insert(&mut self, name: Arc<str>) -> bool {
        self.0.insert(name, ())
    }

    /// The names, sorted.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.names()
    }

    /// Whether there is none.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Names {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let set = BTreeSet::<String>::deserialize(deserializer)?;
        Ok(Names(set.into_iter().map(|n| (n, ())).collect()))
    }
}

/// The namespace names of a store's members, one copy each: every [`Member`] holds
/// its names as clones of these (a namespace of 100,000 feeds costs one string, not
/// 100,000 of them). Names are never removed: a store knows a handful.
#[derive(Debug, Default)]
pub(crate) struct NameTable(HashSet<Arc<str>>);

impl NameTable {
    /// The table's copy of `name`, added if new.
    pub(crate) fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.get(name) {
            return known.clone();
        }
        let name: Arc<str> = Arc::from(name);
        self.0.insert(name.clone());
        name
    }

    /// Replaces every name `members` hold with the table's copy (after a load, where
    /// each name was read on its own).
    pub(crate) fn intern_all<'a>(&mut self, members: impl IntoIterator<Item = &'a mut Member>) {
        for member in members {
            member.namespaces.0.intern(self);
            member.forwarded.intern(self);
        }
    }
}

/// The namespaces of one feed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    /// In `""` because it was created here and was not shared in a namespace since.
    pub(crate) implicit_public: bool,
    /// Created from an offer (counted against the replica quota).
    pub(crate) replica: bool,
    /// The namespaces it was shared or accepted in.
    pub(crate) namespaces: Names,
    /// Per namespace where it was accepted under a forwarding policy: the headers it
    /// was offered with, so that it is offered again with them after a restart.
    pub(crate) forwarded: ByName<BTreeMap<String, Vec<u8>>>,
}

/// A member as version 1 of the file holds it.
#[derive(Debug, Deserialize)]
struct MemberV1 {
    implicit_public: bool,
    replica: bool,
    namespaces: BTreeSet<String>,
}

impl Member {
    /// A feed created here.
    pub(crate) fn created() -> Self {
        Member {
            implicit_public: true,
            ..Member::default()
        }
    }

    /// A replica accepted in `namespace`.
    pub(crate) fn accepted(namespace: Arc<str>) -> Self {
        Member {
            implicit_public: false,
            replica: true,
            namespaces: Names::one(namespace),
            forwarded: ByName::default(),
        }
    }

    /// A replica asked for by key ([`super::GetFeed`]): public for good, like a feed
    /// shared in `""` (`public`, the name `""`), and not counted against the replica
    /// quota of offers.
    pub(crate) fn wanted(public: Arc<str>) -> Self {
        Member {
            implicit_public: false,
            replica: false,
            namespaces: Names::one(public),
            forwarded: ByName::default(),
        }
    }

    /// The namespaces the feed belongs to, `""` included when it is public.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.namespaces.iter().map(str::to_owned).collect();
        if self.implicit_public && !self.namespaces.contains("") {
            names.insert(0, String::new());
        }
        names
    }

    /// Whether the feed belongs to `namespace`.
    pub(crate) fn is_in(&self, namespace: &str) -> bool {
        (namespace.is_empty() && self.implicit_public) || self.namespaces.contains(namespace)
    }

    /// Whether the feed belongs to any namespace.
    pub(crate) fn in_any(&self) -> bool {
        self.implicit_public || !self.namespaces.is_empty()
    }

    /// Shared in `namespace`: a member of it, and public only if shared in `""`.
    /// Returns whether anything changed.
    pub(crate) fn share(&mut self, namespace: Arc<str>) -> bool {
        let was_public = self.implicit_public;
        if !namespace.is_empty() {
            self.implicit_public = false;
        }
        self.namespaces.insert(namespace) || was_public != self.implicit_public
    }
}

/// Why the membership file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file is not a membership file of this version, or is damaged.
    #[error("{path}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// The persisted form.
type Entries = Vec<(FeedKey, Member)>;

fn options() -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_limit(MAX_FILE_LEN)
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

/// The map as the file holds it (sorted, so equal maps give equal files).
pub(crate) fn encode(map: &HashMap<FeedKey, Member>) -> Result<Vec<u8>, String> {
    let mut entries: Vec<(&FeedKey, &Member)> = map.iter().collect();
    entries.sort_unstable_by_key(|(k, _)| k.0);
    let mut out = MAGIC.to_vec();
    options()
        .serialize_into(&mut out, &entries)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// The map from the file's bytes; allocates at most what the bytes can fill.
pub(crate) fn decode(bytes: &[u8]) -> Result<HashMap<FeedKey, Member>, String> {
    if let Some(body) = bytes.strip_prefix(MAGIC_V1.as_slice()) {
        let entries: Vec<(FeedKey, MemberV1)> =
            options().deserialize(body).map_err(|e| e.to_string())?;
        return Ok(entries
            .into_iter()
            .map(|(key, m)| {
                let member = Member {
                    implicit_public: m.implicit_public,
                    replica: m.replica,
                    namespaces: Names(m.namespaces.into_iter().map(|n| (n, ())).collect()),
                    forwarded: ByName::default(),
                };
                (key, member)
            })
            .collect());
    }
    let body = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a membership file of this version")?;
    let entries: Entries = options().deserialize(body).map_err(|e| e.to_string())?;
    Ok(entries.into_iter().collect())
}

/// The membership file of a disk store.
#[derive(Debug)]
pub(crate) struct MembershipFile {
    path: PathBuf,
    /// The generation last written; writes are serialised through it.
    written: Mutex<u64>,
}

impl MembershipFile {
    /// The file at `path` (not read yet).
    pub(crate) fn new(path: PathBuf) -> Self {
        MembershipFile {
            path,
            written: Mutex::new(0),
        }
    }

    /// The map the file holds; empty if there is no file. Blocks.
    pub(crate) fn load(&self) -> Result<HashMap<FeedKey, Member>, MembershipError> {
        let io_err = |source| MembershipError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(io_err(e)),
        };
        let len = file.metadata().map_err(io_err)?.len();
        if len > MAX_FILE_LEN {
            return Err(MembershipError::Corrupt {
                path: self.path.clone(),
                what: format!("{len} bytes, more than {MAX_FILE_LEN}"),
            });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes).map_err(io_err)?;
        decode(&bytes).map_err(|what| MembershipError::Corrupt {
            path: self.path.clone(),
            what,
        })
    }

    /// Replaces the file with `bytes`, snapshot number `generation`, atomically and
    /// durably; a snapshot older than the last one written is skipped. Blocks.
    pub(crate) fn write(&self, generation: u64, bytes: &[u8]) -> Result<(), MembershipError> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if generation <= *written {
            return Ok(());
        }
        // Feed keys are read capabilities: only the owner may read the file.
        write_atomic(&self.path, bytes, 0o600).map_err(|source| MembershipError::Io {
            path: self.path.clone(),
            source,
        })?;
        *written = generation;
        Ok(())
    }
}

/// The bookkeeping of the membership file's writes: whether one runs, and the
/// generation (count of changes) the last finished one covered. The store starts a
/// write only when none runs, so changes made meanwhile share the next write.
#[derive(Debug)]
pub(crate) struct MembershipWrites {
    /// A write runs.
    pub(crate) running: bool,
    /// Writes started so far.
    pub(crate) count: u64,
    /// The generation the last finished write covered (written, or failed and logged:
    /// those waiting are released either way, as they were before writes coalesced).
    done: watch::Sender<u64>,
}

impl Default for MembershipWrites {
    fn default() -> Self {
        MembershipWrites {
            running: false,
            count: 0,
            done: watch::Sender::new(0),
        }
    }
}

impl MembershipWrites {
    /// Resolves once a write covering `generation` finished (or the store stopped).
    pub(crate) fn wait(&self, generation: u64) -> impl std::future::Future<Output = ()> + 'static {
        let mut done = self.done.subscribe();
        async move {
            let _ = done.wait_for(|g| *g >= generation).await;
        }
    }

    /// The write of `generation` finished.
    pub(crate) fn finished(&mut self, generation: u64) {
        self.running = false;
        self.done.send_if_modified(|g| {
            let newer = generation > *g;
            *g = (*g).max(generation);
            newer
        });
    }
}

/// A write of the membership file finished (sent by its task to the store).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct MembersWritten {
    /// The generation it wrote.
    pub(crate) generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn sharing_in_a_named_namespace_ends_implicit_public_membership() {
        let mut m = Member::created();
        assert!(m.is_in("") && !m.is_in("team"));
        assert!(m.share(n("team")));
        assert!(!m.is_in("") && m.is_in("team"));
        assert!(!m.share(n("team")), "sharing again changes nothing");
        assert!(m.share(n("")));
        assert!(m.share(n("other")));
        assert!(m.is_in("") && m.is_in("team") && m.is_in("other"));
        let r = Member::accepted(n("photos"));
        assert!(r.is_in("photos") && !r.is_in("") && r.in_any());
        assert!(!Member::default().in_any());
        let w = Member::wanted(n(""));
        assert!(w.is_in("") && !w.replica && w.names() == vec![String::new()]);
        assert_eq!(Member::created().names(), vec![String::new()]);
    }

    #[test]
    fn members_encode_as_the_maps_and_sets_they_stand_for_in_one_small_allocation() {
        // The file's format is that of `BTreeSet` and `BTreeMap` fields.
        #[derive(Serialize)]
        struct AsBTrees {
            implicit_public: bool,
            replica: bool,
            namespaces: BTreeSet<String>,
            forwarded: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
        }
        let headers = BTreeMap::from([("title".to_owned(), b"x".to_vec())]);
        let mut member = Member::accepted(n("photos"));
        assert!(member.share(n("docs")) && !member.share(n("docs")));
        member.forwarded.insert(n("photos"), headers.clone());
        member.forwarded.insert(n("docs"), BTreeMap::new());
        let trees = AsBTrees {
            implicit_public: false,
            replica: true,
            namespaces: BTreeSet::from(["photos".to_owned(), "docs".to_owned()]),
            forwarded: BTreeMap::from([
                ("photos".to_owned(), headers.clone()),
                ("docs".to_owned(), BTreeMap::new()),
            ]),
        };
        let bytes = options().serialize(&member).unwrap();
        assert_eq!(bytes, options().serialize(&trees).unwrap());
        let back: Member = options().deserialize(&bytes).unwrap();
        assert_eq!(back, member);
        assert_eq!(back.names(), vec!["docs".to_owned(), "photos".to_owned()]);
        assert_eq!(back.forwarded.get("photos"), Some(&headers));
        assert!(back.forwarded.get("other").is_none());
        // An accepted replica's namespaces take room for one name, not eleven.
        assert_eq!(Member::accepted(n("photos")).namespaces.0 .0.capacity(), 1);
    }

    #[test]
    fn the_members_of_a_namespace_share_its_name_and_hold_no_spare_room() {
        // A member per held feed for as long as the store runs (100,000 feeds): its
        // names are the table's, and its lists hold exactly their entries.
        let mut table = NameTable::default();
        let mut members: Vec<Member> = (0..3)
            .map(|_| {
                let mut m = Member::accepted(table.intern("photos"));
                m.forwarded.insert(table.intern("photos"), BTreeMap::new());
                m
            })
            .collect();
        let name = table.intern("photos");
        for m in &members {
            assert!(Arc::ptr_eq(&m.namespaces.0 .0[0].0, &name));
            assert!(Arc::ptr_eq(&m.forwarded.0[0].0, &name));
            assert_eq!(m.forwarded.0.capacity(), 1);
        }
        members[0]
            .forwarded
            .insert(table.intern("docs"), BTreeMap::new());
        assert_eq!(members[0].forwarded.0.capacity(), 2);
        assert_eq!(
            members[0].forwarded.names().collect::<Vec<_>>(),
            ["docs", "photos"]
        );
        // Read back from the file, each name is its own copy until interned.
        let bytes = encode(&HashMap::from([(FeedKey([1; 32]), members[1].clone())])).unwrap();
        let mut loaded = decode(&bytes).unwrap();
        let back = loaded.get(&FeedKey([1; 32])).unwrap();
        assert_eq!(back, &members[1]);
        assert!(!Arc::ptr_eq(&back.namespaces.0 .0[0].0, &name));
        table.intern_all(loaded.values_mut());
        let back = loaded.get(&FeedKey([1; 32])).unwrap();
        assert!(Arc::ptr_eq(&back.namespaces.0 .0[0].0, &name));
        assert!(Arc::ptr_eq(&back.forwarded.0[0].0, &name));
    }

    #[test]
    fn the_file_round_trips_is_replaced_atomically_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let file = MembershipFile::new(dir.path().join(MEMBERSHIP_FILE));
        assert!(file.load().unwrap().is_empty());
        let mut map = HashMap::new();
        map.insert(FeedKey([1; 32]), Member::accepted(n("photos")));
        map.insert(FeedKey([2; 32]), Member::created());
        file.write(2, &encode(&map).unwrap()).unwrap();
        // An older snapshot arriving late does not replace the newer one.
        file.write(1, &encode(&HashMap::new()).unwrap()).unwrap();
        assert_eq!(file.load().unwrap(), map);
        assert!(!dir.path().join("namespaces.tmp").exists());
        let mode = std::fs::metadata(dir.path().join(MEMBERSHIP_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let bytes = encode(&map).unwrap();
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(b"r8ns\0\0\0\x03").is_err());
        // Version 1 (no headers) still reads.
        let mut v1 = MAGIC_V1.to_vec();
        // Its fields in order: implicit_public, replica, namespaces.
        type V1 = (bool, bool, BTreeSet<String>);
        let old: Vec<(FeedKey, V1)> = vec![(
            FeedKey([3; 32]),
            (false, true, BTreeSet::from(["x".to_owned()])),
        )];
        options().serialize_into(&mut v1, &old).unwrap();
        assert_eq!(
            decode(&v1).unwrap(),
            HashMap::from([(FeedKey([3; 32]), Member::accepted(n("x")))])
        );
        // A length prefix claiming more entries than bytes allocates nothing up front.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode(&huge).is_err());
    }
}
