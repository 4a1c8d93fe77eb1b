//! The server side of the contract: `service.Service` and its options.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use std::sync::Arc;

use drpc_mux::{
    BoxFuture, CodedError, Handler, Mux, RequestContext, RequestStream, ResponseSink, ServerCall,
};
use drpc_server::{DEFAULT_MAX_CONNECTIONS, Server, ServerOptions};
use drpc_wire::DEFAULT_MAX_PACKET_SIZE;

use crate::pb::{In, Out, ServiceDrpcServer, register_service_drpc};

/// The unary method.
pub const METHOD1: &str = "/service.Service/Method1";
/// The client-streaming method.
pub const METHOD2: &str = "/service.Service/Method2";
/// The server-streaming method.
pub const METHOD3: &str = "/service.Service/Method3";
/// The bidirectional method.
pub const METHOD4: &str = "/service.Service/Method4";

/// The error code of `Method1` with `in == -1`.
pub const BOOM_CODE: u64 = 42;

/// How long `Method1` with `in == -4` blocks its OS thread (a synchronous
/// sleep) before it echoes.
const BLOCKING_HANDLER_SLEEP: Duration = Duration::from_secs(1);

/// The implementation of `service.Service` (the generated
/// [`ServiceDrpcServer`] trait), with the behaviour table of the contract:
///
/// * Method1 echoes `In` as `Out`; `in == -1` fails with code 42 and
///   `boom`; `in == -2` waits until the call is cancelled; `in == -3`
///   returns the request metadata as sorted `key=value\n` lines in `buf`
///   and the number of pairs in `out`; `in == -4` blocks its OS thread
///   for a second (a misbehaving handler), then echoes.
/// * Method2 returns `Out` built from the last `In`, with `out` = the
///   number of messages received.
/// * Method3 sends `in.in` copies of `Out{out: 1, buf: in.buf}`.
/// * Method4 echoes every `In` until the client closes its sending side.
#[derive(Debug, Default, Clone, Copy)]
pub struct InteropService;

impl ServiceDrpcServer for InteropService {
    async fn method1(&self, ctx: RequestContext, req: In) -> Result<Out, CodedError> {
        match req.r#in {
            -1 => Err(CodedError::new(BOOM_CODE, "boom")),
            -2 => {
                ctx.cancelled().await;
                // Canceled; the server normally drops the handler first.
                Err(CodedError::canceled("context canceled"))
            }
            -3 => {
                let mut lines = String::new();
                for (key, value) in ctx.metadata() {
                    let _ = writeln!(lines, "{key}={value}");
                }
                Ok(Out {
                    out: ctx.metadata().len() as i64,
                    buf: lines.into(),
                    opt: req.opt,
                })
            }
            -4 => {
                // Misbehaving on purpose: blocks the thread it runs on, as
                // a handler doing synchronous I/O or heavy work would.
                std::thread::sleep(BLOCKING_HANDLER_SLEEP);
                Ok(echo(req))
            }
            _ => Ok(echo(req)),
        }
    }

    async fn method2(
        &self,
        _ctx: RequestContext,
        mut requests: impl RequestStream<In>,
    ) -> Result<Out, CodedError> {
        let mut count = 0i64;
        let mut last = In::default();
        while let Some(req) = requests.recv().await? {
            count += 1;
            last = req;
        }
        Ok(Out {
            out: count,
            buf: last.buf,
            opt: last.opt,
        })
    }

    async fn method3(
        &self,
        _ctx: RequestContext,
        req: In,
        mut responses: impl ResponseSink<Out>,
    ) -> Result<(), CodedError> {
        let out = Out {
            out: 1,
            buf: req.buf,
            opt: None,
        };
        // In runs, appended together: a stream of small messages costs
        // about one lock per run, not per message.
        const RUN: i64 = 64;
        let mut left = req.r#in.max(0);
        while left > 0 {
            let run = left.min(RUN);
            responses
                .send_all(std::iter::repeat_n(&out, run as usize))
                .await?;
            left -= run;
        }
        Ok(())
    }

    async fn method4(
        &self,
        _ctx: RequestContext,
        mut requests: impl RequestStream<In>,
        mut responses: impl ResponseSink<Out>,
    ) -> Result<(), CodedError> {
        while let Some(req) = requests.recv().await? {
            responses.send(&echo(req)).await?;
        }
        Ok(())
    }
}

/// The router of `service.Service`: [`InteropService`] registered through
/// the generated code.
pub fn service_mux() -> Mux {
    let mut mux = Mux::new();
    register_service_drpc(&mut mux, Arc::new(InteropService));
    mux
}

fn echo(req: In) -> Out {
    Out {
        out: req.r#in,
        buf: req.buf,
        opt: req.opt,
    }
}

/// Options of `drpc-interop serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The most connections served at once.
    pub max_connections: usize,
    /// The largest message accepted from (and sent to) a client.
    pub max_message_size: usize,
    /// Log one line per RPC on stderr.
    pub verbose: bool,
    /// Flow control (`--flow-control`; default auto).
    pub flow_control: drpc_stream::FlowControl,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_message_size: DEFAULT_MAX_PACKET_SIZE,
            verbose: false,
            flow_control: drpc_stream::FlowControl::default(),
        }
    }
}

/// The server of the contract with `opts`: [`service_mux`], wrapped in a
/// [`VerboseHandler`] when `opts.verbose`.
pub fn serve(opts: &ServeOptions) -> Server {
    let mut server_opts = ServerOptions {
        max_connections: opts.max_connections,
        ..ServerOptions::default()
    };
    server_opts.manager.stream.max_packet_size = opts.max_message_size;
    server_opts.manager.stream.flow_control = opts.flow_control;
    if opts.verbose {
        Server::with_options(VerboseHandler(service_mux()), server_opts)
    } else {
        Server::with_options(service_mux(), server_opts)
    }
}

/// Wraps a handler and logs one line per RPC on stderr when it ends:
/// its path, stream id, outcome and duration.
#[derive(Debug)]
pub struct VerboseHandler<H>(pub H);

/// Logs the end of an RPC; a handler dropped before it returned was
/// cancelled.
struct RpcLog {
    rpc: String,
    stream: u64,
    start: Instant,
    outcome: Option<String>,
}

impl Drop for RpcLog {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or_else(|| "cancelled".into());
        eprintln!(
            "rpc {} stream {}: {} in {:.3} ms",
            self.rpc,
            self.stream,
            outcome,
            self.start.elapsed().as_secs_f64() * 1e3
        );
    }
}

impl<H: Handler> Handler for VerboseHandler<H> {
    fn handle(&self, call: ServerCall) -> BoxFuture<Result<(), CodedError>> {
        let log = RpcLog {
            rpc: call.ctx.rpc().to_owned(),
            stream: call.ctx.stream_id(),
            start: Instant::now(),
            outcome: None,
        };
        let fut = self.0.handle(call);
        Box::pin(async move {
            let mut log = log;
            let result = fut.await;
            log.outcome = Some(match &result {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("error code {}: {}", e.code(), e.message()),
            });
            result
        })
    }
}
