//! Connection hygiene: the idle timeout closes a quiet connection and not
//! one with a call in progress, the handshake timeout closes a connection
//! that says nothing, a connection over `max_connections` is closed at
//! once. Timeouts are small; time bounds are upper bounds only.

mod support;

use std::time::Duration;

use drpc_conn::{CallOptions, Conn, ConnOptions};
use drpc_server::{PeerInfo, Server, ServerOptions};
use drpc_stream::Raw;
use support::*;
use tokio::io::AsyncWriteExt;

const SHORT: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_a_quiet_connection() {
    within(TEST_LIMIT, "idle", async {
        let opts = ServerOptions::new()
            .idle_timeout(Some(SHORT))
            .handshake_timeout(None);
        let (_server, addr, _task, _events) = start_tcp(opts).await;
        let conn = Conn::connect_tcp(addr, ConnOptions::default())
            .await
            .expect("connect");
        assert_eq!(call(&conn, ECHO, "hi").await.expect("echo"), "hi");
        within(STEP, "the server closes the idle connection", conn.closed()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_progress_keeps_its_connection_open() {
    within(TEST_LIMIT, "busy", async {
        let opts = ServerOptions::new()
            .idle_timeout(Some(SHORT))
            .handshake_timeout(None);
        let (_server, addr, _task, _events) = start_tcp(opts).await;
        let conn = Conn::connect_tcp(addr, ConnOptions::default())
            .await
            .expect("connect");
        let mut bidi = conn
            .stream_with::<bytes::Bytes, bytes::Bytes, _>(Raw, BIDI, &CallOptions::new())
            .await
            .expect("open");
        bidi.send(&b("a")).await.expect("send");
        assert_eq!(bidi.recv().await.expect("recv"), Some(b("a")));
        // Silent for many idle timeouts, with the stream open: the
        // connection stays.
        tokio::time::sleep(SHORT * 8).await;
        assert!(conn.manager().termination().is_none(), "closed while busy");
        bidi.send(&b("b")).await.expect("send after the quiet");
        assert_eq!(bidi.recv().await.expect("recv"), Some(b("b")));
        bidi.close_send().expect("close_send");
        assert_eq!(bidi.recv().await.expect("end"), None);
        // Done: now it is idle, and closed.
        within(STEP, "closed once idle", conn.closed()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_timeout_closes_a_connection_that_says_nothing() {
    within(TEST_LIMIT, "handshake", async {
        let opts = ServerOptions::new()
            .handshake_timeout(Some(SHORT))
            .idle_timeout(None);
        let (_server, addr, _task, _events) = start_tcp(opts).await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        server_closes(&mut silent, "a silent connection closed").await;

        // One that speaks in time is served, and not closed after.
        let conn = Conn::connect_tcp(addr, ConnOptions::default())
            .await
            .expect("connect");
        assert_eq!(call(&conn, ECHO, "1").await.expect("echo"), "1");
        tokio::time::sleep(SHORT * 4).await;
        assert_eq!(call(&conn, ECHO, "2").await.expect("still served"), "2");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeouts_apply_to_serve_incoming_and_serve_connection() {
    within(TEST_LIMIT, "timeouts everywhere", async {
        let (mux, _events) = mux();
        let opts = ServerOptions::new()
            .handshake_timeout(Some(SHORT))
            .idle_timeout(None);
        let server = Server::with_options(mux, opts);

        // serve_incoming.
        let (silent, served) = tokio::io::duplex(1024);
        let serving = server.clone();
        let incoming = futures_util::stream::iter([Ok((served, PeerInfo::unknown()))]);
        tokio::spawn(async move { serving.serve_incoming(incoming).await });
        let mut silent = silent;
        server_closes(&mut silent, "serve_incoming: silent pipe closed").await;

        // serve_connection.
        let (silent, served) = tokio::io::duplex(1024);
        let serving = server.clone();
        let ended = tokio::spawn(async move { serving.serve_connection(served).await });
        within(STEP, "serve_connection returns", ended)
            .await
            .expect("task");
        drop(silent);
    })
    .await;
}

async fn over_limit_closed_at_once(raw_second: bool) {
    let opts = ServerOptions::new().max_connections(1);
    let (_server, addr, _task, _events) = start_tcp(opts).await;
    let first = Conn::connect_tcp(addr, ConnOptions::default())
        .await
        .expect("connect");
    assert_eq!(call(&first, ECHO, "1").await.expect("first"), "1");

    let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    if raw_second {
        // It even sends something first: still closed, nothing answered.
        let _ = second.write_all(b"\x05\x01\x01\x00").await;
    }
    server_closes(&mut second, "the connection over the limit is closed").await;
    assert_eq!(call(&first, ECHO, "2").await.expect("first goes on"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_limit_is_closed_at_once() {
    within(TEST_LIMIT, "over limit", over_limit_closed_at_once(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_limit_that_speaks_is_closed_at_once() {
    within(
        TEST_LIMIT,
        "over limit, speaking",
        over_limit_closed_at_once(true),
    )
    .await;
}
