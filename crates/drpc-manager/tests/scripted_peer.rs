//! A manager against a scripted raw peer: the test writes encoded frames to
//! one end of a duplex and checks exactly what the manager writes back
//! (multiplexing.md §3.3–§3.5, §4, §5.3; semantics.md §13 items 48–52).

mod support;

use drpc_manager::{ManagerOptions, Role};
use drpc_stream::{ConnectionError, Initiator, StreamErrorKind};
use drpc_wire::{Id, Kind, MetadataError, WireError};
use support::{
    BlockedWrites, Peer, Recording, assert_connection_lost, assert_pending, bounded, decode_all,
    eventually, frame, kind_of, metadata, metadata_payload, scripted, step, written,
};

const RPC: &str = "/service.Service/Method1";

fn server() -> (drpc_manager::Manager, Peer) {
    scripted(Role::Server, ManagerOptions::default())
}

/// A client whose peer is scripted as a stock one: flow control off, so
/// that every byte it writes is the reference implementation's (the auto
/// mode's offer is covered by `flow_control.rs`).
fn client() -> (drpc_manager::Manager, Peer) {
    scripted(Role::Client, stock_options())
}

fn stock_options() -> ManagerOptions {
    let mut opts = ManagerOptions::default();
    opts.stream.flow_control = drpc_stream::FlowControl::off();
    opts
}

/// The peer opens stream `id` with a one-frame Invoke of [`RPC`].
async fn invoke(peer: &mut Peer, id: u64) {
    peer.send(id, 1, Kind::INVOKE, RPC.as_bytes()).await;
}

/// Catalogue 52: an Invoke split over two frames and a Message split over
/// two frames are reassembled; the reply carries the stream's id.
#[tokio::test]
async fn split_invoke_and_split_message_are_assembled() {
    bounded(async {
        let (server, mut peer) = server();
        peer.send_frame(1, 1, Kind::INVOKE, false, false, b"/service.Se")
            .await;
        peer.send_frame(1, 1, Kind::INVOKE, true, false, b"rvice/Method1")
            .await;
        peer.send_frame(1, 2, Kind::MESSAGE, false, false, b"hel")
            .await;
        peer.send_frame(1, 2, Kind::MESSAGE, true, false, b"lo")
            .await;
        peer.send(1, 3, Kind::CLOSE_SEND, b"").await;

        let incoming = step("accept", server.accept()).await.expect("accepted");
        assert_eq!(incoming.rpc, RPC);
        assert!(incoming.metadata.is_empty());
        assert_eq!(incoming.stream.id(), 1);
        let s = incoming.stream;
        assert_eq!(
            s.recv().await.expect("recv").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(s.recv().await.expect("end"), None);

        s.send(b"world").await.expect("send");
        s.close_send().expect("close_send");
        peer.expect(frame(1, 1, Kind::MESSAGE, b"world")).await;
        peer.expect(frame(1, 2, Kind::CLOSE_SEND, b"")).await;
        assert!(s.is_terminated());
        eventually("stream unregistered", || server.active_streams() == 0).await;
        assert!(server.termination().is_none());
    })
    .await
}

/// A packet split into a frame much larger than one read, over a small
/// duplex buffer, still arrives whole.
#[tokio::test]
async fn large_split_message_is_assembled() {
    bounded(async {
        let (server, mut peer) = server();
        invoke(&mut peer, 1).await;
        let big = support::pattern(1, 0, 200_000);
        // Default split: 64 KiB frames, the last one short.
        peer.send(1, 2, Kind::MESSAGE, &big).await;
        let s = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        let got = s.recv().await.expect("recv").expect("message");
        assert_eq!(got.len(), big.len());
        assert!(got[..] == big[..], "content differs");
    })
    .await
}

/// InvokeMetadata (itself split over two frames) + Invoke: the metadata is
/// on the `Incoming`.
#[tokio::test]
async fn invoke_metadata_is_attached_to_incoming() {
    bounded(async {
        let (server, mut peer) = server();
        let md = metadata_payload(&[("authorization", "token"), ("trace", "abc")]);
        let (a, b) = md.split_at(5);
        peer.send_frame(1, 1, Kind::INVOKE_METADATA, false, false, a)
            .await;
        peer.send_frame(1, 1, Kind::INVOKE_METADATA, true, false, b)
            .await;
        peer.send(1, 2, Kind::INVOKE, RPC.as_bytes()).await;
        // Another stream without metadata gets none.
        peer.send(3, 1, Kind::INVOKE, b"/other/Method").await;

        let first = step("accept", server.accept()).await.expect("accepted");
        assert_eq!(first.rpc, RPC);
        assert_eq!(
            first.metadata,
            metadata(&[("authorization", "token"), ("trace", "abc")])
        );
        let second = step("accept", server.accept()).await.expect("accepted");
        assert_eq!(second.stream.id(), 3);
        assert_eq!(second.rpc, "/other/Method");
        assert!(second.metadata.is_empty());
    })
    .await
}

/// Metadata that does not decode ends the connection: `accept` returns the
/// InvalidMetadata error and the transport is closed.
#[tokio::test]
async fn malformed_metadata_ends_the_connection() {
    bounded(async {
        let (server, mut peer) = server();
        peer.send(1, 1, Kind::INVOKE_METADATA, &[0x0b]).await;
        peer.send(1, 2, Kind::INVOKE, RPC.as_bytes()).await;
        match step("accept", server.accept()).await {
            Err(ConnectionError::InvalidMetadata {
                stream: 1,
                source: MetadataError::InvalidData,
            }) => {}
            other => panic!("expected InvalidMetadata on stream 1, got {other:?}"),
        }
        match server.termination() {
            Some(ConnectionError::InvalidMetadata { stream: 1, .. }) => {}
            other => panic!("termination: {other:?}"),
        }
        assert!(peer.expect_eof().await.is_empty(), "nothing written");
        step("close", server.close()).await;
    })
    .await
}

/// Catalogue 50: an Invoke (or InvokeMetadata) on an existing stream ends
/// the connection; the stream sees the connection error.
#[tokio::test]
async fn invoke_on_existing_stream_ends_the_connection() {
    for kind in [Kind::INVOKE, Kind::INVOKE_METADATA] {
        bounded(async {
            let (server, mut peer) = server();
            invoke(&mut peer, 1).await;
            let s = step("accept", server.accept())
                .await
                .expect("accepted")
                .stream;
            peer.send(1, 2, kind, b"").await;
            let err = kind_of(step("recv", s.recv()).await);
            let want = ConnectionError::InvokeOnExistingStream { stream: 1 };
            assert_connection_lost(&err, &want);
            match step("accept", server.accept()).await {
                Err(ConnectionError::InvokeOnExistingStream { stream: 1 }) => {}
                other => panic!("accept: {other:?}"),
            }
            assert_eq!(
                server.closed().await.to_string(),
                "protocol error: invoke on existing stream (stream 1)"
            );
            peer.expect_eof().await;
            assert_eq!(server.active_streams(), 0);
        })
        .await
    }
}

/// Catalogue 49: kind 9 without control on an active stream ends the
/// connection.
#[tokio::test]
async fn unknown_kind_without_control_ends_the_connection() {
    bounded(async {
        let (server, mut peer) = server();
        invoke(&mut peer, 1).await;
        let s = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        let k9 = Kind::new(10).expect("kind");
        peer.send_frame(1, 2, k9, true, false, b"").await;
        let err = kind_of(step("recv", s.recv()).await);
        match &err {
            StreamErrorKind::ConnectionLost(ConnectionError::UnknownKind { stream: 1, kind })
                if *kind == k9 => {}
            other => panic!("recv: {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "internal error: unknown packet kind: Kind(10) (stream 1)"
        );
        assert!(matches!(
            step("accept", server.accept()).await,
            Err(ConnectionError::UnknownKind { stream: 1, .. })
        ));
        peer.expect_eof().await;
    })
    .await
}

/// Catalogue 49: kind 9 with control is ignored (on an active stream and
/// on an unknown one), and later messages are delivered.
#[tokio::test]
async fn unknown_kind_with_control_is_ignored() {
    bounded(async {
        let (server, mut peer) = server();
        invoke(&mut peer, 1).await;
        let s = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        let k9 = Kind::new(10).expect("kind");
        peer.send_frame(1, 2, k9, true, true, b"future").await;
        peer.send_frame(1, 3, Kind::MESSAGE, true, false, b"after")
            .await;
        assert_eq!(
            step("recv", s.recv()).await.expect("recv").as_deref(),
            Some(&b"after"[..])
        );
        peer.send_frame(1, 4, Kind::MESSAGE, true, false, b"again")
            .await;
        assert_eq!(
            step("recv", s.recv()).await.expect("recv").as_deref(),
            Some(&b"again"[..])
        );
        assert!(server.termination().is_none());
        s.send(b"reply").await.expect("send");
        peer.expect(frame(1, 1, Kind::MESSAGE, b"reply")).await;
    })
    .await
}

/// Frames of streams that were never invoked, and non-invoke frames sent
/// before a stream's Invoke, are dropped; the connection goes on and
/// nothing is written back for them.
#[tokio::test]
async fn frames_of_unknown_streams_are_dropped() {
    bounded(async {
        let (server, mut peer) = server();
        let k9 = Kind::new(10).expect("kind");
        peer.send(7, 1, Kind::MESSAGE, b"nobody").await;
        peer.send(7, 2, Kind::CLOSE_SEND, b"").await;
        peer.send(8, 1, Kind::CANCEL, b"").await;
        peer.send(9, 1, Kind::CLOSE, b"").await;
        peer.send(10, 1, Kind::ERROR, &support::error_payload(3, "x"))
            .await;
        // An unknown kind without control on an unknown stream: dropped
        // too, since only Invoke frames are examined for unknown ids.
        peer.send_frame(11, 1, k9, true, false, b"").await;
        // A message of stream 2 before its Invoke.
        peer.send(2, 1, Kind::MESSAGE, b"early").await;
        peer.send(2, 2, Kind::INVOKE, RPC.as_bytes()).await;
        peer.send(2, 3, Kind::MESSAGE, b"on time").await;
        peer.send(2, 4, Kind::CLOSE_SEND, b"").await;

        let incoming = step("accept", server.accept()).await.expect("accepted");
        assert_eq!(incoming.stream.id(), 2);
        let s = incoming.stream;
        assert_eq!(
            s.recv().await.expect("recv").as_deref(),
            Some(&b"on time"[..])
        );
        assert_eq!(s.recv().await.expect("end"), None);
        // Late frames of a stream that already ended on our side are
        // dropped as well.
        s.close_send().expect("close_send");
        peer.expect(frame(2, 1, Kind::CLOSE_SEND, b"")).await;
        eventually("unregistered", || server.active_streams() == 0).await;
        peer.send(2, 5, Kind::MESSAGE, b"late").await;
        peer.send(2, 6, Kind::CLOSE, b"").await;
        assert_pending("accept", server.accept()).await;
        assert!(server.termination().is_none());
        // And the connection still serves.
        invoke(&mut peer, 4).await;
        let s = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        assert_eq!(s.id(), 4);
        s.send(b"ok").await.expect("send");
        peer.expect(frame(4, 1, Kind::MESSAGE, b"ok")).await;
    })
    .await
}

/// Catalogue 48: stream ids 1 then 5 are both served and the replies use
/// those ids.
#[tokio::test]
async fn stream_ids_one_then_five_are_served() {
    bounded(async {
        let (server, mut peer) = server();
        for id in [1, 5] {
            invoke(&mut peer, id).await;
            peer.send(id, 2, Kind::MESSAGE, format!("in {id}").as_bytes())
                .await;
            peer.send(id, 3, Kind::CLOSE_SEND, b"").await;
            let incoming = step("accept", server.accept()).await.expect("accepted");
            let s = incoming.stream;
            assert_eq!(s.id(), id);
            let msg = s.recv().await.expect("recv").expect("message");
            assert_eq!(&msg[..], format!("in {id}").as_bytes());
            assert_eq!(s.recv().await.expect("end"), None);
            s.send(format!("out {id}").as_bytes()).await.expect("send");
            s.close_send().expect("close_send");
            peer.expect(frame(id, 1, Kind::MESSAGE, format!("out {id}").as_bytes()))
                .await;
            peer.expect(frame(id, 2, Kind::CLOSE_SEND, b"")).await;
        }
        eventually("unregistered", || server.active_streams() == 0).await;
    })
    .await
}

/// Catalogue 51: InvokeMetadata + Invoke + Cancel(control): the handler
/// sees a remote cancellation, its late close is silent, nothing is sent
/// back, and a following stream works.
#[tokio::test]
async fn remote_cancel_after_invoke_sends_nothing_back() {
    bounded(async {
        let (server, mut peer) = server();
        peer.send(
            1,
            1,
            Kind::INVOKE_METADATA,
            &metadata_payload(&[("k", "v")]),
        )
        .await;
        peer.send(1, 2, Kind::INVOKE, RPC.as_bytes()).await;
        peer.send(1, 3, Kind::CANCEL, b"").await;
        let incoming = step("accept", server.accept()).await.expect("accepted");
        assert_eq!(incoming.metadata, metadata(&[("k", "v")]));
        let s = incoming.stream;
        let err = kind_of(step("recv", s.recv()).await);
        assert!(
            matches!(err, StreamErrorKind::Canceled(Initiator::Remote)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "context canceled");
        // Sends fail with EOF (the cancellation on check), and the
        // handler's final packets are silent no-ops.
        let send = s.send(b"too late").await.expect_err("send after cancel");
        assert!(matches!(send.kind(), StreamErrorKind::Eof), "{send:?}");
        assert!(matches!(
            s.check_cancel(send).kind(),
            StreamErrorKind::Canceled(Initiator::Remote)
        ));
        s.send_error(&drpc_wire::CodedError::new(2, "handler failed"))
            .expect("silent");
        s.close_send().expect("silent");
        s.close().expect("silent");
        drop(s);
        eventually("unregistered", || server.active_streams() == 0).await;
        peer.expect_silence().await;

        // Stream 2 works, and its reply is the first thing written.
        invoke(&mut peer, 2).await;
        peer.send(2, 2, Kind::MESSAGE, b"ping").await;
        let s = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        assert_eq!(s.recv().await.expect("recv").as_deref(), Some(&b"ping"[..]));
        s.send(b"pong").await.expect("send");
        peer.expect(frame(2, 1, Kind::MESSAGE, b"pong")).await;
        assert!(server.termination().is_none());
    })
    .await
}

/// A Cancel in the middle of a message (after its first frame) ends only
/// that stream: the half message is never delivered.
#[tokio::test]
async fn remote_cancel_mid_message_drops_the_partial_message() {
    bounded(async {
        let (server, mut peer) = server();
        invoke(&mut peer, 1).await;
        invoke(&mut peer, 3).await;
        let s1 = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        let s3 = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        peer.send(1, 2, Kind::MESSAGE, b"whole").await;
        peer.send_frame(1, 3, Kind::MESSAGE, false, false, b"half")
            .await;
        peer.send_frame(3, 2, Kind::MESSAGE, false, false, b"inter")
            .await;
        peer.send(1, 4, Kind::CANCEL, b"").await;
        peer.send_frame(3, 2, Kind::MESSAGE, true, false, b"leaved")
            .await;
        assert_eq!(
            s1.recv().await.expect("queued first").as_deref(),
            Some(&b"whole"[..])
        );
        assert!(matches!(
            kind_of(step("recv", s1.recv()).await),
            StreamErrorKind::Canceled(Initiator::Remote)
        ));
        assert_eq!(
            s3.recv().await.expect("recv").as_deref(),
            Some(&b"interleaved"[..])
        );
        assert!(server.termination().is_none());
        drop(s1);
        peer.expect_silence().await;
    })
    .await
}

/// With `max_concurrent_streams = 1`, a second concurrent Invoke is refused
/// with an Error packet (message id 1, code 0) on that stream; the
/// connection and the first stream go on.
#[tokio::test]
async fn invoke_over_the_stream_limit_is_refused() {
    bounded(async {
        let opts = ManagerOptions {
            max_concurrent_streams: 1,
            ..ManagerOptions::default()
        };
        let (server, mut peer) = scripted(Role::Server, opts);
        invoke(&mut peer, 1).await;
        let s1 = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        invoke(&mut peer, 3).await;

        let refusal = peer.read().await;
        assert_eq!(refusal.header_byte(), 0x07);
        assert_eq!(refusal.id, Id::new(3, 1));
        let text = "too many concurrent streams: refused: at most 1 concurrent streams";
        assert_eq!(refusal.data[..], support::error_payload(0, text)[..]);
        // The same bytes as a whole frame.
        let mut raw = Vec::new();
        refusal.append_to(&mut raw);
        let mut want = vec![0x07, 3, 1, (8 + text.len()) as u8];
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(text.as_bytes());
        assert_eq!(raw, want);

        // Later frames of the refused stream are dropped.
        peer.send(3, 2, Kind::MESSAGE, b"refused").await;
        peer.send(3, 3, Kind::CLOSE_SEND, b"").await;
        assert_pending("accept", server.accept()).await;
        assert_eq!(server.active_streams(), 1);

        // Stream 1 still works.
        peer.send(1, 2, Kind::MESSAGE, b"still here").await;
        assert_eq!(
            s1.recv().await.expect("recv").as_deref(),
            Some(&b"still here"[..])
        );
        s1.send(b"yes").await.expect("send");
        peer.expect(frame(1, 1, Kind::MESSAGE, b"yes")).await;
        s1.close().expect("close");
        peer.expect(frame(1, 2, Kind::CLOSE, b"")).await;
        eventually("unregistered", || server.active_streams() == 0).await;

        // With room again, a new stream is accepted.
        invoke(&mut peer, 5).await;
        let s5 = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        assert_eq!(s5.id(), 5);
        assert!(server.termination().is_none());
    })
    .await
}

/// An Invoke still under assembly is forgotten when the peer cancels it,
/// so it does not count against the pending limit (the stream limit);
/// without the cancel, a second pending Invoke over the limit ends the
/// connection.
#[tokio::test]
async fn cancelled_pending_invoke_is_forgotten() {
    bounded(async {
        let opts = ManagerOptions {
            max_concurrent_streams: 1,
            ..ManagerOptions::default()
        };
        let md = metadata_payload(&[("k", "v")]);

        let (server, mut peer) = scripted(Role::Server, opts.clone());
        peer.send(1, 1, Kind::INVOKE_METADATA, &md).await;
        peer.send(1, 2, Kind::CANCEL, b"").await;
        peer.send(3, 1, Kind::INVOKE_METADATA, &md).await;
        peer.send(3, 2, Kind::INVOKE, RPC.as_bytes()).await;
        let incoming = step("accept", server.accept()).await.expect("accepted");
        assert_eq!(incoming.stream.id(), 3);
        assert_eq!(incoming.metadata, metadata(&[("k", "v")]));
        assert!(server.termination().is_none());

        let (server, mut peer) = scripted(Role::Server, opts);
        peer.send(1, 1, Kind::INVOKE_METADATA, &md).await;
        peer.send(3, 1, Kind::INVOKE_METADATA, &md).await;
        match step("accept", server.accept()).await {
            Err(ConnectionError::TooManyPendingInvokes { limit: 1 }) => {}
            other => panic!("accept: {other:?}"),
        }
        peer.expect_eof().await;
    })
    .await
}

/// An Error from the peer ends only that client stream, with the peer's
/// code and text; nothing is written back.
#[tokio::test]
async fn remote_error_ends_the_client_stream() {
    bounded(async {
        let (client, mut peer) = client();
        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        peer.expect(frame(1, 1, Kind::INVOKE, RPC.as_bytes())).await;
        peer.send(1, 1, Kind::MESSAGE, b"partial result").await;
        peer.send(1, 2, Kind::ERROR, &support::error_payload(5, "boom"))
            .await;
        assert_eq!(
            step("recv", call.recv())
                .await
                .expect("queued first")
                .as_deref(),
            Some(&b"partial result"[..])
        );
        let err = step("recv", call.recv()).await.expect_err("remote error");
        assert_eq!(err.code(), Some(5));
        assert_eq!(err.to_string(), "boom");
        assert!(err.connection_survives());
        match err.kind() {
            StreamErrorKind::Remote(e) => assert_eq!((e.code(), e.message()), (5, "boom")),
            other => panic!("{other:?}"),
        }
        let send = call.send(b"x").await.expect_err("send after remote error");
        assert!(matches!(send.kind(), StreamErrorKind::Eof), "{send:?}");
        call.close().expect("silent");
        drop(call);
        peer.expect_silence().await;
        assert_eq!(client.active_streams(), 0);
        assert!(client.termination().is_none());
    })
    .await
}

/// A client at its stream limit refuses to open another stream (nothing
/// is written) and the connection goes on.
#[tokio::test]
async fn client_stream_limit_refuses_open() {
    bounded(async {
        let opts = ManagerOptions {
            max_concurrent_streams: 1,
            ..stock_options()
        };
        let (client, mut peer) = scripted(Role::Client, opts);
        let first = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        let err = client
            .open_stream(RPC, &Default::default())
            .await
            .expect_err("over the limit");
        assert!(
            matches!(err.kind(), StreamErrorKind::Refused { limit: 1 }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "too many concurrent streams: refused: at most 1 concurrent streams"
        );
        assert!(err.connection_survives());
        assert!(client.termination().is_none());
        assert_eq!(client.active_streams(), 1);
        first.close().expect("close");
        let next = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("room again");
        assert!(next.id() > 1);
        // Stream 1's frames, then the next stream's Invoke.
        let mut frames = Vec::new();
        while frames.last() != Some(&frame(next.id(), 1, Kind::INVOKE, RPC.as_bytes())) {
            frames.push(peer.read().await);
        }
        assert_eq!(frames[0], frame(1, 1, Kind::INVOKE, RPC.as_bytes()));
        assert!(frames.contains(&frame(1, 2, Kind::CLOSE, b"")));
        // The refused stream put nothing on the wire: only streams 1 and
        // the next one appear.
        assert!(
            frames
                .iter()
                .all(|f| f.id.stream == 1 || f.id.stream == next.id()),
            "refused stream wrote {frames:?}"
        );
    })
    .await
}

/// A client-role manager drops the peer's Invoke: nothing reaches
/// `accept`, nothing is written back, and the connection goes on.
#[tokio::test]
async fn client_drops_invokes() {
    bounded(async {
        let (client, mut peer) = client();
        peer.send(
            7,
            1,
            Kind::INVOKE_METADATA,
            &metadata_payload(&[("k", "v")]),
        )
        .await;
        peer.send(7, 2, Kind::INVOKE, RPC.as_bytes()).await;
        peer.send(7, 3, Kind::MESSAGE, b"x").await;

        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        assert_eq!(call.id(), 1);
        // The first thing the client writes is its own Invoke.
        peer.expect(frame(1, 1, Kind::INVOKE, RPC.as_bytes())).await;
        peer.send(1, 1, Kind::MESSAGE, b"reply").await;
        assert_eq!(
            step("recv", call.recv()).await.expect("recv").as_deref(),
            Some(&b"reply"[..])
        );
        assert_eq!(client.active_streams(), 1);
        assert_pending("client accept", client.accept()).await;
        assert!(client.termination().is_none());
    })
    .await
}

/// The peer closing the transport: a client's streams fail with
/// ConnectionLost(Eof); new streams fail at once.
#[tokio::test]
async fn peer_eof_fails_client_streams_with_eof() {
    bounded(async {
        let (client, mut peer) = client();
        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        call.send(b"ping").await.expect("send");
        peer.expect(frame(1, 1, Kind::INVOKE, RPC.as_bytes())).await;
        peer.expect(frame(1, 2, Kind::MESSAGE, b"ping")).await;
        peer.send(1, 1, Kind::MESSAGE, b"queued").await;
        drop(peer);

        // A message queued before the end is still delivered.
        assert_eq!(
            step("recv", call.recv()).await.expect("recv").as_deref(),
            Some(&b"queued"[..])
        );
        let err = kind_of(step("recv", call.recv()).await);
        assert_connection_lost(&err, &ConnectionError::Eof);
        assert_eq!(err.to_string(), "manager closed: EOF");
        // Sends after the end report EOF, as Go's do.
        let send = call.send(b"x").await.expect_err("send after eof");
        assert!(matches!(send.kind(), StreamErrorKind::Eof), "{send:?}");
        assert!(matches!(
            step("closed", client.closed()).await,
            ConnectionError::Eof
        ));
        let open = client
            .open_stream(RPC, &Default::default())
            .await
            .expect_err("connection ended");
        assert_eq!(open.stream_id(), 0);
        assert_connection_lost(open.kind(), &ConnectionError::Eof);
        assert_eq!(client.active_streams(), 0);
        step("close", client.close()).await;
    })
    .await
}

/// The peer closing the transport: a server's streams see a remote
/// cancellation (after queued messages), `accept` fails with Eof.
#[tokio::test]
async fn peer_eof_cancels_server_streams() {
    bounded(async {
        let (server, mut peer) = server();
        invoke(&mut peer, 1).await;
        invoke(&mut peer, 3).await;
        peer.send(3, 2, Kind::MESSAGE, b"queued").await;
        let s1 = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        let s3 = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        drop(peer);

        assert!(matches!(
            kind_of(step("recv", s1.recv()).await),
            StreamErrorKind::Canceled(Initiator::Remote)
        ));
        assert_eq!(
            step("recv", s3.recv()).await.expect("recv").as_deref(),
            Some(&b"queued"[..])
        );
        assert!(matches!(
            kind_of(step("recv", s3.recv()).await),
            StreamErrorKind::Canceled(Initiator::Remote)
        ));
        assert!(matches!(
            step("accept", server.accept()).await,
            Err(ConnectionError::Eof)
        ));
        assert_eq!(server.active_streams(), 0);
        step("close", server.close()).await;
    })
    .await
}

/// Bytes that are not frames (a varint longer than 10 bytes) end the
/// connection with a wire error, on either side.
#[tokio::test]
async fn garbage_ends_the_connection_with_a_wire_error() {
    bounded(async {
        let mut garbage = vec![0x05];
        garbage.extend_from_slice(&[0xff; 10]);
        garbage.extend_from_slice(&[0x01, 0x01, 0x00]);

        let (server, mut peer) = server();
        peer.send_raw(&garbage).await;
        match step("accept", server.accept()).await {
            Err(ConnectionError::Wire(WireError::VarintTooLong)) => {}
            other => panic!("accept: {other:?}"),
        }
        peer.expect_eof().await;

        let (client, mut peer) = client();
        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        peer.expect(frame(1, 1, Kind::INVOKE, RPC.as_bytes())).await;
        peer.send_raw(&garbage).await;
        let err = kind_of(step("recv", call.recv()).await);
        assert_connection_lost(&err, &ConnectionError::Wire(WireError::VarintTooLong));
        assert!(matches!(
            client.termination(),
            Some(ConnectionError::Wire(WireError::VarintTooLong))
        ));
        assert!(
            client
                .termination()
                .expect("terminated")
                .is_protocol_violation()
        );
        peer.expect_eof().await;
    })
    .await
}

/// A frame larger than the maximum packet size ends the connection with a
/// data overflow, before its data arrives.
#[tokio::test]
async fn oversized_frame_ends_the_connection() {
    bounded(async {
        let mut opts = ManagerOptions::default();
        opts.stream.max_packet_size = 1024;
        let (server, mut peer) = scripted(Role::Server, opts);
        invoke(&mut peer, 1).await;
        let s = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        // Only the header of a 2000-byte frame.
        peer.send_raw(&[0x05, 0x01, 0x02, 0xd0, 0x0f]).await;
        let err = kind_of(step("recv", s.recv()).await);
        assert_connection_lost(
            &err,
            &ConnectionError::Wire(WireError::DataOverflow { len: 2000 }),
        );
    })
    .await
}

/// The unary write shape: on an idle connection, a client's Invoke,
/// Message and CloseSend leave in one single write (with metadata, the
/// InvokeMetadata too).
#[tokio::test]
async fn unary_call_is_written_in_one_write() {
    bounded(async {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (transport, log) = Recording::new(ours);
        let client = drpc_manager::Manager::new(transport, Role::Client, stock_options());
        let mut peer = Peer::new(theirs);

        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        call.send(&[0x08, 0x05]).await.expect("send");
        call.close_send().expect("close_send");
        let want = [
            frame(1, 1, Kind::INVOKE, RPC.as_bytes()),
            frame(1, 2, Kind::MESSAGE, &[0x08, 0x05]),
            frame(1, 3, Kind::CLOSE_SEND, b""),
        ];
        for f in &want {
            peer.expect(f.clone()).await;
        }
        {
            let writes = log.lock().expect("log");
            assert_eq!(writes.len(), 1, "one write, got {writes:?}");
            assert_eq!(decode_all(&writes[0]), want);
        }

        // Once that is answered, a second call with metadata: InvokeMetadata,
        // Invoke, Message and CloseSend, again in one write.
        peer.send(1, 1, Kind::CLOSE_SEND, b"").await;
        assert_eq!(step("recv", call.recv()).await.expect("end"), None);
        eventually("first stream done", || client.active_streams() == 0).await;
        let md = metadata(&[("k", "v")]);
        let call = client.open_stream(RPC, &md).await.expect("open");
        call.send(b"m").await.expect("send");
        call.close_send().expect("close_send");
        let want = [
            frame(
                2,
                1,
                Kind::INVOKE_METADATA,
                &metadata_payload(&[("k", "v")]),
            ),
            frame(2, 2, Kind::INVOKE, RPC.as_bytes()),
            frame(2, 3, Kind::MESSAGE, b"m"),
            frame(2, 4, Kind::CLOSE_SEND, b""),
        ];
        for f in &want {
            peer.expect(f.clone()).await;
        }
        let writes = log.lock().expect("log").clone();
        assert_eq!(writes.len(), 2, "two writes in all, got {writes:?}");
        assert_eq!(decode_all(&writes[1]), want);
        assert_eq!(decode_all(&written(&log)).len(), 7);
    })
    .await
}

/// A cancelled client stream sends Cancel with the control bit and the
/// next message id; the connection goes on.
#[tokio::test]
async fn client_cancel_sends_a_control_cancel() {
    bounded(async {
        let (client, mut peer) = client();
        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        call.send(b"a").await.expect("send");
        call.cancel(StreamErrorKind::Canceled(Initiator::Local));
        peer.expect(frame(1, 1, Kind::INVOKE, RPC.as_bytes())).await;
        peer.expect(frame(1, 2, Kind::MESSAGE, b"a")).await;
        let cancel = peer.read().await;
        assert_eq!(cancel, frame(1, 3, Kind::CANCEL, b""));
        assert_eq!(cancel.header_byte(), 0x89);
        assert!(matches!(
            kind_of(call.recv().await),
            StreamErrorKind::Canceled(Initiator::Local)
        ));
        // Cancel again, drop: nothing more.
        call.cancel(StreamErrorKind::Canceled(Initiator::Local));
        drop(call);
        peer.expect_silence().await;
        assert_eq!(client.active_streams(), 0);
        let next = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        assert_eq!(next.id(), 2);
        peer.expect(frame(2, 1, Kind::INVOKE, RPC.as_bytes())).await;
    })
    .await
}

/// A transport whose writes block does not stop the reader: frames from
/// the peer are still delivered.
#[tokio::test]
async fn blocked_writes_do_not_stop_reading() {
    bounded(async {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (transport, attempts) = BlockedWrites::new(ours);
        let server = drpc_manager::Manager::new(transport, Role::Server, Default::default());
        let mut peer = Peer::new(theirs);
        invoke(&mut peer, 1).await;
        let s = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        s.send(b"stuck").await.expect("buffered");
        eventually("write attempted", || *attempts.lock().expect("n") > 0).await;
        peer.send(1, 2, Kind::MESSAGE, b"still read").await;
        assert_eq!(
            step("recv", s.recv()).await.expect("recv").as_deref(),
            Some(&b"still read"[..])
        );
        step("close", server.close()).await;
    })
    .await
}

/// Frames of `stream` with message ids `ids`, each a whole one-frame
/// Message whose data is its id.
fn messages(buf: &mut Vec<u8>, stream: u64, ids: std::ops::RangeInclusive<u64>) {
    for mid in ids {
        drpc_wire::append_frame(
            buf,
            Id::new(stream, mid),
            Kind::MESSAGE,
            true,
            false,
            &mid.to_le_bytes(),
        );
    }
}

/// Many frames in one write, runs of one stream's Messages broken up by
/// another stream's frames and by a WindowUpdate: every message reaches its
/// stream, in order, whole.
#[tokio::test]
async fn runs_of_messages_among_other_frames_arrive_in_order() {
    bounded(async {
        let (server, mut peer) = server();
        let mut buf = Vec::new();
        for id in [1, 3] {
            drpc_wire::append_frame(
                &mut buf,
                Id::new(id, 1),
                Kind::INVOKE,
                true,
                false,
                RPC.as_bytes(),
            );
        }
        // Within the queue bound of a stream without flow control (256).
        messages(&mut buf, 1, 2..=100);
        messages(&mut buf, 3, 2..=2);
        messages(&mut buf, 1, 101..=150);
        drpc_wire::WindowUpdate {
            stream: 1,
            delta: 5,
        }
        .append_to(&mut buf);
        messages(&mut buf, 1, 151..=250);
        messages(&mut buf, 3, 3..=50);
        for id in [1, 3] {
            drpc_wire::append_frame(
                &mut buf,
                Id::new(id, 500),
                Kind::CLOSE_SEND,
                true,
                false,
                b"",
            );
        }
        peer.send_raw(&buf).await;
        for (id, last) in [(1u64, 250u64), (3, 50)] {
            let incoming = step("accept", server.accept()).await.expect("accepted");
            assert_eq!(incoming.stream.id(), id);
            for mid in 2..=last {
                let m = step("recv", incoming.stream.recv())
                    .await
                    .expect("recv")
                    .expect("a message");
                assert_eq!(m[..], mid.to_le_bytes(), "stream {id}");
            }
            assert_eq!(
                step("end", incoming.stream.recv()).await.expect("end"),
                None
            );
        }
    })
    .await;
}

/// The frames of a run get the rules each frame gets alone: a message id
/// that goes back inside a run ends the connection as a protocol error.
#[tokio::test]
async fn a_message_id_regression_inside_a_run_ends_the_connection() {
    bounded(async {
        let (server, mut peer) = server();
        let mut buf = Vec::new();
        drpc_wire::append_frame(
            &mut buf,
            Id::new(1, 1),
            Kind::INVOKE,
            true,
            false,
            RPC.as_bytes(),
        );
        messages(&mut buf, 1, 2..=10);
        messages(&mut buf, 1, 5..=5);
        peer.send_raw(&buf).await;
        let err = step("connection end", server.closed()).await;
        assert!(
            matches!(
                err,
                ConnectionError::Wire(WireError::MessageIdRegression {
                    stream: 1,
                    got: 5,
                    expected: 11,
                })
            ),
            "{err:?}"
        );
    })
    .await;
}

/// Another protocol's first bytes end the connection at once, with an error
/// that names what was seen, instead of a wait for frames that never come.
#[tokio::test]
async fn a_peer_speaking_another_protocol_is_closed_at_once() {
    let tls_client_hello = [
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    let cases: [(&[u8], &str); 3] = [
        (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            "HTTP/2",
        ),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "HTTP/1"),
        (&tls_client_hello, "TLS"),
    ];
    for (bytes, name) in cases {
        bounded(async {
            let (server, mut peer) = server();
            peer.send_raw(bytes).await;
            let err = step("connection end", server.closed()).await;
            match &err {
                ConnectionError::WrongProtocol { seen } => assert!(seen.contains(name), "{seen}"),
                other => panic!("{name}: {other:?}"),
            }
            assert!(err.is_protocol_violation());
            assert!(peer.expect_eof().await.is_empty(), "nothing written back");
        })
        .await;
    }
}

/// The reference implementation's migration header (`drpcmigrate`), even
/// when it arrives in pieces, is skipped: the stream behind it is served.
#[tokio::test]
async fn the_migration_header_is_skipped() {
    bounded(async {
        let (server, mut peer) = server();
        peer.send_raw(&drpc_wire::MIGRATION_HEADER[..3]).await;
        assert_pending("the rest of the header", server.accept()).await;
        let mut buf = drpc_wire::MIGRATION_HEADER[3..].to_vec();
        drpc_wire::append_frame(
            &mut buf,
            Id::new(1, 1),
            Kind::INVOKE,
            true,
            false,
            RPC.as_bytes(),
        );
        messages(&mut buf, 1, 2..=2);
        peer.send_raw(&buf).await;
        let incoming = step("accept", server.accept()).await.expect("accepted");
        assert_eq!(incoming.rpc, RPC);
        let m = step("recv", incoming.stream.recv()).await.expect("recv");
        assert_eq!(m.as_deref(), Some(&2u64.to_le_bytes()[..]));
    })
    .await;
}
