//! `serve --shared-port`, in process and as the binary: DRPC (with and
//! without the migration header), tonic gRPC calls and HTTP/JSON requests
//! (reqwest) on the one port, and the JSON mapping of every field of the
//! interop service.

#![cfg(feature = "grpc")]

use std::time::Duration;

use bytes::Bytes;
use drpc_conn::{Conn, ConnOptions, with_migration_header};
use drpc_interop::grpc::pb::service_client::ServiceClient;
use drpc_interop::pb::{In, ServiceDrpcClient};
use drpc_interop::shared::serve_shared_port;
use drpc_interop::{ServeOptions, serve};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(20);

fn request(n: i64) -> In {
    In {
        r#in: n,
        buf: Bytes::from_static(b"payload"),
        opt: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drpc_grpc_and_http_share_one_port() {
    let test = async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = serve(&ServeOptions::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            serve_shared_port(
                &server,
                listener,
                ServeOptions::default().max_message_size,
                Duration::from_secs(1),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
        });

        // DRPC, plain.
        let socket = TcpStream::connect(addr).await.expect("connect");
        let conn = Conn::new(socket, ConnOptions::default());
        let out = ServiceDrpcClient::new(conn)
            .method1(&request(7))
            .await
            .expect("drpc call");
        assert_eq!((out.out, &out.buf[..]), (7, &b"payload"[..]));

        // DRPC with the migration header.
        let socket = TcpStream::connect(addr).await.expect("connect");
        let conn = Conn::new(with_migration_header(socket), ConnOptions::default());
        let out = ServiceDrpcClient::new(conn)
            .method1(&request(8))
            .await
            .expect("drpc call with the header");
        assert_eq!(out.out, 8);

        // gRPC, through tonic.
        let mut grpc = ServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("grpc connect");
        let out = grpc
            .method1(request(9))
            .await
            .expect("grpc call")
            .into_inner();
        assert_eq!((out.out, &out.buf[..]), (9, &b"payload"[..]));
        let err = grpc.method1(request(-1)).await.expect_err("boom");
        assert_eq!(err.code(), tonic::Code::Unknown);

        // HTTP/1: the JSON bridge.
        http_calls(&addr.to_string()).await;

        let _ = stop.send(());
        serving.await.expect("join").expect("served");
    };
    tokio::time::timeout(LIMIT, test).await.expect("in time");
}

async fn post_json(addr: &str, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .header("drpc-md-tenant", "acme")
        .body(body.to_string())
        .send()
        .await
        .expect("http call");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("http body");
    (status, serde_json::from_slice(&body).expect("a JSON body"))
}

/// The HTTP/JSON route: every field of `In` and `Out` (int64 as a string
/// or a number, bytes as base64, the optional field present with its
/// default), metadata from headers, the service's error with its code, a
/// streaming method refused.
async fn http_calls(addr: &str) {
    let path = "/service.Service/Method1";
    let (status, out) = post_json(
        addr,
        path,
        json!({"in": "7", "buf": "cGF5bG9hZA==", "opt": "0"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out, json!({"out": "7", "buf": "cGF5bG9hZA==", "opt": "0"}));
    let (status, out) = post_json(addr, path, json!({"in": 9007199254740993i64})).await;
    assert_eq!((status, out), (200, json!({"out": "9007199254740993"})));
    let (status, out) = post_json(addr, path, json!({})).await;
    assert_eq!((status, out), (200, json!({})), "defaults are left out");

    // in = -3: the request's metadata as `key=value` lines in `buf`.
    let (status, out) = post_json(addr, path, json!({"in": "-3"})).await;
    assert_eq!(status, 200, "{out}");
    let lines = bytes_field(&out["buf"]);
    assert!(lines.contains("tenant=acme"), "{lines:?}");

    // in = -1: the service's error, code 42.
    let (status, out) = post_json(addr, path, json!({"in": "-1"})).await;
    assert_eq!(status, 500);
    assert_eq!(out, json!({"code": "drpcerr(42)", "msg": "boom"}));

    let (status, out) = post_json(addr, "/service.Service/Method3", json!({})).await;
    assert_eq!(status, 501, "{out}");
    assert_eq!(out["code"], "unimplemented");

    // Protobuf bodies: `In { in: 5 }` is `08 05`; `Out { out: 5 }` too.
    let response = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/protobuf")
        .body(vec![0x08, 0x05])
        .send()
        .await
        .expect("http call");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        &[0x08, 0x05]
    );
}

/// A JSON bytes field (base64) as text.
fn bytes_field(value: &Value) -> String {
    let text = value.as_str().expect("bytes are a base64 string");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

/// The binary itself: `drpc-interop serve --shared-port` on a free port,
/// then a DRPC call with and without the header, a gRPC call and the
/// HTTP calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_every_protocol_on_its_shared_port() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_drpc-interop"))
        .args(["serve", "--addr", "127.0.0.1:0", "--shared-port"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start drpc-interop");
    let test = async {
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("the first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();

        for header in [false, true] {
            let socket = TcpStream::connect(&addr).await.expect("connect");
            let conn = if header {
                Conn::new(with_migration_header(socket), ConnOptions::default())
            } else {
                Conn::new(socket, ConnOptions::default())
            };
            let out = ServiceDrpcClient::new(conn)
                .method1(&request(3))
                .await
                .expect("drpc call");
            assert_eq!(out.out, 3, "header {header}");
        }
        let mut grpc = ServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("grpc connect");
        let out = grpc
            .method1(request(4))
            .await
            .expect("grpc call")
            .into_inner();
        assert_eq!(out.out, 4);
        http_calls(&addr).await;
    };
    tokio::time::timeout(LIMIT, test).await.expect("in time");
    child.kill().await.expect("stop drpc-interop");
}
