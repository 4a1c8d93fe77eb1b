//! Calls over a transport whose peer never reads: cancellation and
//! deadlines still end them promptly (catalogue 80, 87, 88).

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use drpc_conn::{CallOptions, Conn, ConnOptions};
use drpc_stream::Raw;
use tokio::io::DuplexStream;
use tokio_util::sync::CancellationToken;

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(5), fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// A connection whose peer holds the other end of a small pipe and never
/// reads or writes it.
fn stuck() -> (Conn, DuplexStream) {
    let (a, z) = tokio::io::duplex(1024);
    (Conn::new(a, ConnOptions::default()), z)
}

/// A stream send blocked on a transport whose writes block returns within
/// a second of the call being cancelled (catalogue 80).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_send_returns_after_cancel() {
    within("test", async {
        let (conn, _peer) = stuck();
        let token = CancellationToken::new();
        let opts = CallOptions::new().cancel_on(token.clone());
        let mut s = conn
            .stream_with::<Bytes, Bytes, _>(Raw, "/svc.S/Up", &opts)
            .await
            .expect("open");
        let chunk = Bytes::from(vec![0u8; 256 * 1024]);
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            token.cancel();
            Instant::now()
        });
        let err = loop {
            if let Err(e) = s.send(&chunk).await {
                break e;
            }
        };
        let cancelled_at = canceller.await.expect("canceller");
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(1),
            "send returned {:?} after the cancel",
            cancelled_at.elapsed()
        );
        assert!(!err.is_connection_lost(), "{err:?}");
        let err = s.recv().await.expect_err("recv after cancel");
        assert!(err.is_canceled(), "{err:?}");
    })
    .await;
}

/// A unary call whose request cannot be written, cancelled after the write
/// began, reports the cancellation, not an I/O error (catalogue 88); a
/// deadline likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_unary_reports_cancel_and_deadline() {
    within("test", async {
        let (conn, _peer) = stuck();
        let big = Bytes::from(vec![1u8; 3 << 20]);

        let token = CancellationToken::new();
        let opts = CallOptions::new().cancel_on(token.clone());
        let call = {
            let (conn, big) = (conn.clone(), big.clone());
            tokio::spawn(async move {
                conn.unary_with::<Bytes, Bytes, _>(&Raw, "/svc.S/M", &big, &opts)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        token.cancel();
        let err = within("cancelled call", call)
            .await
            .expect("task")
            .expect_err("cancelled");
        assert!(err.is_canceled(), "{err:?}");

        let start = Instant::now();
        let opts = CallOptions::new().timeout(Duration::from_millis(100));
        let err = conn
            .unary_with::<Bytes, Bytes, _>(&Raw, "/svc.S/M", &big, &opts)
            .await
            .expect_err("deadline");
        assert!(err.is_deadline_exceeded(), "{err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );

        // Closing the connection ends everything without hanging (87).
        let pending = {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.unary_with::<Bytes, Bytes, _>(
                    &Raw,
                    "/svc.S/M",
                    &Bytes::from("x"),
                    &CallOptions::new(),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        within("close", conn.close()).await;
        let err = within("pending call", pending)
            .await
            .expect("task")
            .expect_err("closed");
        assert!(err.is_connection_lost(), "{err:?}");
    })
    .await;
}

/// `CallOptions::timeout` with a huge duration ("no timeout, really")
/// must not panic.
#[test]
fn huge_timeout_does_not_panic() {
    let result = std::panic::catch_unwind(|| CallOptions::new().timeout(Duration::MAX));
    assert!(
        result.is_ok(),
        "CallOptions::timeout(Duration::MAX) panicked"
    );
}
