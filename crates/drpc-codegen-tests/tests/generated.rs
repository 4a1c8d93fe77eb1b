//! The generated client and server talk to each other over an in-memory
//! transport, for every RPC shape.

use std::sync::Arc;
use std::time::Duration;

use drpc_codegen_tests::bare::{
    BARE_DRPC_METHODS, BareDrpcClient, BareDrpcServer, Beat, register_bare_drpc,
};
use drpc_codegen_tests::test::echo::v1::{
    ECHO_DRPC_METHODS, EchoDrpcClient, EchoDrpcServer, Msg, register_echo_drpc,
};
use drpc_conn::{CallOptions, Conn, ConnOptions};
use drpc_mux::{CodedError, MethodKind, Mux, RequestContext, RequestStream, ResponseSink};
use drpc_server::Server;
use futures_util::StreamExt;

struct EchoImpl;

impl EchoDrpcServer for EchoImpl {
    async fn say(&self, ctx: RequestContext, request: Msg) -> Result<Msg, CodedError> {
        if request.n < 0 {
            return Err(CodedError::new(42, "negative"));
        }
        let suffix = ctx.metadata().get("suffix").cloned().unwrap_or_default();
        Ok(Msg {
            text: request.text + &suffix,
            ..request
        })
    }

    async fn count(
        &self,
        _ctx: RequestContext,
        mut requests: impl RequestStream<Msg>,
    ) -> Result<Msg, CodedError> {
        let mut n = 0;
        let mut text = String::new();
        while let Some(m) = requests.recv().await? {
            n += 1;
            text.push_str(&m.text);
        }
        Ok(Msg { text, n, opt: None })
    }

    async fn repeat(
        &self,
        _ctx: RequestContext,
        request: Msg,
        mut responses: impl ResponseSink<Msg>,
    ) -> Result<(), CodedError> {
        for i in 0..request.n {
            let msg = Msg {
                text: request.text.clone(),
                n: i,
                opt: None,
            };
            responses.send(&msg).await?;
        }
        Ok(())
    }

    async fn chat(
        &self,
        _ctx: RequestContext,
        mut requests: impl RequestStream<Msg>,
        mut responses: impl ResponseSink<Msg>,
    ) -> Result<(), CodedError> {
        while let Some(m) = requests.recv().await? {
            responses.send(&m).await?;
        }
        Ok(())
    }
}

struct BareImpl;

impl BareDrpcServer for BareImpl {
    async fn ping(&self, _ctx: RequestContext, request: Beat) -> Result<Beat, CodedError> {
        Ok(Beat {
            seq: request.seq + 1,
        })
    }
}

/// A client connected to a server of both services over a pipe.
fn connect() -> Conn {
    let mut mux = Mux::new();
    register_echo_drpc(&mut mux, Arc::new(EchoImpl));
    register_bare_drpc(&mut mux, Arc::new(BareImpl));
    let server = Server::new(mux);
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move { server.serve_connection(server_io).await });
    Conn::new(client_io, ConnOptions::default())
}

fn msg(text: &str, n: i64) -> Msg {
    Msg {
        text: text.into(),
        n,
        opt: Some(7),
    }
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test timed out")
}

#[tokio::test]
async fn unary_with_metadata_and_error_code() {
    bounded(async {
        let client = EchoDrpcClient::new(connect());
        let reply = client.say(&msg("hi", 1)).await.expect("say");
        assert_eq!(reply, msg("hi", 1));
        let opts = CallOptions::new().metadata("suffix", "!");
        let reply = client.say_with(&msg("hi", 1), &opts).await.expect("say");
        assert_eq!(reply.text, "hi!");
        let err = client.say(&msg("x", -1)).await.expect_err("fails");
        assert_eq!(err.code(), Some(drpc_conn::Code::from(42)));
        assert_eq!(err.remote_message(), Some("negative"));
    })
    .await
}

#[tokio::test]
async fn client_streaming() {
    bounded(async {
        let client = EchoDrpcClient::new(connect());
        let mut call = client.count().await.expect("open");
        for word in ["a", "b", "c"] {
            call.send(&msg(word, 0)).await.expect("send");
        }
        let total = call.close_and_recv().await.expect("response");
        assert_eq!((total.text.as_str(), total.n), ("abc", 3));
    })
    .await
}

#[tokio::test]
async fn server_streaming_is_a_stream() {
    bounded(async {
        let client = EchoDrpcClient::new(connect());
        let responses = client.repeat(&msg("r", 5)).await.expect("open");
        let all: Vec<Msg> = responses.map(|r| r.expect("response")).collect().await;
        assert_eq!(all.iter().map(|m| m.n).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        // The same generated shape under another method name.
        let mut responses = client
            .streaming_output_call(&msg("s", 1))
            .await
            .expect("open");
        let err = responses.message().await.expect_err("unimplemented");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unimplemented));
    })
    .await
}

#[tokio::test]
async fn bidi_halves() {
    bounded(async {
        let client = EchoDrpcClient::new(connect());
        let (mut sender, mut responses) = client.chat().await.expect("open");
        for i in 0..10 {
            sender.send(&msg("ping", i)).await.expect("send");
            let echo = responses.message().await.expect("recv").expect("a message");
            assert_eq!(echo.n, i);
        }
        sender.close_send().expect("close");
        assert!(responses.message().await.expect("clean end").is_none());
    })
    .await
}

#[tokio::test]
async fn unimplemented_methods_answer_code_12_and_the_connection_survives() {
    bounded(async {
        let conn = connect();
        let client = EchoDrpcClient::new(conn.clone());
        let err = client
            .missing(&msg("m", 0))
            .await
            .expect_err("unimplemented");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unimplemented));
        assert_eq!(err.remote_message(), Some("Unimplemented"));
        // A keyword-named method is a raw identifier and still works on
        // the wire.
        let err = client
            .r#type(&msg("t", 0))
            .await
            .expect_err("unimplemented");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unimplemented));
        assert_eq!(client.say(&msg("ok", 0)).await.expect("say").text, "ok");
    })
    .await
}

#[tokio::test]
async fn service_without_package() {
    bounded(async {
        let client = BareDrpcClient::new(connect());
        assert_eq!(client.ping(&Beat { seq: 1 }).await.expect("ping").seq, 2);
    })
    .await
}

#[test]
fn method_tables_in_declaration_order_with_go_paths() {
    let echo: Vec<_> = ECHO_DRPC_METHODS.iter().map(|m| (m.rpc, m.kind)).collect();
    assert_eq!(
        echo,
        [
            ("/test.echo.v1.Echo/Say", MethodKind::Unary),
            ("/test.echo.v1.Echo/Count", MethodKind::ClientStreaming),
            ("/test.echo.v1.Echo/Repeat", MethodKind::ServerStreaming),
            ("/test.echo.v1.Echo/Chat", MethodKind::Bidi),
            ("/test.echo.v1.Echo/Missing", MethodKind::Unary),
            (
                "/test.echo.v1.Echo/StreamingOutputCall",
                MethodKind::ServerStreaming
            ),
            ("/test.echo.v1.Echo/Type", MethodKind::Unary),
        ]
    );
    assert_eq!(BARE_DRPC_METHODS[0].rpc, "/Bare/Ping");
    let mut mux = Mux::new();
    register_echo_drpc(&mut mux, Arc::new(EchoImpl));
    assert_eq!(mux.routes().len(), ECHO_DRPC_METHODS.len());
}
