//! Fuzzes the flow-control frames: any bytes parsed as frames give a
//! WindowUpdate only when it conforms (and then it re-encodes to the same
//! frame), and negotiation payloads and metadata values either fail
//! cleanly or round-trip.

#![no_main]

use bytes::Bytes;
use drpc_wire::{FlowNegotiation, FlowParams, Frame, Id, Kind, WindowUpdate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = Bytes::copy_from_slice(data);
    while let Ok(Some((frame, used))) = Frame::parse(&bytes) {
        if let Some(update) = WindowUpdate::parse(&frame) {
            assert!(update.stream != 0 && update.delta != 0);
            assert_eq!(frame.kind, Kind::WINDOW_UPDATE);
            let mut again = Vec::new();
            update.append_to(&mut again);
            let (f, _) = Frame::parse(&Bytes::from(again)).expect("ok").expect("whole");
            assert_eq!(WindowUpdate::parse(&f), Some(update));
        }
        if let Some(n) = FlowNegotiation::parse(&frame.data) {
            let mut again = Vec::new();
            n.append_to(&mut again, Id::new(1, 1));
            let (f, _) = Frame::parse(&Bytes::from(again)).expect("ok").expect("whole");
            assert_eq!(FlowNegotiation::parse(&f.data), Some(n));
        }
        if let Ok(text) = std::str::from_utf8(&frame.data)
            && let Some(p) = FlowParams::parse_metadata_value(text)
        {
            assert_eq!(FlowParams::parse_metadata_value(&p.to_metadata_value()), Some(p));
        }
        if used == 0 {
            break;
        }
        let _ = bytes.split_to(used);
    }
});
