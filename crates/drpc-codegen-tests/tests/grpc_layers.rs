//! One middleware configuration, an interceptor and `tower` layers set on
//! a `Mux`, applies identically to calls arriving over DRPC and over the
//! generated gRPC adapter built from that mux (`EchoGrpcAdapter::from_mux`),
//! served without tonic's interceptor hook: the layers see the same calls
//! (path, metadata, peer, deadline) and both clients get the same codes.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use drpc_codegen_tests::test::echo::v1::echo_client::EchoClient;
use drpc_codegen_tests::test::echo::v1::echo_server::EchoServer;
use drpc_codegen_tests::test::echo::v1::{
    EchoDrpcClient, EchoDrpcServer, EchoGrpcAdapter, Msg, register_echo_drpc,
};
use drpc_conn::{CallOptions, Conn, ConnOptions};
use drpc_mux::{
    BoxFuture, Call, CodedError, Interceptor, Mux, PeerAddr, RequestContext, RequestStream,
    ResponseSink, SkipPaths, layer_error,
};
use drpc_server::Server;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

const SAY: &str = "/test.echo.v1.Echo/Say";
const COUNT: &str = "/test.echo.v1.Echo/Count";
const REPEAT: &str = "/test.echo.v1.Echo/Repeat";

/// What the auth layer tells the handler.
#[derive(Debug)]
struct User(String);

/// What the interceptor tells the handler.
#[derive(Debug)]
struct Checked;

type Log = Arc<Mutex<Vec<String>>>;

/// Records every call that reaches it, once it has ended: its path, its
/// `tag` header, the kind of its peer, whether it has a deadline, and the
/// code it ended with (not the protocol: entries must not differ).
#[derive(Clone)]
struct Record(Log);

impl<S> Layer<S> for Record {
    type Service = Recorded<S>;

    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            log: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Recorded<S> {
    inner: S,
    log: Log,
}

impl<S> Service<Call> for Recorded<S>
where
    S: Service<Call, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = CodedError;
    type Future = BoxFuture<Result<(), CodedError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), CodedError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let peer = match call.peer().addr() {
            PeerAddr::Tcp(_) => "tcp",
            PeerAddr::Unix(_) => "unix",
            _ => "unknown",
        };
        let entry = format!(
            "{} tag={} peer={peer} deadline={}",
            call.rpc(),
            call.metadata().get("tag").map_or("", String::as_str),
            call.deadline().is_some(),
        );
        let inner = self.inner.clone();
        let log = self.log.clone();
        Box::pin(async move {
            let result = inner.oneshot(call).await.map_err(|e| layer_error(e.into()));
            let code = result.as_ref().err().map_or(0, CodedError::code);
            log.lock().expect("log").push(format!("{entry} -> {code}"));
            result
        })
    }
}

/// Rejects calls without a bearer token, with Unauthenticated; tells the
/// handler who called. Panics on `boom: layer`.
fn auth(mut call: Call) -> Result<Call, CodedError> {
    if call.metadata().get("boom").is_some_and(|b| b == "layer") {
        panic!("the auth layer panicked");
    }
    let user = call
        .metadata()
        .get("authorization")
        .and_then(|t| t.strip_prefix("Bearer "))
        .ok_or_else(|| CodedError::unauthenticated("missing token"))?
        .to_owned();
    call.ctx_mut().extensions_mut().insert(User(user));
    Ok(call)
}

/// Runs before the layers: refuses `blocked` callers, marks the others.
/// Panics on `boom: interceptor`.
fn interceptor() -> Interceptor {
    Interceptor::new(|ctx: &mut RequestContext| {
        if ctx
            .metadata()
            .get("boom")
            .is_some_and(|b| b == "interceptor")
        {
            panic!("the interceptor panicked");
        }
        if ctx.metadata().get("blocked").is_some() {
            return Err(CodedError::permission_denied("blocked"));
        }
        ctx.extensions_mut().insert(Checked);
        Ok(())
    })
}

/// The mux's middleware: the interceptor, then (outermost first) the
/// recorder, auth (but for Repeat), at most one Chat at a time, shedding
/// the others (Chat only), and a timeout (Say only).
fn configure(mux: &mut Mux, log: &Log) {
    mux.with_interceptor(interceptor());
    mux.layer(
        ServiceBuilder::new()
            .layer(Record(log.clone()))
            .layer(SkipPaths::new(tower::filter::FilterLayer::new(auth)).skip(REPEAT))
            .layer(
                SkipPaths::new(
                    ServiceBuilder::new()
                        .load_shed()
                        .concurrency_limit(1)
                        .into_inner(),
                )
                .skip(SAY)
                .skip(COUNT)
                .skip(REPEAT),
            )
            .layer(
                SkipPaths::new(tower::timeout::TimeoutLayer::new(Duration::from_millis(
                    500,
                )))
                .skip(COUNT)
                .skip(REPEAT)
                .skip("/test.echo.v1.Echo/Chat"),
            ),
    );
}

fn user(ctx: &RequestContext) -> String {
    let checked = if ctx.extensions().get::<Checked>().is_some() {
        ""
    } else {
        "unchecked "
    };
    let name = ctx
        .extensions()
        .get::<User>()
        .map_or("anonymous", |u| u.0.as_str());
    format!("{checked}{name}")
}

struct Echo;

impl EchoDrpcServer for Echo {
    async fn say(&self, ctx: RequestContext, request: Msg) -> Result<Msg, CodedError> {
        match request.text.as_str() {
            "slow" => tokio::time::sleep(Duration::from_secs(60)).await,
            "panic" => panic!("the handler panicked"),
            _ => {}
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

/// The headers of one step of the script: a tag, and the others given.
fn headers(tag: &str, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = vec![("tag".to_owned(), tag.to_owned())];
    all.extend(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    all
}

const TOKEN: (&str, &str) = ("authorization", "Bearer alice");

/// What a step ended with: `ok <text>` or `err <code> <message>`.
fn outcome<T>(result: Result<T, (u64, String)>, text: impl Fn(T) -> String) -> String {
    match result {
        Ok(v) => format!("ok {}", text(v)),
        Err((code, message)) => format!("err {code} {message}"),
    }
}

fn drpc_err(e: drpc_conn::Error) -> (u64, String) {
    let code = e.code().map_or(0, |c| c.as_u64());
    let message = e
        .remote_message()
        .map_or_else(|| e.to_string(), str::to_owned);
    (code, message)
}

fn grpc_err(s: tonic::Status) -> (u64, String) {
    (s.code() as u64, s.message().to_owned())
}

fn options(headers: &[(String, String)]) -> CallOptions {
    headers
        .iter()
        .fold(CallOptions::new(), |o, (k, v)| o.metadata(k, v))
}

fn request<T>(message: T, headers: &[(String, String)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (k, v) in headers {
        let key: tonic::metadata::MetadataKey<_> = k.parse().expect("key");
        request
            .metadata_mut()
            .insert(key, v.parse().expect("ascii"));
    }
    request
}

/// A unary step: the request's text, its headers, its timeout.
type Step = (&'static str, Vec<(String, String)>, Option<Duration>);

/// The unary steps of the script.
fn unary_steps() -> Vec<Step> {
    vec![
        ("hi", headers("anonymous", &[]), None),
        ("hi", headers("ok", &[TOKEN]), None),
        ("hi", headers("blocked", &[TOKEN, ("blocked", "yes")]), None),
        (
            "slow",
            headers("slow", &[TOKEN]),
            Some(Duration::from_secs(20)),
        ),
        ("panic", headers("panic", &[TOKEN]), None),
        (
            "hi",
            headers("boom-i", &[TOKEN, ("boom", "interceptor")]),
            None,
        ),
        ("hi", headers("boom-l", &[TOKEN, ("boom", "layer")]), None),
    ]
}

async fn drpc_script(drpc: &EchoDrpcClient<Conn>) -> Vec<String> {
    let mut outcomes = Vec::new();
    for (text, headers, timeout) in unary_steps() {
        let mut opts = options(&headers);
        if let Some(t) = timeout {
            opts = opts.timeout(t);
        }
        let got = drpc.say_with(&msg(text), &opts).await.map_err(drpc_err);
        outcomes.push(outcome(got, |m| m.text));
    }
    // Client streaming.
    let got = async {
        let mut call = drpc
            .count_with(&options(&headers("count", &[TOKEN])))
            .await?;
        call.send(&msg("a")).await?;
        call.send(&msg("b")).await?;
        call.close_and_recv().await
    }
    .await
    .map_err(drpc_err);
    outcomes.push(outcome(got, |m| format!("{} {}", m.n, m.text)));
    // Server streaming, which needs no token.
    let got = async {
        let responses = drpc
            .repeat_with(&msg("r"), &options(&headers("repeat", &[])))
            .await?;
        let texts: Result<Vec<String>, _> = responses
            .map(|m| m.map(|m| m.text))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect();
        texts
    }
    .await
    .map_err(drpc_err);
    outcomes.push(outcome(got, |t| t.join(",")));
    // Bidi without a token.
    let got = async {
        let (_sender, mut responses) = drpc
            .chat_with(&options(&headers("chat-anonymous", &[])))
            .await?;
        responses.message().await
    }
    .await
    .map_err(drpc_err);
    outcomes.push(outcome(got, |m| format!("{:?}", m.map(|m| m.text))));
    // Bidi with one.
    let got = async {
        let (mut sender, mut responses) =
            drpc.chat_with(&options(&headers("chat", &[TOKEN]))).await?;
        sender.send(&msg("x")).await?;
        let echo = responses.message().await?;
        sender.close_send()?;
        assert!(responses.message().await?.is_none());
        Ok(echo)
    }
    .await
    .map_err(drpc_err);
    outcomes.push(outcome(got, |m| format!("{:?}", m.map(|m| m.text))));
    outcomes
}

async fn grpc_script(grpc: &mut EchoClient<tonic::transport::Channel>) -> Vec<String> {
    let mut outcomes = Vec::new();
    for (text, headers, timeout) in unary_steps() {
        let mut req = request(msg(text), &headers);
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        let got = grpc.say(req).await.map_err(grpc_err);
        outcomes.push(outcome(got, |r| r.into_inner().text));
    }
    let sent = tokio_stream::iter(vec![msg("a"), msg("b")]);
    let got = grpc
        .count(request(sent, &headers("count", &[TOKEN])))
        .await
        .map_err(grpc_err);
    outcomes.push(outcome(got, |r| {
        let m = r.into_inner();
        format!("{} {}", m.n, m.text)
    }));
    let got = async {
        let responses = grpc
            .repeat(request(msg("r"), &headers("repeat", &[])))
            .await?
            .into_inner();
        let texts: Result<Vec<String>, _> = responses
            .map(|m| m.map(|m| m.text))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect();
        texts
    }
    .await
    .map_err(grpc_err);
    outcomes.push(outcome(got, |t| t.join(",")));
    let got = async {
        let sent = tokio_stream::iter(vec![msg("x")]);
        let mut responses = grpc
            .chat(request(sent, &headers("chat-anonymous", &[])))
            .await?
            .into_inner();
        responses.message().await
    }
    .await
    .map_err(grpc_err);
    outcomes.push(outcome(got, |m| format!("{:?}", m.map(|m| m.text))));
    let got = async {
        let (tx, rx) = mpsc::channel(1);
        let mut responses = grpc
            .chat(request(ReceiverStream::new(rx), &headers("chat", &[TOKEN])))
            .await?
            .into_inner();
        tx.send(msg("x")).await.expect("open");
        let echo = responses.message().await?;
        drop(tx);
        assert!(responses.message().await?.is_none());
        Ok(echo)
    }
    .await
    .map_err(grpc_err);
    outcomes.push(outcome(got, |m| format!("{:?}", m.map(|m| m.text))));
    outcomes
}

/// Waits until `log` has an entry ending the call tagged `tag`.
async fn logged(log: &Log, tag: &str) {
    let want = format!("tag={tag} ");
    for _ in 0..500 {
        if log.lock().expect("log").iter().any(|e| e.contains(&want)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no entry for {tag} within 5s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_middleware_sees_and_answers_drpc_and_grpc_calls_alike() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(60), async {
        let log: Log = Arc::default();
        let service = Arc::new(Echo);
        let mut mux = Mux::new();
        register_echo_drpc(&mut mux, service.clone());
        configure(&mut mux, &log);

        // gRPC: the adapter built from the mux, served without tonic's
        // interceptor hook: the middleware travels with the adapter.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc_addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(EchoServer::new(EchoGrpcAdapter::from_mux(
                    service.clone(),
                    &mux,
                )))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        // DRPC over TCP too, so that both peers are TCP peers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let drpc_addr = listener.local_addr()?;
        let server = Server::new(mux);
        tokio::spawn(async move { server.serve_tcp(listener).await });

        let tcp = tokio::net::TcpStream::connect(drpc_addr).await?;
        let drpc = EchoDrpcClient::new(Conn::new(tcp, ConnOptions::default()));
        let mut grpc = EchoClient::connect(format!("http://{grpc_addr}")).await?;

        let expected_outcomes = [
            "err 16 missing token",
            "ok alice",
            "err 7 blocked",
            "err 4 context deadline exceeded",
            "err 13 internal error: handler panicked",
            "err 13 internal error: handler panicked",
            "err 13 internal error: handler panicked",
            "ok 2 alice",
            "ok anonymous",
            "err 16 missing token",
            r#"ok Some("alice:x")"#,
        ];
        // The calls that reached the recorder (not those the interceptor
        // refused, nor those that panicked), as it saw them.
        let expected_log = [
            format!("{SAY} tag=anonymous peer=tcp deadline=false -> 16"),
            format!("{SAY} tag=ok peer=tcp deadline=false -> 0"),
            format!("{SAY} tag=slow peer=tcp deadline=true -> 4"),
            format!("{COUNT} tag=count peer=tcp deadline=false -> 0"),
            format!("{REPEAT} tag=repeat peer=tcp deadline=false -> 0"),
            "/test.echo.v1.Echo/Chat tag=chat-anonymous peer=tcp deadline=false -> 16".to_owned(),
            "/test.echo.v1.Echo/Chat tag=chat peer=tcp deadline=false -> 0".to_owned(),
        ];

        let drpc_outcomes = drpc_script(&drpc).await;
        assert_eq!(drpc_outcomes, expected_outcomes, "over DRPC");
        logged(&log, "chat").await;
        let drpc_log = std::mem::take(&mut *log.lock().expect("log"));
        assert_eq!(drpc_log, expected_log, "over DRPC");

        let grpc_outcomes = grpc_script(&mut grpc).await;
        assert_eq!(grpc_outcomes, expected_outcomes, "over gRPC");
        logged(&log, "chat").await;
        let grpc_log = std::mem::take(&mut *log.lock().expect("log"));
        assert_eq!(grpc_log, expected_log, "over gRPC");

        // The layers' state is shared by both protocols: while a DRPC Chat
        // holds the one permit, a gRPC Chat is shed, and the other way
        // round.
        let (mut sender, mut responses) =
            drpc.chat_with(&options(&headers("held", &[TOKEN]))).await?;
        sender.send(&msg("x")).await?;
        assert!(responses.message().await?.is_some(), "the handler runs");
        let sent = tokio_stream::iter(vec![msg("y")]);
        let status = grpc
            .chat(request(sent, &headers("shed", &[TOKEN])))
            .await
            .expect_err("shed");
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::Unavailable, "server overloaded")
        );
        sender.close_send()?;
        assert!(responses.message().await?.is_none());
        logged(&log, "held").await;

        let (tx, rx) = mpsc::channel(1);
        let mut responses = grpc
            .chat(request(ReceiverStream::new(rx), &headers("held", &[TOKEN])))
            .await?
            .into_inner();
        tx.send(msg("x")).await?;
        assert!(responses.message().await?.is_some(), "the handler runs");
        let (_sender, mut shed) = drpc.chat_with(&options(&headers("shed", &[TOKEN]))).await?;
        let err = shed.message().await.expect_err("shed");
        assert_eq!(err.code(), Some(drpc_conn::Code::Unavailable));
        drop(tx);
        assert!(responses.message().await?.is_none());
        anyhow::Ok(())
    })
    .await?
}

/// An adapter built with `new` has no middleware; one built from a mux
/// enforces its checks without tonic's interceptor hook, and the tonic
/// hook still works for the former.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_from_the_mux_enforces_its_checks() -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), async {
        let log: Log = Arc::default();
        let service = Arc::new(Echo);
        let mut mux = Mux::new();
        register_echo_drpc(&mut mux, service.clone());
        configure(&mut mux, &log);

        let mut clients = Vec::new();
        for adapter in [
            EchoServer::new(EchoGrpcAdapter::new(service.clone())),
            EchoServer::new(EchoGrpcAdapter::from_mux(service.clone(), &mux)),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(adapter)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            clients.push(EchoClient::connect(format!("http://{addr}")).await?);
        }
        let (mut bare, mut enforced) = (clients.remove(0), clients.remove(0));

        // Without middleware, nothing checks the call.
        let reply = bare.say(msg("hi")).await?.into_inner();
        assert_eq!(reply.text, "unchecked anonymous");
        // From the mux: the interceptor and the auth layer run.
        let status = enforced.say(msg("hi")).await.expect_err("no token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = enforced
            .repeat(msg("hi"))
            .await?
            .into_inner()
            .next()
            .await
            .expect("one")?;
        assert_eq!(status.text, "anonymous", "checked, auth skipped");
        let reply = enforced
            .say(request(msg("hi"), &headers("t", &[TOKEN])))
            .await?
            .into_inner();
        assert_eq!(reply.text, "alice");
        assert_eq!(log.lock().expect("log").len(), 3);

        // An interceptor attached through tonic's hook runs after the
        // mux's, never in place of it: adding one for gRPC cannot switch
        // the mux's checks off.
        let extra =
            Interceptor::new(
                |ctx: &mut RequestContext| match ctx.metadata().get("extra") {
                    Some(_) => Err(CodedError::failed_precondition("the extra check")),
                    None => Ok(()),
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(EchoServer::with_interceptor(
                    EchoGrpcAdapter::from_mux(service.clone(), &mux),
                    extra,
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut both = EchoClient::connect(format!("http://{addr}")).await?;
        let status = both
            .say(request(
                msg("hi"),
                &headers("t", &[TOKEN, ("blocked", "1")]),
            ))
            .await
            .expect_err("the mux's interceptor");
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::PermissionDenied, "blocked")
        );
        let status = both
            .say(request(msg("hi"), &headers("t", &[TOKEN, ("extra", "1")])))
            .await
            .expect_err("the attached interceptor");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let reply = both
            .say(request(msg("hi"), &headers("t", &[TOKEN])))
            .await?
            .into_inner();
        assert_eq!(reply.text, "alice");
        anyhow::Ok(())
    })
    .await?
}
