//! Methods named after Rust keywords get prost's and tonic's names (`r#type`,
//! `self_`), `_with` variants without a double underscore (`type_with`,
//! `self_with`), and keep their proto names on the wire; a service `Self`
//! gives `SelfDrpcClient`. The generated modules deny warnings (see the
//! crate's `lib.rs`), so compiling this crate is half of the test.

use std::sync::Arc;
use std::time::Duration;

use drpc_codegen_tests::test::keywords::service::{
    NOTHING_DRPC_METHODS, NothingDrpcServer, Ping, SELF_DRPC_METHODS, SelfDrpcClient,
    SelfDrpcServer, register_nothing_drpc, register_self_drpc,
};
use drpc_codegen_tests::test::keywords::v1::keywords_client::KeywordsClient;
use drpc_codegen_tests::test::keywords::v1::keywords_server::KeywordsServer;
use drpc_codegen_tests::test::keywords::v1::{
    KEYWORDS_DRPC_METHODS, KeywordsDrpcClient, KeywordsDrpcServer, KeywordsGrpcAdapter, Word,
    register_keywords_drpc,
};
use drpc_conn::{CallOptions, Conn, ConnOptions};
use drpc_mux::{CodedError, MethodKind, Mux, RequestContext, RequestStream, ResponseSink};
use drpc_server::Server;
use futures_util::StreamExt;

/// Answers with the RPC it was called as, and the request's text.
struct Keywords;

fn word(text: &str) -> Word {
    Word { text: text.into() }
}

fn answer(ctx: &RequestContext, text: &str) -> Word {
    word(&format!("{} {text}", ctx.rpc()))
}

impl KeywordsDrpcServer for Keywords {
    async fn r#type(&self, ctx: RequestContext, request: Word) -> Result<Word, CodedError> {
        Ok(answer(&ctx, &request.text))
    }

    async fn self_(&self, ctx: RequestContext, request: Word) -> Result<Word, CodedError> {
        Ok(answer(&ctx, &request.text))
    }

    async fn super_(
        &self,
        ctx: RequestContext,
        request: Word,
        mut responses: impl ResponseSink<Word>,
    ) -> Result<(), CodedError> {
        responses.send(&answer(&ctx, &request.text)).await
    }

    async fn crate_(
        &self,
        ctx: RequestContext,
        mut requests: impl RequestStream<Word>,
    ) -> Result<Word, CodedError> {
        let mut text = String::new();
        while let Some(w) = requests.recv().await? {
            text.push_str(&w.text);
        }
        Ok(answer(&ctx, &text))
    }

    async fn extern_(
        &self,
        ctx: RequestContext,
        mut requests: impl RequestStream<Word>,
        mut responses: impl ResponseSink<Word>,
    ) -> Result<(), CodedError> {
        while let Some(w) = requests.recv().await? {
            responses.send(&answer(&ctx, &w.text)).await?;
        }
        Ok(())
    }

    // `async`, `move`, `await`, `gen`, `fn` and `Snake__Case_` are left
    // to their defaults (Unimplemented).
}

struct SelfService;

impl SelfDrpcServer for SelfService {
    async fn self_(&self, _ctx: RequestContext, request: Ping) -> Result<Ping, CodedError> {
        Ok(Ping {
            seq: request.seq + 1,
        })
    }
}

struct Nothing;

impl NothingDrpcServer for Nothing {}

fn connect() -> Conn {
    let mut mux = Mux::new();
    register_keywords_drpc(&mut mux, Arc::new(Keywords));
    register_self_drpc(&mut mux, Arc::new(SelfService));
    register_nothing_drpc(&mut mux, Arc::new(Nothing));
    let server = Server::new(mux);
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move { server.serve_connection(server_io).await });
    Conn::new(client_io, ConnOptions::default())
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test timed out")
}

const PREFIX: &str = "/test.keywords.v1.Keywords";

#[tokio::test]
async fn keyword_methods_in_every_shape() {
    bounded(async {
        let client = KeywordsDrpcClient::new(connect());
        let opts = CallOptions::new();

        let reply = client.r#type(&word("a")).await.expect("type");
        assert_eq!(reply.text, format!("{PREFIX}/Type a"));
        let reply = client.type_with(&word("b"), &opts).await.expect("type");
        assert_eq!(reply.text, format!("{PREFIX}/Type b"));
        let reply = client.self_(&word("c")).await.expect("self");
        assert_eq!(reply.text, format!("{PREFIX}/Self c"));
        let reply = client.self_with(&word("d"), &opts).await.expect("self");
        assert_eq!(reply.text, format!("{PREFIX}/Self d"));

        let mut responses = client.super_with(&word("e"), &opts).await.expect("super");
        let reply = responses.next().await.expect("one").expect("ok");
        assert_eq!(reply.text, format!("{PREFIX}/Super e"));
        assert!(responses.next().await.is_none());

        let mut call = client.crate_().await.expect("crate");
        call.send(&word("f")).await.expect("send");
        call.send(&word("g")).await.expect("send");
        let reply = call.close_and_recv().await.expect("crate");
        assert_eq!(reply.text, format!("{PREFIX}/Crate fg"));

        let (mut sender, mut responses) = client.extern_with(&opts).await.expect("extern");
        sender.send(&word("h")).await.expect("send");
        let reply = responses.message().await.expect("recv").expect("one");
        assert_eq!(reply.text, format!("{PREFIX}/Extern h"));
        sender.close_send().expect("close");
        assert!(responses.message().await.expect("end").is_none());

        // Raw identifiers of every shape, left unimplemented.
        let err = client.r#fn(&word("i")).await.expect_err("unimplemented");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unimplemented));
        let err = client.gen_with(&word("i"), &opts).await.expect_err("un");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unimplemented));
        let err = client.snake_case(&word("i")).await.expect_err("un");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unimplemented));
        let mut responses = client.r#async(&word("j")).await.expect("async");
        let err = responses.message().await.expect_err("unimplemented");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unimplemented));
        let mut call = client.move_with(&opts).await.expect("move");
        let err = call.close_and_recv().await.expect_err("unimplemented");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unimplemented));
        let (_sender, mut responses) = client.r#await().await.expect("await");
        let err = responses.message().await.expect_err("unimplemented");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unimplemented));
    })
    .await
}

#[test]
fn proto_names_on_the_wire() {
    let table: Vec<_> = KEYWORDS_DRPC_METHODS
        .iter()
        .map(|m| (m.rpc.strip_prefix(PREFIX).expect("prefix"), m.kind))
        .collect();
    assert_eq!(
        table,
        [
            ("/Type", MethodKind::Unary),
            ("/Self", MethodKind::Unary),
            ("/Super", MethodKind::ServerStreaming),
            ("/Crate", MethodKind::ClientStreaming),
            ("/Extern", MethodKind::Bidi),
            ("/Async", MethodKind::ServerStreaming),
            ("/Move", MethodKind::ClientStreaming),
            ("/Await", MethodKind::Bidi),
            ("/Gen", MethodKind::Unary),
            ("/Fn", MethodKind::Unary),
            ("/Snake__Case_", MethodKind::Unary),
        ]
    );
    assert_eq!(SELF_DRPC_METHODS[0].rpc, "/test.keywords.service.Self/Self");
    assert!(NOTHING_DRPC_METHODS.is_empty());
}

#[tokio::test]
async fn a_service_named_self() {
    bounded(async {
        let client = SelfDrpcClient::new(connect());
        assert_eq!(client.self_(&Ping { seq: 1 }).await.expect("self").seq, 2);
        let opts = CallOptions::new();
        let reply = client.self_with(&Ping { seq: 2 }, &opts).await;
        assert_eq!(reply.expect("self").seq, 3);
    })
    .await
}

/// The gRPC adapter calls the keyword-named methods of the DRPC trait
/// from tonic's, which carry the same names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_adapter_with_keyword_methods() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KeywordsServer::new(KeywordsGrpcAdapter::new(Arc::new(
                    Keywords,
                ))))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut grpc = KeywordsClient::connect(format!("http://{addr}")).await?;
        let reply = grpc.r#type(word("k")).await?.into_inner();
        assert_eq!(reply.text, format!("{PREFIX}/Type k"));
        let reply = grpc.self_(word("l")).await?.into_inner();
        assert_eq!(reply.text, format!("{PREFIX}/Self l"));
        let status = grpc.r#fn(word("m")).await.expect_err("unimplemented");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        anyhow::Ok(())
    })
    .await?
}
