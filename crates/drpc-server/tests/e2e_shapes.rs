//! The four RPC shapes, metadata, handler errors, unknown RPCs and handler
//! panics, end to end over TCP, a Unix socket and an in-memory pipe.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use drpc_conn::{CallOptions, Code, Conn, Error};
use drpc_stream::Raw;

async fn unary(conn: &Conn, rpc: &str, req: &str) -> Result<Bytes, Error> {
    conn.unary_with(&Raw, rpc, &b(req), &CallOptions::new())
        .await
}

async fn all_shapes(transport: Transport) {
    let mut h = Harness::start(transport).await;
    let conn = h.connect().await;

    // Unary echo, including an empty message.
    assert_eq!(unary(&conn, ECHO, "hello").await.expect("echo"), "hello");
    assert_eq!(unary(&conn, ECHO, "").await.expect("empty echo"), "");

    // Client streaming: N sends, then close_and_recv gives the count.
    let mut cs = conn
        .stream_with::<Bytes, Bytes, _>(Raw, COUNT, &CallOptions::new())
        .await
        .expect("open client stream");
    for i in 0..7 {
        cs.send(&b(&format!("m{i}")))
            .await
            .expect("client stream send");
    }
    assert_eq!(cs.close_and_recv().await.expect("count"), "7");

    // Client streaming with no message at all.
    let mut cs = conn
        .stream_with::<Bytes, Bytes, _>(Raw, COUNT, &CallOptions::new())
        .await
        .expect("open client stream");
    assert_eq!(cs.close_and_recv().await.expect("count of none"), "0");

    // Server streaming: K messages, then Ok(None), then Ok(None) again.
    let mut ss = conn
        .server_streaming::<Bytes, Bytes, _>(Raw, REPEAT, &b("5"), &CallOptions::new())
        .await
        .expect("open server stream");
    for i in 0..5 {
        let msg = ss.recv().await.expect("server stream recv");
        assert_eq!(msg, Some(b(&i.to_string())));
    }
    assert_eq!(ss.recv().await.expect("end of server stream"), None);
    assert_eq!(ss.recv().await.expect("still the end"), None);

    // Bidi echo, sending and receiving concurrently through split().
    let bidi = conn
        .stream_with::<Bytes, Bytes, _>(Raw, BIDI, &CallOptions::new())
        .await
        .expect("open bidi");
    let (mut tx, mut rx) = bidi.split();
    const N: usize = 50;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            tx.send(&b(&format!("b{i}"))).await.expect("bidi send");
        }
        tx.close_send().expect("bidi close_send");
    });
    for i in 0..N {
        let msg = rx.recv().await.expect("bidi recv");
        assert_eq!(msg, Some(b(&format!("b{i}"))));
    }
    assert_eq!(rx.recv().await.expect("bidi end"), None);
    sender.await.expect("sender task");

    // Metadata reaches RequestContext::metadata(), without the reserved
    // deadline key.
    let opts = CallOptions::new()
        .metadata("alpha", "1")
        .metadata("beta", "two")
        .timeout(Duration::from_secs(10));
    let seen = conn
        .unary_with::<Bytes, Bytes, _>(&Raw, META, &Bytes::new(), &opts)
        .await
        .expect("meta");
    assert_eq!(seen, "alpha=1;beta=two");
    let seen = unary(&conn, META, "").await.expect("meta without metadata");
    assert_eq!(seen, "");

    // A handler error: code and message reach the client.
    let err = unary(&conn, FAIL, "x").await.expect_err("handler error");
    assert_eq!(err.code(), Some(Code::from(42)), "{err:?}");
    assert_eq!(err.remote_message(), Some("boom"), "{err:?}");
    assert!(!err.is_connection_lost());

    // An unknown RPC: code 12, a text naming the path; the connection goes on.
    let err = unary(&conn, "/test.Test/Nope", "x")
        .await
        .expect_err("unknown rpc");
    assert_eq!(err.code(), Some(Code::Unimplemented), "{err:?}");
    let msg = err.remote_message().expect("remote message");
    assert!(msg.contains("/test.Test/Nope"), "{msg}");
    assert_eq!(
        unary(&conn, ECHO, "after unknown").await.expect("echo"),
        "after unknown"
    );

    // An unknown streaming RPC fails on the first receive.
    let mut s = conn
        .stream_with::<Bytes, Bytes, _>(Raw, "/test.Test/NopeStream", &CallOptions::new())
        .await
        .expect("open unknown stream");
    let err = s.recv().await.expect_err("unknown streaming rpc");
    assert_eq!(err.code(), Some(Code::Unimplemented), "{err:?}");
    drop(s);

    // A panicking handler: code 13 to its client; a call in flight on the
    // same connection is unaffected, and later calls work.
    let blocked = {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &Bytes::new(), &CallOptions::new())
                .await
        })
    };
    h.probe
        .wait_for("block:start", Duration::from_secs(5))
        .await;
    let err = unary(&conn, PANIC, "x").await.expect_err("panic");
    assert_eq!(err.code(), Some(Code::Internal), "{err:?}");
    assert!(!err.is_connection_lost());
    for i in 0..3 {
        let msg = format!("after panic {i}");
        assert_eq!(
            unary(&conn, ECHO, &msg).await.expect("echo after panic"),
            msg
        );
    }
    assert!(
        !blocked.is_finished(),
        "the blocked call ended with the panic"
    );
    assert!(!h.probe.drain().contains(&"block:end".to_owned()));
    blocked.abort();
    h.probe.wait_for("block:end", Duration::from_secs(5)).await;

    // And a second connection to the same server works too.
    let conn2 = h.connect().await;
    assert_eq!(unary(&conn2, ECHO, "second").await.expect("echo"), "second");
    assert_eq!(unary(&conn, ECHO, "first").await.expect("echo"), "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_shapes_tcp() {
    within(
        TEST_LIMIT,
        "all shapes over TCP",
        all_shapes(Transport::Tcp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_shapes_unix() {
    within(
        TEST_LIMIT,
        "all shapes over Unix",
        all_shapes(Transport::Unix),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_shapes_duplex() {
    within(
        TEST_LIMIT,
        "all shapes over duplex",
        all_shapes(Transport::Duplex),
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn all_shapes_duplex_current_thread() {
    within(
        TEST_LIMIT,
        "all shapes over duplex, one thread",
        all_shapes(Transport::Duplex),
    )
    .await;
}

/// Bidi with 100 messages each way of varied sizes up to 128 KiB, sent and
/// received concurrently: every payload arrives intact (catalogue 86).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bidi_large_varied_payloads_intact() {
    within(TEST_LIMIT, "bidi payloads", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        let bidi = conn
            .stream_with::<Bytes, Bytes, _>(Raw, BIDI, &CallOptions::new())
            .await
            .expect("open bidi");
        let (mut tx, mut rx) = bidi.split();
        let payload = |i: usize| -> Bytes {
            let len = (i * 7919) % (128 * 1024 + 1);
            Bytes::from((0..len).map(|j| (i + j) as u8).collect::<Vec<u8>>())
        };
        let sender = tokio::spawn(async move {
            for i in 0..100 {
                tx.send(&payload(i)).await.expect("send");
            }
            tx.close_send().expect("close_send");
        });
        for i in 0..100 {
            let got = rx.recv().await.expect("recv").expect("a message");
            assert!(got == payload(i), "payload {i} differs");
        }
        assert_eq!(rx.recv().await.expect("end"), None);
        sender.await.expect("sender");
    })
    .await;
}

/// An unknown RPC always gives code 12, also under load: the server answers
/// at the Invoke, before reading the request, so its Error can overtake
/// the request. (A unary call used to report a bare `Eof` then, when its
/// request was sent after the Invoke and found the stream ended.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_rpc_never_reports_bare_eof() {
    within(TEST_LIMIT, "unknown rpc under load", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h.connect().await;
        let req = Bytes::from(vec![0u8; 64 * 1024]);
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let (conn, req) = (conn.clone(), req.clone());
                tokio::spawn(async move {
                    conn.unary_with::<Bytes, Bytes, _>(
                        &Raw,
                        "/test.Test/Nope",
                        &req,
                        &CallOptions::new(),
                    )
                    .await
                })
            })
            .collect();
        for call in calls {
            let err = call.await.expect("task").expect_err("unknown rpc");
            assert_eq!(err.code(), Some(Code::Unimplemented), "{err:?}");
        }
    })
    .await;
}
