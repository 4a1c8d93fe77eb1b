//! Flow-control frames: the fork's `KindWindowUpdate` (mux-fork-2026.md
//! §2.1) and this implementation's per-stream negotiation (§7.5).
//!
//! Both are judged before packet assembly and never end a connection: a
//! frame that does not conform is dropped.

use bytes::BufMut;

use crate::{
    CompressionSet, Frame, Id, Kind, append_frame, append_varint, read_varint, varint_len,
};

/// A credit grant for the sender of one stream (kind 8).
///
/// On the wire: header `0x91` (control, kind 8, done), the stream id,
/// message id 0, and a payload of exactly one varint, the delta in bytes,
/// which is never 0. Message id 0 puts it outside the stream's message
/// sequence, so it must be taken out before the stream's assembler sees
/// it, and it must never be sent to a peer that has not shown it takes it
/// out: a stock peer ends the connection over a message id going back to 0
/// (mux-fork-2026.md §7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowUpdate {
    /// The stream whose send window is credited; never 0.
    pub stream: u64,
    /// The credit in bytes; never 0.
    pub delta: u64,
}

impl WindowUpdate {
    /// Reads a received frame of kind 8. `None` unless it conforms exactly:
    /// control and done set, stream ≠ 0, a payload that is one complete
    /// varint ≠ 0 with nothing after it. Such a frame is dropped, never
    /// fatal, as the fork does. The message id is not looked at.
    pub fn parse(frame: &Frame) -> Option<WindowUpdate> {
        if frame.kind != Kind::WINDOW_UPDATE
            || !frame.control
            || !frame.done
            || frame.id.stream == 0
        {
            return None;
        }
        match read_varint(&frame.data) {
            Ok(Some((delta, used))) if used == frame.data.len() && delta != 0 => {
                Some(WindowUpdate {
                    stream: frame.id.stream,
                    delta,
                })
            }
            _ => None,
        }
    }

    /// The encoded size of the frame.
    pub fn encoded_len(&self) -> usize {
        let payload = varint_len(self.delta);
        crate::header_len(Id::new(self.stream, 0), payload) + payload
    }

    /// Appends the frame. A delta of 0 is not a valid grant; callers never
    /// send one.
    pub fn append_to<B: BufMut + ?Sized>(&self, buf: &mut B) {
        let mut payload = [0u8; crate::MAX_VARINT_LEN];
        let mut cursor = &mut payload[..];
        append_varint(&mut cursor, self.delta);
        let len = varint_len(self.delta);
        append_frame(
            buf,
            Id::new(self.stream, 0),
            Kind::WINDOW_UPDATE,
            true,
            true,
            &payload[..len],
        );
    }
}

/// The InvokeMetadata key with which a client offers this implementation's
/// flow control on a stream, valued as [`FlowParams::to_metadata_value`].
/// Peers that do not know it pass it to their handler and otherwise
/// ignore it; a server that takes the offer removes it first.
pub const FLOW_CONTROL_METADATA_KEY: &str = "drpc-rs-flow";

/// What one side of a negotiated stream promises: the credit it grants the
/// other side's sender up front, and the largest message it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowParams {
    /// The initial send credit the peer may use, in payload bytes.
    pub window: u64,
    /// The largest message accepted, in bytes.
    pub max_message: u64,
}

/// The version of the negotiation this implementation speaks.
const FLOW_VERSION: u64 = 1;

impl FlowParams {
    /// The metadata value offering these parameters: `1;w=<window>;m=<max>`.
    pub fn to_metadata_value(&self) -> String {
        format!("{FLOW_VERSION};w={};m={}", self.window, self.max_message)
    }

    /// Parses a metadata value; `None` for another version, a malformed
    /// value or a zero window (the offer is then ignored, as if absent).
    /// Unknown `key=value` fields are skipped, so later versions can add
    /// some.
    pub fn parse_metadata_value(value: &str) -> Option<FlowParams> {
        let mut fields = value.split(';');
        if fields.next()?.parse::<u64>().ok()? != FLOW_VERSION {
            return None;
        }
        let (mut window, mut max_message) = (None, None);
        for field in fields {
            match field.split_once('=') {
                Some(("w", v)) => window = Some(v.parse::<u64>().ok()?),
                Some(("m", v)) => max_message = Some(v.parse::<u64>().ok()?),
                Some(_) => {}
                None => return None,
            }
        }
        let params = FlowParams {
            window: window?,
            max_message: max_message?,
        };
        (params.window > 0 && params.max_message > 0).then_some(params)
    }
}

/// A negotiation packet (kind 9, control bit set, done), sent on a stream
/// with the sender's next message id, so that it passes every peer's id
/// checks and a peer that does not know the kind ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowNegotiation {
    /// Server to client: the offer is taken; from here on the server's
    /// messages are gated by the client's window and the server grants
    /// with WindowUpdate. Carries the server's own parameters, and the
    /// compressions it decompresses (empty from a peer that says
    /// nothing of them), from which a client learns that it may compress
    /// its later calls ([`CompressionSet`]).
    Accept(FlowParams, CompressionSet),
    /// Client to server: the client's messages after this one are gated by
    /// the server's window; the server holds the client to it from here.
    Gating,
}

const NEGOTIATION_ACCEPT: u8 = 1;
const NEGOTIATION_GATING: u8 = 2;

impl FlowNegotiation {
    /// Appends the packet as one frame with id `id`.
    pub fn append_to<B: BufMut + ?Sized>(&self, buf: &mut B, id: Id) {
        let mut payload = [0u8; 1 + 3 * crate::MAX_VARINT_LEN];
        let capacity = payload.len();
        let len = {
            let mut cursor = &mut payload[..];
            match self {
                FlowNegotiation::Accept(p, compressions) => {
                    cursor.put_u8(NEGOTIATION_ACCEPT);
                    append_varint(&mut cursor, p.window);
                    append_varint(&mut cursor, p.max_message);
                    // Absent when empty: the packet of a peer that knows
                    // no compression.
                    if !compressions.is_empty() {
                        append_varint(&mut cursor, compressions.bits());
                    }
                }
                FlowNegotiation::Gating => cursor.put_u8(NEGOTIATION_GATING),
            }
            capacity - cursor.len()
        };
        append_frame(buf, id, Kind::FLOW_NEGOTIATION, true, true, &payload[..len]);
    }

    /// Reads the payload of a received negotiation packet; `None` if it is
    /// malformed (the packet is then ignored).
    pub fn parse(payload: &[u8]) -> Option<FlowNegotiation> {
        let (&tag, rest) = payload.split_first()?;
        match tag {
            NEGOTIATION_ACCEPT => {
                let (window, used) = read_varint(rest).ok()??;
                let (max_message, used2) = read_varint(&rest[used..]).ok()??;
                let params = FlowParams {
                    window,
                    max_message,
                };
                let tail = &rest[used + used2..];
                let compressions = if tail.is_empty() {
                    CompressionSet::EMPTY
                } else {
                    let (bits, used3) = read_varint(tail).ok()??;
                    if used3 != tail.len() {
                        return None;
                    }
                    CompressionSet::from_bits(bits)
                };
                (window > 0 && max_message > 0)
                    .then_some(FlowNegotiation::Accept(params, compressions))
            }
            NEGOTIATION_GATING if rest.is_empty() => Some(FlowNegotiation::Gating),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn encoded(update: WindowUpdate) -> Vec<u8> {
        let mut buf = Vec::new();
        update.append_to(&mut buf);
        assert_eq!(buf.len(), update.encoded_len());
        buf
    }

    fn frame(header: u8, stream: u64, message: u64, payload: &[u8]) -> Frame {
        Frame {
            id: Id::new(stream, message),
            kind: Kind::from_header(header),
            done: header & 1 == 1,
            control: header & 0x80 != 0,
            data: Bytes::copy_from_slice(payload),
        }
    }

    /// The examples of mux-fork-2026.md §2.1, byte for byte, both ways.
    #[test]
    fn fork_examples() {
        let table: [(u64, u64, &[u8]); 5] = [
            (1, 64 << 10, &[0x91, 0x01, 0x00, 0x03, 0x80, 0x80, 0x04]),
            (1, 128 << 10, &[0x91, 0x01, 0x00, 0x03, 0x80, 0x80, 0x08]),
            (1, 512 << 10, &[0x91, 0x01, 0x00, 0x03, 0x80, 0x80, 0x20]),
            (
                7,
                2 << 20,
                &[0x91, 0x07, 0x00, 0x04, 0x80, 0x80, 0x80, 0x01],
            ),
            (3, 150, &[0x91, 0x03, 0x00, 0x02, 0x96, 0x01]),
        ];
        for (stream, delta, bytes) in table {
            let update = WindowUpdate { stream, delta };
            assert_eq!(encoded(update), bytes, "{update:?}");
            let (parsed, used) = Frame::parse(&Bytes::copy_from_slice(bytes))
                .expect("parses")
                .expect("whole");
            assert_eq!(used, bytes.len());
            assert_eq!(parsed.kind, Kind::WINDOW_UPDATE);
            assert_eq!(WindowUpdate::parse(&parsed), Some(update));
        }
    }

    #[test]
    fn nonconforming_updates_are_dropped() {
        let ok = frame(0x91, 1, 0, &[0x05]);
        assert!(WindowUpdate::parse(&ok).is_some());
        // The message id is not looked at.
        assert!(WindowUpdate::parse(&frame(0x91, 1, 9, &[0x05])).is_some());
        for bad in [
            frame(0x11, 1, 0, &[0x05]),       // no control bit
            frame(0x90, 1, 0, &[0x05]),       // not done
            frame(0x91, 0, 0, &[0x05]),       // stream 0
            frame(0x91, 1, 0, &[]),           // no varint
            frame(0x91, 1, 0, &[0x00]),       // zero delta
            frame(0x91, 1, 0, &[0x05, 0x00]), // trailing byte
            frame(0x91, 1, 0, &[0x80]),       // incomplete varint
            frame(0x91, 1, 0, &[0xff; 11]),   // varint too long
            frame(0x85, 1, 0, &[0x05]),       // another kind
        ] {
            assert_eq!(WindowUpdate::parse(&bad), None, "{bad:?}");
        }
        // The largest delta survives the round trip.
        let max = WindowUpdate {
            stream: u64::MAX,
            delta: u64::MAX,
        };
        let bytes = Bytes::from(encoded(max));
        let (f, _) = Frame::parse(&bytes).expect("ok").expect("whole");
        assert_eq!(WindowUpdate::parse(&f), Some(max));
    }

    #[test]
    fn metadata_values() {
        let p = FlowParams {
            window: 2 << 20,
            max_message: 4 << 20,
        };
        assert_eq!(p.to_metadata_value(), "1;w=2097152;m=4194304");
        assert_eq!(
            FlowParams::parse_metadata_value(&p.to_metadata_value()),
            Some(p)
        );
        assert_eq!(
            FlowParams::parse_metadata_value("1;m=4;x=y;w=3"),
            Some(FlowParams {
                window: 3,
                max_message: 4
            })
        );
        for bad in [
            "",
            "2;w=1;m=1",
            "1",
            "1;w=1",
            "1;w=0;m=1",
            "1;w=x;m=1",
            "1;w",
            "x;w=1;m=1",
        ] {
            assert_eq!(FlowParams::parse_metadata_value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn negotiation_packets() {
        let params = FlowParams {
            window: 150,
            max_message: 1,
        };
        let accept = FlowNegotiation::Accept(params, CompressionSet::EMPTY);
        let mut buf = Vec::new();
        accept.append_to(&mut buf, Id::new(5, 3));
        assert_eq!(buf, [0x93, 0x05, 0x03, 0x04, 0x01, 0x96, 0x01, 0x01]);
        let (f, _) = Frame::parse(&Bytes::from(buf)).expect("ok").expect("whole");
        assert!(f.control && f.done && f.kind == Kind::FLOW_NEGOTIATION);
        assert_eq!(FlowNegotiation::parse(&f.data), Some(accept));

        // With the compressions the server decompresses: one more varint.
        let snappy = CompressionSet::EMPTY.with(crate::Compression::Snappy);
        let accept = FlowNegotiation::Accept(params, snappy);
        let mut buf = Vec::new();
        accept.append_to(&mut buf, Id::new(5, 3));
        assert_eq!(buf, [0x93, 0x05, 0x03, 0x05, 0x01, 0x96, 0x01, 0x01, 0x01]);
        assert_eq!(FlowNegotiation::parse(&buf[4..]), Some(accept));
        // Bits this side does not know are kept, and ignored.
        let later = FlowNegotiation::parse(&[1, 1, 1, 0x81, 0x01]);
        let Some(FlowNegotiation::Accept(_, set)) = later else {
            panic!("an acceptance: {later:?}");
        };
        assert!(set.contains(crate::Compression::Snappy) && set.bits() == 0x81);

        let mut buf = Vec::new();
        FlowNegotiation::Gating.append_to(&mut buf, Id::new(5, 4));
        assert_eq!(buf, [0x93, 0x05, 0x04, 0x01, 0x02]);
        assert_eq!(FlowNegotiation::parse(&[2]), Some(FlowNegotiation::Gating));
        for bad in [
            &[][..],
            &[2, 0],
            &[1, 1],
            &[1, 0, 1],
            &[1, 1, 1, 1, 1],
            &[1, 1, 1, 0x80],
            &[3],
        ] {
            assert_eq!(FlowNegotiation::parse(bad), None, "{bad:?}");
        }
    }
}
