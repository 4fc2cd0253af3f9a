//! Frame and block buffers reused across messages.
//!
//! A data message is up to 1 MiB. Allocated fresh for each message, such buffers come
//! from and go back to the operating system (the allocator maps and unmaps them, and
//! every page is faulted in and zeroed again): in the bulk bench that cost ~15 % of the
//! CPU of each side. Buffers here are handed out as plain `Vec`s and frozen into
//! [`Bytes`] whose owner puts the buffer back when the last reference is dropped (after
//! QUIC has sent it, or after the frame was decoded), so the same few buffers carry the
//! whole transfer. The serving side reads the blocks of its data answers into buffers
//! from here too (they go to QUIC as they are, and come back once sent): those are
//! handed out with the bytes of their last use still in them ([`BufferPool::take_to_overwrite`]),
//! so a read that overwrites them does not zero them first. The pool keeps at most
//! [`MAX_POOLED_BYTES`] of idle capacity; what does not fit is freed as usual.
//!
//! A buffer is allocated with its capacity rounded up to a whole number of
//! [`SIZE_CLASS`] bytes: received data frames differ by a few hundred bytes (their proofs
//! do), and a buffer made to one frame's exact size would not fit the next, slightly
//! larger one, which then took fresh memory from the allocator every time while the pool
//! stayed full of buffers that fit nothing.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Most idle capacity the pool keeps (about eight 1 MiB data frames).
pub(crate) const MAX_POOLED_BYTES: usize = 9 << 20;
/// Buffers smaller than this are not worth pooling (the allocator reuses them cheaply).
const MIN_POOLED: usize = 64 * 1024;
/// Pooled buffers are allocated in whole multiples of this: a data frame of 1 MiB of
/// blocks plus a few hundred bytes of header and proof gets 1 MiB + 64 KiB, which fits
/// every other such frame (6 % unused), and a 64 KiB block gets exactly 64 KiB.
const SIZE_CLASS: usize = 64 * 1024;

/// Idle frame buffers of one feed store.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    idle: Mutex<Idle>,
}

#[derive(Debug, Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufferPool {
    /// An empty buffer with room for at least `capacity` bytes: the smallest idle one
    /// that fits (a 64 KiB block read on the serving side does not take a 1 MiB frame
    /// buffer the receiving side then has to allocate again).
    pub(crate) fn take(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self.take_to_overwrite(capacity);
        buf.clear();
        buf
    }

    /// Like [`take`](Self::take), but the buffer keeps the length and bytes of its last
    /// use (an idle buffer is not cleared when it comes back), for a caller that
    /// overwrites what it reads: `resize` to the length it needs zeroes only the bytes
    /// past that old length, so a pooled buffer is not zeroed again before every read
    /// (~5 % of the serving side's CPU in the bulk bench, for `pread`s that overwrite the
    /// zeros). The old bytes are another message's: never send a byte of it that was not
    /// overwritten.
    pub(crate) fn take_to_overwrite(&self, capacity: usize) -> Vec<u8> {
        if capacity >= MIN_POOLED {
            let mut idle = self.lock();
            let fits = idle
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= capacity)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = fits {
                let buf = idle.buffers.swap_remove(i);
                idle.bytes -= buf.capacity();
                return buf;
            }
            return Vec::with_capacity(capacity.next_multiple_of(SIZE_CLASS));
        }
        Vec::with_capacity(capacity)
    }

    /// `buf` as shared bytes; its memory returns to the pool when they are dropped.
    pub(crate) fn freeze(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        if buf.capacity() < MIN_POOLED {
            return Bytes::from(buf);
        }
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    fn put(&self, buf: Vec<u8>) {
        let mut idle = self.lock();
        if idle.bytes + buf.capacity() <= MAX_POOLED_BYTES {
            idle.bytes += buf.capacity();
            idle.buffers.push(buf);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // The lists stay consistent whatever a panicking holder did.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// The owner of a frozen pooled buffer.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_slice_is_dropped() {
        let pool = Arc::new(BufferPool::default());
        let mut buf = pool.take(1 << 20);
        buf.extend_from_slice(&[7u8; 1000]);
        let ptr = buf.as_ptr();
        let bytes = pool.freeze(buf);
        let slice = bytes.slice(4..10);
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a slice still holds it");
        assert_eq!(&slice[..], &[7u8; 6]);
        drop(slice);
        assert!(pool.idle_bytes() >= 1 << 20);
        let again = pool.take(1 << 20);
        assert_eq!(
            (again.as_ptr(), again.len()),
            (ptr, 0),
            "the same memory, emptied"
        );
    }

    #[test]
    fn a_buffer_to_overwrite_keeps_its_bytes_and_a_plain_take_is_empty() {
        let pool = Arc::new(BufferPool::default());
        let mut buf = pool.take(1 << 20);
        buf.extend_from_slice(&[7u8; 100_000]);
        drop(pool.freeze(buf));
        let mut again = pool.take_to_overwrite(70_000);
        assert_eq!(again.len(), 100_000, "the old length, not cleared");
        // Shrinking to what a read needs zeroes nothing: the old bytes are still there.
        again.resize(70_000, 0);
        assert!(again.iter().all(|&b| b == 7));
        drop(pool.freeze(again));
        assert!(pool.take(70_000).is_empty());
    }

    #[test]
    fn a_buffer_serves_the_next_slightly_larger_frame() {
        // Received data frames differ by a few bytes (their proofs do): the buffer of one
        // must fit the next, or every frame takes fresh memory from the allocator.
        let pool = Arc::new(BufferPool::default());
        let first = pool.take((1 << 20) + 300);
        let ptr = first.as_ptr();
        drop(pool.freeze(first));
        let second = pool.take((1 << 20) + 700);
        assert_eq!(second.as_ptr(), ptr, "the pooled buffer, not a fresh one");
        let block = pool.take_to_overwrite(64 * 1024);
        assert_eq!(
            block.capacity(),
            64 * 1024,
            "a whole class is not rounded up"
        );
    }

    #[test]
    fn idle_capacity_is_bounded_and_small_buffers_are_not_pooled() {
        let pool = Arc::new(BufferPool::default());
        let frozen: Vec<Bytes> = (0..20).map(|_| pool.freeze(pool.take(1 << 20))).collect();
        drop(frozen);
        assert!(pool.idle_bytes() <= MAX_POOLED_BYTES);
        assert!(pool.idle_bytes() >= MAX_POOLED_BYTES - (2 << 20));
        let small = Arc::new(BufferPool::default());
        drop(small.freeze(small.take(100)));
        assert_eq!(small.idle_bytes(), 0);
    }
}
