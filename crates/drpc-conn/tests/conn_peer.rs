//! The client connection against a hand-driven server-side manager: what
//! reaches the peer (metadata, deadline, cancellation), how the peer's
//! answers surface, and how the connection ends.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use drpc_conn::{CallOptions, Conn, ConnOptions};
use drpc_manager::{Incoming, Manager, ManagerOptions, Role};
use drpc_stream::{ConnectionError, Initiator, Raw, StreamErrorKind};
use drpc_wire::{CodedError, TIMEOUT_METADATA_KEY, parse_timeout};
use tokio_util::sync::CancellationToken;

const FIVE_S: Duration = Duration::from_secs(5);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(FIVE_S, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// A client connection and the server-side manager of the same pipe.
fn pair(opts: ConnOptions) -> (Conn, Manager) {
    let (a, z) = tokio::io::duplex(64 * 1024);
    let server = Manager::new(z, Role::Server, ManagerOptions::default());
    (Conn::new(a, opts), server)
}

async fn accept(server: &Manager) -> Incoming {
    within("accept", server.accept()).await.expect("accept")
}

/// Answers the one request of a unary call with `reply` and CloseSend.
async fn answer(incoming: &Incoming, reply: &[u8]) -> Bytes {
    let req = incoming
        .stream
        .recv()
        .await
        .expect("request")
        .expect("a message");
    assert_eq!(incoming.stream.recv().await.expect("close send"), None);
    incoming.stream.send(reply).await.expect("reply");
    incoming.stream.close_send().expect("close_send");
    req
}

fn unary(
    conn: &Conn,
    rpc: &'static str,
    req: &'static str,
    opts: CallOptions,
) -> tokio::task::JoinHandle<Result<Bytes, drpc_conn::Error>> {
    let conn = conn.clone();
    tokio::spawn(async move {
        conn.unary_with(&Raw, rpc, &Bytes::from_static(req.as_bytes()), &opts)
            .await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_timeout_reach_the_peer() {
    within("test", async {
        let (conn, server) = pair(ConnOptions::default());
        let opts = CallOptions::new()
            .metadata("user", "ada")
            .metadata("trace", "t-1")
            .timeout(Duration::from_secs(3));
        let call = unary(&conn, "/svc.S/M", "req", opts);
        let incoming = accept(&server).await;
        assert_eq!(incoming.rpc, "/svc.S/M");
        assert_eq!(
            incoming.metadata.get("user").map(String::as_str),
            Some("ada")
        );
        assert_eq!(
            incoming.metadata.get("trace").map(String::as_str),
            Some("t-1")
        );
        let timeout = incoming
            .metadata
            .get(TIMEOUT_METADATA_KEY)
            .and_then(|v| parse_timeout(v))
            .expect("a drpc-timeout pair");
        assert!(
            timeout > Duration::from_millis(2_500) && timeout <= Duration::from_secs(3),
            "{timeout:?}"
        );
        assert_eq!(answer(&incoming, b"resp").await, "req");
        assert_eq!(call.await.expect("task").expect("call"), "resp");

        // Without options: no metadata at all.
        let call = unary(&conn, "/svc.S/M", "plain", CallOptions::new());
        let incoming = accept(&server).await;
        assert!(incoming.metadata.is_empty(), "{:?}", incoming.metadata);
        answer(&incoming, b"ok").await;
        assert_eq!(call.await.expect("task").expect("call"), "ok");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_answers_surface_as_errors() {
    within("test", async {
        let (conn, server) = pair(ConnOptions::default());

        // An Error packet: its code and text.
        let call = unary(&conn, "/svc.S/E", "x", CallOptions::new());
        let incoming = accept(&server).await;
        incoming.stream.recv().await.expect("request");
        incoming
            .stream
            .send_error(&CodedError::new(7, "nope"))
            .expect("send_error");
        let err = call.await.expect("task").expect_err("remote error");
        assert_eq!(err.code(), Some(drpc_conn::Code::PermissionDenied));
        assert_eq!(err.remote_message(), Some("nope"));
        assert_eq!(
            err.to_string(),
            format!("PermissionDenied: nope (stream {})", incoming.stream.id())
        );

        // An error without a code: code() is None, the text arrives.
        let call = unary(&conn, "/svc.S/E", "x", CallOptions::new());
        let incoming = accept(&server).await;
        incoming
            .stream
            .send_error(&CodedError::new(0, "plain failure"))
            .expect("send_error");
        let err = call.await.expect("task").expect_err("remote error");
        assert_eq!(err.code(), None);
        assert_eq!(err.remote_message(), Some("plain failure"));

        // CloseSend without a message: Go's io.EOF.
        let call = unary(&conn, "/svc.S/Nothing", "x", CallOptions::new());
        let incoming = accept(&server).await;
        incoming.stream.recv().await.expect("request");
        incoming.stream.close_send().expect("close_send");
        let err = call.await.expect("task").expect_err("no response");
        assert!(err.is_missing_response(), "{err:?}");

        // The server cancels: is_canceled_by_remote.
        let call = unary(&conn, "/svc.S/Cancel", "x", CallOptions::new());
        let incoming = accept(&server).await;
        incoming.stream.recv().await.expect("request");
        incoming
            .stream
            .cancel(StreamErrorKind::Canceled(Initiator::Local));
        let err = call
            .await
            .expect("task")
            .expect_err("cancelled by the server");
        assert!(err.is_canceled_by_remote(), "{err:?}");

        // The connection is fine after all that.
        let call = unary(&conn, "/svc.S/M", "fine", CallOptions::new());
        let incoming = accept(&server).await;
        answer(&incoming, b"fine").await;
        assert_eq!(call.await.expect("task").expect("call"), "fine");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deadline_sends_nothing() {
    within("test", async {
        let (conn, server) = pair(ConnOptions::default());
        let past = Instant::now();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let err = conn
            .unary_with::<Bytes, Bytes, _>(
                &Raw,
                "/svc.S/M",
                &Bytes::new(),
                &CallOptions::new().deadline(past),
            )
            .await
            .expect_err("expired");
        assert!(err.is_deadline_exceeded(), "{err:?}");
        // The next call is the first stream the server ever sees.
        let call = unary(&conn, "/svc.S/M", "x", CallOptions::new());
        let incoming = accept(&server).await;
        assert_eq!(incoming.stream.id(), 1);
        answer(&incoming, b"y").await;
        assert_eq!(call.await.expect("task").expect("call"), "y");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_cancels_only_that_stream() {
    within("test", async {
        let (conn, server) = pair(ConnOptions::default());
        let dropped = unary(&conn, "/svc.S/Slow", "a", CallOptions::new());
        let first = accept(&server).await;
        assert_eq!(
            first.stream.recv().await.expect("request"),
            Some(Bytes::from("a"))
        );
        assert_eq!(first.stream.recv().await.expect("close send"), None);
        let kept = unary(&conn, "/svc.S/M", "b", CallOptions::new());
        let second = accept(&server).await;
        dropped.abort();
        // The Cancel arrives (receives stay at the clean end the CloseSend
        // gave, as in Go; sends fail).
        within("cancel arrives", first.stream.terminated()).await;
        assert!(first.stream.send(b"late").await.is_err());
        answer(&second, b"kept").await;
        assert_eq!(kept.await.expect("task").expect("call"), "kept");
        assert!(conn.manager().termination().is_none());

        // A cancellation token does the same.
        let token = CancellationToken::new();
        let call = unary(
            &conn,
            "/svc.S/Slow",
            "c",
            CallOptions::new().cancel_on(token.clone()),
        );
        let third = accept(&server).await;
        third.stream.recv().await.expect("request");
        assert_eq!(third.stream.recv().await.expect("close send"), None);
        token.cancel();
        let err = call.await.expect("task").expect_err("cancelled");
        assert!(err.is_canceled(), "{err:?}");
        assert!(!err.is_canceled_by_remote());
        within("cancel arrives", third.stream.terminated()).await;
        assert!(third.stream.send(b"late").await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_cancel_only_when_both_are_dropped() {
    within("test", async {
        let (conn, server) = pair(ConnOptions::default());
        let s = conn
            .stream_with::<Bytes, Bytes, _>(Raw, "/svc.S/Bidi", &CallOptions::new())
            .await
            .expect("open");
        let incoming = accept(&server).await;
        let (mut tx, mut rx) = s.split();
        tx.send(&Bytes::from("one")).await.expect("send");
        assert_eq!(
            incoming.stream.recv().await.expect("recv"),
            Some(Bytes::from("one"))
        );
        // Dropping the receiving half alone keeps the call going.
        drop(rx);
        tx.send(&Bytes::from("two"))
            .await
            .expect("send after dropping rx");
        assert_eq!(
            incoming.stream.recv().await.expect("recv"),
            Some(Bytes::from("two"))
        );
        // Dropping the sending half ends the request side (CloseSend);
        // as it is the last half, the call is cancelled too.
        drop(tx);
        assert_eq!(
            within("close send arrives", incoming.stream.recv())
                .await
                .expect("CloseSend first"),
            None
        );
        within("cancel arrives", incoming.stream.terminated()).await;
        assert!(incoming.stream.send(b"late").await.is_err());

        // The other way round: the sending half dropped first.
        let s = conn
            .stream_with::<Bytes, Bytes, _>(Raw, "/svc.S/Bidi", &CallOptions::new())
            .await
            .expect("open");
        let incoming = accept(&server).await;
        let (tx, r) = s.split();
        rx = r;
        drop(tx);
        // The request side ended; the call goes on.
        assert_eq!(
            within("close send arrives", incoming.stream.recv())
                .await
                .expect("CloseSend"),
            None
        );
        incoming.stream.send(b"three").await.expect("server send");
        assert_eq!(rx.recv().await.expect("recv"), Some(Bytes::from("three")));
        incoming.stream.close_send().expect("close_send");
        assert_eq!(rx.recv().await.expect("end"), None);
    })
    .await;
}

/// Catalogue 53: the server answers with a bare Message, the client returns
/// it and sends Close; when the server later closes the transport,
/// `closed()` fires within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_fires_when_the_peer_goes_away() {
    within("test", async {
        let (conn, server) = pair(ConnOptions::default());
        let call = unary(&conn, "/svc.S/M", "x", CallOptions::new());
        let incoming = accept(&server).await;
        incoming.stream.recv().await.expect("request");
        incoming
            .stream
            .send(b"only a message")
            .await
            .expect("reply");
        assert_eq!(call.await.expect("task").expect("call"), "only a message");
        // The client's Close ends the server's stream.
        within("client Close", incoming.stream.terminated()).await;
        // A call in flight when the server leaves fails with the connection.
        let pending = unary(&conn, "/svc.S/M", "y", CallOptions::new());
        let _second = accept(&server).await;
        let start = Instant::now();
        server.close().await;
        let why = within("closed", conn.closed()).await;
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(
            matches!(why, ConnectionError::Eof | ConnectionError::Io(_)),
            "{why:?}"
        );
        let err = pending.await.expect("task").expect_err("server gone");
        assert!(err.is_connection_lost(), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_calls_in_flight_and_later_calls() {
    within("test", async {
        let (conn, server) = pair(ConnOptions::default());
        let pending = unary(&conn, "/svc.S/M", "x", CallOptions::new());
        let incoming = accept(&server).await;
        conn.close().await;
        let err = pending.await.expect("task").expect_err("closed");
        assert!(err.is_connection_lost(), "{err:?}");
        assert!(matches!(conn.closed().await, ConnectionError::Closed));
        let err = conn
            .unary_with::<Bytes, Bytes, _>(&Raw, "/svc.S/M", &Bytes::new(), &CallOptions::new())
            .await
            .expect_err("closed");
        assert!(err.is_connection_lost(), "{err:?}");
        // The server side sees the client leave: its stream is cancelled.
        let err = within("server stream ends", incoming.stream.recv()).await;
        match err {
            Ok(Some(_)) => {} // the request arrived before the close
            Ok(None) => panic!("the stream ended cleanly"),
            Err(e) => assert!(e.is_canceled(), "{e:?}"),
        }
        within("server terminated", incoming.stream.terminated()).await;
        within("server closed", server.closed()).await;
    })
    .await;
}

/// In sequential mode a call waits until the previous stream has ended
/// before its Invoke goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_calls_wait_for_the_previous_stream() {
    within("test", async {
        let (conn, server) = pair(ConnOptions::sequential());
        let first = unary(&conn, "/svc.S/A", "1", CallOptions::new());
        let a = accept(&server).await;
        let second = unary(&conn, "/svc.S/B", "2", CallOptions::new());
        // The second call is not on the wire while the first is open.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), server.accept())
                .await
                .is_err(),
            "a second stream opened in sequential mode"
        );
        assert!(!conn.manager().is_unblocked());
        answer(&a, b"one").await;
        assert_eq!(first.await.expect("task").expect("first"), "one");
        let b = accept(&server).await;
        assert_eq!(b.rpc, "/svc.S/B");
        assert!(b.stream.id() > a.stream.id());
        answer(&b, b"two").await;
        assert_eq!(second.await.expect("task").expect("second"), "two");
    })
    .await;
}

/// A token cancelled before the call: the call fails as cancelled and
/// nothing goes on the wire (multiplexing.md §5.1: "Before any stream
/// exists: new_client_stream returns ctx.Err() at once. No id is used
/// [...] nothing is sent"; catalogue 78).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_cancelled_token_sends_nothing() {
    within("test", async {
        let (conn, server) = pair(ConnOptions::default());
        let token = CancellationToken::new();
        token.cancel();
        let opts = CallOptions::new().cancel_on(token);
        let err = conn
            .unary_with::<Bytes, Bytes, _>(&Raw, "/svc.S/Delete", &Bytes::from("x"), &opts)
            .await
            .expect_err("cancelled");
        assert!(err.is_canceled(), "{err:?}");
        let err = conn
            .stream_with::<Bytes, Bytes, _>(Raw, "/svc.S/Bidi", &opts)
            .await
            .expect_err("opening a stream with a cancelled token fails");
        assert!(err.is_canceled(), "{err:?}");
        // The next call is the first stream the server ever sees.
        let call = unary(&conn, "/svc.S/M", "x", CallOptions::new());
        let incoming = accept(&server).await;
        assert_eq!(
            incoming.rpc, "/svc.S/M",
            "the cancelled call reached the server"
        );
        answer(&incoming, b"y").await;
        assert_eq!(call.await.expect("task").expect("call"), "y");
    })
    .await;
}
