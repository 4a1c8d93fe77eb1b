//! Loom models of the stream's flow-control credit, its receive queue, its
//! batches (a routed run, a consumer's batch, a batched send) and
//! the MuxWriter.
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
    ConnectionError, FlowControl, Initiator, MessageBatch, MuxWriter, RecvBatch, Stream,
    StreamError, StreamErrorKind, StreamHandle, StreamKind, StreamOptions, new_stream,
};
use drpc_wire::{Frame, FrameDecoder, Id, Kind, Metadata, WindowUpdate, append_packet};
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

/// The smallest window the liveness rule allows: one frame and one byte.
const WINDOW: usize = FlowControl::FRAME as usize + 1;

/// Fork-mode flow control with a [`WINDOW`] of credit and a grant for every
/// consumed byte.
fn fork() -> StreamOptions {
    StreamOptions {
        flow_control: FlowControl::fork()
            .with_window(WINDOW as u64, 1)
            .expect("valid"),
        ..StreamOptions::default()
    }
}

/// A Fork-mode client stream whose sender has used up its whole window.
fn out_of_credit() -> (std::sync::Arc<MuxWriter>, Stream, StreamHandle) {
    let w = std::sync::Arc::new(MuxWriter::new(usize::MAX));
    let (s, h) = new_stream(1, StreamKind::Client, w.clone(), &fork());
    block_on(s.send(&vec![0; WINDOW])).expect("the whole window");
    // Drain it: the models only look at what is appended afterwards.
    let mut spare = BytesMut::new();
    let taken = block_on(poll_fn(|cx| w.poll_take(cx, &mut spare)));
    assert!(taken.is_ok() && !spare.is_empty());
    (w, s, h)
}

/// Everything the writer holds, as frames.
fn drain(w: &MuxWriter) -> Vec<Frame> {
    let mut spare = BytesMut::new();
    if w.buffered() > 0 {
        block_on(poll_fn(|cx| w.poll_take(cx, &mut spare))).expect("not stopped");
    }
    let dec = FrameDecoder::default();
    let mut frames = Vec::new();
    while let Some(f) = dec.decode(&mut spare).expect("whole frames") {
        frames.push(f);
    }
    assert!(spare.is_empty());
    frames
}

/// (a) A sender waiting for credit races the WindowUpdate that brings it:
/// whichever comes first, the grant is never lost and the send completes.
#[test]
fn credit_wait_vs_window_update() {
    model(3, || {
        let (w, s, h) = out_of_credit();
        let granter = thread::spawn(move || h.window_update(1));
        block_on(s.send(b"m")).expect("sent once credited");
        granter.join().expect("granter");
        let frames = drain(&w);
        assert_eq!(frames.len(), 1);
        assert_eq!(
            (frames[0].kind, &frames[0].data[..]),
            (Kind::MESSAGE, &b"m"[..])
        );
    });
}

/// (b) A sender waiting for credit races a cancel (nobody ever grants):
/// the send returns the cancellation, and only the Cancel is appended.
#[test]
fn credit_wait_vs_cancel() {
    model(3, || {
        let (w, s, h) = out_of_credit();
        let canceller = thread::spawn(move || h.cancel(StreamErrorKind::DeadlineExceeded));
        let err = block_on(s.send(b"m")).expect_err("cancelled");
        canceller.join().expect("canceller");
        assert!(matches!(err.kind(), StreamErrorKind::Eof), "{err:?}");
        let err: StreamError = s.check_cancel(err);
        assert!(matches!(err.kind(), StreamErrorKind::DeadlineExceeded));
        let frames = drain(&w);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!((frames[0].kind, frames[0].control), (Kind::CANCEL, true));
    });
}

/// (c) A sender waiting for credit races the end of the connection: the
/// send fails, nothing is appended.
#[test]
fn credit_wait_vs_connection_lost() {
    model(3, || {
        let (w, s, h) = out_of_credit();
        let reader = thread::spawn(move || {
            h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof))
        });
        let err = block_on(s.send(b"m")).expect_err("connection lost");
        reader.join().expect("reader");
        assert!(matches!(err.kind(), StreamErrorKind::Eof), "{err:?}");
        assert!(s.is_terminated());
        assert_eq!(w.buffered(), 0);
    });
}

/// (a) and (b) at once: a grant and a cancel race a waiting sender. The
/// send completes or fails, never hangs; a message, if sent, comes before
/// the Cancel.
#[test]
fn credit_wait_vs_window_update_and_cancel() {
    model(2, || {
        let (w, s, h) = out_of_credit();
        let h2 = h.clone();
        let granter = thread::spawn(move || h.window_update(1));
        let canceller =
            thread::spawn(move || h2.cancel(StreamErrorKind::Canceled(Initiator::Local)));
        let r = block_on(s.send(b"m"));
        granter.join().expect("granter");
        canceller.join().expect("canceller");
        let kinds: Vec<Kind> = drain(&w).iter().map(|f| f.kind).collect();
        match r {
            Ok(()) => assert_eq!(kinds, [Kind::MESSAGE, Kind::CANCEL]),
            Err(e) => {
                assert!(s.check_cancel(e).is_canceled());
                assert_eq!(kinds, [Kind::CANCEL]);
            }
        }
    });
}

/// (d) A receive that makes a grant due races a cancel: the grant goes out
/// before the Cancel or not at all, never after it.
#[test]
fn grant_on_recv_vs_cancel() {
    model(3, || {
        let w = std::sync::Arc::new(MuxWriter::new(0));
        let (s, h) = new_stream(1, StreamKind::Server, w.clone(), &fork());
        h.handle_frame(message(1), false).expect("queued");
        let canceller =
            thread::spawn(move || h.cancel(StreamErrorKind::Canceled(Initiator::Local)));
        let r = block_on(s.recv());
        canceller.join().expect("canceller");
        let frames = drain(&w);
        let kinds: Vec<Kind> = frames.iter().map(|f| f.kind).collect();
        match r {
            Ok(Some(m)) => {
                assert_eq!(&m[..], &[1]);
                assert_eq!(kinds, [Kind::WINDOW_UPDATE, Kind::CANCEL]);
                assert_eq!(
                    WindowUpdate::parse(&frames[0]),
                    Some(WindowUpdate {
                        stream: 1,
                        delta: 1
                    })
                );
            }
            Err(e) => {
                assert!(e.is_canceled(), "{e:?}");
                assert_eq!(kinds, [Kind::CANCEL], "the message was discarded");
            }
            Ok(None) => panic!("clean end without a CloseSend"),
        }
    });
}

/// The connection's reader overflows a shared stream's one-message queue
/// while the application receives: the application gets every message in
/// order up to the failure, then `QueueOverflow`; at most one abortive
/// Error is appended, and never a lost wake-up.
#[test]
fn queue_overflow_vs_recv() {
    model(3, || {
        let w = std::sync::Arc::new(MuxWriter::new(0));
        let opts = StreamOptions {
            recv_queue_messages: 1,
            ..StreamOptions::default()
        };
        let (s, h) = new_stream(1, StreamKind::Server, w.clone(), &opts);
        let reader = thread::spawn(move || {
            for mid in 1..=2 {
                h.handle_frame(message(mid), false).expect("never fatal");
            }
            let close_send = Frame {
                kind: Kind::CLOSE_SEND,
                data: Bytes::new(),
                ..message(3)
            };
            h.handle_frame(close_send, false).expect("never fatal");
        });
        let (got, end) = block_on(async {
            let mut got = Vec::new();
            loop {
                match s.recv().await {
                    Ok(Some(m)) => got.push(m[0]),
                    Ok(None) => return (got, None),
                    Err(e) => return (got, Some(e)),
                }
            }
        });
        reader.join().expect("reader");
        let frames = drain(&w);
        match end {
            None => {
                assert_eq!(got, [1, 2]);
                assert!(frames.is_empty());
            }
            Some(e) => {
                assert!(
                    matches!(e.kind(), StreamErrorKind::QueueOverflow { .. }),
                    "{e:?}"
                );
                assert_eq!(got, [1], "the queued message, then the error");
                assert_eq!(frames.len(), 1);
                assert_eq!(frames[0].header_byte(), 0x87);
            }
        }
    });
}

/// Two threads append packets, one drains with `poll_take` until the
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
        h.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
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
            h.handle_frame(message(1), true).expect("message");
            let close = Frame {
                kind: Kind::CLOSE,
                data: Bytes::new(),
                ..message(2)
            };
            h.handle_frame(close, true).expect("close");
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

/// The reader routes a run of messages and then the end while the
/// application receives through a batch: every message arrives, in order,
/// then the clean end; no wake-up is lost between the run and the batch.
#[test]
fn handle_frames_run_vs_batched_recv() {
    model(3, || {
        let w = std::sync::Arc::new(MuxWriter::new(0));
        let (s, h) = new_stream(1, StreamKind::Server, w.clone(), &fork());
        let reader = thread::spawn(move || {
            let mut rest = (2..=3).map(message);
            h.handle_frames(message(1), || rest.next(), false)
                .expect("routed");
            let end = Frame {
                kind: Kind::CLOSE_SEND,
                data: Bytes::new(),
                ..message(4)
            };
            h.handle_frame(end, false).expect("end");
        });
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while let Some(m) = block_on(batch.recv(&s)).expect("no failure") {
            got.push(m[0]);
        }
        reader.join().expect("reader");
        assert_eq!(got, [1, 2, 3]);
    });
}

/// A cancel races a consumer whose batch still holds messages: it gets a
/// prefix of them, in order, then the cancellation, never a clean end nor
/// a message after the error.
#[test]
fn recv_batch_vs_cancel() {
    model(3, || {
        let w = std::sync::Arc::new(MuxWriter::new(0));
        let (s, h) = new_stream(1, StreamKind::Server, w.clone(), &fork());
        let mut rest = (2..=3).map(message);
        h.handle_frames(message(1), || rest.next(), false)
            .expect("routed");
        let mut batch = RecvBatch::new();
        let first = block_on(batch.recv(&s)).expect("first").expect("message");
        assert_eq!(first[..], [1]);
        let canceller =
            thread::spawn(move || h.cancel(StreamErrorKind::Canceled(Initiator::Local)));
        let mut got = Vec::new();
        let err = loop {
            match block_on(batch.recv(&s)) {
                Ok(Some(m)) => got.push(m[0]),
                Ok(None) => panic!("a clean end after a cancel"),
                Err(e) => break e,
            }
            if got.len() > 2 {
                panic!("more messages than were sent: {got:?}");
            }
        };
        canceller.join().expect("canceller");
        assert!(err.is_canceled(), "{err:?}");
        assert!([&[][..], &[2], &[2, 3]].contains(&&got[..]), "{got:?}");
        // Once the cancel has returned, the batch is discarded.
        assert!(block_on(batch.recv(&s)).is_err());
    });
}

/// A batch waiting for credit between its messages races the grants that
/// bring it: both messages go, in order, with consecutive ids.
#[test]
fn send_batch_vs_window_updates() {
    model(3, || {
        let (w, s, h) = out_of_credit();
        let granter = thread::spawn(move || {
            h.window_update(1);
            h.window_update(1);
        });
        let mut batch = MessageBatch::new();
        batch.push_encoded(b"a");
        batch.push_encoded(b"b");
        block_on(s.send_batch(&mut batch)).expect("sent once credited");
        granter.join().expect("granter");
        let frames = drain(&w);
        let got: Vec<(u64, &[u8])> = frames.iter().map(|f| (f.id.message, &f.data[..])).collect();
        assert_eq!(got, [(2, &b"a"[..]), (3, &b"b"[..])]);
    });
}
