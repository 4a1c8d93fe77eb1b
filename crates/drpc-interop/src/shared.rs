//! `serve --shared-port`: the service over DRPC and gRPC on one TCP port,
//! with drpc-server's [`drpc_server::shared_port`].
//!
//! * DRPC clients, with the reference's migration header (`DRPC!!!1`, as
//!   Go clients of a `drpcmigrate` listener send it) or without, are
//!   served by the DRPC [`Server`].
//! * HTTP/2 connections (gRPC) are served by tonic, with the same
//!   implementation ([`InteropService`](crate::InteropService)) through
//!   the generated adapter, when the `grpc` feature is on; without it they
//!   are closed.
//! * HTTP/1 requests are served by the HTTP/JSON bridge ([`drpc_http`]):
//!   `POST /service.Service/Method1` with a JSON or protobuf body, called
//!   through the same DRPC [`Server`] (its limits and shutdown apply).
//!
//! tonic serves any transport that implements its `Connected` trait;
//! drpc-server knows nothing of tonic, so [`GrpcTransport`] wraps the
//! shared port's connections for it:
//!
//! ```no_run
//! # #[cfg(feature = "grpc")]
//! # async fn serve(listener: tokio::net::TcpListener) -> Result<(), Box<dyn std::error::Error>> {
//! use drpc_interop::grpc::grpc_service;
//! use drpc_interop::shared::GrpcTransport;
//! use drpc_server::shared_port::{self, SniffOptions};
//! use futures_util::StreamExt;
//!
//! let port = shared_port::split(listener, SniffOptions::new())?;
//! let http2 = port.http2.map(|c| c.map(GrpcTransport));
//! tonic::transport::Server::builder()
//!     .add_service(grpc_service(4 << 20))
//!     .serve_with_incoming(http2)
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use drpc_conn::Channel;
use drpc_http::Bridge;
use drpc_server::shared_port::{self, Route, SniffOptions};
use drpc_server::{Rewind, Server};
use futures_util::StreamExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long an HTTP/1 client may take to send a request head.
const HTTP1_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection of the shared port's HTTP/2 route, as tonic serves it:
/// tonic's `Connected` gives handlers the client's address
/// (`Request::remote_addr`).
#[derive(Debug)]
pub struct GrpcTransport(pub Rewind<TcpStream>);

#[cfg(feature = "grpc")]
impl tonic::transport::server::Connected for GrpcTransport {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let socket = self.0.get_ref();
        tonic::transport::server::TcpConnectInfo {
            local_addr: socket.local_addr().ok(),
            remote_addr: socket.peer_addr().ok(),
        }
    }
}

impl AsyncRead for GrpcTransport {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcTransport {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Serves `listener` as a shared port (see the [module](self)): DRPC with
/// `server`, gRPC with tonic (messages of at most `max_message_size`
/// bytes), HTTP/1 with the HTTP/JSON bridge to `server`, until `shutdown` resolves; then shuts
/// `server` down with `grace` and lets tonic finish its calls. Returns
/// the DRPC server's error, else tonic's.
pub async fn serve_shared_port(
    server: &Server,
    listener: TcpListener,
    max_message_size: usize,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let port = shared_port::split(listener, SniffOptions::new())?;
    let bridge = Bridge::for_server(server.clone())
        .max_message_size(max_message_size)
        .descriptors(crate::pb::SERVICE_DESCRIPTOR_SET)
        .map_err(io::Error::other)?;
    let http1 = tokio::spawn(serve_http1(port.http1, bridge));
    let (stop, stopped) = watch::channel(false);
    #[cfg(feature = "grpc")]
    let grpc = {
        let mut stopped = stopped.clone();
        let http2 = port.http2.map(|c| c.map(GrpcTransport));
        // The DRPC implementation itself, through the generated adapter:
        // one implementation answers all three protocols.
        let adapter = crate::pb::service_server::ServiceServer::new(
            crate::pb::ServiceGrpcAdapter::new(std::sync::Arc::new(crate::InteropService)),
        )
        .max_decoding_message_size(max_message_size)
        .max_encoding_message_size(max_message_size);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(adapter)
                .serve_with_incoming_shutdown(http2, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        })
    };
    #[cfg(not(feature = "grpc"))]
    {
        let _ = max_message_size;
        drop((port.http2, stopped));
    }
    let drpc = server.serve_incoming(port.drpc);
    tokio::pin!(drpc);
    let result = tokio::select! {
        r = &mut drpc => r,
        _ = shutdown => {
            let _ = stop.send(true);
            let ((), r) = tokio::join!(server.shutdown(grace), drpc);
            r
        }
    };
    let _ = stop.send(true);
    #[cfg(feature = "grpc")]
    let grpc_result = match grpc.await {
        Ok(r) => r.map_err(io::Error::other),
        Err(e) => Err(io::Error::other(e)),
    };
    #[cfg(not(feature = "grpc"))]
    let grpc_result = Ok(());
    http1.abort();
    result.and(grpc_result)
}

/// Serves every connection of the HTTP/1 route with the bridge, each in a
/// task of its own.
async fn serve_http1(mut route: Route<Rewind<TcpStream>>, bridge: Bridge<Channel>) {
    while let Some(Ok(conn)) = route.next().await {
        let service = TowerToHyperService::new(bridge.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HTTP1_HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}
