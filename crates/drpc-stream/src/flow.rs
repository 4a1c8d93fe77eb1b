//! Per-stream flow control: settings, the send window and the receive
//! credit (mux-fork-2026.md §2), as sans-IO pieces of [`crate::core`].

use drpc_wire::FlowParams;

/// When a connection's streams use flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FlowControlMode {
    /// Never gate sends, never grant (received grants are dropped).
    Off,
    /// Flow control on the streams whose peer has shown that it speaks
    /// this implementation's negotiation; none on the others, so stock and
    /// fork peers see nothing they do not know (the default). Unary calls
    /// are never negotiated: one message each way needs no window.
    #[default]
    Auto,
    /// CockroachDB's fork with flow control on: every stream is gated and
    /// granted from the start, as the fork assumes, since it cannot
    /// announce itself. Both sides must be configured alike.
    Fork,
}

/// Why flow-control settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowControlError {
    /// The window must hold at least one frame, and the grant threshold
    /// must leave a frame's room below the window, or sender and receiver
    /// can wait for each other forever (mux-fork-2026.md §2.3).
    #[error(
        "flow control would deadlock: window {window} must be >= {frame} and grant threshold {threshold} must be in 1..={}",
        window.saturating_sub(*frame)
    )]
    Liveness {
        /// The window asked for.
        window: u64,
        /// The threshold asked for.
        threshold: u64,
        /// The largest frame a gated sender sends.
        frame: u64,
    },
}

/// Flow-control settings of a connection's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowControl {
    mode: FlowControlMode,
    window: u64,
    grant_threshold: u64,
}

impl Default for FlowControl {
    fn default() -> Self {
        FlowControl::auto()
    }
}

impl FlowControl {
    /// The fork's default window: the credit a stream's sender starts with.
    pub const DEFAULT_WINDOW: u64 = 2 << 20;
    /// The fork's default grant threshold: consumed bytes are granted back
    /// once at least this many have accumulated.
    pub const DEFAULT_GRANT_THRESHOLD: u64 = 512 << 10;
    /// The default window of the auto mode, between peers of this
    /// implementation: larger than the fork's, so that streams of large
    /// messages keep the wire busy while grants travel back (both sides
    /// announce theirs, so it need not match the peer's).
    pub const AUTO_WINDOW: u64 = 8 << 20;
    /// The default grant threshold of the auto mode.
    pub const AUTO_GRANT_THRESHOLD: u64 = 1 << 20;
    /// The largest frame of a gated message: messages of flow-controlled
    /// streams are split into frames of at most this many bytes.
    pub const FRAME: u64 = 64 << 10;
    /// The fork's default maximum message size with flow control on.
    pub const FORK_MAX_MESSAGE: usize = 64 << 20;

    /// No flow control.
    pub const fn off() -> FlowControl {
        FlowControl {
            mode: FlowControlMode::Off,
            window: Self::DEFAULT_WINDOW,
            grant_threshold: Self::DEFAULT_GRANT_THRESHOLD,
        }
    }

    /// Negotiated flow control, with [`FlowControl::AUTO_WINDOW`] and
    /// [`FlowControl::AUTO_GRANT_THRESHOLD`].
    pub const fn auto() -> FlowControl {
        FlowControl {
            mode: FlowControlMode::Auto,
            window: Self::AUTO_WINDOW,
            grant_threshold: Self::AUTO_GRANT_THRESHOLD,
        }
    }

    /// The fork's flow control, with its defaults (2 MiB window, 512 KiB
    /// threshold, 64 KiB frames; its 64 MiB message limit is
    /// [`FlowControl::FORK_MAX_MESSAGE`], set on the connection's maximum
    /// packet size).
    pub const fn fork() -> FlowControl {
        FlowControl {
            mode: FlowControlMode::Fork,
            ..FlowControl::off()
        }
    }

    /// The same mode with another window and grant threshold, checked
    /// against the liveness rule: `window >= FRAME` and
    /// `1 <= threshold <= window - FRAME`. With the fork, both sides must
    /// use the same window.
    pub fn with_window(self, window: u64, threshold: u64) -> Result<FlowControl, FlowControlError> {
        if window < Self::FRAME || threshold == 0 || threshold > window - Self::FRAME {
            return Err(FlowControlError::Liveness {
                window,
                threshold,
                frame: Self::FRAME,
            });
        }
        Ok(FlowControl {
            window,
            grant_threshold: threshold,
            ..self
        })
    }

    /// The mode.
    pub const fn mode(&self) -> FlowControlMode {
        self.mode
    }

    /// The window granted to each stream's peer up front.
    pub const fn window(&self) -> u64 {
        self.window
    }

    /// The grant threshold.
    pub const fn grant_threshold(&self) -> u64 {
        self.grant_threshold
    }

    /// What this side offers or accepts in the negotiation.
    pub(crate) fn params(&self, max_message: usize) -> FlowParams {
        FlowParams {
            window: self.window,
            max_message: max_message as u64,
        }
    }
}

/// The credit of a stream's sender (mux-fork-2026.md §2.2): a signed
/// balance, debited by every Message's payload; a message may start only
/// while its first frame fits, and the rest of it may overdraw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendWindow {
    balance: i64,
    /// Whether sends wait for credit. An auto client debits from the start
    /// but waits only once the server accepted the negotiation, since a
    /// peer that never grants must not stall it.
    gated: bool,
}

impl SendWindow {
    pub(crate) fn gated(window: u64) -> SendWindow {
        SendWindow {
            balance: clamp(window),
            gated: true,
        }
    }

    pub(crate) fn ungated() -> SendWindow {
        SendWindow {
            balance: 0,
            gated: false,
        }
    }

    /// Whether sends wait for credit.
    pub(crate) fn is_gated(&self) -> bool {
        self.gated
    }

    /// Whether a message whose first frame has `first_frame` bytes may go.
    pub(crate) fn allows(&self, first_frame: usize) -> bool {
        !self.gated || self.balance >= clamp(first_frame as u64)
    }

    pub(crate) fn debit(&mut self, len: usize) {
        self.balance = self.balance.saturating_sub(clamp(len as u64));
    }

    /// Applies a grant, saturating; returns whether a waiting sender may
    /// now go on (the balance became non-negative).
    pub(crate) fn grant(&mut self, delta: u64) -> bool {
        let was = self.balance;
        self.balance = self.balance.saturating_add(clamp(delta));
        was < self.balance
    }

    /// Starts gating with `window` of credit on top of what was debited.
    pub(crate) fn start_gating(&mut self, window: u64) {
        self.gated = true;
        self.balance = self.balance.saturating_add(clamp(window));
    }

    #[cfg(test)]
    pub(crate) fn balance(&self) -> i64 {
        self.balance
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The receive side of a flow-controlled stream (mux-fork-2026.md §2.3):
/// grants consumed bytes back in batches of at least the threshold, and
/// holds the peer to its window plus one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecvWindow {
    /// Consumed bytes not yet granted back.
    pending: u64,
    threshold: u64,
    /// The most payload bytes the peer may have queued here: the window it
    /// was given plus one message that overdraws it.
    cap: usize,
    /// Whether the cap is enforced: an auto server holds its client to it
    /// only from the client's "gating" marker on, since what the client
    /// sent before it saw the acceptance was not gated.
    enforcing: bool,
    /// Queued bytes that arrived before enforcement began; they leave the
    /// queue first and do not count against the cap.
    exempt: usize,
}

impl RecvWindow {
    pub(crate) fn new(window: u64, threshold: u64, max_message: usize, enforcing: bool) -> Self {
        RecvWindow {
            pending: 0,
            threshold,
            cap: usize::try_from(window)
                .unwrap_or(usize::MAX)
                .saturating_add(max_message),
            enforcing,
            exempt: 0,
        }
    }

    /// Whether a message of `len` bytes may join `queued` bytes (of
    /// `messages` messages) without breaking the cap. An empty queue
    /// always admits one message. `None` when the cap is not enforced.
    pub(crate) fn admits(&self, queued: usize, messages: usize, len: usize) -> Option<bool> {
        if !self.enforcing {
            return None;
        }
        let counted = queued.saturating_sub(self.exempt);
        Some(messages == 0 || counted.saturating_add(len) <= self.cap)
    }

    /// Whether the cap is enforced yet.
    pub(crate) fn is_enforcing(&self) -> bool {
        self.enforcing
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Starts enforcing, exempting what is already queued.
    pub(crate) fn start_enforcing(&mut self, queued: usize) {
        if !self.enforcing {
            self.enforcing = true;
            self.exempt = queued;
        }
    }

    /// The application took a message of `len` bytes: returns the grant
    /// to send, once enough has accumulated.
    pub(crate) fn consumed(&mut self, len: usize) -> Option<u64> {
        self.exempt = self.exempt.saturating_sub(len);
        self.pending = self.pending.saturating_add(len as u64);
        if self.pending >= self.threshold && self.pending > 0 {
            return Some(std::mem::take(&mut self.pending));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_rule() {
        let f = FlowControl::FRAME;
        assert!(FlowControl::fork().with_window(f, 0).is_err());
        assert!(FlowControl::fork().with_window(f - 1, 1).is_err());
        assert!(FlowControl::fork().with_window(f, 1).is_err());
        assert!(FlowControl::fork().with_window(f + 1, 1).is_ok());
        assert!(FlowControl::fork().with_window(4 * f, 3 * f).is_ok());
        assert!(FlowControl::fork().with_window(4 * f, 3 * f + 1).is_err());
        let d = FlowControl::fork();
        assert!(
            d.window() >= f && d.grant_threshold() <= d.window() - f,
            "the defaults obey it"
        );
        let err = FlowControl::auto()
            .with_window(10, 5)
            .expect_err("too small");
        assert!(err.to_string().contains("deadlock"), "{err}");
    }

    /// The fork's example (§2.2): window 4, frames of 2, "hello" = 2+2+1.
    #[test]
    fn overdraft_and_grants() {
        let mut w = SendWindow::gated(4);
        assert!(w.allows(2));
        w.debit(5);
        assert_eq!(w.balance(), -1);
        assert!(!w.allows(2));
        assert!(
            !w.allows(0),
            "a negative balance stops even an empty message"
        );
        assert!(w.grant(1));
        assert_eq!(w.balance(), 0);
        assert!(w.allows(0) && !w.allows(1));
        assert!(w.grant(2));
        assert!(w.allows(2));
        // Saturation: the largest delta never wraps.
        assert!(w.grant(u64::MAX));
        assert_eq!(w.balance(), i64::MAX);
        assert!(!w.grant(1));
        assert_eq!(w.balance(), i64::MAX);
    }

    #[test]
    fn ungated_until_accepted() {
        let mut w = SendWindow::ungated();
        w.debit(10 << 20);
        assert!(w.allows(64 << 10), "never waits before the acceptance");
        w.start_gating(2 << 20);
        assert!(!w.allows(1), "what was sent before still counts");
        w.grant(8 << 20);
        assert!(w.allows(0) && !w.allows(1));
        w.grant(64 << 10);
        assert!(w.allows(64 << 10));
    }

    #[test]
    fn grants_on_consume_at_the_threshold() {
        let mut r = RecvWindow::new(100, 30, 50, true);
        assert_eq!(r.consumed(10), None);
        assert_eq!(r.consumed(19), None);
        assert_eq!(r.consumed(1), Some(30));
        assert_eq!(r.consumed(29), None);
        assert_eq!(r.consumed(100), Some(129));
        assert_eq!(r.cap(), 150);
    }

    #[test]
    fn cap_with_exempt_bytes() {
        let mut r = RecvWindow::new(100, 30, 50, false);
        assert_eq!(r.admits(1000, 5, 10), None, "not enforced yet");
        r.start_enforcing(1000);
        assert_eq!(r.admits(1000, 5, 150), Some(true));
        assert_eq!(r.admits(1000, 5, 151), Some(false));
        assert_eq!(
            r.admits(0, 0, 10_000),
            Some(true),
            "an empty queue admits one"
        );
        // The exempt bytes leave first.
        r.consumed(990);
        assert_eq!(r.admits(10, 1, 150), Some(true));
        r.consumed(10);
        assert_eq!(r.admits(10, 1, 141), Some(false));
    }
}
