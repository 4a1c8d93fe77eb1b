//! The coalescing [`FrameReader`]: joining a large message's frames must
//! never change what the per-stream assemblers make of the connection.
//!
//! For arbitrary frame sequences (well-formed interleaved packets, and
//! arbitrary frames), read from a transport that hands out its bytes in
//! arbitrary chunks, and even with the read future dropped whenever it is
//! pending, the packets and the first error the assemblers report are those
//! of the frames as written.

mod support {
    pub(crate) mod coalesce;
}

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use drpc_wire::{COALESCE_MIN, Frame, FrameReader, Id, Kind, WireError, split_frames};
use proptest::collection::vec;
use proptest::prelude::*;
use support::coalesce::{Chunked, End, assemble, compare, read_all};

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
        let outcome = compare(&bytes, &chunks, max, min, order, drop_pending);
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

/// A transport handing out `data` in chunks of the given sizes (cycled).
fn chunked(data: Bytes, chunks: Vec<usize>) -> Chunked {
    Chunked::new(data, chunks, false)
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
    let reader = FrameReader::coalescing(chunked(encode(&frames), vec![1000, 70_000, 3]), 4 << 20);
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
    let reader = FrameReader::coalescing(chunked(encode(&wire), vec![usize::MAX]), 4 << 20);
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
    let reader = FrameReader::coalescing(chunked(encode(&frames), vec![usize::MAX]), 70_000);
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
    let chunked = |data| chunked(data, vec![7, 50_000]);
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

/// A join that starts with an empty frame, then ends inside the next
/// frame: the empty frame is complete and is handed out, as unjoined.
/// (Found by the `coalescing_reader` fuzz target.)
#[test]
fn an_empty_first_frame_is_complete_when_the_transport_ends_in_the_next() {
    let bytes = Bytes::from_static(&[
        0x00, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, // Kind(0), 4 bytes
        0x04, 0x04, 0x04, 0x00, // Message, empty, not done
        0x04, 0x04, 0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0xff, 0x01, 0x04, 0xd8, 0x00, // cut
    ]);
    for chunk in [1, 3, 100] {
        let outcome = compare(&bytes, &[chunk], 65536, 0, false, false);
        assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
