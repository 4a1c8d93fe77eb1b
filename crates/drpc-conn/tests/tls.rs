//! DRPC over TLS from the client side (the `tls` feature):
//! `Endpoint::tls` channels making calls, with the endpoint's other
//! settings (migration header inside TLS, connect timeout over the
//! handshake, custom connectors); a wrong server name failing as a
//! connect error naming the address; mutual TLS; `Conn::connect_tls`.
//! The server is drpc-server's `serve_tls`; certificates and rustls
//! configurations come from `drpc_test_support::pki`.

#![cfg(feature = "tls-ring")]

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drpc_conn::tls::{ServerName, rustls};
use drpc_conn::{CallOptions, Code, Conn, ConnOptions, Endpoint, Error, Invoker, Raw};
use drpc_mux::{Mux, RequestContext};
use drpc_server::{PeerCertificates, Server};
use drpc_test_support::pki::{Pki, SERVER_NAME, client_config, server_config};
use tokio::net::TcpListener;

/// Unary: answers the request, then `|` and the length of the end-entity
/// certificate the client presented (0 without one).
const ECHO: &str = "/tls.Test/Echo";

/// Upper bound of any wait: only a hang reaches it.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn server_name(name: &'static str) -> ServerName<'static> {
    ServerName::try_from(name).expect("server name")
}

fn mux() -> Mux {
    let mut mux = Mux::new();
    mux.unary(ECHO, Raw, |ctx: RequestContext, req: Bytes| async move {
        let cert_len = ctx
            .peer()
            .extensions()
            .get::<PeerCertificates>()
            .and_then(|chain| chain.end_entity().map(|cert| cert.len()))
            .unwrap_or(0);
        let mut reply = req.to_vec();
        reply.extend_from_slice(format!("|{cert_len}").as_bytes());
        Ok(Bytes::from(reply))
    });
    mux
}

/// A TLS server on loopback with `config`; its address.
async fn serve(config: Arc<rustls::ServerConfig>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = Server::new(mux());
    tokio::spawn(async move { server.serve_tls(listener, config).await });
    addr
}

/// A PKI and a TLS server of a certificate for `localhost` it signed;
/// with `mtls`, the server asks clients for a certificate it signed too.
async fn setup(mtls: bool) -> (Pki, String) {
    let pki = Pki::new("drpc-conn test CA");
    let identity = pki.server_identity();
    let addr = serve(server_config(identity, mtls.then(|| pki.roots()))).await;
    (pki, addr)
}

async fn echo(invoker: &impl Invoker, msg: &'static str) -> Result<String, Error> {
    let reply: Bytes = invoker
        .invoke(&Raw, ECHO, &Bytes::from(msg), &CallOptions::new())
        .await?;
    Ok(String::from_utf8(reply.to_vec()).expect("utf-8"))
}

#[tokio::test]
async fn endpoint_tls_makes_unary_calls() {
    within("TLS channel", async {
        let (pki, addr) = setup(false).await;
        let channel = Endpoint::tcp(addr.clone())
            .tls(server_name(SERVER_NAME), client_config(&pki, None))
            .connect_lazy();
        for msg in ["one", "two", "three"] {
            assert_eq!(echo(&channel, msg).await.expect("call"), format!("{msg}|0"));
        }
        // Concurrent calls share the one TLS connection.
        let calls = (0..16).map(|_| echo(&channel, "many"));
        for reply in futures_util::future::join_all(calls).await {
            assert_eq!(reply.expect("concurrent call"), "many|0");
        }
        // `connect` dials before the first call.
        let channel = Endpoint::tcp(addr)
            .tls(server_name(SERVER_NAME), client_config(&pki, None))
            .options(ConnOptions::new().max_message_size(1 << 20))
            .connect()
            .await
            .expect("connect");
        assert_eq!(echo(&channel, "eager").await.expect("call"), "eager|0");
    })
    .await
}

#[tokio::test]
async fn wrong_server_name_fails_with_connect_error() {
    within("wrong server name", async {
        let (pki, addr) = setup(false).await;
        let endpoint = Endpoint::tcp(addr.clone())
            .tls(server_name("other.example"), client_config(&pki, None))
            .backoff(drpc_conn::Backoff {
                initial: Duration::from_secs(60),
                ..drpc_conn::Backoff::default()
            });

        // `connect`: the first attempt's error.
        let err = endpoint.clone().connect().await.expect_err("wrong name");
        match &err {
            Error::Connect {
                addr: named,
                source,
            } => {
                assert_eq!(named, &addr);
                assert_eq!(source.kind(), io::ErrorKind::InvalidData, "{source:?}");
            }
            other => panic!("expected Error::Connect, got {other:?}"),
        }
        assert_eq!(err.code(), Some(Code::Unavailable));
        assert!(err.is_unavailable(), "{err}");
        let text = err.to_string();
        assert!(text.contains(&addr), "{text}");
        assert!(text.contains("TLS handshake with other.example"), "{text}");
        assert!(text.contains("certificate"), "{text}");

        // A lazy channel: the call fails fast, naming the address and the
        // handshake's error.
        let channel = endpoint.connect_lazy();
        let err = echo(&channel, "hi").await.expect_err("wrong name");
        match &err {
            Error::Unavailable {
                addr: named,
                reason,
            } => {
                assert_eq!(named, &addr);
                assert!(reason.contains("TLS handshake"), "{reason}");
            }
            other => panic!("expected Error::Unavailable, got {other:?}"),
        }
        assert_eq!(err.code(), Some(Code::Unavailable));
    })
    .await
}

#[tokio::test]
async fn untrusted_server_fails_with_connect_error() {
    within("untrusted server", async {
        let (_, addr) = setup(false).await;
        let stranger = Pki::new("another CA");
        let err = Endpoint::tcp(addr.clone())
            .tls(server_name(SERVER_NAME), client_config(&stranger, None))
            .connect()
            .await
            .expect_err("unknown issuer");
        assert!(
            matches!(&err, Error::Connect { addr: named, .. } if named == &addr),
            "{err:?}"
        );
    })
    .await
}

#[tokio::test]
async fn mutual_tls_with_client_certificate() {
    within("mTLS", async {
        let (pki, addr) = setup(true).await;
        let client = pki.client_identity("client");
        let cert_len = client.chain[0].len();
        let channel = Endpoint::tcp(addr.clone())
            .tls(server_name(SERVER_NAME), client_config(&pki, Some(client)))
            .connect()
            .await
            .expect("connect with a client certificate");
        // The server saw the client's certificate.
        assert_eq!(
            echo(&channel, "mtls").await.expect("call"),
            format!("mtls|{cert_len}")
        );

        // Without a certificate the server refuses the client. With TLS
        // 1.3 the client may learn it only when it reads, after its
        // handshake is done: either the connect or the call fails.
        let channel = Endpoint::tcp(addr)
            .tls(server_name(SERVER_NAME), client_config(&pki, None))
            .connect_lazy();
        let err = echo(&channel, "anonymous")
            .await
            .expect_err("no client certificate");
        assert!(err.is_unavailable(), "{err:?}");
    })
    .await
}

#[tokio::test]
async fn migration_header_goes_inside_tls() {
    within("migration header", async {
        let (pki, addr) = setup(false).await;
        // Sent before the handshake, the header would be a malformed
        // ClientHello and the handshake would fail.
        let channel = Endpoint::tcp(addr)
            .migration_header(true)
            .tls(server_name(SERVER_NAME), client_config(&pki, None))
            .connect()
            .await
            .expect("connect");
        assert_eq!(
            echo(&channel, "migrated").await.expect("call"),
            "migrated|0"
        );
    })
    .await
}

#[tokio::test]
async fn connect_timeout_bounds_the_handshake() {
    within("handshake timeout", async {
        // A server that accepts and never answers the ClientHello.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let pki = Pki::new("unused CA");
        let err = Endpoint::tcp(addr.clone())
            .tls(server_name(SERVER_NAME), client_config(&pki, None))
            .connect_timeout(Duration::from_millis(200))
            .connect()
            .await
            .expect_err("silent server");
        match &err {
            Error::Connect {
                addr: named,
                source,
            } => {
                assert_eq!(named, &addr);
                assert_eq!(source.kind(), io::ErrorKind::TimedOut, "{source:?}");
            }
            other => panic!("expected Error::Connect, got {other:?}"),
        }
        silent.abort();
    })
    .await
}

#[tokio::test]
async fn tls_over_a_custom_connector() {
    within("custom connector", async {
        let (pki, addr) = setup(false).await;
        let dial_addr = addr.clone();
        let channel = Endpoint::from_connector("tunnel", move || {
            tokio::net::TcpStream::connect(dial_addr.clone())
        })
        .tls(server_name(SERVER_NAME), client_config(&pki, None))
        .connect()
        .await
        .expect("connect");
        assert_eq!(
            echo(&channel, "tunneled").await.expect("call"),
            "tunneled|0"
        );

        // The handshake's failure names the connector.
        let err = Endpoint::from_connector("tunnel", move || {
            tokio::net::TcpStream::connect(addr.clone())
        })
        .tls(server_name("other.example"), client_config(&pki, None))
        .connect()
        .await
        .expect_err("wrong name");
        assert!(
            matches!(&err, Error::Connect { addr, .. } if addr == "tunnel"),
            "{err:?}"
        );
    })
    .await
}

#[tokio::test]
async fn conn_connect_tls() {
    within("Conn::connect_tls", async {
        let (pki, addr) = setup(false).await;
        let conn = Conn::connect_tls(
            addr.as_str(),
            server_name(SERVER_NAME),
            client_config(&pki, None),
            ConnOptions::default(),
        )
        .await
        .expect("connect");
        assert_eq!(echo(&conn, "conn").await.expect("call"), "conn|0");
        conn.close().await;

        let err = Conn::connect_tls(
            addr.as_str(),
            server_name("other.example"),
            client_config(&pki, None),
            ConnOptions::default(),
        )
        .await
        .expect_err("wrong name");
        match &err {
            Error::Connect { addr: named, .. } => assert_eq!(named, &addr),
            other => panic!("expected Error::Connect, got {other:?}"),
        }
        assert!(err.to_string().contains("TLS handshake"), "{err}");
    })
    .await
}
