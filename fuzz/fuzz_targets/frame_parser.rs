//! Fuzzes the read path: bytes → [`FrameDecoder`] → per-stream
//! [`PacketAssembler`]s (and [`ConnectionIdOrder`] in sequential mode).
//!
//! The first input byte is a seed:
//!
//! * bits 0..=3: the size of the chunks the rest is fed in (1 byte to all
//!   at once), to exercise incomplete headers and data;
//! * bits 4..=5: the maximum packet size (16 B, 256 B, 4 KiB, 64 KiB);
//! * bit 6: check ids with [`ConnectionIdOrder`] too;
//! * bit 7: the split size used to re-encode assembled packets (64 KiB or
//!   7 bytes).
//!
//! Everything stops at the first error, as a connection would. Checked:
//!
//! * the decoder agrees with [`Frame::parse`] / [`FrameHead::parse`] on the
//!   same bytes: same frame, same length, same error, same "need more";
//! * a decoded frame is never larger than the maximum; re-encoding it gives
//!   its header byte and a frame that decodes back to itself;
//! * when the decoder needs more bytes of a known frame, the buffer has the
//!   capacity for it;
//! * each assembler behaves like a plain model of the documented rules
//!   (same packets, same errors, same buffered length); packets are within
//!   the maximum, one-frame packets are not copied, and a packet re-encoded
//!   with [`append_packet`] decodes and assembles back to itself;
//! * in sequential mode, accepted ids never go back nor repeat a completed
//!   id.

#![no_main]

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use drpc_wire::{
    ConnectionIdOrder, Frame, FrameDecoder, FrameHead, Id, Kind, MAX_HEADER_LEN, Packet,
    PacketAssembler, WireError, append_packet, packet_encoded_len,
};
use libfuzzer_sys::fuzz_target;

/// Stop once a connection has this many streams.
const MAX_STREAMS: usize = 1024;

const CHUNK_SIZES: [usize; 16] = [
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    13,
    16,
    31,
    64,
    127,
    256,
    1024,
    4096,
    usize::MAX,
];

const MAX_PACKET_SIZES: [usize; 4] = [16, 256, 4096, 64 * 1024];

struct Config {
    chunk: usize,
    max: usize,
    connection_order: bool,
    split_size: usize,
}

impl Config {
    fn from_seed(seed: u8) -> Config {
        Config {
            chunk: CHUNK_SIZES[usize::from(seed & 0x0f)],
            max: MAX_PACKET_SIZES[usize::from((seed >> 4) & 0x03)],
            connection_order: seed & 0x40 != 0,
            split_size: if seed & 0x80 != 0 { 7 } else { 0 },
        }
    }
}

/// The assembler rules of `PacketAssembler`'s documentation, written out
/// plainly, data always copied.
struct Model {
    /// The lowest acceptable message id; `None` once `u64::MAX` completed.
    min: Option<u64>,
    partial: Option<ModelPartial>,
}

struct ModelPartial {
    message: u64,
    kind: Kind,
    control: bool,
    data: Vec<u8>,
    frames: usize,
}

impl Model {
    fn new() -> Model {
        Model {
            min: Some(1),
            partial: None,
        }
    }

    fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.data.len())
    }

    /// Returns the completed packet and how many frames it was built from.
    fn push(&mut self, f: &Frame, max: usize) -> Result<Option<(Packet, usize)>, WireError> {
        match self.min {
            Some(min) if f.id.message >= min => {}
            _ => {
                return Err(WireError::MessageIdRegression {
                    stream: f.id.stream,
                    got: f.id.message,
                    expected: self.min.unwrap_or(u64::MAX),
                });
            }
        }
        match &mut self.partial {
            Some(p) if p.message == f.id.message => {
                if p.kind != f.kind {
                    return Err(WireError::KindChange {
                        frame: f.kind,
                        packet: p.kind,
                    });
                }
                let len = p.data.len() as u64 + f.data.len() as u64;
                if len > max as u64 {
                    return Err(WireError::DataOverflow { len });
                }
                p.data.extend_from_slice(&f.data);
                p.control |= f.control;
                p.frames += 1;
            }
            _ => {
                if f.data.len() > max {
                    return Err(WireError::DataOverflow {
                        len: f.data.len() as u64,
                    });
                }
                self.min = Some(f.id.message);
                self.partial = Some(ModelPartial {
                    message: f.id.message,
                    kind: f.kind,
                    control: f.control,
                    data: f.data.to_vec(),
                    frames: 1,
                });
            }
        }
        if !f.done {
            return Ok(None);
        }
        let p = self
            .partial
            .take()
            .expect("the frame started or continued it");
        self.min = p.message.checked_add(1);
        let packet = Packet {
            id: Id::new(f.id.stream, p.message),
            kind: p.kind,
            control: p.control,
            data: Bytes::from(p.data),
        };
        Ok(Some((packet, p.frames)))
    }
}

struct Connection {
    cfg: Config,
    decoder: FrameDecoder,
    streams: HashMap<u64, (PacketAssembler, Model)>,
    order: Option<ConnectionIdOrder>,
    last_accepted: Id,
    last_done: Option<Id>,
}

impl Connection {
    /// Routes one decoded frame; `Err` ends the connection.
    fn handle(&mut self, frame: Frame) -> Result<(), ()> {
        if let Some(order) = &mut self.order {
            match order.check(frame.id, frame.done) {
                Ok(()) => {}
                Err(WireError::IdMonotonicity { frame: id, .. }) => {
                    assert_eq!(id, frame.id);
                    return Err(());
                }
                Err(e) => panic!("unexpected id order error: {e}"),
            }
        }

        let stream = frame.id.stream;
        if !self.streams.contains_key(&stream) && self.streams.len() >= MAX_STREAMS {
            return Err(());
        }
        let max = self.cfg.max;
        let (asm, model) = self
            .streams
            .entry(stream)
            .or_insert_with(|| (PacketAssembler::new(max), Model::new()));

        let frame_ptr = frame.data.as_ptr();
        let got = asm.push(frame.clone());
        let want = model.push(&frame, max);
        assert_eq!(
            got.clone(),
            want.clone().map(|p| p.map(|(packet, _)| packet)),
            "assembler and model disagree on {frame:?}"
        );
        assert_eq!(asm.stream_id(), Some(stream));
        if got.is_err() {
            return Err(());
        }
        assert_eq!(asm.buffered(), model.buffered());

        if self.order.is_some() {
            // Both rules accepted the frame: it neither goes back nor
            // repeats a completed packet's id.
            assert!(
                frame.id >= self.last_accepted,
                "{frame:?} after {:?}",
                self.last_accepted
            );
            if let Some(done) = self.last_done {
                assert!(frame.id > done, "{frame:?} after completed {done:?}");
            }
            self.last_accepted = frame.id;
            if frame.done {
                self.last_done = Some(frame.id);
            }
        }

        if let (Ok(Some(packet)), Ok(Some((_, frames)))) = (got, want) {
            self.check_packet(&packet, frames, frame_ptr);
        }
        Ok(())
    }

    fn check_packet(&self, packet: &Packet, frames: usize, last_frame_ptr: *const u8) {
        assert!(packet.data.len() <= self.cfg.max);
        if frames == 1 && !packet.data.is_empty() {
            assert_eq!(
                packet.data.as_ptr(),
                last_frame_ptr,
                "one-frame packet was copied"
            );
        }

        let split = self.cfg.split_size;
        let mut wire = BytesMut::new();
        append_packet(
            &mut wire,
            packet.id,
            packet.kind,
            packet.control,
            &packet.data,
            split,
        );
        assert_eq!(
            wire.len(),
            packet_encoded_len(packet.id, packet.kind, packet.data.len(), split)
        );
        let mut asm = PacketAssembler::new(self.cfg.max);
        let mut out = None;
        while let Some(f) = self
            .decoder
            .decode(&mut wire)
            .expect("re-encoded packet decodes")
        {
            assert!(out.is_none(), "frames after the done frame");
            out = asm.push(f).expect("re-encoded packet assembles");
        }
        assert!(wire.is_empty());
        assert_eq!(out.as_ref(), Some(packet));
    }
}

/// Checks a frame the decoder produced against `Frame::parse` on the same
/// bytes of the stream, and its re-encoding.
fn check_frame(decoder: &FrameDecoder, frame: &Frame, stream_bytes: &Bytes, consumed: &mut usize) {
    let rest = stream_bytes.slice(*consumed..);
    let (parsed, used) = Frame::parse(&rest)
        .expect("Frame::parse accepts what the decoder accepted")
        .expect("Frame::parse sees the whole frame");
    assert_eq!(&parsed, frame);
    assert_eq!(
        rest[0],
        frame.header_byte(),
        "header byte does not round trip"
    );
    *consumed += used;

    assert!(frame.data.len() <= decoder.max_packet_size());

    let mut wire = BytesMut::new();
    frame.append_to(&mut wire);
    assert_eq!(wire.len(), frame.encoded_len());
    // Re-encoding uses minimal varints, never more bytes than the original.
    assert!(wire.len() <= used);
    let again = decoder
        .decode(&mut wire)
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is complete");
    assert_eq!(&again, frame);
    assert!(wire.is_empty());
}

/// The decoder asked for more bytes: the header parser must agree.
fn check_incomplete(buf: &BytesMut, max: usize) {
    match FrameHead::parse(buf) {
        Ok(None) => assert!(buf.len() < MAX_HEADER_LEN),
        Ok(Some(head)) => {
            assert!(head.data_len <= max as u64);
            let total = head.header_len + head.data_len as usize;
            assert!(buf.len() < total);
            assert!(buf.capacity() >= total, "no room reserved for the frame");
        }
        Err(e) => panic!("decoder wants more bytes but the header is invalid: {e}"),
    }
}

/// The decoder failed: the header parser must explain why.
fn check_error(buf: &BytesMut, err: WireError, max: usize) {
    match err {
        WireError::VarintTooLong => {
            assert_eq!(FrameHead::parse(buf), Err(WireError::VarintTooLong));
        }
        WireError::DataOverflow { len } => {
            let head = FrameHead::parse(buf)
                .expect("overflowing header parses")
                .expect("overflowing header is complete");
            assert_eq!(head.data_len, len);
            assert!(len > max as u64);
        }
        other => panic!("unexpected decoder error: {other}"),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&seed, data)) = input.split_first() else {
        return;
    };
    let cfg = Config::from_seed(seed);
    let decoder = FrameDecoder::new(cfg.max);
    let stream_bytes = Bytes::copy_from_slice(data);
    let mut conn = Connection {
        order: cfg.connection_order.then(ConnectionIdOrder::new),
        cfg,
        decoder: decoder.clone(),
        streams: HashMap::new(),
        last_accepted: Id::new(1, 1),
        last_done: None,
    };

    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut consumed = 0;
    for chunk in data.chunks(conn.cfg.chunk) {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    check_frame(&decoder, &frame, &stream_bytes, &mut consumed);
                    assert_eq!(buf.len(), fed - consumed);
                    if conn.handle(frame).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    check_incomplete(&buf, conn.cfg.max);
                    break;
                }
                Err(e) => {
                    check_error(&buf, e, conn.cfg.max);
                    return;
                }
            }
        }
    }
    // Everything was fed and the decoder wants more: so does Frame::parse.
    assert_eq!(&buf[..], &stream_bytes[consumed..]);
    assert_eq!(Frame::parse(&stream_bytes.slice(consumed..)), Ok(None));
});
