//! Loom models of the stream's receive queue protocol and of the MuxWriter.
//!
//! Run with:
//! `RUSTFLAGS="--cfg drpc_loom" CARGO_TARGET_DIR=target/loom cargo test -p drpc-stream --release --test loom`
//!
//! Under `--cfg drpc_loom` the crate's mutex is loom's, and futures are
//! driven with `loom::future::block_on`, whose wakers loom tracks: a lost
//! wake-up shows as a deadlock ("all threads blocked") in some interleaving.

#![cfg(drpc_loom)]

use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use drpc_stream::{
    ConnectionError, Initiator, MuxWriter, StreamError, StreamErrorKind, StreamKind, StreamOptions,
    new_stream,
};
use drpc_wire::{Frame, FrameDecoder, Id, Kind, Metadata, append_packet};
use loom::future::block_on;
use loom::sync::Arc;
use loom::thread;

fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b.check(f);
}

fn message(mid: u64) -> Frame {
    Frame {
        id: Id::new(1, mid),
        kind: Kind::MESSAGE,
        done: true,
        control: false,
        data: Bytes::from(vec![mid as u8]),
    }
}

fn one_slot() -> StreamOptions {
    StreamOptions {
        recv_queue_messages: 1,
        ..StreamOptions::default()
    }
}

/// (a) The connection's reader feeds 3 messages into a one-message queue
/// (so it must wait for room) while the application receives them: all 3
/// arrive, in order, and neither side is left waiting.
#[test]
fn recv_queue_backpressure() {
    model(3, || {
        let w = std::sync::Arc::new(MuxWriter::new(0));
        let (s, h) = new_stream(1, StreamKind::Server, w, &one_slot());
        let reader = thread::spawn(move || {
            block_on(async {
                for mid in 1..=3 {
                    h.handle_frame(message(mid)).await.expect("frame");
                }
            })
        });
        let got = block_on(async {
            let mut got = Vec::new();
            for _ in 0..3 {
                let m = s.recv().await.expect("recv").expect("a message");
                got.push(m[0]);
            }
            got
        });
        reader.join().expect("reader");
        assert_eq!(got, [1, 2, 3]);
    });
}

/// (b) As (a), with a concurrent local cancel: no deadlock, the reader's
/// `handle_frame` always completes, and the application sees a prefix of
/// the messages in order, then (if it asks) the cancellation.
#[test]
fn recv_queue_backpressure_with_cancel() {
    model(3, || {
        let w = std::sync::Arc::new(MuxWriter::new(0));
        let (s, h) = new_stream(1, StreamKind::Server, w, &one_slot());
        let canceller = h.clone();
        let reader = thread::spawn(move || {
            block_on(async {
                for mid in 1..=3 {
                    h.handle_frame(message(mid)).await.expect("frame");
                }
            })
        });
        let cancel = thread::spawn(move || {
            canceller.cancel(StreamErrorKind::Canceled(Initiator::Local));
        });
        let (got, end) = block_on(async {
            let mut got = Vec::new();
            for _ in 0..3 {
                match s.recv().await {
                    Ok(Some(m)) => got.push(m[0]),
                    Ok(None) => panic!("clean end without a CloseSend"),
                    Err(e) => return (got, Some(e)),
                }
            }
            (got, None)
        });
        reader.join().expect("the reader's handle_frame completed");
        cancel.join().expect("cancel");
        let want: Vec<u8> = (1..=got.len() as u8).collect();
        assert_eq!(got, want, "a prefix, in order");
        if let Some(e) = end {
            assert!(
                matches!(e.kind(), StreamErrorKind::Canceled(Initiator::Local)),
                "{e:?}"
            );
        }
        assert!(s.is_terminated());
    });
}

/// (c) Two threads append packets, one drains with `poll_take` until the
/// writer stops, one stops it. Every append either fails with the stop
/// reason, or its bytes are drained entirely or discarded entirely; the
/// drainer always ends.
#[test]
fn mux_writer_append_stop_drain() {
    model(3, || {
        let w = Arc::new(MuxWriter::new(0));
        // Packet A: two frames (split at 2 bytes); packet B: one frame.
        let appender = |sid: u64, data: &'static [u8]| {
            let w = w.clone();
            thread::spawn(move || {
                w.append(|buf| append_packet(buf, Id::new(sid, 1), Kind::MESSAGE, false, data, 2))
            })
        };
        let a = appender(1, b"aaa");
        let b = appender(2, b"b");
        let stopper = {
            let w = w.clone();
            thread::spawn(move || assert!(w.stop(ConnectionError::Closed), "only stopper"))
        };
        let mut drained = BytesMut::new();
        let stop = block_on(async {
            loop {
                let mut spare = BytesMut::new();
                match poll_fn(|cx| w.poll_take(cx, &mut spare)).await {
                    Ok(()) => {
                        assert!(!spare.is_empty());
                        drained.extend_from_slice(&spare);
                    }
                    Err(e) => return e,
                }
            }
        });
        assert!(matches!(stop, ConnectionError::Closed), "{stop:?}");
        let ra = a.join().expect("appender a");
        let rb = b.join().expect("appender b");
        stopper.join().expect("stopper");

        // Only whole frames were drained, each packet whole or not at all.
        let dec = FrameDecoder::default();
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut drained).expect("whole frames") {
            frames.push(f);
        }
        assert!(drained.is_empty(), "partial frame drained");
        let of =
            |sid: u64| -> Vec<&Frame> { frames.iter().filter(|f| f.id.stream == sid).collect() };
        let (fa, fb) = (of(1), of(2));
        match &ra {
            Err(e) => {
                assert!(matches!(e, ConnectionError::Closed), "{e:?}");
                assert!(fa.is_empty());
            }
            Ok(()) => assert!(fa.is_empty() || fa.len() == 2, "packet A drained partly"),
        }
        if fa.len() == 2 {
            assert_eq!((&fa[0].data[..], fa[0].done), (&b"aa"[..], false));
            assert_eq!((&fa[1].data[..], fa[1].done), (&b"a"[..], true));
            // Contiguous: nothing of B between A's frames.
            let i = frames.iter().position(|f| f.id.stream == 1).expect("A");
            assert_eq!(frames[i + 1].id.stream, 1);
        }
        match &rb {
            Err(e) => {
                assert!(matches!(e, ConnectionError::Closed), "{e:?}");
                assert!(fb.is_empty());
            }
            Ok(()) => assert!(fb.len() <= 1),
        }
        if let Some(f) = fb.first() {
            assert_eq!((&f.data[..], f.done), (&b"b"[..], true));
        }
        // After the stop nothing is buffered and appends fail.
        assert_eq!(w.buffered(), 0);
        assert!(w.append(|buf| buf.extend_from_slice(b"x")).is_err());
    });
}

/// Catalogue 80 under loom: a send waiting for writer capacity (the writer
/// is above its mark and nobody drains it) is released by a concurrent
/// cancel, and nothing but the Cancel is appended.
#[test]
fn send_waiting_for_capacity_released_by_cancel() {
    model(3, || {
        let w = std::sync::Arc::new(MuxWriter::new(1));
        let (s, h) = new_stream(1, StreamKind::Client, w.clone(), &StreamOptions::default());
        s.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
        let before = w.buffered();
        let cancel = thread::spawn(move || h.cancel(StreamErrorKind::DeadlineExceeded));
        let r = block_on(s.send(b"m"));
        cancel.join().expect("cancel");
        let err = r.expect_err("cancelled");
        assert!(matches!(err.kind(), StreamErrorKind::Eof), "{err:?}");
        let err: StreamError = s.check_cancel(err);
        assert!(matches!(err.kind(), StreamErrorKind::DeadlineExceeded));
        // Invoke, then only the 4-byte Cancel.
        assert_eq!(w.buffered(), before + 4);
    });
}

/// A receive racing a remote Close and a message: it gets the message and
/// then the clean end, never stays blocked.
#[test]
fn recv_races_message_and_remote_close() {
    model(3, || {
        let w = std::sync::Arc::new(MuxWriter::new(0));
        let (s, h) = new_stream(1, StreamKind::Client, w, &StreamOptions::default());
        let reader = thread::spawn(move || {
            block_on(async {
                h.handle_frame(message(1)).await.expect("message");
                let close = Frame {
                    kind: Kind::CLOSE,
                    data: Bytes::new(),
                    ..message(2)
                };
                h.handle_frame(close).await.expect("close");
            })
        });
        let (first, second) = block_on(async { (s.recv().await, s.recv().await) });
        reader.join().expect("reader");
        assert_eq!(first.expect("recv").as_deref(), Some(&[1u8][..]));
        assert!(matches!(second, Ok(None)), "{second:?}");
    });
}

/// `terminated()` waiters and a sender waiting for capacity all wake on a
/// termination racing them.
#[test]
fn terminated_wakes_on_racing_termination() {
    model(3, || {
        let w = std::sync::Arc::new(MuxWriter::new(0));
        let (s, h) = new_stream(1, StreamKind::Client, w.clone(), &StreamOptions::default());
        let closer = thread::spawn(move || s.close().expect("close"));
        block_on(h.terminated());
        assert!(h.is_terminated());
        closer.join().expect("closer");
        assert_eq!(w.buffered(), 4, "one Close frame");
    });
}
