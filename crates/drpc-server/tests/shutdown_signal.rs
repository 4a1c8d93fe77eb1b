//! Shutdown: the listener stops accepting at once, running handlers are
//! told through their context and may finish within the grace period,
//! handlers that ignore it are cancelled when it is over.

mod support;

use std::time::Duration;

use bytes::Bytes;
use drpc_conn::{CallOptions, ClientStream, Conn, ConnOptions, Error};
use drpc_server::ServerOptions;
use drpc_stream::Raw;
use support::*;

/// Whether a connection attempt is refused or closed at once, as it must
/// be once the server is shutting down. `connect` dials; the server may
/// only end the connection, never serve it.
async fn refused<S, F>(connect: F)
where
    S: tokio::io::AsyncRead + Unpin,
    F: AsyncFnOnce() -> std::io::Result<S>,
{
    if let Ok(mut socket) = connect().await {
        server_closes(&mut socket, "a connection made during shutdown").await;
    }
}

/// A call that runs until shutdown, to keep the server in its grace
/// period.
async fn keep_busy(conn: &Conn, events: &mut Events) -> ClientStream<Bytes, Bytes, Raw> {
    let mut ticks = conn
        .server_streaming::<Bytes, Bytes, _>(Raw, TICKS, &Bytes::new(), &CallOptions::new())
        .await
        .expect("open");
    events.wait_for("ticks:start").await;
    assert_eq!(ticks.recv().await.expect("tick"), Some(b("tick")));
    ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_is_accepted_once_shutdown_begins_tcp() {
    within(TEST_LIMIT, "stop accepting tcp", async {
        let (server, addr, task, mut events) = start_tcp(ServerOptions::new()).await;
        let conn = Conn::connect_tcp(addr, ConnOptions::default())
            .await
            .expect("connect");
        let _ticks = keep_busy(&conn, &mut events).await;
        let shutdown = {
            let server = server.clone();
            tokio::spawn(async move { server.shutdown(Duration::from_secs(30)).await })
        };
        events.wait_for("ticks:shutdown").await;
        // The handler knew, so shutdown has begun: from now on no
        // connection is served.
        for _ in 0..3 {
            refused(async || tokio::net::TcpStream::connect(addr).await).await;
        }
        within(STEP, "shutdown", shutdown).await.expect("task");
        within(STEP, "serve_tcp returns", task)
            .await
            .expect("task")
            .expect("no error");
    })
    .await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_is_accepted_once_shutdown_begins_unix() {
    within(TEST_LIMIT, "stop accepting unix", async {
        let (server, path, task, mut events) = start_unix(ServerOptions::new()).await;
        let conn = Conn::connect_unix(&path, ConnOptions::default())
            .await
            .expect("connect");
        let _ticks = keep_busy(&conn, &mut events).await;
        let shutdown = {
            let server = server.clone();
            tokio::spawn(async move { server.shutdown(Duration::from_secs(30)).await })
        };
        events.wait_for("ticks:shutdown").await;
        for _ in 0..3 {
            refused(async || tokio::net::UnixStream::connect(&path).await).await;
        }
        within(STEP, "shutdown", shutdown).await.expect("task");
        within(STEP, "serve_unix returns", task)
            .await
            .expect("task")
            .expect("no error");
        let _ = std::fs::remove_file(&path);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_learns_of_shutdown_and_finishes_within_the_grace() {
    within(TEST_LIMIT, "shutdown signalled", async {
        let (server, addr, task, mut events) = start_tcp(ServerOptions::new()).await;
        let conn = Conn::connect_tcp(addr, ConnOptions::default())
            .await
            .expect("connect");
        let mut ticks = keep_busy(&conn, &mut events).await;
        // A grace far longer than the test: the stream must end by itself.
        let shutdown = {
            let server = server.clone();
            tokio::spawn(async move { server.shutdown(Duration::from_secs(60)).await })
        };
        let last = within(STEP, "the stream's last message", async {
            loop {
                match ticks.recv().await.expect("no error: the handler returned") {
                    Some(msg) if msg == "tick" => continue,
                    other => break other,
                }
            }
        })
        .await;
        assert_eq!(last, Some(b("bye:true")));
        assert_eq!(ticks.recv().await.expect("clean end"), None);
        within(STEP, "shutdown returns once the handler is done", shutdown)
            .await
            .expect("task");
        within(STEP, "serve_tcp returns", task)
            .await
            .expect("task")
            .expect("no error");
        within(STEP, "connection closed", conn.closed()).await;
    })
    .await;
}

fn unavailable(err: &Error) -> bool {
    err.is_unavailable()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_ignores_shutdown_is_cancelled_after_the_grace() {
    within(TEST_LIMIT, "grace over", async {
        let (server, addr, task, mut events) = start_tcp(ServerOptions::new()).await;
        let conn = Conn::connect_tcp(addr, ConnOptions::default())
            .await
            .expect("connect");
        let mut stream = conn
            .server_streaming::<Bytes, Bytes, _>(Raw, STUBBORN, &Bytes::new(), &CallOptions::new())
            .await
            .expect("open");
        events.wait_for("stubborn:start").await;
        assert_eq!(stream.recv().await.expect("tick"), Some(b("tick")));

        let shutdown = {
            let server = server.clone();
            tokio::spawn(async move { server.shutdown(Duration::from_millis(100)).await })
        };
        events.wait_for("stubborn:shutdown").await;
        // It goes on during the grace period; then it is cancelled.
        let err = within(STEP, "the stream is cancelled", async {
            loop {
                match stream.recv().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("a stream that never ends ended cleanly"),
                    Err(e) => break e,
                }
            }
        })
        .await;
        assert!(unavailable(&err), "{err:?}");
        events.wait_for("stubborn:cancelled").await;
        within(STEP, "shutdown", shutdown).await.expect("task");
        within(STEP, "serve_tcp returns", task)
            .await
            .expect("task")
            .expect("no error");
    })
    .await;
}
