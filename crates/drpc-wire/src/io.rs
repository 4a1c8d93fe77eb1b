//! Thin tokio adapters over the sans-IO core: a frame reader and a buffered
//! frame writer.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::packet::append_packet;
use crate::{Frame, FrameDecoder, Id, Kind, WireError};

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
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader refusing packets larger than `max_packet_size` bytes.
    pub fn new(inner: R, max_packet_size: usize) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(READ_RESERVE),
            decoder: FrameDecoder::new(max_packet_size),
        }
    }

    /// Reads the next frame. `Ok(None)` means the transport ended cleanly
    /// between two frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
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
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "transport closed in the middle of a frame",
                    )
                    .into())
                };
            }
        }
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes read but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
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
}
