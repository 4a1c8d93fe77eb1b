//! The InvokeMetadata payload (protocol.md §9.2).

use std::collections::BTreeMap;

use bytes::BufMut;

use crate::varint::{append_varint, read_varint, varint_len};

/// Request metadata: string keys to string values.
///
/// A sorted map, so that encoding is deterministic (Go's order is random,
/// and receivers must not depend on it).
pub type Metadata = BTreeMap<String, String>;

/// A metadata payload that does not follow the strict encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The bytes are not a sequence of well-formed entries; the text is
    /// Go's.
    #[error("invalid data")]
    InvalidData,
    /// A key or value is not UTF-8. Go accepts any bytes; Rust metadata is
    /// `String`, so such a payload is refused rather than altered.
    #[error("invalid data: metadata is not UTF-8")]
    NotUtf8,
}

/// Appends the encoding of `pairs`, one entry per pair, in iteration order.
/// Keys and values are always written, even when empty.
pub fn encode_metadata<'a, B, I>(buf: &mut B, pairs: I)
where
    B: BufMut + ?Sized,
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    for (key, value) in pairs {
        let body_len = 1
            + varint_len(key.len() as u64)
            + key.len()
            + 1
            + varint_len(value.len() as u64)
            + value.len();
        buf.put_u8(0x0a);
        append_varint(buf, body_len as u64);
        buf.put_u8(0x0a);
        append_varint(buf, key.len() as u64);
        buf.put_slice(key.as_bytes());
        buf.put_u8(0x12);
        append_varint(buf, value.len() as u64);
        buf.put_slice(value.as_bytes());
    }
}

/// Decodes a metadata payload strictly: each entry is field 1 holding
/// exactly a key (field 1) then a value (field 2), nothing else, lengths
/// within bounds. The last of duplicate keys wins; an empty payload is an
/// empty map.
pub fn decode_metadata(mut data: &[u8]) -> Result<Metadata, MetadataError> {
    let mut out = Metadata::new();
    while !data.is_empty() {
        let mut body = take_field(&mut data, 0x0a)?;
        let key = take_field(&mut body, 0x0a)?;
        let value = take_field(&mut body, 0x12)?;
        if !body.is_empty() {
            return Err(MetadataError::InvalidData);
        }
        let key = std::str::from_utf8(key).map_err(|_| MetadataError::NotUtf8)?;
        let value = std::str::from_utf8(value).map_err(|_| MetadataError::NotUtf8)?;
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

/// Takes one length-delimited field with the given tag byte off the front
/// of `data`.
fn take_field<'a>(data: &mut &'a [u8], tag: u8) -> Result<&'a [u8], MetadataError> {
    let Some((&first, rest)) = data.split_first() else {
        return Err(MetadataError::InvalidData);
    };
    if first != tag {
        return Err(MetadataError::InvalidData);
    }
    let (len, used) = match read_varint(rest) {
        Ok(Some(v)) => v,
        _ => return Err(MetadataError::InvalidData),
    };
    let rest = &rest[used..];
    if len > rest.len() as u64 {
        return Err(MetadataError::InvalidData);
    }
    let (field, tail) = rest.split_at(len as usize);
    *data = tail;
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_metadata(&mut buf, pairs.iter().copied());
        buf
    }

    #[test]
    fn go_vectors() {
        assert_eq!(
            encode(&[("key", "value")]),
            hex("0a0c0a036b6579120576616c7565")
        );
        assert_eq!(encode(&[("a", "")]), hex("0a050a01611200"));
        assert_eq!(encode(&[("k", "v")]), hex("0a060a016b120176"));
        let md = decode_metadata(&hex("0a090a0474657374120161")).expect("valid");
        assert_eq!(md, Metadata::from([("test".into(), "a".into())]));
    }

    #[test]
    fn empty_is_no_metadata() {
        assert!(encode(&[]).is_empty());
        assert_eq!(decode_metadata(&[]), Ok(Metadata::new()));
    }

    #[test]
    fn entries_parse_in_wire_order_last_duplicate_wins() {
        let buf = encode(&[("key5", "a"), ("key1", "b"), ("key5", "c")]);
        let md = decode_metadata(&buf).expect("valid");
        assert_eq!(md.get("key5").map(String::as_str), Some("c"));
        assert_eq!(md.len(), 2);
    }

    #[test]
    fn strict_decoding() {
        let bad: &[&str] = &[
            "0b",                       // wrong entry tag
            "0a",                       // missing length
            "0a05",                     // truncated body
            "0a030a0161",               // key without value
            "0a0512000a0161",           // value before key
            "0a080a016b1201760800",     // trailing field in body
            "0a060a016b1201",           // body shorter than its length
            "0affffffffffffffffffff01", // varint too long
        ];
        for b in bad {
            assert_eq!(
                decode_metadata(&hex(b)),
                Err(MetadataError::InvalidData),
                "{b}"
            );
        }
        assert_eq!(
            decode_metadata(&hex("0a050a01ff1200")),
            Err(MetadataError::NotUtf8)
        );
    }
}

/// The reserved metadata key carrying a call's remaining time from client
/// to server. A stock Go server sees it as one more metadata pair.
///
/// The value uses gRPC's `grpc-timeout` format: at most 8 ASCII digits
/// followed by a unit, `H` (hours), `M` (minutes), `S` (seconds), `m`
/// (milliseconds), `u` (microseconds) or `n` (nanoseconds), e.g. `250m`.
pub const TIMEOUT_METADATA_KEY: &str = "drpc-timeout";

/// Encodes a remaining time for [`TIMEOUT_METADATA_KEY`], in the finest
/// unit whose value fits in 8 digits, rounded up so that the server never
/// gives up before the client.
pub fn encode_timeout(timeout: std::time::Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    for (unit, per) in [
        ('n', 1u128),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
        ('H', 3_600_000_000_000),
    ] {
        let value = nanos.div_ceil(per);
        if value <= MAX {
            return format!("{value}{unit}");
        }
    }
    format!("{MAX}H")
}

/// Parses a [`TIMEOUT_METADATA_KEY`] value; `None` when malformed.
pub fn parse_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod timeout_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn encodes_in_the_finest_unit_that_fits() {
        assert_eq!(encode_timeout(Duration::from_millis(99)), "99000000n");
        assert_eq!(encode_timeout(Duration::from_millis(100)), "100000u");
        assert_eq!(encode_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(encode_timeout(Duration::from_secs(3600)), "3600000m");
        assert_eq!(
            encode_timeout(Duration::from_secs(86400 * 365)),
            "31536000S"
        );
        assert_eq!(
            encode_timeout(Duration::from_secs(86400 * 3650)),
            "5256000M"
        );
        assert_eq!(encode_timeout(Duration::from_nanos(1_500)), "1500n");
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(7),
            Duration::from_millis(1234),
            Duration::from_secs(5000),
        ] {
            let back = parse_timeout(&encode_timeout(d)).expect("parses");
            assert!(
                back >= d && back - d < Duration::from_secs(60),
                "{d:?} -> {back:?}"
            );
        }
        for bad in ["", "m", "10", "10x", "123456789S", "-1S", "1.5S", "١S"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }
}
