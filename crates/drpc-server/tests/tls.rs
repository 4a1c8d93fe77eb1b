//! DRPC over TLS (the `tls` feature): `serve_tls` with server
//! authentication and with mutual TLS, the peer's address and certificate
//! chain in the handler's context, clients refused in the handshake
//! (no certificate, plain TCP) without harm to the others, the handshake
//! timeout, concurrent handshakes, `max_connections`, and the client
//! connector through `Endpoint::from_connector`. Certificates and rustls
//! configurations come from `drpc_test_support::pki`.

#![cfg(feature = "tls-ring")]

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use drpc_conn::{CallOptions, Conn, ConnOptions, Endpoint};
use drpc_mux::{Mux, RequestContext};
use drpc_server::tls::rustls::pki_types::ServerName;
use drpc_server::tls::{self, ClientTlsStream, rustls};
use drpc_server::{PeerCertificates, Server, ServerOptions};
use drpc_stream::Raw;
use drpc_test_support::pki::{Pki, SERVER_NAME, client_config, server_config};
use support::{STEP, TEST_LIMIT, call, server_closes, within};
use tokio::task::JoinHandle;

/// Unary: answers `<peer address>` then, for each certificate of the
/// peer's chain, its length (u32, big-endian) and its DER.
const WHO: &str = "/tls.Test/Who";

fn mux() -> Mux {
    let mut mux = Mux::new();
    mux.unary(WHO, Raw, |ctx: RequestContext, _: Bytes| async move {
        let peer = ctx.peer();
        let mut out = BytesMut::new();
        out.put_slice(peer.addr().to_string().as_bytes());
        if let Some(certs) = peer.extensions().get::<PeerCertificates>() {
            for cert in certs.chain() {
                out.put_u32(cert.len() as u32);
                out.put_slice(cert);
            }
        }
        Ok(out.freeze())
    });
    mux.unary(
        support::ECHO,
        Raw,
        |_: RequestContext, req: Bytes| async move { Ok(req) },
    );
    mux
}

/// What the `WHO` handler saw: the peer's address, and its certificates.
fn parse_who(mut got: &[u8], addr_len: usize) -> (String, Vec<Vec<u8>>) {
    let addr = String::from_utf8(got[..addr_len].to_vec()).expect("utf-8");
    got = &got[addr_len..];
    let mut certs = Vec::new();
    while !got.is_empty() {
        let len = u32::from_be_bytes(got[..4].try_into().expect("length")) as usize;
        certs.push(got[4..4 + len].to_vec());
        got = &got[4 + len..];
    }
    (addr, certs)
}

/// A TLS server of the test service on 127.0.0.1.
async fn start(
    opts: ServerOptions,
    config: Arc<rustls::ServerConfig>,
) -> (Server, SocketAddr, JoinHandle<io::Result<()>>) {
    let server = Server::with_options(mux(), opts);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve_tls(listener, config).await });
    (server, addr, task)
}

/// Dials the server over TLS with `config`.
async fn dial(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> io::Result<ClientTlsStream> {
    let name = ServerName::try_from(SERVER_NAME).expect("server name");
    tls::connector(addr.to_string(), name, config)().await
}

/// A TLS connection of the test service's client.
async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> (Conn, SocketAddr) {
    let tls = within(STEP, "TLS connect", dial(addr, config))
        .await
        .expect("TLS handshake");
    let local = tls.get_ref().0.local_addr().expect("local address");
    (Conn::new(tls, ConnOptions::default()), local)
}

/// A server's PKI and configuration, with mutual TLS or not; and the PKI
/// of its clients.
fn setup(mutual: bool) -> (Pki, Pki, Arc<rustls::ServerConfig>) {
    let server_pki = Pki::new("server CA");
    let client_pki = Pki::new("client CA");
    let identity = server_pki.server_identity();
    let config = server_config(identity, mutual.then(|| client_pki.roots()));
    (server_pki, client_pki, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_auth_only_serves_and_the_handler_sees_the_tcp_peer_without_certificates() {
    within(TEST_LIMIT, "server auth", async {
        let (server_pki, _, config) = setup(false);
        let (_server, addr, _task) = start(ServerOptions::new(), config).await;
        let (conn, local) = connect(addr, client_config(&server_pki, None)).await;
        let got = call(&conn, WHO, "").await.expect("who");
        let (peer, certs) = parse_who(&got, local.to_string().len());
        assert_eq!(peer, local.to_string());
        assert!(certs.is_empty(), "no client certificate: {certs:?}");
        assert_eq!(call(&conn, support::ECHO, "hi").await.expect("echo"), "hi");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_the_handler_sees_the_chain_the_client_presented() {
    within(TEST_LIMIT, "mtls", async {
        let (server_pki, client_pki, config) = setup(true);
        let (_server, addr, _task) = start(ServerOptions::new(), config).await;
        let identity = client_pki.client_identity("client-7");
        let presented: Vec<Vec<u8>> = identity.chain.iter().map(|c| c.to_vec()).collect();
        let (conn, local) = connect(addr, client_config(&server_pki, Some(identity))).await;
        let got = call(&conn, WHO, "").await.expect("who");
        let (peer, certs) = parse_who(&got, local.to_string().len());
        assert_eq!(peer, local.to_string());
        assert_eq!(certs, presented);
    })
    .await;
}

/// Whether a call over a TLS connection made with `config` fails: in the
/// handshake, or (TLS 1.3, where the client finishes before the server has
/// checked its certificate) at the first call.
async fn refused(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    let Ok(tls) = dial(addr, config).await else {
        return true;
    };
    let conn = Conn::new(tls, ConnOptions::default());
    let opts = CallOptions::new().timeout(STEP);
    conn.unary_with(&Raw, support::ECHO, &Bytes::from_static(b"x"), &opts)
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_serves_the_others() {
    within(TEST_LIMIT, "no client certificate", async {
        let (server_pki, client_pki, config) = setup(true);
        let (_server, addr, _task) = start(ServerOptions::new(), config).await;
        assert!(refused(addr, client_config(&server_pki, None)).await);

        // A certificate of another CA is refused too.
        let stranger = Pki::new("another CA").client_identity("x");
        assert!(refused(addr, client_config(&server_pki, Some(stranger))).await);

        let identity = client_pki.client_identity("client");
        let (conn, _) = connect(addr, client_config(&server_pki, Some(identity))).await;
        assert_eq!(call(&conn, support::ECHO, "ok").await.expect("echo"), "ok");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_tcp_client_fails_cleanly_and_does_not_stall_the_server() {
    within(TEST_LIMIT, "plain client", async {
        let (server_pki, _, config) = setup(false);
        let (_server, addr, _task) = start(ServerOptions::new(), config).await;
        let plain = Conn::connect_tcp(addr, ConnOptions::default())
            .await
            .expect("TCP connect");
        let opts = CallOptions::new().timeout(STEP);
        let got = within(
            STEP * 2,
            "plain call",
            plain.unary_with(&Raw, support::ECHO, &Bytes::from_static(b"x"), &opts),
        )
        .await;
        assert!(got.is_err(), "a plain call over TLS: {got:?}");
        within(STEP, "plain connection closed", plain.closed()).await;

        let (conn, _) = connect(addr, client_config(&server_pki, None)).await;
        assert_eq!(call(&conn, support::ECHO, "ok").await.expect("echo"), "ok");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_timeout_closes_a_socket_that_sends_nothing() {
    within(TEST_LIMIT, "handshake timeout", async {
        let (server_pki, _, config) = setup(false);
        let timeout = Duration::from_millis(200);
        let opts = ServerOptions::new().handshake_timeout(Some(timeout));
        let (_server, addr, _task) = start(opts, config).await;
        let started = tokio::time::Instant::now();
        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        server_closes(&mut silent, "a silent socket closed").await;
        assert!(started.elapsed() >= timeout, "closed early");

        // A client that completes its handshake and calls at once is served.
        let (conn, _) = connect(addr, client_config(&server_pki, None)).await;
        assert_eq!(call(&conn, support::ECHO, "ok").await.expect("echo"), "ok");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_does_not_hold_up_the_others() {
    within(TEST_LIMIT, "concurrent handshakes", async {
        let (server_pki, _, config) = setup(false);
        // The default TLS handshake timeout (10 s): the silent sockets stay
        // in their handshakes for the whole test.
        let (_server, addr, _task) = start(ServerOptions::new(), config).await;
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        // Half a ClientHello, then nothing.
        {
            use tokio::io::AsyncWriteExt;
            silent[0]
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .expect("write");
        }
        let (conn, _) = connect(addr, client_config(&server_pki, None)).await;
        assert_eq!(call(&conn, support::ECHO, "ok").await.expect("echo"), "ok");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_counts_tls_connections() {
    within(TEST_LIMIT, "max_connections", async {
        let (server_pki, _, config) = setup(false);
        let opts = ServerOptions::new().max_connections(1);
        let (_server, addr, _task) = start(opts, config).await;
        let (first, _) = connect(addr, client_config(&server_pki, None)).await;
        assert_eq!(call(&first, support::ECHO, "1").await.expect("first"), "1");

        // The second completes its handshake, then is closed at once.
        assert!(refused(addr, client_config(&server_pki, None)).await);

        // Once the first leaves, there is room again.
        first.close().await;
        let served = within(STEP, "room again", async {
            loop {
                if let Ok(tls) = dial(addr, client_config(&server_pki, None)).await {
                    let conn = Conn::new(tls, ConnOptions::default());
                    if call(&conn, support::ECHO, "2").await.is_ok() {
                        return conn;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert_eq!(call(&served, support::ECHO, "3").await.expect("third"), "3");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_serves_a_channel_over_mutual_tls() {
    within(TEST_LIMIT, "channel", async {
        let (server_pki, client_pki, config) = setup(true);
        let (server, addr, task) = start(ServerOptions::new(), config).await;
        let identity = client_pki.client_identity("channel");
        let end_entity = identity.chain[0].to_vec();
        let endpoint = Endpoint::from_connector(
            format!("tls://{addr}"),
            tls::connector(
                addr.to_string(),
                ServerName::try_from(SERVER_NAME).expect("name"),
                client_config(&server_pki, Some(identity)),
            ),
        );
        let channel = endpoint.connect_lazy();
        let got: Bytes = channel
            .unary_with(&Raw, WHO, &Bytes::new(), &CallOptions::new())
            .await
            .expect("who");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("127.0.0.1:"), "{text}");
        assert!(
            got.windows(end_entity.len()).any(|w| w == end_entity),
            "the handler saw the channel's certificate"
        );

        // Shutdown ends serve_tls.
        server.shutdown(Duration::from_secs(1)).await;
        within(STEP, "serve_tls returns", task)
            .await
            .expect("join")
            .expect("serve_tls");
    })
    .await;
}
