//! Who calls: the peer's address in the handler's context over TCP and
//! Unix sockets, peer information passed through `serve_incoming` and
//! `serve_connection_with_peer`, and `serve_incoming` applying
//! `max_connections` to transports of any kind.

mod support;

use std::io;
use std::time::Duration;

use drpc_conn::{Conn, ConnOptions};
use drpc_server::{PeerAddr, PeerInfo, Server, ServerOptions};
use futures_util::stream;
use support::*;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_the_tcp_peer_address() {
    within(TEST_LIMIT, "tcp peer", async {
        let (_server, addr, _task, _events) = start_tcp(ServerOptions::new()).await;
        let socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let local = socket.local_addr().expect("local address");
        let conn = Conn::new(socket, ConnOptions::default());
        let got = call(&conn, PEER, "").await.expect("peer");
        assert_eq!(got, format!("{local}|-|-"));
    })
    .await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_the_unix_peer_and_its_credentials() {
    within(TEST_LIMIT, "unix peer", async {
        let (_server, path, _task, _events) = start_unix(ServerOptions::new()).await;
        let conn = Conn::connect_unix(&path, ConnOptions::default())
            .await
            .expect("connect");
        let got = call(&conn, PEER, "").await.expect("peer");
        let got = String::from_utf8_lossy(&got).into_owned();
        let fields: Vec<&str> = got.split('|').collect();
        // An unnamed client socket; the kernel's credentials name the
        // process (this one: client and server share it).
        assert_eq!(fields[0], "unix", "{got}");
        if cfg!(any(target_os = "linux", target_os = "android")) {
            assert_eq!(fields[1], std::process::id().to_string(), "{got}");
        }
        let _ = std::fs::remove_file(&path);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_connection_with_peer_passes_what_the_transport_knows() {
    within(TEST_LIMIT, "serve_connection_with_peer", async {
        let (mux, _events) = mux();
        let server = Server::new(mux);
        let (client, served) = tokio::io::duplex(64 * 1024);
        let peer =
            PeerInfo::tcp("192.0.2.7:4242".parse().expect("addr")).with_extension(Tag("cert"));
        let serving = server.clone();
        tokio::spawn(async move { serving.serve_connection_with_peer(served, peer).await });
        let conn = Conn::new(client, ConnOptions::default());
        assert_eq!(
            call(&conn, PEER, "").await.expect("peer"),
            "192.0.2.7:4242|-|cert"
        );

        // Without a peer: unknown.
        let (client, served) = tokio::io::duplex(64 * 1024);
        let serving = server.clone();
        tokio::spawn(async move { serving.serve_connection(served).await });
        let conn = Conn::new(client, ConnOptions::default());
        assert_eq!(call(&conn, PEER, "").await.expect("peer"), "unknown|-|-");
    })
    .await;
}

/// What the pipe listener yields.
type Accepted = io::Result<(tokio::io::DuplexStream, PeerInfo)>;

/// A listener of in-memory pipes: the test pushes the server's ends, each
/// with its peer, and keeps the client's.
fn pipe_listener() -> (
    mpsc::UnboundedSender<Accepted>,
    impl futures_util::Stream<Item = Accepted>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let incoming = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) });
    (tx, incoming)
}

/// A client connection through the pipe listener, its peer tagged `tag`.
fn dial(listener: &mpsc::UnboundedSender<Accepted>, tag: &'static str) -> Conn {
    let (client, served) = tokio::io::duplex(64 * 1024);
    listener
        .send(Ok((
            served,
            PeerInfo::new(PeerAddr::Unknown).with_extension(Tag(tag)),
        )))
        .expect("listener running");
    Conn::new(client, ConnOptions::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_incoming_serves_any_transport_with_max_connections_applied() {
    within(TEST_LIMIT, "serve_incoming", async {
        let (mux, _events) = mux();
        let server = Server::with_options(mux, ServerOptions::new().max_connections(2));
        let (listener, incoming) = pipe_listener();
        let serving = server.clone();
        let serve = tokio::spawn(async move { serving.serve_incoming(incoming).await });

        let first = dial(&listener, "first");
        let second = dial(&listener, "second");
        assert_eq!(
            call(&first, PEER, "").await.expect("first"),
            "unknown|-|first"
        );
        assert_eq!(
            call(&second, PEER, "").await.expect("second"),
            "unknown|-|second"
        );

        // A third is over the limit: closed at once, never served.
        let third = dial(&listener, "third");
        within(STEP, "over-limit connection closed", third.closed()).await;
        let err = call(&third, PEER, "").await.expect_err("not served");
        assert!(err.is_unavailable(), "{err:?}");

        // Once one of the two has gone, a newcomer is served.
        first.close().await;
        let fourth = within(STEP, "a slot frees up", async {
            loop {
                let conn = dial(&listener, "fourth");
                if let Ok(got) = call(&conn, PEER, "").await {
                    break (conn, got);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(fourth.1, "unknown|-|fourth");

        // The listener ends: serve_incoming returns once its connections
        // have ended.
        drop(listener);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!serve.is_finished(), "returned with connections open");
        second.close().await;
        fourth.0.close().await;
        within(STEP, "serve_incoming returns", serve)
            .await
            .expect("task")
            .expect("a listener that ends is no error");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_incoming_returns_the_listener_s_error() {
    within(TEST_LIMIT, "listener error", async {
        let (mux, _events) = mux();
        let server = Server::new(mux);
        let (listener, incoming) = pipe_listener();
        let serving = server.clone();
        let serve = tokio::spawn(async move { serving.serve_incoming(incoming).await });
        let conn = dial(&listener, "x");
        assert_eq!(call(&conn, PEER, "").await.expect("served"), "unknown|-|x");
        listener
            .send(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "listener broke",
            )))
            .expect("send");
        // It returns once the connection it serves has ended.
        conn.close().await;
        let err = within(STEP, "serve_incoming returns", serve)
            .await
            .expect("task")
            .expect_err("the listener's error");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    })
    .await;
}
