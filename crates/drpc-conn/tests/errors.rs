//! Errors people can match on: every predicate and `code()` for a failure
//! noticed by the client and for the same failure reported by a real
//! server over loopback TCP; the connect error naming its address; the
//! `Display` format.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use drpc_conn::{CallOptions, CancellationToken, Code, Conn, ConnOptions, Error, Raw, Status};
use drpc_mux::{Mux, RequestContext};
use drpc_server::{Server, ServerOptions};

const FIVE_S: Duration = Duration::from_secs(5);
const KIB: usize = 1024;

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(FIVE_S, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// `/t.T/Fail` answers the request `"<code> <message>"` with that error;
/// `/t.T/Sleep` answers after a second; `/t.T/Echo` echoes.
fn mux() -> Mux {
    let mut mux = Mux::new();
    mux.unary(
        "/t.T/Fail",
        Raw,
        |_ctx: RequestContext, req: Bytes| async move {
            let text = String::from_utf8_lossy(&req).into_owned();
            let (code, message) = text.split_once(' ').unwrap_or((&text, ""));
            let code: u64 = code
                .parse()
                .map_err(|_| Status::invalid_argument("bad code"))?;
            Err::<Bytes, _>(Status::new(code, message))
        },
    );
    mux.unary(
        "/t.T/Sleep",
        Raw,
        |_ctx: RequestContext, _req: Bytes| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Status>(Bytes::new())
        },
    );
    mux.unary(
        "/t.T/Echo",
        Raw,
        |_ctx: RequestContext, req: Bytes| async move { Ok::<_, Status>(req) },
    );
    mux
}

/// A server on a loopback port.
async fn serve(opts: ServerOptions) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Server::with_options(mux(), opts);
    tokio::spawn(async move { server.serve_tcp(listener).await });
    addr
}

async fn connect(opts: ConnOptions) -> (Conn, SocketAddr) {
    let addr = serve(ServerOptions::default()).await;
    let conn = Conn::connect_tcp(addr, opts).await.expect("connect");
    (conn, addr)
}

async fn call(conn: &Conn, rpc: &str, req: impl Into<Bytes>, opts: &CallOptions) -> Error {
    within(
        rpc,
        conn.unary_with::<Bytes, Bytes, _>(&Raw, rpc, &req.into(), opts),
    )
    .await
    .expect_err("the call fails")
}

/// The server's error with `code`.
async fn remote(conn: &Conn, code: Code, message: &str) -> Error {
    let req = format!("{} {message}", code.as_u64());
    call(conn, "/t.T/Fail", req, &CallOptions::new()).await
}

/// Neither the error nor any of its sources says "manager".
fn assert_no_manager(err: &Error) {
    let mut next: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = next {
        assert!(!e.to_string().contains("manager"), "{e} in {err:?}");
        next = e.source();
    }
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_codes_and_display() {
    let (conn, _) = connect(ConnOptions::default()).await;

    let err = remote(&conn, Code::NotFound, "no such key").await;
    assert_eq!(err.code(), Some(Code::NotFound));
    assert!(matches!(err.code(), Some(Code::NotFound)));
    assert_eq!(err.remote_code(), Some(Code::NotFound));
    assert_eq!(err.remote_message(), Some("no such key"));
    let id = err.stream_id().expect("a stream id");
    assert_ne!(id, 0);
    assert_eq!(
        err.to_string(),
        format!("NotFound: no such key (stream {id})")
    );
    assert!(!err.is_unavailable() && !err.is_canceled() && !err.is_deadline_exceeded());

    // A number without a name.
    let err = remote(&conn, Code::from(42), "boom").await;
    assert_eq!(err.code(), Some(Code::from_u64(42)));
    let id = err.stream_id().expect("a stream id");
    assert_eq!(err.to_string(), format!("Code(42): boom (stream {id})"));

    // No code: the message alone.
    let err = remote(&conn, Code::Ok, "plain failure").await;
    assert_eq!(err.code(), None);
    assert_eq!(err.remote_code(), None);
    let id = err.stream_id().expect("a stream id");
    assert_eq!(err.to_string(), format!("plain failure (stream {id})"));

    // The server's unknown-method answer.
    let err = call(&conn, "/t.T/Nope", "x", &CallOptions::new()).await;
    assert_eq!(err.code(), Some(Code::Unimplemented));
    assert!(
        err.to_string()
            .starts_with("Unimplemented: protocol error: unknown rpc"),
        "{err}"
    );

    // The source chain reaches the server's error, for drpc_wire::code_of.
    let err = remote(&conn, Code::Aborted, "x").await;
    assert_eq!(drpc_wire::code_of(&err), Code::Aborted.as_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_local_and_remote() {
    // Connecting to a closed port: Error::Connect naming the address.
    let addr = closed_port().await;
    let err = Conn::connect_tcp(addr, ConnOptions::default())
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(&err, Error::Connect { addr: a, .. } if *a == addr.to_string()),
        "{err:?}"
    );
    assert!(err.is_unavailable());
    assert!(err.is_connection_lost());
    assert_eq!(err.code(), Some(Code::Unavailable));
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("Unavailable: connecting to {addr}: ")),
        "{text}"
    );
    assert!(std::error::Error::source(&err).is_some());

    // The same through a string address.
    let name = addr.to_string();
    let err = Conn::connect_tcp(name.as_str(), ConnOptions::default())
        .await
        .expect_err("nothing listens");
    assert!(err.to_string().contains(&name), "{err}");

    // A Unix socket path that does not exist.
    #[cfg(unix)]
    {
        let path = std::env::temp_dir().join(format!("drpc-no-such-{}.sock", std::process::id()));
        let err = Conn::connect_unix(&path, ConnOptions::default())
            .await
            .expect_err("no socket");
        assert!(err.is_unavailable());
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    // Not connected (what a reconnecting channel reports).
    let err = Error::unavailable("10.0.0.1:7000", "connection refused");
    assert!(err.is_unavailable());
    assert_eq!(err.code(), Some(Code::Unavailable));
    assert_eq!(
        err.to_string(),
        "Unavailable: not connected to 10.0.0.1:7000: connection refused"
    );
    let err = Error::connect("db:5432", std::io::Error::other("no route"));
    assert_eq!(
        err.to_string(),
        "Unavailable: connecting to db:5432: no route"
    );

    // The connection lost under a call: a peer that accepts and hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(socket);
    });
    let conn = Conn::connect_tcp(addr, ConnOptions::default())
        .await
        .expect("connect");
    let err = call(&conn, "/t.T/Echo", "x", &CallOptions::new()).await;
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.is_connection_lost(), "{err:?}");
    assert_eq!(err.code(), Some(Code::Unavailable));
    let text = err.to_string();
    assert!(text.starts_with("Unavailable: connection "), "{text}");
    assert_no_manager(&err);

    // Closed by this side.
    let (conn, _) = connect(ConnOptions::default()).await;
    conn.close().await;
    let err = call(&conn, "/t.T/Echo", "x", &CallOptions::new()).await;
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "Unavailable: connection closed by the client"
    );
    assert_no_manager(&err);

    // The server's Unavailable.
    let (conn, _) = connect(ConnOptions::default()).await;
    let err = remote(&conn, Code::Unavailable, "shutting down").await;
    assert!(err.is_unavailable());
    assert!(!err.is_connection_lost());
    assert_eq!(err.code(), Some(Code::Unavailable));
}

/// A peer that accepts one connection and never answers (so that only
/// the client's own timer can end a call).
async fn silent_peer() -> Conn {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(socket);
    });
    Conn::connect_tcp(addr, ConnOptions::default())
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_local_and_remote() {
    // The client's timer (a Rust server would race it with its own): a
    // unary call, with the id of its stream.
    let conn = silent_peer().await;
    let opts = CallOptions::new().timeout(Duration::from_millis(50));
    let err = call(&conn, "/t.T/Sleep", "x", &opts).await;
    assert!(err.is_deadline_exceeded(), "{err:?}");
    assert_eq!(err.code(), Some(Code::DeadlineExceeded));
    assert_eq!(err.remote_code(), None);
    assert!(std::error::Error::source(&err).is_none());
    let id = err.stream_id().expect("the stream is known");
    assert_eq!(
        err.to_string(),
        format!("DeadlineExceeded: deadline exceeded (stream {id})")
    );

    // A stream's deadline.
    let opts = CallOptions::new().timeout(Duration::from_millis(50));
    let mut stream = conn
        .stream_with::<Bytes, Bytes, _>(Raw, "/t.T/Sleep", &opts)
        .await
        .expect("open");
    let err = within("recv", stream.recv()).await.expect_err("deadline");
    assert!(err.is_deadline_exceeded(), "{err:?}");
    assert_eq!(err.stream_id(), Some(stream.id()));

    // Already past before the call: no stream.
    let err = call(
        &conn,
        "/t.T/Echo",
        "x",
        &CallOptions::new().timeout(Duration::ZERO),
    )
    .await;
    assert!(err.is_deadline_exceeded(), "{err:?}");
    assert_eq!(err.stream_id(), None);
    assert_eq!(err.to_string(), "DeadlineExceeded: deadline exceeded");

    // The server's.
    let (conn, _) = connect(ConnOptions::default()).await;
    let err = remote(&conn, Code::DeadlineExceeded, "too slow").await;
    assert!(err.is_deadline_exceeded());
    assert_eq!(err.remote_code(), Some(Code::DeadlineExceeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceled_local_and_remote() {
    let (conn, _) = connect(ConnOptions::default()).await;

    // A token cancelled during a unary call.
    let token = CancellationToken::new();
    let opts = CallOptions::new().cancel_on(token.clone());
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        token.cancel();
    });
    let err = call(&conn, "/t.T/Sleep", "x", &opts).await;
    cancel.await.expect("task");
    assert!(err.is_canceled(), "{err:?}");
    assert!(!err.is_canceled_by_remote());
    assert_eq!(err.code(), Some(Code::Canceled));
    let id = err.stream_id().expect("the stream is known");
    assert_eq!(
        err.to_string(),
        format!("Canceled: call canceled (stream {id})")
    );

    // An explicit cancel of a stream.
    let mut stream = conn
        .stream_with::<Bytes, Bytes, _>(Raw, "/t.T/Sleep", &CallOptions::new())
        .await
        .expect("open");
    stream.cancel();
    let err = within("recv", stream.recv()).await.expect_err("cancelled");
    assert!(err.is_canceled(), "{err:?}");
    assert_eq!(err.code(), Some(Code::Canceled));

    // The server's Canceled.
    let err = remote(&conn, Code::Canceled, "context canceled").await;
    assert!(err.is_canceled());
    assert!(!err.is_canceled_by_remote());
    assert_eq!(err.remote_code(), Some(Code::Canceled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_local_and_remote() {
    // The client refuses a request over its own limit, before sending.
    let mut small = ConnOptions::default();
    small.manager.stream.max_packet_size = KIB;
    let (conn, _) = connect(small.clone()).await;
    let err = call(&conn, "/t.T/Echo", vec![0u8; 2 * KIB], &CallOptions::new()).await;
    assert!(err.is_too_large(), "{err:?}");
    assert!(err.is_resource_exhausted(), "{err:?}");
    assert_eq!(err.code(), Some(Code::ResourceExhausted));
    assert!(!err.is_connection_lost(), "{err:?}");
    assert!(err.to_string().starts_with("ResourceExhausted: "), "{err}");

    // On a stream, with its id; the stream goes on.
    let mut stream = conn
        .stream_with::<Bytes, Bytes, _>(Raw, "/t.T/Echo", &CallOptions::new())
        .await
        .expect("open");
    let err = stream
        .send(&Bytes::from(vec![0u8; 2 * KIB]))
        .await
        .expect_err("too large");
    assert!(err.is_too_large(), "{err:?}");
    assert_eq!(err.code(), Some(Code::ResourceExhausted));
    assert_eq!(err.stream_id(), Some(stream.id()));
    assert!(
        err.to_string()
            .ends_with(&format!("(stream {})", stream.id())),
        "{err}"
    );
    stream
        .send(&Bytes::from_static(b"ok"))
        .await
        .expect("goes on");
    assert_eq!(stream.close_and_recv().await.expect("echo"), "ok");

    // The server refuses a request over its limit, sent in frames it
    // accepts: ResourceExhausted for this call alone.
    let mut server_opts = ServerOptions::default();
    server_opts.manager.stream.max_packet_size = KIB;
    let addr = serve(server_opts).await;
    let mut split = ConnOptions::default();
    split.manager.stream.split_size = KIB / 2;
    let conn = Conn::connect_tcp(addr, split).await.expect("connect");
    let err = call(&conn, "/t.T/Echo", vec![0u8; 2 * KIB], &CallOptions::new()).await;
    assert!(err.is_too_large(), "{err:?}");
    assert!(err.is_resource_exhausted(), "{err:?}");
    assert_eq!(err.remote_code(), Some(Code::ResourceExhausted));
    assert_eq!(err.code(), Some(Code::ResourceExhausted));
    assert!(!err.is_connection_lost(), "{err:?}");
}

#[test]
fn encode_errors_are_internal() {
    let err = Error::Encode(drpc_conn::EncodingError::new("bad field"));
    assert_eq!(err.code(), Some(Code::Internal));
    assert_eq!(err.to_string(), "Internal: encoding the request: bad field");
    let err = Error::Decode(drpc_conn::EncodingError::new("truncated"));
    assert_eq!(err.code(), Some(Code::Internal));
    assert!(
        err.to_string()
            .starts_with("Internal: decoding the response: "),
        "{err}"
    );
}
