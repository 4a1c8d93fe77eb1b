//! What a handler knows about the call it serves.

use std::time::Instant;

use drpc_wire::Metadata;
use tokio_util::sync::CancellationToken;

/// The call a handler serves: its path, metadata, deadline and
/// cancellation.
#[derive(Debug, Clone)]
pub struct RequestContext {
    rpc: String,
    stream_id: u64,
    metadata: Metadata,
    deadline: Option<Instant>,
    cancel: CancellationToken,
}

impl RequestContext {
    /// Builds the context of a call (the server does this).
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
        }
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

    /// When the client stops waiting, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the call was cancelled (by the client, its deadline, the
    /// connection ending or the server shutting down).
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
}
