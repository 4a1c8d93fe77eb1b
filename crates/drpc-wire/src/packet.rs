//! Packets and their splitting into frames (protocol.md §5).

use std::fmt;

use bytes::{BufMut, Bytes};

use crate::frame::{append_frame, header_len};
use crate::{Frame, Id, Kind};

/// The default maximum data bytes per frame (64 KiB), Go's `SplitSize` 0.
pub const DEFAULT_SPLIT_SIZE: usize = 64 * 1024;

/// One logical protocol message of a stream.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    /// The stream and message ids shared by all its frames.
    pub id: Id,
    /// What the packet means.
    pub kind: Kind,
    /// The combined control bit of its frames.
    pub control: bool,
    /// The payload.
    pub data: Bytes,
}

impl Packet {
    /// Splits the packet into frames of at most `split_size` data bytes
    /// without copying (see [`split_frames`]).
    pub fn frames(&self, split_size: usize) -> SplitFrames {
        split_frames(
            self.id,
            self.kind,
            self.control,
            self.data.clone(),
            split_size,
        )
    }
}

impl fmt::Debug for Packet {
    /// Like Go's `Packet.String()`, plus the control bit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<pkt s:{} m:{} data:{} kind:{} control:{}>",
            self.id.stream,
            self.id.message,
            self.data.len(),
            self.kind,
            self.control
        )
    }
}

/// Resolves a split size as Go does: 0 means [`DEFAULT_SPLIT_SIZE`]; use
/// `usize::MAX` never to split.
#[inline]
pub const fn effective_split_size(split_size: usize) -> usize {
    if split_size == 0 {
        DEFAULT_SPLIT_SIZE
    } else {
        split_size
    }
}

/// The frame-size limit that applies to a packet of `kind`: Invoke,
/// InvokeMetadata and Message packets split at `split_size`, all other
/// kinds always travel as one frame (protocol.md §5.1).
#[inline]
const fn limit_for(kind: Kind, split_size: usize) -> usize {
    if kind.is_splittable() {
        effective_split_size(split_size)
    } else {
        usize::MAX
    }
}

/// Splits a packet's data into frames of at most `split_size` bytes each
/// (0 meaning 64 KiB), only the last one `done`. An empty payload gives
/// one empty frame. Kinds that are never split give one frame whatever the
/// size. The frames share `data`'s memory.
pub fn split_frames(
    id: Id,
    kind: Kind,
    control: bool,
    data: Bytes,
    split_size: usize,
) -> SplitFrames {
    SplitFrames {
        id,
        kind,
        control,
        rest: Some(data),
        limit: limit_for(kind, split_size),
    }
}

/// The iterator returned by [`split_frames`].
#[derive(Debug, Clone)]
pub struct SplitFrames {
    id: Id,
    kind: Kind,
    control: bool,
    rest: Option<Bytes>,
    limit: usize,
}

impl Iterator for SplitFrames {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        let mut rest = self.rest.take()?;
        let data = if rest.len() > self.limit {
            let head = rest.split_to(self.limit);
            self.rest = Some(rest);
            head
        } else {
            rest
        };
        Some(Frame {
            id: self.id,
            kind: self.kind,
            done: self.rest.is_none(),
            control: self.control,
            data,
        })
    }
}

/// Appends a whole packet to `buf` as encoded frames, split as
/// [`split_frames`] would, copying `data` once into `buf`.
///
/// This is the writer's hot path: no intermediate [`Frame`] values and no
/// allocation besides `buf`'s own growth.
pub fn append_packet<B: BufMut + ?Sized>(
    buf: &mut B,
    id: Id,
    kind: Kind,
    control: bool,
    data: &[u8],
    split_size: usize,
) {
    let limit = limit_for(kind, split_size);
    let mut rest = data;
    loop {
        let take = rest.len().min(limit);
        let (chunk, tail) = rest.split_at(take);
        let done = tail.is_empty();
        append_frame(buf, id, kind, done, control, chunk);
        if done {
            return;
        }
        rest = tail;
    }
}

/// The number of bytes [`append_packet`] writes.
pub fn packet_encoded_len(id: Id, kind: Kind, data_len: usize, split_size: usize) -> usize {
    let limit = limit_for(kind, split_size);
    // Every frame but the last carries exactly `limit` bytes.
    let full_frames = data_len.saturating_sub(1) / limit;
    let last = data_len - full_frames * limit;
    let last_frame = header_len(id, last) + last;
    if full_frames == 0 {
        last_frame
    } else {
        full_frames * (header_len(id, limit) + limit) + last_frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seventy_thousand_bytes_split_as_go_does() {
        let data = Bytes::from(vec![7u8; 70_000]);
        let frames: Vec<Frame> =
            split_frames(Id::new(7, 1), Kind::MESSAGE, false, data, 0).collect();
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].data.len(), frames[0].done), (65_536, false));
        assert_eq!((frames[1].data.len(), frames[1].done), (4_464, true));

        let mut buf = Vec::new();
        append_packet(
            &mut buf,
            Id::new(7, 1),
            Kind::MESSAGE,
            false,
            &[7u8; 70_000],
            0,
        );
        assert_eq!(&buf[..6], &[0x04, 0x07, 0x01, 0x80, 0x80, 0x04]);
        assert_eq!(
            &buf[6 + 65_536..6 + 65_536 + 5],
            &[0x05, 0x07, 0x01, 0xf0, 0x22]
        );
        assert_eq!(
            buf.len(),
            packet_encoded_len(Id::new(7, 1), Kind::MESSAGE, 70_000, 0)
        );
    }

    #[test]
    fn empty_payload_is_one_done_frame() {
        let frames: Vec<Frame> =
            split_frames(Id::new(7, 2), Kind::MESSAGE, false, Bytes::new(), 0).collect();
        assert_eq!(frames.len(), 1);
        assert!(frames[0].done && frames[0].data.is_empty());
        let mut buf = Vec::new();
        append_packet(&mut buf, Id::new(7, 2), Kind::MESSAGE, false, &[], 0);
        assert_eq!(buf, [0x05, 0x07, 0x02, 0x00]);
    }

    #[test]
    fn terminal_kinds_are_never_split() {
        for kind in [Kind::ERROR, Kind::CANCEL, Kind::CLOSE, Kind::CLOSE_SEND] {
            let frames: Vec<Frame> =
                split_frames(Id::new(1, 1), kind, false, Bytes::from(vec![0; 10]), 3).collect();
            assert_eq!(frames.len(), 1, "{kind}");
            assert!(frames[0].done);
        }
        let frames: Vec<Frame> = split_frames(
            Id::new(1, 1),
            Kind::INVOKE,
            false,
            Bytes::from(vec![0; 10]),
            3,
        )
        .collect();
        assert_eq!(frames.len(), 4);
    }
}
