//! Frame ids, frames, and the byte layout of protocol.md §3.

use std::cmp::Ordering;
use std::fmt;

use bytes::{BufMut, Bytes};

use crate::varint::{MAX_VARINT_LEN, append_varint, read_varint, varint_len};
use crate::{Kind, WireError};

/// The smallest possible frame: a header byte and three one-byte varints.
pub const MIN_FRAME_LEN: usize = 4;

/// The largest possible frame header: a header byte and three 10-byte
/// varints.
pub const MAX_HEADER_LEN: usize = 1 + 3 * MAX_VARINT_LEN;

/// The (stream, message) pair that identifies a packet and all its frames.
///
/// Ids order lexicographically, stream first, as Go's `ID.Less`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Id {
    /// The stream (one RPC), chosen by the client; never 0 on the wire.
    pub stream: u64,
    /// The packet counter of one direction of the stream, starting at 1.
    pub message: u64,
}

impl Id {
    /// Builds an id.
    pub const fn new(stream: u64, message: u64) -> Id {
        Id { stream, message }
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Id) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Id {
    fn cmp(&self, other: &Id) -> Ordering {
        (self.stream, self.message).cmp(&(other.stream, other.message))
    }
}

/// Displays as Go's `ID.String()`: `<id s:S m:M>`.
impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<id s:{} m:{}>", self.stream, self.message)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Everything in a frame but its data, as parsed from the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// The packet id the frame belongs to.
    pub id: Id,
    /// The packet kind.
    pub kind: Kind,
    /// Whether this is the last frame of its packet.
    pub done: bool,
    /// The forward-compatibility bit (protocol.md §7.3).
    pub control: bool,
    /// The number of data bytes that follow the header.
    pub data_len: u64,
    /// The number of bytes the header occupies (4 to 31).
    pub header_len: usize,
}

impl FrameHead {
    /// Parses a frame header from the front of `buf`.
    ///
    /// Returns `Ok(None)` while fewer than [`MIN_FRAME_LEN`] bytes are
    /// buffered or a varint is incomplete, as Go's `ParseFrame` does. The
    /// data need not be present yet.
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<Option<FrameHead>, WireError> {
        if buf.len() < MIN_FRAME_LEN {
            return Ok(None);
        }
        let header = buf[0];
        let mut at = 1;
        let next = |at: &mut usize| -> Result<Option<u64>, WireError> {
            Ok(read_varint(&buf[*at..])?.map(|(v, n)| {
                *at += n;
                v
            }))
        };
        let Some(stream) = next(&mut at)? else {
            return Ok(None);
        };
        let Some(message) = next(&mut at)? else {
            return Ok(None);
        };
        let Some(data_len) = next(&mut at)? else {
            return Ok(None);
        };
        Ok(Some(FrameHead {
            id: Id { stream, message },
            kind: Kind::from_header(header),
            done: header & 0x01 != 0,
            control: header & 0x80 != 0,
            data_len,
            header_len: at,
        }))
    }
}

/// One frame: the unit on the wire (protocol.md §3).
///
/// `data` is a [`Bytes`], so frames parsed from a read buffer or split from
/// a packet share memory with it instead of copying.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// The packet id the frame belongs to.
    pub id: Id,
    /// The packet kind.
    pub kind: Kind,
    /// Whether this is the last frame of its packet.
    pub done: bool,
    /// The forward-compatibility bit.
    pub control: bool,
    /// The frame's share of the packet data.
    pub data: Bytes,
}

impl Frame {
    /// Parses one frame from the front of `buf` without copying its data.
    ///
    /// Returns the frame and the number of bytes it occupied, `Ok(None)` if
    /// `buf` does not yet hold a whole frame, or the parse error.
    pub fn parse(buf: &Bytes) -> Result<Option<(Frame, usize)>, WireError> {
        let Some(head) = FrameHead::parse(buf)? else {
            return Ok(None);
        };
        let available = (buf.len() - head.header_len) as u64;
        if head.data_len > available {
            return Ok(None);
        }
        // data_len <= available, which is a usize, so this cannot truncate.
        let end = head.header_len + head.data_len as usize;
        let frame = Frame {
            id: head.id,
            kind: head.kind,
            done: head.done,
            control: head.control,
            data: buf.slice(head.header_len..end),
        };
        Ok(Some((frame, end)))
    }

    /// The header byte of protocol.md §3.1.
    pub fn header_byte(&self) -> u8 {
        header_byte(self.kind, self.done, self.control)
    }

    /// The number of bytes [`Frame::append_to`] writes.
    pub fn encoded_len(&self) -> usize {
        header_len(self.id, self.data.len()) + self.data.len()
    }

    /// Appends the encoded frame to `buf`.
    pub fn append_to<B: BufMut + ?Sized>(&self, buf: &mut B) {
        append_frame(buf, self.id, self.kind, self.done, self.control, &self.data);
    }
}

impl fmt::Debug for Frame {
    /// Like Go's `Frame.String()`, plus the control bit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<frm s:{} m:{} data:{} kind:{} done:{} control:{}>",
            self.id.stream,
            self.id.message,
            self.data.len(),
            self.kind,
            self.done,
            self.control
        )
    }
}

/// Builds a header byte: `control << 7 | kind << 1 | done`.
#[inline]
pub const fn header_byte(kind: Kind, done: bool, control: bool) -> u8 {
    ((control as u8) << 7) | (kind.value() << 1) | (done as u8)
}

/// The encoded size of a frame header for `id` and `data_len` data bytes.
#[inline]
pub const fn header_len(id: Id, data_len: usize) -> usize {
    1 + varint_len(id.stream) + varint_len(id.message) + varint_len(data_len as u64)
}

/// Appends one encoded frame, built from its parts, to `buf`.
///
/// Writers use this to encode straight from a borrowed payload, without
/// building a [`Frame`].
#[inline]
pub fn append_frame<B: BufMut + ?Sized>(
    buf: &mut B,
    id: Id,
    kind: Kind,
    done: bool,
    control: bool,
    data: &[u8],
) {
    append_frame_header(buf, id, kind, done, control, data.len());
    buf.put_slice(data);
}

/// Appends only the header of a frame carrying `data_len` bytes; the
/// caller sends the data right after it (a writer queuing the payload by
/// reference).
#[inline]
pub fn append_frame_header<B: BufMut + ?Sized>(
    buf: &mut B,
    id: Id,
    kind: Kind,
    done: bool,
    control: bool,
    data_len: usize,
) {
    buf.put_u8(header_byte(kind, done, control));
    append_varint(buf, id.stream);
    append_varint(buf, id.message);
    append_varint(buf, data_len as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_of_protocol_table() {
        let rows = [
            (Kind::INVOKE, 0x03, 0x02, 0x83),
            (Kind::MESSAGE, 0x05, 0x04, 0x85),
            (Kind::ERROR, 0x07, 0x06, 0x87),
            (Kind::CANCEL, 0x09, 0x08, 0x89),
            (Kind::CLOSE, 0x0b, 0x0a, 0x8b),
            (Kind::CLOSE_SEND, 0x0d, 0x0c, 0x8d),
            (Kind::INVOKE_METADATA, 0x0f, 0x0e, 0x8f),
        ];
        for (kind, done, not_done, control) in rows {
            assert_eq!(header_byte(kind, true, false), done);
            assert_eq!(header_byte(kind, false, false), not_done);
            assert_eq!(header_byte(kind, true, true), control);
        }
    }

    #[test]
    fn every_header_byte_parses() {
        for h in 0..=255u8 {
            let buf = [h, 1, 1, 0];
            let head = FrameHead::parse(&buf).expect("parses").expect("complete");
            assert_eq!(head.kind.value(), (h >> 1) & 0x3f);
            assert_eq!(head.done, h & 1 == 1);
            assert_eq!(head.control, h & 0x80 != 0);
            assert_eq!(header_byte(head.kind, head.done, head.control), h);
        }
    }

    #[test]
    fn needs_four_bytes_and_all_data() {
        assert_eq!(FrameHead::parse(&[0x05, 0x01, 0x01]), Ok(None));
        let partial = Bytes::from_static(&[0x05, 0x01, 0x01, 0x02, 0x08]);
        assert_eq!(Frame::parse(&partial), Ok(None));
        let whole = Bytes::from_static(&[0x05, 0x01, 0x01, 0x02, 0x08, 0x05, 0xaa]);
        let (frame, used) = Frame::parse(&whole).expect("parses").expect("complete");
        assert_eq!(used, 6);
        assert_eq!(frame.id, Id::new(1, 1));
        assert_eq!(frame.kind, Kind::MESSAGE);
        assert!(frame.done && !frame.control);
        assert_eq!(&frame.data[..], &[0x08, 0x05]);
    }

    #[test]
    fn too_long_varint_in_header_is_an_error() {
        let mut buf = vec![0x05];
        buf.extend([0x80; 10]);
        assert_eq!(FrameHead::parse(&buf), Err(WireError::VarintTooLong));
    }

    #[test]
    fn id_order_and_text() {
        assert!(Id::new(1, 9) < Id::new(2, 0));
        assert!(Id::new(2, 1) < Id::new(2, 2));
        assert_eq!(Id::new(3, 4).to_string(), "<id s:3 m:4>");
    }
}
