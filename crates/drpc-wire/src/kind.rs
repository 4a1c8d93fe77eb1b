//! Packet kinds (protocol.md §4).

use std::fmt;

/// The 6-bit kind field of a frame header.
///
/// Every value 0..=63 is representable, because the parser accepts every
/// header byte: kinds the protocol does not assign (0 and 10..=63) are judged
/// later, at stream level, by the control bit (protocol.md §7.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind(u8);

impl Kind {
    /// Opens a stream; the payload is the RPC path.
    pub const INVOKE: Kind = Kind(1);
    /// One encoded application message.
    pub const MESSAGE: Kind = Kind(2);
    /// Terminates the stream with an error (code and text).
    pub const ERROR: Kind = Kind(3);
    /// Soft cancel; Go always sends it with the control bit.
    pub const CANCEL: Kind = Kind(4);
    /// Terminates the stream ("this RPC is dead").
    pub const CLOSE: Kind = Kind(5);
    /// Half close: the sender will send no more messages.
    pub const CLOSE_SEND: Kind = Kind(6);
    /// Request metadata, sent just before the Invoke of the same stream.
    pub const INVOKE_METADATA: Kind = Kind(7);
    /// Flow-control credit for a stream's sender (CockroachDB's fork,
    /// mux-fork-2026.md §2.1): always one frame, header `0x91`, message id
    /// 0, one varint delta. Intercepted before packet assembly; see
    /// [`WindowUpdate`](crate::WindowUpdate).
    pub const WINDOW_UPDATE: Kind = Kind(8);
    /// This implementation's per-stream flow-control negotiation (always
    /// with the control bit, so that any peer that does not know it ignores
    /// it); see [`FlowNegotiation`](crate::FlowNegotiation).
    pub const FLOW_NEGOTIATION: Kind = Kind(9);

    /// The largest value the 6-bit field can hold.
    pub const MAX: u8 = 63;

    /// Returns the kind with numeric value `value`, or `None` above 63.
    pub const fn new(value: u8) -> Option<Kind> {
        if value <= Self::MAX {
            Some(Kind(value))
        } else {
            None
        }
    }

    /// Extracts the kind from a frame header byte (bits 1..=6).
    pub const fn from_header(header: u8) -> Kind {
        Kind((header & 0x7e) >> 1)
    }

    /// The numeric value, 0..=63.
    pub const fn value(self) -> u8 {
        self.0
    }

    /// Whether the protocol assigns a meaning to this kind (1..=9).
    pub const fn is_known(self) -> bool {
        matches!(self.0, 1..=9)
    }

    /// Whether packets of this kind are split into frames when large
    /// (Invoke, InvokeMetadata and Message); the others always travel as
    /// exactly one frame (protocol.md §5.1).
    pub const fn is_splittable(self) -> bool {
        matches!(self.0, 1 | 2 | 7)
    }

    fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "Invoke",
            2 => "Message",
            3 => "Error",
            4 => "Cancel",
            5 => "Close",
            6 => "CloseSend",
            7 => "InvokeMetadata",
            8 => "WindowUpdate",
            9 => "FlowNegotiation",
            _ => return None,
        })
    }
}

/// Displays as Go's `Kind.String()`: the name, or `Kind(N)` when unassigned.
impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Kind({})", self.0),
        }
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_protocol() {
        let table = [
            (Kind::INVOKE, 1, "Invoke"),
            (Kind::MESSAGE, 2, "Message"),
            (Kind::ERROR, 3, "Error"),
            (Kind::CANCEL, 4, "Cancel"),
            (Kind::CLOSE, 5, "Close"),
            (Kind::CLOSE_SEND, 6, "CloseSend"),
            (Kind::INVOKE_METADATA, 7, "InvokeMetadata"),
            (Kind::WINDOW_UPDATE, 8, "WindowUpdate"),
            (Kind::FLOW_NEGOTIATION, 9, "FlowNegotiation"),
        ];
        for (kind, value, name) in table {
            assert_eq!(kind.value(), value);
            assert_eq!(kind.to_string(), name);
            assert!(kind.is_known());
        }
    }

    #[test]
    fn unknown_kinds_are_values() {
        for v in [0u8, 10, 63] {
            let kind = Kind::new(v).expect("in range");
            assert!(!kind.is_known());
            assert_eq!(kind.to_string(), format!("Kind({v})"));
        }
        assert_eq!(Kind::new(64), None);
        assert_eq!(Kind::from_header(0xff).value(), 63);
    }

    #[test]
    fn splittable_kinds() {
        let split: Vec<u8> = (0..=63)
            .filter_map(Kind::new)
            .filter(|k| k.is_splittable())
            .map(Kind::value)
            .collect();
        assert_eq!(split, vec![1, 2, 7]);
    }
}
