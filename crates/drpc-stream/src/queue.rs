//! The per-stream receive queue and its accounting.

use std::collections::VecDeque;

use bytes::Bytes;

/// The default maximum number of messages queued per stream (the fork's
/// ring size).
pub const DEFAULT_RECV_QUEUE_MESSAGES: usize = 256;

/// The default maximum number of bytes queued per stream. A message larger
/// than this is still admitted when the queue is empty, so any message the
/// connection accepts can be delivered.
pub const DEFAULT_RECV_QUEUE_BYTES: usize = 8 << 20;

/// Messages received on a stream and not yet taken by the application.
///
/// This is the single place where received bytes are accounted: admission
/// ([`RecvQueue::try_push`], [`RecvQueue::push`]) and release
/// ([`RecvQueue::pop`]). The bounds apply to streams without flow control
/// that share their connection; see the crate docs for what happens when
/// they are reached. Flow control admits by its own cap instead, and
/// grants credit as bytes are released.
#[derive(Debug)]
pub(crate) struct RecvQueue {
    /// The oldest message, when it is the only one or the first of several:
    /// a unary call's one message is queued without allocating.
    front: Option<Bytes>,
    /// The messages after `front`, oldest first.
    messages: VecDeque<Bytes>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

impl RecvQueue {
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> RecvQueue {
        RecvQueue {
            front: None,
            messages: VecDeque::new(),
            bytes: 0,
            max_messages: max_messages.max(1),
            max_bytes,
        }
    }

    /// Queues `data` whatever the bounds: for a stream the connection lets
    /// exceed them (the only active one) or whose flow control decides.
    pub(crate) fn push(&mut self, data: Bytes) {
        self.bytes += data.len();
        if self.len() == 0 {
            self.front = Some(data);
        } else {
            self.messages.push_back(data);
        }
    }

    /// The byte bound.
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Queues `data` if there is room, else gives it back.
    pub(crate) fn try_push(&mut self, data: Bytes) -> Result<(), Bytes> {
        let len = self.len();
        let fits = len == 0
            || (len < self.max_messages && self.bytes.saturating_add(data.len()) <= self.max_bytes);
        if !fits {
            return Err(data);
        }
        self.bytes += data.len();
        // `front` is only filled when nothing is queued, so it is always
        // older than everything in `messages`.
        if len == 0 {
            self.front = Some(data);
        } else {
            self.messages.push_back(data);
        }
        Ok(())
    }

    /// Takes the oldest message.
    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        let data = self.front.take().or_else(|| self.messages.pop_front())?;
        self.bytes -= data.len();
        Some(data)
    }

    /// Whether more is queued than the bounds allow (possible only through
    /// [`RecvQueue::push`]).
    pub(crate) fn is_over_bounds(&self) -> bool {
        self.len() > self.max_messages || (self.len() > 1 && self.bytes > self.max_bytes)
    }

    /// Drops the newest messages until the queue is within its bounds
    /// (always keeping the oldest one).
    pub(crate) fn truncate_to_bounds(&mut self) {
        while self.is_over_bounds() {
            match self.messages.pop_back() {
                Some(data) => self.bytes -= data.len(),
                None => break,
            }
        }
    }

    /// Drops everything queued.
    pub(crate) fn clear(&mut self) {
        self.front = None;
        self.messages.clear();
        self.bytes = 0;
    }

    /// The number of messages queued.
    pub(crate) fn len(&self) -> usize {
        usize::from(self.front.is_some()) + self.messages.len()
    }

    /// The number of bytes queued.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_messages_and_bytes_but_admits_one_large() {
        let mut q = RecvQueue::new(2, 10);
        assert!(
            q.try_push(Bytes::from(vec![0; 100])).is_ok(),
            "empty queue admits any size"
        );
        assert!(
            q.try_push(Bytes::from_static(b"x")).is_err(),
            "over the byte bound"
        );
        assert_eq!(q.pop().map(|b| b.len()), Some(100));
        assert!(q.try_push(Bytes::from_static(b"abcd")).is_ok());
        assert!(q.try_push(Bytes::from_static(b"efgh")).is_ok());
        assert!(
            q.try_push(Bytes::from_static(b"i")).is_err(),
            "over the message bound"
        );
        assert_eq!((q.len(), q.bytes()), (2, 8));
        q.clear();
        assert_eq!((q.len(), q.bytes()), (0, 0));
    }

    #[test]
    fn keeps_arrival_order_across_the_inline_slot() {
        let mut q = RecvQueue::new(8, 1 << 20);
        let mut expected = std::collections::VecDeque::new();
        // Interleavings that empty the queue, refill it while the inline
        // slot is taken, and drain it while later messages wait behind.
        for (i, op) in b"pppoopoppooopppoooo".iter().enumerate() {
            if *op == b'p' {
                let data = Bytes::from(vec![i as u8; i + 1]);
                expected.push_back(data.clone());
                assert!(q.try_push(data).is_ok());
            } else {
                assert_eq!(q.pop(), expected.pop_front(), "pop at step {i}");
            }
            assert_eq!(q.len(), expected.len());
            assert_eq!(q.bytes(), expected.iter().map(Bytes::len).sum::<usize>());
        }
        assert_eq!(q.pop(), None);
    }
}
