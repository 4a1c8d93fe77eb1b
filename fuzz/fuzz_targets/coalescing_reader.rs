//! Fuzzes the coalescing [`FrameReader`]: whatever the bytes, joining a
//! message's frames changes neither the packets the per-stream assemblers
//! make nor the first error (a `DataOverflow` may report a larger length),
//! nor how reading ends.
//!
//! The first input byte is a seed:
//!
//! * bits 0..=2: the size of the chunks the transport hands out;
//! * bits 3..=4: the maximum packet size (16 B, 256 B, 4 KiB, 64 KiB);
//! * bits 5..=6: the smallest frame that starts a join (0, 1, 8, 64);
//! * bit 7: the transport is pending before every other chunk, and the
//!   read future is dropped whenever it is pending (cancel safety).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/drpc-wire/tests/support/coalesce.rs"]
mod coalesce;

const CHUNKS: [usize; 8] = [1, 2, 3, 7, 16, 64, 1000, usize::MAX];
const MAX_PACKET_SIZES: [usize; 4] = [16, 256, 4096, 64 * 1024];
const JOIN_MINS: [usize; 4] = [0, 1, 8, 64];

fuzz_target!(|input: &[u8]| {
    let Some((&seed, rest)) = input.split_first() else {
        return;
    };
    let chunk = CHUNKS[usize::from(seed & 0x07)];
    let max = MAX_PACKET_SIZES[usize::from((seed >> 3) & 0x03)];
    let min = JOIN_MINS[usize::from((seed >> 5) & 0x03)];
    let stutter = seed & 0x80 != 0;
    let bytes = Bytes::copy_from_slice(rest);
    if let Err(difference) = coalesce::compare(&bytes, &[chunk], max, min, false, stutter) {
        panic!("{difference}");
    }
});
