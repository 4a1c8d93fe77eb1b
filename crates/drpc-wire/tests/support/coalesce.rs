//! The check shared by the coalescing reader's property test
//! (`tests/coalescing.rs`) and its fuzz target
//! (`fuzz/fuzz_targets/coalescing_reader.rs`, which includes this file by
//! path): the same bytes read with and without coalescing must end the same
//! way and assemble into the same packets and the same first error.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use drpc_wire::{
    ConnectionIdOrder, Frame, FrameReader, Packet, PacketAssembler, ReadError, WireError,
};
use tokio::io::{AsyncRead, ReadBuf};

/// A transport handing out its bytes in chunks of the given sizes (cycled),
/// pending before every other chunk when `stutter` is set, then EOF.
pub(crate) struct Chunked {
    data: Bytes,
    chunks: Vec<usize>,
    next: usize,
    stutter: bool,
    pending: bool,
}

impl Chunked {
    /// `data` in chunks of `chunks` (cycled; not empty).
    pub(crate) fn new(data: Bytes, chunks: Vec<usize>, stutter: bool) -> Chunked {
        Chunked {
            data,
            chunks,
            next: 0,
            stutter,
            pending: false,
        }
    }
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
pub(crate) enum End {
    Clean,
    Protocol(WireError),
    Eof,
}

/// Reads every frame; with `drop_pending`, a fresh `read_frame` future is
/// made after every pending poll, the old one dropped.
pub(crate) fn read_all(mut reader: FrameReader<Chunked>, drop_pending: bool) -> (Vec<Frame>, End) {
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
pub(crate) fn assemble(
    frames: &[Frame],
    max: usize,
    order: bool,
) -> (Vec<Packet>, Option<WireError>) {
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

/// Reads `bytes` with a plain reader and with a coalescing one (joins from
/// `min` bytes; `stutter`ing transport and dropped futures when
/// `drop_pending`), and says how they differ, if they do.
pub(crate) fn compare(
    bytes: &Bytes,
    chunks: &[usize],
    max: usize,
    min: usize,
    order: bool,
    drop_pending: bool,
) -> Result<(), String> {
    let transport = |stutter| Chunked::new(bytes.clone(), chunks.to_vec(), stutter);
    let (plain, plain_end) = read_all(FrameReader::new(transport(false), max), false);
    let (joined, joined_end) = read_all(
        FrameReader::coalescing(transport(drop_pending), max).coalesce_min(min),
        drop_pending,
    );
    if joined_end != plain_end {
        return Err(format!(
            "ends differ: {joined_end:?} joined, {plain_end:?} plain"
        ));
    }
    if joined.len() > plain.len() {
        return Err(format!(
            "{} joined frames for {} frames",
            joined.len(),
            plain.len()
        ));
    }
    if let Some(f) = joined.iter().find(|f| f.data.len() > max) {
        return Err(format!("a joined frame over the maximum {max}: {f:?}"));
    }
    let (plain_packets, plain_err) = assemble(&plain, max, order);
    let (joined_packets, joined_err) = assemble(&joined, max, order);
    // The same error, at the same point: only the length a DataOverflow
    // reports may be larger, as a joined frame can carry the packet past
    // the limit by more than the frame that first crossed it.
    match (&joined_err, &plain_err) {
        (Some(WireError::DataOverflow { len: j }), Some(WireError::DataOverflow { len: p }))
            if j >= p && *p > max as u64 => {}
        (j, p) if j == p => {}
        (j, p) => {
            return Err(format!(
                "errors differ: {j:?} joined, {p:?} plain\n joined frames: {joined:?}\n plain frames: {plain:?}"
            ));
        }
    }
    if joined_packets != plain_packets {
        return Err("the packets differ".into());
    }
    Ok(())
}
