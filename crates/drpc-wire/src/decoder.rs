//! Sans-IO frame decoding from a growing read buffer.

use bytes::{Buf, BytesMut};

use crate::assembler::DEFAULT_MAX_PACKET_SIZE;
use crate::{Frame, FrameHead, WireError};

/// The most the decoder reserves ahead for one incomplete frame.
const MAX_RESERVE: usize = 16 << 20;

/// Cuts frames off the front of a [`BytesMut`] read buffer.
///
/// Frame data is split off the buffer and frozen, so a frame costs no
/// allocation and no copy: its [`Bytes`](bytes::Bytes) shares the read
/// buffer's memory.
///
/// A frame whose declared length exceeds the maximum packet size is refused
/// as soon as its header is readable, before its data is buffered: its
/// packet could only overflow. This bounds what a peer can make us buffer
/// to the maximum plus one header, where Go's reader waits for the buffered
/// bytes to exceed the maximum by 28 (protocol.md §8.3); both end the
/// connection with a data overflow.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_packet_size: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_PACKET_SIZE)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames with more than `max_packet_size` data bytes.
    pub fn new(max_packet_size: usize) -> FrameDecoder {
        FrameDecoder { max_packet_size }
    }

    /// The largest frame data length accepted.
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Decodes one frame from the front of `buf`, removing its bytes.
    ///
    /// Returns `Ok(None)` when more bytes are needed; in that case, once the
    /// header is known, `buf` has been given the capacity for the whole
    /// frame so that the next read can complete it.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match FrameHead::parse(buf)? {
            Some(head) => self.decode_after_head(buf, head),
            None => Ok(None),
        }
    }

    /// [`FrameDecoder::decode`] for a caller that parsed the header at the
    /// front of `buf` already.
    pub(crate) fn decode_after_head(
        &self,
        buf: &mut BytesMut,
        head: FrameHead,
    ) -> Result<Option<Frame>, WireError> {
        if head.data_len > self.max_packet_size as u64 {
            return Err(WireError::DataOverflow { len: head.data_len });
        }
        // data_len <= max_packet_size (a usize), so the cast is lossless; the
        // sum can still overflow when the maximum is near usize::MAX.
        let Some(total) = head.header_len.checked_add(head.data_len as usize) else {
            return Err(WireError::DataOverflow { len: head.data_len });
        };
        if buf.len() < total {
            // Room for the whole frame, so that the next read completes it;
            // capped, because the frame's length is the peer's claim.
            buf.reserve((total - buf.len()).min(MAX_RESERVE));
            return Ok(None);
        }
        let mut bytes = buf.split_to(total);
        bytes.advance(head.header_len);
        Ok(Some(Frame {
            id: head.id,
            kind: head.kind,
            done: head.done,
            control: head.control,
            data: bytes.freeze(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Id, Kind};

    #[test]
    fn decodes_back_to_back_frames() {
        let mut buf = BytesMut::from(&[0x05, 0x01, 0x01, 0x01, 0xaa, 0x0d, 0x01, 0x02][..]);
        let dec = FrameDecoder::default();
        let f = dec.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!(
            (f.id, f.kind, &f.data[..]),
            (Id::new(1, 1), Kind::MESSAGE, &[0xaa][..])
        );
        assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&[0x00]);
        let f = dec.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!((f.id, f.kind), (Id::new(1, 2), Kind::CLOSE_SEND));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let dec = FrameDecoder::new(1000);
        // Header announcing 1029 data bytes, none of them present yet.
        let mut buf = BytesMut::from(&[0x05, 0x01, 0x01, 0x85, 0x08][..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(WireError::DataOverflow { len: 1029 })
        );
        // Exactly the maximum is fine.
        let mut buf = BytesMut::from(&[0x05, 0x01, 0x01, 0xe8, 0x07][..]);
        buf.extend_from_slice(&[0u8; 1000]);
        assert_eq!(
            dec.decode(&mut buf).expect("ok").expect("frame").data.len(),
            1000
        );
    }
}
