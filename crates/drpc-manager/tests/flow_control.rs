//! Flow control, per-stream limits and the memory budget, against a
//! scripted raw peer: exactly what each mode puts on the wire, and that a
//! peer's grants, oversize messages and floods end at most their own
//! stream (mux-fork-2026.md §2, §7).

mod support;

use std::sync::Arc;

use bytes::Bytes;
use drpc_manager::{Manager, ManagerOptions, Role};
use drpc_stream::{FlowControl, MemoryBudget, StreamErrorKind};
use drpc_wire::{
    CodedError, FLOW_CONTROL_METADATA_KEY, FlowNegotiation, FlowParams, Frame, Id, Kind,
    RESOURCE_EXHAUSTED, WindowUpdate, decode_metadata,
};
use support::{
    Peer, bounded, eventually, frame, kind_of, metadata_payload, pattern, scripted, step,
};

const RPC: &str = "/service.Service/Method1";
const KIB: usize = 1024;

/// The fork's first WindowUpdate on stream 1 (64 KiB), mux-fork-2026.md §2.1.
const FORK_GRANT: [u8; 7] = [0x91, 0x01, 0x00, 0x03, 0x80, 0x80, 0x04];

fn options(flow: FlowControl) -> ManagerOptions {
    let mut opts = ManagerOptions::default();
    opts.stream.flow_control = flow;
    opts
}

fn small_fork() -> FlowControl {
    FlowControl::fork()
        .with_window(128 * KIB as u64, 32 * KIB as u64)
        .expect("valid")
}

/// A fork-mode client with one open stream, whose Invoke the scripted
/// peer has read.
async fn fork_call() -> (Manager, Arc<drpc_stream::Stream>, Peer) {
    let (client, mut peer) = scripted(Role::Client, options(small_fork()));
    let call = client
        .open_stream(RPC, &Default::default())
        .await
        .expect("open");
    peer.expect(frame(1, 1, Kind::INVOKE, RPC.as_bytes())).await;
    (client, Arc::new(call), peer)
}

fn grant(stream: u64, delta: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    WindowUpdate { stream, delta }.append_to(&mut buf);
    buf
}

/// The abortive Error the manager sends when the peer broke a limit.
fn assert_resource_exhausted(f: &Frame, stream: u64, text: &str) {
    assert_eq!(f.kind, Kind::ERROR, "{f:?}");
    assert_eq!(f.id.stream, stream);
    assert!(f.control && f.done, "abortive: header 0x87, {f:?}");
    let err = CodedError::decode(&f.data);
    assert_eq!(err.code(), RESOURCE_EXHAUSTED, "{err:?}");
    assert!(err.message().starts_with(text), "{err:?}");
}

/// Reads frames until one of `stream` with `kind` arrives; returns it and
/// what came before.
async fn read_until(peer: &mut Peer, stream: u64, kind: Kind) -> (Frame, Vec<Frame>) {
    let mut before = Vec::new();
    loop {
        let f = peer.read().await;
        if f.id.stream == stream && f.kind == kind {
            return (f, before);
        }
        before.push(f);
    }
}

/// The fork's grant, in every mode and on both sides, multiplexed and
/// sequential, is taken out before any id check: the connection goes on.
#[tokio::test]
async fn fork_window_update_never_ends_the_connection() {
    bounded(async {
        for flow in [FlowControl::off(), FlowControl::auto(), small_fork()] {
            for sequential in [false, true] {
                let opts = ManagerOptions {
                    sequential,
                    ..options(flow)
                };
                let (client, mut peer) = scripted(Role::Client, opts);
                let call = client
                    .open_stream(RPC, &Default::default())
                    .await
                    .expect("open");
                let (_, _) = read_until(&mut peer, 1, Kind::INVOKE).await;
                // Before and after the stream's first message: message id 0
                // is below everything the stream has seen.
                peer.send_raw(&FORK_GRANT).await;
                peer.send(1, 1, Kind::MESSAGE, b"one").await;
                peer.send_raw(&FORK_GRANT).await;
                peer.send(1, 2, Kind::MESSAGE, b"two").await;
                for want in [&b"one"[..], b"two"] {
                    let got = step("recv", call.recv()).await.expect("recv");
                    assert_eq!(
                        got.as_deref(),
                        Some(want),
                        "{flow:?} sequential={sequential}"
                    );
                }
                assert!(client.termination().is_none());
            }
            // A server too, also for a stream it does not know.
            let (server, mut peer) = scripted(Role::Server, options(flow));
            peer.send_raw(&FORK_GRANT).await;
            peer.send(1, 1, Kind::INVOKE, RPC.as_bytes()).await;
            peer.send_raw(&FORK_GRANT).await;
            peer.send(1, 2, Kind::MESSAGE, b"hi").await;
            let incoming = step("accept", server.accept()).await.expect("accepted");
            let got = step("recv", incoming.stream.recv()).await.expect("recv");
            assert_eq!(got.as_deref(), Some(&b"hi"[..]));
            assert!(server.termination().is_none(), "{flow:?}");
        }
    })
    .await;
}

/// Grants that do not conform are dropped, never fatal.
#[tokio::test]
async fn malformed_window_updates_are_dropped() {
    bounded(async {
        let (server, mut peer) = scripted(Role::Server, options(small_fork()));
        peer.send(1, 1, Kind::INVOKE, RPC.as_bytes()).await;
        let incoming = step("accept", server.accept()).await.expect("accepted");
        let s = incoming.stream;
        let bad: [(bool, bool, u64, &[u8]); 6] = [
            (true, false, 1, &[0x05]),      // no control bit
            (false, true, 1, &[0x05]),      // not done
            (true, true, 0, &[0x05]),       // stream 0
            (true, true, 1, &[]),           // no delta
            (true, true, 1, &[0x00]),       // zero delta
            (true, true, 1, &[0x05, 0x01]), // trailing byte
        ];
        for (done, control, stream, payload) in bad {
            peer.send_frame(stream, 0, Kind::WINDOW_UPDATE, done, control, payload)
                .await;
        }
        peer.send(1, 2, Kind::MESSAGE, b"still here").await;
        let got = step("recv", s.recv()).await.expect("recv");
        assert_eq!(got.as_deref(), Some(&b"still here"[..]));
        assert!(server.termination().is_none());
    })
    .await;
}

/// Fork mode, client side, byte for byte: Messages are gated by the
/// window (the first frame must fit, the rest may overdraw), grants
/// release them, and what the application consumes is granted back in
/// WindowUpdates of at least the threshold.
#[tokio::test]
async fn fork_mode_gates_sends_and_grants_on_consume() {
    bounded(async {
        let (_client, call, mut peer) = fork_call().await;
        // 128 KiB of credit: two 64 KiB messages go, the third waits.
        let sender = {
            let call = call.clone();
            tokio::spawn(async move {
                for i in 0..3 {
                    call.send(&pattern(1, i, 64 * KIB)).await.expect("send");
                }
            })
        };
        for i in 0..2 {
            let f = peer.read().await;
            assert_eq!(
                (f.id, f.kind, f.data.len()),
                (Id::new(1, 2 + i as u64), Kind::MESSAGE, 64 * KIB)
            );
        }
        peer.expect_silence().await;
        assert!(!sender.is_finished());
        // A grant of one byte is not enough: the first frame must fit.
        peer.send_raw(&grant(1, 1)).await;
        peer.expect_silence().await;
        peer.send_raw(&grant(1, 64 * KIB as u64 - 1)).await;
        let f = peer.read().await;
        assert_eq!((f.id, f.data.len()), (Id::new(1, 4), 64 * KIB));
        step("sender", sender).await.expect("sender task");

        // Receiving: 20 KiB consumed grants nothing, 40 KiB grants 40 KiB.
        for i in 0..2u64 {
            peer.send(1, 1 + i, Kind::MESSAGE, &vec![7u8; 20 * KIB])
                .await;
        }
        assert!(step("recv", call.recv()).await.expect("recv").is_some());
        peer.expect_silence().await;
        assert!(step("recv", call.recv()).await.expect("recv").is_some());
        let f = peer.read().await;
        let mut want = Vec::new();
        WindowUpdate {
            stream: 1,
            delta: 40 * KIB as u64,
        }
        .append_to(&mut want);
        assert_eq!(want, [0x91, 0x01, 0x00, 0x03, 0x80, 0xc0, 0x02]);
        assert_eq!(WindowUpdate::parse(&f), WindowUpdate::parse(&decode(&want)));
        assert_eq!((f.id.message, f.control, f.done), (0, true, true));
    })
    .await;
}

fn decode(bytes: &[u8]) -> Frame {
    let (f, _) = Frame::parse(&Bytes::copy_from_slice(bytes))
        .expect("parses")
        .expect("whole");
    f
}

/// A cancel releases a sender waiting for credit, and the Cancel goes out.
#[tokio::test]
async fn cancel_releases_a_sender_waiting_for_credit() {
    bounded(async {
        let (_client, call, mut peer) = fork_call().await;
        call.send(&vec![0u8; 200 * KIB]).await.expect("overdraws");
        let blocked = {
            let call = call.clone();
            tokio::spawn(async move { call.send(b"x").await })
        };
        while !peer.read().await.done {}
        peer.expect_silence().await;
        call.cancel(StreamErrorKind::Canceled(drpc_stream::Initiator::Local));
        let err = step("blocked send", blocked)
            .await
            .expect("task")
            .expect_err("cancelled");
        assert!(call.check_cancel(err).is_canceled());
        let (f, _) = read_until(&mut peer, 1, Kind::CANCEL).await;
        assert!(f.control);
    })
    .await;
}

/// Auto mode against a peer that never answers the offer (a stock or fork
/// server): the offer is one metadata entry, the client never waits for
/// credit, and nothing it sends is a kind the peer would reject: no
/// WindowUpdate, no negotiation packet, message ids always rising.
#[tokio::test]
async fn auto_client_sends_nothing_new_to_a_peer_that_never_accepts() {
    bounded(async {
        let (client, mut peer) = scripted(Role::Client, ManagerOptions::default());
        let call = Arc::new(
            client
                .open_stream(RPC, &Default::default())
                .await
                .expect("open"),
        );
        let md = peer.read().await;
        assert_eq!((md.id, md.kind), (Id::new(1, 1), Kind::INVOKE_METADATA));
        let offered = decode_metadata(&md.data).expect("metadata");
        let params = FlowParams::parse_metadata_value(&offered[FLOW_CONTROL_METADATA_KEY])
            .expect("an offer");
        assert_eq!(params.window, FlowControl::AUTO_WINDOW);
        peer.expect(frame(1, 2, Kind::INVOKE, RPC.as_bytes())).await;

        // Far more than a window each way.
        const N: usize = 64;
        let sender = {
            let call = call.clone();
            tokio::spawn(async move {
                for i in 0..N {
                    call.send(&pattern(1, i, 64 * KIB)).await.expect("send");
                }
                call.close_send().expect("close_send");
            })
        };
        let reader = tokio::spawn(async move {
            let mut frames = Vec::new();
            loop {
                let f = peer.read().await;
                let end = f.kind == Kind::CLOSE_SEND;
                frames.push(f);
                if end {
                    break;
                }
            }
            for i in 0..N {
                peer.send(1, 1 + i as u64, Kind::MESSAGE, &pattern(9, i, 64 * KIB))
                    .await;
            }
            peer.send(1, N as u64 + 1, Kind::CLOSE_SEND, b"").await;
            (peer, frames)
        });
        step("sender", sender).await.expect("sender");
        for i in 0..N {
            let got = step("recv", call.recv())
                .await
                .expect("recv")
                .expect("message");
            assert_eq!(got, pattern(9, i, 64 * KIB));
        }
        assert_eq!(step("recv", call.recv()).await.expect("end"), None);
        let (mut peer, mut frames) = step("reader", reader).await.expect("reader");
        // Whatever consuming 4 MiB made the client write, written out.
        client
            .close_gracefully(std::time::Duration::from_secs(5))
            .await;
        frames.extend(peer.expect_eof().await);
        let mut last = 2;
        for f in &frames {
            assert!(
                f.kind == Kind::MESSAGE || f.kind == Kind::CLOSE_SEND,
                "only what a stock peer knows: {f:?}"
            );
            assert!(!f.control, "{f:?}");
            assert!(f.id.message >= last, "ids rise: {f:?}");
            last = f.id.message;
        }
    })
    .await;
}

/// Auto mode, server side, byte for byte: an offer is taken out of the
/// metadata, the acceptance is the stream's first packet, the server's
/// sends are gated by the client's window, and from the client's gating
/// marker on the client is held to the server's window plus one message.
#[tokio::test]
async fn auto_server_accepts_an_offer() {
    bounded(async {
        let (server, mut peer) = scripted(Role::Server, ManagerOptions::default());
        let offer = FlowParams {
            window: 128 * KIB as u64,
            max_message: 4 << 20,
        }
        .to_metadata_value();
        peer.send(
            1,
            1,
            Kind::INVOKE_METADATA,
            &metadata_payload(&[(FLOW_CONTROL_METADATA_KEY, &offer), ("k", "v")]),
        )
        .await;
        peer.send(1, 2, Kind::INVOKE, RPC.as_bytes()).await;
        let incoming = step("accept", server.accept()).await.expect("accepted");
        assert_eq!(
            incoming.metadata.keys().collect::<Vec<_>>(),
            ["k"],
            "the offer is the library's, not the handler's"
        );
        let accept = peer.read().await;
        assert_eq!(accept.id, Id::new(1, 1));
        assert_eq!(accept.kind, Kind::FLOW_NEGOTIATION);
        assert!(accept.control && accept.done);
        let own = FlowParams {
            window: FlowControl::AUTO_WINDOW,
            max_message: 4 << 20,
        };
        assert_eq!(
            FlowNegotiation::parse(&accept.data),
            Some(FlowNegotiation::Accept(
                own,
                drpc_wire::CompressionSet::supported()
            ))
        );
        let s = Arc::new(incoming.stream);
        let sender = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..3 {
                    s.send(&pattern(1, i, 64 * KIB)).await.expect("send");
                }
            })
        };
        for m in 2..4 {
            let f = peer.read().await;
            assert_eq!((f.id, f.kind), (Id::new(1, m), Kind::MESSAGE));
        }
        peer.expect_silence().await;
        peer.send_raw(&grant(1, 64 * KIB as u64)).await;
        let f = peer.read().await;
        assert_eq!(f.id, Id::new(1, 4));
        step("sender", sender).await.expect("sender");

        // Before the marker the client's data is not held to the window.
        let window = FlowControl::AUTO_WINDOW as usize;
        for m in 0..3u64 {
            peer.send(1, 3 + m, Kind::MESSAGE, &vec![1u8; window / 2])
                .await;
        }
        let mut marker = Vec::new();
        FlowNegotiation::Gating.append_to(&mut marker, Id::new(1, 6));
        peer.send_raw(&marker).await;
        // After it: the window plus one message of 4 MiB, not a byte more.
        let mut id = 7;
        for _ in 0..window / (4 << 20) + 1 {
            peer.send(1, id, Kind::MESSAGE, &vec![2u8; 4 << 20]).await;
            id += 1;
        }
        peer.send(1, id, Kind::MESSAGE, b"x").await;
        let (f, _) = read_until(&mut peer, 1, Kind::ERROR).await;
        assert_resource_exhausted(&f, 1, "receive queue cap exceeded");
        // The handler drains what was queued, then sees the overflow.
        for _ in 0..3 + window / (4 << 20) + 1 {
            assert!(step("recv", s.recv()).await.expect("queued").is_some());
        }
        let err = kind_of(step("recv", s.recv()).await);
        assert!(
            matches!(err, StreamErrorKind::QueueOverflow { .. }),
            "{err:?}"
        );
        assert!(server.termination().is_none());
    })
    .await;
}

/// A message over the size limit fails its stream only; the connection
/// and its other streams go on. A single frame declared over the limit
/// still ends the connection.
#[tokio::test]
async fn oversize_message_fails_only_its_stream() {
    bounded(async {
        let mut opts = options(FlowControl::off());
        opts.stream.max_packet_size = 256 * KIB;
        let (server, mut peer) = scripted(Role::Server, opts.clone());
        peer.send(1, 1, Kind::INVOKE, RPC.as_bytes()).await;
        peer.send(3, 1, Kind::INVOKE, RPC.as_bytes()).await;
        let first = step("accept", server.accept()).await.expect("accepted");
        let second = step("accept", server.accept()).await.expect("accepted");
        // Five 64 KiB frames: 320 KiB.
        peer.send(1, 2, Kind::MESSAGE, &vec![0u8; 320 * KIB]).await;
        let (f, _) = read_until(&mut peer, 1, Kind::ERROR).await;
        assert_resource_exhausted(&f, 1, "message too large");
        let err = step("recv", first.stream.recv()).await.expect_err("failed");
        assert!(err.is_too_large(), "{err:?}");
        assert!(matches!(
            err.kind(),
            StreamErrorKind::ReceivedTooLarge { limit, .. } if *limit == 256 * KIB
        ));
        peer.send(3, 2, Kind::MESSAGE, b"other").await;
        let got = step("recv", second.stream.recv()).await.expect("recv");
        assert_eq!(got.as_deref(), Some(&b"other"[..]));
        assert!(server.termination().is_none());

        // One frame declared larger than the limit is a framing error.
        let (server, mut peer) = scripted(Role::Server, opts);
        peer.send(1, 1, Kind::INVOKE, RPC.as_bytes()).await;
        let _accepted = step("accept", server.accept()).await.expect("accepted");
        peer.send_frame(1, 2, Kind::MESSAGE, true, false, &vec![0u8; 300 * KIB])
            .await;
        let end = step("closed", server.closed()).await;
        assert!(end.is_protocol_violation(), "{end}");
    })
    .await;
}

/// Without flow control, a stream whose application does not read fails
/// alone once its queue is full while other streams share the connection;
/// the only stream of a connection keeps queueing instead.
#[tokio::test]
async fn unread_stream_fails_alone_or_queues_when_alone() {
    bounded(async {
        let mut opts = options(FlowControl::off());
        opts.stream.recv_queue_messages = 4;
        // Alone: everything is queued.
        let (server, mut peer) = scripted(Role::Server, opts.clone());
        peer.send(1, 1, Kind::INVOKE, RPC.as_bytes()).await;
        let only = step("accept", server.accept()).await.expect("accepted");
        for m in 0..10u64 {
            peer.send(1, 2 + m, Kind::MESSAGE, &[m as u8]).await;
        }
        peer.send(1, 12, Kind::CLOSE_SEND, b"").await;
        for m in 0..10u8 {
            let got = step("recv", only.stream.recv()).await.expect("recv");
            assert_eq!(got.as_deref(), Some(&[m][..]));
        }
        assert_eq!(step("recv", only.stream.recv()).await.expect("end"), None);

        // Shared: the unread stream fails, the other goes on.
        let (server, mut peer) = scripted(Role::Server, opts);
        peer.send(1, 1, Kind::INVOKE, RPC.as_bytes()).await;
        peer.send(3, 1, Kind::INVOKE, RPC.as_bytes()).await;
        let unread = step("accept", server.accept()).await.expect("accepted");
        let busy = step("accept", server.accept()).await.expect("accepted");
        for m in 0..10u64 {
            peer.send(1, 2 + m, Kind::MESSAGE, &[m as u8]).await;
        }
        let (f, _) = read_until(&mut peer, 1, Kind::ERROR).await;
        assert_resource_exhausted(&f, 1, "receive queue cap exceeded");
        for m in 0..100u64 {
            peer.send(3, 2 + m, Kind::MESSAGE, b"m").await;
            assert!(
                step("recv", busy.stream.recv())
                    .await
                    .expect("recv")
                    .is_some()
            );
        }
        for m in 0..4u8 {
            let got = step("recv", unread.stream.recv()).await.expect("queued");
            assert_eq!(got.as_deref(), Some(&[m][..]));
        }
        let err = step("recv", unread.stream.recv())
            .await
            .expect_err("overflow");
        assert!(err.is_resource_exhausted(), "{err:?}");
        assert!(server.termination().is_none());
    })
    .await;
}

/// The connection's budget counts pending invokes at their parsed size;
/// past it the reader stops reading (the peer's writes then block), and
/// what it held is freed when the connection ends.
#[tokio::test]
async fn pending_invokes_are_bounded_by_the_budget() {
    bounded(async {
        let shared = Arc::new(MemoryBudget::new(usize::MAX, None));
        let opts = ManagerOptions {
            max_connection_memory: 2 << 20,
            shared_memory: Some(shared.clone()),
            ..ManagerOptions::default()
        };
        let (ours, theirs) = tokio::io::duplex(64 * KIB);
        let server = Manager::new(ours, Role::Server, opts.clone());
        let mut peer = Peer::new(theirs);
        // 200 KiB of metadata per stream id, never an Invoke.
        let md = metadata_payload(&[("k", &"x".repeat(200 * KIB))]);
        let flood = tokio::spawn(async move {
            for id in 1..=1000u64 {
                peer.send(id, 1, Kind::INVOKE_METADATA, &md).await;
            }
            peer
        });
        // Each stream id holds about 200 KiB: the reader stops when the
        // next one would not fit.
        eventually("the reader pauses", || {
            server.held_bytes() > (2 << 20) - 210 * KIB
        })
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let held = server.held_bytes();
        assert!(held <= 2 << 20, "never over the limit: {held}");
        assert!(!flood.is_finished(), "the peer's writes are blocked");
        assert_eq!(shared.held(), held);
        server.close().await;
        flood.abort();
        eventually("freed", || shared.held() == 0).await;
    })
    .await;
}

/// Many tiny metadata entries are charged at their parsed size: a packet
/// whose parsed size is over the limit ends the connection.
#[tokio::test]
async fn metadata_amplification_is_refused() {
    bounded(async {
        let (server, mut peer) = scripted(Role::Server, ManagerOptions::default());
        let keys: Vec<String> = (0..20_000).map(|i| format!("{i:x}")).collect();
        let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "")).collect();
        let payload = metadata_payload(&pairs);
        assert!(payload.len() < 256 * KIB, "small on the wire");
        peer.send(1, 1, Kind::INVOKE_METADATA, &payload).await;
        let end = step("closed", server.closed()).await;
        assert!(end.is_protocol_violation(), "{end}");
        assert!(end.to_string().contains("metadata"), "{end}");
    })
    .await;
}

/// A stream without flow control that queued past its bounds while it was
/// its connection's only stream, and filled the connection's budget, is
/// failed alone once another stream opens: the reader goes on, and the
/// new call is served.
#[tokio::test]
async fn a_lone_stream_over_its_bounds_yields_to_a_new_one() {
    bounded(async {
        let mut opts = options(FlowControl::off());
        opts.max_connection_memory = 1 << 20;
        opts.stream.recv_queue_bytes = 128 * KIB;
        let (ours, theirs) = tokio::io::duplex(64 * KIB);
        let client = Manager::new(ours, Role::Client, opts);
        let (r, w) = tokio::io::split(theirs);
        let mut peer_reader = drpc_wire::FrameReader::new(r, usize::MAX >> 1);
        let unread = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        let first = peer_reader
            .read_frame()
            .await
            .expect("read")
            .expect("invoke");
        assert_eq!(first.kind, Kind::INVOKE);
        // 4 MiB for the unread stream: far past its bounds and the budget.
        let flood = tokio::spawn(async move {
            let mut w = w;
            for m in 0..64u64 {
                let mut buf = Vec::new();
                drpc_wire::append_packet(
                    &mut buf,
                    Id::new(1, 1 + m),
                    Kind::MESSAGE,
                    false,
                    &[m as u8; 64 * KIB],
                    0,
                );
                tokio::io::AsyncWriteExt::write_all(&mut w, &buf)
                    .await
                    .expect("write");
            }
            w
        });
        eventually("the reader pauses", || client.held_bytes() > 900 * KIB).await;
        assert!(!flood.is_finished());
        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        // The unread stream fails alone; the rest of its flood is dropped.
        let mut w = step("flood", flood).await.expect("flood task");
        loop {
            let f = step("peer read", peer_reader.read_frame())
                .await
                .expect("read")
                .expect("frame");
            if f.id.stream == 1 && f.kind == Kind::ERROR {
                assert_resource_exhausted(&f, 1, "receive queue cap exceeded");
                break;
            }
        }
        let mut reply = Vec::new();
        drpc_wire::append_packet(
            &mut reply,
            Id::new(2, 1),
            Kind::MESSAGE,
            false,
            b"served",
            0,
        );
        tokio::io::AsyncWriteExt::write_all(&mut w, &reply)
            .await
            .expect("write");
        let got = step("recv", call.recv()).await.expect("recv");
        assert_eq!(got.as_deref(), Some(&b"served"[..]));
        // What fit the bounds is still delivered, then the overflow.
        let mut delivered = 0;
        loop {
            match step("recv", unread.recv()).await {
                Ok(Some(_)) => delivered += 1,
                Ok(None) => panic!("a clean end"),
                Err(e) => {
                    assert!(e.is_resource_exhausted(), "{e:?}");
                    break;
                }
            }
        }
        assert!((1..=2).contains(&delivered), "{delivered}");
        assert!(client.held_bytes() < 64 * KIB, "{}", client.held_bytes());
    })
    .await;
}

/// Messages waiting to be written to peers that do not read stay within
/// the write budget the connections share; the senders wait, and go on
/// once a peer reads.
#[tokio::test]
async fn the_shared_write_budget_bounds_what_waits_for_slow_peers() {
    bounded(async {
        let write_budget = Arc::new(MemoryBudget::new(256 * KIB, None));
        let mut opts = options(FlowControl::off());
        opts.shared_write_memory = Some(write_budget.clone());
        let mut peers = Vec::new();
        let mut senders = Vec::new();
        for _ in 0..2 {
            let (theirs, ours) = tokio::io::duplex(16 * KIB);
            let server = Manager::new(ours, Role::Server, opts.clone());
            let mut peer = Peer::new(theirs);
            peer.send(1, 1, Kind::INVOKE, RPC.as_bytes()).await;
            let incoming = step("accept", server.accept()).await.expect("accepted");
            let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = sent.clone();
            senders.push((
                tokio::spawn(async move {
                    let _server = server;
                    for i in 0..64 {
                        incoming
                            .stream
                            .send(&pattern(1, i, 64 * KIB))
                            .await
                            .expect("send");
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }),
                sent,
            ));
            peers.push(peer);
        }
        eventually("the budget fills", || write_budget.held() > 128 * KIB).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(write_budget.held() <= 256 * KIB, "{}", write_budget.held());
        let before: usize = senders
            .iter()
            .map(|(_, n)| n.load(std::sync::atomic::Ordering::SeqCst))
            .sum();
        assert!(before <= 6, "the senders wait: {before} sent");
        // One peer reads everything: its sender finishes.
        let mut reader = peers.remove(0);
        let mut messages = 0;
        while messages < 64 {
            if reader.read().await.done {
                messages += 1;
            }
        }
        let (first, _) = senders.remove(0);
        step("first sender", first).await.expect("sender");
        assert!(write_budget.held() <= 256 * KIB);
    })
    .await;
}

/// An auto server whose client did not offer flow control (a stock or
/// fork client) sends it nothing new: no acceptance, no grant, however
/// much its handler consumes, and its sends are never gated.
#[tokio::test]
async fn auto_server_sends_nothing_new_to_a_client_that_did_not_offer() {
    bounded(async {
        let (server, mut peer) = scripted(Role::Server, ManagerOptions::default());
        peer.send(1, 1, Kind::INVOKE, RPC.as_bytes()).await;
        let incoming = step("accept", server.accept()).await.expect("accepted");
        let s = Arc::new(incoming.stream);
        // 4 MiB in, consumed; 4 MiB out, never granted.
        let reader = {
            let s = s.clone();
            tokio::spawn(async move {
                for _ in 0..64 {
                    assert!(s.recv().await.expect("recv").is_some());
                }
                for i in 0..64 {
                    s.send(&pattern(1, i, 64 * KIB)).await.expect("send");
                }
                s.close_send().expect("close_send");
            })
        };
        let writer = tokio::spawn(async move {
            for m in 0..64u64 {
                peer.send(1, 2 + m, Kind::MESSAGE, &vec![0u8; 64 * KIB])
                    .await;
            }
            let mut frames = Vec::new();
            loop {
                let f = peer.read().await;
                let end = f.kind == Kind::CLOSE_SEND;
                frames.push(f);
                if end {
                    return frames;
                }
            }
        });
        step("handler", reader).await.expect("handler");
        let frames = step("peer", writer).await.expect("peer");
        assert_eq!(frames.len(), 65);
        let mut last = 0;
        for f in &frames {
            assert!(
                f.kind == Kind::MESSAGE || f.kind == Kind::CLOSE_SEND,
                "only what a stock client knows: {f:?}"
            );
            assert!(!f.control && f.id.message > last, "{f:?}");
            last = f.id.message;
        }
    })
    .await;
}
