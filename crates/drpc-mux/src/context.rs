//! What a handler knows about the call it serves, and about who called.

use std::any::{Any, TypeId};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use drpc_wire::Metadata;
use tokio_util::sync::CancellationToken;

/// The call a handler serves: its path, metadata, deadline and
/// cancellation, who called ([`RequestContext::peer`]) and whether the
/// server is shutting down ([`RequestContext::shutting_down`]).
#[derive(Debug, Clone)]
pub struct RequestContext {
    rpc: String,
    stream_id: u64,
    metadata: Metadata,
    deadline: Option<Instant>,
    cancel: CancellationToken,
    /// Shared by every call of the connection: one reference count per
    /// call.
    connection: Option<Arc<ConnectionInfo>>,
    /// What interceptors added for the handler (empty, and unallocated,
    /// without them).
    extensions: Extensions,
}

/// The peer of a context built without one.
static UNKNOWN_PEER: PeerInfo = PeerInfo::unknown();

impl RequestContext {
    /// Builds the context of a call (the server does this), with an
    /// unknown peer and no shutdown signal until
    /// [`RequestContext::with_connection`].
    pub fn new(
        rpc: String,
        stream_id: u64,
        metadata: Metadata,
        deadline: Option<Instant>,
        cancel: CancellationToken,
    ) -> RequestContext {
        RequestContext {
            rpc,
            stream_id,
            metadata,
            deadline,
            cancel,
            connection: None,
            extensions: Extensions::new(),
        }
    }

    /// Attaches what the calls of one connection share: the peer and the
    /// server's shutdown signal (the server does this).
    pub fn with_connection(mut self, connection: Arc<ConnectionInfo>) -> RequestContext {
        self.connection = Some(connection);
        self
    }

    /// The RPC path, e.g. `/service.Service/Method1`.
    pub fn rpc(&self) -> &str {
        &self.rpc
    }

    /// The id of the stream carrying the call.
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    /// The metadata the client sent (without the reserved deadline key).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The call's metadata, to change what the handler sees: an
    /// [`Interceptor`](crate::Interceptor) or a layer that takes a
    /// credential out once checked, or fills in a default. The deadline is
    /// not metadata: [`RequestContext::deadline`] stays as the client set
    /// it.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// When the client stops waiting, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the call was cancelled (by the client, its deadline, the
    /// connection ending or the end of the server's shutdown grace
    /// period).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves once the call is cancelled. Work a handler hands to other
    /// tasks can watch this; the handler itself is dropped when its call
    /// is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// The token behind [`RequestContext::cancelled`].
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Who called: the peer's address (TCP, Unix socket, or unknown for
    /// other transports) and what the transport learned about it
    /// ([`PeerInfo::extensions`]: the Unix peer's [`UnixCredentials`], a
    /// TLS peer's certificates).
    pub fn peer(&self) -> &PeerInfo {
        match &self.connection {
            Some(connection) => &connection.peer,
            None => &UNKNOWN_PEER,
        }
    }

    /// The peer's IP address and port, for a call served over TCP.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer().socket_addr()
    }

    /// Whether the server has begun shutting down. A handler that streams
    /// for long should then finish what it is doing and return: after the
    /// grace period it is cancelled.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_token().is_some_and(|t| t.is_cancelled())
    }

    /// Resolves once the server begins shutting down (never, for a context
    /// built without a server). Meant for `tokio::select!` in a long
    /// stream: the call goes on during the server's grace period, and is
    /// cancelled ([`RequestContext::cancelled`]) when it is over.
    pub async fn shutting_down(&self) {
        match self.shutdown_token() {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// The token behind [`RequestContext::shutting_down`], for work handed
    /// to other tasks; `None` for a context built without a server.
    pub fn shutdown_token(&self) -> Option<&CancellationToken> {
        self.connection.as_ref().and_then(|c| c.shutdown.as_ref())
    }

    /// Values attached to this call by type, for the handler: what an
    /// [`Interceptor`](crate::Interceptor) learned (the authenticated
    /// user, say). Empty unless something inserted one.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The call's extensions, to add to them (what an
    /// [`Interceptor`](crate::Interceptor) does:
    /// `ctx.extensions_mut().insert(User(name))`).
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }
}

/// What the calls of one connection share: who the peer is, and the
/// server's shutdown signal. The server builds one per connection and
/// attaches it to each call's context ([`RequestContext::with_connection`]).
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    peer: PeerInfo,
    shutdown: Option<CancellationToken>,
}

impl ConnectionInfo {
    /// A connection to `peer`, without a shutdown signal.
    pub fn new(peer: PeerInfo) -> ConnectionInfo {
        ConnectionInfo {
            peer,
            shutdown: None,
        }
    }

    /// With `token`, cancelled when the server begins shutting down.
    pub fn with_shutdown(mut self, token: CancellationToken) -> ConnectionInfo {
        self.shutdown = Some(token);
        self
    }

    /// The peer.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
}

/// The address of the peer of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A Unix-domain socket peer, with its path if it is bound to one
    /// (clients seldom are; its [`UnixCredentials`], in
    /// [`PeerInfo::extensions`], say who it is).
    Unix(Option<PathBuf>),
    /// Another transport (in-memory pipes, a tunnel), or not said.
    #[default]
    Unknown,
}

impl PeerAddr {
    /// The IP address and port of a TCP peer.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            PeerAddr::Tcp(addr) => Some(*addr),
            _ => None,
        }
    }
}

impl fmt::Display for PeerAddr {
    /// `127.0.0.1:7777`, `unix:/run/peer.sock`, `unix` (unnamed) or
    /// `unknown`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(addr) => write!(f, "{addr}"),
            PeerAddr::Unix(Some(path)) => write!(f, "unix:{}", path.display()),
            PeerAddr::Unix(None) => f.write_str("unix"),
            PeerAddr::Unknown => f.write_str("unknown"),
        }
    }
}

/// Who is at the other end of a connection: its address, and whatever
/// else the transport learned about it, by type ([`Extensions`]): the
/// [`UnixCredentials`] of a Unix-socket peer, and, from a TLS layer, the
/// peer's certificate chain.
///
/// A listener given to `Server::serve_incoming` yields one with each
/// transport.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    addr: PeerAddr,
    extensions: Extensions,
}

impl PeerInfo {
    /// A peer nothing is known about.
    pub const fn unknown() -> PeerInfo {
        PeerInfo {
            addr: PeerAddr::Unknown,
            extensions: Extensions::new(),
        }
    }

    /// A peer at `addr`.
    pub fn new(addr: PeerAddr) -> PeerInfo {
        PeerInfo {
            addr,
            extensions: Extensions::new(),
        }
    }

    /// A TCP peer.
    pub fn tcp(addr: SocketAddr) -> PeerInfo {
        PeerInfo::new(PeerAddr::Tcp(addr))
    }

    /// A Unix-socket peer, bound to `path` if it is.
    pub fn unix(path: Option<PathBuf>) -> PeerInfo {
        PeerInfo::new(PeerAddr::Unix(path))
    }

    /// With `value` among its extensions (replacing one of the same type).
    pub fn with_extension<T: Any + Send + Sync>(mut self, value: T) -> PeerInfo {
        self.extensions.insert(value);
        self
    }

    /// The peer's address.
    pub fn addr(&self) -> &PeerAddr {
        &self.addr
    }

    /// The IP address and port of a TCP peer.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr.socket_addr()
    }

    /// What the transport learned about the peer, by type.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The extensions, to add to them.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }
}

/// Values of any type, at most one per type, shared by clones: what a
/// transport learned about its peer ([`PeerInfo::extensions`]), or what
/// an interceptor attached to a call ([`RequestContext::extensions`]).
#[derive(Clone, Default)]
pub struct Extensions {
    /// Few entries (a transport adds one or two): a list beats a map.
    entries: Vec<(TypeId, &'static str, Arc<dyn Any + Send + Sync>)>,
}

impl Extensions {
    /// No values.
    pub const fn new() -> Extensions {
        Extensions {
            entries: Vec::new(),
        }
    }

    /// Adds `value`, replacing the value of the same type if there is one.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        let entry = (
            TypeId::of::<T>(),
            std::any::type_name::<T>(),
            Arc::new(value) as Arc<dyn Any + Send + Sync>,
        );
        match self.entries.iter_mut().find(|e| e.0 == entry.0) {
            Some(slot) => *slot = entry,
            None => self.entries.push(entry),
        }
    }

    /// The value of type `T`, if there is one.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.entries
            .iter()
            .find(|e| e.0 == TypeId::of::<T>())
            .and_then(|e| e.2.downcast_ref())
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Extensions {
    /// The types of the values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.entries.iter().map(|e| e.1))
            .finish()
    }
}

/// The credentials of a Unix-socket peer process, as the kernel reports
/// them when the connection is accepted (`SO_PEERCRED` and the like):
/// `Server::serve_unix` puts them in [`PeerInfo::extensions`] where the
/// platform has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnixCredentials {
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
    /// The peer's process id, where the platform says.
    pub pid: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_without_a_connection_has_an_unknown_peer_and_no_shutdown() {
        let ctx = RequestContext::new(
            "/a.B/C".into(),
            1,
            Metadata::new(),
            None,
            CancellationToken::new(),
        );
        assert_eq!(ctx.peer().addr(), &PeerAddr::Unknown);
        assert_eq!(ctx.peer_addr(), None);
        assert!(!ctx.is_shutting_down());
        assert!(ctx.shutdown_token().is_none());
    }

    #[test]
    fn the_connection_gives_the_peer_and_the_shutdown_signal() {
        let addr: SocketAddr = "127.0.0.1:7777".parse().expect("addr");
        let shutdown = CancellationToken::new();
        let creds = UnixCredentials {
            uid: 1,
            gid: 2,
            pid: Some(3),
        };
        let conn = Arc::new(
            ConnectionInfo::new(PeerInfo::tcp(addr).with_extension(creds))
                .with_shutdown(shutdown.clone()),
        );
        let ctx = RequestContext::new(
            "/a.B/C".into(),
            1,
            Metadata::new(),
            None,
            CancellationToken::new(),
        )
        .with_connection(conn);
        assert_eq!(ctx.peer_addr(), Some(addr));
        assert_eq!(ctx.peer().addr().to_string(), "127.0.0.1:7777");
        assert_eq!(
            ctx.peer().extensions().get::<UnixCredentials>(),
            Some(&creds)
        );
        assert!(ctx.peer().extensions().get::<String>().is_none());
        assert!(!ctx.is_shutting_down());
        shutdown.cancel();
        assert!(ctx.is_shutting_down());
        assert!(!ctx.is_cancelled(), "shutting down is not cancelling");
    }

    #[test]
    fn extensions_keep_one_value_per_type() {
        let mut ext = Extensions::new();
        assert!(ext.is_empty());
        ext.insert(5u32);
        ext.insert(String::from("a"));
        ext.insert(7u32);
        assert_eq!(ext.len(), 2);
        assert_eq!(ext.get::<u32>(), Some(&7));
        assert_eq!(ext.get::<String>().map(String::as_str), Some("a"));
        assert_eq!(format!("{ext:?}"), r#"{"u32", "alloc::string::String"}"#);
    }

    #[test]
    fn peer_addresses_display() {
        assert_eq!(PeerAddr::Unix(None).to_string(), "unix");
        assert_eq!(
            PeerAddr::Unix(Some("/run/x.sock".into())).to_string(),
            "unix:/run/x.sock"
        );
        assert_eq!(PeerAddr::Unknown.to_string(), "unknown");
    }
}
