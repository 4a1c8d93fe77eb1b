//! The coalescing [`FrameReader`]: joining a large message's frames must
//! never change what the per-stream assemblers make of the connection.
//!
//! For arbitrary frame sequences (well-formed interleaved packets, and
//! arbitrary frames), read from a transport that hands out its bytes in
//! arbitrary chunks, and even with the read future dropped whenever it is
//! pending, the packets and the first error the assemblers report are those
//! of the frames as written.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use drpc_wire::{
    COALESCE_MIN, ConnectionIdOrder, Frame, FrameReader, Id, Kind, Packet, PacketAssembler,
    ReadError, WireError, split_frames,
};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

/// A transport handing out its bytes in chunks of the given sizes (cycled),
/// pending before every other chunk when `stutter` is set, then EOF.
struct Chunked {
    data: Bytes,
    chunks: Vec<usize>,
    next: usize,
    stutter: bool,
    pending: bool,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stutter {
            self.pending = !self.pending;
            if self.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        let step = self.chunks[self.next % self.chunks.len()];
        self.next += 1;
        let n = step.min(buf.remaining()).min(self.data.len());
        let chunk = self.data.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// How reading ended.
#[derive(Debug, PartialEq)]
enum End {
    Clean,
    Protocol(WireError),
    Eof,
}

/// Reads every frame; with `drop_pending`, a fresh `read_frame` future is
/// made after every pending poll, the old one dropped.
fn read_all(mut reader: FrameReader<Chunked>, drop_pending: bool) -> (Vec<Frame>, End) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut frames = Vec::new();
    loop {
        let result = if drop_pending {
            loop {
                let fut = pin!(reader.read_frame());
                if let Poll::Ready(r) = fut.poll(&mut cx) {
                    break r;
                }
            }
        } else {
            let mut fut = pin!(reader.read_frame());
            loop {
                if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
                    break r;
                }
            }
        };
        match result {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, End::Clean),
            Err(ReadError::Protocol(e)) => return (frames, End::Protocol(e)),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return (frames, End::Eof);
            }
            Err(e) => panic!("unexpected read error {e:?}"),
        }
    }
}

/// Packets and the first error of per-stream assembly, and of the
/// connection-wide id rule when `order` is set.
fn assemble(frames: &[Frame], max: usize, order: bool) -> (Vec<Packet>, Option<WireError>) {
    let mut ids = ConnectionIdOrder::new();
    let mut assemblers: HashMap<u64, PacketAssembler> = HashMap::new();
    let mut packets = Vec::new();
    for frame in frames {
        if order && let Err(e) = ids.check(frame.id, frame.done) {
            return (packets, Some(e));
        }
        let assembler = assemblers
            .entry(frame.id.stream)
            .or_insert_with(|| PacketAssembler::for_stream(frame.id.stream, max));
        match assembler.push(frame.clone()) {
            Ok(Some(packet)) => packets.push(packet),
            Ok(None) => {}
            Err(e) => return (packets, Some(e)),
        }
    }
    (packets, None)
}

fn encode(frames: &[Frame]) -> Bytes {
    let mut out = BytesMut::new();
    for f in frames {
        f.append_to(&mut out);
    }
    out.freeze()
}

fn pattern(seed: u64, len: usize) -> Bytes {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

/// A data length: empty, small, or large enough to start a join.
fn data_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        1usize..200,
        COALESCE_MIN - 1..COALESCE_MIN + 1,
        COALESCE_MIN..70_000,
    ]
}

/// Well-formed packets of a few streams, split into frames and interleaved
/// packet by packet or frame by frame, with an occasional frame altered
/// (control bit, kind, done) to break the rules.
fn interleaved_frames() -> impl Strategy<Value = Vec<Frame>> {
    (
        vec(
            (
                1u64..4,
                prop_oneof![Just(Kind::MESSAGE), Just(Kind::INVOKE), Just(Kind::ERROR)],
                prop_oneof![0usize..300_000, Just(0)],
                prop_oneof![Just(0usize), Just(16_384), Just(20_000), 1usize..100_000],
            ),
            1..6,
        ),
        vec(any::<u8>(), 0..40),
        vec((any::<prop::sample::Index>(), 0u8..4), 0..3),
    )
        .prop_map(|(packets, order, alterations)| {
            let mut next_message: HashMap<u64, u64> = HashMap::new();
            let mut queues: Vec<Vec<Frame>> = packets
                .into_iter()
                .map(|(stream, kind, len, split)| {
                    let message = next_message.entry(stream).or_insert(0);
                    *message += 1;
                    let id = Id::new(stream, *message);
                    split_frames(
                        id,
                        kind,
                        false,
                        pattern(id.message ^ stream << 8, len),
                        split,
                    )
                    .collect()
                })
                .collect();
            // Packets of one stream keep their order; streams interleave.
            let mut frames = Vec::new();
            let mut choices = order.into_iter().cycle();
            while queues.iter().any(|q| !q.is_empty()) {
                let live: Vec<usize> = (0..queues.len())
                    .filter(|&i| !queues[i].is_empty())
                    .filter(|&i| {
                        let stream = queues[i][0].id.stream;
                        !queues[..i]
                            .iter()
                            .any(|q| q.first().is_some_and(|f| f.id.stream == stream))
                    })
                    .collect();
                let pick = live[choices.next().unwrap_or(0) as usize % live.len()];
                frames.push(queues[pick].remove(0));
            }
            for (index, what) in alterations {
                if frames.is_empty() {
                    break;
                }
                let at = index.index(frames.len());
                let f = &mut frames[at];
                match what {
                    0 => f.control = true,
                    1 => f.kind = Kind::INVOKE,
                    2 => f.done = !f.done,
                    _ => f.id.message += 1,
                }
            }
            frames
        })
}

/// Arbitrary frames of two streams, large ones likely.
fn arbitrary_frames() -> impl Strategy<Value = Vec<Frame>> {
    vec(
        (
            1u64..3,
            1u64..4,
            prop_oneof![Just(Kind::MESSAGE), Just(Kind::INVOKE)],
            any::<bool>(),
            prop::bool::weighted(0.1),
            data_len(),
        ),
        0..12,
    )
    .prop_map(|frames| {
        frames
            .into_iter()
            .map(|(stream, message, kind, done, control, len)| Frame {
                id: Id::new(stream, message),
                kind,
                done,
                control,
                data: pattern(stream * 7 + message, len),
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn coalescing_changes_no_packet_and_no_error(
        frames in prop_oneof![interleaved_frames(), arbitrary_frames()],
        chunks in vec(prop_oneof![1usize..100, 100usize..70_000], 1..6),
        max in prop_oneof![Just(4usize << 20), 30_000usize..150_000],
        truncate in prop_oneof![Just(None), (0usize..100).prop_map(Some)],
        order in any::<bool>(),
        drop_pending in any::<bool>(),
        min in prop_oneof![Just(COALESCE_MIN), 0usize..64],
    ) {
        let mut bytes = encode(&frames);
        if let Some(cut) = truncate {
            bytes.truncate(bytes.len().saturating_sub(cut));
        }
        let transport = |stutter| Chunked {
            data: bytes.clone(),
            chunks: chunks.clone(),
            next: 0,
            stutter,
            pending: false,
        };
        let (plain, plain_end) = read_all(FrameReader::new(transport(false), max), false);
        let (joined, joined_end) =
            read_all(
                FrameReader::coalescing(transport(drop_pending), max).coalesce_min(min),
                drop_pending,
            );

        prop_assert_eq!(&joined_end, &plain_end);
        prop_assert!(joined.len() <= plain.len());
        for frame in &joined {
            prop_assert!(frame.data.len() <= max);
        }
        let (plain_packets, plain_err) = assemble(&plain, max, order);
        let (joined_packets, joined_err) = assemble(&joined, max, order);
        // The same error, at the same point: only the length a
        // DataOverflow reports may be larger, as a joined frame can carry
        // the packet past the limit by more than the frame that first
        // crossed it.
        match (joined_err, plain_err) {
            (
                Some(WireError::DataOverflow { len: joined_len }),
                Some(WireError::DataOverflow { len: plain_len }),
            ) => {
                prop_assert!(joined_len >= plain_len);
                prop_assert!(plain_len > max as u64);
            }
            (joined_err, plain_err) => prop_assert_eq!(joined_err, plain_err),
        }
        prop_assert_eq!(joined_packets, plain_packets);
    }
}

#[test]
fn a_large_message_arrives_as_one_frame_and_the_next_frame_follows() {
    let data = pattern(1, (1 << 20) + 5);
    let mut frames: Vec<Frame> =
        split_frames(Id::new(1, 1), Kind::MESSAGE, false, data.clone(), 0).collect();
    assert_eq!(frames.len(), 17);
    frames.push(Frame {
        id: Id::new(3, 1),
        kind: Kind::INVOKE,
        done: true,
        control: false,
        data: Bytes::from_static(b"rpc"),
    });
    let reader = FrameReader::coalescing(
        Chunked {
            data: encode(&frames),
            chunks: vec![1000, 70_000, 3],
            next: 0,
            stutter: false,
            pending: false,
        },
        4 << 20,
    );
    let (got, end) = read_all(reader, false);
    assert_eq!(end, End::Clean);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, Id::new(1, 1));
    assert!(got[0].done);
    assert_eq!(got[0].data, data);
    assert_eq!(got[1], frames[17]);
}

#[test]
fn interleaved_frames_are_joined_only_while_consecutive() {
    let a = pattern(1, 100_000);
    let b = pattern(2, 40_000);
    let mut a_frames: Vec<Frame> =
        split_frames(Id::new(1, 1), Kind::MESSAGE, false, a.clone(), 20_000).collect();
    let b_frames: Vec<Frame> =
        split_frames(Id::new(3, 1), Kind::MESSAGE, false, b.clone(), 20_000).collect();
    // a a b b a a a
    let mut wire = a_frames.drain(..2).collect::<Vec<_>>();
    wire.extend(b_frames);
    wire.extend(a_frames);
    let reader = FrameReader::coalescing(
        Chunked {
            data: encode(&wire),
            chunks: vec![usize::MAX],
            next: 0,
            stutter: false,
            pending: false,
        },
        4 << 20,
    );
    let (got, end) = read_all(reader, false);
    assert_eq!(end, End::Clean);
    let shape: Vec<(u64, usize, bool)> = got
        .iter()
        .map(|f| (f.id.stream, f.data.len(), f.done))
        .collect();
    assert_eq!(
        shape,
        [(1, 40_000, false), (3, 40_000, true), (1, 60_000, true)]
    );
    let (packets, err) = assemble(&got, 4 << 20, false);
    assert_eq!(err, None);
    assert_eq!(packets[0].data, b);
    assert_eq!(packets[1].data, a);
}

#[test]
fn a_join_stops_short_of_the_limit_so_the_assembler_reports_the_overflow() {
    let data = pattern(1, 100_000);
    let frames: Vec<Frame> =
        split_frames(Id::new(1, 1), Kind::MESSAGE, false, data.clone(), 30_000).collect();
    let reader = FrameReader::coalescing(
        Chunked {
            data: encode(&frames),
            chunks: vec![usize::MAX],
            next: 0,
            stutter: false,
            pending: false,
        },
        70_000,
    );
    let (got, end) = read_all(reader, false);
    assert_eq!(end, End::Clean);
    assert_eq!(
        got.iter().map(|f| f.data.len()).collect::<Vec<_>>(),
        [60_000, 40_000]
    );
    let (_, err) = assemble(&got, 70_000, false);
    assert_eq!(err, Some(WireError::DataOverflow { len: 100_000 }));
}

#[test]
fn the_end_of_the_transport_after_an_unfinished_join_hands_it_out_first() {
    let data = pattern(1, 50_000);
    let frames: Vec<Frame> =
        split_frames(Id::new(1, 1), Kind::MESSAGE, false, data.clone(), 20_000)
            .take(2)
            .collect();
    let mut bytes = BytesMut::from(&encode(&frames)[..]);
    let clean = bytes.clone().freeze();
    let chunked = |data| Chunked {
        data,
        chunks: vec![7, 50_000],
        next: 0,
        stutter: false,
        pending: false,
    };
    let (got, end) = read_all(FrameReader::coalescing(chunked(clean), 1 << 20), false);
    assert_eq!(end, End::Clean);
    assert_eq!(got.len(), 1);
    assert!(!got[0].done);
    assert_eq!(got[0].data, data.slice(..40_000));

    // Cut inside the second frame's data: the first frame is handed out,
    // then the transport's end inside a frame is reported.
    bytes.truncate(bytes.len() - 1);
    let (got, end) = read_all(
        FrameReader::coalescing(chunked(bytes.freeze()), 1 << 20),
        false,
    );
    assert_eq!(end, End::Eof);
    assert_eq!(got.len(), 1);
    assert!(!got[0].done);
    assert_eq!(got[0].data, data.slice(..20_000));
}
