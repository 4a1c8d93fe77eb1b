//! The sans-IO state machine of one stream.
//!
//! [`StreamCore`] takes frames and local operations and answers with what
//! to send (an [`Id`] and a kind) and what the application sees. It does no
//! I/O, takes no lock and knows no clock; [`crate::Stream`] drives it.

use bytes::Bytes;
use drpc_wire::{CodedError, Frame, Id, Kind, PacketAssembler};

use crate::queue::RecvQueue;
use crate::{ConnectionError, Initiator, StreamErrorKind, StreamKind, StreamOptions};

/// What a receive sees once the queue is empty.
#[derive(Debug, Clone)]
enum RecvEnd {
    /// A clean end: the peer's CloseSend or Close.
    Eof,
    /// An error.
    Error(StreamErrorKind),
}

/// What happened to an inbound frame.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// Nothing the application can see changed.
    Nothing,
    /// A message was queued.
    Queued,
    /// A message is complete but the queue is full: the driver must wait
    /// for room and offer it again with [`StreamCore::try_enqueue`].
    QueueFull(Bytes),
    /// The stream's state changed (half closed or terminated).
    StateChanged,
}

/// The outcome of a receive attempt.
#[derive(Debug)]
pub(crate) enum Recv {
    /// The next message.
    Message(Bytes),
    /// The clean end of the stream.
    End,
    /// The receive side failed.
    Failed(StreamErrorKind),
    /// Nothing yet.
    Empty,
}

/// One stream's protocol state (semantics.md §3.5, multiplexing.md §3.7).
///
/// "First error wins": each of the send side, the receive side, the
/// termination and the cancel flag is set once, and later events never
/// overwrite it.
#[derive(Debug)]
pub(crate) struct StreamCore {
    id: u64,
    kind: StreamKind,
    /// The last message id this side used; the next packet takes +1.
    sent: u64,
    assembler: PacketAssembler,
    queue: RecvQueue,
    /// Set once sending is over: what every later send returns.
    send_end: Option<StreamErrorKind>,
    /// Set once receiving is over: what a receive returns after the queue.
    recv_end: Option<RecvEnd>,
    /// Set when the stream was cancelled: replaces errors of in-flight
    /// operations (Go's `checkCancelError`).
    cancel: Option<StreamErrorKind>,
    local_close_send: bool,
    remote_close_send: bool,
    terminated: bool,
}

impl StreamCore {
    pub(crate) fn new(id: u64, kind: StreamKind, opts: &StreamOptions) -> StreamCore {
        StreamCore {
            id,
            kind,
            sent: 0,
            assembler: PacketAssembler::for_stream(id, opts.max_packet_size),
            queue: RecvQueue::new(opts.recv_queue_messages, opts.recv_queue_bytes),
            send_end: None,
            recv_end: None,
            cancel: None,
            local_close_send: false,
            remote_close_send: false,
            terminated: false,
        }
    }

    pub(crate) fn is_terminated(&self) -> bool {
        self.terminated
    }

    pub(crate) fn is_send_closed(&self) -> bool {
        self.send_end.is_some()
    }

    pub(crate) fn kind(&self) -> StreamKind {
        self.kind
    }

    fn next_id(&mut self) -> Id {
        self.sent = self.sent.saturating_add(1);
        Id::new(self.id, self.sent)
    }

    /// Ends the stream: sends and receives that are not yet decided fail
    /// with `reason`. Queued messages stay deliverable unless `discard`.
    fn terminate(&mut self, reason: StreamErrorKind, discard: bool) {
        if self.send_end.is_none() {
            self.send_end = Some(reason.clone());
        }
        if self.recv_end.is_none() {
            self.recv_end = Some(RecvEnd::Error(reason.clone()));
        }
        if discard && self.queue.pop().is_some() {
            // Messages the application will never see: it must not take
            // the end that follows them for a clean one.
            self.queue.clear();
            self.recv_end = Some(RecvEnd::Error(reason));
        }
        self.terminated = true;
    }

    /// Replaces `err` with the cancellation once the stream is cancelled.
    pub(crate) fn check_cancel(&self, err: StreamErrorKind) -> StreamErrorKind {
        self.cancel.clone().unwrap_or(err)
    }

    /// Allocates the id of an outgoing Message, or says why sending is over.
    pub(crate) fn begin_message(&mut self) -> Result<Id, StreamErrorKind> {
        if let Some(err) = &self.send_end {
            return Err(err.clone());
        }
        Ok(self.next_id())
    }

    /// Allocates the ids of InvokeMetadata (if `with_metadata`) and Invoke,
    /// in that order, in one step so that nothing can come between them.
    pub(crate) fn begin_invoke(
        &mut self,
        with_metadata: bool,
    ) -> Result<(Option<Id>, Id), StreamErrorKind> {
        if let Some(err) = &self.send_end {
            return Err(err.clone());
        }
        let metadata = with_metadata.then(|| self.next_id());
        Ok((metadata, self.next_id()))
    }

    /// Local CloseSend: the id to send it with, or `None` when sending was
    /// already over (a silent no-op).
    pub(crate) fn close_send(&mut self) -> Option<Id> {
        if self.send_end.is_some() || self.terminated {
            return None;
        }
        self.send_end = Some(StreamErrorKind::SendClosed);
        self.local_close_send = true;
        if self.remote_close_send {
            // Both sides closed: the normal end; the receive side already
            // reports the clean end.
            self.terminated = true;
        }
        Some(self.next_id())
    }

    /// Local Close: the id to send it with, or `None` once terminated.
    pub(crate) fn close(&mut self) -> Option<Id> {
        if self.terminated {
            return None;
        }
        self.terminate(StreamErrorKind::TerminatedByClose, true);
        Some(self.next_id())
    }

    /// Local Error: the id to send it with, or `None` once terminated.
    pub(crate) fn send_error(&mut self) -> Option<Id> {
        if self.terminated {
            return None;
        }
        self.send_end.get_or_insert(StreamErrorKind::Eof);
        self.terminate(StreamErrorKind::TerminatedBySendError, true);
        Some(self.next_id())
    }

    /// Local cancellation with `reason` (Canceled or DeadlineExceeded). The
    /// id of the Cancel packet when `send_frame`, and `None` once
    /// terminated: a terminated stream sends nothing more.
    pub(crate) fn cancel(&mut self, reason: StreamErrorKind, send_frame: bool) -> Option<Id> {
        if self.terminated {
            return None;
        }
        self.cancel = Some(reason.clone());
        self.send_end.get_or_insert(StreamErrorKind::Eof);
        self.terminate(reason, true);
        send_frame.then(|| self.next_id())
    }

    /// Ends the stream silently because its side of the RPC is complete
    /// (a server handler that already sent CloseSend or Error and let go).
    pub(crate) fn abandon(&mut self) {
        if !self.terminated {
            self.terminate(StreamErrorKind::Canceled(Initiator::Local), true);
        }
    }

    /// The connection ended: the stream fails with `reason`, after any
    /// queued messages.
    pub(crate) fn connection_lost(&mut self, reason: StreamErrorKind) {
        if self.terminated {
            return;
        }
        if matches!(reason, StreamErrorKind::Canceled(_)) {
            self.cancel = Some(reason.clone());
        }
        self.send_end.get_or_insert(StreamErrorKind::Eof);
        self.terminate(reason, false);
    }

    /// Applies one inbound frame. An error is fatal for the connection.
    pub(crate) fn handle_frame(&mut self, frame: Frame) -> Result<Inbound, ConnectionError> {
        if self.terminated {
            return Ok(Inbound::Nothing);
        }
        let Some(packet) = self.assembler.push(frame)? else {
            return Ok(Inbound::Nothing);
        };
        match packet.kind {
            Kind::MESSAGE => {
                if self.recv_end.is_some() {
                    // After the peer's CloseSend: nobody will read it.
                    return Ok(Inbound::Nothing);
                }
                Ok(match self.queue.try_push(packet.data) {
                    Ok(()) => Inbound::Queued,
                    Err(data) => Inbound::QueueFull(data),
                })
            }
            Kind::ERROR => {
                let err = CodedError::decode(&packet.data);
                self.recv_end
                    .get_or_insert(RecvEnd::Error(StreamErrorKind::Remote(err)));
                self.send_end.get_or_insert(StreamErrorKind::Eof);
                self.terminate(StreamErrorKind::Eof, false);
                Ok(Inbound::StateChanged)
            }
            Kind::CANCEL => {
                let canceled = StreamErrorKind::Canceled(Initiator::Remote);
                self.cancel.get_or_insert(canceled.clone());
                self.send_end.get_or_insert(StreamErrorKind::Eof);
                self.terminate(canceled, false);
                Ok(Inbound::StateChanged)
            }
            Kind::CLOSE => {
                self.recv_end.get_or_insert(RecvEnd::Eof);
                self.send_end.get_or_insert(StreamErrorKind::ClosedByRemote);
                self.terminate(StreamErrorKind::ClosedByRemote, false);
                Ok(Inbound::StateChanged)
            }
            Kind::CLOSE_SEND => {
                self.remote_close_send = true;
                self.recv_end.get_or_insert(RecvEnd::Eof);
                if self.local_close_send {
                    self.terminated = true;
                }
                Ok(Inbound::StateChanged)
            }
            Kind::INVOKE | Kind::INVOKE_METADATA => {
                Err(ConnectionError::InvokeOnExistingStream { stream: self.id })
            }
            _ if packet.control => Ok(Inbound::Nothing),
            kind => Err(ConnectionError::UnknownKind {
                stream: self.id,
                kind,
            }),
        }
    }

    /// Offers again a message that found the queue full. `Err` gives it
    /// back while there is still no room; once the stream has terminated
    /// the message is dropped.
    pub(crate) fn try_enqueue(&mut self, data: Bytes) -> Result<(), Bytes> {
        // The reader waits while holding the message, so nothing from the
        // peer can have ended the stream meanwhile: only a local close or
        // cancel (which discarded the queue) or the connection's end.
        if self.terminated {
            return Ok(());
        }
        self.queue.try_push(data)
    }

    /// Takes the next message, or the end of the receive side once the
    /// queue is empty.
    pub(crate) fn recv(&mut self) -> Recv {
        if let Some(data) = self.queue.pop() {
            return Recv::Message(data);
        }
        match &self.recv_end {
            None => Recv::Empty,
            Some(RecvEnd::Eof) => Recv::End,
            Some(RecvEnd::Error(e)) => Recv::Failed(e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Sans-IO tests: frames and local operations in, ids and receive
    //! results out (semantics.md §3.5, §3.6; protocol.md §7.2).

    use super::*;
    use crate::ConnectionError;
    use drpc_wire::WireError;

    const SID: u64 = 7;

    macro_rules! assert_matches {
        ($e:expr, $p:pat $(if $g:expr)? $(,)?) => {
            match $e {
                $p $(if $g)? => {}
                ref other => panic!(
                    "expected {}, got {:?}",
                    stringify!($p $(if $g)?),
                    other
                ),
            }
        };
    }

    fn opts(messages: usize, bytes: usize) -> StreamOptions {
        StreamOptions {
            recv_queue_messages: messages,
            recv_queue_bytes: bytes,
            ..StreamOptions::default()
        }
    }

    fn client() -> StreamCore {
        StreamCore::new(SID, StreamKind::Client, &StreamOptions::default())
    }

    fn server() -> StreamCore {
        StreamCore::new(SID, StreamKind::Server, &StreamOptions::default())
    }

    fn frame(mid: u64, kind: Kind, done: bool, control: bool, data: &'static [u8]) -> Frame {
        Frame {
            id: Id::new(SID, mid),
            kind,
            done,
            control,
            data: Bytes::from_static(data),
        }
    }

    /// A whole single-frame packet without payload.
    fn pkt(mid: u64, kind: Kind) -> Frame {
        frame(mid, kind, true, false, b"")
    }

    fn msg(mid: u64, data: &'static [u8]) -> Frame {
        frame(mid, Kind::MESSAGE, true, false, data)
    }

    fn error_frame(mid: u64, code: u64, text: &str) -> Frame {
        let mut payload = Vec::new();
        CodedError::new(code, text).append_to(&mut payload);
        Frame {
            id: Id::new(SID, mid),
            kind: Kind::ERROR,
            done: true,
            control: false,
            data: Bytes::from(payload),
        }
    }

    fn feed(c: &mut StreamCore, f: Frame) -> Inbound {
        c.handle_frame(f).expect("frame accepted")
    }

    fn queue(c: &mut StreamCore, mid: u64, data: &'static [u8]) {
        assert_matches!(feed(c, msg(mid, data)), Inbound::Queued);
    }

    fn expect_message(c: &mut StreamCore, want: &[u8]) {
        match c.recv() {
            Recv::Message(data) => assert_eq!(&data[..], want),
            other => panic!("expected message {want:?}, got {other:?}"),
        }
    }

    /// Every terminal op is a silent no-op on a terminated stream: none
    /// allocates an id, so nothing is sent.
    fn assert_terminal_ops_silent(c: &mut StreamCore) {
        assert!(c.is_terminated());
        assert_eq!(c.close_send(), None, "close_send after termination");
        assert_eq!(c.close(), None, "close after termination");
        assert_eq!(c.send_error(), None, "send_error after termination");
        assert_eq!(
            c.cancel(StreamErrorKind::Canceled(Initiator::Local), true),
            None,
            "cancel after termination"
        );
        assert_eq!(c.cancel(StreamErrorKind::DeadlineExceeded, false), None);
        assert!(c.is_terminated());
    }

    // ---- semantics.md §3.6, one row per test: Send and Recv afterwards ----

    #[test]
    fn local_close() {
        let mut c = client();
        queue(&mut c, 1, b"discarded");
        assert_eq!(c.close(), Some(Id::new(SID, 1)));
        assert!(c.is_terminated() && c.is_send_closed());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::TerminatedByClose));
        assert_matches!(
            c.begin_invoke(false),
            Err(StreamErrorKind::TerminatedByClose)
        );
        // The queued message is discarded by a local close.
        assert_matches!(c.recv(), Recv::Failed(StreamErrorKind::TerminatedByClose));
        assert_matches!(c.recv(), Recv::Failed(StreamErrorKind::TerminatedByClose));
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn local_send_error() {
        let mut c = server();
        queue(&mut c, 1, b"discarded");
        assert_eq!(c.send_error(), Some(Id::new(SID, 1)));
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::Eof));
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::TerminatedBySendError)
        );
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn local_close_send() {
        let mut c = client();
        assert_eq!(c.begin_message().ok(), Some(Id::new(SID, 1)));
        assert_eq!(c.close_send(), Some(Id::new(SID, 2)));
        assert!(c.is_send_closed());
        assert!(!c.is_terminated(), "half closed only");
        assert_matches!(c.begin_message(), Err(StreamErrorKind::SendClosed));
        // A second close_send is a silent no-op.
        assert_eq!(c.close_send(), None);
        // The receive side is unaffected: data, then whatever ends it.
        assert_matches!(c.recv(), Recv::Empty);
        queue(&mut c, 1, b"reply");
        expect_message(&mut c, b"reply");
        assert_matches!(c.recv(), Recv::Empty);
        // Close still works on a half-closed stream.
        assert_eq!(c.close(), Some(Id::new(SID, 3)));
        assert_matches!(c.begin_message(), Err(StreamErrorKind::SendClosed));
        assert_matches!(c.recv(), Recv::Failed(StreamErrorKind::TerminatedByClose));
    }

    #[test]
    fn local_cancel_canceled() {
        let mut c = client();
        queue(&mut c, 1, b"discarded");
        let reason = StreamErrorKind::Canceled(Initiator::Local);
        assert_eq!(c.cancel(reason, true), Some(Id::new(SID, 1)));
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::Eof));
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Canceled(Initiator::Local))
        );
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn local_cancel_deadline_exceeded() {
        let mut c = client();
        queue(&mut c, 1, b"discarded");
        assert_eq!(
            c.cancel(StreamErrorKind::DeadlineExceeded, true),
            Some(Id::new(SID, 1))
        );
        assert_matches!(c.begin_message(), Err(StreamErrorKind::Eof));
        assert_matches!(c.recv(), Recv::Failed(StreamErrorKind::DeadlineExceeded));
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn local_cancel_without_frame_allocates_no_id() {
        let mut c = client();
        assert_eq!(
            c.cancel(StreamErrorKind::Canceled(Initiator::Local), false),
            None
        );
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::Eof));
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Canceled(Initiator::Local))
        );
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn remote_close() {
        let mut c = client();
        queue(&mut c, 1, b"a");
        queue(&mut c, 2, b"b");
        assert_matches!(feed(&mut c, pkt(3, Kind::CLOSE)), Inbound::StateChanged);
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::ClosedByRemote));
        // Queued messages come first, then the clean end.
        expect_message(&mut c, b"a");
        expect_message(&mut c, b"b");
        assert_matches!(c.recv(), Recv::End);
        assert_matches!(c.recv(), Recv::End);
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn remote_error_preserves_code_and_message() {
        let mut c = client();
        queue(&mut c, 1, b"first");
        assert_matches!(
            feed(&mut c, error_frame(2, 42, "handler failed: boom")),
            Inbound::StateChanged
        );
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::Eof));
        expect_message(&mut c, b"first");
        match c.recv() {
            Recv::Failed(StreamErrorKind::Remote(e)) => {
                assert_eq!(e.code(), 42);
                assert_eq!(e.message(), "handler failed: boom");
            }
            other => panic!("expected the remote error, got {other:?}"),
        }
        // Repeated receives report it again.
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Remote(ref e)) if e.code() == 42
        );
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn remote_error_without_code() {
        let mut c = client();
        feed(&mut c, error_frame(1, 0, "plain"));
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Remote(ref e)) if e.code() == 0 && e.message() == "plain"
        );
    }

    #[test]
    fn remote_cancel() {
        let mut c = server();
        queue(&mut c, 1, b"queued");
        // Go sends Cancel with the control bit (header 0x89).
        assert_matches!(
            feed(&mut c, frame(2, Kind::CANCEL, true, true, b"")),
            Inbound::StateChanged
        );
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::Eof));
        expect_message(&mut c, b"queued");
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Canceled(Initiator::Remote))
        );
        // A remote cancel sets the cancel flag.
        assert_matches!(
            c.check_cancel(StreamErrorKind::Eof),
            StreamErrorKind::Canceled(Initiator::Remote)
        );
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn remote_cancel_without_control_bit_is_still_a_cancel() {
        let mut c = server();
        assert_matches!(feed(&mut c, pkt(1, Kind::CANCEL)), Inbound::StateChanged);
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Canceled(Initiator::Remote))
        );
    }

    #[test]
    fn remote_close_send() {
        let mut c = server();
        queue(&mut c, 1, b"req");
        assert_matches!(
            feed(&mut c, pkt(2, Kind::CLOSE_SEND)),
            Inbound::StateChanged
        );
        assert!(!c.is_terminated(), "only half closed");
        assert!(!c.is_send_closed());
        // Send is unaffected.
        assert_eq!(c.begin_message().ok(), Some(Id::new(SID, 1)));
        assert_eq!(c.begin_message().ok(), Some(Id::new(SID, 2)));
        expect_message(&mut c, b"req");
        assert_matches!(c.recv(), Recv::End);
        // Messages after the peer's CloseSend are dropped.
        assert_matches!(feed(&mut c, msg(3, b"late")), Inbound::Nothing);
        assert_matches!(c.recv(), Recv::End);
        // A repeated CloseSend changes nothing.
        assert_matches!(
            feed(&mut c, pkt(4, Kind::CLOSE_SEND)),
            Inbound::StateChanged
        );
        assert!(!c.is_terminated());
        assert_eq!(c.begin_message().ok(), Some(Id::new(SID, 3)));
    }

    #[test]
    fn both_close_send_remote_first() {
        let mut c = server();
        feed(&mut c, pkt(1, Kind::CLOSE_SEND));
        assert!(!c.is_terminated());
        // The CloseSend that ends the stream is still sent.
        assert_eq!(c.close_send(), Some(Id::new(SID, 1)));
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::SendClosed));
        assert_matches!(c.recv(), Recv::End);
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn both_close_send_local_first() {
        let mut c = client();
        assert_eq!(c.close_send(), Some(Id::new(SID, 1)));
        queue(&mut c, 1, b"reply");
        assert_matches!(
            feed(&mut c, pkt(2, Kind::CLOSE_SEND)),
            Inbound::StateChanged
        );
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::SendClosed));
        expect_message(&mut c, b"reply");
        assert_matches!(c.recv(), Recv::End);
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn connection_lost_with_error_delivers_queued_then_the_error() {
        let mut c = client();
        queue(&mut c, 1, b"a");
        c.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Closed));
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::Eof));
        expect_message(&mut c, b"a");
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::ConnectionLost(ConnectionError::Closed))
        );
        // Not a cancellation: errors are not replaced.
        assert_matches!(c.check_cancel(StreamErrorKind::Eof), StreamErrorKind::Eof);
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn connection_lost_by_eof_reports_canceled() {
        // semantics.md §3.6: "context canceled if the cause was EOF"; the
        // manager passes that reason, which also sets the cancel flag.
        let mut c = client();
        c.connection_lost(StreamErrorKind::Canceled(Initiator::Local));
        assert_matches!(c.begin_message(), Err(StreamErrorKind::Eof));
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Canceled(Initiator::Local))
        );
        assert_matches!(
            c.check_cancel(StreamErrorKind::ConnectionLost(ConnectionError::Eof)),
            StreamErrorKind::Canceled(Initiator::Local)
        );
        // A second loss changes nothing.
        c.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Closed));
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Canceled(Initiator::Local))
        );
    }

    #[test]
    fn connection_lost_after_local_close_send_keeps_send_closed() {
        let mut c = client();
        c.close_send();
        c.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof));
        assert_matches!(c.begin_message(), Err(StreamErrorKind::SendClosed));
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::ConnectionLost(ConnectionError::Eof))
        );
    }

    #[test]
    fn abandon_ends_silently() {
        let mut c = server();
        queue(&mut c, 1, b"unread");
        assert_eq!(c.close_send(), Some(Id::new(SID, 1)));
        c.abandon();
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::SendClosed));
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Canceled(Initiator::Local))
        );
        // No cancel flag: abandon is not a cancellation.
        assert_matches!(c.check_cancel(StreamErrorKind::Eof), StreamErrorKind::Eof);
        assert_terminal_ops_silent(&mut c);
        // Abandoning a terminated stream changes nothing.
        let mut c = client();
        c.close();
        c.abandon();
        assert_matches!(c.recv(), Recv::Failed(StreamErrorKind::TerminatedByClose));
    }

    // ---- first error wins ----

    #[test]
    fn first_termination_wins() {
        // Remote Error, then remote Close and a local cancel: still the error.
        let mut c = client();
        feed(&mut c, error_frame(1, 3, "first"));
        assert_matches!(feed(&mut c, pkt(2, Kind::CLOSE)), Inbound::Nothing);
        assert_eq!(c.cancel(StreamErrorKind::DeadlineExceeded, true), None);
        assert_matches!(c.begin_message(), Err(StreamErrorKind::Eof));
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Remote(ref e)) if e.message() == "first"
        );
        assert_matches!(c.check_cancel(StreamErrorKind::Eof), StreamErrorKind::Eof);

        // Local close, then remote Cancel and connection loss: still the close.
        let mut c = client();
        c.close();
        assert_matches!(
            feed(&mut c, frame(1, Kind::CANCEL, true, true, b"")),
            Inbound::Nothing
        );
        c.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof));
        assert_matches!(c.begin_message(), Err(StreamErrorKind::TerminatedByClose));
        assert_matches!(c.recv(), Recv::Failed(StreamErrorKind::TerminatedByClose));
        assert_matches!(c.check_cancel(StreamErrorKind::Eof), StreamErrorKind::Eof);

        // Deadline, then cancel: the deadline stays.
        let mut c = client();
        c.cancel(StreamErrorKind::DeadlineExceeded, true);
        c.cancel(StreamErrorKind::Canceled(Initiator::Local), true);
        assert_matches!(c.recv(), Recv::Failed(StreamErrorKind::DeadlineExceeded));
        assert_matches!(
            c.check_cancel(StreamErrorKind::Eof),
            StreamErrorKind::DeadlineExceeded
        );
    }

    #[test]
    fn remote_close_send_then_remote_error_keeps_the_clean_end() {
        // As Go: the receive side closed with EOF first, so the later
        // error is not reported by receives (it still terminates).
        let mut c = client();
        feed(&mut c, pkt(1, Kind::CLOSE_SEND));
        feed(&mut c, error_frame(2, 9, "late"));
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::Eof));
        assert_matches!(c.recv(), Recv::End);
    }

    #[test]
    fn local_close_send_then_remote_close() {
        let mut c = client();
        c.close_send();
        feed(&mut c, pkt(1, Kind::CLOSE));
        assert!(c.is_terminated());
        // The send side ended first with the local CloseSend.
        assert_matches!(c.begin_message(), Err(StreamErrorKind::SendClosed));
        assert_matches!(c.recv(), Recv::End);
    }

    #[test]
    fn send_error_after_close_send_is_sent_and_keeps_send_closed() {
        // As Go's SendError: only termination makes it a no-op, so a half
        // closed stream still sends its Error and terminates.
        let mut c = server();
        assert_eq!(c.close_send(), Some(Id::new(SID, 1)));
        assert_eq!(c.send_error(), Some(Id::new(SID, 2)));
        assert!(c.is_terminated());
        assert_matches!(c.begin_message(), Err(StreamErrorKind::SendClosed));
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::TerminatedBySendError)
        );
    }

    #[test]
    fn cancel_after_close_send_keeps_send_closed() {
        let mut c = client();
        c.close_send();
        assert_eq!(
            c.cancel(StreamErrorKind::Canceled(Initiator::Local), true),
            Some(Id::new(SID, 2))
        );
        assert_matches!(c.begin_message(), Err(StreamErrorKind::SendClosed));
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Canceled(Initiator::Local))
        );
    }

    // ---- check_cancel ----

    #[test]
    fn check_cancel_replaces_errors_only_once_cancelled() {
        let mut c = client();
        assert_matches!(c.check_cancel(StreamErrorKind::Eof), StreamErrorKind::Eof);
        assert_matches!(
            c.check_cancel(StreamErrorKind::ConnectionLost(ConnectionError::Closed)),
            StreamErrorKind::ConnectionLost(ConnectionError::Closed)
        );
        c.cancel(StreamErrorKind::Canceled(Initiator::Local), true);
        assert_matches!(
            c.check_cancel(StreamErrorKind::Eof),
            StreamErrorKind::Canceled(Initiator::Local)
        );
        assert_matches!(
            c.check_cancel(StreamErrorKind::ConnectionLost(ConnectionError::Closed)),
            StreamErrorKind::Canceled(Initiator::Local)
        );
        // A send after the cancel gets Eof; the caller's check_cancel turns
        // it into the cancellation (multiplexing.md §5.2).
        let err = c.begin_message().expect_err("cancelled");
        assert_matches!(err, StreamErrorKind::Eof);
        assert_matches!(
            c.check_cancel(err),
            StreamErrorKind::Canceled(Initiator::Local)
        );

        // Other terminations set no cancel flag.
        for end in [
            pkt(1, Kind::CLOSE),
            error_frame(1, 1, "x"),
            pkt(1, Kind::CLOSE_SEND),
        ] {
            let mut c = client();
            feed(&mut c, end);
            assert_matches!(c.check_cancel(StreamErrorKind::Eof), StreamErrorKind::Eof);
        }
        let mut c = client();
        c.send_error();
        assert_matches!(c.check_cancel(StreamErrorKind::Eof), StreamErrorKind::Eof);
    }

    // ---- message ids ----

    #[test]
    fn message_ids_count_from_one_per_stream() {
        let mut a = client();
        let mut b = StreamCore::new(9, StreamKind::Client, &StreamOptions::default());
        assert_eq!(a.begin_message().ok(), Some(Id::new(SID, 1)));
        assert_eq!(b.begin_message().ok(), Some(Id::new(9, 1)));
        assert_eq!(a.begin_message().ok(), Some(Id::new(SID, 2)));
        assert_eq!(a.begin_message().ok(), Some(Id::new(SID, 3)));
        assert_eq!(b.begin_message().ok(), Some(Id::new(9, 2)));
        assert_eq!(a.close_send(), Some(Id::new(SID, 4)));
        assert_eq!(a.close(), Some(Id::new(SID, 5)));
    }

    #[test]
    fn invoke_ids() {
        let mut c = client();
        assert_eq!(c.begin_invoke(false).ok(), Some((None, Id::new(SID, 1))));
        assert_eq!(c.begin_message().ok(), Some(Id::new(SID, 2)));

        let mut c = client();
        assert_eq!(
            c.begin_invoke(true).ok(),
            Some((Some(Id::new(SID, 1)), Id::new(SID, 2)))
        );
        assert_eq!(c.begin_message().ok(), Some(Id::new(SID, 3)));
        assert_eq!(c.close_send(), Some(Id::new(SID, 4)));
        // After the send side is over, invoking fails like a send.
        assert_matches!(c.begin_invoke(true), Err(StreamErrorKind::SendClosed));

        let mut c = client();
        c.cancel(StreamErrorKind::Canceled(Initiator::Local), false);
        assert_matches!(c.begin_invoke(true), Err(StreamErrorKind::Eof));
    }

    #[test]
    fn kind_is_kept() {
        assert_eq!(client().kind(), StreamKind::Client);
        assert_eq!(server().kind(), StreamKind::Server);
    }

    // ---- inbound protocol violations and unknown kinds ----

    #[test]
    fn invoke_on_existing_stream_is_connection_fatal() {
        for kind in [Kind::INVOKE, Kind::INVOKE_METADATA] {
            for control in [false, true] {
                let mut c = server();
                let err = c
                    .handle_frame(frame(1, kind, true, control, b"/s.S/M"))
                    .expect_err("invoke on an existing stream");
                assert_matches!(err, ConnectionError::InvokeOnExistingStream { stream: SID });
                assert!(err.is_protocol_violation());
                assert_eq!(
                    err.to_string(),
                    format!("protocol error: invoke on existing stream (stream {SID})")
                );
            }
        }
    }

    #[test]
    fn unknown_kind_without_control_is_connection_fatal() {
        for value in [0u8, 9, 63] {
            let kind = Kind::new(value).expect("kind");
            let mut c = client();
            let err = c
                .handle_frame(frame(1, kind, true, false, b""))
                .expect_err("unknown kind");
            assert_matches!(
                err,
                ConnectionError::UnknownKind { stream: SID, kind: k } if k == kind
            );
            assert_eq!(
                err.to_string(),
                format!("internal error: unknown packet kind: Kind({value}) (stream {SID})")
            );
        }
    }

    #[test]
    fn unknown_kind_with_control_is_ignored() {
        // Catalogue 36 and 49.
        let mut c = client();
        assert_matches!(
            feed(
                &mut c,
                frame(1, Kind::new(0).expect("kind"), true, true, b"x")
            ),
            Inbound::Nothing
        );
        assert_matches!(
            feed(
                &mut c,
                frame(2, Kind::new(9).expect("kind"), true, true, b"")
            ),
            Inbound::Nothing
        );
        assert!(!c.is_terminated());
        assert_matches!(c.recv(), Recv::Empty);
        queue(&mut c, 3, b"after");
        expect_message(&mut c, b"after");
        // Then the same kind without control is fatal.
        assert_matches!(
            c.handle_frame(frame(4, Kind::new(0).expect("kind"), true, false, b"")),
            Err(ConnectionError::UnknownKind { .. })
        );
    }

    #[test]
    fn control_bit_of_any_frame_marks_the_packet() {
        let mut c = client();
        let k9 = Kind::new(9).expect("kind");
        // Control only on the first frame of a two-frame unknown packet.
        assert_matches!(
            feed(&mut c, frame(1, k9, false, true, b"a")),
            Inbound::Nothing
        );
        assert_matches!(
            feed(&mut c, frame(1, k9, true, false, b"b")),
            Inbound::Nothing
        );
        assert!(!c.is_terminated());
    }

    #[test]
    fn frames_after_termination_are_ignored() {
        let mut c = client();
        c.close();
        // Everything is ignored, including what would be fatal otherwise.
        for f in [
            msg(1, b"x"),
            pkt(2, Kind::CLOSE_SEND),
            error_frame(3, 1, "e"),
            frame(4, Kind::CANCEL, true, true, b""),
            pkt(5, Kind::INVOKE),
            pkt(6, Kind::INVOKE_METADATA),
            pkt(7, Kind::new(9).expect("kind")),
            // Even an id regression.
            msg(1, b"y"),
        ] {
            assert_matches!(feed(&mut c, f), Inbound::Nothing);
        }
        assert_matches!(c.recv(), Recv::Failed(StreamErrorKind::TerminatedByClose));
        assert_matches!(c.begin_message(), Err(StreamErrorKind::TerminatedByClose));
    }

    #[test]
    fn wire_violations_are_connection_fatal() {
        let mut c = client();
        queue(&mut c, 2, b"a");
        assert_matches!(
            c.handle_frame(msg(1, b"back")),
            Err(ConnectionError::Wire(WireError::MessageIdRegression {
                stream: SID,
                got: 1,
                expected: 3
            }))
        );
        let mut c = client();
        let other = Frame {
            id: Id::new(SID + 1, 1),
            ..msg(1, b"x")
        };
        assert_matches!(
            c.handle_frame(other),
            Err(ConnectionError::Wire(WireError::StreamMismatch { .. }))
        );
        let mut c = StreamCore::new(
            SID,
            StreamKind::Client,
            &StreamOptions {
                max_packet_size: 3,
                ..StreamOptions::default()
            },
        );
        assert_matches!(
            feed(&mut c, frame(1, Kind::MESSAGE, false, false, b"ab")),
            Inbound::Nothing
        );
        assert_matches!(
            c.handle_frame(frame(1, Kind::MESSAGE, true, false, b"cd")),
            Err(ConnectionError::Wire(WireError::DataOverflow { len: 4 }))
        );
    }

    // ---- message assembly and delivery ----

    #[test]
    fn multi_frame_message_is_assembled() {
        let mut c = client();
        assert_matches!(
            feed(&mut c, frame(1, Kind::MESSAGE, false, false, b"he")),
            Inbound::Nothing
        );
        assert_matches!(
            feed(&mut c, frame(1, Kind::MESSAGE, false, false, b"ll")),
            Inbound::Nothing
        );
        assert_matches!(c.recv(), Recv::Empty);
        assert_matches!(
            feed(&mut c, frame(1, Kind::MESSAGE, true, false, b"o")),
            Inbound::Queued
        );
        expect_message(&mut c, b"hello");
        // A higher message id drops a half-built packet.
        assert_matches!(
            feed(&mut c, frame(2, Kind::MESSAGE, false, false, b"lost")),
            Inbound::Nothing
        );
        queue(&mut c, 3, b"kept");
        expect_message(&mut c, b"kept");
        // An empty message is a message.
        queue(&mut c, 4, b"");
        expect_message(&mut c, b"");
        assert_matches!(c.recv(), Recv::Empty);
    }

    #[test]
    fn message_ids_may_have_gaps_and_start_above_one() {
        let mut c = server();
        queue(&mut c, 2, b"a");
        queue(&mut c, 5, b"b");
        expect_message(&mut c, b"a");
        expect_message(&mut c, b"b");
    }

    #[test]
    fn messages_are_delivered_in_order_without_copy() {
        let mut c = client();
        let data = Bytes::from(vec![1u8, 2, 3]);
        let ptr = data.as_ptr();
        let f = Frame {
            id: Id::new(SID, 1),
            kind: Kind::MESSAGE,
            done: true,
            control: false,
            data,
        };
        feed(&mut c, f);
        queue(&mut c, 2, b"second");
        match c.recv() {
            Recv::Message(got) => {
                assert_eq!(&got[..], &[1, 2, 3]);
                assert_eq!(got.as_ptr(), ptr, "the frame's bytes, not a copy");
            }
            other => panic!("{other:?}"),
        }
        expect_message(&mut c, b"second");
    }

    // ---- receive queue bounds ----

    #[test]
    fn queue_full_by_messages_and_try_enqueue() {
        let mut c = StreamCore::new(SID, StreamKind::Client, &opts(2, 1 << 20));
        queue(&mut c, 1, b"m1");
        queue(&mut c, 2, b"m2");
        let held = match feed(&mut c, msg(3, b"m3")) {
            Inbound::QueueFull(data) => data,
            other => panic!("expected QueueFull, got {other:?}"),
        };
        assert_eq!(&held[..], b"m3");
        // Still no room: the message comes back.
        let held = c.try_enqueue(held).expect_err("no room yet");
        assert_eq!(&held[..], b"m3");
        expect_message(&mut c, b"m1");
        assert_eq!(c.try_enqueue(held), Ok(()));
        expect_message(&mut c, b"m2");
        expect_message(&mut c, b"m3");
        assert_matches!(c.recv(), Recv::Empty);
    }

    #[test]
    fn queue_full_by_bytes_but_one_large_message_fits() {
        let mut c = StreamCore::new(SID, StreamKind::Client, &opts(100, 4));
        queue(&mut c, 1, b"much larger than four");
        assert_matches!(feed(&mut c, msg(2, b"x")), Inbound::QueueFull(ref d) if &d[..] == b"x");
        expect_message(&mut c, b"much larger than four");
        assert_eq!(c.try_enqueue(Bytes::from_static(b"x")), Ok(()));
        assert_matches!(feed(&mut c, msg(3, b"abc")), Inbound::Queued);
        assert_matches!(feed(&mut c, msg(4, b"de")), Inbound::QueueFull(_));
    }

    #[test]
    fn try_enqueue_after_local_termination_drops_the_message() {
        let mut c = StreamCore::new(SID, StreamKind::Client, &opts(1, 1 << 20));
        queue(&mut c, 1, b"m1");
        let held = match feed(&mut c, msg(2, b"m2")) {
            Inbound::QueueFull(data) => data,
            other => panic!("{other:?}"),
        };
        c.cancel(StreamErrorKind::Canceled(Initiator::Local), true);
        assert_eq!(c.try_enqueue(held), Ok(()), "accepted and dropped");
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Canceled(Initiator::Local))
        );
    }

    #[test]
    fn try_enqueue_after_connection_lost_keeps_queued_messages() {
        let mut c = StreamCore::new(SID, StreamKind::Client, &opts(1, 1 << 20));
        queue(&mut c, 1, b"m1");
        let held = match feed(&mut c, msg(2, b"m2")) {
            Inbound::QueueFull(data) => data,
            other => panic!("{other:?}"),
        };
        c.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof));
        assert_eq!(c.try_enqueue(held), Ok(()));
        expect_message(&mut c, b"m1");
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::ConnectionLost(ConnectionError::Eof))
        );
    }

    #[test]
    fn queue_room_is_released_by_recv_only() {
        let mut c = StreamCore::new(SID, StreamKind::Client, &opts(1, 1 << 20));
        queue(&mut c, 1, b"a");
        assert_matches!(feed(&mut c, msg(2, b"b")), Inbound::QueueFull(_));
        // The full queue does not stop control packets.
        assert_matches!(
            feed(&mut c, pkt(3, Kind::CLOSE_SEND)),
            Inbound::StateChanged
        );
        expect_message(&mut c, b"a");
        assert_matches!(c.recv(), Recv::End);
    }
}
