//! What the node keeps in its data directory besides feeds: the identity key and the
//! topics it joined and the feeds it shared, so that a restart resumes them.
//!
//! Files are replaced atomically (write a temporary file, fsync it, rename it over the
//! old one, fsync the directory): a crash leaves the old or the new version, never a mix.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// File name of the node's identity key inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// Name of the feed store's directory inside the data directory (a program may prepare
/// feeds there before the node starts, as `replic8 bench` does).
pub const FEEDS_DIR: &str = "feeds";
/// File name of the persisted joins and shares inside the data directory.
pub const STATE_FILE: &str = "state.json";
/// Largest state file we read; far above any real one (a join is ~100 bytes), so a
/// corrupt or hostile file cannot make us allocate without bound.
const MAX_STATE_FILE: u64 = 64 << 20;

/// What loading or saving persisted node data can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A file in the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The identity file is not 64 hex digits.
    #[error("{path}: not an identity key (expected 64 hex digits)")]
    BadIdentity {
        /// The identity file.
        path: PathBuf,
    },
    /// The identity file can be read by other users.
    #[error("{path}: readable by other users (mode {mode:o}); run: chmod 600 {path}")]
    IdentityPermissions {
        /// The identity file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The data directory can be written by other users, who could replace the identity,
    /// the state or the control socket.
    #[error("{path}: writable by group or others (mode {mode:o}); run: chmod 700 {path}")]
    DirPermissions {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The data directory belongs to another user, who could replace anything in it.
    #[error(
        "{path}: owned by uid {owner}, not by uid {uid} who runs replic8; \
         run replic8 as uid {owner}, or: chown {uid} {path}"
    )]
    DirOwner {
        /// The directory.
        path: PathBuf,
        /// The directory's owner.
        owner: u32,
        /// The user running this process.
        uid: u32,
    },
    /// The path of the data directory is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The state file does not parse.
    #[error("{path}: corrupt state file: {message}")]
    BadState {
        /// The state file.
        path: PathBuf,
        /// What did not parse.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PersistError + '_ {
    move |source| PersistError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Create `dir` (and its parents) with mode 0700 if it does not exist, then check it
/// with [`check_dir`]: a directory others can write to, or that another user owns, is
/// refused before anything is read from or written into it.
pub fn ensure_dir(dir: &Path) -> Result<(), PersistError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    check_dir(dir)
}

/// The effective uid of this process: the owner of `/proc/self` (Linux gives that
/// directory the process's effective uid; the workspace links no libc binding of its own).
pub fn current_uid() -> Result<u32, PersistError> {
    let proc_self = Path::new("/proc/self");
    Ok(fs::metadata(proc_self).map_err(io_err(proc_self))?.uid())
}

/// Checks that `dir` is a directory owned by the user running this process and not
/// writable by group or others. Root gets no exception: a root process working in a
/// directory another user owns would write root-owned files there, and that user could
/// swap what root then reads.
pub fn check_dir(dir: &Path) -> Result<(), PersistError> {
    check_dir_mode(dir, 0o022)
}

/// [`check_dir`] with the permission bits that are refused (`0o022`: writable by group
/// or others; `0o077`: any access by group or others).
pub fn check_dir_mode(dir: &Path, refused: u32) -> Result<(), PersistError> {
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(PersistError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let uid = current_uid()?;
    if meta.uid() != uid {
        return Err(PersistError::DirOwner {
            path: dir.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & refused != 0 {
        return Err(PersistError::DirPermissions {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Replace `path` with `bytes` atomically and durably, with the given permission bits
/// ([`replic8_store::storage::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PersistError> {
    replic8_store::storage::write_atomic(path, bytes, mode).map_err(io_err(path))
}

/// Load the node's identity key from `dir`, creating and saving a new one if there is none.
pub fn load_or_create_identity(dir: &Path) -> Result<SigningKey, PersistError> {
    let path = dir.join(IDENTITY_FILE);
    match fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(PersistError::IdentityPermissions { path, mode });
            }
            let text = fs::read_to_string(&path).map_err(io_err(&path))?;
            let mut secret = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut secret)
                .map_err(|_| PersistError::BadIdentity { path: path.clone() })?;
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ensure_dir(dir)?;
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let text = format!("{}\n", hex::encode(key.to_bytes()));
            write_atomic(&path, text.as_bytes(), 0o600)?;
            Ok(key)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// A topic the node joined, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedJoin {
    /// The 32-byte topic, hex.
    #[serde(with = "hex_32")]
    pub topic: [u8; 32],
    /// Whether the node announces itself for the topic.
    pub announce: bool,
    /// Whether the node looks up peers for the topic.
    pub lookup: bool,
}

/// A feed the node shared in a namespace, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedShare {
    /// The namespace the feed is shared in.
    pub namespace: String,
    /// The feed's public key, hex.
    #[serde(with = "hex_32")]
    pub feed: [u8; 32],
    /// The headers the feed is offered with (values are bytes).
    pub headers: BTreeMap<String, Vec<u8>>,
}

/// Everything the node resumes after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    /// Joined topics, in the order they were joined.
    pub joins: Vec<PersistedJoin>,
    /// Shared feeds, in the order they were shared.
    pub shares: Vec<PersistedShare>,
    /// Namespaces the default feed store serves (accepts offers in), besides the public
    /// one and those of the shares.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// What the store accepts in each namespace that the user opened with a policy
    /// other than held-only (a missing entry is held-only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policies: BTreeMap<String, PersistedPolicy>,
    /// Namespaces the user opened with a policy that can be written down (the CLI's
    /// `namespace open`), with their secret; served at start with both.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub opened: BTreeMap<String, PersistedNamespace>,
}

/// A namespace the user opened, as persisted. The secret is kept here, in the state
/// file (mode 0600, in the data directory that only its owner may write).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedNamespace {
    /// The secret as 64 hex digits, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The policy.
    pub spec: crate::node::namespace_spec::NamespaceSpec,
}

/// A namespace's accept policy, as persisted: the kinds that can be written down (a
/// header predicate or a callback lives in the embedding program, which opens the
/// namespace again after a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedPolicy {
    /// Accept every offered feed (else only feeds held in the namespace).
    pub accept_all: bool,
    /// Share accepted feeds with the namespace's other peers.
    pub forward: bool,
}

impl PersistedState {
    /// Load the state from `dir`; a missing file is an empty state.
    pub fn load(dir: &Path) -> Result<Self, PersistError> {
        let path = dir.join(STATE_FILE);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len > MAX_STATE_FILE {
            return Err(PersistError::BadState {
                path,
                message: format!("{len} bytes, more than the {MAX_STATE_FILE} allowed"),
            });
        }
        serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| PersistError::BadState {
            path,
            message: e.to_string(),
        })
    }

    /// Save the state into `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<(), PersistError> {
        let path = dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| PersistError::BadState {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &bytes, 0o600)
    }

    /// Record a join, replacing an earlier one of the same topic. Returns whether it changed.
    pub fn join(&mut self, join: PersistedJoin) -> bool {
        match self.joins.iter_mut().find(|j| j.topic == join.topic) {
            Some(existing) if *existing == join => false,
            Some(existing) => {
                *existing = join;
                true
            }
            None => {
                self.joins.push(join);
                true
            }
        }
    }

    /// Record a namespace. Returns whether it was new.
    pub fn namespace(&mut self, name: &str) -> bool {
        if self.namespaces.iter().any(|n| n == name) {
            return false;
        }
        self.namespaces.push(name.to_owned());
        true
    }

    /// Record a namespace's policy (`None`: held-only, the default). Returns whether it
    /// changed.
    pub fn policy(&mut self, name: &str, policy: Option<PersistedPolicy>) -> bool {
        match policy {
            Some(p) => self.policies.insert(name.to_owned(), p) != Some(p),
            None => self.policies.remove(name).is_some(),
        }
    }

    /// Forget a join. Returns whether it was there.
    pub fn leave(&mut self, topic: &[u8; 32]) -> bool {
        let before = self.joins.len();
        self.joins.retain(|j| &j.topic != topic);
        self.joins.len() != before
    }

    /// Record a share, replacing the headers of an earlier share of the same feed in the
    /// same namespace. Returns whether it changed.
    pub fn share(&mut self, share: PersistedShare) -> bool {
        match self
            .shares
            .iter_mut()
            .find(|s| s.feed == share.feed && s.namespace == share.namespace)
        {
            Some(existing) if *existing == share => false,
            Some(existing) => {
                *existing = share;
                true
            }
            None => {
                self.shares.push(share);
                true
            }
        }
    }
}

mod hex_32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not 64 hex digits")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_create_identity(&data).unwrap();
        let mode = fs::metadata(data.join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_identity(&data).unwrap();
        assert_eq!(first.to_bytes(), again.to_bytes());
    }

    #[test]
    fn identity_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_identity(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_identity(dir.path()).unwrap_err();
        assert!(
            matches!(err, PersistError::IdentityPermissions { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_identity_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join(IDENTITY_FILE), b"not a key\n", 0o600).unwrap();
        let err = load_or_create_identity(dir.path()).unwrap_err();
        assert!(matches!(err, PersistError::BadIdentity { .. }), "{err}");
    }

    #[test]
    fn a_data_dir_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ensure_dir(&data).unwrap();
        for mode in [0o770, 0o707, 0o777, 0o1777] {
            fs::set_permissions(&data, fs::Permissions::from_mode(mode)).unwrap();
            let err = ensure_dir(&data).unwrap_err();
            assert!(matches!(err, PersistError::DirPermissions { .. }), "{err}");
            assert!(err.to_string().contains("chmod 700"), "{err}");
        }
        // Readable by others is allowed (the identity and state files are 0600 each).
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&data).unwrap();
        assert!(check_dir_mode(&data, 0o077).is_err());
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(matches!(
            check_dir(&file),
            Err(PersistError::NotADirectory { .. })
        ));
    }

    #[test]
    fn state_round_trips_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            PersistedState::load(dir.path()).unwrap(),
            PersistedState::default()
        );
        let mut state = PersistedState::default();
        let join = PersistedJoin {
            topic: [7; 32],
            announce: true,
            lookup: false,
        };
        assert!(state.join(join.clone()));
        assert!(!state.join(join.clone()));
        let share = PersistedShare {
            namespace: "photos".into(),
            feed: [9; 32],
            headers: BTreeMap::from([("name".into(), b"holiday".to_vec())]),
        };
        assert!(state.share(share.clone()));
        assert!(!state.share(share));
        assert!(state.namespace("photos"));
        assert!(!state.namespace("photos"));
        state.opened.insert(
            "team".into(),
            PersistedNamespace {
                secret: Some("ab".repeat(32)),
                spec: crate::node::namespace_spec::NamespaceSpec::new(
                    None,
                    BTreeMap::from([("kind".into(), "photo".into())]),
                    Some(false),
                )
                .unwrap(),
            },
        );
        state.save(dir.path()).unwrap();
        let loaded = PersistedState::load(dir.path()).unwrap();
        assert_eq!(loaded, state);
        let mode = fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the state file holds secrets");
        let mut left = loaded;
        assert!(left.leave(&[7; 32]));
        assert!(!left.leave(&[7; 32]));
        assert!(left.joins.is_empty());
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join(STATE_FILE), b"{\"joins\": [", 0o600).unwrap();
        let err = PersistedState::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains(STATE_FILE), "{err}");
    }
}
