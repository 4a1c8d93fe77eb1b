//! Sans-IO assembly of the Invoke (and InvokeMetadata) that opens each
//! server stream (multiplexing.md §3.4).

use std::collections::HashMap;

use bytes::Bytes;
use drpc_stream::ConnectionError;
use drpc_wire::{Frame, Kind, Metadata, PacketAssembler, decode_metadata};

/// The hasher of maps keyed by stream id: much cheaper than the standard
/// SipHash on one `u64`, still seeded at random, and the maps it serves are
/// bounded by the stream limit, so colliding ids chosen by a peer cost it
/// little.
pub(crate) type IdHasher = foldhash::fast::RandomState;

/// What a parsed metadata entry costs beyond its key and value bytes: two
/// `String`s, their allocations and a share of a map node.
const METADATA_ENTRY_COST: usize = 96;

/// The in-memory size of parsed metadata, as charged to the budget.
pub(crate) fn metadata_cost(metadata: &Metadata) -> usize {
    metadata
        .iter()
        .map(|(k, v)| k.len() + v.len() + METADATA_ENTRY_COST)
        .sum()
}

/// A complete request to open a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invoke {
    pub(crate) stream: u64,
    pub(crate) rpc: Bytes,
    pub(crate) metadata: Metadata,
}

impl Invoke {
    /// What the Invoke holds in memory while its stream is served.
    pub(crate) fn cost(&self) -> usize {
        self.rpc.len() + metadata_cost(&self.metadata)
    }
}

/// Invokes under assembly, by stream id.
///
/// Bounded: a peer may have at most `limit` streams whose Invoke is still
/// incomplete; one more is a protocol error. An entry is dropped when its
/// Invoke completes, or when the peer ends that stream before it did
/// (Cancel, Close or Error), so entries never leak.
#[derive(Debug)]
pub(crate) struct PendingInvokes {
    pending: HashMap<u64, Pending, IdHasher>,
    limit: usize,
    max_packet_size: usize,
    max_metadata_size: usize,
    /// Bytes held by all entries: partial packets and parsed metadata.
    held: usize,
}

#[derive(Debug)]
struct Pending {
    assembler: PacketAssembler,
    metadata: Metadata,
    metadata_cost: usize,
}

impl Pending {
    fn held(&self) -> usize {
        self.assembler.buffered() + self.metadata_cost
    }
}

impl PendingInvokes {
    pub(crate) fn new(
        limit: usize,
        max_packet_size: usize,
        max_metadata_size: usize,
    ) -> PendingInvokes {
        PendingInvokes {
            pending: HashMap::default(),
            limit: limit.max(1),
            max_packet_size,
            max_metadata_size,
            held: 0,
        }
    }

    /// Bytes held for Invokes still assembling, at their in-memory size.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Feeds an Invoke or InvokeMetadata frame of an unregistered stream.
    pub(crate) fn push(&mut self, frame: Frame) -> Result<Option<Invoke>, ConnectionError> {
        let stream = frame.id.stream;
        if !self.pending.contains_key(&stream) && self.pending.len() >= self.limit {
            return Err(ConnectionError::TooManyPendingInvokes { limit: self.limit });
        }
        let entry = self.pending.entry(stream).or_insert_with(|| Pending {
            assembler: PacketAssembler::for_stream(stream, self.max_packet_size),
            metadata: Metadata::new(),
            metadata_cost: 0,
        });
        let before = entry.held();
        if frame.kind == Kind::INVOKE_METADATA {
            let size = entry.assembler.buffered() as u64 + frame.data.len() as u64;
            if size > self.max_metadata_size as u64 {
                return Err(ConnectionError::MetadataTooLarge {
                    stream,
                    limit: self.max_metadata_size,
                });
            }
        }
        let packet = entry.assembler.push(frame);
        let after = entry.held();
        self.held = self.held - before + after;
        let Some(packet) = packet? else {
            return Ok(None);
        };
        match packet.kind {
            Kind::INVOKE_METADATA => {
                // The last InvokeMetadata replaces earlier ones.
                let metadata = decode_metadata(&packet.data)
                    .map_err(|source| ConnectionError::InvalidMetadata { stream, source })?;
                let cost = metadata_cost(&metadata);
                // Many tiny entries cost far more parsed than on the wire.
                if cost > self.max_metadata_size {
                    return Err(ConnectionError::MetadataTooLarge {
                        stream,
                        limit: self.max_metadata_size,
                    });
                }
                self.held = self.held - entry.metadata_cost + cost;
                entry.metadata = metadata;
                entry.metadata_cost = cost;
                Ok(None)
            }
            _ => {
                let (metadata, cost) = self
                    .pending
                    .remove(&stream)
                    .map(|p| (p.metadata, p.metadata_cost))
                    .unwrap_or_default();
                self.held -= cost;
                Ok(Some(Invoke {
                    stream,
                    rpc: packet.data,
                    metadata,
                }))
            }
        }
    }

    /// The peer ended `stream` before its Invoke completed.
    pub(crate) fn forget(&mut self, stream: u64) {
        if let Some(p) = self.pending.remove(&stream) {
            self.held -= p.held();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drpc_wire::{Id, WireError, encode_metadata};

    fn frame(stream: u64, message: u64, kind: Kind, done: bool, data: &[u8]) -> Frame {
        Frame {
            id: Id::new(stream, message),
            kind,
            done,
            control: false,
            data: Bytes::copy_from_slice(data),
        }
    }

    fn md(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_metadata(&mut buf, pairs.iter().copied());
        buf
    }

    #[test]
    fn invoke_with_metadata_and_split_name() {
        let mut p = PendingInvokes::new(8, 1 << 20, 1 << 20);
        let m = md(&[("k", "v")]);
        assert!(matches!(
            p.push(frame(3, 1, Kind::INVOKE_METADATA, true, &m)),
            Ok(None)
        ));
        assert!(matches!(
            p.push(frame(3, 2, Kind::INVOKE, false, b"/s.S/")),
            Ok(None)
        ));
        let invoke = p
            .push(frame(3, 2, Kind::INVOKE, true, b"Unary"))
            .expect("valid")
            .expect("complete");
        assert_eq!(invoke.stream, 3);
        assert_eq!(&invoke.rpc[..], b"/s.S/Unary");
        assert_eq!(invoke.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn metadata_of_another_stream_is_not_attached() {
        let mut p = PendingInvokes::new(8, 1 << 20, 1 << 20);
        let m = md(&[("k", "v")]);
        assert!(matches!(
            p.push(frame(1, 1, Kind::INVOKE_METADATA, true, &m)),
            Ok(None)
        ));
        let invoke = p
            .push(frame(2, 1, Kind::INVOKE, true, b"/a/b"))
            .expect("ok")
            .expect("done");
        assert!(invoke.metadata.is_empty());
        p.forget(1);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn last_metadata_replaces_earlier() {
        let mut p = PendingInvokes::new(8, 1 << 20, 1 << 20);
        assert!(
            p.push(frame(1, 1, Kind::INVOKE_METADATA, true, &md(&[("a", "1")])))
                .is_ok()
        );
        assert!(
            p.push(frame(1, 2, Kind::INVOKE_METADATA, true, &md(&[("b", "2")])))
                .is_ok()
        );
        let invoke = p
            .push(frame(1, 3, Kind::INVOKE, true, b"/a/b"))
            .expect("ok")
            .expect("done");
        assert_eq!(invoke.metadata.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn holdings_are_counted_and_metadata_is_bounded() {
        let mut p = PendingInvokes::new(8, 1 << 20, 128);
        let m = md(&[("key", "value")]);
        assert!(p.push(frame(1, 1, Kind::INVOKE_METADATA, true, &m)).is_ok());
        let cost = 3 + 5 + METADATA_ENTRY_COST;
        assert_eq!(p.held(), cost);
        assert!(p.push(frame(1, 2, Kind::INVOKE, false, b"/s.S/")).is_ok());
        assert_eq!(p.held(), cost + 5, "the partial name counts");
        assert!(p.push(frame(2, 1, Kind::INVOKE, false, b"/x")).is_ok());
        assert_eq!(p.held(), cost + 7);
        let invoke = p
            .push(frame(1, 2, Kind::INVOKE, true, b"M"))
            .expect("ok")
            .expect("done");
        assert_eq!(invoke.cost(), 6 + cost);
        assert_eq!(p.held(), 2, "stream 2's partial name");
        p.forget(2);
        assert_eq!(p.held(), 0);
        // Metadata whose parsed size is over the limit ends the connection.
        let tiny: Vec<(String, String)> = (0..2).map(|i| (i.to_string(), String::new())).collect();
        let pairs: Vec<(&str, &str)> = tiny.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut q = PendingInvokes::new(8, 1 << 20, 150);
        assert!(matches!(
            q.push(frame(1, 1, Kind::INVOKE_METADATA, true, &md(&pairs))),
            Err(ConnectionError::MetadataTooLarge {
                stream: 1,
                limit: 150
            })
        ));
        // Metadata over the limit on the wire ends it before it is kept.
        let big = vec![b'x'; 70];
        assert!(
            p.push(frame(3, 1, Kind::INVOKE_METADATA, false, &big))
                .is_ok()
        );
        assert!(matches!(
            p.push(frame(3, 1, Kind::INVOKE_METADATA, true, &big)),
            Err(ConnectionError::MetadataTooLarge {
                stream: 3,
                limit: 128
            })
        ));
    }

    #[test]
    fn errors_are_connection_fatal() {
        let mut p = PendingInvokes::new(8, 1 << 20, 1 << 20);
        assert!(matches!(
            p.push(frame(1, 1, Kind::INVOKE_METADATA, true, &[0x0b])),
            Err(ConnectionError::InvalidMetadata { stream: 1, .. })
        ));
        assert!(matches!(
            p.push(frame(2, 0, Kind::INVOKE, true, b"/a/b")),
            Err(ConnectionError::Wire(WireError::MessageIdRegression {
                stream: 2,
                got: 0,
                ..
            }))
        ));
        let mut p = PendingInvokes::new(2, 1 << 20, 1 << 20);
        assert!(p.push(frame(1, 1, Kind::INVOKE, false, b"/")).is_ok());
        assert!(p.push(frame(2, 1, Kind::INVOKE, false, b"/")).is_ok());
        assert!(matches!(
            p.push(frame(3, 1, Kind::INVOKE, false, b"/")),
            Err(ConnectionError::TooManyPendingInvokes { limit: 2 })
        ));
        let mut p = PendingInvokes::new(2, 4, 4);
        assert!(matches!(
            p.push(frame(1, 1, Kind::INVOKE, true, b"/a/b/c")),
            Err(ConnectionError::Wire(WireError::DataOverflow { len: 6 }))
        ));
    }
}
