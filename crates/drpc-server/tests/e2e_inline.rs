//! With [`ServerOptions::inline_first_poll`] on (it is off by default), an
//! RPC's first step runs on its connection's reader task: what that must
//! and must not change.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{TEST_LIMIT, within};
use drpc_conn::{CallOptions, Conn, ConnOptions};
use drpc_manager::ManagerOptions;
use drpc_mux::{Mux, RequestContext, ServerReceiver};
use drpc_server::{INLINE_STEP_HARD_LIMIT, INLINE_STEP_LIMIT, Server, ServerOptions};
use drpc_stream::{Raw, StreamOptions};

const WHO: &str = "/inline.Test/Who";
const SPIN: &str = "/inline.Test/Spin";
const SUM: &str = "/inline.Test/Sum";

/// A service whose handlers report which tokio task they ran on.
fn service(seen: Arc<Mutex<Vec<tokio::task::Id>>>) -> Mux {
    let mut mux = Mux::new();
    {
        let seen = seen.clone();
        mux.unary(WHO, Raw, move |_: RequestContext, req: Bytes| {
            seen.lock().expect("lock").push(tokio::task::id());
            async move { Ok(req) }
        });
    }
    mux.unary(SPIN, Raw, move |_: RequestContext, req: Bytes| async move {
        // Synchronous work for as many milliseconds as the request says.
        let ms: u64 = std::str::from_utf8(&req)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(ms));
        Ok(req)
    });
    mux.client_streaming(
        SUM,
        Raw,
        |_: RequestContext, mut reqs: ServerReceiver<Bytes, Raw>| async move {
            let mut total = 0u64;
            while let Some(req) = reqs.recv().await? {
                total += req.len() as u64;
            }
            Ok(Bytes::from(total.to_string()))
        },
    );
    mux
}

/// Server options with first steps run inline.
fn inline() -> ServerOptions {
    ServerOptions {
        inline_first_poll: true,
        ..ServerOptions::default()
    }
}

/// A client and a server over one in-memory connection.
fn connect(opts: ServerOptions, seen: Arc<Mutex<Vec<tokio::task::Id>>>) -> Conn {
    let (client, server_io) = tokio::io::duplex(64 * 1024);
    let server = Server::with_options(service(seen), opts);
    tokio::spawn(async move { server.serve_connection(server_io).await });
    Conn::new(client, ConnOptions::default())
}

async fn who(conn: &Conn, n: usize) {
    for i in 0..n {
        let req = Bytes::from(format!("call {i}"));
        let got: Bytes = conn
            .unary_with(&Raw, WHO, &req, &CallOptions::new())
            .await
            .expect("call");
        assert_eq!(got, req);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_handlers_run_on_the_reader_task_only_when_turned_on() {
    within(TEST_LIMIT, "inline", async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        who(&connect(inline(), seen.clone()), 5).await;
        let ids = std::mem::take(&mut *seen.lock().expect("lock"));
        assert_eq!(ids.len(), 5);
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "every call ran on the connection's reader task: {ids:?}"
        );

        // The default: a task per call.
        assert!(!ServerOptions::default().inline_first_poll);
        who(&connect(ServerOptions::default(), seen.clone()), 5).await;
        let ids = std::mem::take(&mut *seen.lock().expect("lock"));
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 5, "a task per call: {ids:?}");
    })
    .await;
}

/// Makes `n` calls whose handlers work synchronously for `took`.
async fn spin(conn: &Conn, n: usize, took: Duration) {
    let req = Bytes::from(took.as_millis().to_string());
    for _ in 0..n {
        let _: Bytes = conn
            .unary_with(&Raw, SPIN, &req, &CallOptions::new())
            .await
            .expect("spin");
    }
}

/// Whether the calls `ids` saw ran on tasks of their own, rather than on
/// the connection's `reader` task.
fn got_own_tasks(ids: &[tokio::task::Id], reader: tokio::task::Id) -> bool {
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    distinct.len() == ids.len() && !distinct.contains(&reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_first_steps_close_together_give_later_calls_their_own_tasks() {
    within(TEST_LIMIT, "slow steps", async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conn = connect(inline(), seen.clone());
        let slow = INLINE_STEP_LIMIT * 3;
        who(&conn, 1).await;
        let reader = std::mem::take(&mut *seen.lock().expect("lock"))[0];
        // (That a lone slow step is forgiven is the gate's unit tests'
        // business: here a quick step slowed down by a loaded machine
        // would make the outcome depend on timing.)
        // Three in a row.
        spin(&conn, 3, slow).await;
        who(&conn, 3).await;
        let ids = std::mem::take(&mut *seen.lock().expect("lock"));
        assert!(got_own_tasks(&ids, reader), "a task per call: {ids:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_step_over_the_hard_limit_gives_later_calls_their_own_tasks() {
    within(TEST_LIMIT, "hard limit", async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conn = connect(inline(), seen.clone());
        who(&conn, 2).await;
        spin(&conn, 1, INLINE_STEP_HARD_LIMIT + INLINE_STEP_LIMIT).await;
        who(&conn, 3).await;
        let ids = std::mem::take(&mut *seen.lock().expect("lock"));
        assert_eq!(ids[0], ids[1], "inline before the slow step");
        assert!(got_own_tasks(&ids[2..], ids[0]), "a task per call: {ids:?}");
    })
    .await;
}

/// More messages right behind the Invoke than the stream's queue holds:
/// the reader must start the handler before it waits for queue room,
/// inline or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_queue_does_not_stall_the_reader() {
    for inline_first_poll in [true, false] {
        burst(inline_first_poll).await;
    }
}

async fn burst(inline_first_poll: bool) {
    within(TEST_LIMIT, "burst", async {
        let (client, server_io) = tokio::io::duplex(1 << 20);
        let small_queue = ManagerOptions {
            stream: StreamOptions {
                recv_queue_messages: 4,
                ..StreamOptions::default()
            },
            ..ManagerOptions::default()
        };
        let server = Server::with_options(
            service(Arc::default()),
            ServerOptions {
                manager: small_queue,
                inline_first_poll,
                ..ServerOptions::default()
            },
        );
        tokio::spawn(async move { server.serve_connection(server_io).await });
        let conn = Conn::new(client, ConnOptions::default());
        let mut call = conn
            .stream_with::<Bytes, Bytes, _>(Raw, SUM, &CallOptions::new())
            .await
            .expect("open");
        for _ in 0..100 {
            call.send(&Bytes::from_static(b"abc")).await.expect("send");
        }
        let total = call.close_and_recv().await.expect("sum");
        assert_eq!(total, "300");
        // The connection still serves.
        who(&conn, 1).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_inline_calls_on_one_connection() {
    within(TEST_LIMIT, "concurrent", async {
        let conn = connect(inline(), Arc::default());
        let calls = (0..200).map(|i| {
            let conn = conn.clone();
            async move {
                let req = Bytes::from(vec![i as u8; i % 50]);
                let got: Bytes = conn
                    .unary_with(&Raw, WHO, &req, &CallOptions::new())
                    .await
                    .expect("call");
                assert_eq!(got, req);
            }
        });
        futures_util::future::join_all(calls).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    })
    .await;
}

/// A handler whose `handle` panics before returning its future.
struct PanicsAtOnce(Mux);

impl drpc_mux::Handler for PanicsAtOnce {
    fn handle(
        &self,
        call: drpc_mux::ServerCall,
    ) -> drpc_mux::BoxFuture<Result<(), drpc_wire::CodedError>> {
        if call.ctx.rpc() == "/inline.Test/PanicAtOnce" {
            panic!("handle panicked before returning a future");
        }
        self.0.handle(call)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panicking_in_its_first_step_fails_only_its_call() {
    for inline_first_poll in [true, false] {
        panic_at_once(inline_first_poll).await;
    }
}

async fn panic_at_once(inline_first_poll: bool) {
    within(TEST_LIMIT, "panic", async {
        let (client, server_io) = tokio::io::duplex(64 * 1024);
        let opts = ServerOptions {
            inline_first_poll,
            ..ServerOptions::default()
        };
        let server = Server::with_options(PanicsAtOnce(service(Arc::default())), opts);
        tokio::spawn(async move { server.serve_connection(server_io).await });
        let conn = Conn::new(client, ConnOptions::default());
        for _ in 0..3 {
            let err = conn
                .unary_with::<Bytes, Bytes, _>(
                    &Raw,
                    "/inline.Test/PanicAtOnce",
                    &Bytes::from_static(b"x"),
                    &CallOptions::new(),
                )
                .await
                .expect_err("the call fails");
            assert_eq!(err.code(), Some(drpc_conn::Code::Internal), "{err}");
            who(&conn, 1).await;
        }
    })
    .await;
}
