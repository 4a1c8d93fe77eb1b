//! gRPC-compatible results of streams that end early (catalogue 82-85,
//! 95-98): what Recv and Send return after a server error, a client
//! cancel, or both.

mod common;

use bytes::Bytes;
use common::*;
use drpc_conn::{CallOptions, ClientStream, Conn, Error};
use drpc_stream::{Raw, StreamErrorKind};

/// Go's `io.EOF` from Send.
fn is_eof(err: &Error) -> bool {
    matches!(err, Error::Stream(e) if matches!(e.kind(), StreamErrorKind::Eof))
}

async fn open(conn: &Conn, rpc: &str) -> ClientStream<Bytes, Bytes, Raw> {
    conn.stream_with::<Bytes, Bytes, _>(Raw, rpc, &CallOptions::new())
        .await
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_right_after_open() {
    within(TEST_LIMIT, "95", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h.connect().await;
        let mut s = open(&conn, BIDI).await;
        s.cancel();
        let err = s.recv().await.expect_err("recv after cancel");
        assert!(err.is_canceled(), "{err:?}");
        let err = s.send(&b("x")).await.expect_err("send after cancel");
        assert!(is_eof(&err), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_error_at_once_then_cancel() {
    within(TEST_LIMIT, "96/98", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h.connect().await;
        let mut s = open(&conn, MARKER).await;
        let err = s.recv().await.expect_err("marker");
        assert_eq!(err.remote_message(), Some("marker"), "{err:?}");
        let err = s
            .send(&b("x"))
            .await
            .expect_err("send after the server's error");
        assert!(is_eof(&err), "{err:?}");
        s.cancel();
        let err = s.recv().await.expect_err("marker again");
        assert_eq!(err.remote_message(), Some("marker"), "{err:?}");
        let err = s.send(&b("x")).await.expect_err("send after cancel");
        assert!(is_eof(&err), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_sends_then_waits_then_cancel() {
    within(TEST_LIMIT, "97", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h.connect().await;
        let mut s = open(&conn, OUT2).await;
        assert_eq!(s.recv().await.expect("out(2)"), Some(b("2")));
        s.send(&b("x")).await.expect("send while the server waits");
        s.cancel();
        let err = s.recv().await.expect_err("recv after cancel");
        assert!(err.is_canceled(), "{err:?}");
        let err = s.send(&b("x")).await.expect_err("send after cancel");
        assert!(is_eof(&err), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn error_codes_and_texts_arrive_unchanged() {
    within(TEST_LIMIT, "82/83/85", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        for n in 2..20u64 {
            let err = conn
                .unary_with::<Bytes, Bytes, _>(&Raw, CODE, &b(&n.to_string()), &CallOptions::new())
                .await
                .expect_err("coded error");
            assert_eq!(err.code(), Some(drpc_conn::Code::from(n)));
            assert_eq!(err.remote_message(), Some(format!("code {n}").as_str()));
        }
        for text in [
            "context canceled",
            "context deadline exceeded",
            "ünïcode: ✓",
            "",
        ] {
            let err = conn
                .unary_with::<Bytes, Bytes, _>(&Raw, FAIL_WITH, &b(text), &CallOptions::new())
                .await
                .expect_err("error");
            assert_eq!(err.remote_message(), Some(text), "{err:?}");
            assert_eq!(err.code(), None);
            // A server's "context canceled" is its error, not a local cancel.
            assert!(!err.is_canceled());
        }
    })
    .await;
}
