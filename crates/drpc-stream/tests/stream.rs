//! Async tests of `Stream`, `StreamHandle` and `MuxWriter`: the exact frames a
//! stream appends, wake-ups of blocked operations, writer backpressure, the
//! receive queue's bounds (a lone stream keeps queueing, a shared one fails
//! alone), memory-budget accounting, flow control (Fork and negotiated
//! Auto: credit, grants, caps), termination hooks, and the writer's
//! atomicity and stop semantics.
//!
//! Frames are read back by draining the writer with `poll_take` and decoding
//! with `drpc_wire::FrameDecoder`.

// Under loom the crate's mutex only works inside `loom::model`.
#![cfg(not(drpc_loom))]

use drpc_stream::QUEUED_MESSAGE_COST as Q;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use drpc_stream::{
    ConnectionError, DEFAULT_RECV_QUEUE_BYTES, FlowControl, Initiator, MemoryBudget, MessageBatch,
    MessageBuf, MuxWriter, RecvBatch, Stream, StreamError, StreamErrorKind, StreamHandle,
    StreamKind, StreamOptions, new_stream,
};
use drpc_wire::{
    CodedError, FLOW_CONTROL_METADATA_KEY, FlowNegotiation, FlowParams, Frame, FrameDecoder, Id,
    Kind, Metadata, RESOURCE_EXHAUSTED, WindowUpdate, append_packet, decode_metadata,
    packet_encoded_len,
};
use tokio::time::timeout;

const SHORT: Duration = Duration::from_millis(30);
const LONG: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- helpers

macro_rules! assert_matches {
    ($e:expr, $p:pat $(if $g:expr)? $(,)?) => {
        match $e {
            $p $(if $g)? => {}
            ref other => panic!("expected {}, got {:?}", stringify!($p $(if $g)?), other),
        }
    };
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<Counter>, Waker) {
    let c = Arc::new(Counter::default());
    (c.clone(), Waker::from(c))
}

impl Counter {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn poll_with<F: Future + ?Sized>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(waker))
}

fn writer() -> Arc<MuxWriter> {
    Arc::new(MuxWriter::new(0))
}

fn pair(id: u64, kind: StreamKind, w: &Arc<MuxWriter>) -> (Stream, StreamHandle) {
    new_stream(id, kind, w.clone(), &StreamOptions::default())
}

/// A stream without flow control, which opens streaming calls exactly as
/// a stock peer does (an auto client adds its offer to InvokeMetadata).
fn stock_pair(id: u64, kind: StreamKind, w: &Arc<MuxWriter>) -> (Stream, StreamHandle) {
    let opts = StreamOptions {
        flow_control: FlowControl::off(),
        ..StreamOptions::default()
    };
    new_stream(id, kind, w.clone(), &opts)
}

fn pair_with(
    id: u64,
    kind: StreamKind,
    w: &Arc<MuxWriter>,
    opts: StreamOptions,
) -> (Stream, StreamHandle) {
    new_stream(id, kind, w.clone(), &opts)
}

/// Takes whatever the writer holds (nothing if it is empty), as the writer
/// task does, through `poll_take`.
async fn take_bytes(w: &MuxWriter) -> Bytes {
    let mut spare = BytesMut::new();
    let taken = poll_fn(|cx| match w.poll_take(cx, &mut spare) {
        Poll::Ready(Ok(())) => Poll::Ready(true),
        Poll::Pending => Poll::Ready(false),
        Poll::Ready(Err(e)) => panic!("writer stopped: {e}"),
    })
    .await;
    if taken {
        // As the writer task does once the batch is on the wire: its bytes
        // stop counting against the connection's budget.
        w.batch_written();
    }
    spare.freeze()
}

fn decode(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let dec = FrameDecoder::default();
    let mut out = Vec::new();
    while let Some(f) = dec.decode(&mut buf).expect("well-formed frames") {
        out.push(f);
    }
    assert!(buf.is_empty(), "a partial frame was left: {buf:?}");
    out
}

/// Drains the writer and decodes what it held.
async fn take_frames(w: &MuxWriter) -> Vec<Frame> {
    decode(&take_bytes(w).await)
}

fn fr(sid: u64, mid: u64, kind: Kind, done: bool, control: bool, data: &[u8]) -> Frame {
    Frame {
        id: Id::new(sid, mid),
        kind,
        done,
        control,
        data: Bytes::copy_from_slice(data),
    }
}

/// A whole one-frame packet.
fn whole(sid: u64, mid: u64, kind: Kind, data: &[u8]) -> Frame {
    fr(sid, mid, kind, true, false, data)
}

fn cancel_frame(sid: u64, mid: u64) -> Frame {
    fr(sid, mid, Kind::CANCEL, true, true, b"")
}

fn error_frame(sid: u64, mid: u64, code: u64, text: &str) -> Frame {
    let mut payload = Vec::new();
    CodedError::new(code, text).append_to(&mut payload);
    whole(sid, mid, Kind::ERROR, &payload)
}

fn kind_of(r: &Result<(), StreamError>) -> Option<&StreamErrorKind> {
    r.as_ref().err().map(StreamError::kind)
}

// ---------------------------------------------------------------- exact frames

#[tokio::test]
async fn unary_shape_is_invoke_message_close_send() {
    let w = writer();
    let (s, h) = stock_pair(1, StreamKind::Client, &w);
    h.write_invoke(b"/service.Service/Method1", &Metadata::new())
        .expect("invoke");
    s.send(&[0x08, 0x05]).await.expect("send");
    s.close_send().expect("close_send");
    let bytes = take_bytes(&w).await;
    // protocol.md §13.1: the 38 bytes of a unary request.
    let mut want = vec![0x03, 0x01, 0x01, 0x18];
    want.extend_from_slice(b"/service.Service/Method1");
    want.extend_from_slice(&[0x05, 0x01, 0x02, 0x02, 0x08, 0x05]);
    want.extend_from_slice(&[0x0d, 0x01, 0x03, 0x00]);
    assert_eq!(&bytes[..], &want[..]);
    assert_eq!(
        decode(&bytes),
        vec![
            whole(1, 1, Kind::INVOKE, b"/service.Service/Method1"),
            whole(1, 2, Kind::MESSAGE, &[0x08, 0x05]),
            whole(1, 3, Kind::CLOSE_SEND, b""),
        ]
    );
    assert!(!s.is_terminated(), "half closed only");
    assert_eq!(w.buffered(), 0);
}

#[tokio::test]
async fn write_invoke_with_metadata_uses_ids_one_and_two() {
    let w = writer();
    let (s, h) = stock_pair(5, StreamKind::Client, &w);
    let md = Metadata::from([
        ("authorization".to_owned(), "secret".to_owned()),
        ("trace".to_owned(), "abc".to_owned()),
    ]);
    h.write_invoke(b"/s.S/M", &md).expect("invoke");
    s.send(b"req").await.expect("send");
    let frames = take_frames(&w).await;
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[0].id, Id::new(5, 1));
    assert_eq!(frames[0].kind, Kind::INVOKE_METADATA);
    assert_eq!(frames[0].header_byte(), 0x0f);
    assert_eq!(decode_metadata(&frames[0].data), Ok(md));
    assert_eq!(frames[1], whole(5, 2, Kind::INVOKE, b"/s.S/M"));
    assert_eq!(frames[2], whole(5, 3, Kind::MESSAGE, b"req"));
}

#[tokio::test]
async fn invoke_and_messages_are_split_at_split_size() {
    let w = writer();
    let opts = StreamOptions {
        split_size: 4,
        flow_control: FlowControl::off(),
        ..StreamOptions::default()
    };
    let (s, h) = pair_with(3, StreamKind::Client, &w, opts);
    h.write_invoke(b"/s.S/Method", &Metadata::new())
        .expect("invoke");
    s.send(b"0123456789").await.expect("send");
    s.send(b"").await.expect("empty send");
    assert_eq!(
        take_frames(&w).await,
        vec![
            fr(3, 1, Kind::INVOKE, false, false, b"/s.S"),
            fr(3, 1, Kind::INVOKE, false, false, b"/Met"),
            fr(3, 1, Kind::INVOKE, true, false, b"hod"),
            fr(3, 2, Kind::MESSAGE, false, false, b"0123"),
            fr(3, 2, Kind::MESSAGE, false, false, b"4567"),
            fr(3, 2, Kind::MESSAGE, true, false, b"89"),
            fr(3, 3, Kind::MESSAGE, true, false, b""),
        ]
    );
}

#[tokio::test]
async fn send_error_frame_carries_code_and_text() {
    let w = writer();
    let (s, _h) = pair(2, StreamKind::Server, &w);
    s.send_error(&CodedError::new(42, "boom"))
        .expect("send_error");
    let frames = take_frames(&w).await;
    assert_eq!(frames, vec![error_frame(2, 1, 42, "boom")]);
    assert_eq!(frames[0].header_byte(), 0x07);
    assert!(s.is_terminated());
}

#[tokio::test]
async fn close_frame() {
    let w = writer();
    let (s, h) = stock_pair(1, StreamKind::Client, &w);
    h.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
    s.close().expect("close");
    let frames = take_frames(&w).await;
    assert_eq!(frames[1], whole(1, 2, Kind::CLOSE, b""));
    assert_eq!(frames[1].header_byte(), 0x0b);
    assert!(s.is_terminated());
}

#[tokio::test]
async fn cancel_frame_has_control_bit_and_follows_a_complete_invoke() {
    let w = writer();
    let (s, h) = pair(5, StreamKind::Client, &w);
    let md = Metadata::from([("k".to_owned(), "v".to_owned())]);
    h.write_invoke(b"/s.S/M", &md).expect("invoke");
    s.send(b"x").await.expect("send");
    h.cancel(StreamErrorKind::Canceled(Initiator::Local));
    let bytes = take_bytes(&w).await;
    // protocol.md §11.6: `89 05 03 00` after Invoke+Message on stream 5;
    // here InvokeMetadata used mid 1, so the Cancel takes mid 4.
    assert_eq!(&bytes[bytes.len() - 4..], &[0x89, 0x05, 0x04, 0x00]);
    let frames = decode(&bytes);
    let kinds: Vec<Kind> = frames.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::INVOKE_METADATA,
            Kind::INVOKE,
            Kind::MESSAGE,
            Kind::CANCEL
        ]
    );
    assert_eq!(frames[3], cancel_frame(5, 4));
    assert!(s.is_terminated());
}

#[tokio::test]
async fn cancel_right_after_invoke_with_metadata() {
    // multiplexing.md §3.8: the Cancel can only come after the whole Invoke.
    let w = writer();
    let (s, h) = pair(7, StreamKind::Client, &w);
    let md = Metadata::from([("k".to_owned(), "v".to_owned())]);
    h.write_invoke(b"/s.S/M", &md).expect("invoke");
    s.cancel(StreamErrorKind::DeadlineExceeded);
    let frames = take_frames(&w).await;
    assert_eq!(frames.len(), 3);
    assert_eq!(
        (frames[0].id, frames[0].kind),
        (Id::new(7, 1), Kind::INVOKE_METADATA)
    );
    assert_eq!(frames[1], whole(7, 2, Kind::INVOKE, b"/s.S/M"));
    assert_eq!(frames[2], cancel_frame(7, 3));
    // The invoke can no longer be written after the cancel.
    assert_matches!(
        kind_of(&h.write_invoke(b"/s.S/M", &Metadata::new())),
        Some(StreamErrorKind::Eof)
    );
    assert_eq!(w.buffered(), 0);
}

#[tokio::test]
async fn both_close_send_still_sends_the_last_close_send() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Server, &w);
    h.handle_frame(whole(1, 2, Kind::CLOSE_SEND, b""), true)
        .expect("frame");
    assert!(!s.is_terminated());
    s.send(b"reply")
        .await
        .expect("send after the peer's CloseSend");
    s.close_send().expect("close_send");
    assert!(s.is_terminated());
    assert_eq!(
        take_frames(&w).await,
        vec![
            whole(1, 1, Kind::MESSAGE, b"reply"),
            whole(1, 2, Kind::CLOSE_SEND, b"")
        ]
    );
}

#[tokio::test]
async fn write_unary_encoded_writes_what_write_unary_writes_and_empties_the_buffer() {
    use bytes::BufMut;
    let big = Bytes::from((0..40_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    // Each case: how the request is put into the buffer.
    type Fill = fn(&mut MessageBuf, &Bytes);
    let cases: [(&str, Fill); 4] = [
        ("empty", |_, _| {}),
        ("small", |b, _| b.put_slice(b"\x08\x05")),
        ("large, copied", |b, big| b.put_slice(big)),
        ("large, shared", |b, big| {
            b.put_slice(b"head");
            b.put(big.clone());
            b.put_slice(b"tail");
        }),
    ];
    let opts = StreamOptions {
        split_size: 16 * 1024,
        max_packet_size: 100_000,
        ..StreamOptions::default()
    };
    let md = Metadata::from([("k".to_owned(), "v".to_owned())]);
    for (name, fill) in cases {
        let mut buf = MessageBuf::new();
        fill(&mut buf, &big);
        let mut whole_message = Vec::new();
        {
            let mut copy = MessageBuf::new();
            fill(&mut copy, &big);
            copy.take_parts()
                .iter()
                .for_each(|p| whole_message.extend_from_slice(p));
        }
        let (w1, w2) = (writer(), writer());
        let (_s1, h1) = pair_with(7, StreamKind::Client, &w1, opts.clone());
        let (_s2, h2) = pair_with(7, StreamKind::Client, &w2, opts.clone());
        h1.write_unary_encoded(b"/s.S/M", &md, &mut buf)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(buf.is_empty(), "{name}: buffer emptied");
        h2.write_unary(b"/s.S/M", &md, &Bytes::from(whole_message))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (got, want) = (take_bytes(&w1).await, take_bytes(&w2).await);
        assert_eq!(got, want, "{name}: same bytes as write_unary");
        let frames = decode(&got);
        assert_eq!(
            frames.last().map(|f| f.kind),
            Some(Kind::CLOSE_SEND),
            "{name}"
        );
    }
    // Over the maximum: refused, nothing written, the buffer emptied.
    let w = writer();
    let (_s, h) = pair_with(9, StreamKind::Client, &w, opts);
    let mut buf = MessageBuf::new();
    buf.put(Bytes::from(vec![1; 100_001]));
    let err = h
        .write_unary_encoded(b"/s.S/M", &md, &mut buf)
        .expect_err("too large");
    assert_matches!(err.kind(), StreamErrorKind::MessageTooLarge { .. });
    assert_eq!(w.buffered(), 0);
}

#[tokio::test]
async fn send_encoded_sends_small_and_shared_messages_and_empties_the_buffer() {
    use bytes::BufMut;
    let w = writer();
    let opts = StreamOptions {
        max_packet_size: 50_000,
        ..StreamOptions::default()
    };
    let (s, _h) = pair_with(5, StreamKind::Client, &w, opts);
    let mut buf = MessageBuf::new();
    buf.put_slice(b"small");
    s.send_encoded(&mut buf).await.expect("small");
    assert!(buf.is_empty());
    let big = Bytes::from(vec![0x42; 40_000]);
    buf.put_slice(b"head");
    buf.put(big.clone());
    buf.put_slice(b"tail");
    s.send_encoded(&mut buf).await.expect("shared");
    assert!(buf.is_empty());
    // Over the maximum: refused locally, the buffer emptied all the same.
    buf.put(Bytes::from(vec![1; 50_001]));
    let err = s.send_encoded(&mut buf).await.expect_err("too large");
    assert_matches!(err.kind(), StreamErrorKind::MessageTooLarge { .. });
    assert!(buf.is_empty());
    let mut expected = b"head".to_vec();
    expected.extend_from_slice(&big);
    expected.extend_from_slice(b"tail");
    let frames = take_frames(&w).await;
    assert_eq!(frames[0], whole(5, 1, Kind::MESSAGE, b"small"));
    let data: Vec<u8> = frames[1..].iter().flat_map(|f| f.data.to_vec()).collect();
    assert_eq!(data, expected);
    assert!(frames[1..].iter().all(|f| f.id == Id::new(5, 2)));
    assert!(frames.last().is_some_and(|f| f.done));
}

#[tokio::test]
async fn message_larger_than_the_maximum_is_refused_locally() {
    let w = writer();
    let opts = StreamOptions {
        max_packet_size: 8,
        ..StreamOptions::default()
    };
    let (s, _h) = pair_with(1, StreamKind::Client, &w, opts);
    s.send(&[7; 8]).await.expect("exactly the maximum");
    let err = s.send(&[7; 9]).await.expect_err("too large");
    assert_matches!(
        err.kind(),
        StreamErrorKind::MessageTooLarge { size: 9, limit: 8 }
    );
    assert!(err.connection_survives());
    assert!(!s.is_terminated(), "the stream goes on");
    s.send(b"ok").await.expect("send after the refusal");
    // The refused message used no id and appended nothing.
    assert_eq!(
        take_frames(&w).await,
        vec![
            whole(1, 1, Kind::MESSAGE, &[7; 8]),
            whole(1, 2, Kind::MESSAGE, b"ok")
        ]
    );
}

#[tokio::test]
async fn a_handle_from_the_stream_does_not_cancel_when_dropped() {
    let w = writer();
    let (s, _h) = pair(1, StreamKind::Client, &w);
    let extra = s.watch();
    assert_eq!((extra.id(), extra.kind()), (1, StreamKind::Client));
    drop(extra);
    assert!(!s.is_terminated());
    assert_eq!(w.buffered(), 0);
    // It acts on the same stream.
    let extra = s.watch();
    extra.cancel(StreamErrorKind::DeadlineExceeded);
    assert!(s.is_terminated());
    assert_eq!(take_frames(&w).await, vec![cancel_frame(1, 1)]);
    assert_matches!(
        s.recv().await.map_err(StreamError::into_kind),
        Err(StreamErrorKind::DeadlineExceeded)
    );
}

#[tokio::test]
async fn handle_send_error_ends_the_stream_like_the_stream_does() {
    let w = writer();
    let (s, h) = pair(3, StreamKind::Server, &w);
    h.send_error(&CodedError::new(13, "internal"))
        .expect("send_error");
    assert!(s.is_terminated());
    assert!(
        h.send_error(&CodedError::new(1, "again")).is_ok(),
        "a no-op once terminated"
    );
    drop(s);
    assert_eq!(
        take_frames(&w).await,
        vec![error_frame(3, 1, 13, "internal")]
    );
}

// ---------------------------------------------------------------- after termination

/// One way of ending a stream, applied by the application or the peer.
type Ender = for<'a> fn(&'a Stream, &'a StreamHandle) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

fn enders() -> Vec<(&'static str, Ender)> {
    vec![
        ("local close", |s, _| {
            Box::pin(async move { s.close().expect("close") })
        }),
        ("local send_error", |s, _| {
            Box::pin(async move { s.send_error(&CodedError::new(1, "e")).expect("send_error") })
        }),
        ("local cancel", |s, _| {
            Box::pin(async move { s.cancel(StreamErrorKind::Canceled(Initiator::Local)) })
        }),
        ("local deadline", |_, h| {
            Box::pin(async move { h.cancel(StreamErrorKind::DeadlineExceeded) })
        }),
        ("remote close", |_, h| {
            Box::pin(async move {
                h.handle_frame(whole(1, 1, Kind::CLOSE, b""), true)
                    .expect("ok")
            })
        }),
        ("remote error", |_, h| {
            Box::pin(async move { h.handle_frame(error_frame(1, 1, 3, "x"), true).expect("ok") })
        }),
        ("remote cancel", |_, h| {
            Box::pin(async move { h.handle_frame(cancel_frame(1, 1), true).expect("ok") })
        }),
        ("both close send", |s, h| {
            Box::pin(async move {
                h.handle_frame(whole(1, 1, Kind::CLOSE_SEND, b""), true)
                    .expect("ok");
                s.close_send().expect("close_send");
            })
        }),
        ("connection lost", |_, h| {
            Box::pin(async move {
                h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof))
            })
        }),
    ]
}

#[tokio::test]
async fn after_termination_nothing_more_is_appended() {
    for (name, end) in enders() {
        for kind in [StreamKind::Client, StreamKind::Server] {
            let w = writer();
            let (s, h) = pair(1, kind, &w);
            end(&s, &h).await;
            assert!(s.is_terminated() && h.is_terminated(), "{name}");
            take_bytes(&w).await;
            assert!(s.close_send().is_ok(), "{name}: close_send");
            assert!(s.close().is_ok(), "{name}: close");
            assert!(
                s.send_error(&CodedError::new(2, "late")).is_ok(),
                "{name}: send_error"
            );
            s.cancel(StreamErrorKind::Canceled(Initiator::Local));
            h.cancel(StreamErrorKind::DeadlineExceeded);
            assert!(s.send(b"late").await.is_err(), "{name}: send");
            assert!(
                h.write_invoke(b"/s.S/M", &Metadata::new()).is_err(),
                "{name}: write_invoke"
            );
            drop(s);
            assert_eq!(
                w.buffered(),
                0,
                "{name}: {kind:?} appended after termination"
            );
        }
    }
}

#[tokio::test]
async fn send_and_recv_results_after_each_termination() {
    // semantics.md §3.6 through the async API (a queued message shows
    // whether the receive side delivers or discards).
    struct Row {
        name: &'static str,
        end: Ender,
        send: fn(&StreamErrorKind) -> bool,
        recv_first: Option<&'static [u8]>,
        recv_then: fn(&Result<Option<Bytes>, StreamError>) -> bool,
    }
    let rows = [
        Row {
            name: "local close",
            end: enders()[0].1,
            send: |k| matches!(k, StreamErrorKind::TerminatedByClose),
            recv_first: None,
            recv_then: |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::TerminatedByClose)
                )
            },
        },
        Row {
            name: "local send_error",
            end: enders()[1].1,
            send: |k| matches!(k, StreamErrorKind::Eof),
            recv_first: None,
            recv_then: |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::TerminatedBySendError)
                )
            },
        },
        Row {
            name: "local cancel",
            end: enders()[2].1,
            send: |k| matches!(k, StreamErrorKind::Eof),
            recv_first: None,
            recv_then: |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::Canceled(Initiator::Local))
                )
            },
        },
        Row {
            name: "local deadline",
            end: enders()[3].1,
            send: |k| matches!(k, StreamErrorKind::Eof),
            recv_first: None,
            recv_then: |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::DeadlineExceeded)
                )
            },
        },
        Row {
            name: "remote close",
            end: |_, h| {
                Box::pin(async move {
                    h.handle_frame(whole(1, 2, Kind::CLOSE, b""), true)
                        .expect("ok")
                })
            },
            send: |k| matches!(k, StreamErrorKind::ClosedByRemote),
            recv_first: Some(b"queued"),
            recv_then: |r| matches!(r, Ok(None)),
        },
        Row {
            name: "remote error",
            end: |_, h| {
                Box::pin(async move {
                    h.handle_frame(error_frame(1, 2, 77, "bad"), true)
                        .expect("ok")
                })
            },
            send: |k| matches!(k, StreamErrorKind::Eof),
            recv_first: Some(b"queued"),
            recv_then: |r| {
                matches!(r.as_ref().map_err(StreamError::kind), Err(StreamErrorKind::Remote(e)) if e.code() == 77 && e.message() == "bad")
                    && r.as_ref().err().and_then(StreamError::code) == Some(77)
            },
        },
        Row {
            name: "remote cancel",
            end: |_, h| {
                Box::pin(async move { h.handle_frame(cancel_frame(1, 2), true).expect("ok") })
            },
            send: |k| matches!(k, StreamErrorKind::Eof),
            recv_first: Some(b"queued"),
            recv_then: |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::Canceled(Initiator::Remote))
                )
            },
        },
        Row {
            name: "connection lost",
            end: enders()[8].1,
            send: |k| matches!(k, StreamErrorKind::Eof),
            recv_first: Some(b"queued"),
            recv_then: |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::ConnectionLost(ConnectionError::Eof))
                )
            },
        },
    ];
    for row in rows {
        let w = writer();
        let (s, h) = pair(1, StreamKind::Client, &w);
        h.handle_frame(whole(1, 1, Kind::MESSAGE, b"queued"), true)
            .expect("queued");
        (row.end)(&s, &h).await;
        let err = s.send(b"x").await.expect_err(row.name);
        assert!((row.send)(err.kind()), "{}: send gave {err:?}", row.name);
        assert_eq!(err.stream_id(), 1);
        if let Some(first) = row.recv_first {
            let got = s.recv().await.expect(row.name).expect(row.name);
            assert_eq!(&got[..], first, "{}", row.name);
        }
        let r = s.recv().await;
        assert!((row.recv_then)(&r), "{}: recv gave {r:?}", row.name);
        // Repeated receives give the same end.
        let r = s.recv().await;
        assert!((row.recv_then)(&r), "{}: second recv gave {r:?}", row.name);
    }
}

#[tokio::test]
async fn local_close_send_leaves_receiving_alone() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Client, &w);
    s.close_send().expect("close_send");
    assert_matches!(
        s.send(b"x").await.map_err(StreamError::into_kind),
        Err(StreamErrorKind::SendClosed)
    );
    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"reply"), true)
        .expect("frame");
    assert_eq!(
        s.recv().await.expect("recv").as_deref(),
        Some(&b"reply"[..])
    );
    h.handle_frame(whole(1, 2, Kind::CLOSE_SEND, b""), true)
        .expect("frame");
    assert_matches!(s.recv().await, Ok(None));
    assert!(s.is_terminated());
}

#[tokio::test]
async fn remote_close_send_leaves_sending_alone_and_drops_later_messages() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Server, &w);
    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"req"), true)
        .expect("frame");
    h.handle_frame(whole(1, 2, Kind::CLOSE_SEND, b""), true)
        .expect("frame");
    h.handle_frame(whole(1, 3, Kind::MESSAGE, b"dropped"), true)
        .expect("frame");
    assert_eq!(s.recv().await.expect("recv").as_deref(), Some(&b"req"[..]));
    assert_matches!(s.recv().await, Ok(None));
    s.send(b"resp").await.expect("send still works");
    assert_eq!(
        take_frames(&w).await,
        vec![whole(1, 1, Kind::MESSAGE, b"resp")]
    );
}

#[tokio::test]
async fn unknown_kinds_and_invokes_through_the_handle() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Server, &w);
    let unknown = Kind::new(10).expect("kind");
    h.handle_frame(fr(1, 1, unknown, true, true, b""), true)
        .expect("ignored");
    h.handle_frame(fr(1, 2, Kind::new(0).expect("kind"), true, true, b""), true)
        .expect("ignored");
    // A negotiation packet this stream cannot use is ignored too.
    h.handle_frame(fr(1, 3, Kind::FLOW_NEGOTIATION, true, true, b"\xff"), true)
        .expect("ignored");
    h.handle_frame(whole(1, 4, Kind::MESSAGE, b"after"), true)
        .expect("message");
    assert_eq!(
        s.recv().await.expect("recv").as_deref(),
        Some(&b"after"[..])
    );
    assert_matches!(
        h.handle_frame(whole(1, 5, unknown, b""), true),
        Err(ConnectionError::UnknownKind { stream: 1, .. })
    );
    assert_matches!(
        h.handle_frame(whole(1, 6, Kind::INVOKE, b"/s.S/M"), true),
        Err(ConnectionError::InvokeOnExistingStream { stream: 1 })
    );
    // A fatal frame does not end the stream by itself: the connection does.
    assert!(!s.is_terminated());
    h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Closed));
    assert_matches!(
        s.recv().await.map_err(StreamError::into_kind),
        Err(StreamErrorKind::ConnectionLost(ConnectionError::Closed))
    );
    assert_eq!(w.buffered(), 0);
}

// ---------------------------------------------------------------- drop

#[tokio::test]
async fn dropping_an_open_client_stream_sends_cancel() {
    let w = writer();
    let (s, h) = stock_pair(4, StreamKind::Client, &w);
    h.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
    s.close_send().expect("close_send");
    take_bytes(&w).await;
    drop(s);
    assert!(h.is_terminated());
    assert_eq!(take_frames(&w).await, vec![cancel_frame(4, 3)]);
}

#[tokio::test]
async fn dropping_a_terminated_stream_sends_nothing() {
    for kind in [StreamKind::Client, StreamKind::Server] {
        let w = writer();
        let (s, h) = pair(4, kind, &w);
        h.handle_frame(whole(4, 1, Kind::CLOSE, b""), true)
            .expect("frame");
        drop(s);
        assert_eq!(w.buffered(), 0, "{kind:?}");
    }
}

#[tokio::test]
async fn dropping_a_server_stream_whose_send_side_is_closed_sends_nothing() {
    let w = writer();
    let (s, h) = pair(2, StreamKind::Server, &w);
    let hooked = Arc::new(AtomicUsize::new(0));
    let hk = hooked.clone();
    h.on_terminate(move || {
        hk.fetch_add(1, Ordering::SeqCst);
    });
    h.handle_frame(whole(2, 1, Kind::MESSAGE, b"unread"), true)
        .expect("frame");
    s.send(b"resp").await.expect("send");
    s.close_send().expect("close_send");
    take_bytes(&w).await;
    assert!(!h.is_terminated());
    drop(s);
    assert_eq!(w.buffered(), 0, "no Cancel from a finished server");
    assert!(h.is_terminated(), "the stream is let go");
    assert_eq!(hooked.load(Ordering::SeqCst), 1);
    // Later frames of the peer are ignored.
    h.handle_frame(whole(2, 2, Kind::MESSAGE, b"late"), true)
        .expect("ignored");
    assert_eq!(w.buffered(), 0);
}

#[tokio::test]
async fn dropping_a_server_stream_after_send_error_sends_nothing_more() {
    let w = writer();
    let (s, _h) = pair(2, StreamKind::Server, &w);
    s.send_error(&CodedError::new(5, "no")).expect("send_error");
    take_bytes(&w).await;
    drop(s);
    assert_eq!(w.buffered(), 0);
}

#[tokio::test]
async fn dropping_an_open_server_stream_sends_cancel() {
    // A server handler that lets go while its send side is open cancels
    // the stream (control-bit Cancel) so that the peer's stream ends too.
    let w = writer();
    let (s, h) = pair(2, StreamKind::Server, &w);
    drop(s);
    assert!(h.is_terminated());
    assert_eq!(take_frames(&w).await, vec![cancel_frame(2, 1)]);
}

// ---------------------------------------------------------------- wake-ups (catalogue 33)

type Event = fn(&Stream, &StreamHandle);
type RecvCheck = fn(&Result<Option<Bytes>, StreamError>) -> bool;

fn recv_wakers() -> Vec<(&'static str, Event, RecvCheck)> {
    vec![
        (
            "close",
            |s, _| s.close().expect("close"),
            |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::TerminatedByClose)
                )
            },
        ),
        (
            "send_error",
            |s, _| s.send_error(&CodedError::new(1, "e")).expect("send_error"),
            |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::TerminatedBySendError)
                )
            },
        ),
        (
            "cancel",
            |s, _| s.cancel(StreamErrorKind::Canceled(Initiator::Local)),
            |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::Canceled(Initiator::Local))
                )
            },
        ),
        (
            "deadline",
            |s, _| s.cancel(StreamErrorKind::DeadlineExceeded),
            |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::DeadlineExceeded)
                )
            },
        ),
        (
            "handle cancel",
            |_, h| h.cancel(StreamErrorKind::DeadlineExceeded),
            |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::DeadlineExceeded)
                )
            },
        ),
        (
            "remote close",
            |_, h| {
                h.handle_frame(whole(1, 1, Kind::CLOSE, b""), true)
                    .expect("ok")
            },
            |r| matches!(r, Ok(None)),
        ),
        (
            "remote error",
            |_, h| h.handle_frame(error_frame(1, 1, 9, "x"), true).expect("ok"),
            |r| matches!(r.as_ref().map_err(StreamError::kind), Err(StreamErrorKind::Remote(e)) if e.code() == 9),
        ),
        (
            "remote cancel",
            |_, h| h.handle_frame(cancel_frame(1, 1), true).expect("ok"),
            |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::Canceled(Initiator::Remote))
                )
            },
        ),
        (
            "remote close send",
            |_, h| {
                h.handle_frame(whole(1, 1, Kind::CLOSE_SEND, b""), true)
                    .expect("ok")
            },
            |r| matches!(r, Ok(None)),
        ),
        (
            "message",
            |_, h| {
                h.handle_frame(whole(1, 1, Kind::MESSAGE, b"m"), true)
                    .expect("ok")
            },
            |r| matches!(r, Ok(Some(b)) if &b[..] == b"m"),
        ),
        (
            "connection lost",
            |_, h| h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof)),
            |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::ConnectionLost(_))
                )
            },
        ),
    ]
}

#[test]
fn blocked_recv_is_woken_by_every_ending() {
    for (name, event, check) in recv_wakers() {
        let w = writer();
        let (s, h) = pair(1, StreamKind::Client, &w);
        let (count, waker) = counting_waker();
        let mut fut = pin!(s.recv());
        assert!(poll_with(fut.as_mut(), &waker).is_pending(), "{name}");
        assert_eq!(count.count(), 0);
        event(&s, &h);
        assert!(count.count() >= 1, "{name}: the blocked recv was not woken");
        match poll_with(fut.as_mut(), &waker) {
            Poll::Ready(r) => assert!(check(&r), "{name}: recv gave {r:?}"),
            Poll::Pending => panic!("{name}: recv still pending after its wake-up"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_recv_on_another_thread_returns() {
    for (name, event, check) in recv_wakers() {
        let w = writer();
        let (s, h) = pair(1, StreamKind::Client, &w);
        let s = Arc::new(s);
        let reader = tokio::spawn({
            let s = s.clone();
            async move { s.recv().await }
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (s2, h2) = (s.clone(), h.clone());
        // The event happens on a thread of its own, away from the reader's.
        tokio::task::spawn_blocking(move || event(&s2, &h2))
            .await
            .expect("event");
        let r = timeout(LONG, reader).await.expect(name).expect("join");
        assert!(check(&r), "{name}: recv gave {r:?}");
    }
}

// ---------------------------------------------------------------- sends and writer capacity

#[tokio::test]
async fn send_blocked_on_writer_capacity_returns_when_cancelled() {
    // Catalogue 80: the writer task is stuck (never drains); a cancel
    // releases the sender promptly.
    for reason in [
        StreamErrorKind::Canceled(Initiator::Local),
        StreamErrorKind::DeadlineExceeded,
    ] {
        let w = Arc::new(MuxWriter::new(8));
        let (s, h) = stock_pair(1, StreamKind::Client, &w);
        h.write_invoke(b"/service.Service/Method", &Metadata::new())
            .expect("invoke");
        assert!(w.buffered() >= w.high_water());
        let before = w.buffered();
        let mut send = pin!(s.send(b"payload"));
        assert!(
            timeout(SHORT, send.as_mut()).await.is_err(),
            "send waits for capacity"
        );
        assert_eq!(w.buffered(), before, "nothing appended while waiting");
        h.cancel(reason.clone());
        let err = timeout(Duration::from_secs(1), send)
            .await
            .expect("send released")
            .expect_err("cancelled");
        assert_matches!(err.kind(), StreamErrorKind::Eof);
        // Unary calls pass the error through check_cancel (§5.2).
        let err = s.check_cancel(err);
        match (&reason, err.kind()) {
            (StreamErrorKind::DeadlineExceeded, StreamErrorKind::DeadlineExceeded) => {}
            (StreamErrorKind::Canceled(_), StreamErrorKind::Canceled(Initiator::Local)) => {}
            (want, got) => panic!("check_cancel gave {got:?}, want {want:?}"),
        }
        assert_eq!(
            err.is_canceled(),
            matches!(reason, StreamErrorKind::Canceled(_))
        );
        // The Cancel itself is a control packet and does not wait.
        let frames = take_frames(&w).await;
        assert_eq!(frames.last(), Some(&cancel_frame(1, 2)));
        assert_eq!(frames.len(), 2, "no Message was appended: {frames:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_blocked_on_writer_capacity_returns_when_cancelled_from_another_task() {
    let w = Arc::new(MuxWriter::new(1));
    let (s, h) = pair(1, StreamKind::Client, &w);
    h.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
    let s = Arc::new(s);
    let sender = tokio::spawn({
        let s = s.clone();
        async move { s.send(b"x").await }
    });
    tokio::time::sleep(SHORT).await;
    assert!(!sender.is_finished());
    let t0 = std::time::Instant::now();
    h.cancel(StreamErrorKind::Canceled(Initiator::Local));
    let r = timeout(Duration::from_secs(1), sender)
        .await
        .expect("released")
        .expect("join");
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_matches!(r.map_err(StreamError::into_kind), Err(StreamErrorKind::Eof));
}

#[tokio::test]
async fn send_blocked_on_writer_capacity_proceeds_once_drained() {
    let w = Arc::new(MuxWriter::new(4));
    let (s, h) = stock_pair(1, StreamKind::Client, &w);
    h.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
    let mut send = pin!(s.send(b"m"));
    assert!(timeout(SHORT, send.as_mut()).await.is_err());
    assert_eq!(
        take_frames(&w).await,
        vec![whole(1, 1, Kind::INVOKE, b"/s.S/M")]
    );
    timeout(LONG, send)
        .await
        .expect("woken by the drain")
        .expect("sent");
    assert_eq!(
        take_frames(&w).await,
        vec![whole(1, 2, Kind::MESSAGE, b"m")]
    );
}

#[tokio::test]
async fn control_packets_do_not_wait_for_capacity() {
    let w = Arc::new(MuxWriter::new(1));
    let (s, h) = stock_pair(1, StreamKind::Client, &w);
    h.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
    s.close_send().expect("close_send");
    s.close().expect("close");
    assert_eq!(
        take_frames(&w).await,
        vec![
            whole(1, 1, Kind::INVOKE, b"/s.S/M"),
            whole(1, 2, Kind::CLOSE_SEND, b""),
            whole(1, 3, Kind::CLOSE, b""),
        ]
    );
}

#[tokio::test]
async fn operations_on_a_stopped_writer() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Client, &w);
    assert!(w.stop(ConnectionError::Closed));
    assert_matches!(
        kind_of(&h.write_invoke(b"/s.S/M", &Metadata::new())),
        Some(StreamErrorKind::ConnectionLost(ConnectionError::Closed))
    );
    assert_matches!(
        s.send(b"x").await.map_err(StreamError::into_kind),
        Err(StreamErrorKind::ConnectionLost(ConnectionError::Closed))
    );
    let err = s.close_send().expect_err("writer stopped");
    assert!(!err.connection_survives());
    // The half close happened even though its packet could not be sent.
    assert_matches!(
        s.send(b"x").await.map_err(StreamError::into_kind),
        Err(StreamErrorKind::SendClosed)
    );
    // A cancel on a stopped writer is silent and still ends the stream.
    s.cancel(StreamErrorKind::Canceled(Initiator::Local));
    assert!(h.is_terminated());
    assert_matches!(
        s.recv().await.map_err(StreamError::into_kind),
        Err(StreamErrorKind::Canceled(Initiator::Local))
    );
}

// ---------------------------------------------------------------- receive queue bounds

fn small_queue(n: usize) -> StreamOptions {
    StreamOptions {
        recv_queue_messages: n,
        ..StreamOptions::default()
    }
}

/// A writer charging what it buffers, and what its streams hold, to a
/// budget of its own.
fn budgeted() -> (Arc<MuxWriter>, Arc<MemoryBudget>) {
    let budget = Arc::new(MemoryBudget::unlimited());
    (Arc::new(MuxWriter::with_budget(0, budget.clone())), budget)
}

/// Checks that `frames` is exactly one abortive Error (control bit,
/// ResourceExhausted) with id `id` and a text starting with `prefix`.
fn expect_abort(frames: &[Frame], id: Id, prefix: &str) -> CodedError {
    assert_eq!(frames.len(), 1, "exactly one frame: {frames:?}");
    let f = &frames[0];
    assert_eq!(f.header_byte(), 0x87, "{f:?}");
    assert_eq!(
        (f.id, f.kind, f.control, f.done),
        (id, Kind::ERROR, true, true)
    );
    let err = CodedError::decode(&f.data);
    assert_eq!(err.code(), RESOURCE_EXHAUSTED, "{err}");
    assert!(err.message().starts_with(prefix), "{err}");
    err
}

/// Receives `want`, in order.
async fn expect_messages(s: &Stream, want: &[impl AsRef<[u8]>]) {
    for (i, m) in want.iter().enumerate() {
        let got = timeout(LONG, s.recv())
            .await
            .expect("a queued message")
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(got.as_deref(), Some(m.as_ref()), "message {i}");
    }
}

fn overflow_text(cap: usize) -> String {
    format!("receive queue cap exceeded: receive queue exceeded its {cap}-byte cap")
}

#[tokio::test]
async fn a_lone_stream_queues_past_its_bounds_and_delivers_everything_in_order() {
    let (w, budget) = budgeted();
    let opts = StreamOptions {
        recv_queue_messages: 2,
        recv_queue_bytes: 8,
        ..StreamOptions::default()
    };
    let (s, h) = pair_with(1, StreamKind::Client, &w, opts);
    let msgs: Vec<Vec<u8>> = (1..=6u8).map(|i| vec![i; 3]).collect();
    for (mid, m) in (1u64..).zip(&msgs) {
        h.handle_frame(whole(1, mid, Kind::MESSAGE, m), true)
            .expect("queued past the bounds");
        assert_eq!(
            budget.held(),
            (3 + Q) * mid as usize,
            "queued bytes are charged"
        );
    }
    assert!(!s.is_terminated());
    assert_eq!(w.buffered(), 0, "nothing is sent to the peer");
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(s.recv().await.expect("recv").as_deref(), Some(&m[..]));
        assert_eq!(
            budget.held(),
            (3 + Q) * (msgs.len() - i - 1),
            "released as received"
        );
    }
    let (_, waker) = counting_waker();
    assert!(poll_with(pin!(s.recv()), &waker).is_pending(), "all taken");
    h.handle_frame(whole(1, 7, Kind::MESSAGE, b"more"), true)
        .expect("queued");
    h.handle_frame(whole(1, 8, Kind::CLOSE_SEND, b""), true)
        .expect("close send");
    expect_messages(&s, &[b"more"]).await;
    assert_matches!(s.recv().await, Ok(None));
    assert_eq!(budget.held(), 0);
    assert_eq!(w.buffered(), 0);
}

#[tokio::test]
async fn a_shared_stream_over_its_message_bound_fails_alone() {
    let (w, budget) = budgeted();
    let (s, h) = pair_with(1, StreamKind::Client, &w, small_queue(2));
    // InvokeMetadata (the flow-control offer) and Invoke take ids 1 and 2.
    h.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
    take_bytes(&w).await;
    assert_eq!(budget.held(), 0);
    // Another stream of the same connection.
    let (other, other_h) = pair_with(3, StreamKind::Client, &w, small_queue(2));

    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"m1"), false)
        .expect("m1");
    h.handle_frame(whole(1, 2, Kind::MESSAGE, b"m2"), false)
        .expect("m2");
    assert_eq!(budget.held(), 4 + 2 * Q);
    assert_eq!(w.buffered(), 0);
    h.handle_frame(whole(1, 3, Kind::MESSAGE, b"m3"), false)
        .expect("the stream fails, not the connection");
    assert!(s.is_terminated() && h.is_terminated());
    assert_eq!(
        budget.held(),
        4 + 2 * Q + w.buffered(),
        "m3 was dropped; the Error counts until it is written"
    );
    let err = expect_abort(
        &take_frames(&w).await,
        Id::new(1, 3),
        "receive queue cap exceeded",
    );
    assert_eq!(err.message(), overflow_text(DEFAULT_RECV_QUEUE_BYTES));
    assert_eq!(
        budget.held(),
        4 + 2 * Q,
        "what was queued stays for delivery"
    );

    // Later frames are ignored and terminal operations are silent: nothing
    // more is sent, and nothing queued is discarded.
    h.handle_frame(whole(1, 4, Kind::MESSAGE, b"m4"), false)
        .expect("ignored");
    h.handle_frame(whole(1, 5, Kind::MESSAGE, b"m5"), true)
        .expect("ignored");
    s.close_send().expect("no-op");
    s.close().expect("no-op");
    s.cancel(StreamErrorKind::Canceled(Initiator::Local));
    assert_eq!(w.buffered(), 0);
    assert_matches!(
        s.send(b"x").await.map_err(StreamError::into_kind),
        Err(StreamErrorKind::Eof)
    );

    expect_messages(&s, &[b"m1", b"m2"]).await;
    for _ in 0..2 {
        let err = s.recv().await.expect_err("the overflow");
        assert_matches!(
            err.kind(),
            StreamErrorKind::QueueOverflow { cap } if *cap == DEFAULT_RECV_QUEUE_BYTES
        );
        assert!(err.is_resource_exhausted() && err.connection_survives());
        assert!(!err.is_canceled());
    }
    assert_eq!(budget.held(), 0);

    // The other stream goes on.
    other_h
        .handle_frame(whole(3, 1, Kind::MESSAGE, b"fine"), false)
        .expect("fine");
    expect_messages(&other, &[b"fine"]).await;
    other.send(b"reply").await.expect("send");
    assert_eq!(
        take_frames(&w).await,
        vec![whole(3, 1, Kind::MESSAGE, b"reply")]
    );
}

#[tokio::test]
async fn a_shared_stream_over_its_byte_bound_fails_alone() {
    let (w, budget) = budgeted();
    let opts = StreamOptions {
        recv_queue_bytes: 4,
        ..StreamOptions::default()
    };
    let (s, h) = pair_with(2, StreamKind::Server, &w, opts);
    // An empty queue admits any message the connection accepts.
    h.handle_frame(whole(2, 1, Kind::MESSAGE, b"much larger than four"), false)
        .expect("fits an empty queue");
    assert!(!s.is_terminated());
    expect_messages(&s, &[b"much larger than four"]).await;
    h.handle_frame(whole(2, 2, Kind::MESSAGE, b"abc"), false)
        .expect("fits");
    h.handle_frame(whole(2, 3, Kind::MESSAGE, b"de"), false)
        .expect("the stream fails, not the connection");
    assert!(s.is_terminated());
    // Nothing was sent on this stream yet: the Error takes message id 1.
    let err = expect_abort(
        &take_frames(&w).await,
        Id::new(2, 1),
        "receive queue cap exceeded",
    );
    assert_eq!(err.message(), overflow_text(4));
    expect_messages(&s, &[b"abc"]).await;
    assert_matches!(
        s.recv().await.map_err(StreamError::into_kind),
        Err(StreamErrorKind::QueueOverflow { cap: 4 })
    );
    assert_eq!(budget.held(), 0);
    drop(s);
    assert_eq!(
        w.buffered(),
        0,
        "a terminated stream sends nothing when dropped"
    );
}

#[tokio::test]
async fn endings_release_what_a_lone_stream_queued_past_its_bounds() {
    // (name, ending, whether the queued messages are still delivered)
    let ends: [(&str, Event, bool); 8] = [
        ("close", |s, _| s.close().expect("close"), false),
        (
            "cancel",
            |s, _| s.cancel(StreamErrorKind::Canceled(Initiator::Local)),
            false,
        ),
        (
            "handle cancel",
            |_, h| h.cancel(StreamErrorKind::DeadlineExceeded),
            false,
        ),
        (
            "send_error",
            |s, _| s.send_error(&CodedError::new(1, "x")).expect("send_error"),
            false,
        ),
        (
            "connection lost",
            |_, h| h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof)),
            true,
        ),
        (
            "remote close",
            |_, h| {
                h.handle_frame(whole(1, 5, Kind::CLOSE, b""), true)
                    .expect("ok")
            },
            true,
        ),
        (
            "remote error",
            |_, h| h.handle_frame(error_frame(1, 5, 3, "x"), true).expect("ok"),
            true,
        ),
        (
            "remote cancel",
            |_, h| h.handle_frame(cancel_frame(1, 5), true).expect("ok"),
            true,
        ),
    ];
    for (name, end, delivered) in ends {
        let (w, budget) = budgeted();
        let (s, h) = pair_with(1, StreamKind::Client, &w, small_queue(1));
        for mid in 1..=4 {
            h.handle_frame(whole(1, mid, Kind::MESSAGE, b"abcd"), true)
                .expect(name);
        }
        assert_eq!(budget.held(), 16 + 4 * Q, "{name}");
        end(&s, &h);
        assert!(s.is_terminated(), "{name}");
        if delivered {
            assert_eq!(
                budget.held(),
                16 + 4 * Q + w.buffered(),
                "{name}: kept for delivery"
            );
            expect_messages(&s, &[b"abcd"; 4]).await;
        }
        let r = s.recv().await;
        assert!(!matches!(r, Ok(Some(_))), "{name}: {r:?}");
        assert_eq!(
            budget.held(),
            w.buffered(),
            "{name}: only the writer's bytes are left"
        );
        take_bytes(&w).await;
        assert_eq!(budget.held(), 0, "{name}");
        drop(s);
        drop(h);
        assert_eq!(budget.held(), 0, "{name}");
    }

    // Dropping the application's stream cancels it, discarding the queue.
    let (w, budget) = budgeted();
    let (s, h) = pair_with(1, StreamKind::Client, &w, small_queue(1));
    for mid in 1..=3 {
        h.handle_frame(whole(1, mid, Kind::MESSAGE, b"abcd"), true)
            .expect("queued");
    }
    drop(s);
    assert!(h.is_terminated());
    assert_eq!(take_frames(&w).await, vec![cancel_frame(1, 1)]);
    assert_eq!(budget.held(), 0);

    // Messages that stay deliverable but are never read are released with
    // the stream itself, once the connection lets go of it too.
    let (w, budget) = budgeted();
    let (s, h) = pair_with(1, StreamKind::Client, &w, small_queue(1));
    for mid in 1..=3 {
        h.handle_frame(whole(1, mid, Kind::MESSAGE, b"abcd"), true)
            .expect("queued");
    }
    h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof));
    drop(s);
    assert_eq!(
        budget.held(),
        12 + 3 * Q,
        "the connection's handle keeps the stream"
    );
    drop(h);
    assert_eq!(budget.held(), 0);
    assert_eq!(w.buffered(), 0);
}

#[tokio::test]
async fn half_assembled_messages_are_charged_until_released() {
    let (w, budget) = budgeted();
    let (s, h) = pair(1, StreamKind::Server, &w);
    h.handle_frame(fr(1, 1, Kind::MESSAGE, false, false, b"hello "), true)
        .expect("first frame");
    assert_eq!(budget.held(), 6, "the half-built message counts");
    h.handle_frame(fr(1, 1, Kind::MESSAGE, true, false, b"world"), true)
        .expect("last frame");
    assert_eq!(budget.held(), 11 + Q);
    expect_messages(&s, &[b"hello world"]).await;
    assert_eq!(budget.held(), 0);
    // A higher message id drops what was under assembly.
    h.handle_frame(fr(1, 2, Kind::MESSAGE, false, false, b"lost"), true)
        .expect("first frame");
    h.handle_frame(fr(1, 3, Kind::MESSAGE, false, false, b"kept"), true)
        .expect("first frame");
    assert_eq!(budget.held(), 4);
    // Released with the stream.
    h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof));
    drop(s);
    drop(h);
    assert_eq!(budget.held(), 0);
}

/// A terminated stream's half-built message can never complete (later
/// frames are ignored), so a termination releases it at once, whatever
/// ended the stream.
#[tokio::test]
async fn termination_releases_a_half_assembled_message() {
    let ends: [(&str, Event); 5] = [
        ("cancel", |s, _| {
            s.cancel(StreamErrorKind::Canceled(Initiator::Local))
        }),
        ("close", |s, _| s.close().expect("close")),
        ("connection lost", |_, h| {
            h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof))
        }),
        ("remote cancel", |_, h| {
            h.handle_frame(cancel_frame(1, 2), true).expect("ok")
        }),
        ("oversized", |_, h| {
            h.handle_frame(fr(1, 1, Kind::MESSAGE, true, false, b"-more"), true)
                .expect("the stream fails alone")
        }),
    ];
    for (name, end) in ends {
        let (w, budget) = budgeted();
        let opts = StreamOptions {
            max_packet_size: 8,
            ..StreamOptions::default()
        };
        let (s, h) = pair_with(1, StreamKind::Server, &w, opts);
        h.handle_frame(fr(1, 1, Kind::MESSAGE, false, false, b"half"), true)
            .expect("first frame");
        assert_eq!(budget.held(), 4, "{name}");
        end(&s, &h);
        take_bytes(&w).await;
        assert_eq!(
            budget.held(),
            0,
            "{name}: a dead half-built message is still charged"
        );
    }
}

/// Empty messages take memory too (a `Bytes` and a queue slot each), so a
/// peer flooding a lone stream, or a flow-controlled one, with them
/// eventually stops the connection's reader through the budget: each
/// queued message is charged `QUEUED_MESSAGE_COST`.
#[tokio::test]
async fn queued_empty_messages_are_charged() {
    for (name, opts, alone) in [
        ("lone stream", small_queue(1), true),
        ("fork", fork(FRAME as u64 + 1, 1, 1 << 20), false),
    ] {
        let (w, budget) = budgeted();
        let (s, h) = pair_with(1, StreamKind::Server, &w, opts);
        for mid in 1..=10_000 {
            h.handle_frame(whole(1, mid, Kind::MESSAGE, b""), alone)
                .expect(name);
        }
        assert!(!s.is_terminated(), "{name}");
        assert_eq!(budget.held(), 10_000 * Q, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_lone_stream_read_concurrently_delivers_everything_in_order() {
    const N: u64 = 500;
    let (w, budget) = budgeted();
    let (s, h) = pair_with(1, StreamKind::Server, &w, small_queue(1));
    let reader = tokio::spawn(async move {
        for mid in 1..=N {
            let data = mid.to_be_bytes();
            h.handle_frame(whole(1, mid, Kind::MESSAGE, &data), true)
                .expect("frame");
            if mid % 16 == 0 {
                tokio::task::yield_now().await;
            }
        }
        h.handle_frame(whole(1, N + 1, Kind::CLOSE_SEND, b""), true)
            .expect("frame");
    });
    let mut got = 0u64;
    while let Some(m) = timeout(LONG, s.recv())
        .await
        .expect("no lost wake-up")
        .expect("recv")
    {
        got += 1;
        assert_eq!(&m[..], &got.to_be_bytes());
    }
    assert_eq!(got, N);
    reader.await.expect("reader");
    assert_eq!(w.buffered(), 0, "a lone stream never fails for its queue");
    assert_eq!(budget.held(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_shared_stream_read_concurrently_delivers_a_prefix_then_at_most_one_overflow() {
    const N: u64 = 2000;
    let (w, budget) = budgeted();
    let (s, h) = pair_with(1, StreamKind::Server, &w, small_queue(4));
    let reader = tokio::spawn(async move {
        for mid in 1..=N {
            let data = mid.to_be_bytes();
            h.handle_frame(whole(1, mid, Kind::MESSAGE, &data), false)
                .expect("never a connection error");
            if mid % 8 == 0 {
                tokio::task::yield_now().await;
            }
        }
        h.handle_frame(whole(1, N + 1, Kind::CLOSE_SEND, b""), false)
            .expect("frame");
    });
    let mut got = 0u64;
    let end = loop {
        match timeout(LONG, s.recv()).await.expect("no lost wake-up") {
            Ok(Some(m)) => {
                got += 1;
                assert_eq!(&m[..], &got.to_be_bytes(), "in order, none lost");
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    reader.await.expect("reader");
    let frames = take_frames(&w).await;
    match end {
        None => {
            assert_eq!(got, N);
            assert!(frames.is_empty(), "{frames:?}");
        }
        Some(e) => {
            assert_matches!(e.kind(), StreamErrorKind::QueueOverflow { .. });
            assert!(got < N);
            expect_abort(&frames, Id::new(1, 1), "receive queue cap exceeded");
        }
    }
    assert_eq!(budget.held(), 0);
}

// ---------------------------------------------------------------- flow control

const FRAME: usize = FlowControl::FRAME as usize;

/// Fork-mode options: a window of `window` bytes granted back in batches
/// of at least `threshold`, and messages of at most `max` bytes.
fn fork(window: u64, threshold: u64, max: usize) -> StreamOptions {
    StreamOptions {
        max_packet_size: max,
        flow_control: FlowControl::fork()
            .with_window(window, threshold)
            .expect("valid settings"),
        ..StreamOptions::default()
    }
}

/// A writer that never makes senders wait for room.
fn roomy_writer() -> Arc<MuxWriter> {
    Arc::new(MuxWriter::new(usize::MAX))
}

/// Checks that `frames` is exactly one WindowUpdate granting `delta` to
/// stream `sid`.
fn expect_grant(frames: &[Frame], sid: u64, delta: u64) {
    assert_eq!(frames.len(), 1, "one grant: {frames:?}");
    let f = &frames[0];
    assert_eq!(f.header_byte(), 0x91, "{f:?}");
    assert_eq!(f.id, Id::new(sid, 0), "message id 0");
    assert_eq!(
        WindowUpdate::parse(f),
        Some(WindowUpdate { stream: sid, delta })
    );
}

/// The frame a negotiation packet is on the wire.
fn negotiation(n: FlowNegotiation, id: Id) -> Frame {
    let mut buf = Vec::new();
    n.append_to(&mut buf, id);
    let len = buf.len();
    let (f, used) = Frame::parse(&Bytes::from(buf))
        .expect("valid")
        .expect("whole");
    assert_eq!(used, len);
    f
}

fn expect_gating(frames: &[Frame], id: Id) {
    assert_eq!(frames.len(), 1, "one marker: {frames:?}");
    let f = &frames[0];
    assert_eq!(f.header_byte(), 0x93, "{f:?}");
    assert_eq!(f.id, id);
    assert_eq!(
        FlowNegotiation::parse(&f.data),
        Some(FlowNegotiation::Gating)
    );
}

#[tokio::test]
async fn fork_sender_waits_for_credit_until_a_window_update() {
    let w = roomy_writer();
    let (s, h) = pair_with(
        1,
        StreamKind::Client,
        &w,
        fork(FRAME as u64 + 1, 1, 1 << 20),
    );
    let (count, waker) = counting_waker();
    s.send(&[1; 40_000]).await.expect("within the window");
    assert_eq!(take_frames(&w).await.len(), 1);
    {
        // 25537 bytes of credit left; the message's first frame needs 30000.
        let mut send = pin!(s.send(&[2; 30_000]));
        assert!(poll_with(send.as_mut(), &waker).is_pending());
        assert!(
            timeout(SHORT, send.as_mut()).await.is_err(),
            "still waiting"
        );
        assert_eq!(w.buffered(), 0, "nothing appended while waiting");
        h.window_update(4_000);
        assert!(count.count() >= 1, "a grant wakes the waiting sender");
        assert!(
            poll_with(send.as_mut(), &waker).is_pending(),
            "29537 is still short"
        );
        let before = count.count();
        h.window_update(463);
        assert!(count.count() > before);
        assert_matches!(poll_with(send.as_mut(), &waker), Poll::Ready(Ok(())));
    }
    assert_eq!(
        take_frames(&w).await,
        vec![whole(1, 2, Kind::MESSAGE, &[2; 30_000])]
    );

    // No credit left: a message starts once its first frame fits, and its
    // other frames overdraw the window.
    let big = vec![3u8; 200_000];
    {
        let mut send = pin!(s.send(&big));
        assert!(poll_with(send.as_mut(), &waker).is_pending());
        h.window_update(FRAME as u64 - 1);
        assert!(poll_with(send.as_mut(), &waker).is_pending(), "1 short");
        h.window_update(1);
        assert_matches!(poll_with(send.as_mut(), &waker), Poll::Ready(Ok(())));
    }
    let frames = take_frames(&w).await;
    assert_eq!(frames.len(), 4, "frames of at most 64 KiB");
    assert!(
        frames
            .iter()
            .all(|f| f.id == Id::new(1, 3) && f.data.len() <= FRAME)
    );
    assert_eq!(
        frames.iter().map(|f| f.data.len()).sum::<usize>(),
        big.len()
    );
    // Overdrawn by 200000 - 65536: even an empty message waits for that.
    {
        let mut send = pin!(s.send(b""));
        assert!(poll_with(send.as_mut(), &waker).is_pending());
        h.window_update((big.len() - FRAME - 1) as u64);
        assert!(poll_with(send.as_mut(), &waker).is_pending(), "1 short");
        h.window_update(1);
        assert_matches!(poll_with(send.as_mut(), &waker), Poll::Ready(Ok(())));
    }
    let mut send = pin!(s.send(b"x"));
    assert!(poll_with(send.as_mut(), &waker).is_pending(), "balance 0");
    h.window_update(u64::MAX);
    assert_matches!(poll_with(send.as_mut(), &waker), Poll::Ready(Ok(())));
    assert_eq!(
        take_frames(&w).await,
        vec![
            whole(1, 4, Kind::MESSAGE, b""),
            whole(1, 5, Kind::MESSAGE, b"x")
        ]
    );
    // A saturated balance never wraps.
    h.window_update(u64::MAX);
    s.send(&[4; 1000]).await.expect("plenty of credit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_update_from_another_thread_releases_a_waiting_sender() {
    let w = roomy_writer();
    let (s, h) = pair_with(
        1,
        StreamKind::Client,
        &w,
        fork(FRAME as u64 + 1, 1, 1 << 20),
    );
    s.send(&vec![0; FRAME + 1]).await.expect("the whole window");
    let s = Arc::new(s);
    let mut sender = tokio::spawn({
        let s = s.clone();
        async move { s.send(b"next").await }
    });
    assert!(
        timeout(SHORT, &mut sender).await.is_err(),
        "waiting for credit"
    );
    std::thread::spawn(move || h.window_update(4))
        .join()
        .expect("grant");
    timeout(LONG, sender)
        .await
        .expect("released by the grant")
        .expect("join")
        .expect("sent");
    let frames = take_frames(&w).await;
    assert_eq!(frames.last(), Some(&whole(1, 2, Kind::MESSAGE, b"next")));
}

#[tokio::test]
async fn endings_release_a_sender_waiting_for_credit() {
    type Check = fn(&StreamErrorKind) -> bool;
    // (name, ending, what the send returns, what check_cancel makes of it)
    let ends: [(&str, Event, Check, Check); 9] = [
        (
            "cancel",
            |s, _| s.cancel(StreamErrorKind::Canceled(Initiator::Local)),
            |k| matches!(k, StreamErrorKind::Eof),
            |k| matches!(k, StreamErrorKind::Canceled(Initiator::Local)),
        ),
        (
            "deadline",
            |_, h| h.cancel(StreamErrorKind::DeadlineExceeded),
            |k| matches!(k, StreamErrorKind::Eof),
            |k| matches!(k, StreamErrorKind::DeadlineExceeded),
        ),
        (
            "close",
            |s, _| s.close().expect("close"),
            |k| matches!(k, StreamErrorKind::TerminatedByClose),
            |k| matches!(k, StreamErrorKind::TerminatedByClose),
        ),
        (
            "close_send",
            |s, _| s.close_send().expect("close_send"),
            |k| matches!(k, StreamErrorKind::SendClosed),
            |k| matches!(k, StreamErrorKind::SendClosed),
        ),
        (
            "send_error",
            |s, _| s.send_error(&CodedError::new(1, "x")).expect("send_error"),
            |k| matches!(k, StreamErrorKind::Eof),
            |k| matches!(k, StreamErrorKind::Eof),
        ),
        (
            "remote close",
            |_, h| {
                h.handle_frame(whole(1, 1, Kind::CLOSE, b""), true)
                    .expect("ok")
            },
            |k| matches!(k, StreamErrorKind::ClosedByRemote),
            |k| matches!(k, StreamErrorKind::ClosedByRemote),
        ),
        (
            "remote error",
            |_, h| h.handle_frame(error_frame(1, 1, 3, "x"), true).expect("ok"),
            |k| matches!(k, StreamErrorKind::Eof),
            |k| matches!(k, StreamErrorKind::Eof),
        ),
        (
            "remote cancel",
            |_, h| h.handle_frame(cancel_frame(1, 1), true).expect("ok"),
            |k| matches!(k, StreamErrorKind::Eof),
            |k| matches!(k, StreamErrorKind::Canceled(Initiator::Remote)),
        ),
        (
            "connection lost",
            |_, h| h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof)),
            |k| matches!(k, StreamErrorKind::Eof),
            |k| matches!(k, StreamErrorKind::Eof),
        ),
    ];
    for (name, end, send_check, cancel_check) in ends {
        let w = roomy_writer();
        let (s, h) = pair_with(
            1,
            StreamKind::Client,
            &w,
            fork(FRAME as u64 + 1, 1, 1 << 20),
        );
        s.send(&vec![0; FRAME + 1]).await.expect("the whole window");
        take_bytes(&w).await;
        let (count, waker) = counting_waker();
        let mut send = pin!(s.send(b"x"));
        assert!(poll_with(send.as_mut(), &waker).is_pending(), "{name}");
        end(&s, &h);
        assert!(
            count.count() >= 1,
            "{name}: the waiting sender was not woken"
        );
        let err = match poll_with(send.as_mut(), &waker) {
            Poll::Ready(Err(e)) => e,
            other => panic!("{name}: {other:?}"),
        };
        assert!(send_check(err.kind()), "{name}: send gave {err:?}");
        let err = s.check_cancel(err);
        assert!(
            cancel_check(err.kind()),
            "{name}: check_cancel gave {err:?}"
        );
        // Credit arriving late changes nothing.
        h.window_update(1 << 20);
        assert!(s.send(b"late").await.is_err(), "{name}");
        let frames = take_frames(&w).await;
        assert!(
            frames.iter().all(|f| f.kind != Kind::MESSAGE),
            "{name}: a message went out: {frames:?}"
        );
    }
}

#[tokio::test]
async fn received_bytes_are_granted_back_once_the_threshold_is_consumed() {
    let ends: [(&str, Event); 3] = [
        ("remote close", |_, h| {
            h.handle_frame(whole(5, 7, Kind::CLOSE, b""), false)
                .expect("ok")
        }),
        ("remote error", |_, h| {
            h.handle_frame(error_frame(5, 7, 1, "x"), false)
                .expect("ok")
        }),
        ("connection lost", |_, h| {
            h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof))
        }),
    ];
    for (name, end) in ends {
        let w = writer();
        let (s, h) = pair_with(
            5,
            StreamKind::Server,
            &w,
            fork(128 << 10, 32 << 10, 100_000),
        );
        let chunk = vec![7u8; 20 << 10];
        for mid in 1..=6 {
            h.handle_frame(whole(5, mid, Kind::MESSAGE, &chunk), false)
                .expect("within the window");
        }
        assert_eq!(w.buffered(), 0, "{name}: nothing consumed yet");
        expect_messages(&s, &[&chunk]).await;
        assert_eq!(w.buffered(), 0, "{name}: 20 KiB is under the threshold");
        expect_messages(&s, &[&chunk]).await;
        expect_grant(&take_frames(&w).await, 5, 40 << 10);
        expect_messages(&s, &[&chunk]).await;
        assert_eq!(w.buffered(), 0, "{name}");
        end(&s, &h);
        // Queued messages are still delivered; nothing more is granted,
        // though more than the threshold is consumed.
        expect_messages(&s, &[&chunk; 3]).await;
        let r = s.recv().await;
        assert!(!matches!(r, Ok(Some(_))), "{name}: {r:?}");
        assert!(s.is_terminated());
        assert_eq!(
            take_frames(&w).await,
            vec![],
            "{name}: a WindowUpdate after termination"
        );
    }
}

#[tokio::test]
async fn a_flow_controlled_queue_is_capped_at_the_window_plus_one_message() {
    let max = 10_000;
    let cap = FRAME + 1 + max;
    let (w, budget) = budgeted();
    let (s, h) = pair_with(1, StreamKind::Server, &w, fork(FRAME as u64 + 1, 1, max));
    let m = vec![9u8; max];
    for mid in 1..=7 {
        h.handle_frame(whole(1, mid, Kind::MESSAGE, &m), false)
            .expect("within the cap");
    }
    assert!(!s.is_terminated());
    // Alone or not, a flow-controlled stream is held to its cap: its peer
    // broke the window it was given.
    h.handle_frame(whole(1, 8, Kind::MESSAGE, &m), true)
        .expect("the stream fails, not the connection");
    assert!(s.is_terminated());
    let err = expect_abort(
        &take_frames(&w).await,
        Id::new(1, 1),
        "receive queue cap exceeded",
    );
    assert_eq!(err.message(), overflow_text(cap));
    expect_messages(&s, &[&m; 7]).await;
    assert_matches!(
        s.recv().await.map_err(StreamError::into_kind),
        Err(StreamErrorKind::QueueOverflow { cap: c }) if c == cap
    );
    assert_eq!(w.buffered(), 0, "no grant after the failure");
    assert_eq!(budget.held(), 0);
}

#[tokio::test]
async fn an_oversized_inbound_message_fails_only_its_stream() {
    for flow in [FlowControl::off(), FlowControl::auto(), FlowControl::fork()] {
        let mode = flow.mode();
        let (w, budget) = budgeted();
        let opts = StreamOptions {
            max_packet_size: 100,
            flow_control: flow,
            ..StreamOptions::default()
        };
        let (s, h) = pair_with(1, StreamKind::Server, &w, opts.clone());
        let (other, other_h) = pair_with(3, StreamKind::Server, &w, opts);
        h.handle_frame(whole(1, 1, Kind::MESSAGE, b"ok"), false)
            .expect("ok");
        h.handle_frame(fr(1, 2, Kind::MESSAGE, false, false, &[1; 60]), false)
            .expect("first frame");
        assert_eq!(budget.held(), 62 + Q, "{mode:?}");
        h.handle_frame(fr(1, 2, Kind::MESSAGE, true, false, &[2; 60]), false)
            .expect("the stream fails, not the connection");
        assert!(s.is_terminated(), "{mode:?}");
        let err = expect_abort(&take_frames(&w).await, Id::new(1, 1), "message too large");
        assert_eq!(
            err.message(),
            "message too large: message size 120 exceeds maximum of 100 bytes"
        );
        // Later frames of the stream are ignored.
        h.handle_frame(whole(1, 3, Kind::MESSAGE, b"late"), false)
            .expect("ignored");
        expect_messages(&s, &[b"ok"]).await;
        let e = s.recv().await.expect_err("too large");
        assert_matches!(
            e.kind(),
            StreamErrorKind::ReceivedTooLarge {
                size: 120,
                limit: 100
            }
        );
        assert!(e.is_too_large() && e.is_resource_exhausted() && e.connection_survives());
        assert_eq!(w.buffered(), 0, "{mode:?}");
        // The other stream goes on.
        other_h
            .handle_frame(whole(3, 1, Kind::MESSAGE, b"fine"), false)
            .expect("fine");
        expect_messages(&other, &[b"fine"]).await;
        other.send(b"reply").await.expect("send");
        assert_eq!(
            take_frames(&w).await,
            vec![whole(3, 1, Kind::MESSAGE, b"reply")]
        );
        drop((s, h));
        assert_eq!(budget.held(), 0, "{mode:?}");
    }
}

/// The frames opening a client stream with `metadata`: through
/// `write_invoke`, or `write_unary` with `unary` as the request.
async fn opening_frames(
    flow: FlowControl,
    metadata: &Metadata,
    unary: Option<&[u8]>,
) -> Vec<Frame> {
    let w = writer();
    let opts = StreamOptions {
        max_packet_size: 1 << 20,
        flow_control: flow,
        ..StreamOptions::default()
    };
    let (_s, h) = pair_with(1, StreamKind::Client, &w, opts);
    match unary {
        Some(m) => h
            .write_unary(b"/s.S/M", metadata, &Bytes::copy_from_slice(m))
            .expect("unary"),
        None => h.write_invoke(b"/s.S/M", metadata).expect("invoke"),
    }
    take_frames(&w).await
}

#[tokio::test]
async fn auto_write_invoke_offers_flow_control_and_unary_calls_do_not() {
    let offer = FlowParams {
        window: FlowControl::AUTO_WINDOW,
        max_message: 1 << 20,
    }
    .to_metadata_value();
    let with_offer = |md: &Metadata| {
        let mut md = md.clone();
        md.insert(FLOW_CONTROL_METADATA_KEY.to_owned(), offer.clone());
        md
    };
    let md = Metadata::from([("k".to_owned(), "v".to_owned())]);
    let none = Metadata::new();
    // The application's own value for the key never reaches the peer.
    let spoof = Metadata::from([(FLOW_CONTROL_METADATA_KEY.to_owned(), "1;w=1;m=1".to_owned())]);
    let auto = FlowControl::auto();

    // A streaming call offers, next to the application's metadata.
    for (given, want) in [
        (&md, with_offer(&md)),
        (&none, with_offer(&none)),
        (&spoof, with_offer(&none)),
    ] {
        let frames = opening_frames(auto, given, None).await;
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(
            (frames[0].id, frames[0].kind),
            (Id::new(1, 1), Kind::INVOKE_METADATA)
        );
        assert_eq!(decode_metadata(&frames[0].data), Ok(want));
        assert_eq!(frames[1], whole(1, 2, Kind::INVOKE, b"/s.S/M"));
    }
    // A unary call never does.
    let frames = opening_frames(auto, &md, Some(b"req")).await;
    assert_eq!(decode_metadata(&frames[0].data), Ok(md.clone()));
    assert_eq!(
        frames[1..],
        [
            whole(1, 2, Kind::INVOKE, b"/s.S/M"),
            whole(1, 3, Kind::MESSAGE, b"req"),
            whole(1, 4, Kind::CLOSE_SEND, b""),
        ]
    );
    for given in [&none, &spoof] {
        assert_eq!(
            opening_frames(auto, given, Some(b"req")).await,
            vec![
                whole(1, 1, Kind::INVOKE, b"/s.S/M"),
                whole(1, 2, Kind::MESSAGE, b"req"),
                whole(1, 3, Kind::CLOSE_SEND, b""),
            ]
        );
    }
    // Off and Fork never offer: the fork cannot announce itself.
    for flow in [FlowControl::off(), FlowControl::fork()] {
        assert_eq!(
            opening_frames(flow, &none, None).await,
            vec![whole(1, 1, Kind::INVOKE, b"/s.S/M")],
            "{:?}",
            flow.mode()
        );
    }
}

#[tokio::test]
async fn auto_client_sends_freely_until_accepted_then_gates() {
    let w = roomy_writer();
    let (s, h) = pair(1, StreamKind::Client, &w);
    // InvokeMetadata (the offer) and Invoke: ids 1 and 2.
    h.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
    let (count, waker) = counting_waker();
    // 3 MiB, more than a 2 MiB window: an auto client never waits
    // before the acceptance, since a stock server never grants.
    let mib = vec![5u8; 1 << 20];
    for _ in 0..3 {
        assert_matches!(poll_with(pin!(s.send(&mib)), &waker), Poll::Ready(Ok(())));
    }
    let frames = take_frames(&w).await;
    assert_eq!(
        frames[2..].len(),
        3 * 16,
        "split into 64 KiB frames already"
    );
    // Messages from a server that has not accepted are not granted.
    h.handle_frame(whole(1, 1, Kind::MESSAGE, &[0; 1 << 10]), true)
        .expect("message");
    expect_messages(&s, &[&[0; 1 << 10]]).await;
    assert_eq!(w.buffered(), 0);

    // The server accepts, with a 1 MiB window: the client announces that it
    // gates from here on.
    let accept = FlowNegotiation::Accept(
        FlowParams {
            window: 1 << 20,
            max_message: 4 << 20,
        },
        drpc_wire::CompressionSet::EMPTY,
    );
    h.handle_frame(negotiation(accept, Id::new(1, 2)), true)
        .expect("accept");
    expect_gating(&take_frames(&w).await, Id::new(1, 6));
    // What was sent before counts: 2 MiB overdrawn, even an empty message
    // waits.
    {
        let mut send = pin!(s.send(b""));
        assert!(poll_with(send.as_mut(), &waker).is_pending());
        assert!(
            timeout(SHORT, send.as_mut()).await.is_err(),
            "still waiting"
        );
        h.window_update((2 << 20) - 1);
        assert!(poll_with(send.as_mut(), &waker).is_pending(), "1 short");
        h.window_update(1);
        assert_matches!(poll_with(send.as_mut(), &waker), Poll::Ready(Ok(())));
    }
    {
        let mut send = pin!(s.send(b"x"));
        assert!(poll_with(send.as_mut(), &waker).is_pending());
        h.window_update(1);
        assert_matches!(poll_with(send.as_mut(), &waker), Poll::Ready(Ok(())));
    }
    assert!(count.count() >= 2);
    assert_eq!(
        take_frames(&w).await,
        vec![
            whole(1, 7, Kind::MESSAGE, b""),
            whole(1, 8, Kind::MESSAGE, b"x")
        ]
    );
    // A second acceptance is ignored.
    h.handle_frame(negotiation(accept, Id::new(1, 3)), true)
        .expect("ignored");
    assert_eq!(w.buffered(), 0);
    // The server's messages are now granted back as they are consumed
    // (the auto threshold: 1 MiB).
    h.handle_frame(whole(1, 4, Kind::MESSAGE, &vec![1; 1100 << 10]), true)
        .expect("message");
    assert_eq!(w.buffered(), 0);
    assert_eq!(
        s.recv().await.expect("recv").map(|m| m.len()),
        Some(1100 << 10)
    );
    expect_grant(&take_frames(&w).await, 1, 1100 << 10);
}

#[tokio::test]
async fn an_acceptance_needs_no_marker_once_sending_is_over_and_is_ignored_without_an_offer() {
    let accept = FlowNegotiation::Accept(
        FlowParams {
            window: 1 << 20,
            max_message: 4 << 20,
        },
        drpc_wire::CompressionSet::EMPTY,
    );
    // Offered, then half closed: nothing more will be sent, so no marker.
    let w = writer();
    let (s, h) = pair(1, StreamKind::Client, &w);
    h.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
    s.close_send().expect("close_send");
    take_bytes(&w).await;
    h.handle_frame(negotiation(accept, Id::new(1, 1)), true)
        .expect("accept");
    assert_eq!(w.buffered(), 0);
    // A unary call offered nothing.
    let w = writer();
    let (_s, h) = pair(1, StreamKind::Client, &w);
    h.write_unary(b"/s.S/M", &Metadata::new(), &Bytes::from_static(b"req"))
        .expect("unary");
    take_bytes(&w).await;
    h.handle_frame(negotiation(accept, Id::new(1, 1)), true)
        .expect("ignored");
    assert_eq!(w.buffered(), 0);
    // Nor did a stream that never sent an Invoke, nor a server; neither
    // starts gating.
    for kind in [StreamKind::Client, StreamKind::Server] {
        let w = writer();
        let (s, h) = pair(1, kind, &w);
        h.handle_frame(negotiation(accept, Id::new(1, 1)), true)
            .expect("ignored");
        assert_eq!(w.buffered(), 0, "{kind:?}");
        for _ in 0..3 {
            s.send(&[0; 1 << 20]).await.expect("never gated");
            take_bytes(&w).await;
        }
    }
}

#[tokio::test]
async fn auto_server_accepts_then_gates_by_the_clients_window_and_grants() {
    let w = roomy_writer();
    let own = FlowControl::auto()
        .with_window(2 * FRAME as u64, FRAME as u64)
        .expect("valid");
    let opts = StreamOptions {
        max_packet_size: 1 << 20,
        flow_control: own,
        ..StreamOptions::default()
    };
    let (s, h) = pair_with(1, StreamKind::Server, &w, opts);
    // Ungated before the offer is taken.
    s.send(&[0; 100]).await.expect("no flow control yet");
    take_bytes(&w).await;
    let offer = FlowParams {
        window: FRAME as u64 + 1,
        max_message: 1 << 20,
    };
    assert!(h.accept_flow_control(offer));
    assert!(!h.accept_flow_control(offer), "once");
    let frames = take_frames(&w).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].header_byte(), 0x93);
    assert_eq!(frames[0].id, Id::new(1, 2));
    assert_eq!(
        FlowNegotiation::parse(&frames[0].data),
        Some(FlowNegotiation::Accept(
            FlowParams {
                window: 2 * FRAME as u64,
                max_message: 1 << 20,
            },
            drpc_wire::CompressionSet::supported(),
        ))
    );
    // Its sends are gated by the client's window at once.
    s.send(&vec![0; FRAME + 1]).await.expect("the whole window");
    let (_, waker) = counting_waker();
    {
        let mut send = pin!(s.send(b"y"));
        assert!(poll_with(send.as_mut(), &waker).is_pending());
        h.window_update(1);
        assert_matches!(poll_with(send.as_mut(), &waker), Poll::Ready(Ok(())));
    }
    take_bytes(&w).await;
    // It grants what its application consumes.
    h.handle_frame(whole(1, 1, Kind::MESSAGE, &vec![1; FRAME]), true)
        .expect("message");
    // The client's marker is taken silently.
    h.handle_frame(negotiation(FlowNegotiation::Gating, Id::new(1, 2)), true)
        .expect("gating");
    assert_eq!(w.buffered(), 0);
    expect_messages(&s, &[&vec![1; FRAME]]).await;
    expect_grant(&take_frames(&w).await, 1, FRAME as u64);

    // Fork and Off streams, client streams and terminated streams take no
    // offer.
    for (kind, flow) in [
        (StreamKind::Server, FlowControl::off()),
        (StreamKind::Server, FlowControl::fork()),
        (StreamKind::Client, FlowControl::auto()),
    ] {
        let w = writer();
        let opts = StreamOptions {
            flow_control: flow,
            ..StreamOptions::default()
        };
        let (_s, h) = pair_with(1, kind, &w, opts);
        assert!(!h.accept_flow_control(offer), "{kind:?} {:?}", flow.mode());
        assert_eq!(w.buffered(), 0);
    }
    let w = writer();
    let (_s, h) = pair(1, StreamKind::Server, &w);
    h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof));
    assert!(!h.accept_flow_control(offer), "terminated");
    assert_eq!(w.buffered(), 0);
}

// ---------------------------------------------------------------- termination hooks

#[test]
fn on_terminate_runs_once_outside_the_lock() {
    // The hook calls back into the stream; were it run under the stream's
    // lock, this would deadlock. Run on a thread with a deadline.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let w = writer();
        let (s, h) = pair(1, StreamKind::Client, &w);
        let runs = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let (r, sn, hh) = (runs.clone(), seen.clone(), h.clone());
        h.on_terminate(move || {
            r.fetch_add(1, Ordering::SeqCst);
            if hh.is_terminated() {
                sn.fetch_add(1, Ordering::SeqCst);
            }
            // Operations on the stream from inside the hook are no-ops.
            hh.cancel(StreamErrorKind::Canceled(Initiator::Local));
        });
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        s.close().expect("close");
        s.cancel(StreamErrorKind::Canceled(Initiator::Local));
        h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof));
        h.handle_frame(whole(1, 1, Kind::CLOSE, b""), true)
            .expect("ok");
        drop(s);
        tx.send((runs.load(Ordering::SeqCst), seen.load(Ordering::SeqCst)))
            .expect("send");
    });
    let (runs, seen) = rx.recv_timeout(LONG).expect("the hook deadlocked");
    assert_eq!(runs, 1, "the hook runs exactly once");
    assert_eq!(seen, 1, "the hook sees the stream terminated");
}

#[test]
fn on_terminate_runs_for_every_kind_of_ending() {
    let ways: [(&str, Event); 6] = [
        ("remote close", |_, h| {
            h.handle_frame(whole(1, 1, Kind::CLOSE, b""), true)
                .expect("ok")
        }),
        ("remote error", |_, h| {
            h.handle_frame(error_frame(1, 1, 1, "x"), true).expect("ok")
        }),
        ("remote cancel", |_, h| {
            h.handle_frame(cancel_frame(1, 1), true).expect("ok")
        }),
        ("both close send", |s, h| {
            s.close_send().expect("close_send");
            h.handle_frame(whole(1, 1, Kind::CLOSE_SEND, b""), true)
                .expect("ok")
        }),
        ("send_error", |s, _| {
            s.send_error(&CodedError::new(1, "x")).expect("ok")
        }),
        ("drop", |_, _| {}),
    ];
    for (name, way) in ways {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let w = writer();
            let (s, h) = pair(1, StreamKind::Client, &w);
            let runs = Arc::new(AtomicUsize::new(0));
            let (r, hh) = (runs.clone(), h.clone());
            h.on_terminate(move || {
                assert!(hh.is_terminated());
                r.fetch_add(1, Ordering::SeqCst);
            });
            way(&s, &h);
            drop(s);
            tx.send(runs.load(Ordering::SeqCst)).expect("send");
        });
        assert_eq!(rx.recv_timeout(LONG).expect(name), 1, "{name}");
    }
}

#[test]
fn on_terminate_after_termination_runs_at_once() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Client, &w);
    s.close().expect("close");
    let runs = Arc::new(AtomicUsize::new(0));
    let (r, hh) = (runs.clone(), h.clone());
    h.on_terminate(move || {
        assert!(hh.is_terminated());
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    s.cancel(StreamErrorKind::Canceled(Initiator::Local));
    drop(s);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn terminated_resolves_on_termination() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Client, &w);
    {
        let mut a = pin!(s.terminated());
        let mut b = pin!(h.terminated());
        assert!(timeout(SHORT, a.as_mut()).await.is_err());
        h.handle_frame(whole(1, 1, Kind::CLOSE_SEND, b""), true)
            .expect("frame");
        assert!(
            timeout(SHORT, b.as_mut()).await.is_err(),
            "half close does not terminate"
        );
        s.close_send().expect("close_send");
        timeout(LONG, a).await.expect("stream.terminated()");
        timeout(LONG, b).await.expect("handle.terminated()");
    }
    // Once terminated it resolves at once.
    timeout(LONG, s.terminated()).await.expect("again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_resolves_across_threads() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Client, &w);
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.terminated().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    h.handle_frame(cancel_frame(1, 1), true).expect("frame");
    for wt in waiters {
        timeout(LONG, wt).await.expect("woken").expect("join");
    }
    assert!(s.is_terminated());
}

// ---------------------------------------------------------------- end to end

/// What a pump passed on besides stream frames.
#[derive(Debug, Default, Clone, Copy)]
struct Pumped {
    /// WindowUpdates applied to the other side's sender.
    grants: usize,
    /// Flow-negotiation packets (Accept or Gating).
    negotiations: usize,
}

/// Moves frames from `from` to the stream handle of the other side until
/// `from` stops, doing the connection's jobs on the way: Invoke packets are
/// skipped, a flow-control offer in InvokeMetadata is taken, and
/// WindowUpdates go to the sender they credit.
async fn pump(from: Arc<MuxWriter>, to: StreamHandle) -> Pumped {
    let dec = FrameDecoder::default();
    let mut pending = BytesMut::new();
    let mut metadata = Vec::new();
    let mut pumped = Pumped::default();
    loop {
        let mut spare = BytesMut::new();
        let r = poll_fn(|cx| from.poll_take(cx, &mut spare)).await;
        if r.is_err() {
            return pumped;
        }
        from.batch_written();
        pending.extend_from_slice(&spare);
        while let Some(f) = dec.decode(&mut pending).expect("frames") {
            match f.kind {
                Kind::INVOKE => {}
                Kind::INVOKE_METADATA => {
                    metadata.extend_from_slice(&f.data);
                    if f.done {
                        let md = decode_metadata(&metadata).expect("metadata");
                        metadata.clear();
                        if let Some(offer) = md
                            .get(FLOW_CONTROL_METADATA_KEY)
                            .and_then(|v| FlowParams::parse_metadata_value(v))
                        {
                            assert!(to.accept_flow_control(offer), "offer taken");
                        }
                    }
                }
                Kind::WINDOW_UPDATE => {
                    let update = WindowUpdate::parse(&f).expect("a well-formed grant");
                    assert_eq!(update.stream, to.id());
                    to.window_update(update.delta);
                    pumped.grants += 1;
                }
                kind => {
                    if kind == Kind::FLOW_NEGOTIATION {
                        pumped.negotiations += 1;
                    }
                    to.handle_frame(f, true).expect("accepted");
                }
            }
        }
    }
}

/// A client sends `messages` while it receives their echoes from a server,
/// each side's frames pumped to the other through writers with a tiny
/// high-water mark. Returns what the client's and the server's pumps
/// passed on.
async fn echo_exchange(opts: StreamOptions, messages: Vec<Vec<u8>>) -> (Pumped, Pumped) {
    let n = messages.len();
    let c2s = Arc::new(MuxWriter::new(64));
    let s2c = Arc::new(MuxWriter::new(64));
    let (client, client_h) = new_stream(1, StreamKind::Client, c2s.clone(), &opts);
    let (server, server_h) = new_stream(1, StreamKind::Server, s2c.clone(), &opts);
    let p1 = tokio::spawn(pump(c2s.clone(), server_h.clone()));
    let p2 = tokio::spawn(pump(s2c.clone(), client_h.clone()));

    let echo = tokio::spawn(async move {
        let mut n = 0;
        while let Some(m) = server.recv().await.expect("server recv") {
            server.send(&m).await.expect("echo");
            n += 1;
        }
        server.close_send().expect("server close_send");
        n
    });
    let client = Arc::new(client);
    client_h
        .write_invoke(b"/s.S/Echo", &Metadata::new())
        .expect("invoke");
    let sender = tokio::spawn({
        let client = client.clone();
        let messages = messages.clone();
        async move {
            for m in &messages {
                client.send(m).await.expect("send");
            }
            client.close_send().expect("close_send");
        }
    });
    for (i, want) in messages.iter().enumerate() {
        let m = timeout(LONG, client.recv())
            .await
            .expect("progress")
            .expect("recv");
        assert_eq!(m.as_deref(), Some(&want[..]), "message {i}");
    }
    assert_matches!(timeout(LONG, client.recv()).await.expect("end"), Ok(None));
    sender.await.expect("sender");
    assert_eq!(echo.await.expect("echo"), n);
    assert!(client.is_terminated());
    timeout(LONG, server_h.terminated())
        .await
        .expect("server terminated");
    c2s.stop(ConnectionError::Closed);
    s2c.stop(ConnectionError::Closed);
    (p1.await.expect("pump"), p2.await.expect("pump"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bidi_exchange_with_writer_backpressure_on_both_sides() {
    let opts = StreamOptions {
        split_size: 7,
        recv_queue_messages: 2,
        flow_control: FlowControl::off(),
        ..StreamOptions::default()
    };
    let messages = (0..300)
        .map(|i| format!("message number {i}").into_bytes())
        .collect();
    let (c, s) = echo_exchange(opts, messages).await;
    assert_eq!(
        (c.grants, c.negotiations, s.grants, s.negotiations),
        (0, 0, 0, 0)
    );
}

/// Messages of varied sizes, several times the window in all.
fn flow_messages() -> Vec<Vec<u8>> {
    (0..300u32)
        .map(|i| {
            let len = (i as usize * 997) % 9000 + 1;
            (0..len).map(|j| (i as usize + j) as u8).collect()
        })
        .collect()
}

fn small_window(flow: FlowControl) -> StreamOptions {
    StreamOptions {
        split_size: 1000,
        flow_control: flow.with_window(FRAME as u64 + 4096, 4096).expect("valid"),
        ..StreamOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bidi_exchange_with_fork_flow_control() {
    let (c, s) = echo_exchange(small_window(FlowControl::fork()), flow_messages()).await;
    assert!(c.grants > 0 && s.grants > 0, "{c:?} {s:?}");
    assert_eq!((c.negotiations, s.negotiations), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bidi_exchange_with_negotiated_flow_control() {
    let (c, s) = echo_exchange(small_window(FlowControl::auto()), flow_messages()).await;
    assert!(c.grants > 0 && s.grants > 0, "{c:?} {s:?}");
    // The server's Accept, then the client's Gating marker.
    assert_eq!((c.negotiations, s.negotiations), (1, 1));
}

// ---------------------------------------------------------------- MuxWriter

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_never_interleave_inside_a_packet() {
    const TASKS: u64 = 8;
    const PACKETS: u64 = 200;
    const SPLIT: usize = 3;
    let w = Arc::new(MuxWriter::new(0));
    let payload = |sid: u64, mid: u64| format!("s{sid}-m{mid}-payload").into_bytes();
    let total: usize = (1..=TASKS)
        .flat_map(|sid| {
            (1..=PACKETS).map(move |mid| {
                packet_encoded_len(
                    Id::new(sid, mid),
                    Kind::MESSAGE,
                    payload(sid, mid).len(),
                    SPLIT,
                )
            })
        })
        .sum();

    let drainer = tokio::spawn({
        let w = w.clone();
        async move {
            let mut all = BytesMut::new();
            let mut takes = 0;
            while all.len() < total {
                let mut spare = BytesMut::new();
                poll_fn(|cx| w.poll_take(cx, &mut spare))
                    .await
                    .expect("not stopped");
                assert!(!spare.is_empty(), "poll_take is ready only with bytes");
                all.extend_from_slice(&spare);
                takes += 1;
            }
            (all, takes)
        }
    });
    let appenders: Vec<_> = (1..=TASKS)
        .map(|sid| {
            let w = w.clone();
            tokio::spawn(async move {
                for mid in 1..=PACKETS {
                    let data = payload(sid, mid);
                    w.append(|buf| {
                        append_packet(buf, Id::new(sid, mid), Kind::MESSAGE, false, &data, SPLIT)
                    })
                    .expect("append");
                    if mid % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for a in appenders {
        a.await.expect("appender");
    }
    let (all, takes) = timeout(LONG, drainer)
        .await
        .expect("no lost drain wake-up")
        .expect("drainer");
    assert_eq!(all.len(), total);
    assert!(takes >= 1);

    // Every packet's frames are contiguous and complete, in order per stream.
    let frames = decode(&all);
    let mut next_mid = vec![1u64; TASKS as usize + 1];
    let mut i = 0;
    while i < frames.len() {
        let id = frames[i].id;
        let mut data = Vec::new();
        loop {
            let f = &frames[i];
            assert_eq!(f.id, id, "a frame of {} inside the packet {}", f.id, id);
            assert_eq!(f.kind, Kind::MESSAGE);
            data.extend_from_slice(&f.data);
            i += 1;
            if f.done {
                break;
            }
            assert!(i < frames.len(), "packet {id} incomplete");
        }
        assert_eq!(
            id.message, next_mid[id.stream as usize],
            "order of stream {}",
            id.stream
        );
        next_mid[id.stream as usize] += 1;
        assert_eq!(data, payload(id.stream, id.message));
    }
    assert!(next_mid[1..].iter().all(|&m| m == PACKETS + 1));
}

#[tokio::test]
async fn stop_discards_buffered_data_and_fails_appends() {
    let w = MuxWriter::new(0);
    w.append(|buf| buf.extend_from_slice(b"buffered"))
        .expect("append");
    assert_eq!(w.buffered(), 8);
    assert!(w.stop_reason().is_none());
    assert!(w.stop(ConnectionError::Closed), "first stop");
    assert_eq!(w.buffered(), 0, "buffered bytes discarded");
    assert_matches!(
        w.append(|buf| buf.extend_from_slice(b"x")),
        Err(ConnectionError::Closed)
    );
    assert_eq!(w.buffered(), 0);
    // Idempotent; the first reason wins.
    assert!(!w.stop(ConnectionError::Eof));
    assert_matches!(w.stop_reason(), Some(ConnectionError::Closed));
    assert_matches!(w.append(|_| {}), Err(ConnectionError::Closed));
    // poll_take reports the stop reason, not the discarded bytes.
    let mut spare = BytesMut::new();
    let r = poll_fn(|cx| w.poll_take(cx, &mut spare)).await;
    assert_matches!(r, Err(ConnectionError::Closed));
    assert!(spare.is_empty());
    let r = poll_fn(|cx| w.poll_capacity(cx)).await;
    assert_matches!(r, Err(ConnectionError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stops_first_reason_wins() {
    let w = Arc::new(MuxWriter::new(0));
    let stoppers: Vec<_> = (0..8)
        .map(|i| {
            let w = w.clone();
            tokio::spawn(async move {
                let reason = if i % 2 == 0 {
                    ConnectionError::Closed
                } else {
                    ConnectionError::Eof
                };
                w.stop(reason)
            })
        })
        .collect();
    let mut winners = 0;
    for s in stoppers {
        winners += usize::from(s.await.expect("stopper"));
    }
    assert_eq!(winners, 1, "exactly one stop takes effect");
    let reason = w.stop_reason().expect("stopped");
    let err = w.append(|_| {}).expect_err("stopped");
    assert_eq!(
        err.to_string(),
        reason.to_string(),
        "appends fail with the winning reason"
    );
}

#[tokio::test]
async fn append_wakes_the_writer_task() {
    let w = Arc::new(MuxWriter::new(0));
    let task = tokio::spawn({
        let w = w.clone();
        async move {
            let mut spare = BytesMut::new();
            poll_fn(|cx| w.poll_take(cx, &mut spare))
                .await
                .map(|()| spare)
        }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(!task.is_finished(), "nothing to take yet");
    w.append(|buf| buf.extend_from_slice(b"abc"))
        .expect("append");
    let got = timeout(LONG, task)
        .await
        .expect("woken by append")
        .expect("join");
    assert_eq!(&got.expect("not stopped")[..], b"abc");
    assert_eq!(w.buffered(), 0);
}

#[tokio::test]
async fn stop_wakes_the_writer_task() {
    let w = Arc::new(MuxWriter::new(0));
    let task = tokio::spawn({
        let w = w.clone();
        async move {
            let mut spare = BytesMut::new();
            poll_fn(|cx| w.poll_take(cx, &mut spare)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(!task.is_finished());
    assert!(w.stop(ConnectionError::Eof));
    let r = timeout(LONG, task)
        .await
        .expect("woken by stop")
        .expect("join");
    assert_matches!(r, Err(ConnectionError::Eof));
}

#[tokio::test]
async fn stop_wakes_a_sender_waiting_for_capacity() {
    let w = Arc::new(MuxWriter::new(4));
    let (s, h) = pair(1, StreamKind::Client, &w);
    h.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
    let mut send = pin!(s.send(b"m"));
    assert!(timeout(SHORT, send.as_mut()).await.is_err());
    assert!(w.stop(ConnectionError::Eof));
    assert_matches!(
        timeout(LONG, send)
            .await
            .expect("sender woken")
            .map_err(StreamError::into_kind),
        Err(StreamErrorKind::ConnectionLost(ConnectionError::Eof))
    );
    assert_eq!(w.buffered(), 0);
}

#[tokio::test]
async fn capacity_becomes_ready_after_poll_take() {
    let w = Arc::new(MuxWriter::new(10));
    assert_eq!(w.high_water(), 10);
    assert_eq!(
        MuxWriter::new(0).high_water(),
        drpc_stream::DEFAULT_WRITER_HIGH_WATER
    );
    w.append(|buf| buf.extend_from_slice(&[0; 9]))
        .expect("append");
    timeout(SHORT, poll_fn(|cx| w.poll_capacity(cx)))
        .await
        .expect("below the mark")
        .expect("ok");
    w.append(|buf| buf.extend_from_slice(&[0; 1]))
        .expect("append");
    let mut cap = pin!(poll_fn(|cx| w.poll_capacity(cx)));
    assert!(
        timeout(SHORT, cap.as_mut()).await.is_err(),
        "at the mark: wait"
    );
    assert_eq!(take_bytes(&w).await.len(), 10);
    timeout(LONG, cap)
        .await
        .expect("woken by poll_take")
        .expect("ok");
}

// ---------------------------------------------------------------- regressions

/// Two receivers on one stream: each wake-up reaches both, so neither is
/// left parked once the stream has ended.
#[tokio::test]
async fn concurrent_receivers_are_all_woken_at_the_end() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Client, &w);
    let (count_a, wa) = counting_waker();
    let (_count_b, wb) = counting_waker();
    let mut a = pin!(s.recv());
    let mut b = pin!(s.recv());
    assert!(poll_with(a.as_mut(), &wa).is_pending());
    assert!(poll_with(b.as_mut(), &wb).is_pending());
    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"m"), true)
        .expect("message");
    assert!(poll_with(b.as_mut(), &wb).is_ready());
    h.handle_frame(whole(1, 2, Kind::CLOSE, b""), true)
        .expect("close");
    assert!(count_a.count() >= 1, "the first receiver was never woken");
    assert_matches!(poll_with(a.as_mut(), &wa), Poll::Ready(Ok(None)));
}

/// Messages discarded by a local cancel after the peer's CloseSend must not
/// turn into a clean end of stream.
#[tokio::test]
async fn discarded_messages_after_remote_close_send_report_the_cancel() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Client, &w);
    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"m1"), true)
        .expect("message");
    h.handle_frame(whole(1, 2, Kind::CLOSE_SEND, b""), true)
        .expect("close send");
    h.cancel(StreamErrorKind::DeadlineExceeded);
    let err = s.recv().await.expect_err("not a clean end");
    assert_matches!(err.kind(), StreamErrorKind::DeadlineExceeded);
}

/// A send parked on writer room is answered by the stream's own CloseSend.
#[tokio::test]
async fn close_send_wakes_a_send_waiting_for_writer_room() {
    let w = Arc::new(MuxWriter::new(1));
    let (s, h) = pair(1, StreamKind::Client, &w);
    h.write_invoke(b"/a/b", &Metadata::new()).expect("invoke");
    let (count, waker) = counting_waker();
    {
        let mut send = pin!(s.send(b"x"));
        assert!(poll_with(send.as_mut(), &waker).is_pending());
        s.close_send().expect("close send");
        assert!(count.count() >= 1, "the waiting send was not woken");
        assert_matches!(
            poll_with(send.as_mut(), &waker),
            Poll::Ready(Err(ref e)) if matches!(e.kind(), StreamErrorKind::SendClosed)
        );
    }
}

/// The writer task's readiness check neither takes nor loses anything.
#[tokio::test]
async fn ready_to_take_leaves_the_bytes_in_place() {
    let w = writer();
    let (count, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(w.poll_ready_to_take(&mut cx).is_pending());
    let (_s, h) = stock_pair(1, StreamKind::Client, &w);
    h.write_invoke(b"/a/b", &Metadata::new()).expect("invoke");
    assert_eq!(count.count(), 1, "the first append wakes the waiting task");
    assert_matches!(w.poll_ready_to_take(&mut cx), Poll::Ready(Ok(())));
    assert_eq!(w.buffered(), 8, "nothing was taken");
    let frames = take_frames(&w).await;
    assert_eq!(frames[0].kind, Kind::INVOKE);
    w.stop(ConnectionError::Closed);
    assert_matches!(
        w.poll_ready_to_take(&mut cx),
        Poll::Ready(Err(ConnectionError::Closed))
    );
}

// ---------------------------------------------------------------- batches

/// A batch of `n` distinct small messages.
fn batch_of(n: u8) -> (MessageBatch, Vec<Vec<u8>>) {
    let msgs: Vec<Vec<u8>> = (1..=n).map(|i| vec![i; usize::from(i)]).collect();
    let mut batch = MessageBatch::new();
    for m in &msgs {
        batch.push_encoded(m);
    }
    (batch, msgs)
}

#[tokio::test]
async fn send_batch_writes_exactly_what_one_send_per_message_writes() {
    let (w1, w2) = (writer(), writer());
    let (one_by_one, h1) = stock_pair(1, StreamKind::Client, &w1);
    let (batched, h2) = stock_pair(1, StreamKind::Client, &w2);
    h1.write_invoke(b"/s.S/M", &Metadata::new())
        .expect("invoke");
    h2.write_invoke(b"/s.S/M", &Metadata::new())
        .expect("invoke");
    let (mut batch, msgs) = batch_of(20);
    for m in &msgs {
        one_by_one.send(m).await.expect("send");
    }
    batched.send_batch(&mut batch).await.expect("batch");
    assert!(batch.is_empty(), "the batch is emptied");
    let frames = take_frames(&w2).await;
    assert_eq!(frames, take_frames(&w1).await);
    assert_eq!(frames.len(), 21);
    for (mid, (f, m)) in (2u64..).zip(frames[1..].iter().zip(&msgs)) {
        assert_eq!(
            (f.id, f.kind, &f.data[..]),
            (Id::new(1, mid), Kind::MESSAGE, &m[..])
        );
    }
}

#[tokio::test]
async fn send_batch_refuses_the_whole_batch_over_one_oversized_message() {
    let w = writer();
    let opts = StreamOptions {
        max_packet_size: 10,
        flow_control: FlowControl::off(),
        ..StreamOptions::default()
    };
    let (s, _h) = pair_with(2, StreamKind::Server, &w, opts);
    let mut batch = MessageBatch::new();
    batch.push_encoded(b"small");
    batch.push_encoded(&[0; 11]);
    let r = s.send_batch(&mut batch).await;
    assert_matches!(
        kind_of(&r),
        Some(StreamErrorKind::MessageTooLarge {
            size: 11,
            limit: 10
        })
    );
    assert_eq!(w.buffered(), 0, "nothing sent");
    // The stream is still usable.
    batch.push_encoded(b"ok");
    s.send_batch(&mut batch).await.expect("a valid batch");
    assert_eq!(take_frames(&w).await.len(), 1);
}

#[tokio::test]
async fn send_batch_waits_for_credit_between_messages() {
    let w = roomy_writer();
    let (s, h) = pair_with(
        1,
        StreamKind::Client,
        &w,
        fork(FRAME as u64 + 1, 1, 1 << 20),
    );
    let mut batch = MessageBatch::new();
    for i in 1..=3u8 {
        batch.push_encoded(&vec![i; 30_000]);
    }
    let (count, waker) = counting_waker();
    let mut send = pin!(s.send_batch(&mut batch));
    assert!(poll_with(send.as_mut(), &waker).is_pending());
    // 65537 bytes of credit: two messages go, the third's first frame
    // (30000) no longer fits the 5537 left.
    let frames = take_frames(&w).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[1].data[..], [2; 30_000][..]);
    h.window_update(24_463);
    assert!(count.count() >= 1, "a grant wakes the batch");
    assert_matches!(poll_with(send.as_mut(), &waker), Poll::Ready(Ok(())));
    let frames = take_frames(&w).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].id, Id::new(1, 3));
}

#[tokio::test]
async fn send_batch_after_close_send_or_cancel_sends_nothing() {
    let w = writer();
    let (s, h) = stock_pair(1, StreamKind::Client, &w);
    h.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
    s.close_send().expect("close send");
    let (mut batch, _) = batch_of(3);
    let r = s.send_batch(&mut batch).await;
    assert_matches!(kind_of(&r), Some(StreamErrorKind::SendClosed));
    assert_eq!(take_frames(&w).await.len(), 2, "invoke and close send only");
    let (s, _h) = stock_pair(3, StreamKind::Server, &w);
    s.cancel(StreamErrorKind::Canceled(Initiator::Local));
    let (mut batch, _) = batch_of(3);
    assert!(s.send_batch(&mut batch).await.is_err());
}

#[tokio::test]
async fn send_batch_holds_the_write_budget_until_written() {
    let budget = Arc::new(MemoryBudget::new(1 << 20, None));
    let write_budget = Arc::new(MemoryBudget::new(1 << 20, None));
    let w = Arc::new(MuxWriter::with_budgets(
        0,
        budget.clone(),
        Some(write_budget.clone()),
    ));
    let (s, _h) = stock_pair(2, StreamKind::Server, &w);
    let (mut batch, msgs) = batch_of(50);
    let total: usize = msgs.iter().map(Vec::len).sum();
    s.send_batch(&mut batch).await.expect("batch");
    assert_eq!(write_budget.held(), total, "every message reserved once");
    assert_eq!(take_frames(&w).await.len(), 50);
    assert_eq!(write_budget.held(), 0, "released once written");
}

#[tokio::test]
async fn handle_frames_routes_a_run_with_one_wake_up_and_one_grant() {
    let w = roomy_writer();
    let (s, h) = pair_with(
        1,
        StreamKind::Client,
        &w,
        fork(FRAME as u64 + 4096, 1, 1 << 20),
    );
    let (count, waker) = counting_waker();
    let mut recv = pin!(s.recv());
    assert!(poll_with(recv.as_mut(), &waker).is_pending());
    let mut rest = (2..=10u64).map(|mid| whole(1, mid, Kind::MESSAGE, &[mid as u8; 100]));
    h.handle_frames(whole(1, 1, Kind::MESSAGE, &[1; 100]), || rest.next(), false)
        .expect("routed");
    assert_eq!(count.count(), 1, "one wake-up for the run");
    let first = poll_with(recv.as_mut(), &waker);
    assert_matches!(first, Poll::Ready(Ok(Some(ref m))) if m[..] == [1; 100][..]);
    let mut batch = RecvBatch::new();
    for mid in 2..=10u8 {
        let m = batch.recv(&s).await.expect("recv").expect("message");
        assert_eq!(m[..], [mid; 100][..]);
        if mid == 2 {
            assert_eq!(batch.len(), 8, "everything queued was taken at once");
        }
    }
    // Credit: the first receive granted 100, the batch 900 in one update.
    let grants: Vec<_> = take_frames(&w)
        .await
        .iter()
        .filter_map(WindowUpdate::parse)
        .map(|u| u.delta)
        .collect();
    assert_eq!(grants, [100, 900]);
}

#[tokio::test]
async fn handle_frames_stops_pulling_once_the_stream_fails() {
    let w = writer();
    let opts = StreamOptions {
        recv_queue_messages: 2,
        flow_control: FlowControl::off(),
        ..StreamOptions::default()
    };
    let (s, h) = pair_with(2, StreamKind::Server, &w, opts);
    let mut pulled = 0;
    h.handle_frames(
        whole(2, 1, Kind::MESSAGE, b"a"),
        || {
            pulled += 1;
            Some(whole(2, 1 + pulled, Kind::MESSAGE, b"b"))
        },
        false,
    )
    .expect("routed");
    // Two queued, the third overflows the shared stream's queue: it fails
    // alone and nothing more is taken from the reader.
    assert_eq!(pulled, 2);
    expect_abort(&take_frames(&w).await, Id::new(2, 1), "receive queue");
    expect_messages(&s, &[b"a", b"b"]).await;
    assert_matches!(
        s.recv().await,
        Err(e) if matches!(e.kind(), StreamErrorKind::QueueOverflow { .. })
    );
}

#[tokio::test]
async fn recv_batch_discards_what_it_holds_after_a_local_cancel() {
    let (w, budget) = budgeted();
    let (s, h) = stock_pair(1, StreamKind::Client, &w);
    for mid in 1..=3 {
        h.handle_frame(whole(1, mid, Kind::MESSAGE, b"m"), false)
            .expect("queued");
    }
    let mut batch = RecvBatch::new();
    assert_eq!(
        batch.recv(&s).await.expect("recv").as_deref(),
        Some(&b"m"[..])
    );
    assert_eq!(batch.len(), 2);
    s.cancel(StreamErrorKind::Canceled(Initiator::Local));
    assert_matches!(
        batch.recv(&s).await,
        Err(e) if matches!(e.kind(), StreamErrorKind::Canceled(Initiator::Local))
    );
    assert!(batch.is_empty());
    drop((s, h));
    let _cancel = take_bytes(&w).await;
    assert_eq!(budget.held(), 0, "nothing stays charged");
}

#[tokio::test]
async fn recv_batch_delivers_held_messages_before_a_remote_end() {
    let w = writer();
    for end in [Kind::CLOSE_SEND, Kind::CLOSE, Kind::ERROR] {
        let (s, h) = stock_pair(1, StreamKind::Client, &w);
        for mid in 1..=3 {
            h.handle_frame(whole(1, mid, Kind::MESSAGE, &[mid as u8]), false)
                .expect("queued");
        }
        let last = if end == Kind::ERROR {
            error_frame(1, 4, 5, "gone")
        } else {
            whole(1, 4, end, b"")
        };
        h.handle_frame(last, false).expect("end");
        let mut batch = RecvBatch::new();
        for mid in 1..=3u8 {
            let m = batch.recv(&s).await.expect("recv");
            assert_eq!(m.as_deref(), Some(&[mid][..]), "{end}");
        }
        let after = batch.recv(&s).await;
        match end {
            Kind::ERROR => {
                assert_matches!(after, Err(e) if matches!(e.kind(), StreamErrorKind::Remote(_)))
            }
            _ => assert_matches!(after, Ok(None)),
        }
        let _ = take_bytes(&w).await;
    }
}

#[tokio::test]
async fn poll_recv_many_respects_its_limits() {
    let w = writer();
    let (s, h) = stock_pair(1, StreamKind::Client, &w);
    for mid in 1..=5 {
        h.handle_frame(whole(1, mid, Kind::MESSAGE, &[0; 40_000]), true)
            .expect("queued");
    }
    let mut out = std::collections::VecDeque::new();
    let taken = poll_fn(|cx| s.poll_recv_many(cx, &mut out, 3)).await;
    // 64 KiB is reached after the second message.
    assert_eq!(taken.expect("taken"), 2);
    let taken = poll_fn(|cx| s.poll_recv_many(cx, &mut out, 1)).await;
    assert_eq!(taken.expect("taken"), 1);
    s.close_send().expect("close send");
    h.handle_frame(whole(1, 6, Kind::CLOSE_SEND, b""), true)
        .expect("end");
    let taken = poll_fn(|cx| s.poll_recv_many(cx, &mut out, 10)).await;
    assert_eq!(taken.expect("taken"), 2, "the rest before the end");
    let taken = poll_fn(|cx| s.poll_recv_many(cx, &mut out, 10)).await;
    assert_eq!(taken.expect("the clean end"), 0);
    assert_eq!(out.len(), 5);
}

#[tokio::test]
async fn a_call_opened_after_its_connection_ended_reports_the_connection() {
    let w = writer();
    let (s, h) = stock_pair(1, StreamKind::Client, &w);
    // The connection ends between the stream's registration and its
    // opening: the opening says so, not a bare end of sending.
    h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof));
    let r = h.write_unary(b"/s.S/M", &Metadata::new(), &Bytes::from_static(b"x"));
    assert_matches!(
        kind_of(&r),
        Some(StreamErrorKind::ConnectionLost(ConnectionError::Eof))
    );
    assert_eq!(w.buffered(), 0, "nothing written");
    // After any other termination (a cancel), the bare end of sending, as
    // before.
    let (_s2, h2) = stock_pair(3, StreamKind::Client, &w);
    h2.cancel(StreamErrorKind::DeadlineExceeded);
    let _cancel = take_bytes(&w).await;
    let r = h2.write_invoke(b"/s.S/M", &Metadata::new());
    assert_matches!(kind_of(&r), Some(StreamErrorKind::Eof));
    drop(s);
}
