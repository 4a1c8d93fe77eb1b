//! The quick start: serves the Greeter service on loopback, calls every
//! method from a client, prints what happened, and exits.
//!
//! Run it with `cargo run -p drpc-examples --bin quickstart`.

use std::sync::Arc;
use std::time::Duration;

use drpc_conn::{CallOptions, Conn, ConnOptions};
use drpc_mux::{CodedError, Mux, RequestContext, RequestStream, ResponseSink};
use drpc_server::Server;
use futures_util::StreamExt;

/// The generated code: messages, `GreeterDrpcClient`, `GreeterDrpcServer`.
pub mod greeter {
    include!(concat!(env!("OUT_DIR"), "/greeter.v1.rs"));
}

use greeter::*;

/// Our implementation of the service.
struct Greeter;

impl GreeterDrpcServer for Greeter {
    async fn say_hello(
        &self,
        ctx: RequestContext,
        request: HelloRequest,
    ) -> Result<HelloReply, CodedError> {
        if request.name.is_empty() {
            return Err(CodedError::new(3, "name must not be empty"));
        }
        let greeting = ctx
            .metadata()
            .get("greeting")
            .map_or("Hello", String::as_str);
        Ok(HelloReply {
            message: format!("{greeting}, {}!", request.name),
        })
    }

    async fn countdown(
        &self,
        _ctx: RequestContext,
        request: CountdownRequest,
        mut ticks: impl ResponseSink<Tick>,
    ) -> Result<(), CodedError> {
        for value in (1..=request.from).rev() {
            ticks.send(&Tick { value }).await?;
        }
        Ok(())
    }

    async fn sum(
        &self,
        _ctx: RequestContext,
        mut numbers: impl RequestStream<Number>,
    ) -> Result<Total, CodedError> {
        let mut total = Total::default();
        while let Some(n) = numbers.recv().await? {
            total.sum += n.value;
            total.count += 1;
        }
        Ok(total)
    }

    async fn chat(
        &self,
        _ctx: RequestContext,
        mut lines: impl RequestStream<Line>,
        mut replies: impl ResponseSink<Line>,
    ) -> Result<(), CodedError> {
        while let Some(line) = lines.recv().await? {
            replies
                .send(&Line {
                    text: format!("you said {:?}", line.text),
                })
                .await?;
        }
        Ok(())
    }

    async fn wait(
        &self,
        ctx: RequestContext,
        _request: WaitRequest,
    ) -> Result<WaitReply, CodedError> {
        // Never answers: the server drops this future when the call is
        // cancelled or its deadline passes.
        ctx.cancelled().await;
        Err(CodedError::new(1, "cancelled"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Server: register the implementation and serve loopback TCP.
    let mut mux = Mux::new();
    register_greeter_drpc(&mut mux, Arc::new(Greeter));
    let server = Server::new(mux);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve_tcp(listener).await }
    });
    println!("server listening on {addr}");

    // Client: one connection, every call multiplexed over it.
    let client = GreeterDrpcClient::new(Conn::connect_tcp(addr, ConnOptions::default()).await?);

    let reply = client
        .say_hello(&HelloRequest {
            name: "world".into(),
        })
        .await?;
    println!("unary:            {}", reply.message);

    let opts = CallOptions::new().metadata("greeting", "Bonjour");
    let reply = client
        .say_hello_with(
            &HelloRequest {
                name: "le monde".into(),
            },
            &opts,
        )
        .await?;
    println!("with metadata:    {}", reply.message);

    let err = client
        .say_hello(&HelloRequest::default())
        .await
        .expect_err("empty name");
    println!(
        "error with code:  code {} ({})",
        err.code().unwrap_or_default(),
        err.remote_message().unwrap_or_default()
    );

    let ticks: Vec<u32> = client
        .countdown(&CountdownRequest { from: 5 })
        .await?
        .map(|tick| tick.map(|t| t.value))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    println!("server streaming: {ticks:?}");

    let mut sum = client.sum().await?;
    for value in [1, 2, 3, 4] {
        sum.send(&Number { value }).await?;
    }
    let total = sum.close_and_recv().await?;
    println!(
        "client streaming: sum {} of {} numbers",
        total.sum, total.count
    );

    let (mut lines, mut replies) = client.chat().await?;
    for text in ["hi", "bye"] {
        lines.send(&Line { text: text.into() }).await?;
        if let Some(reply) = replies.message().await? {
            println!("bidi:             {}", reply.text);
        }
    }
    lines.close_send()?;

    let opts = CallOptions::new().timeout(Duration::from_millis(200));
    let err = client
        .wait_with(&WaitRequest {}, &opts)
        .await
        .expect_err("times out");
    println!(
        "cancelled call:   deadline exceeded = {}",
        err.is_deadline_exceeded()
    );
    let reply = client
        .say_hello(&HelloRequest {
            name: "again".into(),
        })
        .await?;
    println!("still connected:  {}", reply.message);

    server.shutdown(Duration::from_secs(1)).await;
    serving.await??;
    println!("server stopped");
    Ok(())
}
