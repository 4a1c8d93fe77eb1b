//! Recycled buffers for the messages [`FrameReader`](crate::FrameReader)
//! coalesces.
//!
//! A large message read into a freshly allocated buffer costs a page fault
//! per 4 KiB page, and returning the buffer to the system costs an unmap:
//! together more than the copy out of the socket itself. So a coalesced
//! message's buffer goes back to a small process-wide pool once the last
//! [`Bytes`] referring to it is dropped, and the next large message is read
//! into memory that is already mapped.

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

/// The most capacity the process-wide pool keeps, in bytes, summed over
/// its buffers.
pub const POOL_MAX_BYTES: usize = 16 << 20;

/// Buffers larger than this are not kept.
const POOL_MAX_BUFFER: usize = 8 << 20;

/// The pool coalesced messages use.
pub(crate) static POOL: BufferPool = BufferPool::new(POOL_MAX_BYTES, POOL_MAX_BUFFER);

/// A bounded stack of empty buffers.
#[derive(Debug)]
pub(crate) struct BufferPool {
    bufs: Mutex<Vec<Vec<u8>>>,
    max_bytes: usize,
    max_buffer: usize,
}

impl BufferPool {
    /// A pool keeping at most `max_bytes` of capacity, in buffers of at
    /// most `max_buffer` bytes.
    pub(crate) const fn new(max_bytes: usize, max_buffer: usize) -> BufferPool {
        BufferPool {
            bufs: Mutex::new(Vec::new()),
            max_bytes,
            max_buffer,
        }
    }

    /// An empty buffer with room for at least `min` bytes: a recycled one
    /// when there is one, else a new one of `preferred` bytes (at least
    /// `min`).
    pub(crate) fn take(&self, min: usize, preferred: usize) -> Vec<u8> {
        let recycled = self
            .bufs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match recycled {
            Some(mut buf) => {
                buf.reserve(min);
                buf
            }
            None => Vec::with_capacity(preferred.max(min)),
        }
    }

    /// Hands `buf`'s bytes out as [`Bytes`] that give the buffer back when
    /// the last clone is dropped.
    pub(crate) fn lend(&'static self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Recycled { buf, pool: self })
    }

    /// Keeps `buf`, emptied, if it is small enough and there is room.
    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() > self.max_buffer || buf.capacity() == 0 {
            return;
        }
        buf.clear();
        let mut bufs = self.bufs.lock().unwrap_or_else(PoisonError::into_inner);
        let held: usize = bufs.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= self.max_bytes {
            bufs.push(buf);
        }
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let bufs = self.bufs.lock().unwrap_or_else(PoisonError::into_inner);
        (bufs.len(), bufs.iter().map(Vec::capacity).sum())
    }
}

/// The owner of a coalesced message's bytes.
struct Recycled {
    buf: Vec<u8>,
    pool: &'static BufferPool,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_bytes: usize, max_buffer: usize) -> &'static BufferPool {
        Box::leak(Box::new(BufferPool::new(max_bytes, max_buffer)))
    }

    #[test]
    fn the_buffer_comes_back_when_the_last_view_is_dropped() {
        let pool = pool(1 << 20, 1 << 20);
        let mut buf = pool.take(100, 4096);
        assert!(buf.capacity() >= 4096);
        let addr = buf.as_ptr();
        buf.extend_from_slice(&[7; 100]);
        let bytes = pool.lend(buf);
        let view = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pool.held().0, 0, "a view is still alive");
        assert_eq!(&view[..], &[7; 10]);
        drop(view);
        assert_eq!(pool.held().0, 1);
        let again = pool.take(10, 10);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), addr, "the same memory is reused");
        assert_eq!(pool.held().0, 0);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_bounds() {
        let pool = pool(3 * 4096, 8192);
        for _ in 0..10 {
            drop(pool.lend(Vec::with_capacity(4096)));
        }
        assert_eq!(pool.held(), (3, 3 * 4096));
        let pool2 = self::pool(1 << 20, 8192);
        drop(pool2.lend(Vec::with_capacity(8193)));
        assert_eq!(pool2.held().0, 0, "too large a buffer is freed");
    }

    #[test]
    fn a_taken_buffer_has_the_room_asked_for() {
        let pool = pool(1 << 20, 1 << 20);
        drop(pool.lend(Vec::with_capacity(64)));
        let buf = pool.take(10_000, 0);
        assert!(buf.capacity() >= 10_000);
    }
}
