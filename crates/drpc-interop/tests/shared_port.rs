//! `serve --shared-port` in-process: DRPC (with and without the migration
//! header), a tonic gRPC call and an HTTP/1 request on the one port.

#![cfg(feature = "grpc")]

use std::time::Duration;

use bytes::Bytes;
use drpc_conn::{Conn, ConnOptions, with_migration_header};
use drpc_interop::grpc::pb::service_client::ServiceClient;
use drpc_interop::pb::{In, ServiceDrpcClient};
use drpc_interop::shared::{HTTP1_RESPONSE, serve_shared_port};
use drpc_interop::{ServeOptions, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
async fn drpc_grpc_and_http1_share_one_port() {
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

        // HTTP/1: not implemented (yet).
        let mut http = TcpStream::connect(addr).await.expect("connect");
        http.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut response = Vec::new();
        http.read_to_end(&mut response).await.expect("read");
        assert_eq!(response, HTTP1_RESPONSE);

        let _ = stop.send(());
        serving.await.expect("join").expect("served");
    };
    tokio::time::timeout(LIMIT, test).await.expect("in time");
}
