//! Sequential mode (multiplexing.md §9.3): a client that talks to the
//! original one-stream-at-a-time Go implementation runs one stream at a
//! time, writes nothing for stream N+1 before stream N has terminated, and
//! checks the original connection-wide id order on what it receives.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use drpc_manager::{Manager, ManagerOptions, Role};
use drpc_stream::{ConnectionError, Initiator, StreamErrorKind};
use drpc_wire::{ConnectionIdOrder, Frame, FrameReader, Id, Kind, WireError, append_frame};
use support::{
    Recording, assert_connection_lost, assert_pending, bounded, decode_all, eventually, frame,
    kind_of, pattern, scripted, step, written,
};
use tokio::io::AsyncWriteExt;

const RPC: &str = "/service.Service/Method1";

fn sequential() -> ManagerOptions {
    ManagerOptions {
        sequential: true,
        ..ManagerOptions::default()
    }
}

/// Plays an original server: reads each stream's Invoke, Message and
/// CloseSend, watches that nothing else arrives for a while, then answers
/// with Message (`"re <n>"`) and CloseSend. Fails if a frame of another
/// stream arrives while a stream is unanswered. Returns the frames read.
async fn original_server(io: tokio::io::DuplexStream) -> Vec<Frame> {
    let (r, mut w) = tokio::io::split(io);
    let mut reader = FrameReader::new(r, 1 << 20);
    let mut seen = Vec::new();
    let mut open: Option<u64> = None;
    loop {
        let frame = match reader.read_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => return seen,
            Err(e) => panic!("original server read: {e}"),
        };
        let id = frame.id.stream;
        if let Some(current) = open {
            assert_eq!(
                id, current,
                "frame {frame:?} while stream {current} is unanswered"
            );
        }
        open = Some(id);
        let kind = frame.kind;
        seen.push(frame);
        if kind == Kind::CLOSE_SEND {
            // Nothing of the next stream may arrive before this one is
            // answered (and so could have terminated).
            if let Ok(next) =
                tokio::time::timeout(Duration::from_millis(5), reader.read_frame()).await
            {
                panic!("{next:?} arrived before stream {id} was answered");
            }
            let mut reply = Vec::new();
            let text = format!("re {id}");
            append_frame(
                &mut reply,
                Id::new(id, 1),
                Kind::MESSAGE,
                true,
                false,
                text.as_bytes(),
            );
            append_frame(
                &mut reply,
                Id::new(id, 2),
                Kind::CLOSE_SEND,
                true,
                false,
                b"",
            );
            if w.write_all(&reply).await.is_err() {
                return seen;
            }
            open = None;
        }
    }
}

/// 20 streams opened at once from 20 tasks run one after another: the
/// client's writes never go back to an earlier stream, follow the original
/// connection-wide id order, and each stream is Invoke, Message, CloseSend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_opens_run_one_stream_at_a_time() {
    bounded(async {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (transport, log) = Recording::new(ours);
        let client = Manager::new(transport, Role::Client, sequential());
        let peer = tokio::spawn(original_server(theirs));

        let mut calls = Vec::new();
        for n in 0..20u64 {
            let client = client.clone();
            calls.push(tokio::spawn(async move {
                let call = client
                    .open_stream(RPC, &Default::default())
                    .await
                    .expect("open");
                assert!(!client.is_unblocked(), "a stream is open");
                call.send(&pattern(n, 0, 100 + n as usize))
                    .await
                    .expect("send");
                call.close_send().expect("close_send");
                let reply = call.recv().await.expect("recv").expect("reply");
                assert_eq!(reply[..], *format!("re {}", call.id()).as_bytes());
                assert_eq!(call.recv().await.expect("end"), None);
                (call.id(), n)
            }));
        }
        let mut ids = BTreeMap::new();
        for c in calls {
            let (id, n) = c.await.expect("call task");
            ids.insert(id, n);
        }
        assert_eq!(
            ids.keys().copied().collect::<Vec<_>>(),
            (1..=20).collect::<Vec<u64>>()
        );
        eventually("last stream gone", || client.active_streams() == 0).await;
        assert!(client.is_unblocked());
        assert!(client.termination().is_none());

        step("close", client.close()).await;
        let seen = step("peer", peer).await.expect("peer task");

        let frames = decode_all(&written(&log));
        assert_eq!(frames, seen, "the peer read what was written");
        let mut order = ConnectionIdOrder::new();
        let mut last_stream = 0;
        for f in &frames {
            assert!(
                f.id.stream >= last_stream,
                "{f:?} after stream {last_stream}"
            );
            last_stream = f.id.stream;
            order
                .check(f.id, f.done)
                .unwrap_or_else(|e| panic!("{f:?}: {e}"));
        }
        assert_eq!(frames.len(), 60);
        for (chunk, id) in frames.chunks(3).zip(1..) {
            let n = ids[&id];
            assert_eq!(
                chunk,
                [
                    frame(id, 1, Kind::INVOKE, RPC.as_bytes()),
                    frame(id, 2, Kind::MESSAGE, &pattern(n, 0, 100 + n as usize)),
                    frame(id, 3, Kind::CLOSE_SEND, b""),
                ]
            );
        }
    })
    .await
}

/// The next stream waits for the previous one to terminate; a cancelled
/// stream's Cancel is written before the next Invoke.
#[tokio::test]
async fn next_stream_waits_for_the_previous_to_terminate() {
    bounded(async {
        let (client, mut peer) = scripted(Role::Client, sequential());
        assert!(client.is_unblocked());
        let first = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        assert!(!client.is_unblocked());
        first.send(b"a").await.expect("send");
        first.close_send().expect("close_send");
        // Half closed is not terminated: the next open waits.
        assert_pending("second open", client.open_stream(RPC, &Default::default())).await;
        peer.expect(frame(1, 1, Kind::INVOKE, RPC.as_bytes())).await;
        peer.expect(frame(1, 2, Kind::MESSAGE, b"a")).await;
        peer.expect(frame(1, 3, Kind::CLOSE_SEND, b"")).await;
        peer.expect_silence().await;

        // The peer's Close terminates it: the next stream starts.
        peer.send(1, 1, Kind::CLOSE, b"").await;
        let second = step("second open", client.open_stream(RPC, &Default::default()))
            .await
            .expect("open");
        assert_eq!(second.id(), 2);
        assert_eq!(first.recv().await.expect("end"), None);
        peer.expect(frame(2, 1, Kind::INVOKE, RPC.as_bytes())).await;

        // A cancel ends it; its Cancel precedes the next Invoke.
        second.send(b"b").await.expect("send");
        second.cancel(StreamErrorKind::Canceled(Initiator::Local));
        let third = step("third open", client.open_stream(RPC, &Default::default()))
            .await
            .expect("open");
        peer.expect(frame(2, 2, Kind::MESSAGE, b"b")).await;
        peer.expect(frame(2, 3, Kind::CANCEL, b"")).await;
        peer.expect(frame(3, 1, Kind::INVOKE, RPC.as_bytes())).await;

        // Dropping an open stream cancels it too, which lets the next one
        // start.
        drop(third);
        peer.expect(frame(3, 2, Kind::CANCEL, b"")).await;
        let fourth = step("fourth open", client.open_stream(RPC, &Default::default()))
            .await
            .expect("open");
        peer.expect(frame(4, 1, Kind::INVOKE, RPC.as_bytes())).await;
        assert_eq!(fourth.id(), 4);

        // So does a local Close (catalogue 42).
        assert!(!client.is_unblocked());
        fourth.close().expect("close");
        assert!(client.is_unblocked());
        peer.expect(frame(4, 2, Kind::CLOSE, b"")).await;
        let fifth = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        peer.expect(frame(5, 1, Kind::INVOKE, RPC.as_bytes())).await;
        assert_eq!(fifth.id(), 5);
        assert!(client.termination().is_none());
    })
    .await
}

/// Opens waiting for their turn fail when the connection ends.
#[tokio::test]
async fn waiting_opens_fail_when_the_connection_ends() {
    bounded(async {
        let (client, _peer) = scripted(Role::Client, sequential());
        let _first = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        let waiting = {
            let client = client.clone();
            tokio::spawn(async move { client.open_stream(RPC, &Default::default()).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        step("close", client.close()).await;
        let err = step("waiting open", waiting)
            .await
            .expect("task")
            .expect_err("connection closed");
        assert_eq!(err.stream_id(), 0);
        assert_connection_lost(err.kind(), &ConnectionError::Closed);
    })
    .await
}

/// A frame of an earlier stream after a later one has started breaks the
/// original id order: the sequential client ends the connection with
/// IdMonotonicity. A multiplexed client drops the same frame.
#[tokio::test]
async fn frame_of_an_earlier_stream_breaks_the_id_order() {
    for sequential_mode in [true, false] {
        bounded(async {
            let mut opts = ManagerOptions {
                sequential: sequential_mode,
                ..ManagerOptions::default()
            };
            // The multiplexed client talks to a scripted stock peer.
            opts.stream.flow_control = drpc_stream::FlowControl::off();
            let (client, mut peer) = scripted(Role::Client, opts);
            let first = client
                .open_stream(RPC, &Default::default())
                .await
                .expect("open");
            first.close_send().expect("close_send");
            peer.expect(frame(1, 1, Kind::INVOKE, RPC.as_bytes())).await;
            peer.expect(frame(1, 2, Kind::CLOSE_SEND, b"")).await;
            peer.send(1, 1, Kind::MESSAGE, b"one").await;
            peer.send(1, 2, Kind::CLOSE_SEND, b"").await;
            assert_eq!(
                first.recv().await.expect("recv").as_deref(),
                Some(&b"one"[..])
            );
            assert_eq!(first.recv().await.expect("end"), None);

            let second = step("open", client.open_stream(RPC, &Default::default()))
                .await
                .expect("open");
            peer.expect(frame(2, 1, Kind::INVOKE, RPC.as_bytes())).await;
            peer.send(2, 1, Kind::MESSAGE, b"two").await;
            assert_eq!(
                second.recv().await.expect("recv").as_deref(),
                Some(&b"two"[..])
            );

            // A late frame of stream 1.
            peer.send(1, 3, Kind::MESSAGE, b"late").await;
            if sequential_mode {
                let err = kind_of(step("recv", second.recv()).await);
                let want = ConnectionError::Wire(WireError::IdMonotonicity {
                    frame: Id::new(1, 3),
                    last: Id::new(2, 2),
                });
                assert_connection_lost(&err, &want);
                assert_eq!(
                    err.to_string(),
                    "manager closed: protocol error: id monotonicity violation \
                     (fr:<id s:1 m:3> r:<id s:2 m:2>)"
                );
                assert!(matches!(
                    client.termination(),
                    Some(ConnectionError::Wire(WireError::IdMonotonicity { .. }))
                ));
                peer.expect_eof().await;
            } else {
                peer.send(2, 2, Kind::MESSAGE, b"three").await;
                assert_eq!(
                    step("recv", second.recv()).await.expect("recv").as_deref(),
                    Some(&b"three"[..])
                );
                assert!(client.termination().is_none());
            }
        })
        .await
    }
}

/// Within one stream too, the sequential client's connection-wide check
/// catches a message id going back (before the per-stream rule would).
#[tokio::test]
async fn message_id_going_back_breaks_the_id_order() {
    bounded(async {
        let (client, mut peer) = scripted(Role::Client, sequential());
        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        peer.expect(frame(1, 1, Kind::INVOKE, RPC.as_bytes())).await;
        peer.send(1, 2, Kind::MESSAGE, b"second").await;
        peer.send(1, 1, Kind::MESSAGE, b"first").await;
        assert_eq!(
            call.recv().await.expect("recv").as_deref(),
            Some(&b"second"[..])
        );
        let err = kind_of(step("recv", call.recv()).await);
        let want = ConnectionError::Wire(WireError::IdMonotonicity {
            frame: Id::new(1, 1),
            last: Id::new(1, 3),
        });
        assert_connection_lost(&err, &want);
    })
    .await
}

/// Frames before any stream are checked against (1, 1): a frame of stream
/// 0 is a violation in sequential mode.
#[tokio::test]
async fn frame_below_the_first_id_breaks_the_id_order() {
    bounded(async {
        let (client, mut peer) = scripted(Role::Client, sequential());
        peer.send(0, 5, Kind::MESSAGE, b"x").await;
        let err = step("closed", client.closed()).await;
        match err {
            ConnectionError::Wire(WireError::IdMonotonicity { frame, last }) => {
                assert_eq!(frame, Id::new(0, 5));
                assert_eq!(last, Id::new(1, 1));
            }
            other => panic!("{other:?}"),
        }
        peer.expect_eof().await;
    })
    .await
}
