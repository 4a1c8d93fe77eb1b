//! Shared by the tests of identity, serve_incoming, connection hygiene,
//! shutdown signalling and options: a small service whose handlers report
//! what their context says, and servers started on real sockets.
//!
//! Not merged with `tests/common` (the end-to-end harness): they share
//! only `within`, `b` and an echo/bidi handler; their services, `Events`
//! and `TEST_LIMIT` (20 s here, 15 s there) differ.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use drpc_conn::{CallOptions, Conn, Error};
use drpc_mux::{Mux, RequestContext, ServerReceiver, ServerSender};
use drpc_server::{Server, ServerOptions, UnixCredentials};
use drpc_stream::Raw;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Unary: answers its request.
pub const ECHO: &str = "/support.Test/Echo";
/// Unary: answers `<peer address>|<pid of the Unix credentials or ->|<tag or ->`.
pub const PEER: &str = "/support.Test/Peer";
/// Bidi: sends every message back, ends when the client closes.
pub const BIDI: &str = "/support.Test/Bidi";
/// Server streaming: sends `tick` every 10 ms until the server begins
/// shutting down, then `bye:<is_shutting_down>` and returns; emits
/// `ticks:start` and `ticks:shutdown`.
pub const TICKS: &str = "/support.Test/Ticks";
/// Server streaming: sends `tick` every 10 ms and never returns by itself;
/// emits `stubborn:start`, `stubborn:shutdown` (its context's shutdown
/// signal, seen by a watcher task) and `stubborn:cancelled` (its context
/// cancelled).
pub const STUBBORN: &str = "/support.Test/Stubborn";

/// Upper bound of every test.
pub const TEST_LIMIT: Duration = Duration::from_secs(20);
/// Upper bound of one step of a test.
pub const STEP: Duration = Duration::from_secs(5);

/// A tag a transport attached to its peer (as a TLS layer would attach
/// the certificate chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(pub &'static str);

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// What the handlers report.
pub struct Events(pub mpsc::UnboundedReceiver<String>);

impl Events {
    /// Waits (at most [`STEP`]) until `event` is emitted; other events are
    /// skipped.
    pub async fn wait_for(&mut self, event: &str) {
        within(STEP, event, async {
            loop {
                match self.0.recv().await {
                    Some(e) if e == event => return,
                    Some(_) => continue,
                    None => panic!("events closed while waiting for {event}"),
                }
            }
        })
        .await
    }
}

/// The test service, and the receiving end of its events.
pub fn mux() -> (Mux, Events) {
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let mut mux = Mux::new();
    mux.unary(
        ECHO,
        Raw,
        |_: RequestContext, req: Bytes| async move { Ok(req) },
    );
    mux.unary(PEER, Raw, |ctx: RequestContext, _: Bytes| async move {
        let peer = ctx.peer();
        let pid = peer
            .extensions()
            .get::<UnixCredentials>()
            .and_then(|c| c.pid)
            .map_or("-".to_owned(), |p| p.to_string());
        let tag = peer.extensions().get::<Tag>().map_or("-", |t| t.0);
        Ok(Bytes::from(format!("{}|{pid}|{tag}", peer.addr())))
    });
    mux.bidi(
        BIDI,
        Raw,
        |_: RequestContext,
         mut rx: ServerReceiver<Bytes, Raw>,
         mut tx: ServerSender<Bytes, Raw>| async move {
            while let Some(msg) = rx.recv().await? {
                tx.send(&msg).await?;
            }
            Ok(())
        },
    );
    {
        let tx = tx.clone();
        mux.server_streaming(
            TICKS,
            Raw,
            move |ctx: RequestContext, _: Bytes, mut out: ServerSender<Bytes, Raw>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send("ticks:start".into());
                    loop {
                        tokio::select! {
                            _ = ctx.shutting_down() => break,
                            _ = tokio::time::sleep(Duration::from_millis(10)) => {
                                out.send(&Bytes::from_static(b"tick")).await?;
                            }
                        }
                    }
                    let _ = tx.send("ticks:shutdown".into());
                    out.send(&Bytes::from(format!("bye:{}", ctx.is_shutting_down())))
                        .await?;
                    Ok(())
                }
            },
        );
    }
    {
        let tx = tx.clone();
        mux.server_streaming(
            STUBBORN,
            Raw,
            move |ctx: RequestContext, _: Bytes, mut out: ServerSender<Bytes, Raw>| {
                let tx = tx.clone();
                async move {
                    {
                        let (tx, shutdown, cancel) = (
                            tx.clone(),
                            ctx.shutdown_token().expect("served by a server").clone(),
                            ctx.cancellation_token().clone(),
                        );
                        tokio::spawn(async move {
                            shutdown.cancelled().await;
                            let _ = tx.send("stubborn:shutdown".into());
                            cancel.cancelled().await;
                            let _ = tx.send("stubborn:cancelled".into());
                        });
                    }
                    let _ = tx.send("stubborn:start".into());
                    loop {
                        out.send(&Bytes::from_static(b"tick")).await?;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            },
        );
    }
    (mux, Events(rx))
}

/// A server of the test service on a TCP listener of 127.0.0.1.
pub async fn start_tcp(
    opts: ServerOptions,
) -> (Server, SocketAddr, JoinHandle<io::Result<()>>, Events) {
    let (mux, events) = mux();
    let server = Server::with_options(mux, opts);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve_tcp(listener).await });
    (server, addr, task, events)
}

/// A socket path nobody else uses.
pub fn socket_path() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "drpc-support-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A server of the test service on a Unix socket at a fresh path.
#[cfg(unix)]
pub async fn start_unix(
    opts: ServerOptions,
) -> (Server, PathBuf, JoinHandle<io::Result<()>>, Events) {
    let (mux, events) = mux();
    let server = Server::with_options(mux, opts);
    let path = socket_path();
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve_unix(listener).await });
    (server, path, task, events)
}

/// Bytes from text.
pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A unary call of `rpc` with `req`.
pub async fn call(conn: &Conn, rpc: &str, req: &str) -> Result<Bytes, Error> {
    conn.unary_with(&Raw, rpc, &b(req), &CallOptions::new())
        .await
}

/// Reads from a raw client socket until the server ends the connection
/// (end of file or reset), failing the test if it is not within [`STEP`]
/// or if the server sends anything.
pub async fn server_closes<R: tokio::io::AsyncRead + Unpin>(socket: &mut R, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    match within(STEP, what, socket.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{what}: the server sent {n} bytes"),
    }
}
