//! Reassembly of frames into packets, one assembler per stream
//! (protocol.md §8, multiplexing.md §3.6).

use bytes::{Bytes, BytesMut};

use crate::{Frame, Id, Kind, Packet, WireError};

/// The default maximum packet size: 4 MiB, as Go's `MaximumBufferSize` 0.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 4 << 20;

/// Turns the frames of **one stream** into packets.
///
/// Frames of different streams interleave on a multiplexed connection, so a
/// connection keeps one assembler per stream. The rules, per stream:
///
/// * message ids never go backwards: a frame whose message id is lower than
///   the packet under assembly, or than the last completed packet's id + 1,
///   is [`WireError::MessageIdRegression`] (gaps are fine);
/// * a frame with a higher message id silently drops a half-built packet;
/// * a kind change inside one packet is [`WireError::KindChange`];
/// * a packet's control bit is the OR of its frames' bits;
/// * a packet larger than the maximum is [`WireError::DataOverflow`], found
///   before the data is copied, so the assembler never holds more than the
///   limit.
///
/// A single-frame packet is handed out as the frame's own [`Bytes`], without
/// copying.
#[derive(Debug)]
pub struct PacketAssembler {
    stream: Option<u64>,
    /// The lowest message id still acceptable; `None` once `u64::MAX` has
    /// completed and no id remains.
    min_message: Option<u64>,
    partial: Option<Partial>,
    max_packet_size: usize,
}

#[derive(Debug)]
struct Partial {
    message: u64,
    kind: Kind,
    control: bool,
    data: PartialData,
}

#[derive(Debug)]
enum PartialData {
    /// One frame's data, kept as is in case the packet is a single frame.
    Shared(Bytes),
    /// Two or more frames' data, copied together as they come, so that the
    /// read buffer they arrived in can be reused at once.
    Owned(BytesMut),
}

/// Frames at least this large announce a large packet: its buffer is sized
/// for the largest packet allowed, up to [`LARGE_PACKET_CAPACITY`]. Only the
/// pages written are ever touched, and the data of packets up to that size
/// is copied exactly once, without regrowing.
const LARGE_FRAME: usize = 16 * 1024;

/// The most a large packet's buffer is given up front (a limit raised far
/// above the default must not reserve that much for every large packet).
const LARGE_PACKET_CAPACITY: usize = 4 << 20;

impl PartialData {
    fn len(&self) -> usize {
        match self {
            PartialData::Shared(b) => b.len(),
            PartialData::Owned(b) => b.len(),
        }
    }

    fn append(&mut self, more: Bytes, max_packet_size: usize) {
        if more.is_empty() {
            return;
        }
        match self {
            PartialData::Shared(first) if first.is_empty() => *first = more,
            PartialData::Shared(first) => {
                let len = first.len() + more.len();
                let capacity = if first.len() >= LARGE_FRAME {
                    max_packet_size.min(LARGE_PACKET_CAPACITY).max(len)
                } else {
                    len * 2
                };
                let mut owned = BytesMut::with_capacity(capacity);
                owned.extend_from_slice(first);
                owned.extend_from_slice(&more);
                *self = PartialData::Owned(owned);
            }
            PartialData::Owned(owned) => owned.extend_from_slice(&more),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            PartialData::Shared(b) => b,
            PartialData::Owned(b) => b.freeze(),
        }
    }
}

impl Default for PacketAssembler {
    fn default() -> Self {
        PacketAssembler::new(DEFAULT_MAX_PACKET_SIZE)
    }
}

impl PacketAssembler {
    /// An assembler that takes its stream id from the first frame and
    /// refuses packets larger than `max_packet_size` bytes.
    pub fn new(max_packet_size: usize) -> PacketAssembler {
        PacketAssembler {
            stream: None,
            min_message: Some(1),
            partial: None,
            max_packet_size,
        }
    }

    /// An assembler bound to `stream` from the start.
    pub fn for_stream(stream: u64, max_packet_size: usize) -> PacketAssembler {
        PacketAssembler {
            stream: Some(stream),
            ..PacketAssembler::new(max_packet_size)
        }
    }

    /// The stream this assembler is bound to, if any frame or caller has
    /// bound it yet.
    pub fn stream_id(&self) -> Option<u64> {
        self.stream
    }

    /// The number of payload bytes held for a packet under assembly.
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.data.len())
    }

    /// Feeds one frame. Returns the packet it completes, if any.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Packet>, WireError> {
        let Frame {
            id,
            kind,
            done,
            control,
            data,
        } = frame;
        match self.stream {
            Some(expected) if expected != id.stream => {
                return Err(WireError::StreamMismatch {
                    got: id.stream,
                    expected,
                });
            }
            Some(_) => {}
            None => self.stream = Some(id.stream),
        }
        match self.min_message {
            Some(min) if id.message >= min => {}
            _ => {
                return Err(WireError::MessageIdRegression {
                    stream: id.stream,
                    got: id.message,
                    expected: self.min_message.unwrap_or(u64::MAX),
                });
            }
        }

        match self.partial.as_mut().filter(|p| p.message == id.message) {
            Some(partial) => {
                if partial.kind != kind {
                    return Err(WireError::KindChange {
                        frame: kind,
                        packet: partial.kind,
                    });
                }
                let len = partial.data.len() as u64 + data.len() as u64;
                if len > self.max_packet_size as u64 {
                    return Err(WireError::DataOverflow { len });
                }
                partial.data.append(data, self.max_packet_size);
                partial.control |= control;
            }
            None => {
                // A higher message id: whatever was under assembly is dropped.
                if data.len() > self.max_packet_size {
                    return Err(WireError::DataOverflow {
                        len: data.len() as u64,
                    });
                }
                if done {
                    // A whole packet in one frame, the common case: it
                    // completes at once, exactly as through `partial`.
                    self.partial = None;
                    self.min_message = id.message.checked_add(1);
                    return Ok(Some(Packet {
                        id,
                        kind,
                        control,
                        data,
                    }));
                }
                self.min_message = Some(id.message);
                self.partial = Some(Partial {
                    message: id.message,
                    kind,
                    control,
                    data: PartialData::Shared(data),
                });
            }
        }

        if !done {
            return Ok(None);
        }
        let Some(partial) = self.partial.take() else {
            return Ok(None);
        };
        self.min_message = partial.message.checked_add(1);
        Ok(Some(Packet {
            id: Id::new(id.stream, partial.message),
            kind: partial.kind,
            control: partial.control,
            data: partial.data.into_bytes(),
        }))
    }
}

/// The original, connection-wide id rule of storj/drpc (protocol.md §8.2):
/// frame ids, compared as (stream, message), never decrease over the whole
/// connection, and a completed packet's id is never seen again.
///
/// A multiplexed connection must not use it (frames of streams interleave);
/// a connection in sequential mode uses it, next to the per-stream
/// [`PacketAssembler`]s, to catch a misbehaving peer the way Go does.
#[derive(Debug, Clone)]
pub struct ConnectionIdOrder {
    last: Id,
    /// Set once (u64::MAX, u64::MAX) completed: no id is left.
    exhausted: bool,
}

impl Default for ConnectionIdOrder {
    fn default() -> Self {
        ConnectionIdOrder::new()
    }
}

impl ConnectionIdOrder {
    /// The state of a fresh connection: the first frame must be at least
    /// (1, 1).
    pub fn new() -> ConnectionIdOrder {
        ConnectionIdOrder {
            last: Id::new(1, 1),
            exhausted: false,
        }
    }

    /// Checks one frame's id and records it.
    pub fn check(&mut self, id: Id, done: bool) -> Result<(), WireError> {
        if id < self.last || self.exhausted {
            return Err(WireError::IdMonotonicity {
                frame: id,
                last: self.last,
            });
        }
        self.last = id;
        if done {
            match (id.message.checked_add(1), id.stream.checked_add(1)) {
                (Some(next), _) => self.last.message = next,
                (None, Some(next_stream)) => self.last = Id::new(next_stream, 0),
                (None, None) => self.exhausted = true,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u64, message: u64, kind: Kind, done: bool, data: &'static [u8]) -> Frame {
        Frame {
            id: Id::new(stream, message),
            kind,
            done,
            control: false,
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn single_frame_packet_is_not_copied() {
        let data = Bytes::from_static(b"hello");
        let mut asm = PacketAssembler::default();
        let pkt = asm
            .push(Frame {
                id: Id::new(1, 1),
                kind: Kind::MESSAGE,
                done: true,
                control: false,
                data: data.clone(),
            })
            .expect("valid")
            .expect("complete");
        assert_eq!(pkt.data.as_ptr(), data.as_ptr());
    }

    #[test]
    fn multi_frame_packet_concatenates() {
        let mut asm = PacketAssembler::default();
        assert_eq!(
            asm.push(frame(1, 1, Kind::MESSAGE, false, b"hello")),
            Ok(None)
        );
        assert_eq!(asm.push(frame(1, 1, Kind::MESSAGE, false, b" ")), Ok(None));
        let pkt = asm
            .push(frame(1, 1, Kind::MESSAGE, true, b"world"))
            .expect("ok");
        assert_eq!(
            pkt.expect("complete").data,
            Bytes::from_static(b"hello world")
        );
        assert_eq!(asm.buffered(), 0);
    }

    #[test]
    fn max_u64_message_id_completes_then_nothing_is_accepted() {
        let mut asm = PacketAssembler::default();
        let pkt = asm
            .push(frame(1, u64::MAX, Kind::MESSAGE, true, b"x"))
            .expect("ok");
        assert!(pkt.is_some());
        assert!(matches!(
            asm.push(frame(1, u64::MAX, Kind::MESSAGE, true, b"x")),
            Err(WireError::MessageIdRegression { .. })
        ));
    }

    #[test]
    fn connection_order_rejects_going_back() {
        let mut order = ConnectionIdOrder::new();
        order.check(Id::new(1, 1), false).expect("first");
        order.check(Id::new(1, 2), true).expect("higher");
        assert_eq!(
            order.check(Id::new(1, 1), true),
            Err(WireError::IdMonotonicity {
                frame: Id::new(1, 1),
                last: Id::new(1, 3)
            })
        );
    }
}
