//! The writer task behind a transport whose writes never complete
//! (multiplexing.md §3.10, §6; semantics.md §13 items 43, 80, 88): closing
//! still returns promptly, and a send held back by the write buffer's
//! high-water mark returns once its stream is cancelled.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use drpc_manager::{Manager, ManagerOptions, Role};
use drpc_stream::{ConnectionError, Initiator, Stream, StreamError, StreamErrorKind};
use support::{BlockedWrites, Peer, assert_connection_lost, bounded, eventually, kind_of, step};

const RPC: &str = "/service.Service/Method1";

/// How long "promptly" is.
const PROMPT: Duration = Duration::from_secs(1);

/// A manager of `role` whose writes block forever; the peer can still
/// write to it. The counter says how many writes were attempted.
fn blocked(role: Role, opts: ManagerOptions) -> (Manager, Peer, Arc<std::sync::Mutex<usize>>) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (transport, attempts) = BlockedWrites::new(ours);
    (
        Manager::new(transport, role, opts),
        Peer::new(theirs),
        attempts,
    )
}

/// Opens a stream and starts a task that sends 4 KiB messages until a
/// send fails; returns once that task is stuck waiting for the writer
/// (whose first write, the Invoke, never completes).
async fn sender_stuck_behind_high_water(
    client: &Manager,
    attempts: &Arc<std::sync::Mutex<usize>>,
) -> (Arc<Stream>, tokio::task::JoinHandle<StreamError>) {
    let call = Arc::new(
        client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open"),
    );
    eventually("write attempted", || *attempts.lock().expect("n") > 0).await;
    let sent = Arc::new(AtomicUsize::new(0));
    let task = {
        let (call, sent) = (call.clone(), sent.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = call.send(&[3; 4096]).await {
                    return e;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // The writer is stuck with its first batch (the Invoke): one message
    // is appended under the 1 KiB mark, the next one waits.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "send waits for the writer");
    assert_eq!(sent.load(Ordering::SeqCst), 1, "one message fits");
    (call, task)
}

/// `Manager::close` returns promptly although the writer task is stuck in
/// a write, and the stream sees the connection's end.
#[tokio::test]
async fn close_returns_with_a_stuck_writer() {
    bounded(async {
        let (client, mut peer, attempts) = blocked(Role::Client, ManagerOptions::default());
        let call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        call.send(&[7; 100_000]).await.expect("buffered");
        eventually("write attempted", || *attempts.lock().expect("n") > 0).await;

        tokio::time::timeout(PROMPT, client.close())
            .await
            .expect("close returned promptly");
        assert_eq!(client.active_streams(), 0);
        let err = kind_of(step("recv", call.recv()).await);
        assert_connection_lost(&err, &ConnectionError::Closed);
        // Both tasks are gone, and with them the transport: the peer sees
        // the end of file (and nothing of what was stuck).
        assert!(peer.expect_eof().await.is_empty());
    })
    .await
}

/// Dropping the last handle with a stuck writer also ends the connection:
/// the streams fail at once.
#[tokio::test]
async fn drop_with_a_stuck_writer_ends_the_streams() {
    bounded(async {
        let (server, mut peer, attempts) = blocked(Role::Server, ManagerOptions::default());
        peer.send(1, 1, drpc_wire::Kind::INVOKE, RPC.as_bytes())
            .await;
        let s = step("accept", server.accept())
            .await
            .expect("accepted")
            .stream;
        s.send(b"stuck").await.expect("buffered");
        eventually("write attempted", || *attempts.lock().expect("n") > 0).await;
        drop(server);
        let err = kind_of(step("recv", s.recv()).await);
        assert_connection_lost(&err, &ConnectionError::Closed);
    })
    .await
}

/// A send waiting for room in the write buffer (high-water mark) returns
/// within a second of its stream's cancel, with EOF that `check_cancel`
/// turns into the cancellation; the connection survives and the stream's
/// other operations never wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_blocked_by_high_water_returns_after_cancel() {
    bounded(async {
        let opts = ManagerOptions {
            writer_high_water: 1024,
            ..ManagerOptions::default()
        };
        let (client, _peer, attempts) = blocked(Role::Client, opts);
        let (call, blocked_send) = sender_stuck_behind_high_water(&client, &attempts).await;
        // Other streams' sends wait too, and opening a stream does not.
        let other = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        support::assert_pending("other send", other.send(b"x")).await;

        call.cancel(StreamErrorKind::Canceled(Initiator::Local));
        let err = tokio::time::timeout(PROMPT, blocked_send)
            .await
            .expect("send returned promptly after cancel")
            .expect("task");
        assert!(matches!(err.kind(), StreamErrorKind::Eof), "{err:?}");
        assert!(matches!(
            call.check_cancel(err).kind(),
            StreamErrorKind::Canceled(Initiator::Local)
        ));
        assert!(matches!(
            kind_of(step("recv", call.recv()).await),
            StreamErrorKind::Canceled(Initiator::Local)
        ));
        assert!(client.termination().is_none());
        // Control packets never wait for the writer.
        other.close_send().expect("close_send");
        other.cancel(StreamErrorKind::Canceled(Initiator::Local));

        tokio::time::timeout(PROMPT, client.close())
            .await
            .expect("close returned promptly");
    })
    .await
}

/// A send waiting for room in the write buffer returns when the
/// connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_blocked_by_high_water_returns_on_close() {
    bounded(async {
        let opts = ManagerOptions {
            writer_high_water: 1024,
            ..ManagerOptions::default()
        };
        let (client, _peer, attempts) = blocked(Role::Client, opts);
        let (call, blocked_send) = sender_stuck_behind_high_water(&client, &attempts).await;

        tokio::time::timeout(PROMPT, client.close())
            .await
            .expect("close returned promptly");
        let err = tokio::time::timeout(PROMPT, blocked_send)
            .await
            .expect("send returned promptly after close")
            .expect("task");
        // Either EOF (the stream ended first) or the connection error (the
        // send got past the stream check first); never a hang or success.
        match err.kind() {
            StreamErrorKind::Eof => {}
            other => assert_connection_lost(other, &ConnectionError::Closed),
        }
        assert_connection_lost(
            &kind_of(step("recv", call.recv()).await),
            &ConnectionError::Closed,
        );
    })
    .await
}
