//! What the observability tests share: a mux with a handler that logs
//! after an await and one that fails, in-memory connections from a fixed
//! peer, and one call.

use std::time::Duration;

use bytes::Bytes;
use drpc_conn::{CallOptions, Conn, ConnOptions};
use drpc_mux::{Mux, RequestContext};
use drpc_server::{PeerInfo, Server};
use drpc_stream::Raw;
use drpc_wire::CodedError;

pub(crate) const SLEEPY: &str = "/t.Obs/Sleepy";
pub(crate) const FAIL: &str = "/t.Obs/Fail";
pub(crate) const PEER: &str = "192.0.2.7:4242";
pub(crate) const LIMIT: Duration = Duration::from_secs(20);

/// A handler that logs after an await, and one that fails.
pub(crate) fn mux() -> Mux {
    let mut mux = Mux::new();
    mux.unary(SLEEPY, Raw, |_: RequestContext, req: Bytes| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        tracing::info!(marker = "after-await", "handler line");
        Ok(req)
    });
    mux.unary(FAIL, Raw, |_: RequestContext, _: Bytes| async move {
        Err::<Bytes, _>(CodedError::not_found("no such thing"))
    });
    mux
}

/// Serves one in-memory connection from `PEER`; the connection task's
/// handle, and a client.
pub(crate) fn connect(server: &Server) -> (tokio::task::JoinHandle<()>, Conn) {
    let (client, served) = tokio::io::duplex(64 * 1024);
    let server = server.clone();
    let peer = PeerInfo::tcp(PEER.parse().expect("addr"));
    let task = tokio::spawn(async move {
        server.serve_connection_with_peer(served, peer).await;
    });
    (task, Conn::new(client, ConnOptions::default()))
}

pub(crate) async fn call(conn: &Conn, rpc: &str) -> Result<Bytes, drpc_conn::Error> {
    conn.unary_with(&Raw, rpc, &Bytes::from_static(b"hi"), &CallOptions::new())
        .await
}
