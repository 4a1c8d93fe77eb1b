//! Connection termination: the client closing with calls in flight, the
//! server going away, and `Conn::closed()`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use drpc_conn::{CallOptions, Error};
use drpc_stream::{ConnectionError, Raw};

const FIVE_S: Duration = Duration::from_secs(5);

/// Receives until the stream fails, and returns the failure.
async fn recv_until_error(s: &mut drpc_conn::ClientStream<Bytes, Bytes, Raw>) -> Error {
    within(FIVE_S, "stream fails", async {
        loop {
            match s.recv().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended cleanly"),
                Err(e) => break e,
            }
        }
    })
    .await
}

async fn close_during_server_stream(transport: Transport) {
    let mut h = Harness::start(transport).await;
    let conn = h.connect().await;
    let mut s = conn
        .server_streaming::<Bytes, Bytes, _>(Raw, FOREVER, &Bytes::new(), &CallOptions::new())
        .await
        .expect("open");
    for i in 0..3 {
        assert_eq!(s.recv().await.expect("recv"), Some(b(&i.to_string())));
    }
    within(FIVE_S, "close", conn.close()).await;
    let err = recv_until_error(&mut s).await;
    assert!(err.is_connection_lost(), "{err:?}");
    assert!(!err.is_canceled(), "{err:?}");
    h.probe.wait_for("forever:end", FIVE_S).await;
    assert!(matches!(
        within(FIVE_S, "closed", conn.closed()).await,
        ConnectionError::Closed
    ));

    // Calls after close fail at once with the connection error.
    let err = conn
        .unary_with::<Bytes, Bytes, _>(&Raw, ECHO, &b("x"), &CallOptions::new())
        .await
        .expect_err("closed connection");
    assert!(err.is_connection_lost(), "{err:?}");
    let err = conn
        .stream_with::<Bytes, Bytes, _>(Raw, BIDI, &CallOptions::new())
        .await
        .expect_err("closed connection");
    assert!(err.is_connection_lost(), "{err:?}");

    // The server goes on serving other connections.
    let other = h.connect().await;
    let got: Bytes = other
        .unary_with(&Raw, ECHO, &b("other"), &CallOptions::new())
        .await
        .expect("echo on another connection");
    assert_eq!(got, "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_during_server_stream_tcp() {
    within(
        TEST_LIMIT,
        "close tcp",
        close_during_server_stream(Transport::Tcp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_during_server_stream_unix() {
    within(
        TEST_LIMIT,
        "close unix",
        close_during_server_stream(Transport::Unix),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_during_server_stream_duplex() {
    within(
        TEST_LIMIT,
        "close duplex",
        close_during_server_stream(Transport::Duplex),
    )
    .await;
}

/// Closing the client during a unary call does not hang (catalogue 87): the
/// call fails with the connection, the handler is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_during_unary_call() {
    within(TEST_LIMIT, "close during unary", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        let call = {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &b("b"), &CallOptions::new())
                    .await
            })
        };
        h.probe.wait_for("block:start", FIVE_S).await;
        conn.close().await;
        let err = within(FIVE_S, "call fails", call)
            .await
            .expect("task")
            .expect_err("closed during the call");
        assert!(err.is_connection_lost(), "{err:?}");
        h.probe.wait_for("block:end", FIVE_S).await;
        h.probe.wait_for("block:ctx", FIVE_S).await;
    })
    .await;
}

/// Dropping the last `Conn` clone while a stream is still open keeps the
/// connection for that stream; dropping the stream then cancels the call
/// (the server's handler ends) and closes the connection (the server's
/// `serve_connection` returns).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_stream_keeps_its_connection() {
    within(TEST_LIMIT, "drop conn", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h.connect().await;
        let mut s = conn
            .server_streaming::<Bytes, Bytes, _>(Raw, FOREVER, &Bytes::new(), &CallOptions::new())
            .await
            .expect("open");
        assert_eq!(s.recv().await.expect("recv"), Some(b("0")));
        drop(conn);
        // The stream goes on.
        for i in 1..4 {
            assert_eq!(s.recv().await.expect("recv"), Some(b(&i.to_string())));
        }
        assert!(!h.probe.drain().contains(&"forever:end".to_owned()));
        drop(s);
        h.probe.wait_for("forever:end", FIVE_S).await;
        let task = h.connections.pop().expect("connection task");
        within(FIVE_S, "serve_connection returns", task)
            .await
            .expect("task");
    })
    .await;
}

/// Dropping the last `Conn` clone with no stream open closes the
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropping_the_last_conn_closes_the_connection() {
    within(TEST_LIMIT, "drop idle conn", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h.connect().await;
        let got: Bytes = conn
            .unary_with(&Raw, ECHO, &b("x"), &CallOptions::new())
            .await
            .expect("echo");
        assert_eq!(got, "x");
        drop(conn);
        let task = h.connections.pop().expect("connection task");
        within(FIVE_S, "serve_connection returns", task)
            .await
            .expect("task");
    })
    .await;
}

/// `Conn::closed()` resolves when the server goes away: the task serving
/// the connection is aborted, which drops the server's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_resolves_when_server_goes_away_duplex() {
    within(TEST_LIMIT, "server goes away", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h.connect().await;
        let got: Bytes = conn
            .unary_with(&Raw, ECHO, &b("x"), &CallOptions::new())
            .await
            .expect("echo");
        assert_eq!(got, "x");
        let call = {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &b("b"), &CallOptions::new())
                    .await
            })
        };
        h.probe.wait_for("block:start", FIVE_S).await;
        h.connections.pop().expect("connection task").abort();
        let why = within(FIVE_S, "closed", conn.closed()).await;
        assert!(!matches!(why, ConnectionError::Closed), "{why:?}");
        let err = within(FIVE_S, "in-flight call fails", call)
            .await
            .expect("task")
            .expect_err("server gone");
        assert!(err.is_connection_lost(), "{err:?}");
        h.probe.wait_for("block:end", FIVE_S).await;
    })
    .await;
}

/// `Conn::closed()` resolves when the server shuts down, over TCP and a
/// Unix socket, for idle connections and connections with open streams.
async fn closed_on_shutdown(transport: Transport) {
    let mut h = Harness::start(transport).await;
    let idle = h.connect().await;
    let busy = h.connect().await;
    let mut s = busy
        .server_streaming::<Bytes, Bytes, _>(Raw, FOREVER, &Bytes::new(), &CallOptions::new())
        .await
        .expect("open");
    assert!(s.recv().await.expect("recv").is_some());
    let shutdown = {
        let server = h.server.clone();
        tokio::spawn(async move { server.shutdown(Duration::from_millis(100)).await })
    };
    within(FIVE_S, "idle closed", idle.closed()).await;
    within(FIVE_S, "busy closed", busy.closed()).await;
    let err = recv_until_error(&mut s).await;
    assert!(err.is_unavailable(), "{err:?}");
    within(FIVE_S, "shutdown", shutdown)
        .await
        .expect("shutdown task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_resolves_on_shutdown_tcp() {
    within(
        TEST_LIMIT,
        "closed on shutdown tcp",
        closed_on_shutdown(Transport::Tcp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_resolves_on_shutdown_unix() {
    within(
        TEST_LIMIT,
        "closed on shutdown unix",
        closed_on_shutdown(Transport::Unix),
    )
    .await;
}
