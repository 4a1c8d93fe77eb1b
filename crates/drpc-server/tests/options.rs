//! Options where users look: everything a user sets is a builder method
//! of `ServerOptions`, with the types it takes from `drpc_server` alone.

mod support;

use std::time::Duration;

use drpc_conn::{Conn, ConnOptions};
use drpc_server::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_SIZE, FlowControl,
    FlowControlMode, ServerOptions,
};
use support::*;

#[test]
fn the_builder_sets_what_users_set() {
    let defaults = ServerOptions::new();
    assert_eq!(defaults.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(defaults.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
    assert_eq!(defaults.handshake_timeout, None);
    assert_eq!(
        defaults.manager.stream.max_packet_size,
        DEFAULT_MAX_MESSAGE_SIZE
    );

    let opts = ServerOptions::new()
        .max_message_size(16 << 20)
        .max_concurrent_streams(64)
        .flow_control(FlowControl::fork())
        .max_connection_memory(8 << 20)
        .shared_memory(Some(64 << 20))
        .shared_write_memory(None)
        .max_metadata_size(4096)
        .recv_queue(32, 1 << 20)
        .max_connections(0)
        .idle_timeout(Some(Duration::ZERO))
        .handshake_timeout(Some(Duration::from_secs(3)))
        .inline_first_poll(true);
    assert_eq!(opts.manager.stream.max_packet_size, 16 << 20);
    assert_eq!(opts.manager.max_concurrent_streams, 64);
    assert_eq!(
        opts.manager.stream.flow_control.mode(),
        FlowControlMode::Fork
    );
    assert_eq!(opts.manager.max_connection_memory, 8 << 20);
    assert_eq!(
        opts.manager.shared_memory.as_ref().map(|b| b.limit()),
        Some(64 << 20)
    );
    assert!(opts.manager.shared_write_memory.is_none());
    assert_eq!(opts.manager.max_metadata_size, 4096);
    assert_eq!(opts.manager.stream.recv_queue_messages, 32);
    assert_eq!(opts.manager.stream.recv_queue_bytes, 1 << 20);
    assert_eq!(opts.max_connections, 1, "at least one");
    assert_eq!(opts.idle_timeout, None, "zero is none");
    assert_eq!(opts.handshake_timeout, Some(Duration::from_secs(3)));
    assert!(opts.inline_first_poll);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_size_set_by_the_builder_applies() {
    within(TEST_LIMIT, "max message size", async {
        let (_server, addr, _task, _events) =
            start_tcp(ServerOptions::new().max_message_size(100 << 10)).await;
        let conn = Conn::connect_tcp(addr, ConnOptions::default())
            .await
            .expect("connect");
        assert_eq!(call(&conn, ECHO, "small").await.expect("small"), "small");
        // Frames of 64 KiB, each within the limit: the call fails alone.
        let big = "x".repeat(200 << 10);
        let err = call(&conn, ECHO, &big)
            .await
            .expect_err("over the server's limit");
        assert!(err.is_too_large() || err.is_resource_exhausted(), "{err:?}");
        // The call failed alone.
        assert_eq!(call(&conn, ECHO, "again").await.expect("again"), "again");
    })
    .await;
}
