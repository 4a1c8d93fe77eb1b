//! Criterion benchmarks of a client and a server [`Manager`] over an
//! in-memory `tokio::io::duplex` (1 MiB buffer) on a multi-thread tokio
//! runtime, with an echo server task that accepts every stream and serves
//! it from its own task:
//!
//! * `unary/round_trip_2B`: one call at a time: `open_stream`, send 2
//!   bytes, `close_send`, receive the echo, receive the end;
//! * `stream_1/{2KiB,1MiB}`: one stream per iteration carrying 8 MiB in
//!   messages of that size to a server handler that counts the bytes and
//!   answers with the count (throughput in message bytes);
//! * `streams_64/{2KiB,1MiB}`: the same with 64 streams at once, each from
//!   its own task (128 KiB per stream at 2 KiB, 8 MiB in all; one message
//!   per stream at 1 MiB, 64 MiB in all);
//! * `compression/{text,random}_1MiB/{off,snappy}`: as `stream_1/1MiB`
//!   (8 messages of 1 MiB on one stream, throughput in uncompressed
//!   bytes), with messages of repeated text (about 20:1 with Snappy) or of
//!   random bytes (incompressible), without compression and with the
//!   stream compressed (compressed by the sender, decompressed by the
//!   server's handler as it receives).
//!
//! Run with `cargo bench -p drpc-manager --bench manager`. Each benchmark
//! warms up for 1 s and measures for 3 s over 10 samples.

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use drpc_manager::{Incoming, Manager, ManagerOptions, Role};
use drpc_stream::{MessageBatch, Stream};
use drpc_wire::{Compression, Metadata};
use tokio::runtime::Runtime;

const DUPLEX_BUFFER: usize = 1 << 20;
const ECHO: &str = "/bench.Bench/Echo";
const SINK: &str = "/bench.Bench/Sink";
const CONCURRENT_STREAMS: usize = 64;

/// A client and a server manager over one in-memory transport, with the
/// server's accept loop running.
struct Pair {
    client: Manager,
    server: Manager,
}

impl Pair {
    fn new(rt: &Runtime) -> Pair {
        rt.block_on(async {
            let (a, b) = tokio::io::duplex(DUPLEX_BUFFER);
            let client = Manager::new(a, Role::Client, ManagerOptions::default());
            let server = Manager::new(b, Role::Server, ManagerOptions::default());
            let accept = server.clone();
            tokio::spawn(async move {
                while let Ok(incoming) = accept.accept().await {
                    tokio::spawn(serve(incoming));
                }
            });
            Pair { client, server }
        })
    }

    fn close(self, rt: &Runtime) {
        rt.block_on(async {
            self.client.close().await;
            self.server.close().await;
        });
    }
}

/// The server's handler: echoes every message back (`ECHO`), or counts the
/// bytes received and answers with the count (`SINK`); then closes its
/// side.
async fn serve(incoming: Incoming) {
    let stream = incoming.stream;
    let echo = incoming.rpc == ECHO;
    let mut total: u64 = 0;
    loop {
        match stream.recv().await {
            Ok(Some(message)) => {
                if echo {
                    if stream.send(&message).await.is_err() {
                        return;
                    }
                } else {
                    total += message.len() as u64;
                }
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    if !echo && stream.send(&total.to_le_bytes()).await.is_err() {
        return;
    }
    let _ = stream.close_send();
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Times `iters` runs of `f`, one after the other, inside the runtime.
fn timed<F, Fut>(rt: &Runtime, iters: u64, f: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        start.elapsed()
    })
}

/// One unary call: open, send 2 bytes, close_send, receive the echo and
/// the end.
async fn unary(client: &Manager, metadata: &Metadata) {
    let stream = client
        .open_stream(ECHO, metadata)
        .await
        .expect("open_stream");
    stream.send(&[0x08, 0x05]).await.expect("send");
    stream.close_send().expect("close_send");
    let reply = stream.recv().await.expect("recv").expect("a reply");
    assert_eq!(&reply[..], &[0x08, 0x05]);
    assert_eq!(stream.recv().await.expect("recv end"), None);
}

/// Sends `count` copies of `message` on a new `SINK` stream and checks the
/// server's count.
async fn upload(client: &Manager, message: &[u8], count: usize) {
    let stream: Stream = client
        .open_stream(SINK, &Metadata::new())
        .await
        .expect("open_stream");
    for _ in 0..count {
        stream.send(message).await.expect("send");
    }
    stream.close_send().expect("close_send");
    let reply = stream.recv().await.expect("recv").expect("the count");
    let total = u64::from_le_bytes(reply[..].try_into().expect("8 bytes"));
    assert_eq!(total, (message.len() * count) as u64);
    assert_eq!(stream.recv().await.expect("recv end"), None);
}

/// As [`upload`], on a stream compressed with `compression`.
async fn upload_with(
    client: &Manager,
    message: &[u8],
    count: usize,
    compression: Option<Compression>,
) {
    let stream: Stream = client
        .open_stream_with(SINK, &Metadata::new(), compression)
        .await
        .expect("open_stream");
    for _ in 0..count {
        stream.send(message).await.expect("send");
    }
    stream.close_send().expect("close_send");
    let reply = stream.recv().await.expect("recv").expect("the count");
    let total = u64::from_le_bytes(reply[..].try_into().expect("8 bytes"));
    assert_eq!(total, (message.len() * count) as u64);
    assert_eq!(stream.recv().await.expect("recv end"), None);
}

/// Sends `count` copies of `message` on a new `SINK` stream in batches of
/// `batch` ([`Stream::send_batch`]) and checks the server's count.
async fn upload_batched(client: &Manager, message: &[u8], count: usize, batch: usize) {
    let stream: Stream = client
        .open_stream(SINK, &Metadata::new())
        .await
        .expect("open_stream");
    let mut messages = MessageBatch::new();
    for sent in (0..count).step_by(batch) {
        for _ in sent..(sent + batch).min(count) {
            messages.push_encoded(message);
        }
        stream.send_batch(&mut messages).await.expect("send_batch");
    }
    stream.close_send().expect("close_send");
    let reply = stream.recv().await.expect("recv").expect("the count");
    let total = u64::from_le_bytes(reply[..].try_into().expect("8 bytes"));
    assert_eq!(total, (message.len() * count) as u64);
    assert_eq!(stream.recv().await.expect("recv end"), None);
}

/// A stream of 2-byte messages, sent one by one and in batches of 32.
fn bench_small_messages(c: &mut Criterion) {
    const COUNT: usize = 8192;
    let rt = runtime();
    let pair = Pair::new(&rt);
    let message = [0x08u8, 0x05];
    let mut group = c.benchmark_group("small_messages");
    group.throughput(Throughput::Elements(COUNT as u64));
    group.bench_function("send_each_2B", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || {
                upload(&pair.client, black_box(&message), COUNT)
            })
        });
    });
    group.bench_function("send_batch_32x2B", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || {
                upload_batched(&pair.client, black_box(&message), COUNT, 32)
            })
        });
    });
    group.finish();
    pair.close(&rt);
}

fn bench_unary(c: &mut Criterion) {
    let rt = runtime();
    let pair = Pair::new(&rt);
    let metadata = Metadata::new();
    let mut group = c.benchmark_group("unary");
    group.throughput(Throughput::Elements(1));
    group.bench_function("round_trip_2B", |b| {
        b.iter_custom(|iters| timed(&rt, iters, || unary(&pair.client, &metadata)));
    });
    group.finish();
    pair.close(&rt);
}

/// Message sizes, with how many messages one stream carries per iteration
/// alone and when 64 run at once.
const SIZES: [(&str, usize, usize, usize); 2] =
    [("2KiB", 2 << 10, 4096, 64), ("1MiB", 1 << 20, 8, 1)];

fn bench_stream_1(c: &mut Criterion) {
    let rt = runtime();
    let pair = Pair::new(&rt);
    let mut group = c.benchmark_group("stream_1");
    for (name, size, count, _) in SIZES {
        let message = vec![0xA5u8; size];
        group.throughput(Throughput::Bytes((size * count) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &message, |b, message| {
            b.iter_custom(|iters| {
                timed(&rt, iters, || {
                    upload(&pair.client, black_box(message), count)
                })
            });
        });
    }
    group.finish();
    pair.close(&rt);
}

fn bench_streams_64(c: &mut Criterion) {
    let rt = runtime();
    let pair = Pair::new(&rt);
    let mut group = c.benchmark_group("streams_64");
    for (name, size, _, count) in SIZES {
        let message = Bytes::from(vec![0xA5u8; size]);
        group.throughput(Throughput::Bytes(
            (size * count * CONCURRENT_STREAMS) as u64,
        ));
        group.bench_with_input(BenchmarkId::from_parameter(name), &message, |b, message| {
            b.iter_custom(|iters| {
                timed(&rt, iters, || async {
                    let tasks: Vec<_> = (0..CONCURRENT_STREAMS)
                        .map(|_| {
                            let client = pair.client.clone();
                            let message = message.clone();
                            tokio::spawn(async move { upload(&client, &message, count).await })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("upload task");
                    }
                })
            });
        });
    }
    group.finish();
    assert_eq!(pair.client.active_streams(), 0);
    pair.close(&rt);
}

/// 1 MiB messages of text and of random bytes, with and without Snappy.
fn bench_compression(c: &mut Criterion) {
    const SIZE: usize = 1 << 20;
    const COUNT: usize = 8;
    let rt = runtime();
    let pair = Pair::new(&rt);
    let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog; "
        .iter()
        .copied()
        .cycle()
        .take(SIZE)
        .collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut group = c.benchmark_group("compression");
    group.throughput(Throughput::Bytes((SIZE * COUNT) as u64));
    for (data, message) in [("text_1MiB", &text), ("random_1MiB", &random)] {
        for (mode, compression) in [("off", None), ("snappy", Some(Compression::Snappy))] {
            group.bench_with_input(BenchmarkId::new(data, mode), message, |b, message| {
                b.iter_custom(|iters| {
                    timed(&rt, iters, || {
                        upload_with(&pair.client, black_box(message), COUNT, compression)
                    })
                });
            });
        }
    }
    group.finish();
    pair.close(&rt);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_unary, bench_stream_1, bench_streams_64, bench_small_messages,
        bench_compression
}
criterion_main!(benches);
