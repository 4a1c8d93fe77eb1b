//! One interceptor checks calls arriving over DRPC and over the generated
//! gRPC adapter alike, and the adapter cancels each call's token when the
//! gRPC call ends.

use std::sync::Arc;
use std::time::Duration;

use drpc_codegen_tests::test::echo::v1::echo_client::EchoClient;
use drpc_codegen_tests::test::echo::v1::echo_server::EchoServer;
use drpc_codegen_tests::test::echo::v1::{
    EchoDrpcClient, EchoDrpcServer, EchoGrpcAdapter, Msg, register_echo_drpc,
};
use drpc_conn::{CallOptions, Conn, ConnOptions};
use drpc_mux::{CodedError, Interceptor, Mux, RequestContext, RequestStream, ResponseSink};
use drpc_server::Server;
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// What the auth interceptor tells the handler.
#[derive(Debug)]
struct User(String);

const OPEN: &str = "/test.echo.v1.Echo/Repeat";

fn auth() -> Interceptor {
    Interceptor::new(|ctx: &mut RequestContext| {
        let token = ctx
            .metadata()
            .get("authorization")
            .ok_or_else(|| CodedError::unauthenticated("missing token"))?;
        let user = token
            .strip_prefix("Bearer ")
            .ok_or_else(|| CodedError::unauthenticated("bad token"))?;
        let user = User(user.to_owned());
        ctx.extensions_mut().insert(user);
        Ok(())
    })
    .skip(OPEN)
}

fn user(ctx: &RequestContext) -> String {
    ctx.extensions()
        .get::<User>()
        .map_or_else(|| "anonymous".to_owned(), |u| u.0.clone())
}

/// Answers with the caller's name; reports when each call starts and when
/// its context is cancelled.
struct Service {
    events: mpsc::UnboundedSender<String>,
}

impl Service {
    /// Reports `started:{what}` now and `cancelled:{what}` once `ctx` is.
    fn watch(&self, ctx: &RequestContext, what: &str) {
        let token = ctx.cancellation_token().clone();
        let events = self.events.clone();
        let what = what.to_owned();
        let _ = self.events.send(format!("started:{what}"));
        tokio::spawn(async move {
            token.cancelled().await;
            let _ = events.send(format!("cancelled:{what}"));
        });
    }
}

impl EchoDrpcServer for Service {
    async fn say(&self, ctx: RequestContext, request: Msg) -> Result<Msg, CodedError> {
        self.watch(&ctx, &request.text);
        if request.text == "wait" {
            std::future::pending::<()>().await;
        }
        Ok(Msg {
            text: user(&ctx),
            ..request
        })
    }

    async fn count(
        &self,
        ctx: RequestContext,
        mut requests: impl RequestStream<Msg>,
    ) -> Result<Msg, CodedError> {
        self.watch(&ctx, "count");
        let mut n = 0;
        while requests.recv().await?.is_some() {
            n += 1;
        }
        Ok(Msg {
            n,
            text: user(&ctx),
            opt: None,
        })
    }

    async fn repeat(
        &self,
        ctx: RequestContext,
        request: Msg,
        mut responses: impl ResponseSink<Msg>,
    ) -> Result<(), CodedError> {
        let text = user(&ctx);
        responses.send(&Msg { text, ..request }).await
    }

    async fn chat(
        &self,
        ctx: RequestContext,
        mut requests: impl RequestStream<Msg>,
        mut responses: impl ResponseSink<Msg>,
    ) -> Result<(), CodedError> {
        while let Some(m) = requests.recv().await? {
            let text = format!("{}:{}", user(&ctx), m.text);
            responses.send(&Msg { text, ..m }).await?;
        }
        Ok(())
    }
}

fn msg(text: &str) -> Msg {
    Msg {
        text: text.into(),
        n: 1,
        opt: None,
    }
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", "Bearer alice".parse().expect("ascii"));
    request
}

/// Waits for `want` among the service's events.
async fn event(events: &mut mpsc::UnboundedReceiver<String>, want: &str) {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {want} within 5s"))
            .expect("events open");
        if got == want {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_interceptor_checks_drpc_and_grpc_calls_alike() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (tx, mut events) = mpsc::unbounded_channel();
        let service = Arc::new(Service { events: tx });
        let auth = auth();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc_addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(EchoServer::with_interceptor(
                    EchoGrpcAdapter::new(service.clone()),
                    auth.clone(),
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        let mut mux = Mux::new();
        register_echo_drpc(&mut mux, service.clone());
        mux.with_interceptor(auth);
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let drpc_server = Server::new(mux);
        tokio::spawn(async move { drpc_server.serve_connection(server_io).await });
        let drpc = EchoDrpcClient::new(Conn::new(client_io, ConnOptions::default()));
        let mut grpc = EchoClient::connect(format!("http://{grpc_addr}")).await?;
        let token = CallOptions::new().metadata("authorization", "Bearer alice");

        // Unary: rejected without a token, with the interceptor's code.
        let status = grpc.say(msg("hi")).await.expect_err("no token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "missing token");
        let err = drpc.say(&msg("hi")).await.expect_err("no token");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unauthenticated));
        // With one, the handler sees what the interceptor inserted.
        assert_eq!(
            grpc.say(authorized(msg("hi"))).await?.into_inner().text,
            "alice"
        );
        assert_eq!(drpc.say_with(&msg("hi"), &token).await?.text, "alice");

        // Client streaming.
        let status = grpc
            .count(tokio_stream::iter(vec![msg("a")]))
            .await
            .expect_err("no token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let got = grpc
            .count(authorized(tokio_stream::iter(vec![msg("a"), msg("b")])))
            .await?
            .into_inner();
        assert_eq!((got.n, got.text.as_str()), (2, "alice"));
        let mut call = drpc.count().await?;
        let err = call.close_and_recv().await.expect_err("no token");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unauthenticated));
        let mut call = drpc.count_with(&token).await?;
        call.send(&msg("a")).await?;
        let got = call.close_and_recv().await?;
        assert_eq!((got.n, got.text.as_str()), (1, "alice"));

        // Bidi.
        let status = grpc
            .chat(tokio_stream::iter(vec![msg("x")]))
            .await
            .expect_err("no token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let echoed: Vec<String> = grpc
            .chat(authorized(tokio_stream::iter(vec![msg("x")])))
            .await?
            .into_inner()
            .map(|m| m.map(|m| m.text))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert_eq!(echoed, ["alice:x"]);
        let (_sender, mut responses) = drpc.chat().await?;
        let err = responses.message().await.expect_err("no token");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unauthenticated));

        // The opted-out method needs no token, over either protocol.
        let got: Vec<String> = grpc
            .repeat(msg("r"))
            .await?
            .into_inner()
            .map(|m| m.map(|m| m.text))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert_eq!(got, ["anonymous"]);
        let got: Vec<String> = drpc
            .repeat(&msg("r"))
            .await?
            .map(|m| m.map(|m| m.text))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert_eq!(got, ["anonymous"]);

        // A finished gRPC call's token is cancelled, as a DRPC one's is.
        grpc.say(authorized(msg("done"))).await?;
        event(&mut events, "cancelled:done").await;

        // A unary gRPC call the client abandons is cancelled.
        let mut client = grpc.clone();
        let call = tokio::spawn(async move { client.say(authorized(msg("wait"))).await });
        event(&mut events, "started:wait").await;
        call.abort();
        event(&mut events, "cancelled:wait").await;

        // So is a client-streaming one.
        let mut client = grpc.clone();
        let call = tokio::spawn(async move {
            let never_ends = tokio_stream::iter(vec![msg("a")]).chain(tokio_stream::pending());
            client.count(authorized(never_ends)).await
        });
        event(&mut events, "started:count").await;
        call.abort();
        event(&mut events, "cancelled:count").await;
        anyhow::Ok(())
    })
    .await?
}
