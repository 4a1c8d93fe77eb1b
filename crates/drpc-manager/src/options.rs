//! Connection settings.

use drpc_stream::{DEFAULT_WRITER_HIGH_WATER, StreamOptions};

/// The default maximum number of concurrent streams per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: usize = 4096;

/// The default number of accepted streams that may wait for the server's
/// accept loop.
pub const DEFAULT_ACCEPT_BACKLOG: usize = 128;

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
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            stream: StreamOptions::default(),
            writer_high_water: DEFAULT_WRITER_HIGH_WATER,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            sequential: false,
            accept_backlog: DEFAULT_ACCEPT_BACKLOG,
        }
    }
}
