//! A handler that blocks its thread does not hold up the other calls of its
//! connection: every RPC runs in a task of its own by default
//! ([`ServerOptions::inline_first_poll`] off), and a worker stuck in one is
//! noticed so that an idle one takes over the I/O.
//!
//! The server runs on a runtime of its own with two workers, the client on
//! the test's, over loopback TCP, as between two processes: nothing the
//! client does wakes the server's workers. The checks are on the order of
//! events, not on how long they took.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{TEST_LIMIT, within};
use drpc_conn::{CallOptions, Conn, ConnOptions};
use drpc_mux::{BoxFuture, CodedError, Handler, Mux, RequestContext, ServerCall};
use drpc_server::{Server, ServerOptions};
use drpc_stream::Raw;
use tokio::sync::mpsc;

/// Unary: blocks its OS thread (a synchronous sleep) for [`BLOCK_FOR`] at
/// the start of its first poll, before it looks at its request, then
/// echoes.
const BLOCK_THREAD: &str = "/isolation.Test/BlockThread";
/// Unary: waits a little (a timer), then blocks its OS thread for
/// [`BLOCK_FOR`] in a later poll, then echoes.
const BLOCK_LATER: &str = "/isolation.Test/BlockLater";
/// Unary: echoes.
const ECHO: &str = "/isolation.Test/Echo";

const BLOCK_FOR: Duration = Duration::from_secs(1);

/// What the blocking handler lets the test see.
struct Probe {
    /// Told when the handler starts blocking.
    started: mpsc::UnboundedSender<()>,
    /// Set when the handler is done blocking.
    returned: AtomicBool,
}

/// Every method echoes; [`BLOCK_THREAD`] and [`BLOCK_LATER`] block first.
struct Service {
    echoes: Arc<Mux>,
    probe: Arc<Probe>,
}

impl Handler for Service {
    fn handle(&self, call: ServerCall) -> BoxFuture<Result<(), CodedError>> {
        let later = match call.ctx.rpc() {
            BLOCK_THREAD => false,
            BLOCK_LATER => true,
            _ => return self.echoes.handle(call),
        };
        let (echoes, probe) = (self.echoes.clone(), self.probe.clone());
        Box::pin(async move {
            if later {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Otherwise nothing is awaited before: this runs in the
            // future's first poll, whenever the request's frames arrive.
            let _ = probe.started.send(());
            std::thread::sleep(BLOCK_FOR);
            probe.returned.store(true, Ordering::SeqCst);
            echoes.handle(call).await
        })
    }
}

fn service(probe: Arc<Probe>) -> Service {
    let mut echoes = Mux::new();
    for rpc in [BLOCK_THREAD, BLOCK_LATER, ECHO] {
        echoes.unary(
            rpc,
            Raw,
            |_: RequestContext, req: Bytes| async move { Ok(req) },
        );
    }
    Service {
        echoes: Arc::new(echoes),
        probe,
    }
}

/// A server with `opts` on a runtime of its own (two workers), a client
/// connected to it over loopback TCP; the probe of the blocking handler,
/// and the receiver its start is told on.
struct Served {
    conn: Conn,
    probe: Arc<Probe>,
    started: mpsc::UnboundedReceiver<()>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Served {
    async fn start(opts: ServerOptions) -> Served {
        let (started, started_rx) = mpsc::unbounded_channel();
        let probe = Arc::new(Probe {
            started,
            returned: AtomicBool::new(false),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("local addr");
        let server = Server::with_options(service(probe.clone()), opts);
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            server.serve_tcp(listener).await
        });
        let conn = Conn::connect_tcp(addr, ConnOptions::default())
            .await
            .expect("connect");
        Served {
            conn,
            probe,
            started: started_rx,
            runtime: Some(runtime),
        }
    }

    fn returned(&self) -> bool {
        self.probe.returned.load(Ordering::SeqCst)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn call(conn: &Conn, rpc: &str, req: &'static str) -> Bytes {
    conn.unary_with::<Bytes, Bytes, _>(
        &Raw,
        rpc,
        &Bytes::from_static(req.as_bytes()),
        &CallOptions::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{rpc}: {e}"))
}

/// Calls `blocking`, waits until its handler blocks, then makes a second
/// call on the same connection: it must complete while the first handler
/// still blocks.
async fn second_call_completes_meanwhile(blocking_rpc: &'static str) {
    let mut served = Served::start(ServerOptions::default()).await;
    let blocking = {
        let conn = served.conn.clone();
        tokio::spawn(async move { call(&conn, blocking_rpc, "blocking").await })
    };
    served
        .started
        .recv()
        .await
        .expect("the blocking handler started");
    // The blocking handler holds one of the server's two workers; the
    // other reads, serves and answers the second call meanwhile.
    assert_eq!(call(&served.conn, ECHO, "beside").await, "beside");
    assert!(
        !served.returned(),
        "the second call completed only once the blocking handler was done"
    );
    assert_eq!(blocking.await.expect("task"), "blocking");
    assert!(served.returned());
    // And the connection goes on.
    assert_eq!(call(&served.conn, ECHO, "after").await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_blocking_its_thread_does_not_hold_up_its_connection() {
    assert!(!ServerOptions::default().inline_first_poll);
    within(
        TEST_LIMIT,
        "blocking first poll",
        second_call_completes_meanwhile(BLOCK_THREAD),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_blocking_after_it_waited_does_not_hold_up_its_connection() {
    within(
        TEST_LIMIT,
        "blocking later poll",
        second_call_completes_meanwhile(BLOCK_LATER),
    )
    .await;
}

/// The trade-off of [`ServerOptions::inline_first_poll`]: on, a handler
/// blocking in its first step blocks its connection's reader, and so
/// every other call of the connection, until it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_first_steps_that_block_hold_up_the_connection() {
    within(TEST_LIMIT, "blocking handler, inline", async {
        let opts = ServerOptions {
            inline_first_poll: true,
            ..ServerOptions::default()
        };
        let mut served = Served::start(opts).await;
        let blocking = {
            let conn = served.conn.clone();
            tokio::spawn(async move { call(&conn, BLOCK_THREAD, "blocking").await })
        };
        served
            .started
            .recv()
            .await
            .expect("the blocking handler started");
        assert_eq!(call(&served.conn, ECHO, "beside").await, "beside");
        assert!(
            served.returned(),
            "the reader was blocked until the handler was done"
        );
        assert_eq!(blocking.await.expect("task"), "blocking");
    })
    .await;
}
