//! The sans-IO state machine of one stream.
//!
//! [`StreamCore`] takes frames and local operations and answers with what
//! to send (an [`Id`] and a kind) and what the application sees. It does no
//! I/O, takes no lock and knows no clock; [`crate::Stream`] drives it.

use bytes::Bytes;
use drpc_wire::{
    CodedError, FlowNegotiation, FlowParams, Frame, Id, Kind, PacketAssembler, RESOURCE_EXHAUSTED,
    WireError,
};

use crate::flow::{FlowControl, FlowControlMode, RecvWindow, SendWindow};
use crate::queue::RecvQueue;
use crate::{ConnectionError, Initiator, StreamErrorKind, StreamKind, StreamOptions};

/// What a received message waiting in a stream's queue is charged to its
/// connection's memory budget beyond its bytes: its handle and its slot,
/// so that a flood of empty messages counts too.
pub const QUEUED_MESSAGE_COST: usize = 64;

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
    /// A message is complete but the queue is over its bounds and the
    /// stream has no flow control: the driver decides, with
    /// [`StreamCore::force_enqueue`] (the connection's only active stream)
    /// or [`StreamCore::fail_overflow`].
    QueueFull(Bytes),
    /// The stream's state changed (half closed or terminated).
    StateChanged,
    /// The peer broke a limit of this stream, which failed alone: send
    /// this abortive Error (control bit) with this id.
    Failed(Id, CodedError),
    /// The server accepted this client's flow-control offer: send the
    /// gating marker with this id; waiting senders may be affected.
    SendGating(Id),
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
    /// Set once a local close, error or cancel discarded what the queue
    /// held: messages a consumer took out in a batch are then discarded
    /// too ([`crate::RecvBatch`]).
    discarded: bool,
    flow: FlowControl,
    max_message: usize,
    /// The credit of this side's Message sender; `None` without flow
    /// control.
    send_window: Option<SendWindow>,
    /// Whether a unary call offers flow control too (to learn what the
    /// server decompresses from its acceptance); only streams do
    /// otherwise.
    offer_on_unary: bool,
    /// Grants and the cap of this side's receive queue; `None` without
    /// flow control.
    recv_window: Option<RecvWindow>,
    /// A grant the driver must send (consumed bytes over the threshold).
    grant_due: Option<u64>,
}

impl StreamCore {
    pub(crate) fn new(id: u64, kind: StreamKind, opts: &StreamOptions) -> StreamCore {
        let mut core = StreamCore {
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
            discarded: false,
            flow: opts.flow_control,
            max_message: opts.max_packet_size,
            send_window: None,
            offer_on_unary: false,
            recv_window: None,
            grant_due: None,
        };
        if opts.flow_control.mode() == FlowControlMode::Fork {
            // The fork assumes both sides gate and grant from the start.
            let fc = opts.flow_control;
            core.send_window = Some(SendWindow::gated(fc.window()));
            core.recv_window = Some(RecvWindow::new(
                fc.window(),
                fc.grant_threshold(),
                opts.max_packet_size,
                true,
            ));
        }
        core
    }

    /// Bytes held for the peer: queued messages (each also at its handle's
    /// cost, so that empty ones count) and a half-built packet.
    pub(crate) fn held(&self) -> usize {
        self.queue.bytes() + self.queue.len() * QUEUED_MESSAGE_COST + self.assembler.buffered()
    }

    /// Whether Message sends of this stream are split into frames of at
    /// most [`FlowControl::FRAME`] bytes, as gated senders must.
    pub(crate) fn is_flow_controlled(&self) -> bool {
        self.send_window.is_some()
    }

    /// Whether a message whose first frame has `first_frame` bytes may be
    /// sent now (always, without flow control).
    pub(crate) fn send_allowed(&self, first_frame: usize) -> bool {
        self.send_window.is_none_or(|w| w.allows(first_frame))
    }

    /// Counts a Message of `len` bytes against the send window.
    pub(crate) fn debit(&mut self, len: usize) {
        if let Some(w) = &mut self.send_window {
            w.debit(len);
        }
    }

    /// Applies a WindowUpdate; returns whether waiting senders should look
    /// again. Dropped without flow control or once terminated.
    pub(crate) fn grant(&mut self, delta: u64) -> bool {
        if self.terminated {
            return false;
        }
        self.send_window.as_mut().is_some_and(|w| w.grant(delta))
    }

    /// Makes a unary call offer flow control as a stream does.
    pub(crate) fn set_offer_on_unary(&mut self) {
        self.offer_on_unary = true;
    }

    /// Whether a unary call offers flow control.
    pub(crate) fn offers_on_unary(&self) -> bool {
        self.offer_on_unary
    }

    /// An auto client opening a stream that may carry many messages: the
    /// parameters to offer in its InvokeMetadata. Its sends are counted
    /// from now on but wait only once the server accepts.
    pub(crate) fn offer_flow_control(&mut self) -> Option<FlowParams> {
        if self.flow.mode() != FlowControlMode::Auto
            || self.kind != StreamKind::Client
            || self.send_window.is_some()
        {
            return None;
        }
        self.send_window = Some(SendWindow::ungated());
        Some(self.flow.params(self.max_message))
    }

    /// An auto server taking a client's offer: its sends are gated by the
    /// client's window at once, it grants what its application consumes,
    /// and it holds the client to its own window from the client's gating
    /// marker on. Returns the id of the acceptance to send, first thing on
    /// the stream, and the parameters it carries.
    pub(crate) fn accept_flow_control(&mut self, offer: FlowParams) -> Option<(Id, FlowParams)> {
        if self.flow.mode() != FlowControlMode::Auto
            || self.kind != StreamKind::Server
            || self.send_window.is_some()
            || self.terminated
        {
            return None;
        }
        self.send_window = Some(SendWindow::gated(offer.window));
        self.recv_window = Some(RecvWindow::new(
            self.flow.window(),
            self.flow.grant_threshold(),
            self.max_message,
            false,
        ));
        Some((self.next_id(), self.flow.params(self.max_message)))
    }

    /// The grant to send after a receive, if one is due.
    pub(crate) fn take_grant(&mut self) -> Option<u64> {
        self.grant_due.take()
    }

    /// Queues a message over the queue's bounds (see [`Inbound::QueueFull`]).
    pub(crate) fn force_enqueue(&mut self, data: Bytes) {
        if !self.terminated {
            self.queue.push(data);
        }
    }

    /// A stream without flow control that queued past its bounds while it
    /// was its connection's only stream, now that it shares the connection
    /// and the connection is out of memory: it keeps what its bounds allow
    /// for delivery, drops the rest, and fails as
    /// [`StreamCore::fail_overflow`] does.
    pub(crate) fn shed_overflow(&mut self) -> Option<(Id, CodedError)> {
        if self.terminated
            || !self.queue.is_over_bounds()
            || self.recv_window.is_some_and(|w| w.is_enforcing())
        {
            return None;
        }
        self.queue.truncate_to_bounds();
        self.fail_overflow()
    }

    /// Fails the stream because its queue overflowed while it shares the
    /// connection: queued messages are still delivered, then the error;
    /// the peer gets an abortive Error.
    pub(crate) fn fail_overflow(&mut self) -> Option<(Id, CodedError)> {
        let cap = self
            .recv_window
            .filter(RecvWindow::is_enforcing)
            .map_or(self.queue.max_bytes(), |w| w.cap());
        self.fail(StreamErrorKind::QueueOverflow { cap })
    }

    /// Ends the stream for a limit the peer broke; returns the abortive
    /// Error to send (ResourceExhausted), unless already terminated.
    fn fail(&mut self, reason: StreamErrorKind) -> Option<(Id, CodedError)> {
        if self.terminated {
            return None;
        }
        let err = CodedError::new(RESOURCE_EXHAUSTED, reason.to_string());
        self.send_end.get_or_insert(StreamErrorKind::Eof);
        self.terminate(reason, false);
        Some((self.next_id(), err))
    }

    pub(crate) fn is_terminated(&self) -> bool {
        self.terminated
    }

    /// Whether a local termination discarded the queue.
    pub(crate) fn is_discarded(&self) -> bool {
        self.discarded
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
        // A half-built packet will never complete: what it held is freed.
        self.assembler = PacketAssembler::for_stream(self.id, self.max_message);
        self.discarded |= discard;
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

    /// Why a call could not even start: the end of its connection, rather
    /// than the bare end of sending (`Eof`) that an operation after any
    /// other termination reports.
    pub(crate) fn opening_failure(&self, err: StreamErrorKind) -> StreamErrorKind {
        match (&err, &self.recv_end) {
            (
                StreamErrorKind::Eof,
                Some(RecvEnd::Error(lost @ StreamErrorKind::ConnectionLost(_))),
            ) if self.cancel.is_none() => lost.clone(),
            _ => err,
        }
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
    ///
    /// On a flow-controlled stream whose peer may still send, returns the
    /// id of a Close to send: the peer's sender would otherwise wait for
    /// credit that never comes (frames of an unknown stream are dropped,
    /// and nobody grants).
    pub(crate) fn abandon(&mut self) -> Option<Id> {
        if self.terminated {
            return None;
        }
        let tell = self.recv_window.is_some() && !self.remote_close_send;
        self.terminate(StreamErrorKind::Canceled(Initiator::Local), true);
        tell.then(|| self.next_id())
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
        let packet = match self.assembler.push(frame) {
            Ok(Some(packet)) => packet,
            Ok(None) => return Ok(Inbound::Nothing),
            // A packet over the size limit fails this stream only; a frame
            // declared over it never gets here (the reader refuses it).
            Err(WireError::DataOverflow { len }) => {
                let reason = StreamErrorKind::ReceivedTooLarge {
                    size: len,
                    limit: self.max_message,
                };
                return Ok(match self.fail(reason) {
                    Some((id, err)) => Inbound::Failed(id, err),
                    None => Inbound::Nothing,
                });
            }
            Err(e) => return Err(e.into()),
        };
        match packet.kind {
            Kind::MESSAGE => {
                if self.recv_end.is_some() {
                    // After the peer's CloseSend: nobody will read it.
                    return Ok(Inbound::Nothing);
                }
                let (queued, messages) = (self.queue.bytes(), self.queue.len());
                match self
                    .recv_window
                    .and_then(|w| w.admits(queued, messages, packet.data.len()))
                {
                    Some(true) => {
                        self.queue.push(packet.data);
                        Ok(Inbound::Queued)
                    }
                    Some(false) => Ok(match self.fail_overflow() {
                        Some((id, err)) => Inbound::Failed(id, err),
                        None => Inbound::Nothing,
                    }),
                    // Accepted, before the client's gating marker: what the
                    // client sent before it saw the acceptance (a round
                    // trip's worth) is queued whatever the bounds; the
                    // connection's budget still bounds it, and a stream
                    // that abuses it is shed when memory runs short.
                    None if self.recv_window.is_some() => {
                        self.queue.push(packet.data);
                        Ok(Inbound::Queued)
                    }
                    None => Ok(match self.queue.try_push(packet.data) {
                        Ok(()) => Inbound::Queued,
                        Err(data) => Inbound::QueueFull(data),
                    }),
                }
            }
            Kind::FLOW_NEGOTIATION if packet.control => Ok(self.negotiate(&packet.data)),
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

    /// A negotiation packet from the peer; anything unexpected is ignored,
    /// as an unknown control packet would be.
    fn negotiate(&mut self, payload: &[u8]) -> Inbound {
        match (self.kind, FlowNegotiation::parse(payload)) {
            // An offer waiting for its answer is an ungated send window.
            (StreamKind::Client, Some(FlowNegotiation::Accept(server, _)))
                if self.send_window.is_some_and(|w| !w.is_gated()) =>
            {
                if let Some(w) = &mut self.send_window {
                    w.start_gating(server.window);
                }
                // The server gates its messages by our window: hold it to
                // that, and grant what the application consumes.
                self.recv_window = Some(RecvWindow::new(
                    self.flow.window(),
                    self.flow.grant_threshold(),
                    self.max_message,
                    true,
                ));
                match self.send_end {
                    // Nothing more will be sent: no marker needed.
                    Some(_) => Inbound::Nothing,
                    None => Inbound::SendGating(self.next_id()),
                }
            }
            (StreamKind::Server, Some(FlowNegotiation::Gating)) => {
                let queued = self.queue.bytes();
                if let Some(w) = &mut self.recv_window {
                    w.start_enforcing(queued);
                }
                Inbound::Nothing
            }
            _ => Inbound::Nothing,
        }
    }

    /// Takes the next message, or the end of the receive side once the
    /// queue is empty.
    pub(crate) fn recv(&mut self) -> Recv {
        if let Some(data) = self.queue.pop() {
            // Credit behind a terminal frame, or once the peer has finished
            // sending, would only invite doomed data.
            if let Some(w) = &mut self.recv_window
                && let Some(delta) = w.consumed(data.len())
                && self.recv_end.is_none()
            {
                self.grant_due = Some(self.grant_due.unwrap_or(0).saturating_add(delta));
            }
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

    use crate::flow::FlowControl;
    use drpc_wire::{FlowNegotiation, FlowParams, RESOURCE_EXHAUSTED};

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
        for value in [0u8, 10, 63] {
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
                frame(2, Kind::new(10).expect("kind"), true, true, b"")
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
        let k9 = Kind::new(10).expect("kind");
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
            pkt(7, Kind::new(10).expect("kind")),
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
    fn queue_full_by_messages_then_forced_or_failed() {
        let mut c = StreamCore::new(SID, StreamKind::Client, &opts(2, 1 << 20));
        queue(&mut c, 1, b"m1");
        queue(&mut c, 2, b"m2");
        let held = match feed(&mut c, msg(3, b"m3")) {
            Inbound::QueueFull(data) => data,
            other => panic!("expected QueueFull, got {other:?}"),
        };
        assert_eq!(&held[..], b"m3");
        // The connection's only stream keeps queueing.
        c.force_enqueue(held);
        assert_eq!(
            c.held(),
            6 + 3 * QUEUED_MESSAGE_COST,
            "empty messages count too"
        );
        assert_matches!(feed(&mut c, msg(4, b"m4")), Inbound::QueueFull(_));
        // A stream that shares its connection fails alone: its queued
        // messages come first, then the overflow; the peer gets an
        // abortive ResourceExhausted.
        let (id, err) = c.fail_overflow().expect("an error to send");
        assert_eq!(id, Id::new(SID, 1));
        assert_eq!(err.code(), RESOURCE_EXHAUSTED);
        assert!(
            err.message().starts_with("receive queue cap exceeded"),
            "{err}"
        );
        assert!(c.is_terminated());
        for m in [&b"m1"[..], b"m2", b"m3"] {
            expect_message(&mut c, m);
        }
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::QueueOverflow { cap: 1048576 })
        );
        assert_eq!(c.fail_overflow(), None, "once");
        assert_terminal_ops_silent(&mut c);
    }

    #[test]
    fn queue_full_by_bytes_but_one_large_message_fits() {
        let mut c = StreamCore::new(SID, StreamKind::Client, &opts(100, 4));
        queue(&mut c, 1, b"much larger than four");
        assert_matches!(feed(&mut c, msg(2, b"x")), Inbound::QueueFull(ref d) if &d[..] == b"x");
        expect_message(&mut c, b"much larger than four");
        assert_matches!(feed(&mut c, msg(3, b"abc")), Inbound::Queued);
        assert_matches!(feed(&mut c, msg(4, b"de")), Inbound::QueueFull(_));
    }

    #[test]
    fn forced_message_after_termination_is_dropped() {
        let mut c = StreamCore::new(SID, StreamKind::Client, &opts(1, 1 << 20));
        queue(&mut c, 1, b"m1");
        let held = match feed(&mut c, msg(2, b"m2")) {
            Inbound::QueueFull(data) => data,
            other => panic!("{other:?}"),
        };
        c.cancel(StreamErrorKind::Canceled(Initiator::Local), true);
        c.force_enqueue(held);
        assert_eq!(c.held(), 0);
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::Canceled(Initiator::Local))
        );
    }

    #[test]
    fn oversized_message_fails_the_stream_only() {
        let mut c = StreamCore::new(
            SID,
            StreamKind::Server,
            &StreamOptions {
                max_packet_size: 4,
                ..StreamOptions::default()
            },
        );
        queue(&mut c, 1, b"ok");
        assert_matches!(
            feed(&mut c, frame(2, Kind::MESSAGE, false, false, b"abc")),
            Inbound::Nothing
        );
        assert_eq!(
            c.held(),
            2 + QUEUED_MESSAGE_COST + 3,
            "the half-built packet counts"
        );
        match c.handle_frame(frame(2, Kind::MESSAGE, true, false, b"de")) {
            Ok(Inbound::Failed(id, err)) => {
                assert_eq!(id, Id::new(SID, 1));
                assert_eq!(err.code(), RESOURCE_EXHAUSTED);
                assert_eq!(
                    err.message(),
                    "message too large: message size 5 exceeds maximum of 4 bytes"
                );
            }
            other => panic!("{other:?}"),
        }
        expect_message(&mut c, b"ok");
        assert_matches!(
            c.recv(),
            Recv::Failed(StreamErrorKind::ReceivedTooLarge { size: 5, limit: 4 })
        );
        // Later frames of the stream are ignored.
        assert_matches!(feed(&mut c, msg(3, b"z")), Inbound::Nothing);
    }

    fn fc_opts(flow: FlowControl, max: usize) -> StreamOptions {
        StreamOptions {
            max_packet_size: max,
            flow_control: flow,
            ..StreamOptions::default()
        }
    }

    #[test]
    fn fork_mode_gates_and_grants_from_the_start() {
        let flow = FlowControl::fork()
            .with_window(128 << 10, 32 << 10)
            .expect("valid");
        let mut c = StreamCore::new(SID, StreamKind::Client, &fc_opts(flow, 1 << 20));
        assert!(c.is_flow_controlled());
        assert!(c.send_allowed(64 << 10));
        c.debit(200 << 10);
        assert!(!c.send_allowed(0), "overdrawn");
        assert!(c.grant(72 << 10));
        assert!(c.send_allowed(0) && !c.send_allowed(1));
        assert!(c.grant(1));
        assert!(c.send_allowed(1));
        // Receiving: the cap is the window plus one message.
        let big = Bytes::from(vec![0u8; 100 << 10]);
        for m in 1..=11 {
            let f = Frame {
                id: Id::new(SID, m),
                kind: Kind::MESSAGE,
                done: true,
                control: false,
                data: big.clone(),
            };
            assert_matches!(c.handle_frame(f), Ok(Inbound::Queued));
        }
        let over = Frame {
            id: Id::new(SID, 12),
            kind: Kind::MESSAGE,
            done: true,
            control: false,
            data: big.clone(),
        };
        assert_matches!(c.handle_frame(over), Ok(Inbound::Failed(_, _)));
        // Consuming grants at the threshold; never after termination.
        assert_matches!(c.recv(), Recv::Message(_));
        assert_eq!(c.take_grant(), None, "terminated: no more credit");
    }

    #[test]
    fn fork_mode_grants_consumed_bytes() {
        let flow = FlowControl::fork()
            .with_window(128 << 10, 32 << 10)
            .expect("valid");
        let mut c = StreamCore::new(SID, StreamKind::Server, &fc_opts(flow, 1 << 20));
        let chunk = Bytes::from(vec![0u8; 20 << 10]);
        for m in 1..=3 {
            let f = Frame {
                id: Id::new(SID, m),
                kind: Kind::MESSAGE,
                done: true,
                control: false,
                data: chunk.clone(),
            };
            assert_matches!(c.handle_frame(f), Ok(Inbound::Queued));
        }
        assert_matches!(c.recv(), Recv::Message(_));
        assert_eq!(c.take_grant(), None, "under the threshold");
        assert_matches!(c.recv(), Recv::Message(_));
        assert_eq!(c.take_grant(), Some(40 << 10));
        assert_eq!(c.take_grant(), None);
    }

    #[test]
    fn auto_negotiation_client_side() {
        let mut c = StreamCore::new(
            SID,
            StreamKind::Client,
            &fc_opts(FlowControl::auto(), 1 << 20),
        );
        assert!(!c.is_flow_controlled());
        let offer = c.offer_flow_control().expect("an auto client offers");
        assert_eq!(offer.window, FlowControl::AUTO_WINDOW);
        assert_eq!(offer.max_message, 1 << 20);
        assert_eq!(c.offer_flow_control(), None, "once");
        assert!(c.is_flow_controlled());
        assert_eq!(
            c.begin_invoke(true).ok(),
            Some((Some(Id::new(SID, 1)), Id::new(SID, 2)))
        );
        // Ungated until the server accepts, but counted.
        c.debit(10 << 20);
        assert!(c.send_allowed(64 << 10));
        let mut accept = Vec::new();
        FlowNegotiation::Accept(
            FlowParams {
                window: 1 << 20,
                max_message: 1 << 20,
            },
            drpc_wire::CompressionSet::EMPTY,
        )
        .append_to(&mut accept, Id::new(SID, 1));
        let (f, _) = Frame::parse(&Bytes::from(accept))
            .expect("ok")
            .expect("whole");
        assert_matches!(c.handle_frame(f), Ok(Inbound::SendGating(id)) if id == Id::new(SID, 3));
        assert!(!c.send_allowed(0), "what was sent before still counts");
        assert!(c.grant(9 << 20));
        assert!(c.send_allowed(0) && !c.send_allowed(1));
        assert!(c.grant(64 << 10));
        assert!(c.send_allowed(64 << 10));
    }

    #[test]
    fn auto_negotiation_server_side() {
        let max = 1 << 20;
        let mut c = StreamCore::new(SID, StreamKind::Server, &fc_opts(FlowControl::auto(), max));
        assert_eq!(c.offer_flow_control(), None, "servers do not offer");
        let offer = FlowParams {
            window: FlowControl::FRAME,
            max_message: 100,
        };
        let (id, own) = c.accept_flow_control(offer).expect("accepted");
        assert_eq!(id, Id::new(SID, 1));
        assert_eq!(own.max_message, max as u64);
        assert_eq!(c.accept_flow_control(offer), None, "once");
        assert!(c.send_allowed(FlowControl::FRAME as usize));
        c.debit(FlowControl::FRAME as usize);
        assert!(!c.send_allowed(1));
        // Before the client's gating marker, its messages are held neither
        // to the cap nor to the queue's bounds (only the connection's
        // budget, and shedding when memory runs short).
        let mut big = Vec::new();
        for m in 1..=3u64 {
            big.push(Bytes::from(vec![m as u8; 90]));
        }
        let mut pre = StreamCore::new(SID, StreamKind::Server, &fc_opts(FlowControl::auto(), max));
        pre.accept_flow_control(offer).expect("accepted");
        for m in 1..=300u64 {
            let f = Frame {
                id: Id::new(SID, m),
                kind: Kind::MESSAGE,
                done: true,
                control: false,
                data: Bytes::from_static(b"early"),
            };
            assert_matches!(pre.handle_frame(f), Ok(Inbound::Queued));
        }
        // Past its bounds: shed when memory runs short.
        assert!(pre.shed_overflow().is_some());
        assert_matches!(
            c.handle_frame(Frame {
                id: Id::new(SID, 1),
                kind: Kind::MESSAGE,
                done: true,
                control: false,
                data: big[0].clone()
            }),
            Ok(Inbound::Queued)
        );
        let mut gating = Vec::new();
        FlowNegotiation::Gating.append_to(&mut gating, Id::new(SID, 2));
        let (f, _) = Frame::parse(&Bytes::from(gating))
            .expect("ok")
            .expect("whole");
        assert_matches!(c.handle_frame(f), Ok(Inbound::Nothing));
        // Now held to window + one message, the early bytes exempt.
        let mib = Bytes::from(vec![0u8; max]);
        for m in 3..=(2 + (FlowControl::AUTO_WINDOW as usize / max) as u64 + 1) {
            let f = Frame {
                id: Id::new(SID, m),
                kind: Kind::MESSAGE,
                done: true,
                control: false,
                data: mib.clone(),
            };
            assert_matches!(c.handle_frame(f), Ok(Inbound::Queued));
        }
        let over = Frame {
            id: Id::new(SID, 100),
            kind: Kind::MESSAGE,
            done: true,
            control: false,
            data: big[2].clone(),
        };
        assert_matches!(c.handle_frame(over), Ok(Inbound::Failed(_, _)));
    }

    #[test]
    fn off_mode_never_gates() {
        let mut c = StreamCore::new(
            SID,
            StreamKind::Client,
            &fc_opts(FlowControl::off(), 1 << 20),
        );
        assert_eq!(c.offer_flow_control(), None);
        c.debit(1 << 30);
        assert!(c.send_allowed(1 << 20));
        assert!(!c.grant(5), "grants are dropped");
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
