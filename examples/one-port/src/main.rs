//! DRPC, gRPC and HTTP/JSON on one port: the Greeter's `SayHello` served
//! to a DRPC client (with and without the migration header Go's
//! `drpcmigrate` clients send), a tonic gRPC client and a plain HTTP
//! client posting JSON, all on one TCP port, then shut down.
//!
//! `drpc_server::shared_port::split` sniffs each connection's first bytes
//! and hands it to one of three routes: DRPC to the DRPC server, HTTP/2
//! (gRPC) to tonic, serving the same implementation through the generated
//! adapter, and HTTP/1 to the HTTP/JSON bridge (`drpc-http`), which calls
//! the same DRPC server in process. The interceptor and the `tower` layers
//! configured on the mux apply to all three.
//!
//! Run it with `cargo run -p drpc-example-one-port`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use drpc_conn::{CallOptions, Conn, ConnOptions, with_migration_header};
use drpc_http::Bridge;
use drpc_mux::{Call, CodedError, Interceptor, Mux, RequestContext};
use drpc_server::shared_port::{self, Route, SniffOptions};
use drpc_server::{Rewind, Server};
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

/// The generated code: messages, the DRPC client and server trait, tonic's
/// client and server, the gRPC adapter and the service's descriptors.
pub mod greeter {
    include!(concat!(env!("OUT_DIR"), "/greeter.v1.rs"));
}

use greeter::greeter_client::GreeterClient;
use greeter::greeter_server::GreeterServer;
use greeter::*;

/// Greets; the other methods answer Unimplemented.
struct Greeter;

impl GreeterDrpcServer for Greeter {
    async fn say_hello(
        &self,
        _ctx: RequestContext,
        request: HelloRequest,
    ) -> Result<HelloReply, CodedError> {
        if request.name.is_empty() {
            return Err(CodedError::invalid_argument("name must not be empty"));
        }
        Ok(HelloReply {
            message: format!("Hello, {}!", request.name),
        })
    }
}

/// Refuses calls without `client-id` metadata.
fn require_client_id() -> Interceptor {
    Interceptor::new(
        |ctx: &mut RequestContext| match ctx.metadata().get("client-id") {
            Some(_) => Ok(()),
            None => Err(CodedError::unauthenticated("no client-id")),
        },
    )
}

/// Serves each connection of `route` with `service`, in HTTP/1 or HTTP/2
/// as the client speaks.
async fn serve_http<S, B>(mut route: Route<Rewind<TcpStream>>, service: S)
where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S: Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    while let Some(Ok(conn)) = route.next().await {
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let http = auto::Builder::new(TokioExecutor::new());
            let _ = http.serve_connection(TokioIo::new(conn), service).await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let greeter = Arc::new(Greeter);
    let mut mux = Mux::new();
    register_greeter_drpc(&mut mux, greeter.clone());
    // Checks every call first, then tower layers run, on every protocol.
    mux.with_interceptor(require_client_id());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    mux.layer(
        ServiceBuilder::new()
            .timeout(Duration::from_secs(10))
            .concurrency_limit(256)
            .map_request(move |call: Call| {
                counted.fetch_add(1, Ordering::Relaxed);
                call
            }),
    );
    // The same implementation over gRPC, through the mux's interceptor and layers.
    let grpc = tonic::service::Routes::new(GreeterServer::new(GreeterGrpcAdapter::from_mux(
        greeter, &mux,
    )));
    let server = Server::new(mux);
    // HTTP/JSON calls go to the same server, in process.
    let http = Bridge::for_server(server.clone()).descriptors(GREETER_DESCRIPTOR_SET)?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let port = shared_port::split(listener, SniffOptions::new())?;
    tokio::spawn(serve_http(port.http2, grpc));
    tokio::spawn(serve_http(port.http1, http));
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve_incoming(port.drpc).await }
    });
    println!("serving DRPC, gRPC and HTTP on {addr}");

    let hello = HelloRequest {
        name: "world".into(),
    };
    let with_id = CallOptions::new().metadata("client-id", "example");

    // DRPC, as this project's clients dial (and Go's drpcconn).
    let drpc = GreeterDrpcClient::new(Conn::new(
        TcpStream::connect(addr).await?,
        ConnOptions::default(),
    ));
    let reply = drpc.say_hello_with(&hello, &with_id).await?;
    println!("drpc: {}", reply.message);
    let refused = drpc.say_hello(&hello).await.expect_err("no client-id");
    println!("drpc without client-id: {:?}", refused.code());

    // DRPC with the migration header, as Go clients of drpcmigrate dial.
    let socket = with_migration_header(TcpStream::connect(addr).await?);
    let drpc = GreeterDrpcClient::new(Conn::new(socket, ConnOptions::default()));
    let reply = drpc.say_hello_with(&hello, &with_id).await?;
    println!("drpc with the header: {}", reply.message);

    // gRPC, with tonic's client.
    let mut grpc = GreeterClient::connect(format!("http://{addr}")).await?;
    let mut request = tonic::Request::new(hello.clone());
    request
        .metadata_mut()
        .insert("client-id", "example".parse()?);
    let reply = grpc.say_hello(request).await?.into_inner();
    println!("grpc: {}", reply.message);
    let refused = grpc
        .say_hello(hello.clone())
        .await
        .expect_err("no client-id");
    println!("grpc without client-id: {:?}", refused.code());

    // HTTP/1 with JSON; metadata in drpc-md- headers.
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/greeter.v1.Greeter/SayHello");
    let reply = http
        .post(&url)
        .header("content-type", "application/json")
        .header("drpc-md-client-id", "example")
        .body(r#"{"name": "world"}"#)
        .send()
        .await?;
    println!("http: {} {}", reply.status().as_u16(), reply.text().await?);
    let reply = http
        .post(&url)
        .header("content-type", "application/json")
        .header("drpc-md-client-id", "example")
        .body(r#"{"name": ""}"#)
        .send()
        .await?;
    println!(
        "http error: {} {}",
        reply.status().as_u16(),
        reply.text().await?
    );

    println!(
        "calls past the interceptor: {}",
        calls.load(Ordering::Relaxed)
    );
    server.shutdown(Duration::from_secs(1)).await;
    serving.await??;
    println!("server stopped");
    Ok(())
}
