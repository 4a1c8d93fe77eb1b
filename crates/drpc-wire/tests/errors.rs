//! One test per protocol error and reassembly rule of the wire layer:
//! protocol.md §8 and §15, and the drpcwire items of the Go test catalogue
//! (semantics.md §13, items 8–25), ported.
//!
//! Go's `drpcwire.Reader` is one object; here a "sequential reader" is the
//! same pipeline built from this crate's parts: `FrameDecoder` (which also
//! refuses a single oversized frame from its header), `ConnectionIdOrder`
//! on every frame, and one `PacketAssembler` per stream. Differences from Go
//! that the tests pin: the declared length of a single frame is checked
//! against the maximum as soon as its header is readable
//! (`DataOverflow { len }` with that length), and a packet's control bit is
//! the OR of its frames' bits.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use drpc_wire::{
    ConnectionIdOrder, DEFAULT_MAX_PACKET_SIZE, Frame, FrameDecoder, FrameHead, FrameReader, Id,
    Kind, Packet, PacketAssembler, ReadError, WireError, append_frame, append_varint, read_varint,
};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn frame(stream: u64, message: u64, kind: Kind, done: bool, control: bool, data: &[u8]) -> Frame {
    Frame {
        id: Id::new(stream, message),
        kind,
        done,
        control,
        data: Bytes::copy_from_slice(data),
    }
}

fn msg(message: u64, done: bool, data: &[u8]) -> Frame {
    frame(1, message, Kind::MESSAGE, done, false, data)
}

fn close(message: u64) -> Frame {
    frame(1, message, Kind::CLOSE, true, false, b"")
}

fn packet(stream: u64, message: u64, kind: Kind, control: bool, data: &[u8]) -> Packet {
    Packet {
        id: Id::new(stream, message),
        kind,
        control,
        data: Bytes::copy_from_slice(data),
    }
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.append_to(&mut out);
    }
    out
}

/// The whole of Go's `drpcwire.Reader`, built from this crate's parts.
struct SequentialReader {
    decoder: FrameDecoder,
    order: ConnectionIdOrder,
    assemblers: HashMap<u64, PacketAssembler>,
    max: usize,
}

impl SequentialReader {
    fn new(max: usize) -> SequentialReader {
        SequentialReader {
            decoder: FrameDecoder::new(max),
            order: ConnectionIdOrder::new(),
            assemblers: HashMap::new(),
            max,
        }
    }

    /// Feeds one parsed frame: the id rule, then the stream's assembler.
    fn push(&mut self, frame: Frame) -> Result<Option<Packet>, WireError> {
        self.order.check(frame.id, frame.done)?;
        let max = self.max;
        self.assemblers
            .entry(frame.id.stream)
            .or_insert_with(|| PacketAssembler::new(max))
            .push(frame)
    }

    /// Reads everything from `bytes`: the packets before the first error,
    /// and that error. A clean end (Go's `io.EOF`) requires every byte to
    /// have been used.
    fn read_all(&mut self, bytes: &[u8]) -> (Vec<Packet>, Option<WireError>) {
        let mut buf = BytesMut::from(bytes);
        let mut packets = Vec::new();
        loop {
            let frame = match self.decoder.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    assert!(
                        buf.is_empty(),
                        "{} bytes left in a partial frame",
                        buf.len()
                    );
                    return (packets, None);
                }
                Err(e) => return (packets, Some(e)),
            };
            match self.push(frame) {
                Ok(Some(p)) => packets.push(p),
                Ok(None) => {}
                Err(e) => return (packets, Some(e)),
            }
        }
    }
}

fn read_frames(max: usize, frames: &[Frame]) -> (Vec<Packet>, Option<WireError>) {
    SequentialReader::new(max).read_all(&encode(frames))
}

/// Feeds frames straight to one assembler, up to the first error.
fn assemble(assembler: &mut PacketAssembler, frames: &[Frame]) -> (Vec<Packet>, Option<WireError>) {
    let mut packets = Vec::new();
    for f in frames {
        match assembler.push(f.clone()) {
            Ok(Some(p)) => packets.push(p),
            Ok(None) => {}
            Err(e) => return (packets, Some(e)),
        }
    }
    (packets, None)
}

/// A frame header announcing `len` data bytes, with no data.
fn header_only(stream: u64, message: u64, kind: Kind, done: bool, len: u64) -> Vec<u8> {
    let mut out = vec![drpc_wire::header_byte(kind, done, false)];
    append_varint(&mut out, stream);
    append_varint(&mut out, message);
    append_varint(&mut out, len);
    out
}

/// xorshift64*: a fixed-seed generator, so the "random" tests are
/// reproducible without the rand crate.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------
// Varints (catalogue 25, protocol.md §2)
// ---------------------------------------------------------------------------

#[test]
fn varint_too_long() {
    let err = read_varint(&[0x80; 10]).unwrap_err();
    assert_eq!(err, WireError::VarintTooLong);
    assert_eq!(err.to_string(), "protocol error: drpc: varint too long");
    // Nine continuation bytes are only incomplete; ff x9 7f is 2^64-1;
    // 80 00 is a non-minimal 0.
    assert_eq!(read_varint(&[0x80; 9]), Ok(None));
    let mut max = [0xff; 10];
    max[9] = 0x7f;
    assert_eq!(read_varint(&max), Ok(Some((u64::MAX, 10))));
    assert_eq!(read_varint(&[0x80, 0x00]), Ok(Some((0, 2))));
}

#[test]
fn varint_too_long_in_each_header_field() {
    let long = [0x80u8; 10];
    let heads: [Vec<u8>; 3] = [
        [&[0x05][..], &long].concat(),
        [&[0x05, 0x01][..], &long].concat(),
        [&[0x05, 0x01, 0x01][..], &long].concat(),
    ];
    for (field, bytes) in heads.iter().enumerate() {
        assert_eq!(
            FrameHead::parse(bytes),
            Err(WireError::VarintTooLong),
            "field {field}"
        );
        let mut buf = BytesMut::from(&bytes[..]);
        let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
        assert_eq!(err, WireError::VarintTooLong, "field {field}");
        assert_eq!(err.to_string(), "protocol error: drpc: varint too long");
        // One byte short is still "wait for more".
        let mut short = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert_eq!(
            FrameDecoder::default().decode(&mut short),
            Ok(None),
            "field {field}"
        );
    }
    // Three bytes never parse, whatever they are.
    assert_eq!(FrameHead::parse(&[0x05, 0x01, 0x01]), Ok(None));
}

// ---------------------------------------------------------------------------
// Reassembly (catalogue 8, 9, 10, 16)
// ---------------------------------------------------------------------------

#[test]
fn hello_world_reassembles_into_one_packet() {
    let frames = [
        msg(1, false, b"hello"),
        msg(1, false, b" "),
        msg(1, true, b"world"),
    ];
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, &frames);
    assert_eq!(err, None);
    assert_eq!(
        packets,
        [packet(1, 1, Kind::MESSAGE, false, b"hello world")]
    );
}

#[test]
fn control_bit_of_a_packet_is_the_or_of_its_frames() {
    let mut middle = msg(1, false, b" ");
    middle.control = true;
    let frames = [msg(1, false, b"hello"), middle, msg(1, true, b"world")];
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, &frames);
    assert_eq!(err, None);
    assert_eq!(packets, [packet(1, 1, Kind::MESSAGE, true, b"hello world")]);
}

#[test]
fn partial_packet_is_dropped_by_a_higher_id() {
    let frames = [msg(1, false, b"hello"), msg(1, false, b" "), close(2)];
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, &frames);
    assert_eq!(err, None);
    assert_eq!(packets, [packet(1, 2, Kind::CLOSE, false, b"")]);

    // The assembler alone behaves the same and holds nothing afterwards.
    let mut asm = PacketAssembler::default();
    assert_eq!(asm.push(msg(1, false, b"hello")), Ok(None));
    assert_eq!(asm.buffered(), 5);
    assert_eq!(
        asm.push(close(2)),
        Ok(Some(packet(1, 2, Kind::CLOSE, false, b"")))
    );
    assert_eq!(asm.buffered(), 0);
}

#[test]
fn control_partial_after_dropped_partial() {
    let frames = [
        msg(1, false, b"1"),
        close(2),
        frame(1, 3, Kind::MESSAGE, false, true, b"a"),
        msg(3, true, b"b"),
    ];
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, &frames);
    assert_eq!(err, None);
    assert_eq!(
        packets,
        [
            packet(1, 2, Kind::CLOSE, false, b""),
            packet(1, 3, Kind::MESSAGE, true, b"ab"),
        ]
    );
}

#[test]
fn gaps_in_message_ids_are_allowed() {
    let frames = [msg(1, true, b"a"), msg(7, true, b"b"), close(9)];
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, &frames);
    assert_eq!(err, None);
    let ids: Vec<u64> = packets.iter().map(|p| p.id.message).collect();
    assert_eq!(ids, [1, 7, 9]);
}

// ---------------------------------------------------------------------------
// Id monotonicity (catalogue 11, 18, 19, 20)
// ---------------------------------------------------------------------------

#[test]
fn lower_id_after_a_higher_packet_is_a_monotonicity_violation() {
    let frames = [msg(1, false, b"1"), close(2), msg(1, true, b"")];
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, &frames);
    assert_eq!(packets, [packet(1, 2, Kind::CLOSE, false, b"")]);
    let err = err.expect("violation");
    assert_eq!(
        err,
        WireError::IdMonotonicity {
            frame: Id::new(1, 1),
            last: Id::new(1, 3)
        }
    );
    assert_eq!(
        err.to_string(),
        "protocol error: id monotonicity violation (fr:<id s:1 m:1> r:<id s:1 m:3>)"
    );

    // The per-stream assembler alone catches it too, as a regression.
    let (packets, err) = assemble(&mut PacketAssembler::default(), &frames);
    assert_eq!(packets.len(), 1);
    let err = err.expect("regression");
    assert_eq!(
        err,
        WireError::MessageIdRegression {
            stream: 1,
            got: 1,
            expected: 3
        }
    );
    assert_eq!(
        err.to_string(),
        "protocol error: message id monotonicity violation on stream 1: got 1, expected >= 3"
    );
}

#[test]
fn repeated_id_after_completion_is_rejected() {
    let frames = [msg(1, true, b"1"), msg(1, true, b"2")];
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, &frames);
    assert_eq!(packets, [packet(1, 1, Kind::MESSAGE, false, b"1")]);
    let err = err.expect("violation");
    assert_eq!(
        err,
        WireError::IdMonotonicity {
            frame: Id::new(1, 1),
            last: Id::new(1, 2)
        }
    );
    assert_eq!(
        err.to_string(),
        "protocol error: id monotonicity violation (fr:<id s:1 m:1> r:<id s:1 m:2>)"
    );

    let (packets, err) = assemble(&mut PacketAssembler::default(), &frames);
    assert_eq!(packets.len(), 1);
    assert_eq!(
        err,
        Some(WireError::MessageIdRegression {
            stream: 1,
            got: 1,
            expected: 2
        })
    );
}

#[test]
fn first_frame_with_message_zero_is_rejected() {
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, &[msg(0, true, b"x")]);
    assert!(packets.is_empty());
    let err = err.expect("violation");
    assert_eq!(
        err,
        WireError::IdMonotonicity {
            frame: Id::new(1, 0),
            last: Id::new(1, 1)
        }
    );
    assert_eq!(
        err.to_string(),
        "protocol error: id monotonicity violation (fr:<id s:1 m:0> r:<id s:1 m:1>)"
    );

    // Message ids start at 1 for the per-stream assembler as well.
    let err = PacketAssembler::default()
        .push(msg(0, true, b"x"))
        .unwrap_err();
    assert_eq!(
        err,
        WireError::MessageIdRegression {
            stream: 1,
            got: 0,
            expected: 1
        }
    );
    assert_eq!(
        err.to_string(),
        "protocol error: message id monotonicity violation on stream 1: got 0, expected >= 1"
    );
}

#[test]
fn first_frame_on_stream_zero_is_rejected() {
    let first = frame(0, 1, Kind::MESSAGE, true, false, b"x");
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, &[first]);
    assert!(packets.is_empty());
    let err = err.expect("violation");
    assert_eq!(
        err,
        WireError::IdMonotonicity {
            frame: Id::new(0, 1),
            last: Id::new(1, 1)
        }
    );
    assert_eq!(
        err.to_string(),
        "protocol error: id monotonicity violation (fr:<id s:0 m:1> r:<id s:1 m:1>)"
    );
}

#[test]
fn higher_stream_may_start_at_any_message_id_but_older_streams_are_closed() {
    let mut reader = SequentialReader::new(DEFAULT_MAX_PACKET_SIZE);
    assert!(reader.push(msg(1, true, b"a")).expect("ok").is_some());
    // Message id 0 is fine on a higher stream for the connection rule...
    assert_eq!(reader.order.check(Id::new(2, 0), false), Ok(()));
    // ...and once stream 2 has been seen, stream 1 is closed for good.
    assert_eq!(
        reader.order.check(Id::new(1, 5), true),
        Err(WireError::IdMonotonicity {
            frame: Id::new(1, 5),
            last: Id::new(2, 0)
        })
    );
}

#[test]
fn message_id_regression_within_a_stream() {
    // Below the last completed packet + 1.
    let mut asm = PacketAssembler::default();
    assert!(asm.push(msg(3, true, b"x")).expect("ok").is_some());
    let err = asm.push(msg(2, true, b"y")).unwrap_err();
    assert_eq!(
        err,
        WireError::MessageIdRegression {
            stream: 1,
            got: 2,
            expected: 4
        }
    );
    assert_eq!(
        err.to_string(),
        "protocol error: message id monotonicity violation on stream 1: got 2, expected >= 4"
    );

    // Below the packet under assembly.
    let mut asm = PacketAssembler::default();
    assert_eq!(asm.push(msg(5, false, b"x")), Ok(None));
    assert_eq!(
        asm.push(msg(4, true, b"y")),
        Err(WireError::MessageIdRegression {
            stream: 1,
            got: 4,
            expected: 5
        })
    );

    // Interleaved streams are fine for per-stream assemblers; only the
    // connection-wide rule (sequential mode) refuses them.
    let mut a1 = PacketAssembler::default();
    let mut a2 = PacketAssembler::default();
    assert_eq!(
        a1.push(frame(1, 1, Kind::MESSAGE, false, false, b"a")),
        Ok(None)
    );
    assert_eq!(
        a2.push(frame(2, 1, Kind::MESSAGE, true, false, b"b"))
            .map(|p| p.is_some()),
        Ok(true)
    );
    assert_eq!(
        a1.push(frame(1, 1, Kind::MESSAGE, true, false, b"c")),
        Ok(Some(packet(1, 1, Kind::MESSAGE, false, b"ac")))
    );
}

#[test]
fn stream_mismatch() {
    let mut asm = PacketAssembler::for_stream(5, DEFAULT_MAX_PACKET_SIZE);
    assert_eq!(asm.stream_id(), Some(5));
    let err = asm
        .push(frame(6, 1, Kind::MESSAGE, true, false, b""))
        .unwrap_err();
    assert_eq!(
        err,
        WireError::StreamMismatch {
            got: 6,
            expected: 5
        }
    );
    assert_eq!(
        err.to_string(),
        "protocol error: frame stream mismatch: got stream 6, expected 5"
    );

    // An unbound assembler takes its stream from the first frame.
    let mut asm = PacketAssembler::default();
    assert_eq!(asm.stream_id(), None);
    assert!(
        asm.push(frame(3, 1, Kind::MESSAGE, true, false, b""))
            .expect("ok")
            .is_some()
    );
    assert_eq!(asm.stream_id(), Some(3));
    assert_eq!(
        asm.push(frame(4, 2, Kind::MESSAGE, true, false, b"")),
        Err(WireError::StreamMismatch {
            got: 4,
            expected: 3
        })
    );
}

// ---------------------------------------------------------------------------
// Kind change (catalogue 17)
// ---------------------------------------------------------------------------

#[test]
fn kind_change_inside_a_packet() {
    let frames = [
        msg(1, false, b""),
        frame(1, 1, Kind::CLOSE, false, false, b""),
    ];
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, &frames);
    assert!(packets.is_empty());
    let err = err.expect("kind change");
    assert_eq!(
        err,
        WireError::KindChange {
            frame: Kind::CLOSE,
            packet: Kind::MESSAGE
        }
    );
    assert_eq!(
        err.to_string(),
        "protocol error: packet kind change (fr:Close pkt:Message)"
    );

    // Unassigned kinds print as Go does.
    let nine = Kind::new(10).expect("in range");
    let mut asm = PacketAssembler::default();
    assert_eq!(asm.push(frame(1, 1, nine, false, true, b"")), Ok(None));
    let err = asm
        .push(frame(1, 1, Kind::INVOKE, true, false, b""))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "protocol error: packet kind change (fr:Invoke pkt:Kind(10))"
    );
}

// ---------------------------------------------------------------------------
// Data overflow (catalogue 12, 13, 14, 15)
// ---------------------------------------------------------------------------

#[test]
fn single_frame_over_the_default_limit_is_refused_from_its_header() {
    const LEN: u64 = (4 << 20) + 29;
    // The header alone is enough: no data needs to arrive.
    let mut buf = BytesMut::from(&header_only(1, 1, Kind::MESSAGE, true, LEN)[..]);
    let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
    assert_eq!(err, WireError::DataOverflow { len: 4_194_333 });
    assert_eq!(
        err.to_string(),
        "protocol error: data overflow (len:4194333)"
    );

    // With all the data present, the same.
    let big = msg(1, true, &vec![0u8; LEN as usize]);
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, std::slice::from_ref(&big));
    assert!(packets.is_empty());
    assert_eq!(err, Some(WireError::DataOverflow { len: 4_194_333 }));

    // A frame handed straight to the assembler is checked as well.
    assert_eq!(
        PacketAssembler::default().push(big),
        Err(WireError::DataOverflow { len: 4_194_333 })
    );
}

#[test]
fn exactly_the_default_limit_is_accepted() {
    let frames = [msg(1, true, &vec![7u8; DEFAULT_MAX_PACKET_SIZE])];
    let (packets, err) = read_frames(DEFAULT_MAX_PACKET_SIZE, &frames);
    assert_eq!(err, None);
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].data.len(), 4 << 20);
}

#[test]
fn single_frame_over_a_limit_of_1000() {
    let mut buf = BytesMut::from(&header_only(1, 1, Kind::MESSAGE, true, 1029)[..]);
    let err = FrameDecoder::new(1000).decode(&mut buf).unwrap_err();
    assert_eq!(err, WireError::DataOverflow { len: 1029 });
    assert_eq!(err.to_string(), "protocol error: data overflow (len:1029)");

    let (_, err) = read_frames(1000, &[msg(1, true, &[1u8; 1029])]);
    assert_eq!(err, Some(WireError::DataOverflow { len: 1029 }));
    assert_eq!(
        PacketAssembler::new(1000).push(msg(1, true, &[1u8; 1029])),
        Err(WireError::DataOverflow { len: 1029 })
    );
}

#[test]
fn ten_thousand_one_kib_frames_overflow_the_default_limit() {
    let chunk = Bytes::from(vec![0xabu8; 1024]);
    let mut wire = BytesMut::new();
    for i in 0..10_240 {
        let done = i == 10_239;
        append_frame(&mut wire, Id::new(1, 1), Kind::MESSAGE, done, false, &chunk);
    }
    let (packets, err) = SequentialReader::new(DEFAULT_MAX_PACKET_SIZE).read_all(&wire);
    assert!(packets.is_empty());
    // 4096 frames make exactly 4 MiB; the 4097th is one KiB too many.
    let err = err.expect("overflow");
    assert_eq!(err, WireError::DataOverflow { len: 4097 * 1024 });
    assert_eq!(
        err.to_string(),
        "protocol error: data overflow (len:4195328)"
    );
}

#[test]
fn frames_of_500_400_100_29_overflow_a_limit_of_1000() {
    let frames = [
        msg(1, false, &[1u8; 500]),
        msg(1, false, &[2u8; 400]),
        msg(1, false, &[3u8; 100]),
        msg(1, true, &[4u8; 29]),
    ];
    let (packets, err) = read_frames(1000, &frames);
    assert!(packets.is_empty());
    let err = err.expect("overflow");
    assert_eq!(err, WireError::DataOverflow { len: 1029 });
    assert_eq!(err.to_string(), "protocol error: data overflow (len:1029)");

    // 500 + 400 + 100 is exactly the limit, which is accepted.
    let mut asm = PacketAssembler::new(1000);
    assert_eq!(asm.push(frames[0].clone()), Ok(None));
    assert_eq!(asm.push(frames[1].clone()), Ok(None));
    let last = msg(1, true, &[3u8; 100]);
    let p = asm.push(last).expect("ok").expect("packet");
    assert_eq!(p.data.len(), 1000);
    assert_eq!(&p.data[..500], &[1u8; 500][..]);
    assert_eq!(&p.data[900..], &[3u8; 100][..]);
}

// ---------------------------------------------------------------------------
// Random traffic (catalogue 21)
// ---------------------------------------------------------------------------

#[test]
fn thousand_random_frames_come_back_as_their_packets() {
    let mut rng = Prng(0x9e37_79b9_7f4a_7c15);
    let mut frames = Vec::new();
    let mut expected: Vec<Vec<u8>> = vec![Vec::new()];
    let mut message = 1;
    for i in 0..1000 {
        let len = rng.below(8192) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // The last frame is always done so that every packet completes.
        let done = i == 999 || rng.below(2) == 0;
        expected
            .last_mut()
            .expect("current packet")
            .extend_from_slice(&data);
        frames.push(msg(message, done, &data));
        if done {
            message += 1;
            expected.push(Vec::new());
        }
    }
    expected.pop();

    let wire = encode(&frames);
    let (packets, err) = SequentialReader::new(DEFAULT_MAX_PACKET_SIZE).read_all(&wire);
    assert_eq!(err, None);
    assert_eq!(packets.len(), expected.len());
    for (i, (p, data)) in packets.iter().zip(&expected).enumerate() {
        assert_eq!(p.id, Id::new(1, i as u64 + 1), "packet {i}");
        assert_eq!(p.kind, Kind::MESSAGE, "packet {i}");
        assert!(p.data == data[..], "packet {i}: data differs");
    }
}

// ---------------------------------------------------------------------------
// FrameReader over tokio I/O (catalogue 22, protocol.md §8.4)
// ---------------------------------------------------------------------------

/// A transport that hands out its bytes `step` at a time, then EOF.
struct Scripted {
    data: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .step
            .min(buf.remaining())
            .min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

fn scripted(data: Vec<u8>, step: usize) -> Scripted {
    Scripted { data, at: 0, step }
}

#[tokio::test]
async fn reader_returns_a_complete_frame_then_clean_eof() {
    let f = msg(1, true, b"hello");
    // The whole frame in one read, and the next read is EOF.
    let mut reader = FrameReader::new(
        scripted(encode(std::slice::from_ref(&f)), usize::MAX),
        1 << 20,
    );
    assert_eq!(reader.read_frame().await.expect("frame"), Some(f.clone()));
    assert_eq!(reader.read_frame().await.expect("clean end"), None);
    assert_eq!(reader.buffered(), 0);

    // The same over a duplex pipe whose writer closes right after.
    let (mut tx, rx) = tokio::io::duplex(64);
    tx.write_all(&encode(std::slice::from_ref(&f)))
        .await
        .expect("write");
    drop(tx);
    let mut reader = FrameReader::new(rx, 1 << 20);
    assert_eq!(reader.read_frame().await.expect("frame"), Some(f));
    assert_eq!(reader.read_frame().await.expect("clean end"), None);
}

#[tokio::test]
async fn reader_reassembles_frames_delivered_a_byte_at_a_time() {
    let frames = [
        frame(1, 1, Kind::INVOKE, true, false, b"/service.Service/Method1"),
        msg(2, false, &[9u8; 300]),
        msg(2, true, b"tail"),
        frame(1, 3, Kind::CANCEL, true, true, b""),
    ];
    let mut reader = FrameReader::new(scripted(encode(&frames), 1), 1 << 20);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(
            reader.read_frame().await.expect("read").as_ref(),
            Some(f),
            "frame {i}"
        );
    }
    assert_eq!(reader.read_frame().await.expect("clean end"), None);
}

#[tokio::test]
async fn reader_eof_in_the_middle_of_a_frame() {
    let whole = encode(&[msg(1, true, b"hello")]);
    // Cut inside the header, and inside the data.
    for cut in [2, 4, whole.len() - 1] {
        let mut reader = FrameReader::new(scripted(whole[..cut].to_vec(), 3), 1 << 20);
        match reader.read_frame().await {
            Err(ReadError::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
                assert_eq!(e.to_string(), "transport closed in the middle of a frame");
            }
            other => panic!("cut at {cut}: expected UnexpectedEof, got {other:?}"),
        }
    }

    // After a complete frame, a partial one is still an error.
    let mut bytes = encode(&[msg(1, true, b"a")]);
    bytes.extend_from_slice(&whole[..5]);
    let mut reader = FrameReader::new(scripted(bytes, usize::MAX), 1 << 20);
    assert!(reader.read_frame().await.expect("first frame").is_some());
    assert!(
        matches!(reader.read_frame().await, Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof)
    );
}

#[tokio::test]
async fn reader_reports_protocol_errors_without_waiting_for_data() {
    // The writer stays open: if the reader waited for the 1029 data bytes
    // this would hang, so the refusal comes from the header alone.
    let (mut tx, rx) = tokio::io::duplex(64);
    tx.write_all(&header_only(1, 1, Kind::MESSAGE, true, 1029))
        .await
        .expect("write");
    let mut reader = FrameReader::new(rx, 1000);
    match reader.read_frame().await {
        Err(ReadError::Protocol(e)) => {
            assert_eq!(e, WireError::DataOverflow { len: 1029 });
            assert_eq!(
                ReadError::Protocol(e).to_string(),
                "protocol error: data overflow (len:1029)"
            );
        }
        other => panic!("expected a data overflow, got {other:?}"),
    }

    let mut bytes = vec![0x05];
    bytes.extend_from_slice(&[0xff; 10]);
    let mut reader = FrameReader::new(scripted(bytes, 4), 1 << 20);
    match reader.read_frame().await {
        Err(ReadError::Protocol(e)) => assert_eq!(e, WireError::VarintTooLong),
        other => panic!("expected varint too long, got {other:?}"),
    }
    drop(tx);
}

// ---------------------------------------------------------------------------
// Overflow guards: lengths near usize::MAX
// ---------------------------------------------------------------------------

/// `FrameDecoder::decode` computes `header_len + data_len as usize` without
/// overflow checks: with a maximum of `usize::MAX` ("no limit"), a header
/// announcing ~2^64 bytes panics ("attempt to add with overflow" in debug,
/// "capacity overflow"/"cannot advance past remaining" in release) instead
/// of returning an error or waiting.
#[test]
fn huge_declared_length_with_an_unbounded_decoder_does_not_panic() {
    for len in [u64::MAX, u64::MAX - 100] {
        let mut buf = BytesMut::from(&header_only(1, 1, Kind::MESSAGE, true, len)[..]);
        let result =
            std::panic::catch_unwind(move || FrameDecoder::new(usize::MAX).decode(&mut buf));
        assert!(
            result.is_ok(),
            "decode panicked for a declared length of {len}"
        );
    }
}

/// `packet_encoded_len` evaluates `header_len(id, limit) + limit` with
/// `limit == usize::MAX` for kinds that are never split (Error, Cancel,
/// Close, CloseSend, unassigned kinds) and for `split_size == usize::MAX`:
/// that addition overflows and panics in debug builds, even though it is
/// then multiplied by zero full frames.
#[test]
fn packet_encoded_len_of_unsplit_packet() {
    let id = Id::new(1, 1);
    for (kind, split) in [
        (Kind::CLOSE, 0),
        (Kind::ERROR, 1),
        (Kind::MESSAGE, usize::MAX),
    ] {
        let data = [0u8; 12];
        let mut buf = Vec::new();
        drpc_wire::append_packet(&mut buf, id, kind, false, &data, split);
        let len =
            std::panic::catch_unwind(|| drpc_wire::packet_encoded_len(id, kind, data.len(), split));
        assert_eq!(len.ok(), Some(buf.len()), "{kind} split {split}");
    }
}
