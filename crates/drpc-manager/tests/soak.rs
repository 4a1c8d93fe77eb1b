//! Randomized soak test of a client and a server [`Manager`] over an
//! in-memory `tokio::io::duplex` transport, on a multi-thread runtime.
//!
//! A seeded PRNG (splitmix64) drives a random sequence of operations on
//! both sides of many streams: open (`open_stream` with and without
//! metadata, `open_unary`), accept, send (`send` or `send_bytes`, 0 B to
//! 1 MiB, sometimes over the packet limit), recv, close_send, close,
//! send_error (with a code), cancel (Canceled or DeadlineExceeded),
//! dropping a handle, bursts of concurrent sends and receives on several
//! streams (tasks), receives that wait and are woken by the peer or by a
//! local operation, and now and then the end of the connection:
//! `Manager::close`, `close_gracefully`, or dropping the last `Manager` of
//! one side (a client's open streams then keep the connection until they
//! end), sometimes in the middle of a burst. After a connection ends, a new
//! pair starts with other random settings (duplex buffer, split size,
//! writer high-water mark, receive queue bounds, packet limit, stream
//! limits on either side, accept backlog, flow control, memory budgets).
//!
//! Flow control is off, auto or fork (a third of the connections each),
//! with random valid windows (64 KiB + 1 to 4 MiB) and grant thresholds,
//! the same on both sides in fork mode, per side in auto mode. The memory
//! budget of each connection is the default 32 MiB or a small one (twice
//! the packet limit plus 4 MiB), with a shared budget common to both
//! managers (as small, or 256 MiB) or one per manager without a limit (a
//! probe of what it holds), and likewise a shared write budget.
//!
//! What the model predicts, and how it keeps the single-threaded driver
//! from waiting for something only a later operation would bring:
//!
//! * A receive queue over its bounds (`recv_queue_messages`,
//!   `recv_queue_bytes`) on a stream without flow control: a receiver that
//!   is its connection's only running stream (registered and not
//!   terminated) queues the message anyway (`forced` in the statistics);
//!   one that shares its connection fails alone with `QueueOverflow` (its
//!   queued messages first) and sends its peer an abortive Error
//!   (`RESOURCE_EXHAUSTED`, "receive queue cap exceeded: ..."), which ends
//!   the peer's stream: its receives report it after the messages the
//!   overflowing side sent, its sends fail with `Eof`. The model knows
//!   exactly which streams run on the receiving side as each message
//!   arrives (every frame sent before it has been processed by then, and a
//!   stream stops counting as it terminates, before anything it sends
//!   last), so it knows which case applies; after an overflow it waits for
//!   both sides to end. Sometimes an
//!   operation races the overflow: the sender's (against the Error, which
//!   may find its stream already ended) or the receiver's (against the
//!   message). A client that was sent a message over its bounds while
//!   alone opens no stream until it received it (the message could still be
//!   on its way, and would overflow).
//! * Flow control (fork mode; auto mode on streams opened with
//!   `open_stream`, which the auto server accepts): the model follows each
//!   sender's credit (the window less what it sent, plus what its peer's
//!   receives granted back at the threshold) and sends only when the
//!   message's first frame fits (a grant in flight arrives without further
//!   operations); such a receiver must never overflow. In auto mode the
//!   client's messages follow the queue's bounds until the server's
//!   acceptance has certainly arrived (the client received a message on
//!   the stream), so both rules apply until then. A server that lets go of
//!   a flow-controlled stream after its CloseSend (drops it) while the
//!   client may still send tells the client with a Close: a client sender
//!   waiting for credit then fails with `ClosedByRemote`, and the client's
//!   stream ends (its receive after the server's messages: the clean end).
//!   Without flow control the server lets go silently, and the client's
//!   sends go on (into the void).
//! * The reader waits only while its connection's memory budget (or the
//!   common one) cannot take the next frame, and a send while the write
//!   budget cannot take its message: the model keeps the unreceived bytes
//!   well below the budget, less two packets.
//! * Bursts run sends and receives concurrently: their receivers keep up
//!   or not, so a burst keeps within the queue's bounds (or has flow
//!   control, or a receiver alone), except in a chaos burst (which ends the
//!   connection anyway) half the time: an overflow there is checked as
//!   above.
//!
//! A model per stream records what each side sent and did, and checks:
//!
//! * every await is bounded by a timeout (no hang), no task panics;
//! * every message arrives intact and in order; a receive that ends
//!   reports a cause that happened (the peer's CloseSend or Close: `None`;
//!   its Error: `Remote` with the code and text; its Cancel or drop:
//!   `Canceled(Remote)`; this side's close, cancel or send_error: the
//!   matching local error; the connection: `ConnectionLost(Closed)` on the
//!   side that closed, `ConnectionLost(Eof | Io)` on a client peer,
//!   `Canceled(Remote)` (or `Io`) on a server peer), and when the peer
//!   ended the stream cleanly, every message it sent arrived first; the end
//!   is reported again by later receives;
//! * a send fails exactly when a cause allows it, with a matching error;
//! * stream limits: the server refuses an Invoke exactly when its registry
//!   is full (this is deterministic: the client's earlier frames arrive
//!   first), the client refuses only when it may be full and never when it
//!   cannot be;
//! * after every operation, `active_streams()` of both managers (the
//!   streams registered and not terminated) lies between the number of
//!   streams that are certainly running and the number that may be, where
//!   a stream counts exactly until it terminates: a held stream that
//!   reported `is_terminated()` just before never counts, one that still
//!   runs just after always does, and one the model says nothing could
//!   have ended has not; it is 0 on both sides once every handle is
//!   dropped, and after the connection ended; likewise a client refusal
//!   (its stream limit) happens exactly when the limit may be reached;
//! * `Manager::close` returns (its tasks exited), the peer's `closed()`
//!   returns with EOF or a broken pipe, `accept` then fails with the
//!   connection's error;
//! * at the end of each connection, with both managers closed and every
//!   stream dropped, `held_bytes()` of each manager is 0, and so are the
//!   shared budgets (common, or each manager's probe, within [`LAG_GRACE`]
//!   for a dropped manager).
//!
//! The test never leaves more Invokes unaccepted than the accept backlog.
//!
//! Deviations of `drpc-manager`/`drpc-stream` the soak knows, all fixed
//! since but the last: the soak fails on each by default, and
//! `DRPC_SOAK_STRICT=0` tolerates them (counted in the statistics), or all
//! but those it names (`DRPC_SOAK_STRICT` as a comma separated list of the
//! names below; `1` or `all` for all of them):
//!
//! * `refusal-race`: the server refuses an Invoke at its stream limit
//!   although one of its streams has already ended (by the application, on
//!   another thread) and the client has seen that end (test
//!   `server_limit_counts_ended_streams`). Tolerated, the soak avoids the
//!   race (it lets the server process pending Invokes before the server
//!   ends a stream when the limit is small); strict, it does not, and a
//!   refusal the model did not predict fails.
//! * `late-accept`: `accept` hands out (already terminated) streams that
//!   were queued before the connection ended, although it is documented to
//!   fail once the connection has ended (test
//!   `accept_fails_once_the_connection_ended`).
//! * `raw-writer-error`: a send (or close_send, close, send_error) racing
//!   the end of the connection fails with the connection's raw error, e.g.
//!   `ConnectionLost(Eof)` on a server whose peer went away, where a moment
//!   later it reports `Eof` (and receives report `Canceled(Remote)`):
//!   `terminate` stops the writer before it ends the streams.
//! * `queued-held`: a closed manager still holds the received messages of
//!   streams it queued for `accept` and never handed out, charged to its
//!   budgets, until it is dropped or an `accept` (which fails) takes each
//!   out (test `closed_manager_holds_nothing_for_unaccepted_streams`).
//!   Tolerated, the soak counts it and calls `accept` that many times
//!   before checking.
//! * `queued-cancel` (fixed; strict by default): when the server ends the connection
//!   while its reader is busy, a stream it queued for `accept` and never
//!   handed out may end on the client with `Canceled(Remote)` instead of
//!   the connection's end: the reader, seeing `term` set, frees the accept
//!   queue before `terminate` (on the thread that set it) has ended the
//!   streams in it, so each is dropped running and sends a Cancel (and on
//!   a reader error, it frees the queue before it calls `terminate`
//!   itself; `accept` after the end likewise). Ignored test
//!   `unaccepted_streams_end_with_the_connection`.
//!
//! The registry once lagged behind the streams' termination (a stream left
//! it in a hook that ran after its lock was released, so an observer could
//! see its end while `active_streams()`, the "only stream" rule of the
//! receive queues and the client's stream limit still counted it; tests
//! `registry_never_counts_a_terminated_stream` and
//! `client_limit_counts_ended_streams`): that is now always a failure.
//!
//! Configuration (environment):
//!
//! * default: seeds 1 to 12, 400 operations each;
//! * `DRPC_SOAK_SEED=N`: that seed only (to replay a failure);
//! * `DRPC_SOAK_SECONDS=N`: consecutive seeds until N seconds have passed,
//!   starting at `DRPC_SOAK_BASE_SEED` (default: derived from the clock);
//! * `DRPC_SOAK_OPS=N`: operations per seed (default 400, or 1000 with
//!   `DRPC_SOAK_SECONDS`);
//! * `DRPC_SOAK_LOG=N`: operations kept for the failure report (default
//!   60; `18446744073709551615` prints every one as it goes).
//!
//! A failure prints the seed, the operation count and the last operations.
//! A replay follows the same operations as long as the outcomes the model
//! cannot predict (refusals near the client's limit, a send racing the
//! peer's end, an operation racing an overflow, a connection closed during
//! a burst) come out the same. Whichever way a race with an overflow goes,
//! both sides have ended and are treated alike by most choices; an
//! overflow in a chaos burst (or not) changes nothing, since the
//! connection ends then.

use std::collections::{BTreeMap, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use drpc_manager::{Manager, ManagerOptions, Role};
use drpc_stream::{
    ConnectionError, FlowControl, Initiator, MemoryBudget, Stream, StreamError, StreamErrorKind,
    StreamKind, StreamOptions,
};
use drpc_wire::{CodedError, Metadata, RESOURCE_EXHAUSTED};

const CLIENT: usize = 0;
const SERVER: usize = 1;
const SIDE_NAMES: [&str; 2] = ["client", "server"];

/// The bound on every single await.
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound on one seed.
const SEED_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_SEEDS: std::ops::RangeInclusive<u64> = 1..=12;
const DEFAULT_OPS: usize = 400;
const DEFAULT_LONG_OPS: usize = 1000;
/// Streams open at once (either side present or waiting to be accepted).
const MAX_LIVE_STREAMS: usize = 24;
/// What the model leaves of a connection's memory budget for what it does
/// not count: frame headers, Invokes, control packets, Errors.
const BUDGET_SLACK: usize = 1 << 20;
/// The largest frame of a flow-controlled message.
const FC_FRAME: usize = FlowControl::FRAME as usize;
/// Operation descriptions kept for the failure report (`DRPC_SOAK_LOG`
/// sets another number).
const LOG_LINES: usize = 60;
/// How long a dropped manager's tasks may take to free what its
/// connection holds.
const LAG_GRACE: Duration = Duration::from_millis(500);

type R<T> = Result<T, String>;

// ---------------------------------------------------------------- PRNG ----

/// splitmix64: tiny, seedable, good enough to drive a test.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The payload of a message: `len` bytes derived from `tag`.
fn payload(tag: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut g = Rng(tag);
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&g.next().to_le_bytes()[..chunk.len()]);
    }
    out
}

fn payload_matches(tag: u64, data: &[u8]) -> bool {
    let mut g = Rng(tag);
    data.chunks(8)
        .all(|c| c == &g.next().to_le_bytes()[..c.len()])
}

fn error_text(code: u64) -> String {
    format!("soak error {code}")
}

fn refusal_text(limit: usize) -> String {
    format!("too many concurrent streams: refused: at most {limit} concurrent streams")
}

/// The text of the abortive Error a stream whose receive queue overflowed
/// sends its peer (code `RESOURCE_EXHAUSTED`).
fn overflow_text(cap: usize) -> String {
    format!("receive queue cap exceeded: receive queue exceeded its {cap}-byte cap")
}

async fn within<F: Future>(what: impl std::fmt::Display, fut: F) -> R<F::Output> {
    tokio::time::timeout(OP_TIMEOUT, fut)
        .await
        .map_err(|_| format!("HANG: {what} did not complete within {OP_TIMEOUT:?}"))
}

// --------------------------------------------------------------- model ----

#[derive(Debug, Clone, Copy)]
struct Msg {
    tag: u64,
    len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelReason {
    Canceled,
    Deadline,
}

impl CancelReason {
    fn kind(self) -> StreamErrorKind {
        match self {
            CancelReason::Canceled => StreamErrorKind::Canceled(Initiator::Local),
            CancelReason::Deadline => StreamErrorKind::DeadlineExceeded,
        }
    }
}

/// One side of one stream. Terminal operations are recorded only when the
/// stream was not yet terminated just before (otherwise they were certainly
/// no-ops); one that raced a termination is recorded although it did
/// nothing, which only widens what the checks accept.
#[derive(Debug, Default)]
struct Side {
    stream: Option<Arc<Stream>>,
    /// The server side was handed out by `accept` (always true for the
    /// client side).
    accepted: bool,
    sent: Vec<Msg>,
    sent_bytes: usize,
    /// How many of the peer's messages this side received.
    received: usize,
    received_bytes: usize,
    /// The first end of the receive side seen, normalized.
    end: Option<String>,
    send_failed: bool,
    close_send: bool,
    close: bool,
    send_error: Option<u64>,
    cancel: Option<CancelReason>,
    dropped: bool,
    /// The drop may have sent a Cancel.
    drop_may_cancel: bool,
    /// A server side let go of a flow-controlled stream after its
    /// CloseSend (dropped it) while the client had not half-closed: the
    /// drop sent a Close, which ends the client's stream (its sends fail
    /// with `ClosedByRemote`, its receive ends cleanly). Without flow
    /// control the drop sends nothing (and neither when the client had
    /// half-closed: the server's CloseSend ends the client's stream then).
    drop_close: bool,
    /// This side's receive queue overflowed (a stream without flow control
    /// that shares its connection): it failed with `QueueOverflow` and
    /// sent its peer an abortive Error (`RESOURCE_EXHAUSTED`). Set once the
    /// model knows it happened (predicted, or observed and then waited
    /// for), and then both sides have terminated.
    overflow: bool,
    /// How many of the peer's messages this side receives before the
    /// overflow is reported (the messages queued when it happened), when
    /// known.
    overflow_at: Option<usize>,
    /// Flow control, as the receiver: bytes of the peer's messages this
    /// side consumed and has not granted back yet, and bytes granted back
    /// in all (each grant is sent by the receive that makes it due).
    ungranted: u64,
    granted: u64,
    /// A client side was sent a message over its queue's bounds while it
    /// was its connection's only stream, which it queues anyway: until it
    /// has received this many messages, the message may still be on its
    /// way, and a stream the client opens meanwhile would make it overflow
    /// instead (the model opens none).
    forced_until: usize,
}

impl Side {
    /// This side ended the stream and discarded what it had queued.
    fn discard(&self) -> bool {
        self.close || self.send_error.is_some() || self.cancel.is_some()
    }

    /// This side's own operations terminated the stream.
    fn locally_terminated(&self) -> bool {
        self.discard() || self.dropped
    }

    /// This side's own operations ended its sending.
    fn send_ended(&self) -> bool {
        self.close_send || self.discard() || self.dropped
    }

    /// The peer will see an end of its receive side caused by this side.
    fn end_op(&self) -> bool {
        self.close_send || self.discard() || self.dropped
    }

    fn summary(&self) -> String {
        let mut s = String::new();
        if let Some(stream) = &self.stream {
            s.push_str(if stream.is_terminated() {
                "held(terminated) "
            } else {
                "held "
            });
        } else if !self.accepted {
            s.push_str("unaccepted ");
        }
        s.push_str(&format!(
            "sent={}({}B) recv={}({}B)",
            self.sent.len(),
            self.sent_bytes,
            self.received,
            self.received_bytes
        ));
        if let Some(e) = &self.end {
            s.push_str(&format!(" end={e}"));
        }
        if self.overflow {
            s.push_str(&format!(" OVERFLOW(after {:?})", self.overflow_at));
        }
        if self.granted > 0 || self.ungranted > 0 {
            s.push_str(&format!(" granted={}+{}", self.granted, self.ungranted));
        }
        if self.send_failed {
            s.push_str(" send-failed");
        }
        if self.close_send {
            s.push_str(" close_send");
        }
        if self.close {
            s.push_str(" close");
        }
        if let Some(c) = self.send_error {
            s.push_str(&format!(" send_error({c})"));
        }
        if let Some(r) = self.cancel {
            s.push_str(&format!(" cancel({r:?})"));
        }
        if self.dropped {
            s.push_str(if self.drop_may_cancel {
                " dropped(cancel)"
            } else if self.drop_close {
                " dropped(close)"
            } else {
                " dropped(silent)"
            });
        }
        s
    }
}

#[derive(Debug)]
struct StreamModel {
    id: u64,
    rpc: String,
    metadata: Metadata,
    side: [Side; 2],
    /// The server refused the Invoke (stream limit).
    refused: bool,
    /// Opened with `open_unary*` (never flow-controlled in auto mode).
    unary: bool,
    /// See [`StreamModel::gone`].
    ended: bool,
    /// Auto mode: the client received a message of the server's, so the
    /// server's acceptance of flow control had arrived before: what the
    /// client sends from now on follows its gating marker, and the server
    /// holds it to its window.
    confirmed: bool,
}

impl StreamModel {
    fn describe(&self) -> String {
        format!(
            "stream {}{}{}{}: client[{}] server[{}]",
            self.id,
            if self.refused {
                " (refused by server)"
            } else {
                ""
            },
            if self.unary { " (unary)" } else { "" },
            if self.confirmed { " (confirmed)" } else { "" },
            self.side[CLIENT].summary(),
            self.side[SERVER].summary()
        )
    }

    /// The server's stream is (or will be, once the client's frames sent so
    /// far have arrived) terminated. Exact, not a bound: the server's side
    /// ends by its own operations (synchronous) or by the client's frames,
    /// all of which reach it before a later Invoke.
    fn server_gone(&self) -> bool {
        let (c, s) = (&self.side[CLIENT], &self.side[SERVER]);
        self.refused
            || s.locally_terminated()
            || c.locally_terminated()
            || (c.close_send && s.close_send)
            || self.gone()
    }

    /// Either side's receive queue overflowed (both sides have terminated).
    fn overflowed(&self) -> bool {
        self.side[CLIENT].overflow || self.side[SERVER].overflow
    }

    /// Both sides are known to have terminated: the model waited for them,
    /// after an overflow or an operation that raced one. (Whichever the
    /// outcome of such a race, the stream is then treated alike, so that a
    /// replay takes the same random choices.)
    fn gone(&self) -> bool {
        self.ended || self.overflowed()
    }

    /// The client's stream is terminated by its own operations, or by an
    /// overflow or a refusal the model waited for.
    fn client_certainly_gone(&self) -> bool {
        self.side[CLIENT].locally_terminated() || self.gone() || self.refused
    }

    /// The client's stream may have been terminated by the server. Exact
    /// once the server's frames sent so far have arrived: each of these
    /// sent a packet that ends it (or something else ended it first), and
    /// nothing else ends it.
    fn client_maybe_gone(&self) -> bool {
        let (c, s) = (&self.side[CLIENT], &self.side[SERVER]);
        self.client_certainly_gone()
            || s.discard()
            || s.drop_may_cancel
            || s.drop_close
            || (c.close_send && s.close_send)
    }
}

/// Flow control of an epoch's streams (both sides alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FcMode {
    Off,
    /// Negotiated on streams opened with `open_stream`.
    Auto,
    /// Every stream gated and granted from the start.
    Fork,
}

/// What governs one direction of a stream when its next message arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Regime {
    /// The receive queue's bounds (`recv_queue_messages`,
    /// `recv_queue_bytes`): over them the receiver queues anyway when it is
    /// its connection's only stream, and fails with `QueueOverflow`
    /// otherwise. The sender never waits for credit.
    Off,
    /// Flow control: the sender waits for credit, the receiver holds it to
    /// its window plus one message, which a sender that waits never
    /// exceeds.
    Flow,
    /// Auto mode, client to server, before the model knows that the server
    /// enforces the window (the client's gating marker may not have
    /// arrived): either of the above. The client may wait for credit.
    Unsettled,
}

/// The budgets the managers charge besides their own.
#[derive(Debug, Clone, Copy)]
enum SharedCfg {
    /// A budget of each manager's own without a limit: a probe of what the
    /// connection holds, readable after the manager is dropped.
    Probe,
    /// One budget with this limit, shared by both managers.
    Common(usize),
}

impl SharedCfg {
    /// The budget of each manager (the same one twice when common).
    fn budgets(self) -> [Arc<MemoryBudget>; 2] {
        match self {
            SharedCfg::Probe => [
                Arc::new(MemoryBudget::unlimited()),
                Arc::new(MemoryBudget::unlimited()),
            ],
            SharedCfg::Common(limit) => {
                let common = Arc::new(MemoryBudget::new(limit, None));
                [common.clone(), common]
            }
        }
    }
}

/// The shared budgets of a connection's managers.
struct Budgets {
    /// Everything held for the peer (`shared_memory`).
    shared: [Arc<MemoryBudget>; 2],
    /// Messages waiting to be written (`shared_write_memory`).
    write: [Arc<MemoryBudget>; 2],
}

#[derive(Debug, Clone)]
struct EpochCfg {
    duplex: usize,
    split: usize,
    high_water: usize,
    q_msgs: usize,
    q_bytes: usize,
    max_packet: usize,
    client_limit: usize,
    server_limit: usize,
    backlog: usize,
    fc: FcMode,
    /// Per side: the window it grants its peer, and its grant threshold.
    window: [u64; 2],
    threshold: [u64; 2],
    /// `max_connection_memory` of both sides.
    memory: usize,
    shared: SharedCfg,
    /// `shared_write_memory`: a send waits while it is full, until the
    /// writer has written enough.
    write_shared: SharedCfg,
}

impl EpochCfg {
    fn random(rng: &mut Rng) -> EpochCfg {
        let max_packet = rng.pick(&[4 << 20, 4 << 20, 300 << 10]);
        let fc = rng.pick(&[FcMode::Off, FcMode::Auto, FcMode::Fork]);
        let (mut window, mut threshold) = ([0; 2], [0; 2]);
        for l in [CLIENT, SERVER] {
            let w = match rng.below(4) {
                0 => FC_FRAME + 1,
                1 => rng.range(FC_FRAME + 1, 512 << 10),
                2 => rng.range(512 << 10, 4 << 20),
                _ => FlowControl::DEFAULT_WINDOW as usize,
            };
            let t = match rng.below(3) {
                0 => 1,
                1 => w - FC_FRAME,
                _ => rng.range(1, w - FC_FRAME),
            };
            (window[l], threshold[l]) = (w as u64, t as u64);
        }
        if fc == FcMode::Fork {
            // The fork's sides must agree on the window.
            window[SERVER] = window[CLIENT];
            threshold[SERVER] = threshold[CLIENT];
        }
        let memory = if rng.one_in(4) {
            2 * max_packet + (4 << 20)
        } else {
            drpc_manager::DEFAULT_CONNECTION_MEMORY
        };
        EpochCfg {
            duplex: rng.pick(&[1 << 10, 8 << 10, 64 << 10, 1 << 20]),
            split: rng.pick(&[0, 0, 1000, 16 << 10]),
            high_water: rng.pick(&[0, 0, 4096, 64 << 10]),
            q_msgs: rng.pick(&[256, 256, 8, 1]),
            q_bytes: rng.pick(&[8 << 20, 8 << 20, 256 << 10]),
            max_packet,
            client_limit: if rng.one_in(4) { rng.range(2, 6) } else { 4096 },
            server_limit: if rng.one_in(4) { rng.range(2, 6) } else { 4096 },
            backlog: rng.pick(&[128, 128, 4, 1]),
            fc,
            window,
            threshold,
            memory,
            shared: match rng.below(4) {
                0 => SharedCfg::Common(memory),
                1 => SharedCfg::Common(256 << 20),
                _ => SharedCfg::Probe,
            },
            write_shared: match rng.below(4) {
                0 => SharedCfg::Common(memory),
                1 => SharedCfg::Common(256 << 20),
                _ => SharedCfg::Probe,
            },
        }
    }

    fn options(&self, l: usize, budgets: &Budgets) -> ManagerOptions {
        let flow = match self.fc {
            FcMode::Off => FlowControl::off(),
            FcMode::Auto => FlowControl::auto(),
            FcMode::Fork => FlowControl::fork(),
        };
        let flow = flow
            .with_window(self.window[l], self.threshold[l])
            .expect("a valid window");
        ManagerOptions {
            stream: StreamOptions {
                split_size: self.split,
                max_packet_size: self.max_packet,
                recv_queue_messages: self.q_msgs,
                recv_queue_bytes: self.q_bytes,
                flow_control: flow,
            },
            writer_high_water: self.high_water,
            max_concurrent_streams: [self.client_limit, self.server_limit][l],
            accept_backlog: self.backlog,
            max_connection_memory: self.memory,
            shared_memory: Some(budgets.shared[l].clone()),
            shared_write_memory: Some(budgets.write[l].clone()),
            ..ManagerOptions::default()
        }
    }

    /// The most unreceived bytes (both directions) the model lets the
    /// connection hold. A reader waits while its connection's budget (or
    /// the common one) cannot take the next frame (up to `max_packet`
    /// bytes) on top of what is held: the model never lets it, since the
    /// single-threaded driver could then wait for a message behind it. Each
    /// byte sent and not received is held by one side at most (its
    /// sender's writer, or its receiver's queue).
    fn pending_cap(&self) -> usize {
        (self.memory - 2 * self.max_packet) / 8 * 7 - BUDGET_SLACK
    }

    /// The first frame of a gated message of `len` bytes (at most).
    fn first_frame(len: usize) -> i64 {
        len.min(FC_FRAME) as i64
    }
}

/// One connection (an "epoch" of the run) and its streams.
struct Conn {
    mgr: [Option<Manager>; 2],
    cfg: EpochCfg,
    /// The side that ended the connection.
    closed_by: Option<usize>,
    /// The side that ended the connection had written everything its
    /// streams sent, and its peer read up to the end of file: the peer
    /// received all of it.
    flushed: bool,
    streams: BTreeMap<u64, StreamModel>,
    /// Streams whose Invoke the server will hand to `accept`, in order.
    pending: VecDeque<u64>,
    last_id: u64,
    budgets: Budgets,
    /// Streams of a running chaos burst that may overflow meanwhile.
    may_overflow: Vec<u64>,
}

impl Conn {
    fn new(cfg: EpochCfg) -> Conn {
        let budgets = Budgets {
            shared: cfg.shared.budgets(),
            write: cfg.write_shared.budgets(),
        };
        let (a, b) = tokio::io::duplex(cfg.duplex);
        let client = Manager::new(a, Role::Client, cfg.options(CLIENT, &budgets));
        let server = Manager::new(b, Role::Server, cfg.options(SERVER, &budgets));
        Conn {
            mgr: [Some(client), Some(server)],
            budgets,
            may_overflow: Vec::new(),
            cfg,
            closed_by: None,
            flushed: false,
            streams: BTreeMap::new(),
            pending: VecDeque::new(),
            last_id: 0,
        }
    }

    fn mgr(&self, l: usize) -> R<Manager> {
        self.mgr[l]
            .clone()
            .ok_or_else(|| format!("internal: {} manager dropped", SIDE_NAMES[l]))
    }

    fn st(&self, id: u64) -> &StreamModel {
        &self.streams[&id]
    }

    fn st_mut(&mut self, id: u64) -> &mut StreamModel {
        self.streams.get_mut(&id).expect("stream in model")
    }

    fn stream(&self, id: u64, l: usize) -> Arc<Stream> {
        self.st(id).side[l]
            .stream
            .clone()
            .expect("stream side present")
    }

    fn present(&self, id: u64, l: usize) -> bool {
        self.st(id).side[l].stream.is_some()
    }

    fn live(&self) -> usize {
        self.streams
            .values()
            .filter(|st| {
                st.side.iter().any(|s| s.stream.is_some())
                    || (!st.refused && !st.side[SERVER].accepted)
            })
            .count()
    }

    fn sides(&self, pred: impl Fn(&Conn, u64, usize) -> bool) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        for &id in self.streams.keys() {
            for l in [CLIENT, SERVER] {
                if self.present(id, l) && pred(self, id, l) {
                    out.push((id, l));
                }
            }
        }
        out
    }

    /// A receive on side `l` completes without any further operation.
    fn recv_safe(&self, id: u64, l: usize) -> bool {
        let st = self.st(id);
        let (me, peer) = (&st.side[l], &st.side[1 - l]);
        me.discard()
            || me.end.is_some()
            || me.received < peer.sent.len()
            || (st.refused && l == CLIENT)
            || peer.end_op()
            || st.gone()
            || self.closed_by.is_some()
    }

    /// How many of the peer's messages side `l` may still receive: up to
    /// the overflow, when its queue overflowed.
    fn deliverable(&self, id: u64, l: usize) -> usize {
        let st = self.st(id);
        let (me, peer) = (&st.side[l], &st.side[1 - l]);
        let upto = match (me.overflow, me.overflow_at) {
            (true, Some(at)) => at,
            _ => peer.sent.len(),
        };
        upto.saturating_sub(me.received)
    }

    /// What governs the direction from side `l` of a stream.
    fn regime(&self, st: &StreamModel, l: usize) -> Regime {
        match self.cfg.fc {
            FcMode::Off => Regime::Off,
            FcMode::Fork => Regime::Flow,
            FcMode::Auto if st.unary => Regime::Off,
            FcMode::Auto if l == SERVER || st.confirmed => Regime::Flow,
            FcMode::Auto => Regime::Unsettled,
        }
    }

    /// The credit of side `l`'s sender, as the model knows it: the window
    /// its peer granted, less everything it sent, plus every grant its peer
    /// made due (a grant in flight arrives without further operations, so a
    /// send waiting for it completes).
    fn balance(&self, id: u64, l: usize) -> i64 {
        let st = self.st(id);
        let r = 1 - l;
        self.cfg.window[r] as i64 - st.side[l].sent_bytes as i64 + st.side[r].granted as i64
    }

    /// A send of `len` bytes from side `l` does not wait for credit beyond
    /// what is granted or in flight.
    fn credit_for(&self, id: u64, l: usize, len: usize) -> bool {
        self.regime(self.st(id), l) == Regime::Off
            || self.balance(id, l) >= EpochCfg::first_frame(len)
    }

    /// The server's side of a stream has a receive window: the fork, or an
    /// auto client's offer (`open_stream`), which an auto server accepts
    /// as the Invoke arrives (its acceptance is appended before anything
    /// else the server sends on the stream).
    fn server_flow_controlled(&self, st: &StreamModel) -> bool {
        self.regime(st, CLIENT) != Regime::Off
    }

    /// The streams running (registered and not terminated) on side `r` when
    /// a message sent now arrives there: every frame sent before it has
    /// been processed by then, and each stream left the count as it
    /// terminated. Exact, as far as the operations on the receiving side
    /// that follow the send go: they end streams (only), and a stream
    /// opened after it registers after it arrives.
    fn running_at_arrival(&self, r: usize) -> usize {
        if r == CLIENT {
            self.streams
                .values()
                .filter(|st| !st.client_maybe_gone())
                .count()
        } else {
            self.server_registered_at_next_invoke()
        }
    }

    /// What a send of `len` bytes from side `l` leads to. The model sends
    /// only when it knows the outcome and the send cannot wait for
    /// something only a later operation would bring.
    fn send_fate(&self, id: u64, l: usize, len: usize) -> Fate {
        let st = self.st(id);
        let r = 1 - l;
        let (me, peer) = (&st.side[l], &st.side[r]);
        if len > self.cfg.max_packet
            || self.closed_by.is_some()
            || me.send_ended()
            || me.send_failed
            || st.gone()
            || (st.refused && l == CLIENT)
        {
            // Fails at once (or races the end of the connection).
            return Fate::Send;
        }
        let credit = self.credit_for(id, l, len);
        if peer.locally_terminated() {
            // The message is dropped. A gated send may wait for credit
            // until the peer's terminal packet arrives: every peer that lets
            // go of a stream its sender may still send on sends one (a
            // server dropped after its CloseSend sends Close when flow
            // controlled, and nothing only without flow control, where
            // nobody waits for credit).
            return Fate::Send;
        }
        if self.pending_bytes() + len > self.cfg.pending_cap() {
            return Fate::MakeRoom;
        }
        // The receiver is alive when the message arrives, with every earlier
        // message it has not received still queued.
        let msgs = me.sent.len() - peer.received;
        let bytes = me.sent_bytes - peer.received_bytes;
        let fits = msgs == 0 || (msgs < self.cfg.q_msgs && bytes + len <= self.cfg.q_bytes);
        let alone = self.running_at_arrival(r) <= 1;
        match self.regime(st, l) {
            Regime::Flow if credit => Fate::Send,
            Regime::Unsettled if credit && (fits || alone) => Fate::Send,
            Regime::Off if fits => Fate::Send,
            Regime::Off if alone => Fate::Forced,
            Regime::Off => Fate::Overflow,
            _ => Fate::MakeRoom,
        }
    }

    /// A message over a client side's queue bounds, queued because the
    /// stream was the client's only one, may still be on its way (only the
    /// client's own termination ends the stream before it arrives: the
    /// server's terminal packets follow it).
    fn forced_in_flight(&self) -> bool {
        self.closed_by.is_none()
            && self.streams.values().any(|st| {
                let c = &st.side[CLIENT];
                c.received < c.forced_until && !c.locally_terminated()
            })
    }

    fn pending_bytes(&self) -> usize {
        self.streams
            .values()
            .flat_map(|st| {
                [CLIENT, SERVER].map(|l| {
                    let (me, peer) = (&st.side[l], &st.side[1 - l]);
                    if peer.locally_terminated() {
                        0
                    } else if let (true, Some(at)) = (peer.overflow, peer.overflow_at) {
                        // What came after the overflow was dropped.
                        me.sent[peer.received.min(at)..at]
                            .iter()
                            .map(|m| m.len)
                            .sum()
                    } else {
                        me.sent_bytes - peer.received_bytes
                    }
                })
            })
            .sum()
    }

    /// How many streams the server has registered when the next Invoke
    /// arrives.
    fn server_registered_at_next_invoke(&self) -> usize {
        self.streams.values().filter(|st| !st.server_gone()).count()
    }

    /// The streams whose side `l` is held and reports (`terminated`) or
    /// not its termination now.
    fn held_sides(&self, l: usize, terminated: bool) -> Vec<u64> {
        self.streams
            .values()
            .filter(|st| {
                st.side[l]
                    .stream
                    .as_ref()
                    .is_some_and(|s| s.is_terminated() == terminated)
            })
            .map(|st| st.id)
            .collect()
    }

    /// The client streams certainly running (registered and not
    /// terminated) right now: nothing could have ended them.
    fn client_certain(&self) -> Vec<u64> {
        self.streams
            .values()
            .filter(|st| !st.client_maybe_gone())
            .map(|st| st.id)
            .collect()
    }

    /// (certainly, possibly) running client streams right now; `ended`:
    /// streams whose client side was seen terminated (a terminated stream
    /// never counts).
    fn client_bounds(&self, ended: &[u64]) -> (usize, usize) {
        let possible = self
            .streams
            .values()
            .filter(|st| !st.client_certainly_gone() && !ended.contains(&st.id))
            .count();
        (self.client_certain().len(), possible)
    }

    /// The server streams certainly running right now.
    fn server_certain(&self) -> Vec<u64> {
        self.streams
            .values()
            .filter(|st| st.side[SERVER].accepted && !st.server_gone())
            .map(|st| st.id)
            .collect()
    }

    /// (certainly, possibly) running server streams right now (an Invoke
    /// may still be on its way, and a client's terminal packet); `ended`:
    /// streams whose server side was seen terminated.
    fn server_bounds(&self, ended: &[u64]) -> (usize, usize) {
        let possible = self
            .streams
            .values()
            .filter(|st| {
                !st.refused
                    && !st.side[SERVER].locally_terminated()
                    && !st.gone()
                    && !ended.contains(&st.id)
            })
            .count();
        (self.server_certain().len(), possible)
    }

    /// Directions (stream, sender) on which sends must succeed and the
    /// receiver must get every message.
    fn open_directions(&self) -> Vec<(u64, usize)> {
        if self.closed_by.is_some() {
            return Vec::new();
        }
        self.sides(|c, id, l| {
            let st = c.st(id);
            let (me, peer) = (&st.side[l], &st.side[1 - l]);
            !st.refused
                && peer.stream.is_some()
                && !me.send_ended()
                && !peer.locally_terminated()
                && peer.end.is_none()
                && !st.gone()
        })
    }
}

/// What a send leads to (see [`Conn::send_fate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// It succeeds and the message arrives, or it fails at once.
    Send,
    /// The message is over the receive queue's bounds, and the receiver is
    /// its connection's only stream: it is queued anyway.
    Forced,
    /// The message is over the receive queue's bounds of a receiver that
    /// shares its connection: the receiver fails with `QueueOverflow` and
    /// the sender gets an abortive Error.
    Overflow,
    /// The outcome is not known, or the send could wait: receive first.
    MakeRoom,
}

/// What an ended receive returned: `Ok(())` for the clean end (`None`).
type End = Result<(), StreamErrorKind>;

fn end_key(end: &End) -> String {
    match end {
        Ok(()) => "None".to_string(),
        Err(k) => format!("{k:?}"),
    }
}

/// Whether a connection-level error is what side `l` reports after the
/// connection was ended by side `closer`.
fn conn_kind_ok(l: usize, closer: Option<usize>, kind: &StreamErrorKind) -> bool {
    let Some(closer) = closer else {
        return false;
    };
    match kind {
        StreamErrorKind::ConnectionLost(ConnectionError::Closed) => closer == l,
        StreamErrorKind::ConnectionLost(ConnectionError::Eof) => closer != l && l == CLIENT,
        StreamErrorKind::ConnectionLost(ConnectionError::Io(_)) => closer != l,
        StreamErrorKind::Canceled(Initiator::Remote) => closer != l && l == SERVER,
        _ => false,
    }
}

/// Whether `kind` is the raw error of the connection's writer, which an
/// operation that appends frames (send, close_send, close, send_error)
/// returns when it races the end of the connection: `terminate` stops the
/// writer before it ends the streams, so for a moment the appends fail with
/// the connection's own error, not mapped per role (a server's streams
/// otherwise report a vanished peer as `Canceled(Remote)`, and sends return
/// `Eof`).
fn raw_writer_error(l: usize, closer: Option<usize>, kind: &StreamErrorKind) -> bool {
    let Some(closer) = closer else {
        return false;
    };
    match kind {
        StreamErrorKind::ConnectionLost(ConnectionError::Closed) => closer == l,
        StreamErrorKind::ConnectionLost(ConnectionError::Eof | ConnectionError::Io(_)) => {
            closer != l
        }
        _ => false,
    }
}

/// Whether the termination reason of the peer of the side that closed is
/// plausible: end of file, or a broken pipe from its writer.
fn peer_termination_ok(err: &ConnectionError) -> bool {
    match err {
        ConnectionError::Eof => true,
        ConnectionError::Io(e) => e.kind() == std::io::ErrorKind::BrokenPipe,
        _ => false,
    }
}

/// Judges an end of side `l`'s receive side: (allowed, every message the
/// peer sent must have arrived first).
///
/// An end the peer caused (CloseSend, Close, Error, Cancel) follows
/// everything the peer sent, and a local close, cancel or send_error that
/// discards queued messages replaces a clean end, so such an end always
/// comes after all the peer's messages. An end the connection caused does
/// too when the side that closed it flushed first and this side read to the
/// end of file (`flushed`).
///
/// A side whose receive queue overflowed reports `QueueOverflow` after the
/// messages queued before the one that overflowed it (not complete); its
/// peer reports the abortive Error after everything the side sent (it sent
/// them before its Error), unless it had ended already.
fn judge_end(
    st: &StreamModel,
    l: usize,
    closer: Option<usize>,
    flushed: bool,
    cfg: &EpochCfg,
    end: &End,
) -> (bool, bool) {
    let (me, peer) = (&st.side[l], &st.side[1 - l]);
    let conn_complete = flushed && closer == Some(1 - l);
    match end {
        Ok(()) => (peer.close_send || peer.close, true),
        Err(StreamErrorKind::Remote(e)) => {
            let expected = if st.refused && l == CLIENT {
                Some((0, refusal_text(cfg.server_limit)))
            } else {
                peer.send_error.map(|c| (c, error_text(c)))
            };
            let got = Some((e.code(), e.message().to_string()));
            let overflow =
                peer.overflow && got == Some((RESOURCE_EXHAUSTED, overflow_text(cfg.q_bytes)));
            (expected == got || overflow, true)
        }
        Err(StreamErrorKind::QueueOverflow { cap }) => {
            let at = me.overflow_at.is_none_or(|at| at == me.received);
            (me.overflow && *cap == cfg.q_bytes && at, false)
        }
        Err(k @ StreamErrorKind::Canceled(Initiator::Remote)) => {
            let by_peer = peer.cancel.is_some() || peer.drop_may_cancel;
            let by_conn = conn_kind_ok(l, closer, k);
            (
                by_peer || by_conn,
                (by_peer && !by_conn) || (by_conn && conn_complete),
            )
        }
        Err(StreamErrorKind::Canceled(Initiator::Local)) => {
            (me.cancel == Some(CancelReason::Canceled), false)
        }
        Err(StreamErrorKind::DeadlineExceeded) => {
            (me.cancel == Some(CancelReason::Deadline), false)
        }
        Err(StreamErrorKind::TerminatedByClose) => (me.close, false),
        Err(StreamErrorKind::TerminatedBySendError) => (me.send_error.is_some(), false),
        Err(k @ StreamErrorKind::ConnectionLost(_)) => (conn_kind_ok(l, closer, k), conn_complete),
        Err(_) => (false, false),
    }
}

/// Judges a failed send of side `l`.
fn judge_send_error(
    st: &StreamModel,
    l: usize,
    closer: Option<usize>,
    kind: &StreamErrorKind,
) -> bool {
    let (me, peer) = (&st.side[l], &st.side[1 - l]);
    match kind {
        StreamErrorKind::SendClosed => me.close_send,
        StreamErrorKind::TerminatedByClose => me.close,
        StreamErrorKind::ClosedByRemote => peer.close || peer.drop_close,
        StreamErrorKind::Eof => {
            st.overflowed()
                || me.send_error.is_some()
                || me.cancel.is_some()
                || peer.send_error.is_some()
                || peer.cancel.is_some()
                || peer.drop_may_cancel
                || (st.refused && l == CLIENT)
                || closer.is_some()
        }
        // The writer stopped under the send: the connection error, or the
        // cancellation that connection loss sets on a server.
        StreamErrorKind::ConnectionLost(_) | StreamErrorKind::Canceled(_) => {
            conn_kind_ok(l, closer, kind)
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Copy)]
enum Term {
    CloseSend,
    Close,
    SendError(u64),
    Cancel(CancelReason),
}

/// How one side ends the connection.
#[derive(Debug, Clone, Copy)]
enum CloseMode {
    /// `Manager::close`: unsent bytes are discarded.
    Close(usize),
    /// `Manager::close_gracefully`: what was sent is written first.
    Graceful(usize),
    /// Dropping the last `Manager`: what was sent is written first, for at
    /// most a second.
    Drop(usize),
}

impl CloseMode {
    fn closer(self) -> usize {
        match self {
            CloseMode::Close(l) | CloseMode::Graceful(l) | CloseMode::Drop(l) => l,
        }
    }
}

/// How long `close_gracefully` may take in the test.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dropped manager flushes (`drpc-manager`'s `FLUSH_ON_DROP`),
/// less a margin: a peer that saw the end sooner saw everything flushed.
const DROP_FLUSH: Duration = Duration::from_millis(950);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Open,
    Unary,
    Accept,
    Send,
    Recv,
    Wake,
    CloseSend,
    Close,
    SendError,
    Cancel,
    Drop,
    Burst,
    Chaos,
    ConnClose,
    Reconnect,
}

#[derive(Debug, Default, Clone)]
struct Stats {
    seeds: u64,
    ops: usize,
    epochs: usize,
    conn_closes: usize,
    opened: usize,
    refused_client: usize,
    refused_server: usize,
    accepted: usize,
    late_accepts: usize,
    sends_ok: usize,
    sends_failed: usize,
    bytes_sent: usize,
    msgs_received: usize,
    bytes_verified: usize,
    ends: usize,
    wakes: usize,
    bursts: usize,
    chaos: usize,
    terminal_ops: usize,
    drops: usize,
    /// Drops of a server's flow-controlled stream after its CloseSend that
    /// sent the client a Close.
    drop_closes: usize,
    too_large: usize,
    close_lag: usize,
    raw_writer_errors: usize,
    /// Epochs by flow-control mode (off, auto, fork).
    fc_epochs: [usize; 3],
    overflows: usize,
    overflow_races: usize,
    burst_overflows: usize,
    forced: usize,
    made_room: usize,
    held_lag: usize,
    queued_held: usize,
    queued_cancels: usize,
    /// Flow control: sends that overdraw the credit, sends put off for
    /// lack of credit, burst directions that need grants to complete.
    overdrafts: usize,
    credit_short: usize,
    burst_grants: usize,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.ops += o.ops;
        self.epochs += o.epochs;
        self.conn_closes += o.conn_closes;
        self.opened += o.opened;
        self.refused_client += o.refused_client;
        self.refused_server += o.refused_server;
        self.accepted += o.accepted;
        self.late_accepts += o.late_accepts;
        self.sends_ok += o.sends_ok;
        self.sends_failed += o.sends_failed;
        self.bytes_sent += o.bytes_sent;
        self.msgs_received += o.msgs_received;
        self.bytes_verified += o.bytes_verified;
        self.ends += o.ends;
        self.wakes += o.wakes;
        self.bursts += o.bursts;
        self.chaos += o.chaos;
        self.terminal_ops += o.terminal_ops;
        self.drops += o.drops;
        self.drop_closes += o.drop_closes;
        self.too_large += o.too_large;
        self.close_lag += o.close_lag;
        self.raw_writer_errors += o.raw_writer_errors;
        for (a, b) in self.fc_epochs.iter_mut().zip(o.fc_epochs) {
            *a += b;
        }
        self.overflows += o.overflows;
        self.overflow_races += o.overflow_races;
        self.burst_overflows += o.burst_overflows;
        self.forced += o.forced;
        self.made_room += o.made_room;
        self.held_lag += o.held_lag;
        self.queued_held += o.queued_held;
        self.queued_cancels += o.queued_cancels;
        self.overdrafts += o.overdrafts;
        self.credit_short += o.credit_short;
        self.burst_grants += o.burst_grants;
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seeds={} ops={} connections={} conn-ends={} streams={} refused(client/server)={}/{} \
             accepted={} late-accepts={} sends ok/failed={}/{} sent={:.1}MiB received={} \
             verified={:.1}MiB ends={} wakes={} bursts={} chaos={} terminal-ops={} drops={} \
             drop-closes={} too-large={} close-lag={} raw-writer-errors={} \
             fc(off/auto/fork)={:?} overflows={} (races {}) burst-overflows={} forced={} \
             made-room={} held-lag={} queued-held={} queued-cancels={} overdrafts={} \
             credit-short={} \
             burst-grants={}",
            self.seeds,
            self.ops,
            self.epochs,
            self.conn_closes,
            self.opened,
            self.refused_client,
            self.refused_server,
            self.accepted,
            self.late_accepts,
            self.sends_ok,
            self.sends_failed,
            self.bytes_sent as f64 / (1 << 20) as f64,
            self.msgs_received,
            self.bytes_verified as f64 / (1 << 20) as f64,
            self.ends,
            self.wakes,
            self.bursts,
            self.chaos,
            self.terminal_ops,
            self.drops,
            self.drop_closes,
            self.too_large,
            self.close_lag,
            self.raw_writer_errors,
            self.fc_epochs,
            self.overflows,
            self.overflow_races,
            self.burst_overflows,
            self.forced,
            self.made_room,
            self.held_lag,
            self.queued_held,
            self.queued_cancels,
            self.overdrafts,
            self.credit_short,
            self.burst_grants,
        )
    }
}

/// Spawns `fut` as a task and returns once it has been polled (and
/// waits): whatever it waits for wakes it.
async fn armed<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> R<tokio::task::JoinHandle<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut fut = Box::pin(fut);
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        poll_fn(|cx| {
            let poll = fut.as_mut().poll(cx);
            if let Some(tx) = tx.take() {
                let _ = tx.send(poll.is_pending());
            }
            poll
        })
        .await
    });
    let pending = within("a task's first poll", rx)
        .await?
        .map_err(|_| "task ended without polling".to_string())?;
    if !pending {
        return Err("internal: the awaited event had already happened".into());
    }
    Ok(task)
}

/// What a burst's receiving task saw.
#[derive(Debug)]
struct RecvReport {
    got: usize,
    bytes: usize,
    end: Option<Result<(), StreamError>>,
    bad: Option<String>,
}

// -------------------------------------------------------------- driver ----

/// The former deviations (described in the crate docs), and whether each
/// fails the run (by default, all) or is tolerated and counted in the
/// statistics: `DRPC_SOAK_STRICT=0` tolerates all; a comma separated list
/// of `late-accept`, `raw-writer-error`, `refusal-race` (which stops
/// avoiding the race instead: a refusal the model did not predict then
/// fails the run somewhere), `queued-held` and `queued-cancel` (not fixed
/// yet) tolerates all but those; `1` (or `all`) none.
#[derive(Debug, Clone, Copy, Default)]
struct Strict {
    late_accept: bool,
    raw_writer_error: bool,
    refusal_race: bool,
    queued_held: bool,
    queued_cancel: bool,
}

impl Strict {
    fn from_env() -> Strict {
        let all = Strict {
            late_accept: true,
            raw_writer_error: true,
            refusal_race: true,
            queued_held: true,
            queued_cancel: true,
        };
        // Strict unless told otherwise: the deviations below are bugs, all
        // fixed since but `queued-cancel`; `DRPC_SOAK_STRICT=0` tolerates
        // them.
        let Ok(value) = std::env::var("DRPC_SOAK_STRICT") else {
            return all;
        };
        let mut strict = Strict::default();
        for item in value.split(',').map(str::trim) {
            match item {
                "" | "0" => {}
                "1" | "all" => strict = all,
                "late-accept" => strict.late_accept = true,
                "raw-writer-error" => strict.raw_writer_error = true,
                "refusal-race" => strict.refusal_race = true,
                "queued-held" => strict.queued_held = true,
                "queued-cancel" => strict.queued_cancel = true,
                other => panic!("DRPC_SOAK_STRICT: unknown item {other:?}"),
            }
        }
        strict
    }
}

struct Soak {
    /// Which known, tolerated deviations fail the run instead of being
    /// counted (`DRPC_SOAK_STRICT`).
    strict: Strict,
    rng: Rng,
    stats: Stats,
    log: VecDeque<String>,
    conn: Conn,
}

impl Soak {
    fn new(seed: u64) -> Soak {
        let mut rng = Rng(seed);
        let cfg = EpochCfg::random(&mut rng);
        let mut soak = Soak {
            strict: Strict::from_env(),
            rng,
            stats: Stats {
                seeds: 1,
                epochs: 1,
                ..Stats::default()
            },
            log: VecDeque::new(),
            conn: Conn::new(cfg.clone()),
        };
        soak.stats.fc_epochs[cfg.fc as usize] += 1;
        soak.note(format!("connection 1: {cfg:?}"));
        soak
    }

    fn note(&mut self, line: String) {
        static LINES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let lines =
            *LINES.get_or_init(|| env_u64("DRPC_SOAK_LOG").map_or(LOG_LINES, |n| n as usize));
        if lines == usize::MAX {
            // `DRPC_SOAK_LOG=18446744073709551615`: everything, as it goes.
            println!("{line}");
            return;
        }
        if self.log.len() >= lines {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    fn fail<T>(&self, id: u64, what: String) -> R<T> {
        Err(format!("{what}\n  model: {}", self.conn.st(id).describe()))
    }

    fn random_len(&mut self) -> usize {
        match self.rng.below(20) {
            0 => 0,
            1..=9 => self.rng.range(1, 4096),
            10..=18 => self.rng.range(0, 256 << 10),
            _ => self.rng.range(256 << 10, 1 << 20),
        }
    }

    fn pick_side(&mut self, pred: impl Fn(&Conn, u64, usize) -> bool) -> Option<(u64, usize)> {
        let sides = self.conn.sides(pred);
        (!sides.is_empty()).then(|| self.rng.pick(&sides))
    }

    async fn run(&mut self, ops: usize) -> R<()> {
        while self.stats.ops < ops {
            let op = self.choose();
            self.stats.ops += 1;
            let n = self.stats.ops;
            self.note(format!("#{n} {op:?}"));
            let cfg = self.conn.cfg.clone();
            self.exec(op)
                .await
                .map_err(|e| format!("op #{n} ({op:?}) on {cfg:?}: {e}"))?;
            if self.conn.closed_by.is_none() {
                let cfg = self.conn.cfg.clone();
                self.check_registries()
                    .map_err(|e| format!("after op #{n} ({op:?}) on {cfg:?}: {e}"))?;
            }
            self.prune();
        }
        self.finish_connection()
            .await
            .map_err(|e| format!("final shutdown: {e}"))
    }

    fn choose(&mut self) -> Op {
        let c = &self.conn;
        let open = c.closed_by.is_none();
        let present = !c.sides(|_, _, _| true).is_empty();
        let safe = !c.sides(|c, id, l| c.recv_safe(id, l)).is_empty();
        let unsafe_ = !c.sides(|c, id, l| !c.recv_safe(id, l)).is_empty();
        let dirs = !c.open_directions().is_empty();
        let live = c.live();
        let can_open = open
            && live < MAX_LIVE_STREAMS
            && c.pending.len() < c.cfg.backlog
            && !c.forced_in_flight();
        let w = |cond: bool, weight: u64| if cond { weight } else { 0 };
        let table = [
            (Op::Open, w(can_open, 80)),
            (Op::Unary, w(can_open, 30)),
            (Op::Accept, w(!c.pending.is_empty(), 80)),
            (Op::Send, w(present, 300)),
            (Op::Recv, w(safe, 220)),
            (Op::Wake, w(unsafe_, 60)),
            (Op::CloseSend, w(present, 50)),
            (Op::Close, w(present, 30)),
            (Op::SendError, w(present, 30)),
            (Op::Cancel, w(present, 30)),
            (Op::Drop, w(present, 50)),
            (Op::Burst, w(dirs, 40)),
            (Op::Chaos, w(dirs, 8)),
            (Op::ConnClose, w(live > 0, 6)),
            (Op::Reconnect, w(live > 0, 3)),
        ];
        let total: u64 = table.iter().map(|(_, w)| w).sum();
        let mut x = self.rng.below(total);
        for (op, weight) in table {
            if x < weight {
                return op;
            }
            x -= weight;
        }
        unreachable!("weights cover the range")
    }

    async fn exec(&mut self, op: Op) -> R<()> {
        match op {
            Op::Open => self.op_open(false).await,
            Op::Unary => self.op_open(true).await,
            Op::Accept => self.op_accept().await,
            Op::Send => self.op_send().await,
            Op::Recv => {
                let Some((id, l)) = self.pick_side(|c, id, l| c.recv_safe(id, l)) else {
                    return Ok(());
                };
                self.do_recv(id, l).await
            }
            Op::Wake => self.op_wake().await,
            Op::CloseSend | Op::Close | Op::SendError | Op::Cancel => {
                // A CloseSend mostly on a side that can still send.
                let healthy = op == Op::CloseSend && !self.rng.one_in(4);
                let Some((id, l)) = self
                    .pick_side(|c, id, l| {
                        let me = &c.st(id).side[l];
                        !healthy || !(me.send_ended() || me.send_failed || c.st(id).gone())
                    })
                    .or_else(|| self.pick_side(|_, _, _| true))
                else {
                    return Ok(());
                };
                if l == SERVER {
                    self.settle_invokes().await?;
                }
                let term = match op {
                    Op::CloseSend => Term::CloseSend,
                    Op::Close => Term::Close,
                    Op::SendError => Term::SendError(self.rng.range(1, 1000) as u64),
                    _ => Term::Cancel(if self.rng.one_in(3) {
                        CancelReason::Deadline
                    } else {
                        CancelReason::Canceled
                    }),
                };
                self.do_term(id, l, term)?;
                // Sometimes a server handler that half-closes and returns.
                if l == SERVER && matches!(term, Term::CloseSend) && self.rng.one_in(2) {
                    self.do_drop(id, l)?;
                }
                Ok(())
            }
            Op::Drop => {
                // Often a server handler that half-closed and lets go,
                // while the client may still send.
                let done = self.rng.one_in(3);
                let Some((id, l)) = done
                    .then(|| {
                        self.pick_side(|c, id, l| {
                            let st = c.st(id);
                            l == SERVER && st.side[SERVER].close_send && !st.side[CLIENT].close_send
                        })
                    })
                    .flatten()
                    .or_else(|| self.pick_side(|_, _, _| true))
                else {
                    return Ok(());
                };
                if l == SERVER {
                    self.settle_invokes().await?;
                }
                self.do_drop(id, l)
            }
            Op::Burst => self.op_burst(false).await,
            Op::Chaos => self.op_burst(true).await,
            Op::ConnClose => {
                let mode = self.random_close_mode();
                self.close_connection(mode, false).await?;
                self.after_connection_closed().await
            }
            Op::Reconnect => self.finish_connection().await,
        }
    }

    fn random_close_mode(&mut self) -> CloseMode {
        let l = if self.rng.one_in(2) { CLIENT } else { SERVER };
        match self.rng.below(4) {
            0 => CloseMode::Drop(l),
            1 => CloseMode::Graceful(l),
            _ => CloseMode::Close(l),
        }
    }

    /// Removes streams nobody holds any more.
    fn prune(&mut self) {
        self.conn.streams.retain(|_, st| {
            let client_done = st.side[CLIENT].dropped;
            let server_done = st.refused || st.side[SERVER].dropped;
            !(client_done && server_done)
        });
    }

    /// Checks `active_streams()` of both managers, the streams registered
    /// and not terminated: a stream counts exactly until it terminates (it
    /// leaves the count under its own lock, before anyone can see it
    /// terminated). Its streams read just before and just after the count
    /// bound it, with the model: a held stream that reported its
    /// termination before never counts, one that still runs after always
    /// does, and one the model says nothing could have ended must run.
    fn check_registries(&mut self) -> R<()> {
        for l in [CLIENT, SERVER] {
            let m = self.conn.mgr(l)?;
            let ended = self.conn.held_sides(l, true);
            let active = m.active_streams();
            let running = self.conn.held_sides(l, false);
            let (model, (certain, possible)) = if l == CLIENT {
                (self.conn.client_certain(), self.conn.client_bounds(&ended))
            } else {
                (self.conn.server_certain(), self.conn.server_bounds(&ended))
            };
            if let Some(id) = model.iter().find(|id| ended.contains(id)) {
                return self.fail(
                    *id,
                    format!(
                        "the {} stream terminated, although nothing the model knows could end it",
                        SIDE_NAMES[l]
                    ),
                );
            }
            if active < certain.max(running.len()) || active > possible {
                return Err(format!(
                    "{} active_streams() = {active}: the model says {certain}..={possible} \
                     (streams seen terminated just before: {ended:?}), and {} streams still ran \
                     just after ({running:?})\n{}",
                    SIDE_NAMES[l],
                    running.len(),
                    self.describe_all()
                ));
            }
        }
        Ok(())
    }

    fn raw_writer_error(&mut self, what: String) -> R<()> {
        self.stats.raw_writer_errors += 1;
        self.note(format!("  RAW WRITER ERROR: {what}"));
        if self.strict.raw_writer_error {
            return Err(format!("raw writer error (DRPC_SOAK_STRICT): {what}"));
        }
        Ok(())
    }

    fn describe_all(&self) -> String {
        let mut s = String::new();
        for st in self.conn.streams.values() {
            s.push_str("  ");
            s.push_str(&st.describe());
            s.push('\n');
        }
        s
    }

    // ---- open / accept ----

    /// Opens a stream with `open_stream`, or with `open_unary` (Invoke,
    /// one message and CloseSend in one step) when `unary`. The client
    /// refuses exactly when its running streams (registered and not
    /// terminated) reach its limit: never while the model and the streams
    /// seen terminated just before leave room, always while the model or
    /// the streams seen running just after fill it.
    async fn op_open(&mut self, unary: bool) -> R<()> {
        let server_count = self.conn.server_registered_at_next_invoke();
        let server_refuses = server_count >= self.conn.cfg.server_limit;
        let ended = self.conn.held_sides(CLIENT, true);
        let (certain, possible) = self.conn.client_bounds(&ended);
        let limit = self.conn.cfg.client_limit;
        let max_packet = self.conn.cfg.max_packet;
        let rpc = if self.rng.one_in(8) {
            format!("/soak.Soak/{}", "x".repeat(self.rng.range(100, 3000)))
        } else {
            format!("/soak.Soak/Method{}", self.rng.below(100))
        };
        let mut metadata = Metadata::new();
        if self.rng.one_in(3) {
            for i in 0..self.rng.range(1, 4) {
                let len = self.rng.range(0, 300);
                metadata.insert(format!("key-{i}"), "v".repeat(len));
            }
        }
        let client = self.conn.mgr(CLIENT)?;
        let (opened, request) = if unary {
            let len = self.random_len();
            if self.conn.pending_bytes() + len > self.conn.cfg.pending_cap() {
                return Ok(());
            }
            let msg = Msg {
                tag: self.rng.next(),
                len,
            };
            let data = Bytes::from(payload(msg.tag, len));
            let opened = if self.rng.one_in(2) {
                within("open_unary", client.open_unary(&rpc, &metadata, data)).await?
            } else {
                // The same request through a `MessageBuf`: copied, or its
                // tail shared by reference when large.
                let mut buf = drpc_stream::MessageBuf::new();
                let cut = self.rng.range(0, len.min(64));
                bytes::BufMut::put_slice(&mut buf, &data[..cut]);
                bytes::BufMut::put(&mut buf, data.slice(cut..));
                let opened = client.open_unary_encoded(&rpc, &metadata, &mut buf);
                let opened = within("open_unary_encoded", opened).await?;
                if !buf.is_empty() {
                    return Err("open_unary_encoded left its buffer full".into());
                }
                opened
            };
            (opened, Some(msg))
        } else {
            let opened = within("open_stream", client.open_stream(&rpc, &metadata)).await?;
            (opened, None)
        };
        let running = self.conn.held_sides(CLIENT, false).len();
        let what = if unary { "open_unary" } else { "open_stream" };
        match opened {
            Ok(stream) => {
                let id = stream.id();
                if certain.max(running) >= limit {
                    return Err(format!(
                        "{what} succeeded (stream {id}) although {certain} client streams are \
                         certainly running, and {running} still ran after it (limit {limit})"
                    ));
                }
                if request.is_some_and(|m| m.len > max_packet) {
                    return Err(format!(
                        "open_unary of a message over the {max_packet}-byte limit succeeded"
                    ));
                }
                // Ids are allocated one by one, refusals included.
                if id != self.conn.last_id + 1 || stream.kind() != StreamKind::Client {
                    return Err(format!(
                        "{what} gave stream {id} ({:?}) after {}",
                        stream.kind(),
                        self.conn.last_id
                    ));
                }
                self.conn.last_id = id;
                let stream = Arc::new(stream);
                if server_refuses {
                    // The server's own operations could end one of its
                    // streams before this Invoke reaches it: wait for the
                    // refusal before anything else happens.
                    let what = format!("the server's refusal of stream {id}");
                    within(what, stream.terminated()).await?;
                }
                let mut st = StreamModel {
                    id,
                    rpc,
                    metadata,
                    side: Default::default(),
                    refused: server_refuses,
                    unary,
                    ended: false,
                    confirmed: false,
                };
                let client_side = &mut st.side[CLIENT];
                client_side.stream = Some(stream);
                client_side.accepted = true;
                if let Some(msg) = request {
                    client_side.sent.push(msg);
                    client_side.sent_bytes += msg.len;
                    client_side.close_send = true;
                    self.stats.sends_ok += 1;
                    self.stats.bytes_sent += msg.len;
                }
                self.conn.streams.insert(id, st);
                self.stats.opened += 1;
                if server_refuses {
                    self.stats.refused_server += 1;
                } else {
                    self.conn.pending.push_back(id);
                }
                self.note(format!(
                    "  {what} {id}{}{}",
                    request.map_or(String::new(), |m| format!(" with {} bytes", m.len)),
                    if server_refuses {
                        " (server will refuse)"
                    } else {
                        ""
                    }
                ));
                Ok(())
            }
            Err(e) => match e.kind() {
                StreamErrorKind::Refused { limit: l } if *l == limit && possible >= limit => {
                    if e.stream_id() != self.conn.last_id + 1 {
                        return Err(format!(
                            "refused stream {} after {}",
                            e.stream_id(),
                            self.conn.last_id
                        ));
                    }
                    self.conn.last_id = e.stream_id();
                    self.stats.refused_client += 1;
                    self.note(format!("  client refused {}", e.stream_id()));
                    Ok(())
                }
                // Refused before an id is spent.
                StreamErrorKind::MessageTooLarge { size, limit: l }
                    if request.is_some_and(|m| m.len == *size && m.len > max_packet)
                        && *l == max_packet
                        && e.stream_id() == 0 =>
                {
                    self.stats.too_large += 1;
                    self.note(format!("  {what}: {e:?}"));
                    Ok(())
                }
                _ => Err(format!(
                    "{what} failed: {e:?} (client streams running: certainly {certain}, \
                     possibly {possible} (seen terminated before: {ended:?}), limit {limit})"
                )),
            },
        }
    }

    async fn op_accept(&mut self) -> R<()> {
        let Some(&id) = self.conn.pending.front() else {
            return Ok(());
        };
        let server = self.conn.mgr(SERVER)?;
        let incoming = within("accept", server.accept())
            .await?
            .map_err(|e| format!("accept failed: {e:?} (expected stream {id})"))?;
        self.conn.pending.pop_front();
        let got = incoming.stream.id();
        let st = self.conn.st(id);
        if got != id
            || incoming.rpc != st.rpc
            || incoming.metadata != st.metadata
            || incoming.stream.kind() != StreamKind::Server
        {
            return self.fail(
                id,
                format!(
                    "accept gave stream {got} (rpc of {} bytes, {} metadata pairs), expected \
                     stream {id} (rpc of {} bytes, {} pairs); same rpc: {}, same metadata: {}",
                    incoming.rpc.len(),
                    incoming.metadata.len(),
                    st.rpc.len(),
                    st.metadata.len(),
                    incoming.rpc == st.rpc,
                    incoming.metadata == st.metadata
                ),
            );
        }
        let side = &mut self.conn.st_mut(id).side[SERVER];
        side.stream = Some(Arc::new(incoming.stream));
        side.accepted = true;
        self.stats.accepted += 1;
        self.note(format!("  accepted {id}"));
        Ok(())
    }

    /// With a small server stream limit, makes sure the server has
    /// processed every Invoke sent so far (by accepting them) before the
    /// server's side ends a stream, so that the model knows which streams
    /// the server counts when each Invoke arrives.
    ///
    /// A server stream ended by the application is removed from the
    /// registry by a hook that runs after the stream's lock is released
    /// (and after its waiters are woken): an Invoke processed by the reader
    /// in that window is refused although the model, and a client that saw
    /// the stream end, expect room. `DRPC_SOAK_STRICT=refusal-race` skips
    /// this step to expose the race.
    async fn settle_invokes(&mut self) -> R<()> {
        if self.strict.refusal_race
            || self.conn.closed_by.is_some()
            || self.conn.cfg.server_limit >= MAX_LIVE_STREAMS
        {
            return Ok(());
        }
        while !self.conn.pending.is_empty() {
            self.op_accept().await?;
        }
        Ok(())
    }

    // ---- send / recv ----

    async fn op_send(&mut self) -> R<()> {
        // Mostly on sides that can still send.
        let healthy = !self.rng.one_in(8);
        let Some((id, l)) = self
            .pick_side(|c, id, l| {
                let me = &c.st(id).side[l];
                !healthy || !(me.send_ended() || me.send_failed || c.st(id).gone())
            })
            .or_else(|| self.pick_side(|_, _, _| true))
        else {
            return Ok(());
        };
        let len = self.random_len();
        let fate = self.conn.send_fate(id, l, len);
        if self.conn.regime(self.conn.st(id), l) != Regime::Off && !self.conn.st(id).gone() {
            let first = EpochCfg::first_frame(len);
            match (fate, self.conn.balance(id, l)) {
                (Fate::Send, b) if b < len as i64 => self.stats.overdrafts += 1,
                (Fate::MakeRoom, b) if b < first => self.stats.credit_short += 1,
                _ => {}
            }
        }
        match fate {
            Fate::Send => self.do_send(id, l, len).await,
            Fate::Forced => {
                self.stats.forced += 1;
                let at = self.conn.st(id).side[l].sent.len();
                self.do_send(id, l, len).await?;
                if l == SERVER {
                    self.conn.st_mut(id).side[CLIENT].forced_until = at + 1;
                }
                Ok(())
            }
            // Not always: a stream that overflows is over.
            Fate::Overflow if self.rng.one_in(2) && self.conn.present(id, 1 - l) => {
                self.send_overflow(id, l, len).await
            }
            Fate::Overflow | Fate::MakeRoom => self.make_room(id, 1 - l).await,
        }
    }

    /// Lets side `r` of a stream receive what is sent to it, to make room
    /// in its queue, credit for its peer, or room in the connection's
    /// budget: it receives (once accepted), or another side that has
    /// messages waiting does.
    async fn make_room(&mut self, id: u64, r: usize) -> R<()> {
        self.stats.made_room += 1;
        if self.conn.present(id, r) && self.conn.deliverable(id, r) > 0 {
            return self.do_recv(id, r).await;
        }
        if !self.conn.present(id, r) && !self.conn.pending.is_empty() {
            return self.op_accept().await;
        }
        if let Some((id, r)) = self.pick_side(|c, id, r| c.deliverable(id, r) > 0) {
            return self.do_recv(id, r).await;
        }
        if !self.conn.pending.is_empty() {
            return self.op_accept().await;
        }
        Ok(())
    }

    /// Sends a message that overflows the receive queue of side `1 - l`,
    /// which shares its connection: that side fails with `QueueOverflow`
    /// after the messages it had queued, and sends side `l` an abortive
    /// Error, which ends it too. Sometimes an operation on either side
    /// races the overflow: on the sender, against the Error (whichever
    /// comes first ends its stream: the peer's Error may find it ended);
    /// on the receiver, against the message (a terminal operation that
    /// comes first ends the stream, and the message is dropped without an
    /// overflow).
    async fn send_overflow(&mut self, id: u64, l: usize, len: usize) -> R<()> {
        let r = 1 - l;
        let at = self.conn.st(id).side[l].sent.len();
        self.note(format!(
            "  overflow of stream {id} {} after {} messages",
            SIDE_NAMES[r],
            at - self.conn.st(id).side[r].received
        ));
        // Wait from before the ends happen: each must wake its waiter (a
        // lost wake-up is a hang).
        let mut waiters = Vec::new();
        for side in [l, r] {
            let s = self.conn.stream(id, side);
            waiters.push((side, armed(async move { s.terminated().await }).await?));
        }
        self.do_send(id, l, len).await?;
        if self.conn.st(id).side[l].sent.len() != at + 1 {
            return self.fail(id, "a send that overflows its peer's queue failed".into());
        }
        let term = match self.rng.below(4) {
            0 => Term::CloseSend,
            1 => Term::Close,
            2 => Term::SendError(self.rng.range(1, 1000) as u64),
            _ => Term::Cancel(CancelReason::Canceled),
        };
        let overflowed = match self.rng.below(4) {
            0 => {
                // The sender's operation races the Error; the overflow
                // happens whatever its outcome (its packet follows the
                // message).
                self.stats.overflow_races += 1;
                self.do_term(id, l, term)?;
                true
            }
            1 => {
                // The receiver's operation races the message: a terminal
                // one that found the stream running came first.
                self.stats.overflow_races += 1;
                let recorded = self.do_term_recorded(id, r, term)?;
                !recorded || matches!(term, Term::CloseSend)
            }
            _ => true,
        };
        self.note(format!("  overflowed: {overflowed}"));
        // Both sides end without further operations.
        for (side, waiter) in waiters {
            let what = format!(
                "stream {id} {} terminated() after overflow",
                SIDE_NAMES[side]
            );
            within(what, waiter)
                .await?
                .map_err(|e| format!("terminated() task: {e}"))?;
        }
        let st = self.conn.st_mut(id);
        st.ended = true;
        if overflowed {
            self.stats.overflows += 1;
            st.side[r].overflow = true;
            st.side[r].overflow_at = Some(at);
        }
        Ok(())
    }

    async fn do_send(&mut self, id: u64, l: usize, len: usize) -> R<()> {
        let tag = self.rng.next();
        let data = payload(tag, len);
        let s = self.conn.stream(id, l);
        let shared = self.rng.one_in(2);
        let what = format!(
            "{}({len}) on stream {id} {}",
            if shared { "send_bytes" } else { "send" },
            SIDE_NAMES[l]
        );
        let result = if shared {
            within(&what, s.send_bytes(Bytes::from(data))).await?
        } else {
            within(&what, s.send(&data)).await?
        };
        drop(s);
        self.note(format!("  {what}: {result:?}"));
        self.on_send(id, l, Msg { tag, len }, result)
    }

    fn on_send(&mut self, id: u64, l: usize, msg: Msg, result: Result<(), StreamError>) -> R<()> {
        self.judge_send(id, l, msg, result, false)
    }

    /// Judges a send; `racing`: it may have run before operations the model
    /// recorded since (the end of a chaos burst), so a success proves
    /// nothing wrong.
    fn judge_send(
        &mut self,
        id: u64,
        l: usize,
        msg: Msg,
        result: Result<(), StreamError>,
        racing: bool,
    ) -> R<()> {
        let max = self.conn.cfg.max_packet;
        if msg.len > max {
            // Refused locally, whatever the stream's state; it goes on.
            return match &result {
                Err(e)
                    if e.stream_id() == id
                        && matches!(e.kind(), StreamErrorKind::MessageTooLarge { size, limit }
                            if *size == msg.len && *limit == max) =>
                {
                    self.stats.too_large += 1;
                    Ok(())
                }
                _ => self.fail(
                    id,
                    format!(
                        "send of {} bytes (limit {max}) returned {result:?}",
                        msg.len
                    ),
                ),
            };
        }
        let closer = self.conn.closed_by;
        let st = self.conn.st(id);
        let me = &st.side[l];
        match result {
            Ok(()) => {
                // (A send racing the end of the connection may succeed;
                // sends after it are checked by `drain_terminated`.)
                if !racing && (me.send_ended() || me.send_failed || st.gone()) {
                    return self.fail(id, format!("send on {} succeeded", SIDE_NAMES[l]));
                }
                let me = &mut self.conn.st_mut(id).side[l];
                me.sent.push(msg);
                me.sent_bytes += msg.len;
                self.stats.sends_ok += 1;
                self.stats.bytes_sent += msg.len;
            }
            Err(e) => {
                let raw = !judge_send_error(st, l, closer, e.kind())
                    && raw_writer_error(l, closer, e.kind());
                if e.stream_id() != id || !(raw || judge_send_error(st, l, closer, e.kind())) {
                    return self.fail(
                        id,
                        format!("send on {} failed with {e:?} ({e})", SIDE_NAMES[l]),
                    );
                }
                if raw {
                    self.raw_writer_error(format!("send on stream {id} {}: {e:?}", SIDE_NAMES[l]))?;
                }
                self.conn.st_mut(id).side[l].send_failed = true;
                self.stats.sends_failed += 1;
            }
        }
        Ok(())
    }

    async fn do_recv(&mut self, id: u64, l: usize) -> R<()> {
        let s = self.conn.stream(id, l);
        let what = format!("recv on stream {id} {}", SIDE_NAMES[l]);
        let result = within(&what, s.recv()).await?;
        drop(s);
        self.note(format!("  {what}: {}", show_recv(&result)));
        self.on_recv(id, l, result)
    }

    fn on_recv(&mut self, id: u64, l: usize, result: Result<Option<Bytes>, StreamError>) -> R<()> {
        let closer = self.conn.closed_by;
        let end: End = match result {
            Ok(Some(data)) => return self.on_message(id, l, &data),
            Ok(None) => Ok(()),
            Err(e) => {
                if e.stream_id() != id {
                    return self.fail(
                        id,
                        format!("error of stream {} on stream {id}", e.stream_id()),
                    );
                }
                Err(e.into_kind())
            }
        };
        let key = end_key(&end);
        let st = self.conn.st(id);
        let (me, peer) = (&st.side[l], &st.side[1 - l]);
        if let Some(prev) = &me.end {
            if *prev != key {
                return self.fail(
                    id,
                    format!(
                        "{} receive ended with {prev}, now with {key}",
                        SIDE_NAMES[l]
                    ),
                );
            }
            return Ok(());
        }
        let (allowed, complete) = judge_end(st, l, closer, self.conn.flushed, &self.conn.cfg, &end);
        // The known deviation `queued-cancel`: a stream the server never
        // handed out, canceled as the server's connection ends.
        let queued_cancel = !allowed
            && l == CLIENT
            && closer == Some(SERVER)
            && !st.refused
            && !st.side[SERVER].accepted
            && matches!(end, Err(StreamErrorKind::Canceled(Initiator::Remote)));
        if queued_cancel {
            self.stats.queued_cancels += 1;
            let what = format!(
                "client stream {id}, queued for accept when the server ended the connection, \
                 ended with {key} (a Cancel from the server) instead of the connection's end"
            );
            self.note(format!("  QUEUED CANCEL: {what}"));
            if self.strict.queued_cancel {
                return self.fail(id, format!("{what} (DRPC_SOAK_STRICT)"));
            }
            self.conn.st_mut(id).side[l].end = Some(key);
            self.stats.ends += 1;
            return Ok(());
        }
        if !allowed {
            return self.fail(
                id,
                format!(
                    "{} receive ended with {key}, which nothing caused (connection closed by {:?})",
                    SIDE_NAMES[l],
                    closer.map(|c| SIDE_NAMES[c])
                ),
            );
        }
        if complete && me.received != peer.sent.len() {
            return self.fail(
                id,
                format!(
                    "{} receive ended with {key} after {} of the {} messages the peer sent",
                    SIDE_NAMES[l],
                    me.received,
                    peer.sent.len()
                ),
            );
        }
        self.conn.st_mut(id).side[l].end = Some(key);
        self.stats.ends += 1;
        Ok(())
    }

    fn on_message(&mut self, id: u64, l: usize, data: &[u8]) -> R<()> {
        let st = self.conn.st(id);
        let (me, peer) = (&st.side[l], &st.side[1 - l]);
        if let Some(end) = &me.end {
            return self.fail(
                id,
                format!("{} received a message after its end {end}", SIDE_NAMES[l]),
            );
        }
        // A local close, cancel or send_error discards what was queued,
        // unless it was a no-op because something else had already ended
        // the stream (the peer, the connection, a refusal).
        let closed = self.conn.closed_by.is_some();
        if me.discard() && !(peer.end_op() || st.refused || closed) {
            return self.fail(
                id,
                format!(
                    "{} received a message after its own close, cancel or send_error",
                    SIDE_NAMES[l]
                ),
            );
        }
        if me.overflow && me.overflow_at.is_some_and(|at| me.received >= at) {
            return self.fail(
                id,
                format!(
                    "{} received a message ({} bytes) its queue overflowed on, or a later one",
                    SIDE_NAMES[l],
                    data.len()
                ),
            );
        }
        let Some(&msg) = peer.sent.get(me.received) else {
            return self.fail(
                id,
                format!(
                    "{} received a message ({} bytes) the peer never sent",
                    SIDE_NAMES[l],
                    data.len()
                ),
            );
        };
        if data.len() != msg.len || !payload_matches(msg.tag, data) {
            return self.fail(
                id,
                format!(
                    "{} message #{} corrupt or out of order: {} bytes, expected {} bytes tag {:#x}",
                    SIDE_NAMES[l],
                    me.received,
                    data.len(),
                    msg.len,
                    msg.tag
                ),
            );
        }
        self.consumed(id, l, msg.len);
        self.stats.msgs_received += 1;
        self.stats.bytes_verified += msg.len;
        Ok(())
    }

    /// Side `l` took the next of its peer's messages, of `len` bytes: a
    /// receiver with flow control grants consumed bytes back once they
    /// reach its threshold; a client that gets a server's message knows
    /// that the server's acceptance of flow control came first.
    fn consumed(&mut self, id: u64, l: usize, len: usize) {
        let flow = self.conn.regime(self.conn.st(id), 1 - l) != Regime::Off;
        let threshold = self.conn.cfg.threshold[l];
        let st = self.conn.st_mut(id);
        if l == CLIENT {
            st.confirmed = true;
        }
        let me = &mut st.side[l];
        me.received += 1;
        me.received_bytes += len;
        if flow {
            me.ungranted += len as u64;
            if me.ungranted >= threshold {
                me.granted += std::mem::take(&mut me.ungranted);
            }
        }
    }

    // ---- terminal operations and drops ----

    fn do_term(&mut self, id: u64, l: usize, term: Term) -> R<()> {
        self.do_term_recorded(id, l, term).map(drop)
    }

    /// As [`Soak::do_term`]; returns whether the stream was still running
    /// (the operation was recorded).
    fn do_term_recorded(&mut self, id: u64, l: usize, term: Term) -> R<bool> {
        let s = self.conn.stream(id, l);
        let was_terminated = s.is_terminated();
        let result = match term {
            Term::CloseSend => s.close_send(),
            Term::Close => s.close(),
            Term::SendError(code) => s.send_error(&CodedError::new(code, error_text(code))),
            Term::Cancel(reason) => {
                s.cancel(reason.kind());
                Ok(())
            }
        };
        let now_terminated = s.is_terminated();
        drop(s);
        self.note(format!(
            "  {term:?} on stream {id} {} (terminated before: {was_terminated}): {result:?}",
            SIDE_NAMES[l]
        ));
        self.stats.terminal_ops += 1;
        if let Err(e) = &result {
            let closer = self.conn.closed_by;
            let mapped = conn_kind_ok(l, closer, e.kind());
            if was_terminated || !(mapped || raw_writer_error(l, closer, e.kind())) {
                return self.fail(id, format!("{term:?} on {} failed: {e:?}", SIDE_NAMES[l]));
            }
            if !mapped {
                self.raw_writer_error(format!("{term:?} on stream {id} {}: {e:?}", SIDE_NAMES[l]))?;
            }
        }
        if !matches!(term, Term::CloseSend) && !now_terminated {
            return self.fail(
                id,
                format!("{term:?} left the {} side running", SIDE_NAMES[l]),
            );
        }
        if was_terminated {
            return Ok(false);
        }
        let me = &mut self.conn.st_mut(id).side[l];
        match term {
            Term::CloseSend => me.close_send = true,
            Term::Close => me.close = true,
            Term::SendError(code) => {
                me.send_error.get_or_insert(code);
            }
            Term::Cancel(reason) => {
                me.cancel.get_or_insert(reason);
            }
        }
        Ok(true)
    }

    /// Drops side `l` of a stream: a running stream is cancelled (a
    /// Cancel), unless it is a server's that sent its CloseSend, which
    /// lets go: with a Close when it is flow-controlled and the client may
    /// still send (the client had not half-closed; otherwise nothing
    /// observable follows), silently otherwise.
    fn do_drop(&mut self, id: u64, l: usize) -> R<()> {
        let st = self.conn.st(id);
        let flow = self.conn.server_flow_controlled(st);
        let client_close_send = st.side[CLIENT].close_send;
        let side = &mut self.conn.st_mut(id).side[l];
        let s = side.stream.take().expect("present");
        if Arc::strong_count(&s) != 1 {
            return Err(format!("internal: stream {id} still shared"));
        }
        let was_terminated = s.is_terminated();
        let may_cancel = !was_terminated && (l == CLIENT || !side.close_send);
        let close = !was_terminated && !may_cancel && flow && !client_close_send;
        drop(s);
        side.dropped = true;
        side.drop_may_cancel = may_cancel;
        side.drop_close = close;
        self.stats.drops += 1;
        self.stats.drop_closes += usize::from(close);
        self.note(format!(
            "  dropped stream {id} {} (terminated before: {was_terminated}){}",
            SIDE_NAMES[l],
            if close { ", Close sent" } else { "" }
        ));
        Ok(())
    }

    // ---- a receive woken by the peer or a local operation ----

    async fn op_wake(&mut self) -> R<()> {
        // Either side may end a stream below.
        self.settle_invokes().await?;
        let Some((id, l)) = self.pick_side(|c, id, l| !c.recv_safe(id, l)) else {
            return Ok(());
        };
        let p = 1 - l;
        let peer_present = self.conn.present(id, p);
        #[derive(Debug, Clone, Copy)]
        enum Act {
            PeerSend(usize),
            PeerTerm(Term),
            PeerDrop,
            LocalTerm(Term),
            Conn(CloseMode),
        }
        let act = match self.rng.below(if peer_present { 20 } else { 7 }) {
            0..=1 => Act::LocalTerm(Term::Close),
            2..=3 => Act::LocalTerm(Term::SendError(self.rng.range(1, 1000) as u64)),
            4..=5 => Act::LocalTerm(Term::Cancel(CancelReason::Canceled)),
            6 => Act::Conn(self.random_close_mode()),
            7..=11 => Act::PeerSend(self.random_len().min(self.conn.cfg.max_packet)),
            12..=13 => Act::PeerTerm(Term::CloseSend),
            14 => Act::PeerTerm(Term::Close),
            15 => Act::PeerTerm(Term::SendError(self.rng.range(1, 1000) as u64)),
            16..=17 => Act::PeerTerm(Term::Cancel(if self.rng.one_in(2) {
                CancelReason::Deadline
            } else {
                CancelReason::Canceled
            })),
            _ => Act::PeerDrop,
        };
        let act = match act {
            Act::PeerSend(len) => {
                // Within the budget, and (the queue being empty, the credit
                // at least a frame) never waiting.
                let room = self.conn.cfg.pending_cap()
                    - self.conn.pending_bytes().min(self.conn.cfg.pending_cap());
                let len = len.min(room);
                match self.conn.send_fate(id, p, len) {
                    Fate::Send => Act::PeerSend(len),
                    fate => {
                        self.note(format!("  (send of {len} bytes: {fate:?})"));
                        Act::PeerTerm(Term::CloseSend)
                    }
                }
            }
            act => act,
        };
        self.note(format!("  wake stream {id} {} by {act:?}", SIDE_NAMES[l]));
        // The receive runs in its own task, which is polled again only when
        // woken: a lost wake-up is a hang.
        let s = self.conn.stream(id, l);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut recv = pin!(s.recv());
            poll_fn(|cx| {
                let poll = recv.as_mut().poll(cx);
                if let Some(tx) = tx.take() {
                    let _ = tx.send(poll.is_pending());
                }
                poll
            })
            .await
        });
        let pending = within("the receive's first poll", rx)
            .await?
            .map_err(|_| "receive task ended without polling".to_string())?;
        if !pending {
            let result = within("recv", task)
                .await?
                .map_err(|e| format!("recv task: {e}"))?;
            self.on_recv(id, l, result)?;
            return self.fail(id, format!("{} receive did not wait", SIDE_NAMES[l]));
        }
        let mut expected_msg = None;
        match act {
            Act::PeerSend(len) => {
                self.do_send(id, p, len).await?;
                expected_msg = Some(len);
            }
            Act::PeerTerm(t) => self.do_term(id, p, t)?,
            Act::PeerDrop => self.do_drop(id, p)?,
            Act::LocalTerm(t) => self.do_term(id, l, t)?,
            Act::Conn(mode) => self.close_connection(mode, false).await?,
        }
        let mut task = task;
        let result = match tokio::time::timeout(OP_TIMEOUT, &mut task).await {
            Ok(joined) => joined.map_err(|e| format!("recv task: {e}"))?,
            Err(_) => {
                task.abort();
                return self.fail(
                    id,
                    format!("HANG: {} receive not woken by {act:?}", SIDE_NAMES[l]),
                );
            }
        };
        self.stats.wakes += 1;
        self.note(format!("  woken: {}", show_recv(&result)));
        // Nothing else could end the receive: the outcome is exact.
        let exact = match (&act, &result) {
            (Act::PeerSend(_), Ok(Some(d))) => Some(d.len()) == expected_msg,
            (Act::PeerTerm(Term::CloseSend | Term::Close), Ok(None)) => true,
            (Act::PeerTerm(Term::SendError(c)), Err(e)) => e.code() == Some(*c),
            (Act::PeerTerm(Term::Cancel(_)) | Act::PeerDrop, Err(e)) => {
                matches!(e.kind(), StreamErrorKind::Canceled(Initiator::Remote))
            }
            (Act::LocalTerm(Term::Close), Err(e)) => {
                matches!(e.kind(), StreamErrorKind::TerminatedByClose)
            }
            (Act::LocalTerm(Term::SendError(_)), Err(e)) => {
                matches!(e.kind(), StreamErrorKind::TerminatedBySendError)
            }
            (Act::LocalTerm(Term::Cancel(_)), Err(e)) => {
                matches!(e.kind(), StreamErrorKind::Canceled(Initiator::Local))
            }
            (Act::Conn(_), _) => true,
            _ => false,
        };
        if !exact {
            return self.fail(
                id,
                format!(
                    "{} receive woken by {act:?} returned {}",
                    SIDE_NAMES[l],
                    show_recv(&result)
                ),
            );
        }
        self.on_recv(id, l, result)?;
        if matches!(act, Act::Conn(_)) {
            self.after_connection_closed().await?;
        }
        Ok(())
    }

    // ---- bursts: concurrent tasks on several streams ----

    async fn op_burst(&mut self, chaos: bool) -> R<()> {
        let mut dirs = self.conn.open_directions();
        if dirs.is_empty() {
            return Ok(());
        }
        let k = self.rng.range(1, 6.min(dirs.len()));
        let mut chosen = Vec::new();
        for _ in 0..k {
            let i = self.rng.below(dirs.len() as u64) as usize;
            chosen.push(dirs.swap_remove(i));
        }
        struct Dir {
            id: u64,
            l: usize,
            msgs: Vec<Msg>,
            earlier: usize,
            /// Everything the receiver gets fits its queue's bounds, or it
            /// has flow control: it cannot overflow.
            safe: bool,
            send: tokio::task::JoinHandle<(usize, Option<StreamError>)>,
            recv: tokio::task::JoinHandle<RecvReport>,
        }
        let mut running = Vec::new();
        let mut desc = Vec::new();
        let max_packet = self.conn.cfg.max_packet;
        for (id, l) in chosen {
            let n = self.rng.range(1, 12);
            let mut big = 0;
            let mut msgs: Vec<Msg> = (0..n)
                .map(|_| {
                    let len = if big < 2 && self.rng.one_in(8) {
                        big += 1;
                        self.rng.range(256 << 10, 1 << 20).min(max_packet)
                    } else {
                        self.rng.range(0, 16 << 10)
                    };
                    Msg {
                        tag: self.rng.next(),
                        len,
                    }
                })
                .collect();
            let st = self.conn.st(id);
            let (me, peer) = (&st.side[l], &st.side[1 - l]);
            let earlier = me.sent.len() - peer.received;
            // Without flow control (or before it is known to be in force),
            // a receiver that falls behind overflows, unless it is its
            // connection's only stream. Whether it falls behind is a race:
            // a burst keeps within the queue's bounds, so that the run stays
            // the same on a replay, unless it ends the connection anyway
            // (chaos), then only half the time (the overflow, if any, is
            // checked).
            let regime = self.conn.regime(st, l);
            let (q_msgs, q_bytes) = (self.conn.cfg.q_msgs, self.conn.cfg.q_bytes);
            let mut bytes = me.sent_bytes - peer.received_bytes;
            let alone = self.conn.running_at_arrival(1 - l) <= 1;
            let trim = regime != Regime::Flow && if chaos { self.rng.one_in(2) } else { !alone };
            if trim {
                let mut keep = 0;
                while keep < msgs.len()
                    && earlier + keep < q_msgs
                    && bytes + msgs[keep].len <= q_bytes
                {
                    bytes += msgs[keep].len;
                    keep += 1;
                }
                msgs.truncate(keep);
            } else {
                bytes += msgs.iter().map(|m| m.len).sum::<usize>();
            }
            let safe = regime == Regime::Flow
                || (earlier + msgs.len() <= q_msgs && bytes <= q_bytes)
                || (alone && !chaos);
            let mut expect: Vec<Msg> = me.sent[peer.received..].to_vec();
            expect.extend(msgs.iter().copied());
            desc.push(format!("{id}:{}x{}", SIDE_NAMES[l], msgs.len()));
            let sender = self.conn.stream(id, l);
            let receiver = self.conn.stream(id, 1 - l);
            let to_send = msgs.clone();
            let shared = self.rng.one_in(2);
            let send = tokio::spawn(async move {
                for (i, m) in to_send.iter().enumerate() {
                    let data = payload(m.tag, m.len);
                    let sent = if shared {
                        sender.send_bytes(Bytes::from(data)).await
                    } else {
                        sender.send(&data).await
                    };
                    if let Err(e) = sent {
                        return (i, Some(e));
                    }
                }
                (to_send.len(), None)
            });
            let recv = tokio::spawn(async move {
                let mut report = RecvReport {
                    got: 0,
                    bytes: 0,
                    end: None,
                    bad: None,
                };
                for m in expect {
                    match receiver.recv().await {
                        Ok(Some(d)) => {
                            if d.len() != m.len || !payload_matches(m.tag, &d) {
                                report.bad = Some(format!(
                                    "message {} corrupt: {} bytes, expected {}",
                                    report.got,
                                    d.len(),
                                    m.len
                                ));
                                break;
                            }
                            report.got += 1;
                            report.bytes += m.len;
                        }
                        Ok(None) => {
                            report.end = Some(Ok(()));
                            break;
                        }
                        Err(e) => {
                            report.end = Some(Err(e));
                            break;
                        }
                    }
                }
                report
            });
            if !safe {
                self.conn.may_overflow.push(id);
            }
            if regime != Regime::Off {
                let total: usize = msgs.iter().map(|m| m.len).sum();
                if total as i64 > self.conn.balance(id, l) {
                    self.stats.burst_grants += 1;
                }
            }
            running.push(Dir {
                id,
                l,
                msgs,
                earlier,
                safe,
                send,
                recv,
            });
        }
        self.note(format!("  burst [{}] chaos={chaos}", desc.join(" ")));
        self.stats.bursts += 1;
        if chaos {
            self.stats.chaos += 1;
            match self.rng.below(3) {
                0 => tokio::task::yield_now().await,
                1 => tokio::time::sleep(Duration::from_micros(self.rng.below(500))).await,
                _ => tokio::time::sleep(Duration::from_millis(self.rng.below(5))).await,
            }
            let mode = self.random_close_mode();
            self.close_connection(mode, true).await?;
        }
        // Join everything first, so that no task outlives a failure.
        let mut results = Vec::new();
        for d in running {
            let sent = within(format!("burst send on stream {}", d.id), d.send)
                .await?
                .map_err(|e| format!("burst send task: {e}"))?;
            let recvd = within(format!("burst recv on stream {}", d.id), d.recv)
                .await?
                .map_err(|e| format!("burst recv task: {e}"))?;
            results.push((d.id, d.l, d.msgs, d.earlier, d.safe, sent, recvd));
        }
        self.conn.may_overflow.clear();
        // Overflows first (chaos only: other bursts keep within the bounds):
        // a receiver that overflowed saw its end after the messages queued
        // before (it was waiting for the rest); its peer's sends then
        // failed.
        let mut overflowed = Vec::new();
        for (id, l, _, _, safe, _, report) in &results {
            let r = 1 - l;
            if let Some(Err(e)) = &report.end
                && let StreamErrorKind::QueueOverflow { .. } = e.kind()
            {
                if *safe || !chaos {
                    return self.fail(
                        *id,
                        format!(
                            "burst receiver {} overflowed ({e:?}) although everything sent to it \
                             fits its queue, or is flow-controlled, or it is alone",
                            SIDE_NAMES[r]
                        ),
                    );
                }
                self.stats.burst_overflows += 1;
                self.note(format!("  burst overflow of stream {id} {}", SIDE_NAMES[r]));
                let side = &mut self.conn.st_mut(*id).side[r];
                side.overflow = true;
                side.overflow_at = Some(side.received + report.got);
                overflowed.push(*id);
            }
        }
        // Senders next: the receivers are judged against what was sent.
        for (id, l, msgs, _, _, (oks, err), _) in &results {
            let racing = chaos || overflowed.contains(id);
            for m in &msgs[..*oks] {
                self.judge_send(*id, *l, *m, Ok(()), racing)?;
            }
            if let Some(e) = err {
                self.judge_send(*id, *l, msgs[*oks], Err(e.clone()), racing)?;
            } else if *oks != msgs.len() {
                return Err("internal: burst sender stopped early".into());
            }
        }
        for (id, l, msgs, earlier, _, (oks, err), report) in results {
            let r = 1 - l;
            if let Some(bad) = report.bad {
                return self.fail(id, format!("burst receiver {}: {bad}", SIDE_NAMES[r]));
            }
            if report.got > earlier + oks {
                return self.fail(
                    id,
                    format!(
                        "burst receiver {} got {} messages, only {earlier}+{oks} were sent",
                        SIDE_NAMES[r], report.got
                    ),
                );
            }
            let cause = chaos || overflowed.contains(&id);
            if !cause && (err.is_some() || report.end.is_some() || oks != msgs.len()) {
                return self.fail(
                    id,
                    format!(
                        "burst without cause failed: sender {} sent {oks}/{} ({err:?}), receiver \
                         got {} then {:?}",
                        SIDE_NAMES[l],
                        msgs.len(),
                        report.got,
                        report.end
                    ),
                );
            }
            for _ in 0..report.got {
                let st = self.conn.st(id);
                let len = st.side[l].sent[st.side[r].received].len;
                self.consumed(id, r, len);
            }
            self.stats.msgs_received += report.got;
            self.stats.bytes_verified += report.bytes;
            if let Some(end) = report.end {
                self.on_recv(id, r, end.map(|()| None))?;
            }
        }
        if chaos {
            self.after_connection_closed().await?;
        }
        Ok(())
    }

    // ---- the end of a connection ----

    /// Ends the connection by side `mode.closer()` and waits until the peer
    /// has noticed. With `close` and `close_gracefully` the closer's streams
    /// are terminated at once; a dropped manager terminates them after its
    /// flush. `concurrent` says that sends may be racing the close (then
    /// nothing is known about what was flushed).
    async fn close_connection(&mut self, mode: CloseMode, concurrent: bool) -> R<()> {
        let closer = mode.closer();
        let peer = 1 - closer;
        self.conn.closed_by = Some(closer);
        self.stats.conn_closes += 1;
        self.note(format!("  connection end: {mode:?}"));
        let mut start = Instant::now();
        let mut flushed = false;
        match mode {
            CloseMode::Close(l) | CloseMode::Graceful(l) => {
                let m = self.conn.mgr(l)?;
                if let CloseMode::Graceful(_) = mode {
                    let what = format!("{} close_gracefully()", SIDE_NAMES[l]);
                    within(what, m.close_gracefully(GRACEFUL_TIMEOUT)).await?;
                    flushed = start.elapsed() < GRACEFUL_TIMEOUT;
                } else {
                    within(format!("{} close()", SIDE_NAMES[l]), m.close()).await?;
                }
                match m.termination() {
                    Some(ConnectionError::Closed) => {}
                    other => {
                        return Err(format!(
                            "{} termination() after {mode:?} = {other:?}",
                            SIDE_NAMES[l]
                        ));
                    }
                }
                if m.active_streams() != 0 {
                    return Err(format!(
                        "{} active_streams() = {} after {mode:?}",
                        SIDE_NAMES[l],
                        m.active_streams()
                    ));
                }
                for (&id, st) in &self.conn.streams {
                    if let Some(s) = &st.side[l].stream
                        && !s.is_terminated()
                    {
                        return self.fail(
                            id,
                            format!("{} stream not terminated by {mode:?}", SIDE_NAMES[l]),
                        );
                    }
                }
            }
            CloseMode::Drop(l) => {
                let m = self.conn.mgr[l].take();
                drop(m);
                if l == CLIENT {
                    self.end_client_streams_after_drop().await?;
                    start = Instant::now();
                }
            }
        }
        // The peer notices: end of file, or a broken pipe if it was writing.
        let m = self.conn.mgr(peer)?;
        let err = within(format!("{} closed()", SIDE_NAMES[peer]), m.closed()).await?;
        if !peer_termination_ok(&err) {
            return Err(format!(
                "{} saw the connection end with {err:?}",
                SIDE_NAMES[peer]
            ));
        }
        if m.termination().map(|t| t.to_string()) != Some(err.to_string()) {
            return Err(format!(
                "{} termination() = {:?}, closed() = {err:?}",
                SIDE_NAMES[peer],
                m.termination()
            ));
        }
        if let CloseMode::Drop(_) = mode {
            flushed = start.elapsed() < DROP_FLUSH;
        }
        self.conn.flushed = flushed && !concurrent && matches!(err, ConnectionError::Eof);
        self.note(format!(
            "  {} saw {err:?} after {:.1?} (flushed: {})",
            SIDE_NAMES[peer],
            start.elapsed(),
            self.conn.flushed
        ));
        Ok(())
    }

    /// The client's manager was dropped, but every open client stream keeps
    /// the connection: check that it is still up while one certainly is
    /// open, then end them all (cancel), which ends the connection.
    async fn end_client_streams_after_drop(&mut self) -> R<()> {
        let open: Vec<u64> = self
            .conn
            .sides(|_, _, l| l == CLIENT)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let certainly_open = open.iter().any(|&id| {
            !self.conn.st(id).client_maybe_gone() && !self.conn.may_overflow.contains(&id)
        });
        if certainly_open {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let server = self.conn.mgr(SERVER)?;
            if let Some(err) = server.termination() {
                return Err(format!(
                    "the connection ended ({err:?}) although a client stream is open"
                ));
            }
        }
        for id in open {
            self.do_term(id, CLIENT, Term::Cancel(CancelReason::Canceled))?;
        }
        Ok(())
    }

    /// After the connection ended: the peer notices, every stream ends
    /// consistently, the registries are empty, `close()` returns, `accept`
    /// fails. Then a new connection starts.
    async fn after_connection_closed(&mut self) -> R<()> {
        // Every held stream terminates, drains, then reports its end.
        let ids: Vec<u64> = self.conn.streams.keys().copied().collect();
        for &id in &ids {
            for l in [CLIENT, SERVER] {
                if self.conn.present(id, l) {
                    self.drain_terminated(id, l).await?;
                }
            }
        }
        // Invokes that were queued for accept before the end.
        if let Some(server) = self.conn.mgr[SERVER].clone() {
            loop {
                let accepted = within("accept after the end", server.accept()).await?;
                match accepted {
                    Ok(incoming) => {
                        let id = incoming.stream.id();
                        if self.conn.pending.front() != Some(&id) {
                            return Err(format!(
                                "accept after the end gave stream {id}, pending {:?}",
                                self.conn.pending
                            ));
                        }
                        self.conn.pending.pop_front();
                        self.stats.late_accepts += 1;
                        self.note(format!("  late accept of {id}"));
                        if self.strict.late_accept {
                            return Err(format!(
                                "accept after the connection ended gave stream {id} \
                                 (DRPC_SOAK_STRICT)"
                            ));
                        }
                        let side = &mut self.conn.st_mut(id).side[SERVER];
                        side.stream = Some(Arc::new(incoming.stream));
                        side.accepted = true;
                        self.drain_terminated(id, SERVER).await?;
                    }
                    Err(e) => {
                        let term = server.termination();
                        if term.as_ref().map(|t| t.to_string()) != Some(e.to_string()) {
                            return Err(format!(
                                "accept after the end failed with {e:?}, termination {term:?}"
                            ));
                        }
                        break;
                    }
                }
            }
        }
        for l in [CLIENT, SERVER] {
            if let Some(m) = self.conn.mgr[l].clone() {
                self.wait_empty(&m, l).await?;
                within(format!("{} close()", SIDE_NAMES[l]), m.close()).await?;
                if l == SERVER {
                    let e = within("accept after close()", m.accept()).await?;
                    if e.is_ok() {
                        return Err("accept after close() gave a stream".into());
                    }
                }
            }
        }
        self.check_memory().await?;
        self.new_connection();
        Ok(())
    }

    /// The end of a connection, once both managers are closed: with every
    /// stream handle dropped, neither connection holds a byte for its peer
    /// (`held_bytes()`, or the probe budget of a dropped manager), and a
    /// common budget is back to 0. A dropped manager's tasks may still be
    /// exiting: it gets [`LAG_GRACE`].
    async fn check_memory(&mut self) -> R<()> {
        for st in self.conn.streams.values_mut() {
            for side in &mut st.side {
                side.stream = None;
            }
        }
        // The known deviation `queued-held`: streams the server queued for
        // accept and never handed out keep their received messages (charged
        // to the budgets) in the closed manager's accept queue, until it is
        // dropped or each is taken out by an `accept` (which fails).
        if let Some(server) = self.conn.mgr[SERVER].clone()
            && !self.conn.pending.is_empty()
            && !self.strict.queued_held
        {
            let held = server.held_bytes();
            if held > 0 {
                self.stats.queued_held += 1;
                self.note(format!(
                    "  QUEUED HELD: closed server holds {held} bytes for unaccepted streams {:?}",
                    self.conn.pending
                ));
            }
            for _ in 0..self.conn.pending.len() {
                if within("accept after close()", server.accept())
                    .await?
                    .is_ok()
                {
                    return Err("accept after close() gave a stream".into());
                }
            }
        }
        let start = Instant::now();
        let mut waited = false;
        loop {
            let mut held = Vec::new();
            for l in [CLIENT, SERVER] {
                if let Some(m) = &self.conn.mgr[l] {
                    held.push((format!("{} held_bytes()", SIDE_NAMES[l]), m.held_bytes()));
                }
            }
            for (name, cfg, budgets) in [
                ("shared", self.conn.cfg.shared, &self.conn.budgets.shared),
                (
                    "write",
                    self.conn.cfg.write_shared,
                    &self.conn.budgets.write,
                ),
            ] {
                match cfg {
                    // Each manager's own, read even once it is dropped.
                    SharedCfg::Probe => {
                        for l in [CLIENT, SERVER] {
                            let what = format!("{} {name} budget (probe)", SIDE_NAMES[l]);
                            held.push((what, budgets[l].held()));
                        }
                    }
                    SharedCfg::Common(_) => {
                        held.push((format!("common {name} budget"), budgets[CLIENT].held()));
                    }
                }
            }
            if held.iter().all(|(_, n)| *n == 0) {
                break;
            }
            let closed = self.conn.mgr.iter().all(Option::is_some);
            if closed || start.elapsed() > LAG_GRACE {
                return Err(format!(
                    "memory still held after the connection ended and every stream was \
                     dropped{}: {held:?} (unaccepted streams: {:?})\n{}",
                    if closed {
                        " (both managers closed)"
                    } else {
                        ""
                    },
                    self.conn.pending,
                    self.describe_all()
                ));
            }
            waited = true;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.stats.held_lag += usize::from(waited);
        Ok(())
    }

    /// Waits for side `l` of a stream to terminate, receives what is left
    /// and its end, and checks that sends fail and terminal operations are
    /// silent no-ops.
    async fn drain_terminated(&mut self, id: u64, l: usize) -> R<()> {
        let s = self.conn.stream(id, l);
        within(
            format!("stream {id} {} terminated()", SIDE_NAMES[l]),
            s.terminated(),
        )
        .await?;
        let st = self.conn.st(id);
        let left = st.side[1 - l]
            .sent
            .len()
            .saturating_sub(st.side[l].received);
        for _ in 0..=left {
            let result = within(format!("recv on ended stream {id}"), s.recv()).await?;
            let ended = !matches!(result, Ok(Some(_)));
            self.on_recv(id, l, result)?;
            if ended {
                break;
            }
        }
        if self.conn.st(id).side[l].end.is_none() {
            return self.fail(id, format!("{} receive never ended", SIDE_NAMES[l]));
        }
        let sent = within("send on ended stream", s.send(b"late")).await?;
        if sent.is_ok() {
            return self.fail(
                id,
                format!("send on ended {} stream succeeded", SIDE_NAMES[l]),
            );
        }
        self.on_send(id, l, Msg { tag: 0, len: 4 }, sent)?;
        drop(s);
        for term in [
            Term::CloseSend,
            Term::Close,
            Term::SendError(7),
            Term::Cancel(CancelReason::Canceled),
        ] {
            self.do_term(id, l, term)?;
        }
        Ok(())
    }

    async fn wait_empty(&mut self, m: &Manager, l: usize) -> R<()> {
        if m.active_streams() == 0 {
            return Ok(());
        }
        self.stats.close_lag += 1;
        let start = Instant::now();
        while m.active_streams() != 0 {
            if start.elapsed() > OP_TIMEOUT {
                return Err(format!(
                    "{} active_streams() = {} long after every stream ended\n{}",
                    SIDE_NAMES[l],
                    m.active_streams(),
                    self.describe_all()
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// The graceful end of a connection: accept what is pending, drain what
    /// can be received, drop every handle (the registries must be empty at
    /// once), then close one side and the other.
    async fn finish_connection(&mut self) -> R<()> {
        self.note("  finish connection".into());
        if self.conn.closed_by.is_some() {
            return self.after_connection_closed().await;
        }
        while !self.conn.pending.is_empty() {
            self.op_accept().await?;
        }
        let mut sides = self.conn.sides(|_, _, _| true);
        // Shuffle, then drain and drop.
        for i in (1..sides.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            sides.swap(i, j);
        }
        for (id, l) in sides {
            if self.rng.one_in(2) {
                while self.conn.st(id).side[l].end.is_none() && self.conn.recv_safe(id, l) {
                    self.do_recv(id, l).await?;
                }
            }
            self.do_drop(id, l)?;
        }
        self.check_registries()?;
        for l in [CLIENT, SERVER] {
            let m = self.conn.mgr(l)?;
            if m.active_streams() != 0 {
                return Err(format!(
                    "{} active_streams() = {} after every stream was dropped\n{}",
                    SIDE_NAMES[l],
                    m.active_streams(),
                    self.describe_all()
                ));
            }
            if m.termination().is_some() || m.role() != [Role::Client, Role::Server][l] {
                return Err(format!("{} manager state: {m:?}", SIDE_NAMES[l]));
            }
        }
        let first = if self.rng.one_in(2) { CLIENT } else { SERVER };
        let mode = if self.rng.one_in(2) {
            CloseMode::Graceful(first)
        } else {
            CloseMode::Close(first)
        };
        self.close_connection(mode, false).await?;
        self.after_connection_closed().await
    }

    fn new_connection(&mut self) {
        let cfg = EpochCfg::random(&mut self.rng);
        self.stats.epochs += 1;
        self.stats.fc_epochs[cfg.fc as usize] += 1;
        self.note(format!("connection {}: {cfg:?}", self.stats.epochs));
        self.conn = Conn::new(cfg);
    }
}

fn show_recv(r: &Result<Option<Bytes>, StreamError>) -> String {
    match r {
        Ok(Some(d)) => format!("message({} bytes)", d.len()),
        Ok(None) => "None".into(),
        Err(e) => format!("Err({:?})", e.kind()),
    }
}

// ---------------------------------------------------------------- entry ----

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// Runs one seed on a fresh multi-thread runtime.
fn run_seed(seed: u64, ops: usize) -> Result<Stats, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let panics = PANICS.load(Ordering::SeqCst);
    let (result, stats, log) = rt.block_on(async {
        let mut soak = Soak::new(seed);
        let result = match tokio::time::timeout(SEED_TIMEOUT, soak.run(ops)).await {
            Ok(r) => r,
            Err(_) => Err(format!("HANG: seed not done within {SEED_TIMEOUT:?}")),
        };
        (result, soak.stats.clone(), soak.log.clone())
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    let panicked = PANICS.load(Ordering::SeqCst) - panics;
    let result = match result {
        Ok(()) if panicked > 0 => Err(format!("{panicked} task(s) panicked")),
        other => other,
    };
    result.map(|()| stats).map_err(|e| {
        let mut report = format!(
            "soak FAILED with seed {seed} ({ops} ops per seed): {e}\n\
             replay: DRPC_SOAK_SEED={seed} DRPC_SOAK_OPS={ops} cargo test -p drpc-manager \
             --test soak -- --nocapture\nlast operations:\n"
        );
        for line in log {
            report.push_str("  ");
            report.push_str(&line);
            report.push('\n');
        }
        report
    })
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}

/// The soak: the default seeds, or what `DRPC_SOAK_SEED` /
/// `DRPC_SOAK_SECONDS` / `DRPC_SOAK_OPS` ask for (see the crate docs).
#[test]
fn soak() {
    count_panics();
    let seed = env_u64("DRPC_SOAK_SEED");
    let seconds = env_u64("DRPC_SOAK_SECONDS");
    let ops = env_u64("DRPC_SOAK_OPS").map(|n| n as usize);
    let start = Instant::now();
    let mut total = Stats::default();
    let mut run = |seed: u64, ops: usize| {
        let t = Instant::now();
        match run_seed(seed, ops) {
            Ok(stats) => {
                println!("soak seed {seed}: ok in {:.2?}: {stats}", t.elapsed());
                total.add(&stats);
            }
            Err(report) => panic!("{report}"),
        }
    };
    match (seed, seconds) {
        (Some(seed), _) => run(seed, ops.unwrap_or(DEFAULT_OPS)),
        (None, Some(seconds)) => {
            let base = env_u64("DRPC_SOAK_BASE_SEED").unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                Rng(nanos).next() >> 16
            });
            println!("soak: seeds from {base} for {seconds} s");
            let budget = Duration::from_secs(seconds);
            let mut seed = base;
            while start.elapsed() < budget {
                run(seed, ops.unwrap_or(DEFAULT_LONG_OPS));
                seed += 1;
            }
        }
        (None, None) => {
            for seed in DEFAULT_SEEDS {
                run(seed, ops.unwrap_or(DEFAULT_OPS));
            }
        }
    }
    println!("soak total in {:.2?}: {total}", start.elapsed());
}

// ------------------------------------------------- focused reproductions ----
//
// Each checks a deviation the soak found (see the crate docs); the ignored
// ones fail on a deviation not fixed yet. Run those with `cargo test -p
// drpc-manager --release --test soak -- --ignored --nocapture`.

fn limited(limit: usize) -> ManagerOptions {
    ManagerOptions {
        max_concurrent_streams: limit,
        ..ManagerOptions::default()
    }
}

/// Serves every stream by ending it at once with an Error (code 1), each
/// from its own task.
fn error_server(server: &Manager) {
    let server = server.clone();
    tokio::spawn(async move {
        while let Ok(incoming) = server.accept().await {
            tokio::spawn(async move {
                let _ = incoming.stream.send_error(&CodedError::new(1, "done"));
            });
        }
    });
}

/// With a client limit of 1, a call whose end the client has received (its
/// receive returned the server's Error, the stream is terminated) must not
/// count against the limit: the next `open_stream` must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limit_counts_ended_streams() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let client = Manager::new(a, Role::Client, limited(1));
    let server = Manager::new(b, Role::Server, ManagerOptions::default());
    error_server(&server);
    let mut refused = 0;
    for _ in 0..20_000 {
        let mut first = true;
        let stream = loop {
            match client.open_stream("/soak.Soak/M", &Metadata::new()).await {
                Ok(stream) => break stream,
                Err(e) if matches!(e.kind(), StreamErrorKind::Refused { .. }) => {
                    // Count calls, not retries.
                    refused += usize::from(first);
                    first = false;
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("open_stream: {e:?}"),
            }
        };
        let end = stream.recv().await;
        assert!(end.is_err() && stream.is_terminated(), "{end:?}");
    }
    assert_eq!(
        refused, 0,
        "of 20000 calls, this many were refused right after the previous one ended"
    );
}

/// With a server limit of 1, a call the server's handler ended (the client
/// received its Error) must not count against the limit when the client's
/// next Invoke arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_limit_counts_ended_streams() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let client = Manager::new(a, Role::Client, ManagerOptions::default());
    let server = Manager::new(b, Role::Server, limited(1));
    error_server(&server);
    let mut refused = 0;
    for _ in 0..20_000 {
        let stream = client
            .open_stream("/soak.Soak/M", &Metadata::new())
            .await
            .expect("open_stream");
        match stream.recv().await {
            Err(e) if e.code() == Some(1) => {}
            Err(e) if matches!(e.kind(), StreamErrorKind::Remote(r) if r.message().contains("refused")) => {
                refused += 1
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        refused, 0,
        "of 20000 calls, this many were refused although the previous one had ended"
    );
}

/// `accept` is documented to fail with the connection's error once the
/// connection has ended; it first hands out the streams queued before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_fails_once_the_connection_ended() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let client = Manager::new(a, Role::Client, ManagerOptions::default());
    let server = Manager::new(b, Role::Server, ManagerOptions::default());
    let _stream = client
        .open_stream("/soak.Soak/M", &Metadata::new())
        .await
        .expect("open_stream");
    // The Invoke arrives and waits for accept.
    while server.active_streams() == 0 {
        tokio::task::yield_now().await;
    }
    server.close().await;
    match server.accept().await {
        Err(e) => assert!(matches!(e, ConnectionError::Closed), "{e:?}"),
        Ok(incoming) => panic!(
            "accept after close() gave stream {} (terminated: {})",
            incoming.stream.id(),
            incoming.stream.is_terminated()
        ),
    }
}

/// Once both managers are closed (their tasks have exited) and the
/// application holds no stream, neither connection holds memory for its
/// peer, not even for the streams the server queued for `accept` and never
/// handed out: the closed manager frees them with their received messages
/// (`queued-held` when it kept them charged, to the connection's and the
/// shared budget, until it was dropped or an `accept` took each out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_manager_holds_nothing_for_unaccepted_streams() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let client = Manager::new(a, Role::Client, ManagerOptions::default());
    let server = Manager::new(b, Role::Server, ManagerOptions::default());
    let request = Bytes::from(vec![7u8; 100_000]);
    let stream = client
        .open_unary("/soak.Soak/M", &Metadata::new(), request)
        .await
        .expect("open_unary");
    // The Invoke and its message arrive and wait for accept.
    let start = Instant::now();
    while server.held_bytes() < 100_000 {
        assert!(start.elapsed() < OP_TIMEOUT, "the request never arrived");
        tokio::task::yield_now().await;
    }
    drop(stream);
    client.close().await;
    server.close().await;
    assert_eq!(client.held_bytes(), 0);
    assert_eq!(
        server.held_bytes(),
        0,
        "a closed server still holds the message of a stream it never handed out"
    );
}

/// With flow control, a server handler that half-closes and drops its
/// stream while the client may still send tells the client with a Close:
/// without it, a client that goes on sending would wait for credit forever
/// (its messages are dropped as frames of an unknown stream, so nothing is
/// ever granted). The client's sends fail with `ClosedByRemote` once the
/// Close arrived (before, within its credit, they succeed, and those past
/// it wait for the Close), its receive ends cleanly (it saw the server's
/// CloseSend), and it stops counting as an active stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_controlled_sender_after_the_server_let_go() {
    let mut opts = ManagerOptions::default();
    opts.stream.flow_control = FlowControl::fork()
        .with_window(FlowControl::FRAME + 1, 1)
        .expect("valid");
    let (a, b) = tokio::io::duplex(1 << 16);
    let client = Manager::new(a, Role::Client, opts.clone());
    let server = Manager::new(b, Role::Server, opts);
    let stream = client
        .open_stream("/soak.Soak/M", &Metadata::new())
        .await
        .expect("open_stream");
    let incoming = server.accept().await.expect("accept");
    incoming.stream.close_send().expect("close_send");
    drop(incoming);
    assert!(matches!(stream.recv().await, Ok(None)));
    // The window takes one message: the second (at the latest) waits for
    // credit, until the Close arrives.
    let message = vec![0u8; FC_FRAME];
    let mut sent = 0;
    let failed = loop {
        let send = tokio::time::timeout(Duration::from_secs(2), stream.send(&message)).await;
        match send {
            Ok(Ok(())) if sent < 1 => sent += 1,
            Ok(Ok(())) => panic!("a send past the window succeeded"),
            Ok(Err(e)) => break e,
            Err(_) => panic!("a send past the window waits forever for a peer that let go"),
        }
    };
    assert!(
        matches!(failed.kind(), StreamErrorKind::ClosedByRemote),
        "{failed:?}"
    );
    let end = tokio::time::timeout(OP_TIMEOUT, stream.terminated()).await;
    assert!(end.is_ok(), "the client's stream never ended");
    assert!(matches!(stream.recv().await, Ok(None)));
    assert_eq!(client.active_streams(), 0);
    assert!(matches!(
        stream.send(&message).await.map_err(|e| e.into_kind()),
        Err(StreamErrorKind::ClosedByRemote)
    ));
}

/// A stream that `is_terminated()` is no longer counted by
/// `active_streams()`: a stream leaves the count under its own lock as it
/// terminates. (It used to leave the registry in a hook that ran after the
/// stream's lock was released, so an observer that does not wait, here one
/// that polls `is_terminated()` while the peer's Close arrives, could see
/// the end first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_never_counts_a_terminated_stream() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let client = Manager::new(a, Role::Client, ManagerOptions::default());
    let server = Manager::new(b, Role::Server, ManagerOptions::default());
    let mut lagged = 0;
    for _ in 0..20_000 {
        let stream = client
            .open_stream("/soak.Soak/M", &Metadata::new())
            .await
            .expect("open_stream");
        let incoming = server.accept().await.expect("accept");
        incoming.stream.close().expect("close");
        let start = Instant::now();
        while !stream.is_terminated() {
            assert!(start.elapsed() < OP_TIMEOUT, "the Close never arrived");
            std::hint::spin_loop();
        }
        lagged += usize::from(client.active_streams() != 0);
        while client.active_streams() != 0 {
            assert!(
                start.elapsed() < OP_TIMEOUT,
                "the stream never left the count"
            );
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(
        lagged, 0,
        "of 20000 streams, this many were still registered once terminated"
    );
}

/// A connection that ends while the server still has streams queued for
/// `accept` ends them with the connection's error: the client's side
/// reports the connection's end, never a Cancel from a server that never
/// handed the stream out. The server's reader, busy with the request's
/// frames, sees the connection's end (`term`) as soon as it is set; it
/// frees the accept queue only once `terminate` has ended the streams in
/// it, or each would be dropped running, which cancels it (the former
/// `queued-cancel`, tens of the 500 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaccepted_streams_end_with_the_connection() {
    let mut canceled = 0;
    for round in 0..500 {
        let mut opts = ManagerOptions::default();
        opts.stream.split_size = 1000;
        let (a, b) = tokio::io::duplex(1 << 16);
        let client = Manager::new(a, Role::Client, opts.clone());
        let server = Manager::new(b, Role::Server, opts);
        let request = Bytes::from(vec![7u8; 1 << 20]);
        let stream = client
            .open_unary("/soak.Soak/M", &Metadata::new(), request)
            .await
            .expect("open_unary");
        let start = Instant::now();
        while server.active_streams() == 0 {
            assert!(start.elapsed() < OP_TIMEOUT, "the Invoke never arrived");
            tokio::task::yield_now().await;
        }
        if round % 2 == 0 {
            server.close().await;
        } else {
            drop(server);
        }
        let end = tokio::time::timeout(OP_TIMEOUT, stream.recv())
            .await
            .expect("the client's stream never ended");
        match end {
            Err(e) if matches!(e.kind(), StreamErrorKind::ConnectionLost(_)) => {}
            Err(e) if matches!(e.kind(), StreamErrorKind::Canceled(Initiator::Remote)) => {
                canceled += 1
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        canceled, 0,
        "of 500 streams queued for accept when the server's connection ended, this many were \
         canceled by the server"
    );
}
