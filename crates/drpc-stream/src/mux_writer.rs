//! The write buffer shared by every stream of a connection (Go's
//! `drpcwire.MuxWriter`, multiplexing.md §3.10).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use drpc_wire::{Id, Kind, append_frame_header, effective_split_size};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sync::{Mutex, lock};
use crate::{ConnectionError, MemoryBudget};

/// The default number of buffered bytes above which senders of messages
/// wait for the writer task: 1 MiB, as the fork's bounded writer.
pub const DEFAULT_WRITER_HIGH_WATER: usize = 1 << 20;

/// Payloads at least this large are queued by reference
/// ([`MuxWriter::append_shared`]) rather than copied.
pub const ZERO_COPY_MIN: usize = 16 * 1024;

/// Initial capacity of the buffer small frames are encoded into.
const INITIAL_CAPACITY: usize = 4096;

/// Frames of all streams, appended whole under a short lock and drained by
/// one writer task.
///
/// * [`MuxWriter::append`] encodes frames straight into the buffer; it never
///   does I/O and never waits. Frames of one call stay contiguous, so a
///   packet is never interleaved with another stream's frames.
/// * [`MuxWriter::append_shared`] does the same for a large payload without
///   copying it: its frame headers are encoded, its data is queued as
///   [`Bytes`] slices, and the writer task hands all of it to one
///   vectored write.
/// * The writer task takes everything buffered with
///   [`MuxDrain::poll_take_batch`] in one step, so appends go on while it
///   writes: whatever piles up meanwhile leaves in the next single write.
/// * [`MuxDrain::stop`] is immediate: later appends fail, buffered bytes
///   are discarded, and the task's next `poll_take_batch` says so. It does
///   not wait for the task; the task's own exit is the completion signal.
/// * Backpressure: [`MuxWriter::poll_capacity`] is ready while fewer than
///   the high-water mark bytes wait. Message senders wait on it before
///   appending; control packets (CloseSend, Close, Error, Cancel) do not.
#[derive(Debug)]
pub struct MuxWriter {
    /// Whether the one [`MuxDrain`] was handed out.
    drained: AtomicBool,
    state: Mutex<State>,
    high_water: usize,
    /// What the connection holds for its peer; buffered bytes count until
    /// they are written.
    budget: Arc<MemoryBudget>,
    /// Shared by the writers of many connections: Message sends reserve
    /// their bytes in it before appending ([`MuxWriter::poll_reserve_send`]),
    /// until written.
    write_budget: Option<Arc<MemoryBudget>>,
}

#[derive(Debug)]
struct State {
    /// Frozen runs of bytes, in wire order, ahead of `tail`.
    queue: VecDeque<Bytes>,
    /// Small frames being encoded, after everything in `queue`.
    tail: BytesMut,
    /// Bytes in `queue` and `tail`.
    buffered: usize,
    stopped: Option<ConnectionError>,
    drain_waker: Option<Waker>,
    capacity_wakers: Vec<Waker>,
    /// Whether the writer task holds a taken batch it has not yet written.
    writing: bool,
    /// The size of that batch, charged to the budget until written.
    in_flight: usize,
    /// Bytes reserved in the write budget by Messages now buffered, and by
    /// those in the batch being written.
    reserved_buffered: usize,
    reserved_in_flight: usize,
    idle_wakers: Vec<Waker>,
}

impl State {
    /// The writer task's wait: ready once bytes are buffered, with the stop
    /// reason once stopped; otherwise the task's waker is kept for the next
    /// append.
    fn poll_buffered(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        if let Some(err) = &self.stopped {
            return Poll::Ready(Err(err.clone()));
        }
        if self.buffered == 0 {
            self.drain_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    /// Moves the encoded small frames behind the queue.
    fn freeze_tail(&mut self) {
        if !self.tail.is_empty() {
            let run = self.tail.split().freeze();
            self.queue.push_back(run);
        }
    }
}

/// What the writer task takes in one step: runs of bytes in wire order.
#[derive(Debug, Default)]
pub struct Batch {
    segments: VecDeque<Bytes>,
}

impl Batch {
    /// Whether nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The number of bytes left to write.
    pub fn len(&self) -> usize {
        self.segments.iter().map(Bytes::len).sum()
    }

    /// Fills `slices` with the next runs, for a vectored write; returns
    /// how many it filled.
    pub fn io_slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, segment) in slices.iter_mut().zip(&self.segments) {
            *slot = IoSlice::new(segment);
            n += 1;
        }
        n
    }

    /// Drops the first `written` bytes.
    pub fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.segments.front_mut() else {
                return;
            };
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.segments.pop_front();
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.segments.clear();
    }

    /// Copies everything into one buffer.
    pub fn copy_to(&self, out: &mut BytesMut) {
        for segment in &self.segments {
            out.extend_from_slice(segment);
        }
    }
}

impl MuxWriter {
    /// A writer whose senders wait while more than `high_water` bytes are
    /// buffered (0 means [`DEFAULT_WRITER_HIGH_WATER`]).
    pub fn new(high_water: usize) -> MuxWriter {
        MuxWriter::with_budget(high_water, Arc::new(MemoryBudget::unlimited()))
    }

    /// As [`MuxWriter::new`], charging buffered bytes, and everything the
    /// connection's streams hold, to `budget`.
    pub fn with_budget(high_water: usize, budget: Arc<MemoryBudget>) -> MuxWriter {
        MuxWriter::with_budgets(high_water, budget, None)
    }

    /// As [`MuxWriter::with_budget`], with Message sends also reserving
    /// their bytes in `write_budget` (shared by the writers of many
    /// connections) until they are written: however many peers stop
    /// reading, what waits to be written to them stays within it.
    pub fn with_budgets(
        high_water: usize,
        budget: Arc<MemoryBudget>,
        write_budget: Option<Arc<MemoryBudget>>,
    ) -> MuxWriter {
        MuxWriter {
            drained: AtomicBool::new(false),
            budget,
            write_budget,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                tail: BytesMut::with_capacity(INITIAL_CAPACITY),
                buffered: 0,
                stopped: None,
                drain_waker: None,
                capacity_wakers: Vec::new(),
                writing: false,
                in_flight: 0,
                reserved_buffered: 0,
                reserved_in_flight: 0,
                idle_wakers: Vec::new(),
            }),
            high_water: if high_water == 0 {
                DEFAULT_WRITER_HIGH_WATER
            } else {
                high_water
            },
        }
    }

    /// Appends whatever `encode` writes into the buffer, as one contiguous
    /// run, and wakes the writer task. Fails with the stop reason once the
    /// writer is stopped.
    pub fn append(&self, encode: impl FnOnce(&mut BytesMut)) -> Result<(), ConnectionError> {
        self.append_reserved(0, encode)
    }

    /// As [`MuxWriter::append`], for a Message that reserved `reserved`
    /// bytes of the write budget ([`MuxWriter::poll_reserve_send`]): the
    /// reservation is held until the bytes are written. On failure the
    /// caller still holds it.
    pub(crate) fn append_reserved(
        &self,
        reserved: usize,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<(), ConnectionError> {
        let waker = {
            let mut state = lock(&self.state);
            if let Some(err) = &state.stopped {
                return Err(err.clone());
            }
            let was_empty = state.buffered == 0;
            let before = state.tail.len();
            encode(&mut state.tail);
            let added = state.tail.len() - before;
            state.buffered += added;
            state.reserved_buffered += reserved;
            self.budget.charge(added);
            if was_empty {
                state.drain_waker.take()
            } else {
                None
            }
        };
        // Waking outside the lock keeps the critical section to the memcpy.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Appends a packet whose payload is queued by reference, not copied:
    /// each frame's header is encoded, and the frame's share of `data` is a
    /// slice of it. The frames stay contiguous, as with [`MuxWriter::append`].
    /// `split_size` as in [`drpc_wire::split_frames`] (splittable kinds).
    pub fn append_shared(
        &self,
        id: Id,
        kind: Kind,
        control: bool,
        data: &Bytes,
        split_size: usize,
    ) -> Result<(), ConnectionError> {
        self.append_parts(id, kind, control, std::slice::from_ref(data), split_size)
    }

    /// As [`MuxWriter::append_shared`], for a payload in several parts, in
    /// order: pieces of at least [`ZERO_COPY_MIN`] bytes are queued by
    /// reference, smaller ones copied next to the frame headers.
    pub fn append_parts(
        &self,
        id: Id,
        kind: Kind,
        control: bool,
        parts: &[Bytes],
        split_size: usize,
    ) -> Result<(), ConnectionError> {
        self.append_parts_reserved(0, id, kind, control, parts, split_size)
    }

    /// As [`MuxWriter::append_parts`], for a Message that reserved
    /// `reserved` bytes of the write budget (see
    /// [`MuxWriter::append_reserved`]).
    pub(crate) fn append_parts_reserved(
        &self,
        reserved: usize,
        id: Id,
        kind: Kind,
        control: bool,
        parts: &[Bytes],
        split_size: usize,
    ) -> Result<(), ConnectionError> {
        let limit = if kind.is_splittable() {
            effective_split_size(split_size)
        } else {
            usize::MAX
        };
        let total: usize = parts.iter().map(Bytes::len).sum();
        let waker = {
            let mut state = lock(&self.state);
            if let Some(err) = &state.stopped {
                return Err(err.clone());
            }
            let was_empty = state.buffered == 0;
            let buffered_before = state.buffered;
            // Where the next data byte comes from: a part, and an offset in it.
            let (mut part, mut at) = (0, 0);
            let mut sent: usize = 0;
            loop {
                let frame_len = (total - sent).min(limit);
                let done = sent + frame_len == total;
                let before = state.tail.len();
                append_frame_header(&mut state.tail, id, kind, done, control, frame_len);
                state.buffered += state.tail.len() - before + frame_len;
                let mut left = frame_len;
                while left > 0 {
                    let Some(bytes) = parts.get(part) else {
                        break;
                    };
                    let n = left.min(bytes.len() - at);
                    if n >= ZERO_COPY_MIN {
                        state.freeze_tail();
                        state.queue.push_back(bytes.slice(at..at + n));
                    } else {
                        state.tail.extend_from_slice(&bytes[at..at + n]);
                    }
                    left -= n;
                    at += n;
                    if at == bytes.len() {
                        part += 1;
                        at = 0;
                    }
                }
                sent += frame_len;
                if done {
                    break;
                }
            }
            self.budget.charge(state.buffered - buffered_before);
            state.reserved_buffered += reserved;
            if was_empty {
                state.drain_waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Ready when fewer than the high-water mark bytes are buffered, or with
    /// the stop reason once stopped.
    pub fn poll_capacity(&self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        let mut state = lock(&self.state);
        if let Some(err) = &state.stopped {
            return Poll::Ready(Err(err.clone()));
        }
        if state.buffered < self.high_water {
            return Poll::Ready(Ok(()));
        }
        if !state
            .capacity_wakers
            .iter()
            .any(|w| w.will_wake(cx.waker()))
        {
            state.capacity_wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Reserves `len` bytes of the shared write budget for a Message about
    /// to be appended (ready at once without one); the append then holds
    /// it until written, or [`MuxWriter::unreserve`] gives it back.
    pub fn poll_reserve_send(&self, len: usize, cx: &mut Context<'_>) -> Poll<()> {
        match &self.write_budget {
            Some(w) => w.poll_reserve(len, cx),
            None => Poll::Ready(()),
        }
    }

    /// As [`MuxWriter::poll_reserve_send`], without waiting: whether `len`
    /// bytes were reserved.
    pub fn try_reserve_send(&self, len: usize) -> bool {
        self.write_budget
            .as_ref()
            .is_none_or(|w| w.try_reserve(len))
    }

    /// Gives back a reservation whose Message was not appended.
    pub fn unreserve(&self, len: usize) {
        if let Some(w) = &self.write_budget {
            w.release(len);
        }
    }

    /// The writer task's side: ready once bytes are buffered (or with the
    /// stop reason), without taking them.
    pub(crate) fn poll_ready_to_take_impl(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ConnectionError>> {
        lock(&self.state).poll_buffered(cx)
    }

    /// The writer task's side: once bytes are buffered, moves all of them
    /// into `batch` (which must be empty) and returns `Ready(Ok(()))`;
    /// returns the stop reason once stopped, discarding what was buffered.
    pub(crate) fn poll_take_batch_impl(
        &self,
        cx: &mut Context<'_>,
        batch: &mut Batch,
    ) -> Poll<Result<(), ConnectionError>> {
        let wakers = {
            let mut state = lock(&self.state);
            match state.poll_buffered(cx) {
                Poll::Ready(Ok(())) => {}
                waiting_or_stopped => return waiting_or_stopped,
            }
            debug_assert!(batch.is_empty());
            state.freeze_tail();
            std::mem::swap(&mut state.queue, &mut batch.segments);
            state.in_flight += state.buffered;
            state.reserved_in_flight += std::mem::take(&mut state.reserved_buffered);
            state.buffered = 0;
            state.writing = true;
            std::mem::take(&mut state.capacity_wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
        Poll::Ready(Ok(()))
    }

    /// As [`MuxDrain::poll_take_batch`], copying the batch into `spare`
    /// (which must be empty): for tests and simple drivers.
    pub(crate) fn poll_take_impl(
        &self,
        cx: &mut Context<'_>,
        spare: &mut BytesMut,
    ) -> Poll<Result<(), ConnectionError>> {
        let mut batch = Batch::default();
        let taken = self.poll_take_batch_impl(cx, &mut batch);
        batch.copy_to(spare);
        taken
    }

    /// Stops the writer: later appends fail with `err`, buffered bytes are
    /// dropped, and every waiter wakes. Returns `false` (and changes nothing)
    /// if it was already stopped: the first reason wins.
    pub(crate) fn stop_impl(&self, err: ConnectionError) -> bool {
        let (drain, capacity) = {
            let mut state = lock(&self.state);
            if state.stopped.is_some() {
                return false;
            }
            state.stopped = Some(err);
            state.queue = VecDeque::new();
            state.tail = BytesMut::new();
            self.budget
                .release(state.buffered + std::mem::take(&mut state.in_flight));
            if let Some(w) = &self.write_budget {
                w.release(
                    std::mem::take(&mut state.reserved_buffered)
                        + std::mem::take(&mut state.reserved_in_flight),
                );
            }
            state.buffered = 0;
            state.writing = false;
            let mut wakers = std::mem::take(&mut state.capacity_wakers);
            wakers.append(&mut state.idle_wakers);
            (state.drain_waker.take(), wakers)
        };
        drain.into_iter().chain(capacity).for_each(Waker::wake);
        true
    }

    /// The writer task's side: the batch taken by the last
    /// [`MuxDrain::poll_take_batch`] is now written to the transport.
    pub(crate) fn batch_written_impl(&self) {
        let wakers = {
            let mut state = lock(&self.state);
            state.writing = false;
            self.budget.release(std::mem::take(&mut state.in_flight));
            if let Some(w) = &self.write_budget {
                w.release(std::mem::take(&mut state.reserved_in_flight));
            }
            if state.buffered == 0 {
                std::mem::take(&mut state.idle_wakers)
            } else {
                Vec::new()
            }
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Ready once everything appended so far has been written to the
    /// transport (nothing buffered, no batch in flight), or with the stop
    /// reason once stopped. This is what a graceful close waits for.
    pub fn poll_idle(&self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        let mut state = lock(&self.state);
        if let Some(err) = &state.stopped {
            return Poll::Ready(Err(err.clone()));
        }
        if state.buffered == 0 && !state.writing {
            return Poll::Ready(Ok(()));
        }
        if !state.idle_wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.idle_wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The stop reason, once stopped.
    pub fn stop_reason(&self) -> Option<ConnectionError> {
        lock(&self.state).stopped.clone()
    }

    /// The number of bytes waiting for the writer task.
    pub fn buffered(&self) -> usize {
        lock(&self.state).buffered
    }

    /// The high-water mark.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// The writer task's side, handed out once: whoever drives the
    /// connection takes it when it creates the writer, so that nobody else
    /// (an application holding a stream) can take its batches or stop it.
    /// `None` after the first call.
    pub fn drain(self: &Arc<Self>) -> Option<MuxDrain> {
        if self.drained.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(MuxDrain {
            writer: self.clone(),
        })
    }

    /// The budget of the connection this writer serves.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }
}

/// The writer task's side of a [`MuxWriter`] ([`MuxWriter::drain`]): takes
/// the buffered frames in batches and stops the writer.
#[derive(Debug)]
pub struct MuxDrain {
    writer: Arc<MuxWriter>,
}

impl MuxDrain {
    /// Ready once bytes are buffered (or with the stop reason), without
    /// taking them.
    pub fn poll_ready_to_take(&self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        self.writer.poll_ready_to_take_impl(cx)
    }

    /// Once bytes are buffered, moves all of them into `batch` (which must
    /// be empty) and returns `Ready(Ok(()))`; returns the stop reason once
    /// stopped, discarding what was buffered.
    pub fn poll_take_batch(
        &self,
        cx: &mut Context<'_>,
        batch: &mut Batch,
    ) -> Poll<Result<(), ConnectionError>> {
        self.writer.poll_take_batch_impl(cx, batch)
    }

    /// As [`MuxDrain::poll_take_batch`], copying the batch into `spare`
    /// (which must be empty): for simple drivers.
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        spare: &mut BytesMut,
    ) -> Poll<Result<(), ConnectionError>> {
        self.writer.poll_take_impl(cx, spare)
    }

    /// The batch taken last is now written to the transport.
    pub fn batch_written(&self) {
        self.writer.batch_written_impl()
    }

    /// Stops the writer: later appends fail with `err`, buffered bytes are
    /// dropped, and every waiter wakes. Returns `false` (and changes
    /// nothing) if it was already stopped: the first reason wins.
    pub fn stop(&self, err: ConnectionError) -> bool {
        self.writer.stop_impl(err)
    }

    /// The writer this drains.
    pub fn writer(&self) -> &Arc<MuxWriter> {
        &self.writer
    }
}

/// The drain side straight on the writer, for this crate's own tests and
/// those of crates that enable `test-util`.
#[cfg(any(test, feature = "test-util"))]
impl MuxWriter {
    /// [`MuxDrain::poll_ready_to_take`].
    pub fn poll_ready_to_take(&self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        self.poll_ready_to_take_impl(cx)
    }

    /// [`MuxDrain::poll_take_batch`].
    pub fn poll_take_batch(
        &self,
        cx: &mut Context<'_>,
        batch: &mut Batch,
    ) -> Poll<Result<(), ConnectionError>> {
        self.poll_take_batch_impl(cx, batch)
    }

    /// [`MuxDrain::poll_take`].
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        spare: &mut BytesMut,
    ) -> Poll<Result<(), ConnectionError>> {
        self.poll_take_impl(cx, spare)
    }

    /// [`MuxDrain::batch_written`].
    pub fn batch_written(&self) {
        self.batch_written_impl()
    }

    /// [`MuxDrain::stop`].
    pub fn stop(&self, err: ConnectionError) -> bool {
        self.stop_impl(err)
    }
}

#[cfg(all(test, not(drpc_loom)))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Counter {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn waker() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter::default());
        (c.clone(), Waker::from(c))
    }

    fn take(w: &MuxWriter, waker: &Waker) -> Poll<Result<BytesMut, ConnectionError>> {
        let mut spare = BytesMut::new();
        w.poll_take(&mut Context::from_waker(waker), &mut spare)
            .map(|r| r.map(|()| spare))
    }

    fn capacity(w: &MuxWriter, waker: &Waker) -> Poll<Result<(), ConnectionError>> {
        w.poll_capacity(&mut Context::from_waker(waker))
    }

    fn idle(w: &MuxWriter, waker: &Waker) -> Poll<Result<(), ConnectionError>> {
        w.poll_idle(&mut Context::from_waker(waker))
    }

    #[test]
    fn high_water_zero_means_default() {
        assert_eq!(MuxWriter::new(0).high_water(), DEFAULT_WRITER_HIGH_WATER);
        assert_eq!(MuxWriter::new(7).high_water(), 7);
    }

    #[test]
    fn append_wakes_the_writer_task_once_per_batch() {
        let w = MuxWriter::new(0);
        let (count, wk) = waker();
        assert!(take(&w, &wk).is_pending());
        w.append(|b| b.extend_from_slice(b"ab")).expect("append");
        assert_eq!(count.count(), 1, "empty -> non-empty wakes the task");
        w.append(|b| b.extend_from_slice(b"cd")).expect("append");
        assert_eq!(count.count(), 1, "already woken: no second wake-up");
        match take(&w, &wk) {
            Poll::Ready(Ok(batch)) => assert_eq!(&batch[..], b"abcd"),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.buffered(), 0);
        assert!(take(&w, &wk).is_pending(), "nothing left");
        w.append(|b| b.extend_from_slice(b"e")).expect("append");
        assert_eq!(count.count(), 2);
        // An append that writes nothing leaves the buffer empty.
        let w = MuxWriter::new(0);
        assert!(take(&w, &wk).is_pending());
        w.append(|_| {}).expect("append");
        assert!(take(&w, &wk).is_pending());
    }

    #[test]
    fn capacity_waiters_wake_on_take_and_are_registered_once() {
        let w = MuxWriter::new(4);
        let (c1, w1) = waker();
        let (c2, w2) = waker();
        w.append(|b| b.extend_from_slice(b"abc")).expect("append");
        assert!(
            matches!(capacity(&w, &w1), Poll::Ready(Ok(()))),
            "below the mark"
        );
        w.append(|b| b.extend_from_slice(b"d")).expect("append");
        assert!(capacity(&w, &w1).is_pending(), "at the mark");
        assert!(
            capacity(&w, &w1).is_pending(),
            "polled again by the same task"
        );
        assert!(capacity(&w, &w2).is_pending());
        let (_, drain) = waker();
        assert!(take(&w, &drain).is_ready());
        assert_eq!(
            (c1.count(), c2.count()),
            (1, 1),
            "each waiter woken exactly once"
        );
        assert!(matches!(capacity(&w, &w1), Poll::Ready(Ok(()))));
    }

    #[test]
    fn stop_wakes_waiters_and_discards() {
        let w = MuxWriter::new(1);
        w.append(|b| b.extend_from_slice(b"xy")).expect("append");
        let (cap, cw) = waker();
        assert!(capacity(&w, &cw).is_pending());
        let (idl, iw) = waker();
        assert!(idle(&w, &iw).is_pending());
        assert!(w.stop(ConnectionError::Closed));
        assert_eq!(w.buffered(), 0, "buffered bytes discarded");
        assert_eq!(cap.count(), 1, "capacity waiter woken by stop");
        assert_eq!(idl.count(), 1, "idle waiter woken by stop");
        let (_, dw) = waker();
        assert!(matches!(
            take(&w, &dw),
            Poll::Ready(Err(ConnectionError::Closed))
        ));
        assert!(matches!(
            capacity(&w, &cw),
            Poll::Ready(Err(ConnectionError::Closed))
        ));
        assert!(matches!(
            idle(&w, &iw),
            Poll::Ready(Err(ConnectionError::Closed))
        ));
        assert!(matches!(w.append(|_| {}), Err(ConnectionError::Closed)));
        assert!(!w.stop(ConnectionError::Eof), "idempotent");
        assert!(
            matches!(w.stop_reason(), Some(ConnectionError::Closed)),
            "first reason wins"
        );
    }

    #[test]
    fn stop_wakes_a_waiting_writer_task() {
        let w = MuxWriter::new(0);
        let (drain, dw) = waker();
        assert!(take(&w, &dw).is_pending());
        assert!(w.stop(ConnectionError::Eof));
        assert_eq!(drain.count(), 1);
        assert!(matches!(
            take(&w, &dw),
            Poll::Ready(Err(ConnectionError::Eof))
        ));
    }

    #[test]
    fn idle_waits_for_the_batch_in_flight() {
        let w = MuxWriter::new(0);
        let (count, wk) = waker();
        assert!(
            matches!(idle(&w, &wk), Poll::Ready(Ok(()))),
            "nothing appended"
        );
        w.append(|b| b.extend_from_slice(b"a")).expect("append");
        assert!(idle(&w, &wk).is_pending(), "bytes buffered");
        let (_, drain) = waker();
        assert!(take(&w, &drain).is_ready());
        assert!(idle(&w, &wk).is_pending(), "batch taken but not written");
        w.batch_written();
        assert_eq!(count.count(), 1);
        assert!(matches!(idle(&w, &wk), Poll::Ready(Ok(()))));
        // Bytes appended while a batch is in flight keep it busy.
        w.append(|b| b.extend_from_slice(b"b")).expect("append");
        assert!(take(&w, &drain).is_ready());
        w.append(|b| b.extend_from_slice(b"c")).expect("append");
        assert!(idle(&w, &wk).is_pending());
        w.batch_written();
        assert!(idle(&w, &wk).is_pending(), "the next batch waits");
        assert!(take(&w, &drain).is_ready());
        w.batch_written();
        assert!(matches!(idle(&w, &wk), Poll::Ready(Ok(()))));
    }

    /// Decodes `wire` into frames and assembles them into one packet.
    fn one_packet(wire: &[u8]) -> (usize, drpc_wire::Packet) {
        let mut buf = BytesMut::from(wire);
        let decoder = drpc_wire::FrameDecoder::new(4 << 20);
        let mut assembler = drpc_wire::PacketAssembler::new(4 << 20);
        let mut frames = 0;
        loop {
            let frame = decoder
                .decode(&mut buf)
                .expect("valid frames")
                .expect("a whole frame");
            frames += 1;
            if let Some(packet) = assembler.push(frame).expect("assembles") {
                assert!(buf.is_empty(), "one packet only");
                return (frames, packet);
            }
        }
    }

    #[test]
    fn parts_are_framed_like_their_concatenation_and_large_ones_are_not_copied() {
        let big = Bytes::from(vec![0xab; 40_000]);
        let layouts: Vec<Vec<Bytes>> = vec![
            vec![],
            vec![Bytes::from_static(b"head")],
            vec![Bytes::from_static(b"head"), big.clone()],
            vec![
                Bytes::from_static(b"\x0a\x05"),
                big.clone(),
                Bytes::from(vec![7; 100]),
                Bytes::from(vec![9; 20_000]),
                Bytes::new(),
            ],
            vec![big.clone(), big.clone()],
        ];
        for parts in &layouts {
            let whole: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            for split in [0, 1, 7, 16_384, 30_000, 1 << 20] {
                let w = MuxWriter::new(0);
                w.append_parts(Id::new(3, 2), Kind::MESSAGE, false, parts, split)
                    .expect("append");
                let buffered = w.buffered();
                let mut batch = Batch::default();
                let (_, wk) = waker();
                assert!(matches!(
                    w.poll_take_batch(&mut Context::from_waker(&wk), &mut batch),
                    Poll::Ready(Ok(()))
                ));
                assert_eq!(batch.len(), buffered, "the accounting matches the bytes");
                let mut wire = BytesMut::new();
                batch.copy_to(&mut wire);
                let mut expected = BytesMut::new();
                drpc_wire::append_packet(
                    &mut expected,
                    Id::new(3, 2),
                    Kind::MESSAGE,
                    false,
                    &whole,
                    split,
                );
                assert_eq!(wire, expected, "split {split}, {} parts", parts.len());
                let (_, packet) = one_packet(&wire);
                assert_eq!(packet.data, whole);
                // A frame's share of the large part, when it is large
                // itself, is the part's own memory.
                if parts.contains(&big) && split == 0 {
                    assert!(
                        batch
                            .segments
                            .iter()
                            .any(|s| s.len() >= ZERO_COPY_MIN && s.as_ptr() == big.as_ptr()),
                        "the large part is queued by reference"
                    );
                }
            }
        }
    }
}
