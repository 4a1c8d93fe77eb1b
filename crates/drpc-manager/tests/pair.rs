//! A client manager and a server manager over one duplex, the server
//! echoing every message of every stream (multiplexing.md §4–§6;
//! semantics.md §13 items 76, 78, 86, 87, 89).

mod support;

use std::sync::Arc;
use std::time::Duration;

use drpc_manager::{Manager, ManagerOptions};
use drpc_stream::{ConnectionError, Initiator, Stream, StreamErrorKind};
use support::{
    Served, assert_connection_lost, bounded, eventually, kind_of, next_served, pair, pattern,
    spawn_echo, step,
};

const RPC: &str = "/service.Service/Echo";

/// Sends `messages` on `call` while receiving the echoes concurrently, then
/// half-closes; checks that exactly the same messages come back, then the
/// clean end.
async fn echo_round(call: &Stream, messages: &[Vec<u8>]) {
    let send = async {
        for m in messages {
            call.send(m).await.expect("send");
        }
        call.close_send().expect("close_send");
    };
    let recv = async {
        for (i, want) in messages.iter().enumerate() {
            let got = call
                .recv()
                .await
                .unwrap_or_else(|e| panic!("stream {} message {i}: {e}", call.id()))
                .unwrap_or_else(|| panic!("stream {} ended before message {i}", call.id()));
            assert_eq!(got.len(), want.len(), "stream {} message {i}", call.id());
            assert!(
                got[..] == want[..],
                "stream {} message {i}: content differs",
                call.id()
            );
        }
        assert_eq!(call.recv().await.expect("clean end"), None);
    };
    tokio::join!(send, recv);
    assert!(call.is_terminated());
}

/// The sizes of the messages of stream number `n`: mixed, from empty to
/// several frames, and 3 MiB for every tenth stream.
fn sizes(n: u64) -> Vec<usize> {
    let mut out = vec![0, 1 + n as usize, 1000 + 37 * n as usize, 70_000];
    if n.is_multiple_of(10) {
        out.push(3 << 20);
    }
    if n.is_multiple_of(3) {
        out.push(200_000 + n as usize);
    }
    out
}

fn messages(n: u64) -> Vec<Vec<u8>> {
    sizes(n)
        .into_iter()
        .enumerate()
        .map(|(i, len)| pattern(n, i, len))
        .collect()
}

/// 100 concurrent streams with messages up to 3 MiB (their frames
/// interleave on the wire) each get back exactly what they sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_streams_echo_intact() {
    bounded(async {
        let (client, server) = pair(ManagerOptions::default());
        let (accept_loop, mut served) = spawn_echo(server.clone());

        let mut calls = Vec::new();
        for n in 0..100u64 {
            let client = client.clone();
            calls.push(tokio::spawn(async move {
                let call = client
                    .open_stream(RPC, &Default::default())
                    .await
                    .expect("open");
                echo_round(&call, &messages(n)).await;
                call.id()
            }));
        }
        let mut ids = Vec::new();
        for call in calls {
            ids.push(call.await.expect("call task"));
        }
        ids.sort_unstable();
        assert_eq!(ids, (1..=100).collect::<Vec<u64>>());

        let mut reports: Vec<Served> = Vec::new();
        for _ in 0..100 {
            reports.push(next_served(&mut served).await);
        }
        reports.sort_by_key(|r| r.id);
        for (r, id) in reports.iter().zip(1..) {
            assert_eq!(r.id, id);
            assert_eq!(r.rpc, RPC);
            assert!(r.error.is_none(), "stream {id}: {:?}", r.error);
        }
        let echoed: usize = reports.iter().map(|r| r.echoed).sum();
        let sent: usize = (0..100).map(|n| sizes(n).len()).sum();
        assert_eq!(echoed, sent);

        eventually("client streams gone", || client.active_streams() == 0).await;
        eventually("server streams gone", || server.active_streams() == 0).await;
        assert!(client.termination().is_none() && server.termination().is_none());
        step("close", client.close()).await;
        assert!(matches!(
            step("accept loop", accept_loop).await.expect("task"),
            ConnectionError::Eof
        ));
    })
    .await
}

/// Cancelling one stream while a large message of it is queued, in the
/// middle of its sequence, ends only that stream: the server sees a remote
/// cancellation, the other streams finish intact, and a new stream works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_one_stream_leaves_the_others_untouched() {
    bounded(async {
        let (client, server) = pair(ManagerOptions::default());
        let (_accept_loop, mut served) = spawn_echo(server.clone());

        // The bystanders, running while the victim is cancelled.
        let mut bystanders = Vec::new();
        for n in 0..10u64 {
            let client = client.clone();
            bystanders.push(tokio::spawn(async move {
                let call = client
                    .open_stream(RPC, &Default::default())
                    .await
                    .expect("open");
                let msgs: Vec<Vec<u8>> = (0..8).map(|i| pattern(n, i, 20_000 * i + 1)).collect();
                for (i, m) in msgs.iter().enumerate() {
                    call.send(m).await.expect("send");
                    let got = call.recv().await.expect("recv").expect("echo");
                    assert!(got[..] == m[..], "bystander {n} message {i}");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                call.close_send().expect("close_send");
                assert_eq!(call.recv().await.expect("end"), None);
                call.id()
            }));
        }

        let victim = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        let first = pattern(99, 0, 1000);
        victim.send(&first).await.expect("send");
        assert_eq!(
            victim.recv().await.expect("recv").as_deref(),
            Some(&first[..])
        );
        // A 3 MiB message, queued in the writer (above its high-water
        // mark), then the cancel while it is being written.
        victim.send(&pattern(99, 1, 3 << 20)).await.expect("queued");
        victim.cancel(StreamErrorKind::Canceled(Initiator::Local));
        assert!(matches!(
            kind_of(victim.recv().await),
            StreamErrorKind::Canceled(Initiator::Local)
        ));
        let send = victim.send(b"after").await.expect_err("send after cancel");
        assert!(matches!(send.kind(), StreamErrorKind::Eof), "{send:?}");
        assert!(victim.check_cancel(send).is_canceled());
        let victim_id = victim.id();
        drop(victim);

        let mut ids = Vec::new();
        for b in bystanders {
            ids.push(step("bystander", b).await.expect("bystander task"));
        }
        let mut victim_report = None;
        for _ in 0..11 {
            let r = next_served(&mut served).await;
            if r.id == victim_id {
                victim_report = Some(r);
            } else {
                assert!(ids.contains(&r.id));
                assert!(r.error.is_none(), "bystander {}: {:?}", r.id, r.error);
                assert_eq!(r.echoed, 8);
            }
        }
        let victim_report = victim_report.expect("victim reported");
        assert!(
            matches!(
                victim_report.error,
                Some(StreamErrorKind::Canceled(Initiator::Remote))
            ),
            "{victim_report:?}"
        );
        // The first message, and possibly the large one, were echoed.
        assert!((1..=2).contains(&victim_report.echoed));

        assert!(client.termination().is_none() && server.termination().is_none());
        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open after cancel");
        echo_round(&call, &[b"still".to_vec(), pattern(7, 1, 100_000)]).await;
        eventually("client streams gone", || client.active_streams() == 0).await;
        eventually("server streams gone", || server.active_streams() == 0).await;
    })
    .await
}

/// A server at its stream limit refuses the extra stream with an Error
/// the client reports as a remote error; the connection and the first
/// stream go on, and once it ends a new stream is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refusal_reaches_the_client() {
    bounded(async {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let client = Manager::new(a, drpc_manager::Role::Client, ManagerOptions::default());
        let server = Manager::new(
            b,
            drpc_manager::Role::Server,
            ManagerOptions {
                max_concurrent_streams: 1,
                ..ManagerOptions::default()
            },
        );
        let (_accept_loop, mut served) = spawn_echo(server.clone());
        let first = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        first.send(b"one").await.expect("send");
        assert_eq!(
            step("echo", first.recv()).await.expect("recv").as_deref(),
            Some(&b"one"[..])
        );

        let second = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        // The refusal may come back before the send: the send then fails
        // as any send after a remote Error does.
        if let Err(e) = second.send(b"two").await {
            assert!(matches!(e.kind(), StreamErrorKind::Eof), "{e:?}");
        }
        let err = step("recv", second.recv()).await.expect_err("refused");
        assert!(err.connection_survives());
        assert_eq!(err.code(), None);
        assert_eq!(
            err.to_string(),
            "too many concurrent streams: refused: at most 1 concurrent streams"
        );
        assert!(matches!(err.kind(), StreamErrorKind::Remote(_)), "{err:?}");

        echo_round(&first, &[b"still".to_vec()]).await;
        assert!(next_served(&mut served).await.error.is_none());
        eventually("server stream gone", || server.active_streams() == 0).await;
        let third = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        echo_round(&third, &[b"three".to_vec()]).await;
        assert!(client.termination().is_none() && server.termination().is_none());
    })
    .await
}

/// Opens `n` streams that each exchanged one message and stay open.
async fn open_idle_streams(client: &Manager, server: &Manager, n: usize) -> Vec<Stream> {
    let mut calls = Vec::new();
    for i in 0..n {
        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        let m = pattern(i as u64, 0, 10 + i);
        call.send(&m).await.expect("send");
        assert_eq!(
            step("echo", call.recv()).await.expect("recv").as_deref(),
            Some(&m[..])
        );
        calls.push(call);
    }
    assert_eq!(client.active_streams(), n);
    eventually("server streams open", || server.active_streams() == n).await;
    calls
}

/// `Manager::close` on the client ends every in-flight stream: the client
/// sees ConnectionLost(Closed), the server a remote cancellation; both
/// registries are empty, `accept` fails, and `close` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_every_stream_on_both_sides() {
    bounded(async {
        let (client, server) = pair(ManagerOptions::default());
        let (accept_loop, mut served) = spawn_echo(server.clone());
        let calls = open_idle_streams(&client, &server, 10).await;

        step("client close", client.close()).await;
        assert_eq!(client.active_streams(), 0);
        assert!(matches!(
            client.termination(),
            Some(ConnectionError::Closed)
        ));
        for call in &calls {
            let err = kind_of(step("recv", call.recv()).await);
            assert_connection_lost(&err, &ConnectionError::Closed);
            assert_eq!(err.to_string(), "manager closed: Close called");
            assert!(call.is_terminated());
        }
        for _ in 0..10 {
            let r = next_served(&mut served).await;
            assert!(
                matches!(r.error, Some(StreamErrorKind::Canceled(Initiator::Remote))),
                "server stream {}: {:?}",
                r.id,
                r.error
            );
        }
        assert!(matches!(
            step("server closed", server.closed()).await,
            ConnectionError::Eof
        ));
        assert_eq!(server.active_streams(), 0);
        assert!(matches!(
            step("accept loop", accept_loop).await.expect("task"),
            ConnectionError::Eof
        ));
        assert!(server.accept().await.is_err());
        assert!(matches!(
            client.accept().await,
            Err(ConnectionError::Closed)
        ));
        let open = client
            .open_stream(RPC, &Default::default())
            .await
            .expect_err("closed");
        assert_eq!(open.stream_id(), 0);
        assert_connection_lost(open.kind(), &ConnectionError::Closed);
        step("server close", server.close()).await;
        // Closing again returns at once.
        step("close again", client.close()).await;
    })
    .await
}

/// Closing the server manager: its own streams see ConnectionLost(Closed),
/// the client's see ConnectionLost(Eof).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_close_fails_client_streams_with_eof() {
    bounded(async {
        let (client, server) = pair(ManagerOptions::default());
        let (accept_loop, mut served) = spawn_echo(server.clone());
        let calls = open_idle_streams(&client, &server, 3).await;
        step("server close", server.close()).await;
        for _ in 0..3 {
            let r = next_served(&mut served).await;
            match &r.error {
                Some(e) => assert_connection_lost(e, &ConnectionError::Closed),
                None => panic!("server stream {} ended cleanly", r.id),
            }
        }
        for call in &calls {
            let err = kind_of(step("recv", call.recv()).await);
            assert_connection_lost(&err, &ConnectionError::Eof);
        }
        assert!(matches!(
            step("accept loop", accept_loop).await.expect("task"),
            ConnectionError::Closed
        ));
        eventually("client registry empty", || client.active_streams() == 0).await;
    })
    .await
}

/// Dropping the last `Manager` clone terminates the connection (and only
/// the last one does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_manager_terminates() {
    bounded(async {
        let (client, server) = pair(ManagerOptions::default());
        let (accept_loop, mut served) = spawn_echo(server.clone());
        let calls = open_idle_streams(&client, &server, 2).await;
        let clone = client.clone();
        drop(client);
        // Still alive through the clone.
        let m = b"after first drop".to_vec();
        calls[0].send(&m).await.expect("send");
        assert_eq!(
            step("echo", calls[0].recv())
                .await
                .expect("recv")
                .as_deref(),
            Some(&m[..])
        );
        assert!(clone.termination().is_none());

        // Open streams keep the connection open without any handle...
        drop(clone);
        let m = b"after last drop".to_vec();
        calls[1].send(&m).await.expect("send");
        assert_eq!(
            step("echo", calls[1].recv())
                .await
                .expect("recv")
                .as_deref(),
            Some(&m[..])
        );
        // ...and the connection ends once they are gone too.
        drop(calls);
        assert!(matches!(
            step("server closed", server.closed()).await,
            ConnectionError::Eof
        ));
        for _ in 0..2 {
            let r = next_served(&mut served).await;
            assert!(
                matches!(r.error, Some(StreamErrorKind::Canceled(Initiator::Remote))),
                "{r:?}"
            );
        }
        assert!(matches!(
            step("accept loop", accept_loop).await.expect("task"),
            ConnectionError::Eof
        ));
    })
    .await
}

/// A unary call cancelled right after its send: the receive reports the
/// cancellation, never a clean end; the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_cancelled_immediately_reports_canceled() {
    bounded(async {
        let (client, server) = pair(ManagerOptions::default());
        let (_accept_loop, mut served) = spawn_echo(server.clone());
        for i in 0..50u64 {
            let call = client
                .open_stream(RPC, &Default::default())
                .await
                .expect("open");
            call.send(&pattern(i, 0, 100)).await.expect("send");
            call.close_send().expect("close_send");
            call.cancel(StreamErrorKind::Canceled(Initiator::Local));
            let err = kind_of(call.recv().await);
            assert!(
                matches!(err, StreamErrorKind::Canceled(Initiator::Local)),
                "call {i}: {err:?}"
            );
            // A send racing the cancellation: EOF, which check_cancel turns
            // into the cancellation (multiplexing.md §5.2).
            let send = call.send(b"x").await.expect_err("cancelled");
            assert!(matches!(
                call.check_cancel(send).kind(),
                StreamErrorKind::Canceled(Initiator::Local)
            ));
        }
        // The server saw each stream either complete (the Cancel arrived
        // after it answered) or cancelled by the peer, never anything else.
        for _ in 0..50 {
            let r = next_served(&mut served).await;
            match &r.error {
                None => assert_eq!(r.echoed, 1),
                Some(StreamErrorKind::Canceled(Initiator::Remote)) => {}
                Some(e) => panic!("server stream {}: {e:?}", r.id),
            }
        }
        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        echo_round(&call, &[b"alive".to_vec()]).await;
        assert!(client.termination().is_none() && server.termination().is_none());
    })
    .await
}

/// A unary call racing a cancel from another task: it either completes
/// (echo, then the clean end) or reports the cancellation; a clean end
/// without the reply never happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unary_racing_its_cancellation_never_ends_cleanly_without_reply() {
    bounded(async {
        let (client, server) = pair(ManagerOptions::default());
        let (_accept_loop, _served) = spawn_echo(server.clone());
        let (mut completed, mut canceled) = (0, 0);
        for i in 0..200u64 {
            let call = Arc::new(
                client
                    .open_stream(RPC, &Default::default())
                    .await
                    .expect("open"),
            );
            let canceller = {
                let call = call.clone();
                tokio::spawn(async move {
                    for _ in 0..(i % 7) {
                        tokio::task::yield_now().await;
                    }
                    call.cancel(StreamErrorKind::Canceled(Initiator::Local));
                })
            };
            let m = pattern(i, 0, 64);
            let outcome = async {
                call.send(&m).await.map_err(|e| call.check_cancel(e))?;
                call.close_send().map_err(|e| call.check_cancel(e))?;
                let reply = call.recv().await?;
                let end = call.recv().await?;
                Ok::<_, drpc_stream::StreamError>((reply, end))
            }
            .await;
            match outcome {
                Ok((Some(reply), None)) => {
                    assert_eq!(&reply[..], &m[..]);
                    completed += 1;
                }
                Ok(other) => panic!("call {i}: unexpected {other:?}"),
                Err(e) => {
                    assert!(
                        matches!(e.kind(), StreamErrorKind::Canceled(Initiator::Local)),
                        "call {i}: {e:?}"
                    );
                    canceled += 1;
                }
            }
            step("canceller", canceller).await.expect("task");
        }
        assert_eq!(completed + canceled, 200);
        assert!(client.termination().is_none() && server.termination().is_none());
        eventually("client streams gone", || client.active_streams() == 0).await;
        eventually("server streams gone", || server.active_streams() == 0).await;
    })
    .await
}

/// Whichever of the reader (end of file) or the writer (broken pipe)
/// notices first that the client went away, a server's stream sees a
/// cancellation by the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_while_the_server_writes_cancels_the_server_stream() {
    bounded(async {
        for round in 0..20 {
            let (client, server) = pair(ManagerOptions::default());
            let call = client
                .open_stream(RPC, &Default::default())
                .await
                .expect("open");
            call.send(b"go").await.expect("send");
            let incoming = server.accept().await.expect("accept");
            let writer = tokio::spawn(async move {
                let stream = incoming.stream;
                while stream.send(&[1; 100_000]).await.is_ok() {}
                loop {
                    match stream.recv().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => return None,
                        Err(e) => return Some(e.into_kind()),
                    }
                }
            });
            call.recv().await.expect("a message").expect("not the end");
            client.close().await;
            let seen = step("server stream end", writer).await.expect("join");
            assert!(
                matches!(seen, Some(StreamErrorKind::Canceled(Initiator::Remote))),
                "round {round}: {seen:?}"
            );
        }
    })
    .await
}

/// A server made with `with_acceptor` hands each stream to its callback on
/// the reader task, with its rpc and metadata; `accept` then only reports
/// the connection's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptor_callback_serves_every_stream() {
    bounded(async {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let client = Manager::new(a, drpc_manager::Role::Client, ManagerOptions::default());
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let server = Manager::with_acceptor(b, ManagerOptions::default(), move |incoming| {
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let drpc_manager::Incoming {
                    stream,
                    rpc,
                    metadata,
                } = incoming;
                let request = stream.recv().await.expect("recv").expect("a request");
                stream.send(&request).await.expect("send");
                stream.close().expect("close");
                let _ = seen.send((rpc, metadata.get("k").cloned()));
            });
        });
        let mut md = drpc_wire::Metadata::new();
        md.insert("k".into(), "v".into());
        for i in 0..20u8 {
            let call = client
                .open_unary(RPC, &md, bytes::Bytes::from(vec![i; 10 + usize::from(i)]))
                .await
                .expect("open");
            let echoed = step("response", call.recv()).await.expect("recv");
            assert_eq!(echoed.as_deref(), Some(&vec![i; 10 + usize::from(i)][..]));
            let (rpc, value) = step("served", seen_rx.recv()).await.expect("served");
            assert_eq!(rpc, RPC);
            assert_eq!(value.as_deref(), Some("v"));
        }
        let accept = tokio::spawn({
            let server = server.clone();
            async move { server.accept().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!accept.is_finished(), "accept waits for the end");
        client.close().await;
        let ended = step("accept", accept).await.expect("task");
        assert!(ended.is_err());
        server.close().await;
    })
    .await;
}

/// A transport that never runs dry: one unary call's frames, then frames
/// of an unknown stream without end (the reader drops them), never
/// pending.
struct Flood {
    head: bytes::Bytes,
    filler: bytes::Bytes,
    at: usize,
}

impl tokio::io::AsyncRead for Flood {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while buf.remaining() > 0 {
            let source = if self.at < self.head.len() {
                self.head.slice(self.at..)
            } else {
                let at = (self.at - self.head.len()) % self.filler.len();
                self.filler.slice(at..)
            };
            let n = source.len().min(buf.remaining());
            buf.put_slice(&source[..n]);
            self.at += n;
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Flood {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The acceptor callback gets a stream once the frames after its own
/// come, even from a transport that is never empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_transport_does_not_hold_back_new_streams() {
    use drpc_wire::{Id, Kind, append_frame};
    bounded(async {
        let mut head = bytes::BytesMut::new();
        append_frame(
            &mut head,
            Id::new(1, 1),
            Kind::INVOKE,
            true,
            false,
            RPC.as_bytes(),
        );
        append_frame(&mut head, Id::new(1, 2), Kind::MESSAGE, true, false, b"req");
        append_frame(&mut head, Id::new(1, 3), Kind::CLOSE_SEND, true, false, b"");
        let mut filler = bytes::BytesMut::new();
        append_frame(
            &mut filler,
            Id::new(99, 1),
            Kind::MESSAGE,
            true,
            false,
            &[7; 100],
        );
        let flood = Flood {
            head: head.freeze(),
            filler: filler.freeze(),
            at: 0,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let server = Manager::with_acceptor(flood, ManagerOptions::default(), move |incoming| {
            let _ = tx.send(incoming);
        });
        let incoming = step("the stream", rx.recv()).await.expect("a stream");
        assert_eq!(incoming.stream.id(), 1);
        assert_eq!(incoming.rpc, RPC);
        // Its request was routed before it was handed over.
        let request = step("request", incoming.stream.recv()).await.expect("recv");
        assert_eq!(request.as_deref(), Some(&b"req"[..]));
        server.close().await;
    })
    .await;
}
