//! Unsigned LEB128 varints with exactly Go's accept and reject rules
//! (protocol.md §2).

use bytes::BufMut;

use crate::WireError;

/// The longest varint the decoder reads, in bytes.
pub const MAX_VARINT_LEN: usize = 10;

/// Decodes a varint from the front of `buf`.
///
/// Returns `Ok(Some((value, consumed)))`, `Ok(None)` when `buf` ends before
/// the varint does (wait for more bytes), or [`WireError::VarintTooLong`]
/// when the 10th byte still has its continuation bit. As in Go, bits beyond
/// 64 are dropped and non-minimal encodings are accepted.
#[inline]
pub fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, WireError> {
    // Fast path: one byte covers every id and length below 128.
    match buf.first() {
        None => return Ok(None),
        Some(&b) if b < 0x80 => return Ok(Some((u64::from(b), 1))),
        Some(_) => {}
    }
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().take(MAX_VARINT_LEN).enumerate() {
        // At i == 9 the shift is 63: everything but the lowest bit of the
        // byte falls off the top, exactly as Go's shift does.
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        Err(WireError::VarintTooLong)
    } else {
        Ok(None)
    }
}

/// Appends the minimal encoding of `value` to `buf` (1 to 10 bytes).
#[inline]
pub fn append_varint<B: BufMut + ?Sized>(buf: &mut B, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// The number of bytes [`append_varint`] writes for `value`.
#[inline]
pub const fn varint_len(value: u64) -> usize {
    // (9 * bitlen + 64) / 64 as in Go's test, with bitlen(0) counted as 1 byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        append_varint(&mut out, v);
        out
    }

    #[test]
    fn protocol_table() {
        let table: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (4464, &[0xf0, 0x22]),
            (16384, &[0x80, 0x80, 0x01]),
            (65536, &[0x80, 0x80, 0x04]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for &(value, bytes) in table {
            assert_eq!(enc(value), bytes, "encoding {value}");
            assert_eq!(read_varint(bytes), Ok(Some((value, bytes.len()))));
            assert_eq!(varint_len(value), bytes.len());
        }
    }

    #[test]
    fn go_accept_and_reject_rules() {
        // The 10th byte's high bits are dropped.
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert_eq!(read_varint(&overflow), Ok(Some((u64::MAX, 10))));
        // Non-minimal forms are accepted.
        assert_eq!(read_varint(&[0x80, 0x00]), Ok(Some((0, 2))));
        // Incomplete is not an error.
        assert_eq!(read_varint(&[]), Ok(None));
        assert_eq!(read_varint(&[0x80; 9]), Ok(None));
        // A 10th byte with its continuation bit is.
        assert_eq!(read_varint(&[0x80; 10]), Err(WireError::VarintTooLong));
        assert_eq!(read_varint(&[0xff; 11]), Err(WireError::VarintTooLong));
    }

    #[test]
    fn lengths_follow_go_formula() {
        let mut values = vec![0u64, 1, 2, u64::MAX, (1 << 63) + 1];
        for k in 1..10u32 {
            let p = 1u64.checked_shl(7 * k).unwrap_or(u64::MAX);
            values.extend([p - 1, p, p.saturating_add(1)]);
        }
        for i in 1..64 {
            values.push((1u64 << i) - 1);
        }
        for v in values {
            let bitlen = 64 - v.leading_zeros() as usize;
            assert_eq!(enc(v).len(), (9 * bitlen + 64) / 64, "value {v}");
            assert_eq!(read_varint(&enc(v)), Ok(Some((v, enc(v).len()))));
        }
    }
}
