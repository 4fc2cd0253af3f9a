//! Small file helpers: bounded reads, whole vectored writes, slot reads and writes,
//! directory syncs, and the error that names a damaged file.

use std::fs::{self, File};
use std::io::{self, IoSlice, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::storage::StorageError;

/// Lock `m`, also after a panic in another holder (what it guards holds its invariants
/// between calls).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The error for damaged bytes in `path` at `offset`.
pub(super) fn corrupt(path: &Path, offset: u64, what: &str) -> StorageError {
    StorageError::Corrupt(format!("{}: offset {offset}: {what}", path.display()))
}

/// Make the entries of directory `path` durable.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Read a whole file of at most `max` bytes.
pub(super) fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {len} bytes, more than the {max} allowed",
                path.display()
            ),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

pub(super) fn write_all_vectored(
    mut file: &File,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read a slot; bytes past the end of the file read as zero (an absent slot).
pub(super) fn read_slot(file: &File, at: u64, slot: &mut [u8]) -> io::Result<()> {
    slot.fill(0);
    let mut done = 0;
    while done < slot.len() {
        match file.read_at(&mut slot[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Write sorted slots, one `write_all_at` per run of consecutive indices.
pub(super) fn write_slots<const N: usize>(
    file: &File,
    size: u64,
    slots: &[(u64, [u8; N])],
) -> io::Result<()> {
    let mut run = Vec::new();
    let mut run_start = 0u64;
    let mut next = None;
    for (index, slot) in slots {
        if next != Some(*index) {
            if !run.is_empty() {
                file.write_all_at(&run, run_start * size)?;
                run.clear();
            }
            run_start = *index;
        }
        run.extend_from_slice(slot);
        next = index.checked_add(1);
    }
    if !run.is_empty() {
        file.write_all_at(&run, run_start * size)?;
    }
    Ok(())
}

/// Call `f` with each entry of each sub-directory of `dir` (the feed directories and
/// leftovers under their two-hex-digit fan directories); other files in `dir` are
/// passed over.
pub(super) fn for_each_in_subdirs(
    dir: &Path,
    mut f: impl FnMut(fs::DirEntry) -> io::Result<()>,
) -> io::Result<()> {
    for sub in fs::read_dir(dir)? {
        let sub = sub?;
        if !sub.file_type()?.is_dir() {
            continue;
        }
        for entry in fs::read_dir(sub.path())? {
            f(entry?)?;
        }
    }
    Ok(())
}
