//! Graceful shutdown: in-flight RPCs finish within the grace period, new
//! connections and RPCs are refused, stragglers are cancelled, and the
//! serving futures return.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use drpc_conn::{CallOptions, Conn, ConnOptions, Error};
use drpc_stream::Raw;

const FIVE_S: Duration = Duration::from_secs(5);

/// A call on a connection to a server that is shutting down or gone: it
/// must fail (Unavailable, or the connection lost) within bounded time.
fn refused(err: &Error) -> bool {
    err.is_unavailable()
}

async fn graceful_lets_calls_finish(transport: Transport) {
    let mut h = Harness::start(transport).await;
    let conn = h.connect().await;
    let got: Bytes = conn
        .unary_with(&Raw, ECHO, &b("up"), &CallOptions::new())
        .await
        .expect("echo");
    assert_eq!(got, "up");

    let calls: Vec<_> = (0..5)
        .map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.unary_with::<Bytes, Bytes, _>(&Raw, SLEEP, &b("200"), &CallOptions::new())
                    .await
            })
        })
        .collect();
    h.probe.wait_n("sleep:start", 5, FIVE_S).await;
    // And a bidi stream in flight.
    let mut bidi = conn
        .stream_with::<Bytes, Bytes, _>(Raw, BIDI, &CallOptions::new())
        .await
        .expect("open bidi");
    bidi.send(&b("before")).await.expect("send");
    assert_eq!(bidi.recv().await.expect("recv"), Some(b("before")));

    let start = Instant::now();
    let shutdown = {
        let server = h.server.clone();
        tokio::spawn(async move { server.shutdown(Duration::from_secs(2)).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(h.server.is_shutting_down());

    // The stream in flight keeps working during the grace period.
    bidi.send(&b("during")).await.expect("send during grace");
    assert_eq!(
        bidi.recv().await.expect("recv during grace"),
        Some(b("during"))
    );
    bidi.close_send().expect("close_send");
    assert_eq!(bidi.recv().await.expect("clean end"), None);

    // A new RPC on the existing connection during the grace period is
    // refused (or fails with the connection), and does not delay shutdown.
    let late = {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.unary_with::<Bytes, Bytes, _>(&Raw, ECHO, &b("late"), &CallOptions::new())
                .await
        })
    };

    // A new connection during the grace period is not served.
    let newcomer = match h.try_connect_with(ConnOptions::default()).await {
        Ok(c) => Some(tokio::spawn(async move {
            c.unary_with::<Bytes, Bytes, _>(&Raw, ECHO, &b("new"), &CallOptions::new())
                .await
        })),
        Err(_) => None,
    };

    // The calls in flight complete successfully.
    for call in calls {
        let got = within(FIVE_S, "in-flight call", call)
            .await
            .expect("task")
            .expect("in-flight call completes during the grace period");
        assert_eq!(got, "slept");
    }
    within(FIVE_S, "shutdown", shutdown)
        .await
        .expect("shutdown task");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(120),
        "shutdown returned early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "shutdown waited for the whole grace: {took:?}"
    );
    h.probe.wait_n("sleep:end", 5, FIVE_S).await;

    let served = within(FIVE_S, "serve returns", h.serve.take().expect("serve task"))
        .await
        .expect("serve task");
    served.expect("serve returns Ok after shutdown");

    match within(FIVE_S, "late rpc", late).await.expect("late task") {
        Ok(got) => panic!("an RPC that arrived during shutdown was served: {got:?}"),
        Err(e) => assert!(refused(&e), "late rpc: {e:?}"),
    }
    if let Some(newcomer) = newcomer {
        match within(FIVE_S, "new connection", newcomer)
            .await
            .expect("newcomer task")
        {
            Ok(got) => panic!("a connection made during shutdown was served: {got:?}"),
            Err(e) => assert!(refused(&e), "newcomer: {e:?}"),
        }
    }

    // The server closed the old connection, and accepts none any more.
    within(FIVE_S, "old connection closed", conn.closed()).await;
    if let Ok(c) = h.try_connect_with(ConnOptions::default()).await {
        let err = within(
            FIVE_S,
            "call after shutdown",
            c.unary_with::<Bytes, Bytes, _>(&Raw, ECHO, &b("after"), &CallOptions::new()),
        )
        .await
        .expect_err("no server any more");
        assert!(err.is_connection_lost(), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_lets_calls_finish_tcp() {
    within(
        TEST_LIMIT,
        "graceful tcp",
        graceful_lets_calls_finish(Transport::Tcp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_lets_calls_finish_unix() {
    within(
        TEST_LIMIT,
        "graceful unix",
        graceful_lets_calls_finish(Transport::Unix),
    )
    .await;
}

async fn grace_expires(transport: Transport) {
    let mut h = Harness::start(transport).await;
    let conns: Vec<Conn> = vec![h.connect().await, h.connect().await];
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let conn = conns[i % 2].clone();
            tokio::spawn(async move {
                conn.unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &b("b"), &CallOptions::new())
                    .await
            })
        })
        .collect();
    // And a streaming call that never ends by itself.
    let mut stream = conns[0]
        .server_streaming::<Bytes, Bytes, _>(Raw, FOREVER, &Bytes::new(), &CallOptions::new())
        .await
        .expect("open");
    assert!(stream.recv().await.expect("recv").is_some());
    h.probe.wait_n("block:start", 4, FIVE_S).await;

    let start = Instant::now();
    within(
        FIVE_S,
        "shutdown",
        h.server.shutdown(Duration::from_millis(200)),
    )
    .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(180),
        "returned before the grace: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "returned late: {took:?}"
    );

    for call in calls {
        let err = within(FIVE_S, "cancelled call", call)
            .await
            .expect("task")
            .expect_err("a handler that never finishes cannot succeed");
        assert!(refused(&err), "{err:?}");
    }
    let err = within(FIVE_S, "stream ends", async {
        loop {
            match stream.recv().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a never-ending stream ended cleanly"),
                Err(e) => break e,
            }
        }
    })
    .await;
    assert!(refused(&err), "{err:?}");
    h.probe.wait_n("block:end", 4, FIVE_S).await;
    h.probe.wait_n("block:ctx", 4, FIVE_S).await;
    h.probe.wait_for("forever:end", FIVE_S).await;

    let served = within(FIVE_S, "serve returns", h.serve.take().expect("serve task"))
        .await
        .expect("serve task");
    served.expect("serve returns Ok after shutdown");
    for conn in &conns {
        within(FIVE_S, "connection closed", conn.closed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_cancels_stragglers_after_grace_tcp() {
    within(
        TEST_LIMIT,
        "grace expires tcp",
        grace_expires(Transport::Tcp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_cancels_stragglers_after_grace_unix() {
    within(
        TEST_LIMIT,
        "grace expires unix",
        grace_expires(Transport::Unix),
    )
    .await;
}

/// Shutdown of an idle server returns at once, and so does its listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_idle_server_is_quick() {
    within(TEST_LIMIT, "idle shutdown", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        let got: Bytes = conn
            .unary_with(&Raw, ECHO, &b("x"), &CallOptions::new())
            .await
            .expect("echo");
        assert_eq!(got, "x");
        let start = Instant::now();
        h.server.shutdown(Duration::from_secs(5)).await;
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        let served = within(FIVE_S, "serve returns", h.serve.take().expect("serve task"))
            .await
            .expect("serve task");
        served.expect("serve returns Ok");
        within(FIVE_S, "idle connection closed", conn.closed()).await;
        // Shutting down twice is harmless.
        within(
            FIVE_S,
            "second shutdown",
            h.server.shutdown(Duration::from_secs(1)),
        )
        .await;
    })
    .await;
}

/// A connection served by `serve_connection` (not from a listener) is
/// also shut down: in-flight handlers get the grace period, then are
/// cancelled, and `serve_connection` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_reaches_serve_connection() {
    within(TEST_LIMIT, "shutdown serve_connection", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h.connect().await;
        let call = {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &b("b"), &CallOptions::new())
                    .await
            })
        };
        h.probe.wait_for("block:start", FIVE_S).await;
        h.server.shutdown(Duration::from_millis(200)).await;
        let err = within(FIVE_S, "blocked call ends", call)
            .await
            .expect("task")
            .expect_err("cancelled by shutdown");
        assert!(refused(&err), "{err:?}");
        let task = h.connections.pop().expect("connection task");
        within(FIVE_S, "serve_connection returns", task)
            .await
            .expect("task");
    })
    .await;
}
