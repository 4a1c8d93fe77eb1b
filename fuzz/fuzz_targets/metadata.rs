//! Fuzzes [`decode_metadata`]: any input either fails cleanly or decodes
//! to a map whose re-encoding is canonical (no longer than the input,
//! stable when encoded again) and decodes back to the same map.

#![no_main]

use drpc_wire::{Metadata, MetadataError, decode_metadata, encode_metadata};
use libfuzzer_sys::fuzz_target;

fn encode(md: &Metadata) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_metadata(&mut buf, md.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    buf
}

fuzz_target!(|data: &[u8]| {
    let md = match decode_metadata(data) {
        Ok(md) => md,
        Err(MetadataError::InvalidData | MetadataError::NotUtf8) => return,
        Err(e) => panic!("unexpected metadata error: {e}"),
    };
    let encoded = encode(&md);
    // Minimal varints and dropped duplicate keys only ever shrink it.
    assert!(encoded.len() <= data.len());
    let again = decode_metadata(&encoded).expect("re-encoded metadata decodes");
    assert_eq!(again, md);
    assert_eq!(encode(&again), encoded, "encoding is not canonical");
});
