//! One port for DRPC, HTTP/2 and HTTP/1: `shared_port::split` routes each
//! connection by its first bytes, with the sniffed bytes replayed (or the
//! migration header consumed), and a silent connection blocks no other.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use drpc_conn::{Conn, ConnOptions, with_migration_header};
use drpc_server::shared_port::{self, Route, SniffOptions};
use drpc_server::{Rewind, Server, ServerOptions};
use futures_util::StreamExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A shared port on 127.0.0.1 whose DRPC route is served by the test
/// service; returns its address and the HTTP routes.
async fn start(
    opts: SniffOptions,
) -> (
    SocketAddr,
    Route<Rewind<TcpStream>>,
    Route<Rewind<TcpStream>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = shared_port::split(listener, opts).expect("split");
    let (mux, _events) = mux();
    let server = Server::with_options(mux, ServerOptions::new());
    let drpc = port.drpc;
    tokio::spawn(async move { server.serve_incoming(drpc).await });
    (port.local_addr, port.http2, port.http1)
}

/// Reads exactly `n` bytes from the next connection of `route`.
async fn next_bytes(
    route: &mut Route<Rewind<TcpStream>>,
    n: usize,
) -> (Rewind<TcpStream>, Vec<u8>) {
    let mut conn = within(STEP, "a routed connection", route.next())
        .await
        .expect("route open")
        .expect("no error");
    let mut buf = vec![0; n];
    within(STEP, "the replayed bytes", conn.read_exact(&mut buf))
        .await
        .expect("read");
    (conn, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drpc_is_served_with_and_without_the_migration_header() {
    within(TEST_LIMIT, "drpc", async {
        let (addr, _http2, _http1) = start(SniffOptions::new()).await;

        let plain = TcpStream::connect(addr).await.expect("connect");
        let local = plain.local_addr().expect("local");
        let conn = Conn::new(plain, ConnOptions::default());
        assert_eq!(call(&conn, ECHO, "plain").await.expect("call"), b("plain"));
        // The DRPC route carries the client's address.
        let peer = call(&conn, PEER, "").await.expect("peer");
        assert_eq!(peer, format!("{local}|-|-"));

        let socket = TcpStream::connect(addr).await.expect("connect");
        let conn = Conn::new(with_migration_header(socket), ConnOptions::default());
        assert_eq!(
            call(&conn, ECHO, "migrated").await.expect("call"),
            b("migrated")
        );
        // Several calls on the one connection: the header came once.
        assert_eq!(call(&conn, ECHO, "again").await.expect("call"), b("again"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_preface_lands_on_the_http2_route_replayed() {
    within(TEST_LIMIT, "http2", async {
        let (addr, mut http2, _http1) = start(SniffOptions::new()).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let mut sent = PREFACE.to_vec();
        sent.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        client.write_all(&sent).await.expect("write");
        let (mut conn, got) = next_bytes(&mut http2, sent.len()).await;
        assert_eq!(got, sent);
        assert_eq!(
            conn.get_ref().peer_addr().expect("peer"),
            client.local_addr().expect("local")
        );
        // Writes pass through, and later reads come from the socket.
        conn.write_all(b"pong").await.expect("write");
        let mut buf = [0; 4];
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");
        client.write_all(b"more").await.expect("write");
        conn.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"more");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_request_lands_on_the_http1_route_replayed() {
    within(TEST_LIMIT, "http1", async {
        let (addr, _http2, mut http1) = start(SniffOptions::new()).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        // In two writes: the route does not depend on one read.
        client.write_all(&request[..2]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&request[2..]).await.expect("write");
        let (_conn, got) = next_bytes(&mut http1, request.len()).await;
        assert_eq!(got, request);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_dropped_in_time_and_blocks_no_other() {
    within(TEST_LIMIT, "silent", async {
        let timeout = Duration::from_millis(300);
        let (addr, _http2, _http1) = start(SniffOptions::new().timeout(timeout)).await;
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).await.expect("connect");

        // Another client is served meanwhile.
        let socket = TcpStream::connect(addr).await.expect("connect");
        let conn = Conn::new(socket, ConnOptions::default());
        assert_eq!(call(&conn, ECHO, "hi").await.expect("call"), b("hi"));
        assert!(started.elapsed() < timeout, "served behind the silent one");

        server_closes(&mut silent, "the silent connection").await;
        let waited = started.elapsed();
        assert!(waited >= timeout, "closed after {waited:?}");
        assert!(waited < timeout + STEP, "closed after {waited:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_unserved_routes_are_closed() {
    within(TEST_LIMIT, "closed", async {
        let (addr, http2, _http1) = start(SniffOptions::new()).await;
        // A TLS ClientHello's record header: no TLS route.
        let mut tls = TcpStream::connect(addr).await.expect("connect");
        tls.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05])
            .await
            .expect("write");
        server_closes(&mut tls, "a TLS handshake").await;

        // Nobody takes HTTP/2: its connections are closed.
        drop(http2);
        let mut h2 = TcpStream::connect(addr).await.expect("connect");
        h2.write_all(PREFACE).await.expect("write");
        server_closes(&mut h2, "an unserved HTTP/2 connection").await;
    })
    .await;
}
