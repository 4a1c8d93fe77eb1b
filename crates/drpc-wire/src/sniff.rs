//! Telling DRPC from other protocols by a connection's first bytes.
//!
//! A DRPC connection starts with a frame header whose kind is one of the
//! few DRPC kinds; the texts and records other protocols start with (an
//! HTTP/2 preface, an HTTP/1 request line, a TLS record) all begin with a
//! byte that is no DRPC kind, so a server can tell them apart from the
//! first bytes without ever waiting on a real DRPC client. The reference
//! implementation's `drpcmigrate` header, [`MIGRATION_HEADER`], which Go
//! clients of a shared port send before their first frame, is recognized
//! too.

/// The header a Go client of a `drpcmigrate` listener sends before its
/// first frame (`drpcmigrate.DRPCHeader`).
pub const MIGRATION_HEADER: &[u8; 8] = b"DRPC!!!1";

/// What a connection's first bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// DRPC frames (no header).
    Drpc,
    /// The migration header, then DRPC frames: the header's 8 bytes are to
    /// be skipped.
    MigrationHeader,
    /// Another protocol.
    Foreign(Foreign),
    /// Too few bytes to tell: they are a prefix of a known signature.
    NeedMore,
}

/// A protocol other than DRPC that a DRPC port meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Foreign {
    /// The HTTP/2 connection preface: gRPC, most likely.
    Http2,
    /// An HTTP/1 request line.
    Http1,
    /// A TLS handshake record.
    Tls,
}

impl Foreign {
    /// What was seen, for a log line and the connection's error.
    pub fn description(self) -> &'static str {
        match self {
            Foreign::Http2 => "an HTTP/2 connection preface (gRPC?)",
            Foreign::Http1 => "an HTTP/1 request",
            Foreign::Tls => "a TLS handshake",
        }
    }
}

/// The signatures of other protocols a DRPC port meets, with what they are.
const FOREIGN: &[(&[u8], Foreign)] = &[
    (b"PRI * HTTP/2.0", Foreign::Http2),
    (b"GET ", Foreign::Http1),
    (b"POST ", Foreign::Http1),
    (b"PUT ", Foreign::Http1),
    (b"HEAD ", Foreign::Http1),
    (b"DELETE ", Foreign::Http1),
    (b"OPTIONS ", Foreign::Http1),
    (b"PATCH ", Foreign::Http1),
    (b"CONNECT ", Foreign::Http1),
    (b"TRACE ", Foreign::Http1),
];

/// What a TLS handshake record starts with: content type 22, then a major
/// version of 3 (every SSL 3 and TLS version).
const TLS_HANDSHAKE: [u8; 2] = [0x16, 0x03];

/// Classifies the first bytes a server read from a connection (all of
/// them so far). Returns [`Sniffed::NeedMore`] only while `prefix` could
/// still become the migration header or a foreign signature, which a DRPC
/// client's first frame never can: its first byte holds a DRPC kind.
pub fn sniff(prefix: &[u8]) -> Sniffed {
    if prefix.is_empty() {
        return Sniffed::NeedMore;
    }
    let matches = |signature: &[u8]| {
        if prefix.len() >= signature.len() {
            Some(prefix.starts_with(signature))
        } else if signature.starts_with(prefix) {
            None
        } else {
            Some(false)
        }
    };
    match matches(MIGRATION_HEADER) {
        Some(true) => return Sniffed::MigrationHeader,
        None => return Sniffed::NeedMore,
        Some(false) => {}
    }
    match matches(&TLS_HANDSHAKE) {
        Some(true) => return Sniffed::Foreign(Foreign::Tls),
        None => return Sniffed::NeedMore,
        Some(false) => {}
    }
    for (signature, what) in FOREIGN {
        match matches(signature) {
            Some(true) => return Sniffed::Foreign(*what),
            None => return Sniffed::NeedMore,
            Some(false) => {}
        }
    }
    Sniffed::Drpc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Id, Kind, append_frame};

    #[test]
    fn drpc_frames_are_drpc_from_their_first_byte() {
        for kind in [
            Kind::INVOKE,
            Kind::INVOKE_METADATA,
            Kind::MESSAGE,
            Kind::CANCEL,
        ] {
            let mut buf = Vec::new();
            append_frame(&mut buf, Id::new(1, 1), kind, true, false, b"/s.S/M");
            assert_eq!(sniff(&buf[..1]), Sniffed::Drpc, "{kind}");
            assert_eq!(sniff(&buf), Sniffed::Drpc, "{kind}");
        }
    }

    #[test]
    fn no_signature_starts_with_a_drpc_header_byte() {
        // Every header byte a DRPC frame of a known kind can start with.
        for kind in 1..=9u8 {
            for flags in [0x00, 0x01, 0x80, 0x81] {
                let byte = (kind << 1) | flags;
                assert_eq!(sniff(&[byte]), Sniffed::Drpc, "{byte:#04x}");
            }
        }
    }

    #[test]
    fn foreign_protocols_are_named_once_their_signature_is_complete() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        for n in 1..14 {
            assert_eq!(sniff(&h2[..n]), Sniffed::NeedMore, "{n} bytes");
        }
        assert_eq!(sniff(h2), Sniffed::Foreign(Foreign::Http2));
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\n"),
            Sniffed::Foreign(Foreign::Http1)
        );
        assert_eq!(sniff(b"POS"), Sniffed::NeedMore);
        assert_eq!(
            sniff(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Sniffed::Foreign(Foreign::Tls)
        );
        assert_eq!(sniff(&[0x16]), Sniffed::NeedMore);
        // A prefix that stops matching is DRPC's to judge.
        assert_eq!(sniff(b"GEX"), Sniffed::Drpc);
    }

    #[test]
    fn the_migration_header_is_recognized() {
        for n in 1..8 {
            assert_eq!(sniff(&MIGRATION_HEADER[..n]), Sniffed::NeedMore);
        }
        let mut buf = MIGRATION_HEADER.to_vec();
        assert_eq!(sniff(&buf), Sniffed::MigrationHeader);
        append_frame(
            &mut buf,
            Id::new(1, 1),
            Kind::INVOKE,
            true,
            false,
            b"/s.S/M",
        );
        assert_eq!(sniff(&buf), Sniffed::MigrationHeader);
        assert_eq!(sniff(b"DRPC!!!2"), Sniffed::Drpc);
    }
}
