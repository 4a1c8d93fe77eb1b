//! The README's code, compiled and run: a server of the Greeter service on
//! loopback, and clients calling it in every RPC shape, through a healing
//! channel, `tower` layers and an interceptor.
//!
//! Every block of Rust in the README is a run of lines of this file (or
//! of `main.rs`, `build.rs`): `tests/readme.rs` checks that, and
//! `tests/shapes.rs` runs this program, so the README cannot go stale.
//!
//! Run it with `cargo run -p drpc-examples --bin shapes`.

use std::sync::Arc;
use std::time::Duration;

use drpc_conn::{CallOptions, Code, Endpoint, Invoker, ServiceInvoker, with_interceptor};
use drpc_mux::{Mux, RequestContext, RequestStream, ResponseSink, Status};
use drpc_server::Server;
use futures_util::{SinkExt, StreamExt, TryStreamExt, stream};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// The generated code: messages, `GreeterDrpcClient`, `GreeterDrpcServer`.
pub mod greeter {
    include!(concat!(env!("OUT_DIR"), "/greeter.v1.rs"));
}

use greeter::*;

/// The service: one method of each shape; `wait` is left out.
struct Greeter;

impl GreeterDrpcServer for Greeter {
    async fn say_hello(
        &self,
        ctx: RequestContext,
        req: HelloRequest,
    ) -> Result<HelloReply, Status> {
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name must not be empty"));
        }
        let greeting = ctx
            .metadata()
            .get("greeting")
            .map_or("Hello", String::as_str);
        Ok(HelloReply {
            message: format!("{greeting}, {}!", req.name),
        })
    }

    async fn countdown(
        &self,
        _ctx: RequestContext,
        req: CountdownRequest,
        mut ticks: impl ResponseSink<Tick>,
    ) -> Result<(), Status> {
        for value in (1..=req.from).rev() {
            ticks.send(&Tick { value }).await?;
        }
        Ok(())
    }

    async fn sum(
        &self,
        _ctx: RequestContext,
        mut numbers: impl RequestStream<Number>,
    ) -> Result<Total, Status> {
        let mut total = Total::default();
        while let Some(number) = numbers.recv().await? {
            total.sum += number.value;
            total.count += 1;
        }
        Ok(total)
    }

    async fn chat(
        &self,
        _ctx: RequestContext,
        mut lines: impl RequestStream<Line>,
        mut replies: impl ResponseSink<Line>,
    ) -> Result<(), Status> {
        while let Some(line) = lines.recv().await? {
            let text = format!("you said {:?}", line.text);
            replies.send(&Line { text }).await?;
        }
        Ok(())
    }
}

/// Unary: a call, then one with metadata and a deadline.
async fn unary(client: &GreeterDrpcClient<impl Invoker>) -> anyhow::Result<String> {
    let request = HelloRequest { name: "Ada".into() };
    let reply = client.say_hello(&request).await?;

    let opts = CallOptions::new()
        .metadata("greeting", "Bonjour")
        .timeout(Duration::from_secs(2));
    let again = client.say_hello_with(&request, &opts).await?;
    Ok(format!("{} {}", reply.message, again.message))
}

/// Server streaming: the responses are a `futures` `Stream`.
async fn server_streaming(client: &GreeterDrpcClient<impl Invoker>) -> anyhow::Result<String> {
    let responses = client.countdown(&CountdownRequest { from: 3 }).await?;
    let ticks: Vec<Tick> = responses.try_collect().await?;

    let mut values = Vec::new();
    let mut responses = client.countdown(&CountdownRequest { from: 2 }).await?;
    while let Some(tick) = responses.message().await? {
        values.push(tick.value);
    }
    Ok(format!("{ticks:?} {values:?}"))
}

/// Client streaming: the sending half is also a `futures` `Sink`.
async fn client_streaming(client: &GreeterDrpcClient<impl Invoker>) -> anyhow::Result<String> {
    let mut sum = client.sum().await?;
    sum.send(&Number { value: 1 }).await?;
    let mut more = stream::iter([2, 3, 4]).map(|value| Ok(Number { value }));
    SinkExt::send_all(&mut sum, &mut more).await?;
    let total = sum.close_and_recv().await?;
    Ok(format!("sum {} of {}", total.sum, total.count))
}

/// Bidi: a sending half and a stream of responses.
async fn bidi(client: &GreeterDrpcClient<impl Invoker>) -> anyhow::Result<String> {
    let mut heard = Vec::new();
    let (mut lines, mut replies) = client.chat().await?;
    for text in ["hi", "bye"] {
        lines.send(&Line { text: text.into() }).await?;
        if let Some(reply) = replies.message().await? {
            heard.push(reply.text);
        }
    }
    drop(lines); // ends the request side (CloseSend), as `lines.close_send()` does
    let rest: Vec<Line> = replies.try_collect().await?; // the server ends the call
    Ok(format!("{heard:?}, then {} more", rest.len()))
}

/// Errors: every failure has a code to match on.
async fn errors(client: &GreeterDrpcClient<impl Invoker>) -> anyhow::Result<String> {
    let outcome = match client.say_hello(&HelloRequest::default()).await {
        Ok(reply) => reply.message,
        Err(err) => match err.code() {
            Some(Code::InvalidArgument) => format!("bad request: {err}"),
            Some(Code::Unavailable) => format!("try again later: {err}"),
            _ => return Err(err.into()),
        },
    };
    // A method the server left out.
    let err = client.wait(&WaitRequest {}).await.expect_err("not served");
    Ok(format!("{outcome}; wait: {:?}", err.code()))
}

/// Every shape through `client`, one line each.
async fn every_shape(label: &str, client: &GreeterDrpcClient<impl Invoker>) -> anyhow::Result<()> {
    println!("{label} unary: {}", unary(client).await?);
    println!(
        "{label} server streaming: {}",
        server_streaming(client).await?
    );
    println!(
        "{label} client streaming: {}",
        client_streaming(client).await?
    );
    println!("{label} bidi: {}", bidi(client).await?);
    println!("{label} errors: {}", errors(client).await?);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut mux = Mux::new();
    register_greeter_drpc(&mut mux, Arc::new(Greeter));
    let server = Server::new(mux);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move { server.serve_tcp(listener).await });

    let channel = Endpoint::tcp(addr)
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy(); // dials at the first call, and again when the connection ends
    let client = GreeterDrpcClient::new(channel.clone()); // clone it freely: calls multiplex
    every_shape("channel", &client).await?;

    // tower layers wrap unary calls; streaming calls go to the channel.
    let layered = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .concurrency_limit(64)
        .service(channel.clone());
    let client = GreeterDrpcClient::new(ServiceInvoker::new(layered, channel.clone()));
    every_shape("layered", &client).await?;

    // An interceptor: every call, unary or streaming, carries a token.
    let authed = with_interceptor(channel, |_path, opts| {
        Ok(opts.metadata("authorization", "Bearer t0k3n"))
    });
    let client = GreeterDrpcClient::new(authed);
    every_shape("intercepted", &client).await?;
    Ok(())
}
