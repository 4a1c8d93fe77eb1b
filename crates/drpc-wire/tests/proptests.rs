//! Property tests of the wire layer: frame and varint round trips, packet
//! splitting and reassembly, and robustness of the decoding pipeline
//! against arbitrary bytes in arbitrary chunks.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use drpc_wire::{
    ConnectionIdOrder, DEFAULT_MAX_PACKET_SIZE, Frame, FrameDecoder, FrameHead, Id, Kind,
    MAX_HEADER_LEN, MAX_VARINT_LEN, Packet, PacketAssembler, WireError, append_packet,
    append_varint, effective_split_size, header_len, packet_encoded_len, read_varint, split_frames,
    varint_len,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Any u64, with the edges (0, small, varint byte boundaries, MAX) likely.
fn any_id_part() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        0u64..300,
        (1u32..10).prop_map(|k| 1u64 << (7 * k)),
        (1u32..10).prop_map(|k| (1u64 << (7 * k)) - 1),
        any::<u64>(),
    ]
}

/// A message id the assembler accepts for a first packet (>= 1).
fn message_id() -> impl Strategy<Value = u64> {
    any_id_part().prop_map(|m| m.max(1))
}

fn any_kind() -> impl Strategy<Value = Kind> {
    (0u8..=Kind::MAX).prop_map(|v| Kind::new(v).expect("in range"))
}

/// A kind that is split, or any other, each about half the time.
fn packet_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        prop_oneof![
            Just(Kind::INVOKE),
            Just(Kind::MESSAGE),
            Just(Kind::INVOKE_METADATA)
        ],
        any_kind(),
    ]
}

fn any_frame() -> impl Strategy<Value = Frame> {
    (
        any_id_part(),
        any_id_part(),
        any_kind(),
        any::<bool>(),
        any::<bool>(),
        vec(any::<u8>(), 0..=1024),
    )
        .prop_map(|(stream, message, kind, done, control, data)| Frame {
            id: Id::new(stream, message),
            kind,
            done,
            control,
            data: Bytes::from(data),
        })
}

/// Packet data: mostly small and random, sometimes just around one or two
/// default split sizes (64 KiB) so the default splitting is exercised too.
fn packet_data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..2048),
        1 => (65_530usize..=131_080, any::<u8>())
            .prop_map(|(len, seed)| (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()),
    ]
}

/// A split size: small ones, 0 (the 64 KiB default) and "never split".
fn split_size() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 1usize..=300, 1 => Just(0usize), 1 => Just(usize::MAX)]
}

// ---------------------------------------------------------------------------
// (a) frame round trip
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frame_round_trips_through_parse_and_decoder(frame in any_frame()) {
        let mut encoded = Vec::new();
        frame.append_to(&mut encoded);
        prop_assert_eq!(encoded.len(), frame.encoded_len());
        prop_assert_eq!(encoded[0], frame.header_byte());
        let encoded = Bytes::from(encoded);

        // FrameHead sees the header alone.
        let head = FrameHead::parse(&encoded)?.expect("complete header");
        prop_assert_eq!(head.id, frame.id);
        prop_assert_eq!(head.kind, frame.kind);
        prop_assert_eq!((head.done, head.control), (frame.done, frame.control));
        prop_assert_eq!(head.data_len, frame.data.len() as u64);
        prop_assert_eq!(head.header_len, header_len(frame.id, frame.data.len()));
        prop_assert!(head.header_len <= MAX_HEADER_LEN);

        // Frame::parse: the same frame, every byte used.
        let (parsed, used) = Frame::parse(&encoded)?.expect("complete frame");
        prop_assert_eq!(&parsed, &frame);
        prop_assert_eq!(used, encoded.len());

        // Any strict prefix is "incomplete", never an error or a frame.
        for cut in 0..encoded.len() {
            prop_assert_eq!(Frame::parse(&encoded.slice(..cut)), Ok(None), "prefix {}", cut);
        }

        // FrameDecoder: the same frame, nothing left over.
        let mut buf = BytesMut::from(&encoded[..]);
        let decoded = FrameDecoder::default().decode(&mut buf)?.expect("complete frame");
        prop_assert_eq!(&decoded, &frame);
        prop_assert!(buf.is_empty());
        prop_assert_eq!(FrameDecoder::default().decode(&mut buf), Ok(None));
    }

    #[test]
    fn back_to_back_frames_decode_in_order(frames in vec(any_frame(), 1..8)) {
        let mut buf = BytesMut::new();
        for frame in &frames {
            frame.append_to(&mut buf);
        }
        let decoder = FrameDecoder::default();
        for (i, frame) in frames.iter().enumerate() {
            let decoded = decoder.decode(&mut buf)?.expect("complete frame");
            prop_assert_eq!(&decoded, frame, "frame {}", i);
        }
        prop_assert!(buf.is_empty());
    }
}

// ---------------------------------------------------------------------------
// (b) split -> assemble round trip
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn split_then_assemble_gives_the_packet_back(
        stream in any_id_part(),
        message in message_id(),
        kind in packet_kind(),
        control in any::<bool>(),
        data in packet_data(),
        split in split_size(),
    ) {
        let id = Id::new(stream, message);
        let data = Bytes::from(data);
        let packet = Packet { id, kind, control, data: data.clone() };
        let frames: Vec<Frame> = split_frames(id, kind, control, data.clone(), split).collect();

        // Shape of the split.
        let limit = if kind.is_splittable() { effective_split_size(split) } else { usize::MAX };
        let expected_count = if data.is_empty() { 1 } else { data.len().div_ceil(limit) };
        prop_assert_eq!(frames.len(), expected_count);
        for (i, frame) in frames.iter().enumerate() {
            prop_assert!(frame.data.len() <= limit, "frame {} has {} bytes", i, frame.data.len());
            prop_assert_eq!(frame.done, i + 1 == frames.len(), "done flag of frame {}", i);
            prop_assert_eq!((frame.id, frame.kind, frame.control), (id, kind, control));
            if i + 1 < frames.len() {
                prop_assert_eq!(frame.data.len(), limit, "only the last frame is short");
            }
        }
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.data.iter().copied()).collect();
        prop_assert_eq!(&joined[..], &data[..]);
        prop_assert_eq!(&packet.frames(split).collect::<Vec<_>>(), &frames);

        // Reassembly: nothing until the last frame, then the packet.
        let mut assembler = PacketAssembler::default();
        for (i, frame) in frames.iter().enumerate() {
            let out = assembler.push(frame.clone())?;
            if i + 1 < frames.len() {
                prop_assert!(out.is_none(), "packet out before the last frame");
            } else {
                prop_assert_eq!(out.as_ref(), Some(&packet));
            }
        }
        prop_assert_eq!(assembler.buffered(), 0);
        prop_assert_eq!(assembler.stream_id(), Some(stream));

        // append_packet writes exactly the split frames, at the announced size.
        let mut direct = Vec::new();
        append_packet(&mut direct, id, kind, control, &data, split);
        let mut via_frames = Vec::new();
        for frame in &frames {
            frame.append_to(&mut via_frames);
        }
        prop_assert!(direct == via_frames, "append_packet differs from the split frames");
        prop_assert_eq!(direct.len(), packet_encoded_len(id, kind, data.len(), split));

        // And those bytes decode back to the packet.
        let mut buf = BytesMut::from(&direct[..]);
        let decoder = FrameDecoder::default();
        let mut assembler = PacketAssembler::default();
        let mut packets = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf)? {
            packets.extend(assembler.push(frame)?);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(packets, vec![packet]);
    }
}

// ---------------------------------------------------------------------------
// (c) varints
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn varint_round_trips(value in any_id_part(), trailing in vec(any::<u8>(), 0..4)) {
        let mut encoded = Vec::new();
        append_varint(&mut encoded, value);
        prop_assert_eq!(encoded.len(), varint_len(value));
        prop_assert!((1..=MAX_VARINT_LEN).contains(&encoded.len()));
        prop_assert_eq!(read_varint(&encoded), Ok(Some((value, encoded.len()))));

        // Trailing bytes are not consumed.
        let mut longer = encoded.clone();
        longer.extend_from_slice(&trailing);
        prop_assert_eq!(read_varint(&longer), Ok(Some((value, encoded.len()))));

        // Every strict prefix is incomplete, not an error.
        for cut in 0..encoded.len() {
            prop_assert_eq!(read_varint(&encoded[..cut]), Ok(None));
        }
    }

    #[test]
    fn non_minimal_varints_are_accepted(value in 0u64..(1 << 56), pad in 1usize..=9) {
        // Go accepts padded forms (extra 0x80 groups and a final 0x00) as
        // long as they fit in 10 bytes.
        let mut encoded = Vec::new();
        append_varint(&mut encoded, value);
        let pad = pad.min(MAX_VARINT_LEN - encoded.len());
        prop_assume!(pad > 0);
        *encoded.last_mut().expect("non-empty") |= 0x80;
        encoded.extend(std::iter::repeat_n(0x80, pad - 1));
        encoded.push(0x00);
        prop_assert!(encoded.len() <= MAX_VARINT_LEN);
        prop_assert_eq!(read_varint(&encoded), Ok(Some((value, encoded.len()))));
    }
}

// ---------------------------------------------------------------------------
// (d) robustness against arbitrary bytes in arbitrary chunks
// ---------------------------------------------------------------------------

/// Input bytes: fully random, or valid small frames with a few bytes
/// overwritten, maybe a run of continuation bytes (long varints) inserted,
/// and maybe a truncated tail (so that the pipeline gets deep before it
/// fails).
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let small_frame = (
        1u64..4,
        0u64..6,
        0u8..10,
        any::<bool>(),
        any::<bool>(),
        vec(any::<u8>(), 0..40),
    );
    let mutated = (
        vec(small_frame, 0..40),
        vec((any::<usize>(), any::<u8>()), 0..4),
        (any::<usize>(), 0usize..=12),
        any::<usize>(),
    )
        .prop_map(|(frames, edits, (run_at, run_len), cut)| {
            let mut out = Vec::new();
            for (stream, message, kind, done, control, data) in frames {
                let kind = Kind::new(kind).expect("in range");
                drpc_wire::append_frame(
                    &mut out,
                    Id::new(stream, message),
                    kind,
                    done,
                    control,
                    &data,
                );
            }
            if !out.is_empty() {
                for (at, byte) in edits {
                    let at = at % out.len();
                    out[at] = byte;
                }
                let run_at = run_at % out.len();
                out.splice(run_at..run_at, (0..run_len).map(|i| 0x80 | i as u8));
                out.truncate(out.len() - cut % (out.len() / 4 + 1));
            }
            out.truncate(2048);
            out
        });
    prop_oneof![vec(any::<u8>(), 0..2048), mutated]
}

/// How a decode pass ended.
#[derive(Debug, PartialEq)]
enum End {
    /// A protocol error, after the frames before it.
    Error(WireError),
    /// No error; this many bytes were left, waiting for more.
    Waiting(usize),
}

/// Feeds `bytes` to a decoder in chunks of the given sizes (cycled), and
/// decodes all it can after each chunk, up to the first error.
fn decode_in_chunks(decoder: &FrameDecoder, bytes: &[u8], chunks: &[usize]) -> (Vec<Frame>, End) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, End::Error(e)),
            }
        }
        if rest.is_empty() {
            return (frames, End::Waiting(buf.len()));
        }
        let take = (*sizes.next().expect("non-empty chunk list")).min(rest.len());
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
    }
}

/// Runs frames through per-stream assemblers (and optionally the
/// connection-wide id rule) up to the first error, checking what comes out.
fn assemble(
    frames: &[Frame],
    max: usize,
    connection_order: bool,
) -> Result<(Vec<Packet>, Option<WireError>), TestCaseError> {
    let mut order = ConnectionIdOrder::new();
    let mut assemblers: HashMap<u64, PacketAssembler> = HashMap::new();
    let mut packets: Vec<Packet> = Vec::new();
    for frame in frames {
        if connection_order && let Err(e) = order.check(frame.id, frame.done) {
            prop_assert!(matches!(e, WireError::IdMonotonicity { .. }), "{e:?}");
            return Ok((packets, Some(e)));
        }
        let assembler = assemblers
            .entry(frame.id.stream)
            .or_insert_with(|| PacketAssembler::for_stream(frame.id.stream, max));
        match assembler.push(frame.clone()) {
            Ok(Some(packet)) => {
                prop_assert!(frame.done);
                prop_assert!(packet.data.len() <= max);
                prop_assert_eq!(packet.id.stream, frame.id.stream);
                prop_assert_eq!(packet.kind, frame.kind);
                // Completed packets of one stream have increasing ids.
                if let Some(prev) = packets
                    .iter()
                    .rev()
                    .find(|p| p.id.stream == packet.id.stream)
                {
                    prop_assert!(prev.id.message < packet.id.message);
                }
                packets.push(packet);
            }
            Ok(None) => prop_assert!(!frame.done),
            Err(e) => {
                prop_assert!(
                    matches!(
                        e,
                        WireError::MessageIdRegression { .. }
                            | WireError::KindChange { .. }
                            | WireError::DataOverflow { .. }
                    ),
                    "unexpected assembler error {:?}",
                    e
                );
                return Ok((packets, Some(e)));
            }
        }
    }
    Ok((packets, None))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_in_any_chunking_never_panic(
        bytes in hostile_bytes(),
        chunks in vec(1usize..=300, 1..16),
        small_limit in prop_oneof![Just(None), (0usize..64).prop_map(Some)],
        connection_order in any::<bool>(),
    ) {
        let max = small_limit.unwrap_or(DEFAULT_MAX_PACKET_SIZE);
        let decoder = FrameDecoder::new(max);

        let (whole_frames, whole_end) = decode_in_chunks(&decoder, &bytes, &[usize::MAX]);
        let (chunked_frames, chunked_end) = decode_in_chunks(&decoder, &bytes, &chunks);
        let (byte_frames, byte_end) = decode_in_chunks(&decoder, &bytes, &[1]);

        // The chunking changes nothing: same frames, same ending.
        prop_assert_eq!(&chunked_frames, &whole_frames);
        prop_assert_eq!(&chunked_end, &whole_end);
        prop_assert_eq!(&byte_frames, &whole_frames);
        prop_assert_eq!(&byte_end, &whole_end);

        // The decoder's only errors are the two of the frame layer.
        if let End::Error(e) = &whole_end {
            prop_assert!(
                matches!(e, WireError::VarintTooLong | WireError::DataOverflow { .. }),
                "unexpected decoder error {:?}",
                e
            );
            if let WireError::DataOverflow { len } = e {
                prop_assert!(*len > max as u64);
            }
        }
        for frame in &whole_frames {
            prop_assert!(frame.data.len() <= max);
        }

        // Frame::parse (which has no size limit) agrees with the decoder.
        let all = Bytes::from(bytes.clone());
        let mut at = 0;
        let mut parsed = Vec::new();
        let parse_end = loop {
            match Frame::parse(&all.slice(at..)) {
                Ok(Some((frame, n))) => {
                    at += n;
                    parsed.push(frame);
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        prop_assert_eq!(&parsed[..whole_frames.len()], &whole_frames[..]);
        match &whole_end {
            End::Error(WireError::VarintTooLong) => {
                prop_assert_eq!(parsed.len(), whole_frames.len());
                prop_assert_eq!(parse_end, Some(WireError::VarintTooLong));
            }
            End::Error(_) => {}
            End::Waiting(left) => {
                // Both consumed the same bytes (non-minimal varints included).
                prop_assert_eq!(parsed.len(), whole_frames.len());
                prop_assert_eq!(parse_end, None);
                prop_assert_eq!(at + left, bytes.len());
            }
        }

        // Assembly never panics, and sees the same packets whatever the chunking.
        let whole = assemble(&whole_frames, max, connection_order)?;
        let chunked = assemble(&chunked_frames, max, connection_order)?;
        prop_assert_eq!(whole, chunked);
    }
}

// ---------------------------------------------------------------------------
// Flow-control frames
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Every valid grant survives encoding and parsing; whatever else is
    /// in a frame of kind 8 or 9 is dropped without a panic.
    #[test]
    fn window_updates_round_trip(stream in any_id_part(), delta in any_id_part()) {
        let update = drpc_wire::WindowUpdate { stream: stream.max(1), delta: delta.max(1) };
        let mut buf = Vec::new();
        update.append_to(&mut buf);
        prop_assert_eq!(buf.len(), update.encoded_len());
        let (frame, used) = Frame::parse(&Bytes::from(buf)).expect("ok").expect("whole");
        prop_assert_eq!(used, update.encoded_len());
        prop_assert_eq!(drpc_wire::WindowUpdate::parse(&frame), Some(update));
    }

    #[test]
    fn flow_frames_never_panic(
        stream in any_id_part(),
        message in any_id_part(),
        header in any::<u8>(),
        payload in vec(any::<u8>(), 0..24),
    ) {
        let frame = Frame {
            id: Id::new(stream, message),
            kind: Kind::from_header(header),
            done: header & 1 == 1,
            control: header & 0x80 != 0,
            data: Bytes::from(payload.clone()),
        };
        if let Some(update) = drpc_wire::WindowUpdate::parse(&frame) {
            prop_assert!(update.stream != 0 && update.delta != 0);
            prop_assert_eq!(update.stream, stream);
        }
        if let Some(n) = drpc_wire::FlowNegotiation::parse(&payload) {
            let mut again = Vec::new();
            n.append_to(&mut again, Id::new(1, 1));
            let (f, _) = Frame::parse(&Bytes::from(again)).expect("ok").expect("whole");
            prop_assert_eq!(drpc_wire::FlowNegotiation::parse(&f.data), Some(n));
        }
        if let Ok(text) = std::str::from_utf8(&payload)
            && let Some(p) = drpc_wire::FlowParams::parse_metadata_value(text)
        {
            prop_assert_eq!(
                drpc_wire::FlowParams::parse_metadata_value(&p.to_metadata_value()),
                Some(p)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// sniffing: a DRPC frame of a known kind is never taken for another protocol
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frames_of_known_kinds_are_drpc_from_any_prefix(
        frame in any_frame().prop_filter("a known kind", |f| (1..=9).contains(&f.kind.value())),
        cut in 1usize..64,
    ) {
        let mut encoded = Vec::new();
        frame.append_to(&mut encoded);
        let prefix = &encoded[..cut.min(encoded.len())];
        prop_assert_eq!(drpc_wire::sniff(prefix), drpc_wire::Sniffed::Drpc);
    }
}
