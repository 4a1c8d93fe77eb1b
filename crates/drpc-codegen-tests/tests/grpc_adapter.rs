//! One implementation of the generated server trait answers a tonic (gRPC)
//! client and a DRPC client at once, through the generated adapter.

use std::sync::Arc;
use std::time::Duration;

use drpc_codegen_tests::test::echo::v1::echo_client::EchoClient;
use drpc_codegen_tests::test::echo::v1::echo_server::EchoServer;
use drpc_codegen_tests::test::echo::v1::{
    EchoDrpcClient, EchoDrpcServer, EchoGrpcAdapter, Msg, register_echo_drpc,
};
use drpc_conn::{Conn, ConnOptions};
use drpc_mux::{CodedError, Mux, RequestContext, RequestStream, ResponseSink};
use drpc_server::Server;
use futures_util::StreamExt;

/// The implementation both protocols serve; it counts its calls.
#[derive(Default)]
struct Counting {
    calls: std::sync::atomic::AtomicUsize,
}

impl Counting {
    fn called(&self) {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl EchoDrpcServer for Counting {
    async fn say(&self, ctx: RequestContext, request: Msg) -> Result<Msg, CodedError> {
        self.called();
        if request.n < 0 {
            return Err(CodedError::new(5, "not found"));
        }
        let tag = ctx.metadata().get("tag").cloned().unwrap_or_default();
        Ok(Msg {
            text: format!("{}{tag}", request.text),
            ..request
        })
    }

    async fn count(
        &self,
        _ctx: RequestContext,
        mut requests: impl RequestStream<Msg>,
    ) -> Result<Msg, CodedError> {
        self.called();
        let mut n = 0;
        while requests.recv().await?.is_some() {
            n += 1;
        }
        Ok(Msg {
            n,
            ..Msg::default()
        })
    }

    async fn repeat(
        &self,
        _ctx: RequestContext,
        request: Msg,
        mut responses: impl ResponseSink<Msg>,
    ) -> Result<(), CodedError> {
        self.called();
        for n in 0..request.n {
            responses
                .send(&Msg {
                    n,
                    ..request.clone()
                })
                .await?;
        }
        Ok(())
    }

    async fn chat(
        &self,
        _ctx: RequestContext,
        mut requests: impl RequestStream<Msg>,
        mut responses: impl ResponseSink<Msg>,
    ) -> Result<(), CodedError> {
        self.called();
        while let Some(m) = requests.recv().await? {
            responses.send(&m).await?;
        }
        Ok(())
    }
}

fn msg(text: &str, n: i64) -> Msg {
    Msg {
        text: text.into(),
        n,
        opt: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_implementation_serves_grpc_and_drpc() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), async {
        let service = Arc::new(Counting::default());

        // gRPC, through the generated adapter.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc_addr = listener.local_addr()?;
        let grpc_service = EchoServer::new(EchoGrpcAdapter::new(service.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(grpc_service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        // DRPC, through the generated registration.
        let mut mux = Mux::new();
        register_echo_drpc(&mut mux, service.clone());
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let drpc_server = Server::new(mux);
        tokio::spawn(async move { drpc_server.serve_connection(server_io).await });
        let drpc = EchoDrpcClient::new(Conn::new(client_io, ConnOptions::default()));

        let mut grpc = EchoClient::connect(format!("http://{grpc_addr}")).await?;

        // Unary, with metadata and with an error code.
        let mut request = tonic::Request::new(msg("hi", 1));
        request.metadata_mut().insert("tag", "-grpc".parse()?);
        assert_eq!(grpc.say(request).await?.into_inner().text, "hi-grpc");
        let opts = drpc_conn::CallOptions::new().metadata("tag", "-drpc");
        assert_eq!(drpc.say_with(&msg("hi", 1), &opts).await?.text, "hi-drpc");
        let status = grpc.say(msg("x", -1)).await.expect_err("fails");
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "not found");
        let err = drpc.say(&msg("x", -1)).await.expect_err("fails");
        assert_eq!(err.code(), Some(drpc_conn::Code::NotFound));

        // Client streaming.
        let sent = tokio_stream::iter(vec![msg("a", 0), msg("b", 0), msg("c", 0)]);
        assert_eq!(grpc.count(sent).await?.into_inner().n, 3);
        let mut call = drpc.count().await?;
        for _ in 0..3 {
            call.send(&msg("a", 0)).await?;
        }
        assert_eq!(call.close_and_recv().await?.n, 3);

        // Server streaming.
        let got: Vec<i64> = grpc
            .repeat(msg("r", 4))
            .await?
            .into_inner()
            .map(|m| m.map(|m| m.n))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert_eq!(got, [0, 1, 2, 3]);
        let got: Vec<i64> = drpc
            .repeat(&msg("r", 4))
            .await?
            .map(|m| m.map(|m| m.n))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert_eq!(got, [0, 1, 2, 3]);

        // Bidi.
        let echoed: Vec<String> = grpc
            .chat(tokio_stream::iter(vec![msg("x", 0), msg("y", 0)]))
            .await?
            .into_inner()
            .map(|m| m.map(|m| m.text))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert_eq!(echoed, ["x", "y"]);
        let (mut sender, mut responses) = drpc.chat().await?;
        sender.send(&msg("z", 0)).await?;
        assert_eq!(
            responses.message().await?.map(|m| m.text).as_deref(),
            Some("z")
        );
        sender.close_send()?;
        assert!(responses.message().await?.is_none());

        // Unimplemented answers the same way through both.
        let status = grpc.missing(msg("m", 0)).await.expect_err("unimplemented");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(
            drpc.missing(&msg("m", 0))
                .await
                .expect_err("unimplemented")
                .code(),
            Some(drpc_conn::Code::Unimplemented)
        );

        // Both protocols reached the one implementation.
        assert_eq!(service.calls.load(std::sync::atomic::Ordering::SeqCst), 10);
        anyhow::Ok(())
    })
    .await?
}
