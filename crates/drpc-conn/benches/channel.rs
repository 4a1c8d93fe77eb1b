//! What a [`Channel`] costs over a bare [`Conn`]: one unary call at a time
//! (a 5-byte request echoed), through the [`Invoker`] trait as generated
//! clients call it, against a `drpc-server` over an in-memory
//! `tokio::io::duplex` (64 KiB) on a current-thread tokio runtime:
//!
//! * `unary/conn`: a [`Conn`];
//! * `unary/channel`: a [`Channel`] to the same kind of transport (its
//!   connector opens a duplex pipe served by the same server);
//! * `unary/channel_interceptor`: the channel behind a no-op interceptor
//!   (`|_, opts| Ok(opts)`: the call's options are cloned and passed
//!   through);
//! * `unary/channel_tower`: the channel as a `tower::Service` under a
//!   `ServiceBuilder` with one no-op layer (`map_request(|r| r)`), given to
//!   the client through [`ServiceInvoker`] (the request is encoded to
//!   `Bytes`, boxed as a `Request`, and the reply decoded).
//!
//! Run with `cargo bench -p drpc-conn --bench channel`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use drpc_conn::{
    CallOptions, Channel, Conn, ConnOptions, Endpoint, Invoker, Raw, Request, ServiceInvoker,
    with_interceptor,
};
use drpc_mux::{Mux, RequestContext};
use drpc_server::Server;
use tokio::runtime::Runtime;
use tower::ServiceBuilder;

const ECHO: &str = "/bench.Bench/Echo";
const PIPE: usize = 64 << 10;

fn server() -> Server {
    let mut mux = Mux::new();
    mux.unary(
        ECHO,
        Raw,
        |_: RequestContext, req: Bytes| async move { Ok(req) },
    );
    Server::new(mux)
}

/// A transport to `server`: one end of a pipe whose other end it serves.
fn pipe(server: &Server) -> tokio::io::DuplexStream {
    let (client, served) = tokio::io::duplex(PIPE);
    let server = server.clone();
    tokio::spawn(async move { server.serve_connection(served).await });
    client
}

/// Times `iters` calls made one after another.
fn run<I: Invoker>(rt: &Runtime, invoker: &I, iters: u64) -> Duration {
    rt.block_on(async {
        let req = Bytes::from_static(b"hello");
        let opts = CallOptions::new();
        let start = Instant::now();
        for _ in 0..iters {
            let reply: Bytes = invoker.invoke(&Raw, ECHO, &req, &opts).await.unwrap();
            black_box(reply);
        }
        start.elapsed()
    })
}

fn unary(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = server();
    let conn = rt.block_on(async { Conn::new(pipe(&server), ConnOptions::default()) });
    let channel: Channel = {
        let server = server.clone();
        Endpoint::from_connector("pipe", move || {
            let transport = pipe(&server);
            async move { Ok(transport) }
        })
        .connect_lazy()
    };
    let intercepted = with_interceptor(channel.clone(), |_path, opts| Ok(opts));
    let tower = ServiceInvoker::new(
        ServiceBuilder::new()
            .map_request(|r: Request| r)
            .service(channel.clone()),
        channel.clone(),
    );
    // Connect before measuring.
    run(&rt, &channel, 1);

    let mut group = c.benchmark_group("unary");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    group.bench_function("conn", |b| b.iter_custom(|n| run(&rt, &conn, n)));
    group.bench_function("channel", |b| b.iter_custom(|n| run(&rt, &channel, n)));
    group.bench_function("channel_interceptor", |b| {
        b.iter_custom(|n| run(&rt, &intercepted, n))
    });
    group.bench_function("channel_tower", |b| b.iter_custom(|n| run(&rt, &tower, n)));
    group.finish();
}

criterion_group!(benches, unary);
criterion_main!(benches);
