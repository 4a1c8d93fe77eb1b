//! Cancellation and deadlines end to end: dropped calls, dropped streams,
//! cancellation tokens, timeouts, and the deadline the server learns.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use drpc_conn::{CallOptions, Conn};
use drpc_manager::{Manager, ManagerOptions, Role};
use drpc_stream::{Raw, StreamErrorKind};
use drpc_wire::{Metadata, TIMEOUT_METADATA_KEY};
use tokio_util::sync::CancellationToken;

const FIVE_S: Duration = Duration::from_secs(5);

async fn echo_ok(conn: &Conn, msg: &str) {
    let got: Bytes = conn
        .unary_with(&Raw, ECHO, &b(msg), &CallOptions::new())
        .await
        .expect("echo on the same connection");
    assert_eq!(got, msg);
}

async fn dropped_unary_cancels_handler(transport: Transport) {
    let mut h = Harness::start(transport).await;
    let conn = h.connect().await;
    let opts = CallOptions::new();
    let req = b("x");
    let mut call = Box::pin(conn.unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &req, &opts));
    tokio::select! {
        r = &mut call => panic!("the blocked call returned: {r:?}"),
        _ = h.probe.wait_for("block:start", FIVE_S) => {}
    }
    drop(call);
    // The server drops the handler future and cancels its context.
    h.probe.wait_for("block:end", FIVE_S).await;
    h.probe.wait_for("block:ctx", FIVE_S).await;
    echo_ok(&conn, "after drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_unary_future_cancels_handler_tcp() {
    within(
        TEST_LIMIT,
        "drop unary",
        dropped_unary_cancels_handler(Transport::Tcp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_unary_future_cancels_handler_unix() {
    within(
        TEST_LIMIT,
        "drop unary",
        dropped_unary_cancels_handler(Transport::Unix),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_unary_future_cancels_handler_duplex() {
    within(
        TEST_LIMIT,
        "drop unary",
        dropped_unary_cancels_handler(Transport::Duplex),
    )
    .await;
}

/// A client that drops a bidi stream halfway: the handler's receive fails
/// and its future ends; other calls on the connection go on.
async fn dropped_stream_cancels_handler(transport: Transport) {
    let mut h = Harness::start(transport).await;
    let conn = h.connect().await;
    let mut s = conn
        .stream_with::<Bytes, Bytes, _>(Raw, BIDI_WATCH, &CallOptions::new())
        .await
        .expect("open");
    for i in 0..3 {
        let msg = b(&format!("m{i}"));
        s.send(&msg).await.expect("send");
        assert_eq!(s.recv().await.expect("recv"), Some(msg));
    }
    h.probe.wait_for("bidi-watch:start", FIVE_S).await;
    // Another stream in flight on the same connection.
    let mut other = conn
        .stream_with::<Bytes, Bytes, _>(Raw, BIDI, &CallOptions::new())
        .await
        .expect("open other");
    other.send(&b("before")).await.expect("send other");
    assert_eq!(other.recv().await.expect("recv other"), Some(b("before")));

    drop(s);
    h.probe.wait_for("bidi-watch:end", FIVE_S).await;

    other.send(&b("after")).await.expect("send other after");
    assert_eq!(
        other.recv().await.expect("recv other after"),
        Some(b("after"))
    );
    other.close_send().expect("close other");
    assert_eq!(other.recv().await.expect("end other"), None);
    echo_ok(&conn, "after stream drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_stream_cancels_handler_tcp() {
    within(
        TEST_LIMIT,
        "drop stream",
        dropped_stream_cancels_handler(Transport::Tcp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_stream_cancels_handler_duplex() {
    within(
        TEST_LIMIT,
        "drop stream",
        dropped_stream_cancels_handler(Transport::Duplex),
    )
    .await;
}

/// The server-streaming variant: the client drops the stream after a few
/// messages; the handler's send fails (or it is dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_server_stream_ends_handler() {
    within(TEST_LIMIT, "drop server stream", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        let mut s = conn
            .server_streaming::<Bytes, Bytes, _>(Raw, FOREVER, &Bytes::new(), &CallOptions::new())
            .await
            .expect("open");
        for i in 0..3 {
            assert_eq!(s.recv().await.expect("recv"), Some(b(&i.to_string())));
        }
        drop(s);
        h.probe.wait_for("forever:end", FIVE_S).await;
        echo_ok(&conn, "after").await;
    })
    .await;
}

/// The handler's request context is cancelled when the client cancels a
/// streaming call, also when the handler was reading at that moment, as
/// the crate documentation promises ("A call the client cancels [...] its
/// RequestContext is cancelled for any work it handed off").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_stream_cancels_request_context() {
    within(TEST_LIMIT, "drop stream ctx", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h.connect().await;
        let mut s = conn
            .stream_with::<Bytes, Bytes, _>(Raw, BIDI_WATCH, &CallOptions::new())
            .await
            .expect("open");
        s.send(&b("m")).await.expect("send");
        assert_eq!(s.recv().await.expect("recv"), Some(b("m")));
        drop(s);
        h.probe.wait_for("bidi-watch:end", FIVE_S).await;
        h.probe.wait_for("bidi-watch:ctx", FIVE_S).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_on_token_cancels_unary_call() {
    within(TEST_LIMIT, "cancel_on unary", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        let token = CancellationToken::new();
        let opts = CallOptions::new().cancel_on(token.clone());
        let call = {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &Bytes::new(), &opts)
                    .await
            })
        };
        h.probe.wait_for("block:start", FIVE_S).await;
        token.cancel();
        let err = call.await.expect("task").expect_err("cancelled call");
        assert!(err.is_canceled(), "{err:?}");
        assert!(!err.is_connection_lost());
        h.probe.wait_for("block:end", FIVE_S).await;
        echo_ok(&conn, "after cancel").await;

        // A token cancelled before the call: the call fails as cancelled.
        let token = CancellationToken::new();
        token.cancel();
        let opts = CallOptions::new().cancel_on(token);
        let err = conn
            .unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &Bytes::new(), &opts)
            .await
            .expect_err("pre-cancelled");
        assert!(err.is_canceled(), "{err:?}");
        echo_ok(&conn, "after pre-cancelled").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_on_token_cancels_stream() {
    within(TEST_LIMIT, "cancel_on stream", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        let token = CancellationToken::new();
        let opts = CallOptions::new().cancel_on(token.clone());
        let mut s = conn
            .stream_with::<Bytes, Bytes, _>(Raw, BIDI_WATCH, &opts)
            .await
            .expect("open");
        s.send(&b("one")).await.expect("send");
        assert_eq!(s.recv().await.expect("recv"), Some(b("one")));
        token.cancel();
        let err = s.recv().await.expect_err("cancelled stream");
        assert!(err.is_canceled(), "{err:?}");
        h.probe.wait_for("bidi-watch:end", FIVE_S).await;
        // Sending after the cancel fails too (Go: io.EOF).
        assert!(s.send(&b("two")).await.is_err());
        // An explicit cancel works the same way.
        let s2 = conn
            .stream_with::<Bytes, Bytes, _>(Raw, BIDI_WATCH, &CallOptions::new())
            .await
            .expect("open");
        h.probe.wait_for("bidi-watch:start", FIVE_S).await;
        s2.cancel();
        h.probe.wait_for("bidi-watch:end", FIVE_S).await;
        echo_ok(&conn, "after stream cancel").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeout_on_blocked_handler() {
    within(TEST_LIMIT, "timeout", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        let start = Instant::now();
        let opts = CallOptions::new().timeout(Duration::from_millis(100));
        let err = conn
            .unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &Bytes::new(), &opts)
            .await
            .expect_err("deadline");
        let took = start.elapsed();
        assert!(is_deadline(&err), "{err:?}");
        assert!(!err.is_canceled());
        assert!(took >= Duration::from_millis(90), "failed early: {took:?}");
        assert!(took < Duration::from_secs(1), "failed late: {took:?}");
        h.probe.wait_for("block:start", FIVE_S).await;
        h.probe.wait_for("block:end", Duration::from_secs(1)).await;
        h.probe.wait_for("block:ctx", Duration::from_secs(1)).await;
        echo_ok(&conn, "after timeout").await;

        // A streaming call's deadline stays in force for its life.
        let start = Instant::now();
        let opts = CallOptions::new().timeout(Duration::from_millis(100));
        let mut s = conn
            .stream_with::<Bytes, Bytes, _>(Raw, BIDI_WATCH, &opts)
            .await
            .expect("open");
        s.send(&b("x")).await.expect("send");
        assert_eq!(s.recv().await.expect("recv"), Some(b("x")));
        let err = s.recv().await.expect_err("stream deadline");
        assert!(is_deadline(&err), "{err:?}");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(1), "failed late: {took:?}");
        h.probe
            .wait_for("bidi-watch:end", Duration::from_secs(1))
            .await;
        echo_ok(&conn, "after stream timeout").await;
    })
    .await;
}

/// The server itself enforces the deadline it reads from `drpc-timeout`,
/// even when the client never cancels: a bare manager client sends the
/// metadata and waits; the server ends the call with code 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_enforces_drpc_timeout() {
    within(TEST_LIMIT, "server deadline", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = h.server.clone();
        tokio::spawn(async move { server.serve_connection(server_io).await });
        let client = Manager::new(client_io, Role::Client, ManagerOptions::default());
        let mut md = Metadata::new();
        md.insert(TIMEOUT_METADATA_KEY.to_owned(), "150m".to_owned());
        let start = Instant::now();
        let stream = client.open_stream(BLOCK, &md).await.expect("open");
        stream.send(b"req").await.expect("send");
        stream.close_send().expect("close_send");
        let err = stream.recv().await.expect_err("server deadline");
        let took = start.elapsed();
        match err.kind() {
            StreamErrorKind::Remote(e) => {
                assert_eq!(e.kind(), drpc_wire::Code::DeadlineExceeded, "{e:?}");
                assert!(e.message().contains("deadline"), "{e:?}");
            }
            other => panic!("expected the server's error, got {other:?}"),
        }
        assert!(took >= Duration::from_millis(140), "too early: {took:?}");
        assert!(took < Duration::from_secs(1), "too late: {took:?}");
        h.probe.wait_for("block:end", FIVE_S).await;
        h.probe.wait_for("block:ctx", FIVE_S).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadline_reaches_the_server() {
    within(TEST_LIMIT, "deadline value", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        let opts = CallOptions::new().timeout(Duration::from_secs(5));
        let left: Bytes = conn
            .unary_with(&Raw, DEADLINE, &Bytes::new(), &opts)
            .await
            .expect("deadline call");
        let left: u64 = String::from_utf8_lossy(&left).parse().expect("a number");
        assert!((4_000..=5_000).contains(&left), "remaining {left} ms");

        // The earlier of two deadlines wins.
        let opts = CallOptions::new()
            .timeout(Duration::from_secs(5))
            .deadline(Instant::now() + Duration::from_secs(2));
        let left: Bytes = conn
            .unary_with(&Raw, DEADLINE, &Bytes::new(), &opts)
            .await
            .expect("deadline call");
        let left: u64 = String::from_utf8_lossy(&left).parse().expect("a number");
        assert!((1_000..=2_000).contains(&left), "remaining {left} ms");

        let none: Bytes = conn
            .unary_with(&Raw, DEADLINE, &Bytes::new(), &CallOptions::new())
            .await
            .expect("no deadline");
        assert_eq!(none, "none");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_deadline_fails_immediately() {
    within(TEST_LIMIT, "expired deadline", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        let past = Instant::now()
            .checked_sub(Duration::from_millis(10))
            .unwrap_or_else(Instant::now);
        let start = Instant::now();
        let opts = CallOptions::new().deadline(past);
        let err = conn
            .unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &Bytes::new(), &opts)
            .await
            .expect_err("expired");
        assert!(err.is_deadline_exceeded(), "{err:?}");
        let err = conn
            .stream_with::<Bytes, Bytes, _>(Raw, BIDI_WATCH, &opts)
            .await
            .expect_err("expired stream");
        assert!(err.is_deadline_exceeded(), "{err:?}");
        let err = conn
            .unary_with::<Bytes, Bytes, _>(
                &Raw,
                BLOCK,
                &Bytes::new(),
                &CallOptions::new().timeout(Duration::ZERO),
            )
            .await
            .expect_err("zero timeout");
        assert!(err.is_deadline_exceeded(), "{err:?}");
        assert!(start.elapsed() < Duration::from_millis(100));
        // Nothing reached the server.
        echo_ok(&conn, "after expired").await;
        let seen = h.probe.drain();
        assert!(seen.is_empty(), "the server saw {seen:?}");
        assert_eq!(conn.manager().active_streams(), 0);
    })
    .await;
}

/// A timed-out call reports its deadline through
/// `Error::is_deadline_exceeded()` every time. It does not: when the
/// server's timer (from `drpc-timeout`) fires in the same tick as the
/// client's, the server's Error (code 4) wins the client's biased select and
/// the client gets `Remote(code 4)`, for which `is_deadline_exceeded()` is
/// false (about 1 call in 10 on loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeout_always_reports_deadline_exceeded() {
    within(TEST_LIMIT, "timeout classification", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h.connect().await;
        for i in 0..50 {
            let opts = CallOptions::new().timeout(Duration::from_millis(30));
            let err = conn
                .unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &b("b"), &opts)
                .await
                .expect_err("deadline");
            assert!(err.is_deadline_exceeded(), "call {i}: {err:?}");
        }
    })
    .await;
}
