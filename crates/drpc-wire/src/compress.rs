//! Per-stream message compression, as CockroachDB's fork does it
//! (mux-fork-2026.md §4).
//!
//! A client asks for compression on one stream with the InvokeMetadata
//! key [`COMPRESSION_METADATA_KEY`], valued with the algorithm's name
//! ([`Compression::as_metadata_value`]). From then on every Message payload
//! of that stream, in both directions, is one compressed block: no flag, no
//! extra framing, whatever the message's size. Invoke, InvokeMetadata,
//! Error, Cancel, Close, CloseSend, WindowUpdate and the flow-control
//! negotiation are never compressed. Compression happens before splitting,
//! so frames carry slices of the compressed payload, and size limits and
//! flow control count compressed bytes.
//!
//! The server does not answer the request: a server that does not know
//! the value refuses the stream, and a stock server (which knows no
//! compression at all) would hand the compressed bytes to its decoder.
//! A client therefore compresses only toward servers configured to accept
//! it, or that said they do: a server of this implementation lists what
//! it decompresses ([`CompressionSet`]) in its acceptance of a stream's
//! flow-control offer ([`FlowNegotiation::Accept`](crate::FlowNegotiation::Accept)),
//! which a client may wait for before it compresses the calls that follow.

use std::cell::RefCell;
use std::fmt;

/// The InvokeMetadata key with which a client asks for compression on a
/// stream (the fork's `drpc-compression`). A server removes it from the
/// metadata its handler sees; a client removes any value the application
/// put there and sets its own only when it compresses the stream.
pub const COMPRESSION_METADATA_KEY: &str = "drpc-compression";

/// The metadata value of [`Compression::Snappy`].
const SNAPPY: &str = "snappy";

/// The metadata value of `Compression::MinLzFastest`.
#[cfg(feature = "minlz")]
const MINLZ_FASTEST: &str = "minlz-fastest";

/// `minlz-fastest` encodes messages of at most this many bytes as Snappy
/// blocks (mux-fork-2026.md §4).
#[cfg(feature = "minlz")]
const MINLZ_SMALL: usize = 4 << 10;

/// MinLZ's largest block: larger messages go as Snappy blocks.
#[cfg(feature = "minlz")]
const MINLZ_MAX_BLOCK: usize = 8 << 20;

/// How much of an unknown value is quoted in an error text.
const MAX_QUOTED_VALUE: usize = 64;

/// A compression algorithm for the Message payloads of a stream.
///
/// `snappy` always; the fork's `minlz-fastest` with this crate's `minlz`
/// feature (through the `minlz` crate). Without the feature a peer asking
/// for `minlz-fastest` is refused, as for any value this side does not
/// know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// The Snappy **block** format (Go's `snappy.Encode`/`snappy.Decode`: a
    /// varint of the uncompressed length, then the elements), not the
    /// framed `sNaPpY` stream format. An empty message becomes the single
    /// byte `00`.
    Snappy,
    /// The fork's `minlz-fastest`: a MinLZ block (specification v1.0) at
    /// its fastest level, except that messages of at most 4 KiB or over
    /// 8 MiB (MinLZ's largest block) are Snappy blocks. The decoder tells
    /// them apart by the first byte: `00` starts a MinLZ block, anything
    /// else is Snappy (an empty message is `00` either way).
    ///
    /// Only with the `minlz` feature. The MinLZ encoder's bytes are the
    /// `minlz` crate's, not the Go reference's (any valid block decodes);
    /// this implementation has not been checked against the fork's Go
    /// peers.
    #[cfg(feature = "minlz")]
    MinLzFastest,
}

impl Compression {
    /// The value of [`COMPRESSION_METADATA_KEY`] that asks for it:
    /// `snappy`.
    pub fn as_metadata_value(&self) -> &'static str {
        match self {
            Compression::Snappy => SNAPPY,
            #[cfg(feature = "minlz")]
            Compression::MinLzFastest => MINLZ_FASTEST,
        }
    }

    /// The algorithm a metadata value names, exactly (the fork compares the
    /// value as is: `Snappy` is not `snappy`); an error naming the value
    /// for any other, whose text is the fork's.
    pub fn from_metadata_value(value: &str) -> Result<Compression, UnsupportedCompression> {
        match value {
            SNAPPY => Ok(Compression::Snappy),
            #[cfg(feature = "minlz")]
            MINLZ_FASTEST => Ok(Compression::MinLzFastest),
            other => Err(UnsupportedCompression::new(other)),
        }
    }

    /// Appends the compressed form of `data` to `out`, as one block.
    ///
    /// Fails only for a message Snappy cannot represent (4 GiB or more),
    /// which is above every message size limit.
    pub fn compress(&self, data: &[u8], out: &mut Vec<u8>) -> Result<(), CompressionError> {
        match self {
            Compression::Snappy => snappy_compress(data, out),
            #[cfg(feature = "minlz")]
            Compression::MinLzFastest => minlz_compress(data, out),
        }
    }

    /// The largest compressed size of a message of `len` bytes (`None`
    /// when it cannot be compressed at all).
    pub fn max_compressed_len(&self, len: usize) -> Option<usize> {
        let snappy = match snap::raw::max_compress_len(len) {
            0 => None,
            n => Some(n),
        };
        match self {
            Compression::Snappy => snappy,
            #[cfg(feature = "minlz")]
            Compression::MinLzFastest if minlz_as_snappy(len) => snappy,
            #[cfg(feature = "minlz")]
            Compression::MinLzFastest => minlz::minlz::max_compressed_len(len),
        }
    }

    /// Decompresses one block, refusing one that declares more than
    /// `max_len` bytes before anything is allocated for it: a small
    /// payload declaring gigabytes (a decompression bomb) costs nothing.
    pub fn decompress(&self, data: &[u8], max_len: usize) -> Result<Vec<u8>, CompressionError> {
        match self {
            Compression::Snappy => snappy_decompress(data, max_len),
            #[cfg(feature = "minlz")]
            Compression::MinLzFastest => minlz_decompress(data, max_len),
        }
    }
}

impl Compression {
    /// The compression's bit in a [`CompressionSet`].
    const fn bit(self) -> u64 {
        match self {
            Compression::Snappy => 1,
            #[cfg(feature = "minlz")]
            Compression::MinLzFastest => 2,
        }
    }
}

/// The compressions a peer decompresses, as a server of this
/// implementation lists them when it accepts a stream's flow-control offer
/// (a varint of bits: 1 for `snappy`, 2 for `minlz-fastest`; bits this
/// side does not know are kept and ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CompressionSet(u64);

impl CompressionSet {
    /// No compression: what a peer that says nothing accepts.
    pub const EMPTY: CompressionSet = CompressionSet(0);

    /// What this side decompresses: `snappy`, and `minlz-fastest` with the
    /// `minlz` feature.
    pub fn supported() -> CompressionSet {
        let set = CompressionSet::EMPTY.with(Compression::Snappy);
        #[cfg(feature = "minlz")]
        let set = set.with(Compression::MinLzFastest);
        set
    }

    /// The set with `compression` added.
    pub const fn with(self, compression: Compression) -> CompressionSet {
        CompressionSet(self.0 | compression.bit())
    }

    /// Whether `compression` is in the set.
    pub fn contains(self, compression: Compression) -> bool {
        self.0 & compression.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set as its wire bits.
    pub fn bits(self) -> u64 {
        self.0
    }

    /// The set of wire `bits`, unknown ones included.
    pub fn from_bits(bits: u64) -> CompressionSet {
        CompressionSet(bits)
    }
}

/// The algorithm's metadata value (`snappy`).
impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_metadata_value())
    }
}

thread_local! {
    /// Snappy's encoder keeps hash tables worth reusing across messages.
    static SNAPPY_ENCODER: RefCell<snap::raw::Encoder> = RefCell::new(snap::raw::Encoder::new());
}

fn snappy_compress(data: &[u8], out: &mut Vec<u8>) -> Result<(), CompressionError> {
    let max = match snap::raw::max_compress_len(data.len()) {
        0 => {
            return Err(CompressionError::TooLarge {
                len: data.len() as u64,
                limit: u32::MAX as usize,
            });
        }
        n => n,
    };
    let start = out.len();
    out.resize(start + max, 0);
    let written = SNAPPY_ENCODER.with(|encoder| match encoder.try_borrow_mut() {
        Ok(mut encoder) => encoder.compress(data, &mut out[start..]),
        // Only if a compression on this thread were re-entered.
        Err(_) => snap::raw::Encoder::new().compress(data, &mut out[start..]),
    });
    match written {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(CompressionError::Corrupt(e.to_string()))
        }
    }
}

fn snappy_decompress(data: &[u8], max_len: usize) -> Result<Vec<u8>, CompressionError> {
    // Go's decoder finds an empty input corrupt (no length); so does this.
    if data.is_empty() {
        return Err(CompressionError::Corrupt(
            "snappy: corrupt input (empty)".to_owned(),
        ));
    }
    let len =
        snap::raw::decompress_len(data).map_err(|e| CompressionError::Corrupt(e.to_string()))?;
    if len > max_len {
        return Err(CompressionError::TooLarge {
            len: len as u64,
            limit: max_len,
        });
    }
    let mut out = vec![0; len];
    match snap::raw::Decoder::new().decompress(data, &mut out) {
        Ok(n) if n == len => Ok(out),
        Ok(n) => Err(CompressionError::Corrupt(format!(
            "snappy: corrupt input (decompressed {n} bytes, {len} declared)"
        ))),
        Err(e) => Err(CompressionError::Corrupt(e.to_string())),
    }
}

/// Whether `minlz-fastest` sends a message of `len` bytes as a Snappy block.
#[cfg(feature = "minlz")]
fn minlz_as_snappy(len: usize) -> bool {
    len <= MINLZ_SMALL || len > MINLZ_MAX_BLOCK
}

#[cfg(feature = "minlz")]
fn minlz_compress(data: &[u8], out: &mut Vec<u8>) -> Result<(), CompressionError> {
    use minlz::minlz::{Level, compress_into};
    if minlz_as_snappy(data.len()) {
        return snappy_compress(data, out);
    }
    // `compress_into` replaces what its buffer held.
    let done = if out.is_empty() {
        compress_into(out, data, Level::Fastest)
    } else {
        let mut block = Vec::new();
        compress_into(&mut block, data, Level::Fastest).map(|()| out.extend_from_slice(&block))
    };
    done.map_err(|e| CompressionError::Corrupt(format!("minlz: {e}")))
}

#[cfg(feature = "minlz")]
fn minlz_decompress(data: &[u8], max_len: usize) -> Result<Vec<u8>, CompressionError> {
    // A non-zero first byte is a Snappy block (MinLZ specification §1.0).
    if data.first() != Some(&0) {
        return snappy_decompress(data, max_len);
    }
    let corrupt = |e: minlz::Error| CompressionError::Corrupt(format!("minlz: {e}"));
    let len = minlz::minlz::decompressed_len(data).map_err(corrupt)?;
    if len > max_len {
        return Err(CompressionError::TooLarge {
            len: len as u64,
            limit: max_len,
        });
    }
    let mut out = vec![0; len];
    minlz::minlz::decompress_into(&mut out, data).map_err(corrupt)?;
    Ok(out)
}

/// Why a payload could not be compressed or decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompressionError {
    /// The payload is not a valid block of the algorithm; the text says
    /// why, after the algorithm's name, as Go's decoders do (`snappy:
    /// corrupt input …`).
    #[error("{0}")]
    Corrupt(String),
    /// The message is (or declares it would be) larger than allowed: on
    /// receipt, a block whose declared length is over the receiver's
    /// message size limit, refused before allocating.
    #[error("decompressed length {len} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The length declared, or the message's length.
        len: u64,
        /// The limit.
        limit: usize,
    },
}

/// A compression a peer asked for that this side does not implement.
///
/// `Display` is the fork's text: `protocol error: unsupported compression:
/// "<name>"` (the name quoted as Go's `%q` does for printable text,
/// cut after 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error: unsupported compression: {quoted}")]
pub struct UnsupportedCompression {
    name: String,
    quoted: String,
}

impl UnsupportedCompression {
    fn new(name: &str) -> UnsupportedCompression {
        UnsupportedCompression {
            name: name.to_owned(),
            quoted: quote(name),
        }
    }

    /// The value the peer sent.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `value` in double quotes with `"`, `\` and non-printable characters
/// escaped, at most [`MAX_QUOTED_VALUE`] bytes of it (then `...`).
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_QUOTED_VALUE) + 2);
    out.push('"');
    let mut taken = 0;
    for c in value.chars() {
        taken += c.len_utf8();
        if taken > MAX_QUOTED_VALUE {
            out.push_str("\"...");
            return out;
        }
        match c {
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            '\'' => out.push('\''),
            c => out.extend(c.escape_debug()),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Id, Kind, append_packet, encode_metadata};

    fn compressed(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Compression::Snappy
            .compress(data, &mut out)
            .expect("compresses");
        out
    }

    /// mux-fork-2026.md §4's example, byte for byte.
    #[test]
    fn metadata_entry_and_invoke_metadata_packet() {
        let mut entry = Vec::new();
        encode_metadata(
            &mut entry,
            [(
                COMPRESSION_METADATA_KEY,
                Compression::Snappy.as_metadata_value(),
            )],
        );
        let mut want = vec![0x0a, 0x1a, 0x0a, 0x10];
        want.extend_from_slice(b"drpc-compression");
        want.extend_from_slice(&[0x12, 0x06]);
        want.extend_from_slice(b"snappy");
        assert_eq!(entry.len(), 28);
        assert_eq!(entry, want);

        let mut packet = Vec::new();
        append_packet(
            &mut packet,
            Id::new(1, 1),
            Kind::INVOKE_METADATA,
            false,
            &entry,
            0,
        );
        let mut want_packet = vec![0x0f, 0x01, 0x01, 0x1c];
        want_packet.extend_from_slice(&want);
        assert_eq!(packet, want_packet);
    }

    #[test]
    fn metadata_values() {
        assert_eq!(
            Compression::from_metadata_value("snappy"),
            Ok(Compression::Snappy)
        );
        assert_eq!(Compression::Snappy.to_string(), "snappy");
        let err = Compression::from_metadata_value("zstd").expect_err("unknown");
        assert_eq!(err.name(), "zstd");
        assert_eq!(
            err.to_string(),
            r#"protocol error: unsupported compression: "zstd""#
        );
        #[cfg(not(feature = "minlz"))]
        assert!(Compression::from_metadata_value("minlz-fastest").is_err());
        #[cfg(feature = "minlz")]
        assert_eq!(
            Compression::from_metadata_value("minlz-fastest"),
            Ok(Compression::MinLzFastest)
        );
        for (value, text) in [
            ("Snappy", r#""Snappy""#),
            ("", r#""""#),
            ("a\"b\\c\n\u{7}", r#""a\"b\\c\n\a""#),
            ("é", r#""é""#),
        ] {
            let err = Compression::from_metadata_value(value).expect_err("unknown");
            assert_eq!(
                err.to_string(),
                format!("protocol error: unsupported compression: {text}")
            );
        }
        let long = "x".repeat(1000);
        let text = Compression::from_metadata_value(&long)
            .expect_err("unknown")
            .to_string();
        assert!(text.len() < 140, "{text}");
        assert!(text.ends_with("\"..."), "{text}");
    }

    /// Go's `snappy.Encode` of these inputs (literals only below 17 bytes;
    /// a run compresses to a literal and copies).
    #[test]
    fn snappy_block_format() {
        assert_eq!(compressed(b""), [0x00]);
        assert_eq!(compressed(b"a"), [0x01, 0x00, b'a']);
        let mut hello = vec![0x05, 0x10];
        hello.extend_from_slice(b"hello");
        assert_eq!(compressed(b"hello"), hello);
        let run = vec![b'a'; 100];
        let c = compressed(&run);
        assert!(c.len() < 10, "{c:?}");
        assert_eq!(c[0], 100, "the varint length first");
        assert_eq!(
            Compression::Snappy.decompress(&c, 100).expect("decodes"),
            run
        );
        // Appends after what `out` holds.
        let mut out = b"head".to_vec();
        Compression::Snappy
            .compress(b"a", &mut out)
            .expect("compresses");
        assert_eq!(out, b"head\x01\x00a");
    }

    #[test]
    fn round_trips() {
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .copied()
            .cycle()
            .take(1 << 20)
            .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..100_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        for data in [&b""[..], b"x", &text, &random] {
            let c = compressed(data);
            assert!(
                c.len()
                    <= Compression::Snappy
                        .max_compressed_len(data.len())
                        .expect("fits")
            );
            let back = Compression::Snappy
                .decompress(&c, data.len())
                .expect("decodes");
            assert_eq!(back, data);
        }
        assert!(compressed(&text).len() < text.len() / 10);
    }

    #[test]
    fn corrupt_payloads_are_errors() {
        let good = compressed(b"hello hello hello hello hello");
        for bad in [
            &[][..],
            &[0x80][..],                   // an unfinished length
            &[0x05, 0x10, b'h'][..],       // a literal running past the end
            &[0x05, 0x01, 0x05][..],       // a copy before the start
            &[0x02, 0x00, b'a'][..],       // fewer bytes than declared
            &[0x01, 0x04, b'a', b'b'][..], // more bytes than declared
            &good[..good.len() - 1],
        ] {
            match Compression::Snappy.decompress(bad, 1 << 20) {
                Err(CompressionError::Corrupt(_)) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    /// A few bytes declaring 4 GiB − 1 are refused from the header alone.
    #[test]
    fn a_bomb_is_refused_from_its_header() {
        let bomb = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert_eq!(
            Compression::Snappy.decompress(&bomb, 4 << 20),
            Err(CompressionError::TooLarge {
                len: u32::MAX as u64,
                limit: 4 << 20
            })
        );
        let c = compressed(&[7; 1000]);
        assert_eq!(
            Compression::Snappy.decompress(&c, 999),
            Err(CompressionError::TooLarge {
                len: 1000,
                limit: 999
            })
        );
        assert_eq!(
            Compression::Snappy.decompress(&c, 1000).map(|v| v.len()),
            Ok(1000)
        );
    }

    #[cfg(feature = "minlz")]
    #[test]
    fn minlz_fastest() {
        let c = Compression::MinLzFastest;
        assert_eq!(c.as_metadata_value(), "minlz-fastest");
        let compress = |data: &[u8]| {
            let mut out = Vec::new();
            c.compress(data, &mut out).expect("compresses");
            out
        };
        // Small messages are Snappy blocks, byte for byte.
        assert_eq!(compress(b""), [0x00]);
        assert_eq!(compress(b"hello"), compressed(b"hello"));
        let small = vec![b'a'; 4096];
        assert_eq!(compress(&small), compressed(&small));
        // Larger ones are MinLZ blocks (first byte 00), smaller than Snappy's
        // here.
        let text: Vec<u8> = b"minlz or snappy, which is it? "
            .iter()
            .copied()
            .cycle()
            .take(1 << 20)
            .collect();
        let block = compress(&text);
        assert_eq!(block[0], 0x00);
        assert!(block.len() < text.len() / 10);
        assert!(block.len() <= c.max_compressed_len(text.len()).expect("fits"));
        assert_eq!(c.decompress(&block, 1 << 20).expect("decodes"), text);
        // The decoder takes Snappy blocks of any size too.
        assert_eq!(
            c.decompress(&compressed(&text), 1 << 20).expect("decodes"),
            text
        );
        assert_eq!(c.decompress(&[0x00], 0).expect("decodes"), b"");
        // Appends after what `out` holds, as Snappy does.
        let mut out = b"head".to_vec();
        c.compress(&text, &mut out).expect("compresses");
        assert_eq!(&out[4..], &block[..]);
        // Limits, checked before allocating; corrupt blocks.
        assert!(matches!(
            c.decompress(&block, (1 << 20) - 1),
            Err(CompressionError::TooLarge { len, .. }) if len == 1 << 20
        ));
        for bad in [&[][..], &[0x00, 0x80][..], &block[..block.len() / 2]] {
            assert!(
                matches!(
                    c.decompress(bad, 1 << 20),
                    Err(CompressionError::Corrupt(_))
                ),
                "{bad:?}"
            );
        }
    }
}
