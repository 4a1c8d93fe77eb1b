//! Shared helpers of the manager's integration tests.
//!
//! * [`Peer`]: a scripted peer in the style of h2's mock transport. One end
//!   of a `tokio::io::duplex` goes to a [`Manager`]; the test drives the
//!   other end raw, writing encoded frames and reading back exactly what the
//!   manager wrote.
//! * [`Recording`]: a transport wrapper that records every `poll_write`
//!   call, so a test can check how frames were batched into writes.
//! * [`BlockedWrites`]: a transport whose writes never complete.
//! * [`bounded`] and friends: every wait in these tests is bounded in time.

#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use drpc_manager::{Manager, ManagerOptions, Role};
use drpc_stream::{ConnectionError, StreamError, StreamErrorKind};
use drpc_wire::{
    Frame, FrameDecoder, FrameReader, Id, Kind, Metadata, append_frame, append_packet,
    encode_metadata,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf};

/// The longest a whole test may take.
pub(crate) const TEST_LIMIT: Duration = Duration::from_secs(15);

/// The longest a single expected event may take.
pub(crate) const STEP_LIMIT: Duration = Duration::from_secs(5);

/// How long "nothing happens" is watched for.
pub(crate) const QUIET: Duration = Duration::from_millis(100);

/// Runs a whole test body, failing it if it takes longer than
/// [`TEST_LIMIT`].
pub(crate) async fn bounded<F: Future>(body: F) -> F::Output {
    match tokio::time::timeout(TEST_LIMIT, body).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {TEST_LIMIT:?}"),
    }
}

/// Awaits one expected event, failing the test after [`STEP_LIMIT`].
pub(crate) async fn step<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP_LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: nothing within {STEP_LIMIT:?}"),
    }
}

/// Polls `cond` until it holds, failing the test after [`STEP_LIMIT`].
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    step(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// Asserts that `fut` does not complete within [`QUIET`].
pub(crate) async fn assert_pending<F: Future>(what: &str, fut: F)
where
    F::Output: std::fmt::Debug,
{
    if let Ok(out) = tokio::time::timeout(QUIET, fut).await {
        panic!("{what}: expected nothing, got {out:?}");
    }
}

/// A whole single-frame packet as the manager writes it: `done`, and the
/// control bit exactly for Cancel.
pub(crate) fn frame(stream: u64, message: u64, kind: Kind, data: &[u8]) -> Frame {
    Frame {
        id: Id::new(stream, message),
        kind,
        done: true,
        control: kind == Kind::CANCEL,
        data: bytes::Bytes::copy_from_slice(data),
    }
}

/// The Error packet payload: the code as 8 bytes big-endian, then the text.
pub(crate) fn error_payload(code: u64, text: &str) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

/// An encoded metadata payload.
pub(crate) fn metadata_payload(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_metadata(&mut out, pairs.iter().copied());
    out
}

/// A metadata map.
pub(crate) fn metadata(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Deterministic content of message `index` of stream `stream`.
pub(crate) fn pattern(stream: u64, index: usize, len: usize) -> Vec<u8> {
    let seed = (stream.wrapping_mul(131) as usize).wrapping_add(index.wrapping_mul(17));
    (0..len)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

/// Decodes every frame of `bytes`, which must end on a frame boundary.
pub(crate) fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let decoder = FrameDecoder::new(usize::MAX >> 1);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(frame) = decoder
        .decode(&mut buf)
        .expect("the manager wrote valid frames")
    {
        out.push(frame);
    }
    assert!(buf.is_empty(), "{} trailing bytes", buf.len());
    out
}

/// The kind of a stream error, for matching.
pub(crate) fn kind_of<T: std::fmt::Debug>(r: Result<T, StreamError>) -> StreamErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.into_kind(),
    }
}

/// Fails unless `err` is `ConnectionLost(want)`, compared by text.
pub(crate) fn assert_connection_lost(err: &StreamErrorKind, want: &ConnectionError) {
    match err {
        StreamErrorKind::ConnectionLost(got) => assert_eq!(got.to_string(), want.to_string()),
        other => panic!("expected ConnectionLost({want:?}), got {other:?}"),
    }
}

/// A scripted peer: the raw other end of a manager's transport.
#[derive(Debug)]
pub(crate) struct Peer {
    reader: FrameReader<ReadHalf<DuplexStream>>,
    writer: WriteHalf<DuplexStream>,
}

impl Peer {
    /// A peer over `io`, the other end of the manager's duplex.
    pub(crate) fn new(io: DuplexStream) -> Peer {
        let (r, w) = tokio::io::split(io);
        Peer {
            reader: FrameReader::new(r, usize::MAX >> 1),
            writer: w,
        }
    }

    /// Writes raw bytes.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        step("peer write", self.writer.write_all(bytes))
            .await
            .expect("peer write");
    }

    /// Writes one frame.
    pub(crate) async fn send_frame(
        &mut self,
        stream: u64,
        message: u64,
        kind: Kind,
        done: bool,
        control: bool,
        data: &[u8],
    ) {
        let mut buf = Vec::new();
        append_frame(
            &mut buf,
            Id::new(stream, message),
            kind,
            done,
            control,
            data,
        );
        self.send_raw(&buf).await;
    }

    /// Writes a whole packet (split at 64 KiB), without the control bit
    /// except for Cancel.
    pub(crate) async fn send(&mut self, stream: u64, message: u64, kind: Kind, data: &[u8]) {
        let mut buf = Vec::new();
        append_packet(
            &mut buf,
            Id::new(stream, message),
            kind,
            kind == Kind::CANCEL,
            data,
            0,
        );
        self.send_raw(&buf).await;
    }

    /// Reads the next frame the manager wrote.
    pub(crate) async fn read(&mut self) -> Frame {
        match step("peer read", self.reader.read_frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("peer read: end of file"),
            Err(e) => panic!("peer read: {e}"),
        }
    }

    /// Reads the next frame and checks it is exactly `want`.
    pub(crate) async fn expect(&mut self, want: Frame) {
        let got = self.read().await;
        assert_eq!(got, want, "data {:?}", String::from_utf8_lossy(&got.data));
    }

    /// Checks that the manager writes nothing for a while.
    pub(crate) async fn expect_silence(&mut self) {
        // Reading frames is cancel safe: bytes read stay buffered.
        assert_pending("peer read", self.reader.read_frame()).await;
    }

    /// Checks that the manager closed the transport (after any frames it
    /// still had in flight, which are returned).
    pub(crate) async fn expect_eof(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            match step("peer read until eof", self.reader.read_frame()).await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return frames,
                Err(e) => panic!("peer read: {e}"),
            }
        }
    }
}

/// A manager of `role` over one end of a duplex, and a scripted peer on the
/// other.
pub(crate) fn scripted(role: Role, opts: ManagerOptions) -> (Manager, Peer) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    (Manager::new(ours, role, opts), Peer::new(theirs))
}

/// Every `poll_write` call that wrote something, in order.
pub(crate) type WriteLog = Arc<Mutex<Vec<Vec<u8>>>>;

/// A transport that records each successful `poll_write` call.
#[derive(Debug)]
pub(crate) struct Recording<T> {
    inner: T,
    writes: WriteLog,
}

impl<T> Recording<T> {
    /// Wraps `inner`; the log is shared with the caller.
    pub(crate) fn new(inner: T) -> (Recording<T>, WriteLog) {
        let writes = WriteLog::default();
        (
            Recording {
                inner,
                writes: writes.clone(),
            },
            writes,
        )
    }
}

/// The concatenation of every recorded write.
pub(crate) fn written(log: &WriteLog) -> Vec<u8> {
    log.lock().expect("log").concat()
}

impl<T: AsyncRead + Unpin> AsyncRead for Recording<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Recording<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let out = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &out
            && *n > 0
        {
            self.writes.lock().expect("log").push(buf[..*n].to_vec());
        }
        out
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A transport whose writes never complete (and never wake anyone), and
/// whose reads come from `inner`.
#[derive(Debug)]
pub(crate) struct BlockedWrites<T> {
    inner: T,
    attempts: Arc<Mutex<usize>>,
}

impl<T> BlockedWrites<T> {
    /// Wraps `inner`; the counter says how many write attempts were made.
    pub(crate) fn new(inner: T) -> (BlockedWrites<T>, Arc<Mutex<usize>>) {
        let attempts = Arc::new(Mutex::new(0));
        (
            BlockedWrites {
                inner,
                attempts: attempts.clone(),
            },
            attempts,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for BlockedWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Unpin> AsyncWrite for BlockedWrites<T> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        *self.attempts.lock().expect("attempts") += 1;
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

/// A client and a server manager over one duplex.
pub(crate) fn pair(opts: ManagerOptions) -> (Manager, Manager) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    (
        Manager::new(a, Role::Client, opts.clone()),
        Manager::new(b, Role::Server, opts),
    )
}

/// How one server stream of [`spawn_echo`] ended.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    /// The stream id.
    pub(crate) id: u64,
    /// The RPC path.
    pub(crate) rpc: String,
    /// The messages echoed back.
    pub(crate) echoed: usize,
    /// `None` for a clean end (the peer's CloseSend, answered with
    /// CloseSend), else what ended it.
    pub(crate) error: Option<StreamErrorKind>,
}

/// Runs an accept loop on `server` that echoes every message of every
/// stream, each in its own task, and reports how each stream ended. The
/// task returns the error `accept` ended with.
pub(crate) fn spawn_echo(
    server: Manager,
) -> (
    tokio::task::JoinHandle<ConnectionError>,
    tokio::sync::mpsc::UnboundedReceiver<Served>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let incoming = match server.accept().await {
                Ok(incoming) => incoming,
                Err(e) => return e,
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream = incoming.stream;
                let mut served = Served {
                    id: stream.id(),
                    rpc: incoming.rpc,
                    echoed: 0,
                    error: None,
                };
                loop {
                    match stream.recv().await {
                        Ok(Some(msg)) => {
                            if let Err(e) = stream.send(&msg).await {
                                served.error = Some(stream.check_cancel(e).into_kind());
                                break;
                            }
                            served.echoed += 1;
                        }
                        Ok(None) => {
                            if let Err(e) = stream.close_send() {
                                served.error = Some(e.into_kind());
                            }
                            break;
                        }
                        Err(e) => {
                            served.error = Some(e.into_kind());
                            break;
                        }
                    }
                }
                let _ = tx.send(served);
            });
        }
    });
    (task, rx)
}

/// Receives the next report of [`spawn_echo`].
pub(crate) async fn next_served(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Served>) -> Served {
    step("server stream report", rx.recv())
        .await
        .expect("echo server running")
}
