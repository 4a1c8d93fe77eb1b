//! Connection settings.

use std::sync::Arc;

use drpc_stream::{DEFAULT_WRITER_HIGH_WATER, FlowControl, MemoryBudget, StreamOptions};
use drpc_wire::Compression;

/// The default maximum number of concurrent streams per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: usize = 4096;

/// The default number of accepted streams that may wait for the server's
/// accept loop.
pub const DEFAULT_ACCEPT_BACKLOG: usize = 128;

/// The default memory a connection may hold for its peer before its reader
/// stops reading: 32 MiB.
pub const DEFAULT_CONNECTION_MEMORY: usize = 32 << 20;

/// The default memory all connections sharing one [`ManagerOptions`] value
/// (every connection of a server) may hold together: 256 MiB.
pub const DEFAULT_SHARED_MEMORY: usize = 256 << 20;

/// The default budget for bytes waiting to be written, shared by the
/// connections made with the same options: 256 MiB.
pub const DEFAULT_SHARED_WRITE_MEMORY: usize = 256 << 20;

/// The default largest InvokeMetadata accepted: 256 KiB, counted as its
/// in-memory size once parsed (each entry's key and value plus 96 bytes,
/// in the spirit of HTTP/2's header list size), and never more on the wire.
pub const DEFAULT_MAX_METADATA_SIZE: usize = 256 << 10;

/// Which side of the connection a manager is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Opens streams (Go's `drpcconn`).
    Client,
    /// Accepts streams from the peer's Invokes (Go's `drpcserver`).
    Server,
}

/// Settings of one connection, with documented defaults.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Per-stream settings, including the maximum packet size accepted from
    /// the peer (default 4 MiB, as Go) and the receive queue bounds (256
    /// messages, 8 MiB).
    pub stream: StreamOptions,
    /// Buffered outgoing bytes above which message senders wait for the
    /// writer task (default 1 MiB). Control packets never wait.
    pub writer_high_water: usize,
    /// The most streams open at once (default 4096). A client refuses to
    /// open more (a stream-level error); a server refuses the peer's extra
    /// Invokes with an Error packet on that stream. The connection
    /// survives either way.
    pub max_concurrent_streams: usize,
    /// Sequential mode, for peers running the original one-stream-at-a-time
    /// Go implementation: a client opens at most one stream at a time, each
    /// waiting until the previous has terminated, and frames received must
    /// follow the original connection-wide id order (multiplexing.md §9.3).
    /// Default `false` (multiplexed). A server needs no setting to serve
    /// sequential peers.
    pub sequential: bool,
    /// How many accepted streams may wait for the server's accept loop
    /// before the reader waits (default 128).
    pub accept_backlog: usize,
    /// The memory the connection may hold for its peer (default
    /// [`DEFAULT_CONNECTION_MEMORY`]): received messages not yet taken,
    /// half-assembled packets, Invokes being assembled or served (path and
    /// metadata, at their in-memory size) and bytes waiting to be written,
    /// Error and refusal replies included. Above it the connection stops
    /// reading until the application or the transport frees some: TCP
    /// backpressure on the peer.
    pub max_connection_memory: usize,
    /// A budget shared by every connection made with clones of these
    /// options (by default one of [`DEFAULT_SHARED_MEMORY`], created with
    /// the options, so a server's connections share it); `None` for no
    /// shared limit.
    pub shared_memory: Option<Arc<MemoryBudget>>,
    /// A budget for Messages waiting to be written, shared like
    /// `shared_memory` (by default one of [`DEFAULT_SHARED_WRITE_MEMORY`]):
    /// a send reserves its bytes before it is appended and waits while the
    /// budget is full, so that however many peers stop reading, what waits
    /// for them stays bounded. `None` for no limit beyond each connection's
    /// `writer_high_water`.
    pub shared_write_memory: Option<Arc<MemoryBudget>>,
    /// The largest InvokeMetadata accepted from the peer, counted on the
    /// wire and once parsed (default [`DEFAULT_MAX_METADATA_SIZE`]); a
    /// larger one ends the connection, as a malformed one does.
    pub max_metadata_size: usize,
    /// The compression of the streams a client opens (default `None`), for
    /// [`Manager::open_stream`](crate::Manager::open_stream) and the other
    /// `open_` methods without an explicit choice: each such stream asks
    /// for it in its InvokeMetadata (`drpc-compression`) and compresses
    /// every Message both ways (mux-fork-2026.md §4).
    ///
    /// **Set it only for servers known to accept it**: CockroachDB's fork,
    /// or a server of this implementation. Nothing on the wire tells a
    /// client whether its server does: a stock Go server would hand the
    /// compressed bytes to its handler's decoder, and the call fails there
    /// or, worse, decodes garbage. A server needs no setting: it follows
    /// what each client asks for, and refuses a stream whose compression it
    /// does not know.
    pub compression: Option<Compression>,
    /// Like `compression`, but only once the server has said that it
    /// decompresses it (default `None`): a server of this implementation
    /// says so when it accepts a stream's flow-control offer (the
    /// negotiation of flow control's auto mode, on by default on both sides),
    /// listing what it decompresses
    /// ([`drpc_wire::FlowNegotiation::Accept`]). Streams opened before the
    /// first such answer, and every stream toward a server that never
    /// gives one (a stock Go server, the fork, flow control off), go
    /// uncompressed. `compression`, when set, wins.
    pub compression_if_accepted: Option<Compression>,
}

impl ManagerOptions {
    /// Options for a peer of CockroachDB's fork running with flow control
    /// on: the fork's flow control and its 64 MiB message limit.
    pub fn fork_flow_control() -> ManagerOptions {
        let mut opts = ManagerOptions::default();
        opts.stream.flow_control = FlowControl::fork();
        opts.stream.max_packet_size = FlowControl::FORK_MAX_MESSAGE;
        opts
    }
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            stream: StreamOptions::default(),
            writer_high_water: DEFAULT_WRITER_HIGH_WATER,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            sequential: false,
            accept_backlog: DEFAULT_ACCEPT_BACKLOG,
            max_connection_memory: DEFAULT_CONNECTION_MEMORY,
            shared_memory: Some(Arc::new(MemoryBudget::new(DEFAULT_SHARED_MEMORY, None))),
            shared_write_memory: Some(Arc::new(MemoryBudget::new(
                DEFAULT_SHARED_WRITE_MEMORY,
                None,
            ))),
            max_metadata_size: DEFAULT_MAX_METADATA_SIZE,
            compression: None,
            compression_if_accepted: None,
        }
    }
}
