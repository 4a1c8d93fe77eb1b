//! Criterion benchmarks of the wire layer's hot paths.
//!
//! * `frame_parse`: [`FrameDecoder::decode`] cutting frames off a
//!   [`BytesMut`] read buffer (1000 small frames, one 64 KiB frame), and
//!   [`Frame::parse`] over a [`Bytes`] for comparison;
//! * `frame_append`: [`append_frame`] / [`append_packet`] into a reused,
//!   pre-sized buffer (no allocation in the measured loop);
//! * `assembly`: [`PacketAssembler::push`] of pre-split frames, a one-frame
//!   2 KiB message (zero copy) and a 16-frame 1 MiB message (one copy);
//! * `end_to_end`: decode and assemble an encoded 1 MiB message, either
//!   already buffered or arriving in 16 KiB reads;
//! * `reader`: [`FrameReader`] over an in-memory transport reading and
//!   assembling a 1 MiB message of 17 frames, frame by frame
//!   ([`FrameReader::new`]) or joined into one buffer
//!   ([`FrameReader::coalescing`]).
//!
//! Throughput is in wire bytes (headers included) for the groups that read
//! or write the wire, and in payload bytes for `assembly`.
//!
//! Where the decoder consumes a pre-filled buffer, the refill is outside the
//! timed region (`iter_custom`); only `decode_assemble_1MiB_16KiB_reads`
//! times the copies into the read buffer, as a reader would pay them.
//! The 1 MiB copies are sensitive to buffer addresses: see `frame_append`.
//! Run with `cargo bench -p drpc-wire --bench wire`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use criterion::{Bencher, Criterion, Throughput, criterion_group, criterion_main};
use drpc_wire::{
    DEFAULT_MAX_PACKET_SIZE, DEFAULT_SPLIT_SIZE, Frame, FrameDecoder, FrameReader, Id, Kind,
    PacketAssembler, append_frame, append_packet, packet_encoded_len, split_frames,
};

const SMALL: usize = 2 * 1024;
const SMALL_FRAMES: usize = 1000;
const LARGE: usize = 1024 * 1024;
const STREAM: u64 = 1;
const PAGE: usize = 4096;

/// A payload of `len` bytes that is not all zeros.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// `len` bytes of `backing` starting `distance` bytes (modulo [`PAGE`])
/// before `dst`.
fn placed(backing: &[u8], len: usize, dst: *const u8, distance: usize) -> &[u8] {
    let start = (dst as usize)
        .wrapping_sub(backing.as_ptr() as usize)
        .wrapping_sub(distance)
        % PAGE;
    &backing[start..start + len]
}

/// `count` one-frame Message packets of `len` bytes each, message ids 1..,
/// encoded back to back.
fn encoded_messages(count: usize, len: usize) -> Vec<u8> {
    let data = payload(len);
    let mut wire = Vec::new();
    for message in 1..=count as u64 {
        append_packet(
            &mut wire,
            Id::new(STREAM, message),
            Kind::MESSAGE,
            false,
            &data,
            usize::MAX,
        );
    }
    wire
}

/// Times decoding every frame of `wire`, `batch` buffers per timed block.
///
/// Each buffer is refilled with `wire` before the block, untimed; once the
/// frames of the previous round are dropped the refill reuses the buffer's
/// allocation.
fn bench_decode(b: &mut Bencher<'_>, decoder: &FrameDecoder, wire: &[u8], batch: usize) {
    let mut bufs: Vec<BytesMut> = (0..batch)
        .map(|_| BytesMut::with_capacity(wire.len()))
        .collect();
    b.iter_custom(|iters| {
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(batch as u64) as usize;
            for buf in &mut bufs[..n] {
                buf.clear();
                buf.extend_from_slice(wire);
            }
            let start = Instant::now();
            for buf in &mut bufs[..n] {
                while let Some(frame) = decoder.decode(buf).expect("valid frames") {
                    black_box(frame);
                }
            }
            elapsed += start.elapsed();
            left -= n as u64;
        }
        elapsed
    });
}

fn frame_parse(c: &mut Criterion) {
    let decoder = FrameDecoder::default();
    let mut group = c.benchmark_group("frame_parse");

    let many = encoded_messages(SMALL_FRAMES, SMALL);
    group.throughput(Throughput::Bytes(many.len() as u64));
    group.bench_function("decode_1000x2KiB", |b| bench_decode(b, &decoder, &many, 1));
    let many_bytes = Bytes::from(many);
    group.bench_function("frame_parse_1000x2KiB", |b| {
        b.iter(|| {
            let mut rest = many_bytes.clone();
            while let Some((frame, used)) = Frame::parse(&rest).expect("valid frames") {
                black_box(frame);
                rest.advance(used);
            }
            rest
        })
    });

    // One frame is a few nanoseconds of work for microseconds of untimed
    // refilling: keep the timed budget small so the wall time stays short.
    let one = encoded_messages(1, DEFAULT_SPLIT_SIZE);
    group.throughput(Throughput::Bytes(one.len() as u64));
    group.warm_up_time(Duration::from_millis(50));
    group.measurement_time(Duration::from_millis(150));
    group.bench_function("decode_64KiB", |b| bench_decode(b, &decoder, &one, 64));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));
    let one_bytes = Bytes::from(one);
    group.bench_function("frame_parse_64KiB", |b| {
        b.iter(|| Frame::parse(black_box(&one_bytes)).expect("valid frame"))
    });
    group.finish();
}

fn frame_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_append");
    let id = Id::new(STREAM, 1);

    let small = payload(SMALL);
    let small_len = packet_encoded_len(id, Kind::MESSAGE, SMALL, 0);
    group.throughput(Throughput::Bytes(small_len as u64));
    let mut vec = Vec::with_capacity(small_len);
    group.bench_function("append_frame_2KiB_vec", |b| {
        b.iter(|| {
            vec.clear();
            append_frame(&mut vec, id, Kind::MESSAGE, true, false, black_box(&small));
            black_box(vec.len())
        })
    });
    let mut buf = BytesMut::with_capacity(small_len);
    group.bench_function("append_packet_2KiB_bytesmut", |b| {
        b.iter(|| {
            buf.clear();
            append_packet(&mut buf, id, Kind::MESSAGE, false, black_box(&small), 0);
            black_box(buf.len())
        })
    });

    // memcpy on some CPUs (seen: AMD EPYC, glibc 2.36, `rep movsb`) is
    // several times slower when the destination is a few bytes ahead of the
    // source modulo 4096 ("4K aliasing"). Frame headers shift each 64 KiB
    // chunk a few bytes ahead of where it was in the payload, so the result
    // depends on the two buffers' addresses. Place the payload explicitly:
    // half a page away for the main figures, and at distance 0 (both
    // buffers at the same page offset, as two large `malloc`s usually are)
    // for the aliased one.
    let backing = payload(LARGE + PAGE);
    let large_len = packet_encoded_len(id, Kind::MESSAGE, LARGE, 0);
    group.throughput(Throughput::Bytes(large_len as u64));
    let mut vec = Vec::with_capacity(large_len);
    let large = placed(&backing, LARGE, vec.as_ptr(), PAGE / 2);
    group.bench_function("append_packet_1MiB_vec", |b| {
        b.iter(|| {
            vec.clear();
            append_packet(&mut vec, id, Kind::MESSAGE, false, black_box(large), 0);
            black_box(vec.len())
        })
    });
    let mut buf = BytesMut::with_capacity(large_len);
    let large = placed(&backing, LARGE, buf.as_ptr(), PAGE / 2);
    group.bench_function("append_packet_1MiB_bytesmut", |b| {
        b.iter(|| {
            buf.clear();
            append_packet(&mut buf, id, Kind::MESSAGE, false, black_box(large), 0);
            black_box(buf.len())
        })
    });
    let large = placed(&backing, LARGE, buf.as_ptr(), 0);
    group.bench_function("append_packet_1MiB_bytesmut_4k_aliased", |b| {
        b.iter(|| {
            buf.clear();
            append_packet(&mut buf, id, Kind::MESSAGE, false, black_box(large), 0);
            black_box(buf.len())
        })
    });
    group.finish();
}

fn assembly(c: &mut Criterion) {
    let mut group = c.benchmark_group("assembly");

    // One assembler for the whole run: each iteration is the next message
    // of the stream, so no per-iteration setup is needed.
    let split = |len: usize| -> Vec<Frame> {
        split_frames(
            Id::new(STREAM, 1),
            Kind::MESSAGE,
            false,
            Bytes::from(payload(len)),
            0,
        )
        .collect()
    };

    let small = split(SMALL);
    assert_eq!(small.len(), 1);
    group.throughput(Throughput::Bytes(SMALL as u64));
    group.bench_function("2KiB_1_frame", |b| {
        let mut asm = PacketAssembler::for_stream(STREAM, DEFAULT_MAX_PACKET_SIZE);
        let mut message = 0;
        b.iter(|| {
            message += 1;
            let frame = Frame {
                id: Id::new(STREAM, message),
                ..small[0].clone()
            };
            asm.push(frame).expect("valid").expect("complete")
        })
    });

    let large = split(LARGE);
    assert_eq!(large.len(), 16);
    group.throughput(Throughput::Bytes(LARGE as u64));
    group.bench_function("1MiB_16_frames", |b| {
        let mut asm = PacketAssembler::for_stream(STREAM, DEFAULT_MAX_PACKET_SIZE);
        let mut message = 0;
        b.iter(|| {
            message += 1;
            let mut packet = None;
            for frame in &large {
                let frame = Frame {
                    id: Id::new(STREAM, message),
                    ..frame.clone()
                };
                packet = asm.push(frame).expect("valid");
            }
            packet.expect("complete")
        })
    });
    group.finish();
}

/// One `LARGE` Message packet as it travels, in default-size frames.
fn large_message_wire() -> Vec<u8> {
    let mut wire = Vec::new();
    append_packet(
        &mut wire,
        Id::new(STREAM, 1),
        Kind::MESSAGE,
        false,
        &payload(LARGE),
        0,
    );
    wire
}

fn end_to_end(c: &mut Criterion) {
    let mut group = c.benchmark_group("end_to_end");
    let decoder = FrameDecoder::default();
    let wire = large_message_wire();
    group.throughput(Throughput::Bytes(wire.len() as u64));

    // The whole message already in the read buffer (refilled untimed).
    // Here and below the packet is dropped inside the timed region.
    group.bench_function("decode_assemble_1MiB_buffered", |b| {
        let mut buf = BytesMut::with_capacity(wire.len());
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                buf.clear();
                buf.extend_from_slice(&wire);
                let start = Instant::now();
                let mut asm = PacketAssembler::new(decoder.max_packet_size());
                let mut packet = None;
                while let Some(frame) = decoder.decode(&mut buf).expect("valid frames") {
                    packet = asm.push(frame).expect("valid");
                }
                let packet = packet.expect("complete");
                assert_eq!(black_box(&packet).data.len(), LARGE);
                drop(packet);
                elapsed += start.elapsed();
            }
            elapsed
        })
    });

    // As a reader sees it: 16 KiB reads appended to a reused read buffer,
    // decoding after each; the copies into the buffer are timed.
    group.bench_function("decode_assemble_1MiB_16KiB_reads", |b| {
        let mut buf = BytesMut::with_capacity(DEFAULT_SPLIT_SIZE + 16);
        b.iter(|| {
            let mut asm = PacketAssembler::new(decoder.max_packet_size());
            let mut packet = None;
            for read in wire.chunks(16 * 1024) {
                buf.extend_from_slice(black_box(read));
                while let Some(frame) = decoder.decode(&mut buf).expect("valid frames") {
                    packet = asm.push(frame).expect("valid");
                }
            }
            packet.expect("complete")
        })
    });
    group.finish();
}

fn reader(c: &mut Criterion) {
    let mut group = c.benchmark_group("reader");
    let wire = large_message_wire();
    group.throughput(Throughput::Bytes(wire.len() as u64));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for (name, coalescing) in [("frames_1MiB", false), ("coalescing_1MiB", true)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let transport: &[u8] = &wire;
                    let mut reader = if coalescing {
                        FrameReader::coalescing(transport, DEFAULT_MAX_PACKET_SIZE)
                    } else {
                        FrameReader::new(transport, DEFAULT_MAX_PACKET_SIZE)
                    };
                    let mut asm = PacketAssembler::new(DEFAULT_MAX_PACKET_SIZE);
                    let mut packet = None;
                    while let Some(frame) = reader.read_frame().await.expect("valid frames") {
                        packet = asm.push(frame).expect("valid");
                    }
                    let packet = packet.expect("complete");
                    assert_eq!(black_box(&packet).data.len(), LARGE);
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = frame_parse, frame_append, assembly, end_to_end, reader
}
criterion_main!(benches);
