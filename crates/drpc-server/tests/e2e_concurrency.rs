//! Many calls on one connection: multiplexed, and serialized in sequential
//! mode.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use drpc_conn::{CallOptions, ConnOptions};
use drpc_stream::Raw;

/// 1000 concurrent unary calls on one connection all succeed, and they run
/// at the same time: each handler sleeps 20 ms, so one after another they
/// would take 20 s.
async fn thousand_concurrent(transport: Transport) {
    let mut h = Harness::start(transport).await;
    let conn = h.connect().await;
    let start = Instant::now();
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let req = Bytes::from(format!("call {i}"));
                let resp: Bytes = conn
                    .unary_with(&Raw, SLOW_ECHO, &req, &CallOptions::new())
                    .await
                    .unwrap_or_else(|e| panic!("call {i} failed: {e:?}"));
                assert_eq!(resp, req, "call {i} got another call's answer");
            })
        })
        .collect();
    for call in calls {
        call.await.expect("call task");
    }
    let took = start.elapsed();
    assert_eq!(h.stats.calls.load(Ordering::SeqCst), 1000);
    let max = h.stats.max_in_flight.load(Ordering::SeqCst);
    assert!(max >= 50, "at most {max} calls ran at once");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(conn.manager().active_streams(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_unary_calls_tcp() {
    within(
        TEST_LIMIT,
        "1000 calls",
        thousand_concurrent(Transport::Tcp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_unary_calls_duplex() {
    within(
        TEST_LIMIT,
        "1000 calls",
        thousand_concurrent(Transport::Duplex),
    )
    .await;
}

/// In sequential mode the same burst is served one call at a time, and all
/// succeed.
async fn hundred_sequential(transport: Transport) {
    let mut h = Harness::start(transport).await;
    let conn = h.connect_with(ConnOptions::sequential()).await;
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let req = Bytes::from(format!("seq {i}"));
                let resp: Bytes = conn
                    .unary_with(&Raw, SLOW_ECHO, &req, &CallOptions::new())
                    .await
                    .unwrap_or_else(|e| panic!("call {i} failed: {e:?}"));
                assert_eq!(resp, req);
            })
        })
        .collect();
    for call in calls {
        call.await.expect("call task");
    }
    assert_eq!(h.stats.calls.load(Ordering::SeqCst), 100);
    assert_eq!(
        h.stats.max_in_flight.load(Ordering::SeqCst),
        1,
        "calls overlapped"
    );
    assert!(conn.manager().is_unblocked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_sequential_calls_tcp() {
    within(
        TEST_LIMIT,
        "100 sequential",
        hundred_sequential(Transport::Tcp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_sequential_calls_unix() {
    within(
        TEST_LIMIT,
        "100 sequential",
        hundred_sequential(Transport::Unix),
    )
    .await;
}

/// Sequential mode survives a mix of shapes, errors and cancellations: each
/// call waits for the previous stream to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequential_mixed_calls() {
    within(TEST_LIMIT, "sequential mix", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h.connect_with(ConnOptions::sequential()).await;
        for round in 0..5 {
            let got: Bytes = conn
                .unary_with(&Raw, ECHO, &b("e"), &CallOptions::new())
                .await
                .expect("echo");
            assert_eq!(got, "e");
            let err = conn
                .unary_with::<Bytes, Bytes, _>(&Raw, FAIL, &b("f"), &CallOptions::new())
                .await
                .expect_err("fail");
            assert_eq!(err.code(), Some(drpc_conn::Code::from(42)));
            let mut s = conn
                .server_streaming::<Bytes, Bytes, _>(Raw, REPEAT, &b("3"), &CallOptions::new())
                .await
                .expect("repeat");
            for i in 0..3 {
                assert_eq!(s.recv().await.expect("recv"), Some(b(&i.to_string())));
            }
            assert_eq!(s.recv().await.expect("end"), None);
            drop(s);
            let err = conn
                .unary_with::<Bytes, Bytes, _>(
                    &Raw,
                    BLOCK,
                    &b("b"),
                    &CallOptions::new().timeout(Duration::from_millis(30)),
                )
                .await
                .expect_err("timeout");
            assert!(is_deadline(&err), "round {round}: {err:?}");
        }
        let got: Bytes = conn
            .unary_with(&Raw, ECHO, &b("last"), &CallOptions::new())
            .await
            .expect("echo");
        assert_eq!(got, "last");
    })
    .await;
}
