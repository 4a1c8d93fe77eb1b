//! The scenarios against servers that answer otherwise than this crate's:
//! what they must accept (other servers' clear answers) and what they must
//! catch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use drpc_interop::pb::{In, Out, ServiceDrpcServer, register_service_drpc};
use drpc_interop::scenarios::{ClientConfig, run_scenario};
use drpc_interop::{InteropService, service_mux};
use drpc_mux::{BoxFuture, CodedError, Handler, Mux, RequestContext, ResponseSink, ServerCall};
use drpc_server::{Server, ServerOptions};

/// Serves `handler` with `opts` on a loopback port; its address.
async fn start(handler: impl Handler, opts: ServerOptions) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let server = Server::with_options(handler, opts);
    tokio::spawn(async move { server.serve_tcp(listener).await });
    addr
}

/// Answers unknown paths as the reference Go server does (no code), or
/// with another text.
struct UnknownAnswer {
    mux: Mux,
    text: &'static str,
}

impl Handler for UnknownAnswer {
    fn handle(&self, call: ServerCall) -> BoxFuture<Result<(), CodedError>> {
        if self
            .mux
            .routes()
            .iter()
            .any(|(rpc, _)| *rpc == call.ctx.rpc())
        {
            return self.mux.handle(call);
        }
        let err = CodedError::new(0, self.text.replace("{}", &format!("{:?}", call.ctx.rpc())));
        Box::pin(async move { Err(err) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_accepts_the_reference_go_answer() {
    let go = UnknownAnswer {
        mux: service_mux(),
        text: "protocol error: unknown rpc: {}",
    };
    let addr = start(go, ServerOptions::default()).await;
    run_scenario(&ClientConfig::new(addr), "unknown_method")
        .await
        .expect("code 0 and the reference text pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_fails_on_an_error_that_does_not_say_so() {
    let vague = UnknownAnswer {
        mux: service_mux(),
        text: "something went wrong",
    };
    let addr = start(vague, ServerOptions::default()).await;
    let err = run_scenario(&ClientConfig::new(addr), "unknown_method")
        .await
        .expect_err("an unclear error fails");
    assert!(err.contains("unknown rpc"), "{err}");
}

/// Blocks its OS thread for a second at the start of the first call's
/// first poll, before it looks at the request, then serves as
/// [`service_mux`].
struct BlocksFirstCall {
    mux: Arc<Mux>,
    blocked: AtomicBool,
}

impl Handler for BlocksFirstCall {
    fn handle(&self, call: ServerCall) -> BoxFuture<Result<(), CodedError>> {
        if self.blocked.swap(true, Ordering::SeqCst) {
            return self.mux.handle(call);
        }
        let mux = self.mux.clone();
        Box::pin(async move {
            std::thread::sleep(Duration::from_secs(1));
            mux.handle(call).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_handler_isolation_catches_a_blocked_connection() {
    // First steps run on the connection's reader: the blocking handler
    // stops the connection for its whole second.
    let opts = ServerOptions {
        inline_first_poll: true,
        ..ServerOptions::default()
    };
    let blocking = BlocksFirstCall {
        mux: Arc::new(service_mux()),
        blocked: AtomicBool::new(false),
    };
    let addr = start(blocking, opts).await;
    let err = run_scenario(&ClientConfig::new(addr), "blocking_handler_isolation")
        .await
        .expect_err("a blocked connection fails");
    assert!(err.contains("within 250ms"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_handler_isolation_passes_with_a_task_per_call() {
    let addr = start(service_mux(), ServerOptions::default()).await;
    for sequential in [false, true] {
        let mut cfg = ClientConfig::new(addr.clone());
        cfg.sequential = sequential;
        run_scenario(&cfg, "blocking_handler_isolation")
            .await
            .unwrap_or_else(|e| panic!("sequential = {sequential}: {e}"));
    }
}

/// Method3 sends `messages` messages, then ends as `end` says; the other
/// methods are [`InteropService`]'s.
struct ShortStream {
    messages: usize,
    end: Option<CodedError>,
}

impl ServiceDrpcServer for ShortStream {
    async fn method1(&self, ctx: RequestContext, req: In) -> Result<Out, CodedError> {
        InteropService.method1(ctx, req).await
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
        for _ in 0..self.messages {
            responses.send(&out).await?;
        }
        match &self.end {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

async fn slow_reader_against(stream: ShortStream) -> Result<(), String> {
    let mut mux = Mux::new();
    register_service_drpc(&mut mux, Arc::new(stream));
    let addr = start(mux, ServerOptions::default()).await;
    run_scenario(&ClientConfig::new(addr), "slow_reader_isolation").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_isolation_accepts_a_stream_failed_for_resource_exhaustion() {
    for end in [
        CodedError::new(8, "stream queue full"),
        CodedError::new(0, "drpc: resource exhausted: receive queue full"),
    ] {
        slow_reader_against(ShortStream {
            messages: 3,
            end: Some(end.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("{end:?}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_isolation_fails_streams_that_deliver_nothing_or_end_early() {
    let err = slow_reader_against(ShortStream {
        messages: 0,
        end: Some(CodedError::new(8, "resource exhausted")),
    })
    .await
    .expect_err("failed before its first message");
    assert!(err.contains("receive 0 failed"), "{err}");

    let err = slow_reader_against(ShortStream {
        messages: 3,
        end: Some(CodedError::new(13, "internal")),
    })
    .await
    .expect_err("another error");
    assert!(err.contains("receive 3 failed"), "{err}");

    let err = slow_reader_against(ShortStream {
        messages: 3,
        end: None,
    })
    .await
    .expect_err("ended early");
    assert!(err.contains("ended after 3 messages"), "{err}");
}
