//! A hostile peer against the real server over loopback TCP: a raw-wire
//! client that breaks every rule the server must survive. Budgets are
//! checked through the server's own accounting (the shared
//! [`MemoryBudget`] of its connections), never through timing; every loop
//! is bounded.
//!
//! `DRPC_ADVERSARIAL_SCALE=N` multiplies the floods (the long form, run by
//! `cargo xtask adversarial`); the default is the short form CI runs.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use drpc_manager::ManagerOptions;
use drpc_server::ServerOptions;
use drpc_stream::{FlowControl, MemoryBudget};
use drpc_wire::{
    CodedError as WireCodedError, Frame, FrameReader, Id, Kind, RESOURCE_EXHAUSTED, WindowUpdate,
    append_frame, append_packet, encode_metadata,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;
const STEP: Duration = Duration::from_secs(5);

fn scale() -> usize {
    std::env::var("DRPC_ADVERSARIAL_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// A raw DRPC client: frames in, frames out, nothing checked.
struct RawPeer {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl RawPeer {
    async fn connect(addr: SocketAddr) -> RawPeer {
        RawPeer::connect_with(addr, false).await
    }

    /// With `reset`, closing sends a reset instead of a FIN.
    async fn connect_with(addr: SocketAddr, reset: bool) -> RawPeer {
        let socket = TcpStream::connect(addr).await.expect("connect");
        socket.set_nodelay(true).expect("nodelay");
        if reset {
            // Zero linger: the close is a reset, and does not block.
            #[allow(deprecated)]
            socket.set_linger(Some(Duration::ZERO)).expect("linger");
        }
        let (r, w) = socket.into_split();
        RawPeer {
            reader: FrameReader::new(r, usize::MAX >> 1),
            writer: w,
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    async fn send(&mut self, stream: u64, message: u64, kind: Kind, data: &[u8]) {
        let mut buf = Vec::new();
        append_packet(&mut buf, Id::new(stream, message), kind, false, data, 0);
        self.send_raw(&buf).await.expect("peer write");
    }

    async fn read(&mut self) -> Option<Frame> {
        tokio::time::timeout(STEP, self.reader.read_frame())
            .await
            .expect("a frame within 5 s")
            .expect("read")
    }

    /// Reads until a frame of `stream` with `kind`.
    async fn read_until(&mut self, stream: u64, kind: Kind) -> Frame {
        loop {
            let f = self.read().await.expect("a frame, not the end");
            if f.id.stream == stream && f.kind == kind {
                return f;
            }
        }
    }

    /// A whole unary echo call on `stream`.
    async fn echo(&mut self, stream: u64, data: &[u8]) -> Bytes {
        self.send(stream, 1, Kind::INVOKE, ECHO.as_bytes()).await;
        self.send(stream, 2, Kind::MESSAGE, data).await;
        self.send(stream, 3, Kind::CLOSE_SEND, b"").await;
        self.read_until(stream, Kind::MESSAGE).await.data
    }
}

/// A server whose connections share `budget`, with `per_connection` bytes
/// each.
async fn server(budget: &Arc<MemoryBudget>, per_connection: usize) -> Harness {
    let manager = ManagerOptions {
        max_connection_memory: per_connection,
        shared_memory: Some(budget.clone()),
        ..ManagerOptions::default()
    };
    let opts = ServerOptions {
        manager,
        ..ServerOptions::default()
    };
    Harness::start_with(Transport::Tcp, opts).await
}

/// Polls `cond` every few milliseconds, at most `STEP`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(STEP, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Samples `budget` while `for_how_long` passes: never above `limit`.
async fn never_above(budget: &MemoryBudget, limit: usize, for_how_long: Duration) {
    let end = tokio::time::Instant::now() + for_how_long;
    while tokio::time::Instant::now() < end {
        let held = budget.held();
        assert!(held <= limit, "held {held} > {limit}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn innocent_call_works(h: &mut Harness) {
    let conn = h.connect().await;
    let reply = within(
        STEP,
        "an innocent call",
        conn.unary_with::<Bytes, Bytes, _>(&drpc_stream::Raw, ECHO, &b("ok"), &Default::default()),
    )
    .await
    .expect("served");
    assert_eq!(reply, b("ok"));
}

/// InvokeMetadata on stream after stream, never an Invoke: held at its
/// parsed size, and the connection stops reading at its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_invokes_are_held_within_the_budget() {
    within(TEST_LIMIT, "pending invokes", async {
        let budget = Arc::new(MemoryBudget::new(64 * MIB, None));
        let mut h = server(&budget, 4 * MIB).await;
        let mut peer = RawPeer::connect(h.tcp_addr().expect("tcp")).await;
        let mut md = Vec::new();
        let value = "v".repeat(200 * KIB);
        encode_metadata(&mut md, [("k", value.as_str())]);
        let flood = tokio::spawn(async move {
            for id in 1..=(200 * scale()) as u64 {
                let mut buf = Vec::new();
                append_packet(
                    &mut buf,
                    Id::new(id, 1),
                    Kind::INVOKE_METADATA,
                    false,
                    &md,
                    0,
                );
                if peer.send_raw(&buf).await.is_err() {
                    break;
                }
            }
        });
        eventually("the budget fills", || budget.held() > 3 * MIB).await;
        never_above(&budget, 4 * MIB, Duration::from_millis(300)).await;
        assert!(!flood.is_finished(), "the flooder is blocked by TCP");
        innocent_call_works(&mut h).await;
        flood.abort();
    })
    .await;
}

/// Metadata of many tiny entries costs far more parsed than on the wire:
/// refused at its parsed size, the connection ends and nothing is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_amplification_ends_the_connection() {
    within(TEST_LIMIT, "metadata amplification", async {
        let budget = Arc::new(MemoryBudget::new(64 * MIB, None));
        let mut h = server(&budget, 4 * MIB).await;
        let mut peer = RawPeer::connect(h.tcp_addr().expect("tcp")).await;
        let keys: Vec<String> = (0..20_000).map(|i| format!("{i:x}")).collect();
        let mut md = Vec::new();
        encode_metadata(&mut md, keys.iter().map(|k| (k.as_str(), "")));
        assert!(md.len() < 256 * KIB);
        peer.send(1, 1, Kind::INVOKE_METADATA, &md).await;
        assert!(
            peer.read().await.is_none(),
            "the server closed the connection"
        );
        eventually("freed", || budget.held() == 0).await;
        innocent_call_works(&mut h).await;
    })
    .await;
}

/// Calls whose handlers never read, and whose client goes on sending: the
/// queues fill up to the connection's budget, then the server stops
/// reading; other connections are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_of_blocked_calls_stay_within_the_budget() {
    within(TEST_LIMIT, "blocked calls", async {
        let budget = Arc::new(MemoryBudget::new(64 * MIB, None));
        let mut h = server(&budget, 8 * MIB).await;
        let mut peer = RawPeer::connect(h.tcp_addr().expect("tcp")).await;
        let flood = tokio::spawn(async move {
            let big = vec![0u8; MIB];
            for i in 0..(40 * scale()) as u64 {
                let id = 2 * i + 1;
                let mut buf = Vec::new();
                append_packet(
                    &mut buf,
                    Id::new(id, 1),
                    Kind::INVOKE,
                    false,
                    BLOCK.as_bytes(),
                    0,
                );
                for m in 2..5 {
                    append_packet(&mut buf, Id::new(id, m), Kind::MESSAGE, false, &big, 0);
                }
                if peer.send_raw(&buf).await.is_err() {
                    break;
                }
            }
            peer
        });
        eventually("the budget fills", || budget.held() > 6 * MIB).await;
        never_above(&budget, 8 * MIB, Duration::from_millis(300)).await;
        assert!(!flood.is_finished(), "the flooder is blocked by TCP");
        innocent_call_works(&mut h).await;
        flood.abort();
    })
    .await;
}

/// A client that pipelines calls of unknown methods with long names and
/// never reads: the replies wait in the writer, counted, and the server
/// stops reading; each reply quotes at most a KiB of the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_a_peer_that_does_not_read_are_bounded() {
    within(TEST_LIMIT, "unread replies", async {
        let budget = Arc::new(MemoryBudget::new(64 * MIB, None));
        let mut h = server(&budget, 4 * MIB).await;
        let peer = RawPeer::connect(h.tcp_addr().expect("tcp")).await;
        let RawPeer { reader, mut writer } = peer;
        // Names well over the KiB a reply quotes, and enough calls that
        // their replies outgrow whatever the kernel's socket buffers hold
        // (they grow to several MiB on loopback): the rest must wait in the
        // writer, counted.
        let name = format!("/unknown.Service/{}", "n".repeat(4 * KIB));
        let flood = tokio::spawn(async move {
            for i in 0..(20_000 * scale()) as u64 {
                let mut buf = Vec::new();
                append_packet(
                    &mut buf,
                    Id::new(i + 1, 1),
                    Kind::INVOKE,
                    false,
                    name.as_bytes(),
                    0,
                );
                append_packet(&mut buf, Id::new(i + 1, 2), Kind::MESSAGE, false, b"", 0);
                append_frame(
                    &mut buf,
                    Id::new(i + 1, 3),
                    Kind::CLOSE_SEND,
                    true,
                    false,
                    b"",
                );
                if writer.write_all(&buf).await.is_err() {
                    break;
                }
            }
            writer
        });
        eventually("the budget fills", || budget.held() > 2 * MIB).await;
        // The reader reserves room for what it reads; the replies of the
        // calls it has already read may still be appended over the limit,
        // a KiB or so each.
        never_above(&budget, 4 * MIB + 256 * KIB, Duration::from_millis(300)).await;
        innocent_call_works(&mut h).await;
        // The replies are short, whatever the name's length.
        let mut reader = reader;
        let reply = tokio::time::timeout(STEP, reader.read_frame())
            .await
            .expect("a reply")
            .expect("read")
            .expect("frame");
        assert_eq!(reply.kind, Kind::ERROR);
        assert!(
            reply.data.len() < 2 * KIB,
            "reply of {} bytes",
            reply.data.len()
        );
        flood.abort();
    })
    .await;
}

/// Invokes over the stream limit are refused one by one, cheaply, and the
/// connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_flood_keeps_the_connection() {
    within(TEST_LIMIT, "refusals", async {
        let opts = ServerOptions {
            manager: ManagerOptions {
                max_concurrent_streams: 2,
                ..ManagerOptions::default()
            },
            ..ServerOptions::default()
        };
        let mut h = Harness::start_with(Transport::Tcp, opts).await;
        let mut peer = RawPeer::connect(h.tcp_addr().expect("tcp")).await;
        for id in [1u64, 3] {
            peer.send(id, 1, Kind::INVOKE, BLOCK.as_bytes()).await;
            peer.send(id, 2, Kind::MESSAGE, b"").await;
        }
        h.probe.wait_n("block:start", 2, STEP).await;
        let n = 2000 * scale() as u64;
        let mut buf = Vec::new();
        for i in 0..n {
            append_packet(
                &mut buf,
                Id::new(5 + 2 * i, 1),
                Kind::INVOKE,
                false,
                ECHO.as_bytes(),
                0,
            );
        }
        peer.send_raw(&buf).await.expect("write");
        for _ in 0..n {
            let f = peer.read().await.expect("a refusal");
            assert_eq!(f.kind, Kind::ERROR, "{f:?}");
            assert!(
                WireCodedError::decode(&f.data)
                    .message()
                    .contains("concurrent streams")
            );
        }
        // The connection still works once a slot is free.
        peer.send(1, 3, Kind::CANCEL, b"").await;
        h.probe.wait_for("block:ctx", STEP).await;
        let reply = peer.echo(7 + 2 * n, b"after").await;
        assert_eq!(&reply[..], b"after");
    })
    .await;
}

/// A blocked call whose client sends more than its queue holds, then a
/// unary call on another stream, then hangs up: the other call is
/// answered, and the hang-up (FIN, or a reset) ends the blocked handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_of_line_and_disconnect() {
    for reset in [false, true] {
        within(TEST_LIMIT, "HOL and disconnect", async {
            let mut h = Harness::start(Transport::Tcp).await;
            let mut peer = RawPeer::connect_with(h.tcp_addr().expect("tcp"), reset).await;
            peer.send(1, 1, Kind::INVOKE, BLOCK.as_bytes()).await;
            peer.send(1, 2, Kind::MESSAGE, b"").await;
            h.probe.wait_for("block:start", STEP).await;
            let mut buf = Vec::new();
            for m in 0..257u64 {
                append_packet(
                    &mut buf,
                    Id::new(1, 3 + m),
                    Kind::MESSAGE,
                    false,
                    b"more",
                    0,
                );
            }
            peer.send_raw(&buf).await.expect("write");
            let reply = peer.echo(3, b"other").await;
            assert_eq!(&reply[..], b"other", "another stream is served");
            drop(peer);
            // The handler's context is cancelled: the server saw the end.
            h.probe.wait_for("block:ctx", STEP).await;
        })
        .await;
    }
}

/// Grants: the fork's, malformed ones, for unknown streams, to a server in
/// every mode; none ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_updates_never_end_the_connection() {
    for flow in [FlowControl::off(), FlowControl::auto(), FlowControl::fork()] {
        within(TEST_LIMIT, "window updates", async {
            let mut opts = ServerOptions::default();
            opts.manager.stream.flow_control = flow;
            let h = Harness::start_with(Transport::Tcp, opts).await;
            let mut peer = RawPeer::connect(h.tcp_addr().expect("tcp")).await;
            peer.send_raw(&[0x91, 0x01, 0x00, 0x03, 0x80, 0x80, 0x04])
                .await
                .expect("write");
            let mut buf = Vec::new();
            WindowUpdate {
                stream: 99,
                delta: u64::MAX,
            }
            .append_to(&mut buf);
            append_frame(
                &mut buf,
                Id::new(0, 0),
                Kind::WINDOW_UPDATE,
                true,
                true,
                &[5],
            );
            append_frame(
                &mut buf,
                Id::new(1, 0),
                Kind::WINDOW_UPDATE,
                true,
                false,
                &[5, 5],
            );
            peer.send_raw(&buf).await.expect("write");
            let reply = peer.echo(1, b"fine").await;
            assert_eq!(&reply[..], b"fine", "{flow:?}");
        })
        .await;
    }
}

/// A message over the server's limit fails its call alone, with
/// ResourceExhausted; another call on the same connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_fails_its_call_alone() {
    within(TEST_LIMIT, "oversize", async {
        let h = Harness::start(Transport::Tcp).await;
        let mut peer = RawPeer::connect(h.tcp_addr().expect("tcp")).await;
        peer.send(1, 1, Kind::INVOKE, ECHO.as_bytes()).await;
        peer.send(1, 2, Kind::MESSAGE, &vec![0u8; 5 * MIB]).await;
        let err = peer.read_until(1, Kind::ERROR).await;
        assert!(err.control, "abortive");
        let coded = WireCodedError::decode(&err.data);
        assert_eq!(coded.code(), RESOURCE_EXHAUSTED);
        assert!(coded.message().contains("message too large"), "{coded:?}");
        let reply = peer.echo(3, b"next").await;
        assert_eq!(&reply[..], b"next");
    })
    .await;
}
