//! Thin tokio adapters over the sans-IO core: a frame reader and a buffered
//! frame writer.

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::packet::append_packet;
use crate::pool::POOL;
use crate::{Frame, FrameDecoder, FrameHead, Id, Kind, WireError};

/// How much free space the reader keeps in its buffer before each read.
const READ_RESERVE: usize = 64 * 1024;

/// How much it allocates at once while a large frame is being read.
const READ_ALLOCATION: usize = 512 * 1024;

/// The writer's default flush threshold: 4096 bytes, as Go's
/// `WriterBufferSize` 0.
pub const DEFAULT_WRITER_BUFFER_SIZE: usize = 4096;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The bytes broke the protocol; the connection must end.
    #[error(transparent)]
    Protocol(#[from] WireError),
    /// The transport failed, or closed in the middle of a frame
    /// ([`io::ErrorKind::UnexpectedEof`]).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads frames from an [`AsyncRead`] into one growing [`BytesMut`],
/// handing each frame's data out as a [`Bytes`](bytes::Bytes) view of that
/// buffer: no copy and no allocation per frame, one read call for as many
/// frames as the transport has ready.
///
/// A reader made with [`FrameReader::coalescing`] also joins the frames of
/// a large message into one frame, reading their data straight from the
/// transport into a buffer of its own (see there).
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: FrameDecoder,
    /// Joins start at Message frames of at least this many data bytes;
    /// `usize::MAX` when the reader does not coalesce.
    coalesce_min: usize,
    merge: Option<Merge>,
    /// The transport ended inside a frame after the complete frames of a
    /// join were handed out: the next call reports it.
    ended_in_frame: bool,
    /// Joins are paused ([`FrameReader::pause_joins`]).
    joins_paused: bool,
}

/// A large message's frames being joined into one.
#[derive(Debug)]
struct Merge {
    id: Id,
    kind: Kind,
    /// Whether the last frame joined so far ends the packet.
    done: bool,
    /// The data of the frames joined so far, the last one possibly still
    /// incomplete; a buffer from the pool.
    data: Vec<u8>,
    /// Data bytes of the last joined frame not read yet.
    frame_left: usize,
    /// The length of `data` made of the frames before the last one joined,
    /// which are complete; `None` while the first frame is the last.
    complete: Option<usize>,
}

impl Merge {
    /// Whether a frame with header `head` continues this packet and may
    /// join it: the same id and kind, no control bit, and a total within
    /// `max_packet_size`. A frame that would overflow is left alone, so that
    /// the assembler sees it and reports the overflow exactly as it would
    /// without coalescing.
    fn accepts(&self, head: &FrameHead, max_packet_size: usize) -> bool {
        !self.done
            && head.id == self.id
            && head.kind == self.kind
            && !head.control
            && (self.data.len() as u64).saturating_add(head.data_len) <= max_packet_size as u64
    }

    fn into_frame(self) -> Frame {
        Frame {
            id: self.id,
            kind: self.kind,
            done: self.done,
            control: false,
            data: POOL.lend(self.data),
        }
    }
}

/// What the next [`FrameReader::read_frame`] may return
/// ([`FrameReader::next_frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextFrame {
    /// The frame's data length (the maximum packet size while a join is
    /// under way).
    pub len: u64,
    /// Whether it joins frames: it may then return up to the maximum
    /// packet size.
    pub joins: bool,
}

/// Message frames at least this large start a coalesced packet.
pub const COALESCE_MIN: usize = 16 * 1024;

/// The most a coalesced packet's buffer is given up front: enough for
/// common large messages without regrowing, and only the pages written are
/// ever touched.
const COALESCE_INITIAL_CAPACITY: usize = 4 << 20;

/// How much is read past a coalesced frame to learn the next frame's
/// header: a little more than the longest header, so that what is copied
/// out of the read buffer stays small.
const HEADER_PROBE: usize = 64;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader refusing packets larger than `max_packet_size` bytes, that
    /// returns frames exactly as they were on the wire.
    pub fn new(inner: R, max_packet_size: usize) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(READ_RESERVE),
            decoder: FrameDecoder::new(max_packet_size),
            coalesce_min: usize::MAX,
            merge: None,
            ended_in_frame: false,
            joins_paused: false,
        }
    }

    /// A reader like [`FrameReader::new`] that joins consecutive frames of
    /// one large message.
    ///
    /// A Message frame of at least [`COALESCE_MIN`] data bytes that does not
    /// end its packet starts a join: its data, and that of the frames that
    /// follow it with the same id and kind and no control bit, is read from
    /// the transport directly into one buffer, and returned as one frame
    /// whose `done` is the last joined frame's. A joined frame never exceeds
    /// the maximum packet size. The frames of a packet that interleave with
    /// other frames are returned as they come.
    ///
    /// Assembling the joined frame gives the same packet, or the same
    /// error, as assembling the frames it joins, but the packet's data is
    /// copied once, by the kernel, instead of twice. The price is a small
    /// extra read per frame, to learn the next frame's header without
    /// reading its data into the shared buffer.
    pub fn coalescing(inner: R, max_packet_size: usize) -> FrameReader<R> {
        FrameReader {
            coalesce_min: COALESCE_MIN,
            ..FrameReader::new(inner, max_packet_size)
        }
    }

    /// Sets the smallest frame that starts a join ([`COALESCE_MIN`] by
    /// default): joining small frames saves little copying and costs a
    /// read per frame. Has no effect on a reader made with
    /// [`FrameReader::new`].
    pub fn coalesce_min(mut self, min_data_len: usize) -> FrameReader<R> {
        if self.coalesce_min != usize::MAX {
            self.coalesce_min = min_data_len;
        }
        self
    }

    /// Stops (`true`) or resumes starting joins: while paused, frames are
    /// returned one by one, each within its own announced length. A
    /// connection pauses them when its memory budget has room for the next
    /// frame but not for a whole joined packet.
    pub fn pause_joins(&mut self, paused: bool) {
        self.joins_paused = paused;
    }

    /// Waits until the next frame's header has arrived, and says how much
    /// the next [`FrameReader::read_frame`] may return: the frame's data
    /// length, and whether it joins frames (then it may return up to the
    /// maximum packet size). `Ok(None)` when the transport ended cleanly; a
    /// malformed header, or an end inside one, is left for `read_frame` to
    /// report, as a frame of length 0.
    ///
    /// A connection uses it to reserve memory for a frame before reading
    /// its data. Cancel safe, like `read_frame`.
    pub async fn next_frame(&mut self) -> Result<Option<NextFrame>, ReadError> {
        let max = self.decoder.max_packet_size() as u64;
        loop {
            if self.ended_in_frame {
                return Ok(Some(NextFrame {
                    len: 0,
                    joins: false,
                }));
            }
            if self.merge.is_some() {
                return Ok(Some(NextFrame {
                    len: max,
                    joins: true,
                }));
            }
            match FrameHead::parse(&self.buf) {
                Ok(Some(head)) => {
                    return Ok(Some(NextFrame {
                        len: head.data_len,
                        joins: self.starts_merge(&head),
                    }));
                }
                Err(_) => {
                    return Ok(Some(NextFrame {
                        len: 0,
                        joins: false,
                    }));
                }
                Ok(None) => {}
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                // Inside a header: `read_frame` reports it.
                self.ended_in_frame = true;
            }
        }
    }

    /// Reads more from the transport into the buffer, growing it first
    /// when it has little room left; returns how much was read (0 at the
    /// end).
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.is_empty() && self.buf.capacity() > READ_ALLOCATION {
            // Idle again after large messages: give the memory back.
            self.buf = BytesMut::with_capacity(READ_RESERVE);
        }
        if self.buf.capacity() - self.buf.len() < READ_RESERVE {
            // Frames still in use pin the old allocation, so this copies
            // the bytes of the frame being read into a new one; large
            // allocations make that copy rare while messages are big.
            let more = if self.buf.len() >= READ_RESERVE {
                READ_ALLOCATION
            } else {
                READ_RESERVE
            };
            self.buf.reserve(more);
        }
        self.inner.read_buf(&mut self.buf).await
    }

    /// Reads the next frame. `Ok(None)` means the transport ended cleanly
    /// between two frames.
    ///
    /// Cancel safe: dropping the future loses nothing; the next call goes
    /// on where it stopped.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        if self.ended_in_frame {
            return Err(eof_in_frame().into());
        }
        loop {
            if self.merge.is_some() {
                if let Some(frame) = self.continue_merge().await? {
                    return Ok(Some(frame));
                }
                continue;
            }
            if let Some(head) = FrameHead::parse(&self.buf)? {
                if self.starts_merge(&head) {
                    self.start_merge(head);
                    continue;
                }
                if let Some(frame) = self.decoder.decode_after_head(&mut self.buf, head)? {
                    return Ok(Some(frame));
                }
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(eof_in_frame().into())
                };
            }
        }
    }

    /// The next frame, if the read buffer already holds all of it and
    /// `accept` takes its header; never reads from the transport, never
    /// starts a join, and leaves anything else (an incomplete or malformed
    /// header, an oversized frame) for [`FrameReader::read_frame`] to
    /// return or report.
    ///
    /// A connection uses it to route a run of one stream's frames that
    /// arrived together in one step: one lookup, one lock and one wake-up
    /// for all of them instead of one each.
    pub fn buffered_frame_if(&mut self, accept: impl FnOnce(&FrameHead) -> bool) -> Option<Frame> {
        let head = self.buffered_head()?;
        if !accept(&head) {
            return None;
        }
        // The whole frame is buffered, so its length fits a usize; the
        // decoder still applies the size limit.
        self.decoder
            .decode_after_head(&mut self.buf, head)
            .ok()
            .flatten()
    }

    /// The header of the next frame if the read buffer holds all of that
    /// frame and [`FrameReader::buffered_frame_if`] could return it.
    pub fn buffered_head(&self) -> Option<FrameHead> {
        if self.ended_in_frame || self.merge.is_some() {
            return None;
        }
        let head = FrameHead::parse(&self.buf).ok()??;
        let total = head.header_len as u64 + head.data_len;
        (total <= self.buf.len() as u64 && !self.starts_merge(&head)).then_some(head)
    }

    /// Whether a frame with header `head` starts a join: a large Message
    /// frame that does not end its packet, on a coalescing reader.
    fn starts_merge(&self, head: &FrameHead) -> bool {
        self.coalesce_min != usize::MAX
            && !self.joins_paused
            && head.kind == Kind::MESSAGE
            && !head.done
            && !head.control
            && head.data_len >= self.coalesce_min as u64
            && head.data_len <= self.decoder.max_packet_size() as u64
    }

    /// Starts joining at the frame whose header `head` begins the buffer.
    fn start_merge(&mut self, head: FrameHead) {
        let frame_left = head.data_len as usize;
        self.buf.advance(head.header_len);
        let max = self.decoder.max_packet_size();
        let capacity = max.min(COALESCE_INITIAL_CAPACITY).max(frame_left);
        self.merge = Some(Merge {
            id: head.id,
            kind: head.kind,
            done: false,
            data: POOL.take(frame_left, capacity),
            frame_left,
            complete: None,
        });
    }

    /// One step of a join: returns the joined frame once it is complete.
    async fn continue_merge(&mut self) -> Result<Option<Frame>, ReadError> {
        let max = self.decoder.max_packet_size();
        let Some(merge) = self.merge.as_mut() else {
            return Ok(None);
        };
        if merge.frame_left > 0 {
            // Whatever the read buffer already holds first, then straight
            // from the transport.
            let buffered = merge.frame_left.min(self.buf.len());
            if buffered > 0 {
                merge.data.extend_from_slice(&self.buf[..buffered]);
                self.buf.advance(buffered);
                merge.frame_left -= buffered;
                return Ok(None);
            }
            merge.data.reserve(merge.frame_left);
            let limit = merge.frame_left;
            let n = self
                .inner
                .read_buf(&mut (&mut merge.data).limit(limit))
                .await?;
            if n == 0 {
                // Frames joined before this one were complete, and are
                // handed out as they would have been unjoined.
                self.ended_in_frame = true;
                let Some((mut merge, complete)) = self
                    .merge
                    .take()
                    .and_then(|m| m.complete.map(|len| (m, len)))
                else {
                    return Err(eof_in_frame().into());
                };
                merge.data.truncate(complete);
                merge.done = false;
                return Ok(Some(merge.into_frame()));
            }
            merge.frame_left -= n;
            return Ok(None);
        }
        if merge.done {
            return Ok(self.merge.take().map(Merge::into_frame));
        }
        match FrameHead::parse(&self.buf) {
            // A malformed header ends the join; the next call reports it.
            Err(_) => Ok(self.merge.take().map(Merge::into_frame)),
            Ok(Some(head)) if merge.accepts(&head, max) => {
                self.buf.advance(head.header_len);
                merge.complete = Some(merge.data.len());
                merge.frame_left = head.data_len as usize;
                merge.done = head.done;
                Ok(None)
            }
            // Another packet's frame: the join ends here, not done.
            Ok(Some(_)) => Ok(self.merge.take().map(Merge::into_frame)),
            Ok(None) => {
                if self.buf.capacity() - self.buf.len() < HEADER_PROBE {
                    self.buf.reserve(READ_RESERVE);
                }
                let n = self
                    .inner
                    .read_buf(&mut (&mut self.buf).limit(HEADER_PROBE))
                    .await?;
                if n == 0 {
                    // The transport ended after a frame that does not end
                    // its packet: hand out what was joined; the next call
                    // reports the end (clean, or inside a header).
                    return Ok(self.merge.take().map(Merge::into_frame));
                }
                Ok(None)
            }
        }
    }

    /// Waits until the read buffer holds at least one byte more than
    /// `have` (or the transport ended), then returns everything buffered
    /// but not yet returned as frames: for looking at a connection's first
    /// bytes ([`crate::sniff`]) before reading frames. An empty slice means
    /// the transport ended first.
    pub async fn peek_more(&mut self, have: usize) -> io::Result<&[u8]> {
        while self.buf.len() <= have && !self.ended_in_frame && self.merge.is_none() {
            if self.fill().await? == 0 {
                break;
            }
        }
        Ok(&self.buf)
    }

    /// Drops the first `n` buffered bytes (at most what is buffered): a
    /// header that precedes the frames, such as
    /// [`MIGRATION_HEADER`](crate::MIGRATION_HEADER).
    pub fn skip(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.advance(n);
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes read but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.merge.as_ref().map_or(0, |m| m.data.len())
    }
}

fn eof_in_frame() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "transport closed in the middle of a frame",
    )
}

/// Collects encoded frames in a buffer and writes them to an
/// [`AsyncWrite`] in as few calls as possible: once the buffer reaches its
/// threshold, or on [`FrameWriter::flush`].
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
    threshold: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer that writes once `threshold` bytes are buffered (0 means
    /// [`DEFAULT_WRITER_BUFFER_SIZE`]).
    pub fn new(inner: W, threshold: usize) -> FrameWriter<W> {
        let threshold = if threshold == 0 {
            DEFAULT_WRITER_BUFFER_SIZE
        } else {
            threshold
        };
        FrameWriter {
            inner,
            buf: BytesMut::with_capacity(threshold),
            threshold,
        }
    }

    /// Buffers one frame, writing the buffer out if it reached the
    /// threshold.
    pub async fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        frame.append_to(&mut self.buf);
        self.flush_if_full().await
    }

    /// Buffers a whole packet, split into frames of at most `split_size`
    /// data bytes, writing out if the threshold was reached.
    pub async fn write_packet(
        &mut self,
        id: Id,
        kind: Kind,
        control: bool,
        data: &[u8],
        split_size: usize,
    ) -> io::Result<()> {
        append_packet(&mut self.buf, id, kind, control, data, split_size);
        self.flush_if_full().await
    }

    async fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= self.threshold {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes everything buffered and flushes the transport.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.inner.flush().await
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Discards buffered, unwritten bytes.
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Gives the transport back, dropping unwritten bytes.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn round_trip_through_a_pipe() {
        let (a, b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            let mut w = FrameWriter::new(a, 0);
            for i in 1..=100u64 {
                w.write_packet(
                    Id::new(i, 1),
                    Kind::MESSAGE,
                    false,
                    &vec![i as u8; i as usize * 100],
                    0,
                )
                .await?;
            }
            w.flush().await
        });
        let mut r = FrameReader::new(b, 1 << 20);
        for i in 1..=100u64 {
            let f = r.read_frame().await.expect("read").expect("frame");
            assert_eq!(f.id, Id::new(i, 1));
            assert_eq!(f.data, Bytes::from(vec![i as u8; i as usize * 100]));
        }
        writer.await.expect("join").expect("write");
        assert!(r.read_frame().await.expect("clean end").is_none());
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0x05, 0x01, 0x01, 0x05, 0xaa])
            .await
            .expect("write");
        drop(a);
        let mut r = FrameReader::new(b, 1 << 20);
        match r.read_frame().await {
            Err(ReadError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn next_frame_announces_what_read_frame_returns() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut bytes = Vec::new();
        crate::append_frame(
            &mut bytes,
            Id::new(1, 1),
            Kind::MESSAGE,
            true,
            false,
            b"abc",
        );
        // A large message in two frames, joined by a coalescing reader.
        crate::append_packet(
            &mut bytes,
            Id::new(1, 2),
            Kind::MESSAGE,
            false,
            &[7; 80_000],
            0,
        );
        crate::append_frame(&mut bytes, Id::new(1, 3), Kind::MESSAGE, true, false, b"");
        a.write_all(&bytes).await.expect("write");
        drop(a);
        let mut r = FrameReader::coalescing(b, 1 << 20);
        let plain = |len| Some(NextFrame { len, joins: false });
        assert_eq!(r.next_frame().await.expect("len"), plain(3));
        assert_eq!(
            r.next_frame().await.expect("again"),
            plain(3),
            "nothing consumed"
        );
        assert_eq!(
            r.read_frame()
                .await
                .expect("read")
                .expect("frame")
                .data
                .len(),
            3
        );
        assert_eq!(
            r.next_frame().await.expect("len"),
            Some(NextFrame {
                len: 65_536,
                joins: true
            }),
            "a join"
        );
        assert_eq!(
            r.read_frame()
                .await
                .expect("read")
                .expect("frame")
                .data
                .len(),
            80_000
        );
        assert_eq!(r.next_frame().await.expect("len"), plain(0));
        assert!(r.read_frame().await.expect("read").is_some());
        assert_eq!(r.next_frame().await.expect("end"), None);
        assert!(r.read_frame().await.expect("clean end").is_none());
    }

    #[tokio::test]
    async fn buffered_frames_are_taken_only_when_complete_and_accepted() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut bytes = Vec::new();
        for (message, data) in [(1, &b"one"[..]), (2, b"two"), (3, b"three")] {
            crate::append_frame(
                &mut bytes,
                Id::new(5, message),
                Kind::MESSAGE,
                true,
                false,
                data,
            );
        }
        crate::append_frame(
            &mut bytes,
            Id::new(6, 1),
            Kind::MESSAGE,
            true,
            false,
            b"other",
        );
        // The last frame arrives in part only.
        crate::append_frame(
            &mut bytes,
            Id::new(5, 4),
            Kind::MESSAGE,
            true,
            false,
            b"later",
        );
        let split = bytes.len() - 2;
        a.write_all(&bytes[..split]).await.expect("write");
        let mut r = FrameReader::new(b, 1 << 20);
        assert_eq!(r.buffered_frame_if(|_| true), None, "nothing read yet");
        let first = r.read_frame().await.expect("read").expect("frame");
        assert_eq!(first.id, Id::new(5, 1));
        let same_stream = |h: &FrameHead| h.id.stream == 5;
        assert_eq!(
            r.buffered_frame_if(same_stream).map(|f| f.data),
            Some(Bytes::from_static(b"two"))
        );
        assert_eq!(
            r.buffered_frame_if(same_stream).map(|f| f.data),
            Some(Bytes::from_static(b"three"))
        );
        assert_eq!(
            r.buffered_frame_if(same_stream),
            None,
            "another stream's frame stays"
        );
        assert_eq!(
            r.read_frame().await.expect("read").expect("frame").id,
            Id::new(6, 1)
        );
        assert_eq!(r.buffered_frame_if(same_stream), None, "incomplete");
        a.write_all(&bytes[split..]).await.expect("write");
        drop(a);
        assert_eq!(
            r.read_frame().await.expect("read").expect("frame").id,
            Id::new(5, 4)
        );
        assert!(r.read_frame().await.expect("clean end").is_none());
    }

    #[tokio::test]
    async fn buffered_frames_leave_malformed_and_oversized_headers_to_read_frame() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut bytes = Vec::new();
        crate::append_frame(&mut bytes, Id::new(5, 1), Kind::MESSAGE, true, false, b"ok");
        crate::append_frame(
            &mut bytes,
            Id::new(5, 2),
            Kind::MESSAGE,
            true,
            false,
            &[0; 100],
        );
        a.write_all(&bytes).await.expect("write");
        drop(a);
        let mut r = FrameReader::new(b, 50);
        assert!(r.read_frame().await.expect("read").is_some());
        assert_eq!(r.buffered_frame_if(|_| true), None);
        assert!(matches!(
            r.read_frame().await,
            Err(ReadError::Protocol(WireError::DataOverflow { len: 100 }))
        ));
    }

    #[tokio::test]
    async fn paused_joins_return_frames_one_by_one() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut bytes = Vec::new();
        crate::append_packet(
            &mut bytes,
            Id::new(1, 1),
            Kind::MESSAGE,
            false,
            &[7; 80_000],
            0,
        );
        a.write_all(&bytes).await.expect("write");
        let mut r = FrameReader::coalescing(b, 1 << 20);
        r.pause_joins(true);
        assert_eq!(
            r.next_frame().await.expect("len"),
            Some(NextFrame {
                len: 65_536,
                joins: false
            })
        );
        let first = r.read_frame().await.expect("read").expect("frame");
        assert_eq!((first.data.len(), first.done), (65_536, false));
        r.pause_joins(false);
        let second = r.read_frame().await.expect("read").expect("frame");
        assert_eq!((second.data.len(), second.done), (80_000 - 65_536, true));
    }
}
