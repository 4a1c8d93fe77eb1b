//! Async tests of `Stream`, `StreamHandle` and `MuxWriter`: the exact frames a
//! stream appends, wake-ups of blocked operations, backpressure, termination
//! hooks, and the writer's atomicity and stop semantics.
//!
//! Frames are read back by draining the writer with `poll_take` and decoding
//! with `drpc_wire::FrameDecoder`.

// Under loom the crate's mutex only works inside `loom::model`.
#![cfg(not(drpc_loom))]

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use drpc_stream::{
    ConnectionError, Initiator, MessageBuf, MuxWriter, Stream, StreamError, StreamErrorKind,
    StreamHandle, StreamKind, StreamOptions, new_stream,
};
use drpc_wire::{
    CodedError, Frame, FrameDecoder, Id, Kind, Metadata, append_packet, decode_metadata,
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
    poll_fn(|cx| match w.poll_take(cx, &mut spare) {
        Poll::Ready(Ok(())) => Poll::Ready(()),
        Poll::Pending => Poll::Ready(()),
        Poll::Ready(Err(e)) => panic!("writer stopped: {e}"),
    })
    .await;
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
    let (s, _h) = pair(1, StreamKind::Client, &w);
    s.write_invoke(b"/service.Service/Method1", &Metadata::new())
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
    let (s, _h) = pair(5, StreamKind::Client, &w);
    let md = Metadata::from([
        ("authorization".to_owned(), "secret".to_owned()),
        ("trace".to_owned(), "abc".to_owned()),
    ]);
    s.write_invoke(b"/s.S/M", &md).expect("invoke");
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
        ..StreamOptions::default()
    };
    let (s, _h) = pair_with(3, StreamKind::Client, &w, opts);
    s.write_invoke(b"/s.S/Method", &Metadata::new())
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
    let (s, _h) = pair(1, StreamKind::Client, &w);
    s.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
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
    s.write_invoke(b"/s.S/M", &md).expect("invoke");
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
    let (s, _h) = pair(7, StreamKind::Client, &w);
    let md = Metadata::from([("k".to_owned(), "v".to_owned())]);
    s.write_invoke(b"/s.S/M", &md).expect("invoke");
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
        kind_of(&s.write_invoke(b"/s.S/M", &Metadata::new())),
        Some(StreamErrorKind::Eof)
    );
    assert_eq!(w.buffered(), 0);
}

#[tokio::test]
async fn both_close_send_still_sends_the_last_close_send() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Server, &w);
    h.handle_frame(whole(1, 2, Kind::CLOSE_SEND, b""))
        .await
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
        let (s1, _h1) = pair_with(7, StreamKind::Client, &w1, opts.clone());
        let (s2, _h2) = pair_with(7, StreamKind::Client, &w2, opts.clone());
        s1.write_unary_encoded(b"/s.S/M", &md, &mut buf)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(buf.is_empty(), "{name}: buffer emptied");
        s2.write_unary(b"/s.S/M", &md, &Bytes::from(whole_message))
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
    let (s, _h) = pair_with(9, StreamKind::Client, &w, opts);
    let mut buf = MessageBuf::new();
    buf.put(Bytes::from(vec![1; 100_001]));
    let err = s
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
    let extra = s.handle();
    assert_eq!((extra.id(), extra.kind()), (1, StreamKind::Client));
    drop(extra);
    assert!(!s.is_terminated());
    assert_eq!(w.buffered(), 0);
    // It acts on the same stream.
    let extra = s.handle();
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
                h.handle_frame(whole(1, 1, Kind::CLOSE, b""))
                    .await
                    .expect("ok")
            })
        }),
        ("remote error", |_, h| {
            Box::pin(async move { h.handle_frame(error_frame(1, 1, 3, "x")).await.expect("ok") })
        }),
        ("remote cancel", |_, h| {
            Box::pin(async move { h.handle_frame(cancel_frame(1, 1)).await.expect("ok") })
        }),
        ("both close send", |s, h| {
            Box::pin(async move {
                h.handle_frame(whole(1, 1, Kind::CLOSE_SEND, b""))
                    .await
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
                s.write_invoke(b"/s.S/M", &Metadata::new()).is_err(),
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
                    h.handle_frame(whole(1, 2, Kind::CLOSE, b""))
                        .await
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
                    h.handle_frame(error_frame(1, 2, 77, "bad"))
                        .await
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
                Box::pin(async move { h.handle_frame(cancel_frame(1, 2)).await.expect("ok") })
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
        h.handle_frame(whole(1, 1, Kind::MESSAGE, b"queued"))
            .await
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
    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"reply"))
        .await
        .expect("frame");
    assert_eq!(
        s.recv().await.expect("recv").as_deref(),
        Some(&b"reply"[..])
    );
    h.handle_frame(whole(1, 2, Kind::CLOSE_SEND, b""))
        .await
        .expect("frame");
    assert_matches!(s.recv().await, Ok(None));
    assert!(s.is_terminated());
}

#[tokio::test]
async fn remote_close_send_leaves_sending_alone_and_drops_later_messages() {
    let w = writer();
    let (s, h) = pair(1, StreamKind::Server, &w);
    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"req"))
        .await
        .expect("frame");
    h.handle_frame(whole(1, 2, Kind::CLOSE_SEND, b""))
        .await
        .expect("frame");
    h.handle_frame(whole(1, 3, Kind::MESSAGE, b"dropped"))
        .await
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
    let k9 = Kind::new(9).expect("kind");
    h.handle_frame(fr(1, 1, k9, true, true, b""))
        .await
        .expect("ignored");
    h.handle_frame(fr(1, 2, Kind::new(0).expect("kind"), true, true, b""))
        .await
        .expect("ignored");
    h.handle_frame(whole(1, 3, Kind::MESSAGE, b"after"))
        .await
        .expect("message");
    assert_eq!(
        s.recv().await.expect("recv").as_deref(),
        Some(&b"after"[..])
    );
    assert_matches!(
        h.handle_frame(whole(1, 4, k9, b"")).await,
        Err(ConnectionError::UnknownKind { stream: 1, .. })
    );
    assert_matches!(
        h.handle_frame(whole(1, 5, Kind::INVOKE, b"/s.S/M")).await,
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
    let (s, h) = pair(4, StreamKind::Client, &w);
    s.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
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
        h.handle_frame(whole(4, 1, Kind::CLOSE, b""))
            .await
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
    h.handle_frame(whole(2, 1, Kind::MESSAGE, b"unread"))
        .await
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
    h.handle_frame(whole(2, 2, Kind::MESSAGE, b"late"))
        .await
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
    fn block<F: Future>(f: F) -> F::Output {
        futures_executor::block_on(f)
    }
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
            |_, h| block(h.handle_frame(whole(1, 1, Kind::CLOSE, b""))).expect("ok"),
            |r| matches!(r, Ok(None)),
        ),
        (
            "remote error",
            |_, h| block(h.handle_frame(error_frame(1, 1, 9, "x"))).expect("ok"),
            |r| matches!(r.as_ref().map_err(StreamError::kind), Err(StreamErrorKind::Remote(e)) if e.code() == 9),
        ),
        (
            "remote cancel",
            |_, h| block(h.handle_frame(cancel_frame(1, 1))).expect("ok"),
            |r| {
                matches!(
                    r.as_ref().map_err(StreamError::kind),
                    Err(StreamErrorKind::Canceled(Initiator::Remote))
                )
            },
        ),
        (
            "remote close send",
            |_, h| block(h.handle_frame(whole(1, 1, Kind::CLOSE_SEND, b""))).expect("ok"),
            |r| matches!(r, Ok(None)),
        ),
        (
            "message",
            |_, h| block(h.handle_frame(whole(1, 1, Kind::MESSAGE, b"m"))).expect("ok"),
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
        // Events that drive handle_frame block on it: run them off the runtime.
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
        let (s, h) = pair(1, StreamKind::Client, &w);
        s.write_invoke(b"/service.Service/Method", &Metadata::new())
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
    s.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
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
    let (s, _h) = pair(1, StreamKind::Client, &w);
    s.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
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
    let (s, _h) = pair(1, StreamKind::Client, &w);
    s.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
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
        kind_of(&s.write_invoke(b"/s.S/M", &Metadata::new())),
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

// ---------------------------------------------------------------- receive backpressure

fn small_queue(n: usize) -> StreamOptions {
    StreamOptions {
        recv_queue_messages: n,
        ..StreamOptions::default()
    }
}

#[tokio::test]
async fn full_queue_makes_handle_frame_wait_until_recv() {
    let w = writer();
    let (s, h) = pair_with(1, StreamKind::Client, &w, small_queue(2));
    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"m1"))
        .await
        .expect("m1");
    h.handle_frame(whole(1, 2, Kind::MESSAGE, b"m2"))
        .await
        .expect("m2");
    let mut third = pin!(h.handle_frame(whole(1, 3, Kind::MESSAGE, b"m3")));
    assert!(
        timeout(SHORT, third.as_mut()).await.is_err(),
        "handle_frame waits for room"
    );
    assert_eq!(s.recv().await.expect("recv").as_deref(), Some(&b"m1"[..]));
    timeout(LONG, third)
        .await
        .expect("room was made")
        .expect("ok");
    assert_eq!(s.recv().await.expect("recv").as_deref(), Some(&b"m2"[..]));
    assert_eq!(s.recv().await.expect("recv").as_deref(), Some(&b"m3"[..]));
    let mut empty = pin!(s.recv());
    assert!(timeout(SHORT, empty.as_mut()).await.is_err());
}

#[tokio::test]
async fn local_cancel_releases_a_waiting_handle_frame() {
    let w = writer();
    let (s, h) = pair_with(1, StreamKind::Client, &w, small_queue(2));
    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"m1"))
        .await
        .expect("m1");
    h.handle_frame(whole(1, 2, Kind::MESSAGE, b"m2"))
        .await
        .expect("m2");
    let mut third = pin!(h.handle_frame(whole(1, 3, Kind::MESSAGE, b"m3")));
    assert!(timeout(SHORT, third.as_mut()).await.is_err());
    s.cancel(StreamErrorKind::Canceled(Initiator::Local));
    timeout(LONG, third)
        .await
        .expect("released by the cancel")
        .expect("ok");
    // A local cancel discards what was queued.
    assert_matches!(
        s.recv().await.map_err(StreamError::into_kind),
        Err(StreamErrorKind::Canceled(Initiator::Local))
    );
}

#[tokio::test]
async fn other_endings_release_a_waiting_handle_frame() {
    let ends: [(&str, Event); 4] = [
        ("close", |s, _| s.close().expect("close")),
        ("handle cancel", |_, h| {
            h.cancel(StreamErrorKind::DeadlineExceeded)
        }),
        ("connection lost", |_, h| {
            h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof))
        }),
        ("send_error", |s, _| {
            s.send_error(&CodedError::new(1, "x")).expect("send_error")
        }),
    ];
    for (name, end) in ends {
        let w = writer();
        let (s, h) = pair_with(1, StreamKind::Client, &w, small_queue(1));
        h.handle_frame(whole(1, 1, Kind::MESSAGE, b"m1"))
            .await
            .expect("m1");
        let mut second = pin!(h.handle_frame(whole(1, 2, Kind::MESSAGE, b"m2")));
        assert!(timeout(SHORT, second.as_mut()).await.is_err(), "{name}");
        end(&s, &h);
        timeout(LONG, second).await.expect(name).expect(name);
    }
    // Dropping the application's stream releases it too.
    let w = writer();
    let (s, h) = pair_with(1, StreamKind::Client, &w, small_queue(1));
    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"m1"))
        .await
        .expect("m1");
    let mut second = pin!(h.handle_frame(whole(1, 2, Kind::MESSAGE, b"m2")));
    assert!(timeout(SHORT, second.as_mut()).await.is_err());
    drop(s);
    timeout(LONG, second)
        .await
        .expect("released by the drop")
        .expect("ok");
}

#[tokio::test]
async fn connection_lost_delivers_queued_messages_first() {
    let w = writer();
    let (s, h) = pair_with(1, StreamKind::Client, &w, small_queue(4));
    for (mid, m) in [(1, &b"a"[..]), (2, b"b"), (3, b"c")] {
        h.handle_frame(whole(1, mid, Kind::MESSAGE, m))
            .await
            .expect("queued");
    }
    h.connection_lost(StreamErrorKind::ConnectionLost(ConnectionError::Eof));
    for m in [&b"a"[..], b"b", b"c"] {
        assert_eq!(s.recv().await.expect("recv").as_deref(), Some(m));
    }
    assert_matches!(
        s.recv().await.map_err(StreamError::into_kind),
        Err(StreamErrorKind::ConnectionLost(ConnectionError::Eof))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn backpressure_through_a_tiny_queue_delivers_everything_in_order() {
    const N: u64 = 500;
    let w = writer();
    let (s, h) = pair_with(1, StreamKind::Server, &w, small_queue(1));
    let reader = tokio::spawn(async move {
        for mid in 1..=N {
            let data = mid.to_be_bytes();
            h.handle_frame(whole(1, mid, Kind::MESSAGE, &data))
                .await
                .expect("frame");
        }
        h.handle_frame(whole(1, N + 1, Kind::CLOSE_SEND, b""))
            .await
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
        futures_executor::block_on(h.handle_frame(whole(1, 1, Kind::CLOSE, b""))).expect("ok");
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
            futures_executor::block_on(h.handle_frame(whole(1, 1, Kind::CLOSE, b""))).expect("ok")
        }),
        ("remote error", |_, h| {
            futures_executor::block_on(h.handle_frame(error_frame(1, 1, 1, "x"))).expect("ok")
        }),
        ("remote cancel", |_, h| {
            futures_executor::block_on(h.handle_frame(cancel_frame(1, 1))).expect("ok")
        }),
        ("both close send", |s, h| {
            s.close_send().expect("close_send");
            futures_executor::block_on(h.handle_frame(whole(1, 1, Kind::CLOSE_SEND, b"")))
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
        h.handle_frame(whole(1, 1, Kind::CLOSE_SEND, b""))
            .await
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
    h.handle_frame(cancel_frame(1, 1)).await.expect("frame");
    for wt in waiters {
        timeout(LONG, wt).await.expect("woken").expect("join");
    }
    assert!(s.is_terminated());
}

// ---------------------------------------------------------------- end to end

/// Moves frames from `from` to the stream handles of the other side,
/// skipping Invoke packets (the connection's job), until `from` stops.
async fn pump(from: Arc<MuxWriter>, to: StreamHandle) {
    let dec = FrameDecoder::default();
    let mut pending = BytesMut::new();
    loop {
        let mut spare = BytesMut::new();
        let r = poll_fn(|cx| from.poll_take(cx, &mut spare)).await;
        if r.is_err() {
            return;
        }
        pending.extend_from_slice(&spare);
        while let Some(f) = dec.decode(&mut pending).expect("frames") {
            if matches!(f.kind, Kind::INVOKE | Kind::INVOKE_METADATA) {
                continue;
            }
            to.handle_frame(f).await.expect("accepted");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bidi_exchange_with_backpressure_on_both_sides() {
    const N: usize = 300;
    let c2s = Arc::new(MuxWriter::new(64));
    let s2c = Arc::new(MuxWriter::new(64));
    let opts = StreamOptions {
        split_size: 7,
        recv_queue_messages: 2,
        ..StreamOptions::default()
    };
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
    client
        .write_invoke(b"/s.S/Echo", &Metadata::new())
        .expect("invoke");
    let sender = tokio::spawn({
        let client = client.clone();
        async move {
            for i in 0..N {
                let m = format!("message number {i}");
                client.send(m.as_bytes()).await.expect("send");
            }
            client.close_send().expect("close_send");
        }
    });
    for i in 0..N {
        let m = timeout(LONG, client.recv())
            .await
            .expect("progress")
            .expect("recv");
        assert_eq!(m.as_deref(), Some(format!("message number {i}").as_bytes()));
    }
    assert_matches!(timeout(LONG, client.recv()).await.expect("end"), Ok(None));
    sender.await.expect("sender");
    assert_eq!(echo.await.expect("echo"), N);
    assert!(client.is_terminated());
    timeout(LONG, server_h.terminated())
        .await
        .expect("server terminated");
    c2s.stop(ConnectionError::Closed);
    s2c.stop(ConnectionError::Closed);
    p1.await.expect("pump");
    p2.await.expect("pump");
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
    let (s, _h) = pair(1, StreamKind::Client, &w);
    s.write_invoke(b"/s.S/M", &Metadata::new()).expect("invoke");
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
    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"m"))
        .await
        .expect("message");
    assert!(poll_with(b.as_mut(), &wb).is_ready());
    h.handle_frame(whole(1, 2, Kind::CLOSE, b""))
        .await
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
    h.handle_frame(whole(1, 1, Kind::MESSAGE, b"m1"))
        .await
        .expect("message");
    h.handle_frame(whole(1, 2, Kind::CLOSE_SEND, b""))
        .await
        .expect("close send");
    h.cancel(StreamErrorKind::DeadlineExceeded);
    let err = s.recv().await.expect_err("not a clean end");
    assert_matches!(err.kind(), StreamErrorKind::DeadlineExceeded);
}

/// A send parked on writer room is answered by the stream's own CloseSend.
#[tokio::test]
async fn close_send_wakes_a_send_waiting_for_writer_room() {
    let w = Arc::new(MuxWriter::new(1));
    let (s, _h) = pair(1, StreamKind::Client, &w);
    s.write_invoke(b"/a/b", &Metadata::new()).expect("invoke");
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
    let (s, _h) = pair(1, StreamKind::Client, &w);
    s.write_invoke(b"/a/b", &Metadata::new()).expect("invoke");
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
