//! The harness of the vector replay tests: locating and decoding the Go
//! captures, recording what a Rust peer writes, replaying one side of a
//! capture with its causality, and comparing packet sequences.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use drpc_interop::pb::{In, Out};
use drpc_wire::{
    CodedError, ConnectionIdOrder, FrameDecoder, Id, Kind, Packet, PacketAssembler, decode_metadata,
};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Every scenario of `shared/vectors/README.md`, in its order.
pub(crate) const SCENARIOS: [&str; 13] = [
    "unary_small",
    "unary_empty",
    "unary_metadata",
    "unary_2KiB",
    "unary_error",
    "client_stream_3",
    "server_stream_3",
    "bidi_3",
    "unary_64KiB_exact",
    "unary_split_64KiB_plus1",
    "unary_split_3frames",
    "cancel_hard",
    "cancel_soft",
];

/// The longest any single wait of a test may take.
pub(crate) const STEP_LIMIT: Duration = Duration::from_secs(5);

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub(crate) async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

// ---------------------------------------------------------------------------
// The vectors on disk
// ---------------------------------------------------------------------------

/// `$DRPC_VECTORS_DIR`, else `<workspace root>/../shared/vectors`. A missing
/// directory fails the test: it is never a skip.
pub(crate) fn vectors_dir() -> PathBuf {
    let dir = match std::env::var_os("DRPC_VECTORS_DIR") {
        Some(dir) => PathBuf::from(dir),
        // CARGO_MANIFEST_DIR is <workspace root>/crates/drpc-interop.
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"),
    };
    assert!(
        dir.is_dir(),
        "vectors directory {} is missing (set DRPC_VECTORS_DIR to override)",
        dir.display()
    );
    dir
}

/// Which side wrote a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// `NAME.client.hex`: client -> server.
    Client,
    /// `NAME.server.hex`: server -> client.
    Server,
}

impl Side {
    fn file_suffix(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// The bytes of `NAME.SIDE.hex`; a missing or malformed file fails.
pub(crate) fn read_vector(name: &str, side: Side) -> Vec<u8> {
    let path = vectors_dir().join(format!("{name}.{}.hex", side.file_suffix()));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    hex_decode(&digits).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The README of the vectors.
pub(crate) fn read_readme() -> String {
    let path = vectors_dir().join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub(crate) fn hex_decode(digits: &str) -> Result<Vec<u8>, String> {
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            let pair = digits.get(i..i + 2).ok_or("non-ASCII hex")?;
            u8::from_str_radix(pair, 16).map_err(|e| format!("bad hex {pair:?}: {e}"))
        })
        .collect()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// Decoding a byte stream into frames and packets
// ---------------------------------------------------------------------------

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameInfo {
    pub(crate) id: Id,
    pub(crate) kind: Kind,
    pub(crate) done: bool,
    pub(crate) control: bool,
    pub(crate) len: usize,
}

/// One packet, the frames it came in, and where its last frame ends in
/// the byte stream.
#[derive(Debug, Clone)]
pub(crate) struct PacketInfo {
    pub(crate) packet: Packet,
    pub(crate) frames: Vec<FrameInfo>,
    pub(crate) end: usize,
}

/// A byte stream decoded: every frame, and the packets they make
/// (FrameDecoder plus one PacketAssembler per stream).
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) frames: Vec<FrameInfo>,
    pub(crate) packets: Vec<PacketInfo>,
}

impl Decoded {
    /// The byte offset where packet `n` starts (the end of packet `n - 1`).
    pub(crate) fn packet_start(&self, n: usize) -> usize {
        match n {
            0 => 0,
            n => self.packets[n - 1].end,
        }
    }

    /// Checks every frame against the original connection-wide id order
    /// of storj/drpc.
    pub(crate) fn check_connection_order(&self) -> Result<(), String> {
        let mut order = ConnectionIdOrder::new();
        for (i, f) in self.frames.iter().enumerate() {
            order
                .check(f.id, f.done)
                .map_err(|e| format!("frame #{i} {f:?}: {e}"))?;
        }
        Ok(())
    }
}

/// Decodes bytes as they arrive.
#[derive(Debug, Default)]
pub(crate) struct Incremental {
    decoder: FrameDecoder,
    buf: BytesMut,
    consumed: usize,
    decoded: Decoded,
    assemblers: HashMap<u64, PacketAssembler>,
    pending: HashMap<u64, Vec<FrameInfo>>,
    error: Option<String>,
}

impl Incremental {
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.decoded.bytes.extend_from_slice(bytes);
        if self.error.is_some() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        if let Err(e) = self.drain() {
            self.error = Some(e);
        }
    }

    fn drain(&mut self) -> Result<(), String> {
        loop {
            let before = self.buf.len();
            let frame = match self.decoder.decode(&mut self.buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("frame at byte {}: {e}", self.consumed)),
            };
            self.consumed += before - self.buf.len();
            let info = FrameInfo {
                id: frame.id,
                kind: frame.kind,
                done: frame.done,
                control: frame.control,
                len: frame.data.len(),
            };
            self.decoded.frames.push(info);
            let stream = frame.id.stream;
            self.pending.entry(stream).or_default().push(info);
            let packet = self
                .assemblers
                .entry(stream)
                .or_default()
                .push(frame)
                .map_err(|e| format!("frame {info:?} ending at byte {}: {e}", self.consumed))?;
            if let Some(packet) = packet {
                let frames = self
                    .pending
                    .remove(&stream)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|f| f.id == packet.id)
                    .collect();
                self.decoded.packets.push(PacketInfo {
                    packet,
                    frames,
                    end: self.consumed,
                });
            }
        }
    }

    /// The number of complete packets so far.
    pub(crate) fn packets(&self) -> usize {
        self.decoded.packets.len()
    }

    /// The whole stream, which must end on a packet boundary.
    pub(crate) fn finish(self) -> Result<Decoded, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.buf.is_empty() {
            return Err(format!(
                "{} trailing bytes after the last whole frame: {}",
                self.buf.len(),
                hex(&self.buf[..self.buf.len().min(32)])
            ));
        }
        if let Some(half) = self.pending.values().find(|p| !p.is_empty()) {
            return Err(format!("unfinished packet at the end: frames {half:?}"));
        }
        Ok(self.decoded)
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let mut inc = Incremental::default();
    inc.feed(bytes);
    inc.finish()
}

/// Decodes a Go capture, which must be well formed.
pub(crate) fn decode_vector(name: &str, side: Side) -> Decoded {
    decode(&read_vector(name, side))
        .unwrap_or_else(|e| panic!("{name}.{}.hex: {e}", side.file_suffix()))
}

// ---------------------------------------------------------------------------
// Comparing packet sequences
// ---------------------------------------------------------------------------

/// A readable one-line description of a packet; Message bodies are shown
/// decoded as `In` (client -> server) or `Out` (server -> client).
pub(crate) fn describe(p: &Packet, side: Side) -> String {
    let Packet {
        id,
        kind,
        control,
        data,
    } = p;
    let body = match *kind {
        Kind::MESSAGE => match side {
            Side::Client => describe_in(data),
            Side::Server => describe_out(data),
        },
        Kind::INVOKE => format!("{:?}", String::from_utf8_lossy(data)),
        Kind::INVOKE_METADATA => match decode_metadata(data) {
            Ok(md) => format!("{md:?} = {}", hex(data)),
            Err(e) => format!("bad metadata ({e}) {}", hex(data)),
        },
        Kind::ERROR if data.len() >= 8 => {
            let e = CodedError::decode(data);
            format!("code {} {:?}", e.code(), e.message())
        }
        _ if data.is_empty() => String::new(),
        _ => hex(&data[..data.len().min(32)]),
    };
    format!(
        "s{}/m{} {kind} ctrl:{control} len:{} {body}",
        id.stream,
        id.message,
        data.len()
    )
}

fn describe_buf(buf: &[u8]) -> String {
    if buf.len() <= 24 {
        format!("{:?}", String::from_utf8_lossy(buf))
    } else {
        format!("<{} bytes {}..>", buf.len(), hex(&buf[..8]))
    }
}

fn describe_in(data: &[u8]) -> String {
    match In::decode(data) {
        Ok(m) => format!(
            "In{{in: {}, buf: {}, opt: {:?}}}",
            m.r#in,
            describe_buf(&m.buf),
            m.opt
        ),
        Err(e) => format!("undecodable In ({e})"),
    }
}

fn describe_out(data: &[u8]) -> String {
    match Out::decode(data) {
        Ok(m) => format!(
            "Out{{out: {}, buf: {}, opt: {:?}}}",
            m.out,
            describe_buf(&m.buf),
            m.opt
        ),
        Err(e) => format!("undecodable Out ({e})"),
    }
}

fn listing(packets: &[PacketInfo], side: Side) -> String {
    let mut s = String::new();
    for (i, p) in packets.iter().enumerate() {
        let _ = writeln!(s, "    p{i} {}", describe(&p.packet, side));
    }
    if packets.is_empty() {
        s.push_str("    (nothing)\n");
    }
    s
}

/// Whether two Message bodies are the same protobuf message.
fn same_message(side: Side, a: &[u8], b: &[u8]) -> Result<bool, String> {
    Ok(match side {
        Side::Client => {
            In::decode(a).map_err(|e| e.to_string())? == In::decode(b).map_err(|e| e.to_string())?
        }
        Side::Server => {
            Out::decode(a).map_err(|e| e.to_string())?
                == Out::decode(b).map_err(|e| e.to_string())?
        }
    })
}

fn compare_packet(side: Side, i: usize, exp: &PacketInfo, act: &PacketInfo) -> Result<(), String> {
    let (e, a) = (&exp.packet, &act.packet);
    let header = |p: &Packet| (p.id, p.kind, p.control);
    if header(e) != header(a) {
        return Err(format!("packet p{i}: id/kind/control differ"));
    }
    let data_ok = if e.kind == Kind::MESSAGE {
        same_message(side, &e.data, &a.data)
            .map_err(|err| format!("packet p{i}: undecodable message: {err}"))?
    } else {
        e.data == a.data
    };
    if !data_ok {
        return Err(format!(
            "packet p{i}: data differs\n    expected {}\n    actual   {}",
            hex(&e.data[..e.data.len().min(64)]),
            hex(&a.data[..a.data.len().min(64)])
        ));
    }
    if exp.frames != act.frames {
        return Err(format!(
            "packet p{i}: framed differently\n    expected {:?}\n    actual   {:?}",
            exp.frames, act.frames
        ));
    }
    Ok(())
}

/// What a comparison found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Match {
    /// How many packets were compared.
    pub(crate) packets: usize,
    /// Whether an optional (racy) trailing packet was present.
    pub(crate) optional_present: Option<bool>,
    /// Whether the bytes were identical to the capture (up to the packets
    /// compared).
    pub(crate) byte_identical: bool,
}

/// Checks that `actual` decodes to the packets of `expected`: the same
/// (stream, message, kind, control) sequence, Message bodies equal as
/// protobuf messages, other payloads equal byte for byte, every packet
/// split into the same frames. When `optional_last` names the kind of the
/// expected last packet, that packet may be missing (a race the README
/// documents). A client may also end with a Close the capture lacks: it
/// ends a call whose server CloseSend it had not yet seen, the same race
/// the other way round.
pub(crate) fn compare(
    side: Side,
    expected: &Decoded,
    actual: &Decoded,
    optional_last: Option<Kind>,
) -> Result<Match, String> {
    let exp = &expected.packets;
    let optional = optional_last.filter(|k| exp.last().is_some_and(|p| p.packet.kind == *k));
    let act = &actual.packets;
    let fail = |why: String| {
        Err(format!(
            "{why}\n  expected ({} packets{}):\n{}  actual ({} packets):\n{}",
            exp.len(),
            match optional {
                Some(k) => format!(", the trailing {k} optional"),
                None => String::new(),
            },
            listing(exp, side),
            act.len(),
            listing(act, side)
        ))
    };
    let (n, optional_present) = match optional {
        Some(_) if act.len() == exp.len() => (exp.len(), Some(true)),
        Some(_) if act.len() + 1 == exp.len() => (act.len(), Some(false)),
        None if act.len() == exp.len() => (exp.len(), None),
        None if side == Side::Client
            && act.len() == exp.len() + 1
            && act.last().is_some_and(|p| p.packet.kind == Kind::CLOSE) =>
        {
            (exp.len(), Some(true))
        }
        _ => return fail("different number of packets".into()),
    };
    for i in 0..n {
        if let Err(why) = compare_packet(side, i, &exp[i], &act[i]) {
            return fail(why);
        }
    }
    let end = expected.packet_start(n);
    Ok(Match {
        packets: n,
        optional_present,
        byte_identical: actual.bytes.starts_with(&expected.bytes[..end])
            && (actual.bytes.len() == end || optional_present == Some(true)),
    })
}

// ---------------------------------------------------------------------------
// Recording what a Rust peer writes, and replaying a Go side
// ---------------------------------------------------------------------------

/// How far the recorded peer has got.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    pub(crate) packets: usize,
    pub(crate) bytes: usize,
    pub(crate) eof: bool,
}

/// Reads everything the Rust side writes until end of stream, decoding as
/// it goes so that a script can wait for packets.
#[derive(Debug)]
pub(crate) struct Recorder {
    progress: watch::Receiver<Progress>,
    task: JoinHandle<Incremental>,
}

impl Recorder {
    pub(crate) fn spawn<R: AsyncRead + Unpin + Send + 'static>(mut reader: R) -> Recorder {
        let (tx, progress) = watch::channel(Progress::default());
        let task = tokio::spawn(async move {
            let mut inc = Incremental::default();
            let mut chunk = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        inc.feed(&chunk[..n]);
                        let packets = inc.packets();
                        tx.send_modify(|p| {
                            p.packets = packets;
                            p.bytes += n;
                        });
                    }
                }
            }
            tx.send_modify(|p| p.eof = true);
            inc
        });
        Recorder { progress, task }
    }

    pub(crate) fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until `n` packets have been received (false on end of
    /// stream or after `limit`).
    pub(crate) async fn wait_packets(&self, n: usize, limit: Duration) -> bool {
        wait_packets(&mut self.progress(), n, limit).await
    }

    /// Waits for the end of stream and decodes everything received.
    pub(crate) async fn finish(self, what: &str) -> Decoded {
        let inc = within(STEP_LIMIT, what, self.task)
            .await
            .expect("recorder task");
        inc.finish()
            .unwrap_or_else(|e| panic!("{what}: the Rust side wrote undecodable bytes: {e}"))
    }
}

async fn wait_packets(progress: &mut watch::Receiver<Progress>, n: usize, limit: Duration) -> bool {
    let waited = tokio::time::timeout(limit, progress.wait_for(|p| p.packets >= n || p.eof)).await;
    matches!(waited, Ok(Ok(p)) if p.packets >= n)
}

/// One step of a replayed Go side.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    /// Writes the next N packets of the capture (their exact bytes).
    Send(usize),
    /// Waits until the Rust side has written N packets in all.
    WaitFor(usize),
    /// Pauses (milliseconds), e.g. so that a handler is blocked before a
    /// cancellation arrives.
    Sleep(u64),
    /// Closes the replaying side's write half (the Rust side reads EOF).
    Shutdown,
}

/// Replays `capture` into `writer` following `steps`, and checks that the
/// steps wrote the whole capture.
pub(crate) async fn replay<W: AsyncWrite + Unpin>(
    writer: &mut W,
    capture: &Decoded,
    steps: &[Step],
    mut peer: watch::Receiver<Progress>,
    what: &str,
) -> Result<(), String> {
    let mut sent = 0;
    for step in steps {
        match *step {
            Step::Send(n) => {
                if sent + n > capture.packets.len() {
                    return Err(format!(
                        "{what}: the script sends packet {} of a capture of {}",
                        sent + n,
                        capture.packets.len()
                    ));
                }
                let (start, end) = (
                    capture.packet_start(sent),
                    capture.packets[sent + n - 1].end,
                );
                let write = async {
                    writer.write_all(&capture.bytes[start..end]).await?;
                    writer.flush().await
                };
                within(STEP_LIMIT, what, write)
                    .await
                    .map_err(|e| format!("{what}: write failed after {sent} packets: {e}"))?;
                sent += n;
            }
            Step::WaitFor(n) => {
                if !wait_packets(&mut peer, n, STEP_LIMIT).await {
                    let got = *peer.borrow();
                    return Err(format!(
                        "{what}: waited for {n} packets from the Rust side after sending {sent}, got {got:?}"
                    ));
                }
            }
            Step::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Step::Shutdown => {
                within(STEP_LIMIT, what, writer.shutdown())
                    .await
                    .map_err(|e| format!("{what}: shutdown failed: {e}"))?;
            }
        }
    }
    if sent != capture.packets.len() {
        return Err(format!(
            "{what}: the script sent {sent} of the capture's {} packets",
            capture.packets.len()
        ));
    }
    Ok(())
}
