//! The bridge end to end: a real HTTP client (reqwest) against the bridge
//! mounted in an axum router, calling a DRPC handler in process or over
//! TCP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use drpc_conn::{Channel, Endpoint};
use drpc_http::{Bridge, METADATA_HEADER};
use drpc_mux::{CodedError, Interceptor, Mux, Raw, RequestContext};
use drpc_server::{Server, ServerOptions};
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const ECHO: &str = "/types.Types/Echo";

/// `tests/proto/types.proto` and what it imports, encoded.
fn descriptors() -> Vec<u8> {
    let mut compiler = protox::Compiler::new(["tests/proto"]).expect("include path");
    compiler.include_imports(true);
    compiler
        .open_file("types.proto")
        .expect("types.proto compiles");
    compiler.file_descriptor_set().encode_to_vec()
}

/// Cancellations seen by the `Hang` handler.
type Cancelled = Arc<Mutex<Option<oneshot::Sender<()>>>>;

/// The handlers of the tests: `Echo` answers with its request, bytes for
/// bytes; `Meta` answers with its metadata and deadline as JSON; `Fail`
/// fails with the code and message of its request (`code:message`);
/// `Hang` never answers and reports its cancellation.
fn mux(cancelled: Cancelled) -> Mux {
    let mut mux = Mux::new();
    mux.unary(ECHO, Raw, |_ctx: RequestContext, req: Bytes| async move {
        Ok(req)
    });
    mux.unary(
        "/types.Types/Watch",
        Raw,
        |_ctx: RequestContext, req: Bytes| async move { Ok(req) },
    );
    mux.unary(
        "/test.T/Meta",
        Raw,
        |ctx: RequestContext, _req: Bytes| async move {
            let body = json!({
                "metadata": ctx.metadata(),
                "deadline": ctx.deadline().is_some(),
            });
            Ok(Bytes::from(body.to_string()))
        },
    );
    mux.unary(
        "/test.T/Fail",
        Raw,
        |_ctx: RequestContext, req: Bytes| async move {
            let text = String::from_utf8_lossy(&req).into_owned();
            let (code, message) = text.split_once(':').unwrap_or(("0", &text));
            Err::<Bytes, _>(CodedError::new(code.parse::<u64>().unwrap_or(0), message))
        },
    );
    mux.unary(
        "/test.T/Hang",
        Raw,
        move |ctx: RequestContext, _req: Bytes| {
            let cancelled = cancelled.clone();
            async move {
                // The server drops this future when the call is cancelled; a
                // task of its own sees the token.
                let token = ctx.cancellation_token().clone();
                tokio::spawn(async move {
                    token.cancelled().await;
                    if let Some(tx) = cancelled.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                });
                std::future::pending::<()>().await;
                Ok(Bytes::new())
            }
        },
    );
    mux
}

/// Serves `router` on a loopback port.
async fn serve(router: axum::Router) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// A bridge to [`mux`] in process, with the descriptors, mounted as the
/// fallback of a router that also has a route of its own.
async fn start() -> Result<(SocketAddr, oneshot::Receiver<()>)> {
    let (tx, rx) = oneshot::channel();
    let bridge = Bridge::in_process(mux(Arc::new(Mutex::new(Some(tx)))), ServerOptions::new())
        .descriptors(&descriptors())?;
    let router = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .fallback_service(bridge);
    Ok((serve(router).await?, rx))
}

async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Result<reqwest::Response> {
    Ok(reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await?)
}

async fn json_of(response: reqwest::Response) -> Result<Value> {
    Ok(serde_json::from_slice(&response.bytes().await?)?)
}

/// Asserts an error answer: its status, content type and body.
async fn assert_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
    msg_contains: &str,
) -> Result<()> {
    assert_eq!(response.status().as_u16(), status, "status");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = json_of(response).await?;
    assert_eq!(body["code"], code, "{body}");
    let msg = body["msg"].as_str().expect("msg is a string");
    assert!(msg.contains(msg_contains), "{msg:?} lacks {msg_contains:?}");
    Ok(())
}

#[tokio::test]
async fn every_field_type_maps_to_and_from_proto3_json() -> Result<()> {
    let (addr, _) = start().await?;
    // The canonical form: lowerCamelCase names, 64-bit integers as
    // strings, bytes as base64, enums by name, well-known types in their
    // own forms.
    let all = json!({
        "fDouble": 1.5,
        "fFloat": -2.5,
        "fInt32": -3,
        "fInt64": "-9007199254740993",
        "fUint32": 4_000_000_000u32,
        "fUint64": "18446744073709551615",
        "fSint32": -5,
        "fSint64": "-6",
        "fFixed32": 7,
        "fFixed64": "8",
        "fSfixed32": -9,
        "fSfixed64": "-10",
        "fBool": true,
        "fString": "héllo \"json\"",
        "fBytes": "AAEC/w==",
        "fEnum": "GREEN",
        "fNested": {"name": "inner"},
        "rInt64": ["1", "-2"],
        "rNested": [{"name": "a"}, {}],
        "mMap": {"one": 1, "two": 2},
        "cNumber": 22,
        "oInt32": 0,
        "tTime": "2026-12-07T15:04:05.500Z",
        "tDuration": "1.500s",
        "wInt64": "11"
    });
    let response = post(addr, ECHO, "application/json", all.to_string()).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(json_of(response).await?, all);
    Ok(())
}

#[tokio::test]
async fn json_input_forms_are_accepted_and_defaults_are_left_out() -> Result<()> {
    let (addr, _) = start().await?;
    // Numbers for 64-bit fields, proto field names, enum numbers, a
    // oneof's other member, explicit defaults.
    let input = json!({
        "f_int64": 5,
        "fEnum": 1,
        "c_text": "t",
        "fString": "",
        "fBool": false,
        "rInt64": []
    });
    let response = post(
        addr,
        ECHO,
        "application/json; charset=utf-8",
        input.to_string(),
    )
    .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_of(response).await?,
        json!({"fInt64": "5", "fEnum": "RED", "cText": "t"})
    );
    for empty in ["", "{}", " \n"] {
        let response = post(addr, ECHO, "application/json", empty).await?;
        assert_eq!(response.status(), 200, "{empty:?}");
        assert_eq!(json_of(response).await?, json!({}), "{empty:?}");
    }
    Ok(())
}

#[tokio::test]
async fn bad_json_is_a_bad_request() -> Result<()> {
    let (addr, _) = start().await?;
    let cases = [
        (r#"{"noSuchField": 1}"#, "noSuchField"),
        (r#"{"fInt32": "x"}"#, "types.All"),
        (r#"{"fEnum": "PURPLE"}"#, "types.All"),
        (r#"{"fInt64": 1} trailing"#, "types.All"),
        ("[1, 2]", "types.All"),
        ("{", "types.All"),
    ];
    for (body, mentions) in cases {
        let response = post(addr, ECHO, "application/json", body).await?;
        assert_error(response, 400, "invalid_argument", mentions).await?;
    }
    Ok(())
}

#[tokio::test]
async fn protobuf_bodies_pass_through_with_their_content_type() -> Result<()> {
    let (addr, _) = start().await?;
    let payload: Vec<u8> = (0..=255u8).collect();
    for content_type in [
        "application/protobuf",
        "application/x-protobuf",
        "application/proto",
    ] {
        let response = post(addr, ECHO, content_type, payload.clone()).await?;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], content_type);
        assert_eq!(response.bytes().await?.as_ref(), &payload[..]);
    }
    // No descriptors are needed for protobuf.
    let response = post(addr, "/test.T/Meta", "application/protobuf", "").await?;
    assert_eq!(response.status(), 200);
    Ok(())
}

#[tokio::test]
async fn requests_the_bridge_does_not_serve_are_refused_with_a_reason() -> Result<()> {
    let (addr, _) = start().await?;
    let response = reqwest::get(format!("http://{addr}{ECHO}")).await?;
    assert_eq!(response.headers()["allow"], "POST");
    assert_error(response, 405, "unimplemented", "POST").await?;

    let response = post(addr, ECHO, "text/plain", "hi").await?;
    assert_error(response, 415, "invalid_argument", "text/plain").await?;
    let response = reqwest::Client::new()
        .post(format!("http://{addr}{ECHO}"))
        .send()
        .await?;
    assert_error(response, 415, "invalid_argument", "application/json").await?;

    let response = post(addr, "/types.Types/Watch", "application/json", "{}").await?;
    assert_error(response, 501, "unimplemented", "only unary methods").await?;
    let response = post(addr, "/types.Types/Watch", "application/protobuf", "").await?;
    assert_error(response, 501, "unimplemented", "only unary methods").await?;

    let response = post(addr, "/test.T/Meta", "application/json", "{}").await?;
    assert_error(
        response,
        501,
        "unimplemented",
        "no descriptors for /test.T/Meta",
    )
    .await?;

    // An unknown path with protobuf reaches the server, which answers as
    // the reference does.
    let response = post(
        addr,
        "/service.Service/DoesNotExist",
        "application/protobuf",
        "",
    )
    .await?;
    assert_error(
        response,
        501,
        "unimplemented",
        r#"protocol error: unknown rpc: "/service.Service/DoesNotExist""#,
    )
    .await?;

    // The router's own route is untouched.
    let response = reqwest::get(format!("http://{addr}/healthz")).await?;
    assert_eq!(response.text().await?, "ok");
    Ok(())
}

#[tokio::test]
async fn handler_errors_keep_their_code_and_message() -> Result<()> {
    let (addr, _) = start().await?;
    let cases = [
        ("5:no such key", 404, "not_found", "no such key"),
        ("16:who are you", 401, "unauthenticated", "who are you"),
        ("3:bad", 400, "invalid_argument", "bad"),
        ("14:later", 503, "unavailable", "later"),
        ("42:custom", 500, "drpcerr(42)", "custom"),
        ("0:plain", 500, "unknown", "plain"),
    ];
    for (request, status, code, msg) in cases {
        let response = post(addr, "/test.T/Fail", "application/protobuf", request).await?;
        assert_error(response, status, code, msg).await?;
        let body =
            json_of(post(addr, "/test.T/Fail", "application/protobuf", request).await?).await?;
        assert_eq!(body["msg"], msg, "the server's message, nothing added");
    }
    Ok(())
}

#[tokio::test]
async fn metadata_comes_from_both_header_forms_and_timeouts_from_drpc_timeout() -> Result<()> {
    let (addr, _) = start().await?;
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/test.T/Meta"))
        .header("content-type", "application/protobuf")
        .header(METADATA_HEADER, "inc=10")
        .header(METADATA_HEADER, "key%3d=va%25l")
        .header("drpc-md-tenant", "acme")
        .header("drpc-timeout", "5S")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let body: Value = serde_json::from_slice(&response.bytes().await?)?;
    assert_eq!(
        body,
        json!({"metadata": {"inc": "10", "key=": "va%l", "tenant": "acme"}, "deadline": true})
    );

    let response = reqwest::Client::new()
        .post(format!("http://{addr}/test.T/Meta"))
        .header("content-type", "application/protobuf")
        .header(METADATA_HEADER, "bad%zz")
        .send()
        .await?;
    assert_error(response, 400, "invalid_argument", "malformed escape").await?;
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/test.T/Meta"))
        .header("content-type", "application/protobuf")
        .header("drpc-md-drpc-timeout", "1S")
        .send()
        .await?;
    assert_error(response, 400, "invalid_argument", "reserved").await?;

    let response = reqwest::Client::new()
        .post(format!("http://{addr}/test.T/Hang"))
        .header("content-type", "application/protobuf")
        .header("drpc-timeout", "50m")
        .send()
        .await?;
    assert_error(response, 408, "deadline_exceeded", "").await?;
    Ok(())
}

#[tokio::test]
async fn a_custom_prefix_replaces_the_default_one() -> Result<()> {
    let bridge = Bridge::in_process(mux(Arc::default()), ServerOptions::new())
        .metadata_prefix(Some("X-Meta-"));
    let addr = serve(axum::Router::new().fallback_service(bridge)).await?;
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/test.T/Meta"))
        .header("content-type", "application/protobuf")
        .header("x-meta-user", "ann")
        .header("drpc-md-tenant", "ignored")
        .send()
        .await?;
    let body: Value = serde_json::from_slice(&response.bytes().await?)?;
    assert_eq!(body["metadata"], json!({"user": "ann"}));
    Ok(())
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_before_the_call() -> Result<()> {
    let bridge =
        Bridge::in_process(mux(Arc::default()), ServerOptions::new()).max_message_size(1024);
    let addr = serve(axum::Router::new().fallback_service(bridge)).await?;
    let response = post(addr, ECHO, "application/protobuf", vec![0u8; 1025]).await?;
    assert_error(response, 413, "resource_exhausted", "1024").await?;
    let response = post(addr, ECHO, "application/protobuf", vec![7u8; 1024]).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await?.len(), 1024);
    Ok(())
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_call() -> Result<()> {
    let (addr, cancelled) = start().await?;
    let request = reqwest::Client::new()
        .post(format!("http://{addr}/test.T/Hang"))
        .header("content-type", "application/protobuf")
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(request.expect_err("the call hangs").is_timeout());
    tokio::time::timeout(Duration::from_secs(10), cancelled)
        .await
        .expect("the handler's token is cancelled")?;
    Ok(())
}

#[tokio::test]
async fn the_muxs_interceptor_applies_to_http_calls() -> Result<()> {
    let mut mux = mux(Arc::default());
    mux.with_interceptor(Interceptor::new(|ctx: &mut RequestContext| {
        match ctx.metadata().get("authorization").map(String::as_str) {
            Some("Bearer good") => Ok(()),
            _ => Err(CodedError::unauthenticated("missing or bad token")),
        }
    }));
    let bridge = Bridge::in_process(mux, ServerOptions::new()).descriptors(&descriptors())?;
    let addr = serve(axum::Router::new().fallback_service(bridge)).await?;
    let response = post(addr, ECHO, "application/json", "{}").await?;
    assert_error(response, 401, "unauthenticated", "missing or bad token").await?;
    let response = reqwest::Client::new()
        .post(format!("http://{addr}{ECHO}"))
        .header("content-type", "application/json")
        .header("drpc-md-authorization", "Bearer good")
        .body(r#"{"fInt32": 1}"#)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await?, json!({"fInt32": 1}));
    Ok(())
}

#[tokio::test]
async fn a_bridge_is_a_gateway_to_a_drpc_server_elsewhere() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let drpc_addr = listener.local_addr()?;
    let server = Server::new(mux(Arc::default()));
    tokio::spawn(async move { server.serve_tcp(listener).await });

    let channel = Channel::new(Endpoint::tcp(drpc_addr.to_string()));
    let bridge = Bridge::new(channel).descriptors(&descriptors())?;
    assert_eq!(bridge.json_methods(), vec![ECHO]);
    // Mounted under a prefix, as a nested service.
    let addr = serve(axum::Router::new().nest_service("/rpc", bridge)).await?;
    let response = post(
        addr,
        &format!("/rpc{ECHO}"),
        "application/json",
        r#"{"fString":"via tcp"}"#,
    )
    .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await?, json!({"fString": "via tcp"}));

    // A gateway whose server is gone answers 503.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let dead_addr = dead.local_addr()?;
    drop(dead);
    let bridge = Bridge::new(Channel::new(Endpoint::tcp(dead_addr.to_string())));
    let addr = serve(axum::Router::new().fallback_service(bridge)).await?;
    let response = post(addr, ECHO, "application/protobuf", "").await?;
    assert_error(response, 503, "unavailable", &dead_addr.to_string()).await?;
    Ok(())
}

#[tokio::test]
async fn dropping_the_answer_cancels_the_call() -> Result<()> {
    let (tx, rx) = oneshot::channel();
    let bridge = Bridge::in_process(mux(Arc::new(Mutex::new(Some(tx)))), ServerOptions::new());
    let request = http::Request::post("/test.T/Hang")
        .header("content-type", "application/protobuf")
        .body(http_body_util::Full::new(Bytes::new()))?;
    let answer = tokio::time::timeout(Duration::from_millis(200), bridge.handle(request)).await;
    assert!(answer.is_err(), "the call hangs");
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the handler's token is cancelled")?;
    Ok(())
}
