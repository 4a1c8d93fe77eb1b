//! The same service over tonic (gRPC over HTTP/2), for the benchmarks'
//! comparison column: a native tonic server ([`TonicService`], tonic's
//! generated server trait implemented directly, nothing of DRPC in the
//! path) and a bench client ([`run_grpc_bench`]) of the same shapes as
//! [`run_bench`](crate::bench::run_bench), reporting the same one-line
//! [`BenchResult`].
//!
//! Both sides are written the way a tonic user would write them, with
//! tonic's defaults (HTTP/2 windows, buffers, `TCP_NODELAY`): a server
//! stream is a `Stream` whose messages are always ready, so tonic packs
//! as many as fit into each write; a client stream is fed through a
//! bounded channel ([`STREAM_CHANNEL_CAPACITY`]).
//!
//! Where gRPC cannot say what the contract says, the service does the
//! nearest thing: `Method1` with `in == -1` fails with status code 2
//! (Unknown) and message `boom`, since gRPC codes stop at 16; `in == -3`
//! returns the request's ASCII metadata without HTTP/2's and gRPC's own
//! headers (`content-type`, `te`, `user-agent`, `grpc-*`).

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt as _;
use futures_util::stream;
use tokio::net::TcpListener;
use tokio::sync::{Barrier, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::bench::{BenchConfig, BenchResult, Kind, OpClock, gather, stream_chunk};
use crate::pb::{In, Out};

/// tonic's code for `service.proto` (tonic-prost-build, on the messages
/// of [`crate::pb`]): `service_client::ServiceClient` and
/// `service_server::{Service, ServiceServer}`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    unreachable_pub
)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/tonic/service.rs"));
}

use pb::service_client::ServiceClient;
use pb::service_server::{Service, ServiceServer};

/// How many messages a client stream's sender may run ahead of what tonic
/// has taken to encode (tonic's own streaming example uses 128).
pub const STREAM_CHANNEL_CAPACITY: usize = 128;

/// The gRPC status message of `Method1` with `in == -1`.
const BOOM: &str = "boom";

/// The implementation of `service.Service` over tonic, with the behaviour
/// table of the contract (see the [module](self) for the two departures
/// gRPC forces):
///
/// * Method1 echoes `In` as `Out`; `in == -1` fails (Unknown, `boom`);
///   `in == -2` waits until the call is cancelled; `in == -3` returns the
///   request metadata as sorted `key=value\n` lines; `in == -4` blocks its
///   OS thread for a second, then echoes.
/// * Method2 returns `Out` built from the last `In`, with `out` = the
///   number of messages received.
/// * Method3 sends `in.in` copies of `Out{out: 1, buf: in.buf}`, as a
///   stream whose every message is ready at once.
/// * Method4 echoes every `In` until the client closes its sending side.
#[derive(Debug, Default, Clone, Copy)]
pub struct TonicService;

/// The responses of Method3: `in` clones of one `Out` (a reference count
/// each: `buf` is `Bytes`), never pending.
pub type Method3Stream =
    stream::Iter<std::iter::Map<std::iter::RepeatN<Out>, fn(Out) -> Result<Out, Status>>>;

/// The responses of Method4: each request echoed as it arrives.
pub type Method4Stream = stream::Map<Streaming<In>, fn(Result<In, Status>) -> Result<Out, Status>>;

#[tonic::async_trait]
impl Service for TonicService {
    async fn method1(&self, request: Request<In>) -> Result<Response<Out>, Status> {
        let metadata = request.metadata().clone();
        let req = request.into_inner();
        match req.r#in {
            -1 => Err(Status::unknown(BOOM)),
            // tonic drops the handler when the client resets the stream.
            -2 => std::future::pending().await,
            -3 => {
                let mut pairs: Vec<(String, String)> = metadata
                    .iter()
                    .filter_map(|entry| match entry {
                        tonic::metadata::KeyAndValueRef::Ascii(key, value) => {
                            Some((key.to_string(), value.to_str().ok()?.to_owned()))
                        }
                        tonic::metadata::KeyAndValueRef::Binary(..) => None,
                    })
                    .filter(|(key, _)| !is_transport_header(key))
                    .collect();
                pairs.sort();
                let mut lines = String::new();
                for (key, value) in &pairs {
                    let _ = writeln!(lines, "{key}={value}");
                }
                Ok(Response::new(Out {
                    out: pairs.len() as i64,
                    buf: lines.into(),
                    opt: req.opt,
                }))
            }
            -4 => {
                // Misbehaving on purpose, as in the DRPC service.
                std::thread::sleep(std::time::Duration::from_secs(1));
                Ok(Response::new(echo(req)))
            }
            _ => Ok(Response::new(echo(req))),
        }
    }

    async fn method2(&self, request: Request<Streaming<In>>) -> Result<Response<Out>, Status> {
        let mut requests = request.into_inner();
        let mut count = 0i64;
        let mut last = In::default();
        while let Some(req) = requests.message().await? {
            count += 1;
            last = req;
        }
        Ok(Response::new(Out {
            out: count,
            buf: last.buf,
            opt: last.opt,
        }))
    }

    type Method3Stream = Method3Stream;

    async fn method3(&self, request: Request<In>) -> Result<Response<Method3Stream>, Status> {
        let req = request.into_inner();
        let out = Out {
            out: 1,
            buf: req.buf,
            opt: None,
        };
        let count = usize::try_from(req.r#in.max(0)).unwrap_or(usize::MAX);
        let ok: fn(Out) -> Result<Out, Status> = Ok;
        Ok(Response::new(stream::iter(
            std::iter::repeat_n(out, count).map(ok),
        )))
    }

    type Method4Stream = Method4Stream;

    async fn method4(
        &self,
        request: Request<Streaming<In>>,
    ) -> Result<Response<Method4Stream>, Status> {
        let echoed: fn(Result<In, Status>) -> Result<Out, Status> = |req| req.map(echo);
        Ok(Response::new(request.into_inner().map(echoed)))
    }
}

/// Headers of HTTP/2 and gRPC themselves, which `Method1` with `in == -3`
/// leaves out of the metadata it returns.
fn is_transport_header(key: &str) -> bool {
    matches!(key, "content-type" | "te" | "user-agent") || key.starts_with("grpc-")
}

fn echo(req: In) -> Out {
    Out {
        out: req.r#in,
        buf: req.buf,
        opt: req.opt,
    }
}

/// [`TonicService`] as tonic's routable service, accepting and sending
/// messages of at most `max_message_size` bytes.
pub fn grpc_service(max_message_size: usize) -> ServiceServer<TonicService> {
    ServiceServer::new(TonicService)
        .max_decoding_message_size(max_message_size)
        .max_encoding_message_size(max_message_size)
}

/// Serves [`grpc_service`] on `listener` with tonic's transport (its
/// defaults, `TCP_NODELAY` on) until `shutdown` resolves, then lets the
/// calls in flight finish.
pub async fn serve_grpc(
    listener: TcpListener,
    max_message_size: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(grpc_service(max_message_size))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Runs a benchmark against a gRPC server of the service (such as
/// [`serve_grpc`]) with tonic's client: the shapes and report of
/// [`run_bench`](crate::bench::run_bench). `cfg.conns` HTTP/2
/// connections (tonic `Channel`s), `cfg.conc` tasks on them round-robin,
/// each with its own stream for the streaming kinds.
///
/// HTTP/2 always multiplexes and always has its own flow control:
/// `cfg.sequential` is refused, `cfg.flow_control` is not used.
pub async fn run_grpc_bench(cfg: &BenchConfig) -> Result<BenchResult, String> {
    if cfg.conc == 0 || cfg.conns == 0 {
        return Err("--conc and --conns must be at least 1".into());
    }
    if cfg.sequential {
        return Err("gRPC has no sequential mode: HTTP/2 always multiplexes".into());
    }
    let uri = if cfg.addr.contains("://") {
        cfg.addr.clone()
    } else {
        format!("http://{}", cfg.addr)
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| format!("address {}: {e}", cfg.addr))?;
    let mut channels = Vec::with_capacity(cfg.conns);
    for _ in 0..cfg.conns {
        // One `connect` is one HTTP/2 connection.
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connecting to {}: {e}", cfg.addr))?;
        channels.push(channel);
    }
    let request = cfg.size.request();
    let bytes_per_op = prost::Message::encoded_len(&request);
    let barrier = Arc::new(Barrier::new(cfg.conc + 1));
    let mut tasks = Vec::with_capacity(cfg.conc);
    for i in 0..cfg.conc {
        let client = ServiceClient::new(channels[i % channels.len()].clone())
            .max_decoding_message_size(cfg.max_message_size)
            .max_encoding_message_size(cfg.max_message_size);
        let (request, barrier) = (request.clone(), barrier.clone());
        let (kind, duration, chunk) = (cfg.kind, cfg.duration, stream_chunk(cfg.size));
        tasks.push(tokio::spawn(async move {
            let opened = open(client.clone(), kind, &request).await;
            barrier.wait().await;
            worker(client, opened?, request, chunk, OpClock::new(duration)).await
        }));
    }
    let run = gather(&barrier, tasks).await;
    drop(channels);
    run.into_result(cfg, bytes_per_op)
}

/// The call that stays open for a task's operations.
enum Open {
    Unary,
    /// Method2: the sender feeding its request stream, and the call
    /// itself, running in a task of its own until the sender is dropped.
    InStream(
        mpsc::Sender<In>,
        tokio::task::JoinHandle<Result<Response<Out>, Status>>,
    ),
    OutStream(Streaming<Out>),
    Bidi(mpsc::Sender<In>, Streaming<Out>),
}

async fn open(
    mut client: ServiceClient<Channel>,
    kind: Kind,
    request: &In,
) -> Result<Open, String> {
    let failed = |e: Status| format!("opening the {} stream: {e}", kind.name());
    Ok(match kind {
        Kind::Unary => Open::Unary,
        Kind::InStream => {
            let (tx, rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
            let call = tokio::spawn(async move { client.method2(ReceiverStream::new(rx)).await });
            Open::InStream(tx, call)
        }
        Kind::OutStream => {
            let req = In {
                r#in: i64::MAX,
                ..request.clone()
            };
            Open::OutStream(client.method3(req).await.map_err(failed)?.into_inner())
        }
        Kind::Bidi => {
            let (tx, rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
            let responses = client
                .method4(ReceiverStream::new(rx))
                .await
                .map_err(failed)?
                .into_inner();
            Open::Bidi(tx, responses)
        }
    })
}

/// One task's operations until `clock` says the time is up; returns each
/// operation's latency.
async fn worker(
    mut client: ServiceClient<Channel>,
    mut open: Open,
    request: In,
    chunk: usize,
    mut clock: OpClock,
) -> Result<Vec<u64>, String> {
    let closed = |n| format!("send {n} failed: the call ended");
    while let Some(start) = clock.start() {
        let n = clock.count();
        match &mut open {
            Open::Unary => {
                let out = client
                    .method1(request.clone())
                    .await
                    .map_err(|e| format!("unary call {n} failed: {e}"))?
                    .into_inner();
                if out.out != request.r#in {
                    return Err(format!("unary call {n} returned out = {}", out.out));
                }
            }
            Open::InStream(sender, _) => {
                for i in n..n + chunk {
                    sender.send(request.clone()).await.map_err(|_| closed(i))?;
                }
                clock.done_many(start, chunk);
                continue;
            }
            Open::OutStream(responses) => {
                for i in n..n + chunk {
                    match responses.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            return Err(format!("the server stream ended after {i} messages"));
                        }
                        Err(e) => return Err(format!("receive {i} failed: {e}")),
                    }
                }
                clock.done_many(start, chunk);
                continue;
            }
            Open::Bidi(sender, responses) => {
                sender.send(request.clone()).await.map_err(|_| closed(n))?;
                match responses.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(format!("the bidi stream ended after {n} messages")),
                    Err(e) => return Err(format!("receive {n} failed: {e}")),
                }
            }
        }
        clock.done(start);
    }
    let done = clock.count() as i64;
    match open {
        Open::Unary | Open::OutStream(_) => {}
        Open::InStream(sender, call) => {
            // Dropping the sender ends the request stream.
            drop(sender);
            let out = call
                .await
                .map_err(|e| format!("the client stream's task failed: {e}"))?
                .map_err(|e| format!("closing the client stream: {e}"))?
                .into_inner();
            if out.out != done {
                return Err(format!(
                    "the server counted {} messages, sent {done}",
                    out.out
                ));
            }
        }
        Open::Bidi(sender, mut responses) => {
            drop(sender);
            match responses.message().await {
                Ok(None) => {}
                Ok(Some(_)) => return Err("a message after the end of the requests".into()),
                Err(e) => return Err(format!("ending the bidi stream: {e}")),
            }
        }
    }
    Ok(clock.into_latencies())
}
