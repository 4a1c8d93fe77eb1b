//! Fuzzes the coalescing [`FrameReader`]: whatever the bytes, joining a
//! message's frames changes neither the packets the per-stream assemblers
//! make nor the first error (a `DataOverflow` may report a larger length),
//! nor how reading ends.
//!
//! The first input byte is a seed:
//!
//! * bits 0..=2: the size of the chunks the transport hands out;
//! * bits 3..=4: the maximum packet size (16 B, 256 B, 4 KiB, 64 KiB);
//! * bits 5..=6: the smallest frame that starts a join (0, 1, 8, 64);
//! * bit 7: the transport is pending before every other chunk, and the
//!   read future is dropped whenever it is pending (cancel safety).

#![no_main]

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use drpc_wire::{Frame, FrameReader, Packet, PacketAssembler, ReadError, WireError};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

const CHUNKS: [usize; 8] = [1, 2, 3, 7, 16, 64, 1000, usize::MAX];
const MAX_PACKET_SIZES: [usize; 4] = [16, 256, 4096, 64 * 1024];
const JOIN_MINS: [usize; 4] = [0, 1, 8, 64];

struct Chunked {
    data: Bytes,
    chunk: usize,
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
        let n = self.chunk.min(buf.remaining()).min(self.data.len());
        let chunk = self.data.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, PartialEq)]
enum End {
    Clean,
    Protocol(WireError),
    Eof,
}

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

fn assemble(frames: &[Frame], max: usize) -> (Vec<Packet>, Option<WireError>) {
    let mut assemblers: HashMap<u64, PacketAssembler> = HashMap::new();
    let mut packets = Vec::new();
    for frame in frames {
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

fuzz_target!(|input: &[u8]| {
    let Some((&seed, rest)) = input.split_first() else {
        return;
    };
    let chunk = CHUNKS[usize::from(seed & 0x07)];
    let max = MAX_PACKET_SIZES[usize::from((seed >> 3) & 0x03)];
    let min = JOIN_MINS[usize::from((seed >> 5) & 0x03)];
    let stutter = seed & 0x80 != 0;
    let data = Bytes::copy_from_slice(rest);
    let transport = |stutter| Chunked {
        data: data.clone(),
        chunk,
        stutter,
        pending: false,
    };
    let (plain, plain_end) = read_all(FrameReader::new(transport(false), max), false);
    let (joined, joined_end) = read_all(
        FrameReader::coalescing(transport(stutter), max).coalesce_min(min),
        stutter,
    );
    assert_eq!(joined_end, plain_end);
    assert!(joined.len() <= plain.len());
    assert!(joined.iter().all(|f| f.data.len() <= max));
    let (plain_packets, plain_err) = assemble(&plain, max);
    let (joined_packets, joined_err) = assemble(&joined, max);
    match (joined_err, plain_err) {
        (Some(WireError::DataOverflow { len: j }), Some(WireError::DataOverflow { len: p })) => {
            assert!(j >= p && p > max as u64);
        }
        (j, p) => assert_eq!(j, p),
    }
    assert_eq!(joined_packets, plain_packets);
});
