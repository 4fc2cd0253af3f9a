//! Where feeds' directories are: a feed's directory name (its key in hex) under the fan
//! `feeds/<hh>` of its first key byte, which fans exist, and making a new feed's
//! directory so that a crash leaves it whole or absent.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::format::encode_meta;
use super::{Shared, StorageError};

/// `key` in lowercase hex (a feed's directory name). Digit by digit, not `format!` per
/// byte: every whole-feed read and write asks whether a feed has a directory.
pub(super) fn hex(key: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in key {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

pub(super) fn parse_hex(name: &str) -> Option<[u8; 32]> {
    if name.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

impl Shared {
    pub(super) fn feed_dir(&self, key: &[u8; 32]) -> PathBuf {
        let h = hex(key);
        self.feeds_dir.join(&h[..2]).join(h)
    }

    /// Which of `feeds/<hh>` exist, by the key byte `hh` names, from one listing: a
    /// feed has a directory of its own only if its fan does, so a batch of keys asks
    /// the file system about a key's directory only where its fan exists (none at all
    /// while every feed is small). A directory is made only under the `live` lock or
    /// through a live handle: with that lock held, the answer for a key without a
    /// handle stays true until it is released; without it, a move out may overtake it,
    /// as it may any check of a path.
    pub(super) fn fans(&self) -> io::Result<[bool; 256]> {
        let mut fans = [false; 256];
        for entry in fs::read_dir(&self.feeds_dir)? {
            let name = entry?.file_name();
            let byte = name
                .to_str()
                .filter(|n| n.len() == 2)
                .and_then(|n| u8::from_str_radix(n, 16).ok());
            if let Some(byte) = byte {
                fans[usize::from(byte)] = true;
            }
        }
        Ok(fans)
    }

    /// Whether feed `key` has a directory of its own, given [`Self::fans`].
    pub(super) fn has_dir(&self, fans: &[bool; 256], key: &[u8; 32]) -> bool {
        fans[usize::from(key[0])] && self.feed_dir(key).exists()
    }

    /// Make the directory of a new feed: under a temporary name, with `meta`, and with
    /// `fill` run on it (which must leave what it writes synced), then
    /// renamed into place: a crash leaves the directory whole or absent (temporary
    /// ones are removed on open). [`StorageError::Exists`] if the feed's directory is
    /// there already.
    pub(super) fn make_feed_dir(
        self: &Arc<Self>,
        key: &[u8; 32],
        secret_key: Option<&[u8; 32]>,
        fill: impl FnOnce(&Path) -> Result<(), StorageError>,
    ) -> Result<PathBuf, StorageError> {
        let dir = self.feed_dir(key);
        if dir.exists() {
            return Err(StorageError::Exists);
        }
        let fan = dir.parent().unwrap_or(&self.feeds_dir).to_path_buf();
        fs::create_dir_all(&fan)?;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tmp = fan.join(format!(".tmp-{}-{}-{n}", hex(key), std::process::id()));
        fs::create_dir(&tmp)?;
        let made = (|| {
            let meta = encode_meta(key, secret_key);
            // `meta` holds a writable feed's secret key: only its owner may read it.
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(tmp.join("meta"))?
                .write_all(&meta)?;
            fill(&tmp)
        })();
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, &dir) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(if dir.exists() {
                StorageError::Exists
            } else {
                e.into()
            });
        }
        Ok(dir)
    }
}
