//! Client streams with the `futures` combinators: receive halves are
//! `Stream`s, send halves `Sink`s; dropping a sender ends the request side
//! (CloseSend) and the call completes. Against a real server over
//! loopback TCP.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use drpc_conn::{CallOptions, Code, Conn, ConnOptions, Error, Raw, Status};
use drpc_mux::{Mux, RequestContext, ServerReceiver, ServerSender};
use drpc_server::Server;
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};

const FIVE_S: Duration = Duration::from_secs(5);

const COUNT: &str = "/t.T/Count";
const SUM: &str = "/t.T/Sum";
const ECHO: &str = "/t.T/Echo";

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(FIVE_S, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn b(s: impl Into<String>) -> Bytes {
    Bytes::from(s.into())
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `Count`: the request `n` answers `0`..`n`, then fails with NotFound when
/// `n` is negative. `Sum`: the count and total bytes of the requests.
/// `Echo`: echoes every request until the client's CloseSend, then one
/// last message `end`.
fn mux() -> Mux {
    let mut mux = Mux::new();
    mux.server_streaming(
        COUNT,
        Raw,
        |_ctx: RequestContext, req: Bytes, mut tx: ServerSender<Bytes, Raw>| async move {
            let n: i64 = text(&req)
                .parse()
                .map_err(|_| Status::invalid_argument("n"))?;
            for i in 0..n.abs() {
                tx.send(&b(i.to_string())).await?;
            }
            if n < 0 {
                return Err(Status::not_found("no more"));
            }
            Ok(())
        },
    );
    mux.client_streaming(
        SUM,
        Raw,
        |_ctx: RequestContext, mut rx: ServerReceiver<Bytes, Raw>| async move {
            let (mut count, mut bytes) = (0, 0);
            while let Some(msg) = rx.recv().await? {
                count += 1;
                bytes += msg.len();
            }
            Ok::<_, Status>(b(format!("{count} {bytes}")))
        },
    );
    mux.bidi(
        ECHO,
        Raw,
        |_ctx: RequestContext,
         mut rx: ServerReceiver<Bytes, Raw>,
         mut tx: ServerSender<Bytes, Raw>| async move {
            while let Some(msg) = rx.recv().await? {
                tx.send(&msg).await?;
            }
            tx.send(&b("end")).await?;
            Ok(())
        },
    );
    mux
}

async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Server::new(mux());
    tokio::spawn(async move { server.serve_tcp(listener).await });
    addr
}

async fn connect() -> Conn {
    Conn::connect_tcp(serve().await, ConnOptions::default())
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_is_a_stream() {
    within("test", async {
        let conn = connect().await;

        // map + collect on a ClientReceiver.
        let stream = conn
            .server_streaming::<Bytes, Bytes, _>(Raw, COUNT, &b("5"), &CallOptions::new())
            .await
            .expect("open");
        let (_tx, rx) = stream.split();
        let got: Vec<String> = rx
            .map(|r| r.map(|m| text(&m)))
            .try_collect()
            .await
            .expect("responses");
        assert_eq!(got, ["0", "1", "2", "3", "4"]);

        // The error is the last item, then the stream ends.
        let stream = conn
            .server_streaming::<Bytes, Bytes, _>(Raw, COUNT, &b("-2"), &CallOptions::new())
            .await
            .expect("open");
        let items: Vec<Result<Bytes, Error>> = stream.collect().await;
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(items[0].as_ref().expect("first"), "0");
        assert_eq!(items[1].as_ref().expect("second"), "1");
        let err = items[2].as_ref().expect_err("the error");
        assert_eq!(err.code(), Some(Code::NotFound));

        // A ClientStream is a Stream too; next() after the end stays None.
        let mut stream = conn
            .server_streaming::<Bytes, Bytes, _>(Raw, COUNT, &b("1"), &CallOptions::new())
            .await
            .expect("open");
        assert_eq!(stream.next().await.expect("one").expect("ok"), "0");
        assert!(stream.next().await.is_none());
        assert!(stream.next().await.is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_is_a_sink() {
    within("test", async {
        let conn = connect().await;

        // send_all of many small requests, then close: they arrive in
        // order and complete (batched as the sink flushes).
        let (mut tx, mut rx) = conn
            .stream_with::<Bytes, Bytes, _>(Raw, SUM, &CallOptions::new())
            .await
            .expect("open")
            .split();
        let mut msgs = stream::iter((0..1000).map(|i| Ok::<_, Error>(b(format!("{i:04}")))));
        SinkExt::send_all(&mut tx, &mut msgs)
            .await
            .expect("send_all");
        tx.close().await.expect("close");
        assert_eq!(
            rx.recv().await.expect("sum").expect("a response"),
            "1000 4000"
        );

        // SinkExt::send on a ClientStream, mixed with the inherent send
        // (order kept), and large messages past the batch.
        let mut stream = conn
            .stream_with::<Bytes, Bytes, _>(Raw, ECHO, &CallOptions::new())
            .await
            .expect("open");
        SinkExt::send(&mut stream, b("a")).await.expect("send a");
        stream
            .feed(Bytes::from(vec![b'x'; 100_000]))
            .await
            .expect("feed large");
        stream.feed(b("b")).await.expect("feed b");
        drpc_conn::ClientStream::send(&mut stream, &b("c"))
            .await
            .expect("inherent send flushes the sink first");
        SinkExt::close(&mut stream).await.expect("close");
        let got: Vec<usize> = (&mut stream)
            .map_ok(|m| m.len())
            .try_collect()
            .await
            .expect("echoes");
        assert_eq!(got, [1, 100_000, 1, 1, 3]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_refuses_a_message_over_the_limit_and_goes_on() {
    within("test", async {
        let mut opts = ConnOptions::default();
        opts.manager.stream.max_packet_size = 1024;
        let conn = Conn::connect_tcp(serve().await, opts)
            .await
            .expect("connect");
        let (mut tx, rx) = conn
            .stream_with::<Bytes, Bytes, _>(Raw, ECHO, &CallOptions::new())
            .await
            .expect("open")
            .split();
        tx.feed(b("1")).await.expect("feed");
        let err = tx
            .feed(Bytes::from(vec![0u8; 2048]))
            .await
            .expect_err("too large");
        assert!(err.is_too_large(), "{err:?}");
        assert_eq!(err.stream_id(), Some(tx.id()));
        tx.feed(b("2")).await.expect("feed after");
        tx.close().await.expect("close");
        let got: Vec<Bytes> = rx.try_collect().await.expect("echoes");
        assert_eq!(got, [b("1"), b("2"), b("end")]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_sender_ends_the_request_side() {
    within("test", async {
        let conn = connect().await;

        // Bidi: the server echoes until CloseSend; dropping the sender
        // (no close_send) sends it, and the call ends cleanly.
        let (mut tx, rx) = conn
            .stream_with::<Bytes, Bytes, _>(Raw, ECHO, &CallOptions::new())
            .await
            .expect("open")
            .split();
        tx.send(&b("hi")).await.expect("send");
        drop(tx);
        let got: Vec<Bytes> = rx.try_collect().await.expect("a clean end");
        assert_eq!(got, [b("hi"), b("end")]);

        // Client streaming: the response comes once the sender is gone.
        let (mut tx, mut rx) = conn
            .stream_with::<Bytes, Bytes, _>(Raw, SUM, &CallOptions::new())
            .await
            .expect("open")
            .split();
        SinkExt::send(&mut tx, b("abc")).await.expect("send");
        drop(tx);
        assert_eq!(rx.recv().await.expect("sum").expect("a response"), "1 3");
        assert_eq!(rx.recv().await.expect("end"), None);

        // Dropping a sender after close_send is harmless.
        let (tx, rx) = conn
            .stream_with::<Bytes, Bytes, _>(Raw, ECHO, &CallOptions::new())
            .await
            .expect("open")
            .split();
        tx.close_send().expect("close_send");
        drop(tx);
        let got: Vec<Bytes> = rx.try_collect().await.expect("a clean end");
        assert_eq!(got, [b("end")]);

        // The connection is fine for more calls.
        let reply = conn
            .server_streaming::<Bytes, Bytes, _>(Raw, COUNT, &b("2"), &CallOptions::new())
            .await
            .expect("open")
            .try_collect::<Vec<_>>()
            .await
            .expect("responses");
        assert_eq!(reply.len(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_sender_dropped_with_unsent_requests_cancels_instead_of_ending_cleanly() {
    within("test", async {
        let conn = connect().await;
        let (mut tx, mut rx) = conn
            .stream_with::<Bytes, Bytes, _>(Raw, SUM, &CallOptions::new())
            .await
            .expect("open")
            .split();
        // Kept by the Sink, never flushed: the server must not count a
        // cut-off upload as a whole one.
        SinkExt::feed(&mut tx, b("lost")).await.expect("feed");
        drop(tx);
        let err = rx.recv().await.expect_err("cancelled");
        assert!(err.is_canceled(), "{err}");
    })
    .await;
}

#[tokio::test]
async fn close_and_recv_sends_what_the_sink_holds_first() {
    within("test", async {
        let conn = connect().await;
        let mut call = conn
            .stream_with::<Bytes, Bytes, _>(Raw, SUM, &CallOptions::new())
            .await
            .expect("open");
        SinkExt::feed(&mut call, b("ab")).await.expect("feed");
        SinkExt::feed(&mut call, b("cde")).await.expect("feed");
        assert_eq!(call.close_and_recv().await.expect("sum"), "2 5");
    })
    .await;
}
