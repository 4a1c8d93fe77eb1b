//! Per-stream compression as CockroachDB's fork does it (mux-fork-2026.md
//! §4): the InvokeMetadata a client sends, byte for byte; round trips over
//! a real manager pair, both ways, every send path; what a server does
//! with an unknown algorithm, a corrupt payload or a decompression bomb;
//! and that size limits and flow control count compressed bytes.

mod support;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;

use bytes::Bytes;
use drpc_manager::{Manager, ManagerOptions, Role};
use drpc_stream::{
    FlowControl, MessageBatch, MessageBuf, RecvBatch, Stream, StreamErrorKind, ZERO_COPY_MIN,
};
use drpc_wire::{
    COMPRESSION_METADATA_KEY, CodedError, Compression, CompressionError, FLOW_CONTROL_METADATA_KEY,
    Kind, decode_metadata,
};
use support::{
    Recording, assert_pending, bounded, frame, metadata, metadata_payload, pair, pattern, scripted,
    step, written,
};
use tokio::io::AsyncReadExt;

const RPC: &str = "/service.Service/Method1";
const KIB: usize = 1024;
const SNAPPY: Compression = Compression::Snappy;

/// The fork's metadata entry for snappy (28 bytes), mux-fork-2026.md §4.
fn fork_entry() -> Vec<u8> {
    let mut entry = vec![0x0a, 0x1a, 0x0a, 0x10];
    entry.extend_from_slice(b"drpc-compression");
    entry.extend_from_slice(&[0x12, 0x06]);
    entry.extend_from_slice(b"snappy");
    entry
}

fn compressed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    SNAPPY.compress(data, &mut out).expect("compresses");
    out
}

/// Text that compresses well (about 20:1).
fn text(len: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog; "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// Bytes that do not compress.
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn compressing(mut opts: ManagerOptions) -> ManagerOptions {
    opts.compression = Some(SNAPPY);
    opts
}

/// A unary call (no flow-control offer) with no metadata of its own sends
/// exactly the fork's InvokeMetadata: `0f 01 01 1c` ‖ the 28-byte entry;
/// then the Invoke and the request, compressed.
#[tokio::test]
async fn invoke_metadata_is_the_forks_bytes() {
    bounded(async {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let client = Manager::new(ours, Role::Client, compressing(ManagerOptions::default()));
        let _call = client
            .open_unary(RPC, &Default::default(), Bytes::from_static(b"hello"))
            .await
            .expect("open");
        let mut want = vec![0x0f, 0x01, 0x01, 0x1c];
        want.extend_from_slice(&fork_entry());
        // Invoke, then the Message "hello" as a Snappy block, then CloseSend.
        want.extend_from_slice(&[0x03, 0x01, 0x02, RPC.len() as u8]);
        want.extend_from_slice(RPC.as_bytes());
        let block = compressed(b"hello");
        assert_eq!(block, b"\x05\x10hello");
        want.extend_from_slice(&[0x05, 0x01, 0x03, block.len() as u8]);
        want.extend_from_slice(&block);
        want.extend_from_slice(&[0x0d, 0x01, 0x04, 0x00]);
        let mut got = vec![0; want.len()];
        step("client writes", theirs.read_exact(&mut got))
            .await
            .expect("read");
        assert_eq!(got, want);
    })
    .await
}

/// The same with flow control off, through `open_stream_with`: a stream
/// then carries the entry alone too. An application's own value for the
/// key is never sent: replaced when the stream compresses, removed when
/// it does not (as the fork's client does).
#[tokio::test]
async fn the_key_is_the_connections() {
    bounded(async {
        let mut opts = ManagerOptions::default();
        opts.stream.flow_control = FlowControl::off();
        let (client, mut peer) = scripted(Role::Client, opts);
        let bogus = metadata(&[(COMPRESSION_METADATA_KEY, "gzip")]);
        let call = client
            .open_stream_with(RPC, &bogus, Some(SNAPPY))
            .await
            .expect("open");
        assert_eq!(call.compression(), Some(SNAPPY));
        peer.expect(frame(1, 1, Kind::INVOKE_METADATA, &fork_entry()))
            .await;
        peer.expect(frame(1, 2, Kind::INVOKE, RPC.as_bytes())).await;

        let with_other = metadata(&[(COMPRESSION_METADATA_KEY, "snappy"), ("a", "b")]);
        let plain = client
            .open_stream_with(RPC, &with_other, None)
            .await
            .expect("open");
        assert_eq!(plain.compression(), None);
        peer.expect(frame(
            2,
            1,
            Kind::INVOKE_METADATA,
            &metadata_payload(&[("a", "b")]),
        ))
        .await;
        peer.expect(frame(2, 2, Kind::INVOKE, RPC.as_bytes())).await;
        // Only the key: no metadata at all.
        let _bare = client
            .open_stream_with(RPC, &bogus, None)
            .await
            .expect("open");
        peer.expect(frame(3, 1, Kind::INVOKE, RPC.as_bytes())).await;
    })
    .await
}

/// With flow control in auto mode, a stream offers it and asks for
/// compression in the same InvokeMetadata.
#[tokio::test]
async fn a_stream_offers_flow_control_and_compression_together() {
    bounded(async {
        let (client, mut peer) = scripted(Role::Client, compressing(ManagerOptions::default()));
        let _call = client
            .open_stream(RPC, &Default::default())
            .await
            .expect("open");
        let md = peer.read().await;
        assert_eq!(md.kind, Kind::INVOKE_METADATA);
        let md = decode_metadata(&md.data).expect("decodes");
        assert_eq!(md.len(), 2, "{md:?}");
        assert_eq!(md[COMPRESSION_METADATA_KEY], "snappy");
        assert!(md.contains_key(FLOW_CONTROL_METADATA_KEY));
    })
    .await
}

/// What the server's handler sees, and its stream, for one call.
struct Accepted {
    stream: Stream,
    metadata: drpc_wire::Metadata,
}

async fn accept(server: &Manager) -> Accepted {
    let incoming = step("accept", server.accept()).await.expect("accept");
    Accepted {
        stream: incoming.stream,
        metadata: incoming.metadata,
    }
}

/// Messages of every size both ways on one compressed stream: empty,
/// small, over 64 KiB (split into frames), compressible and not; the
/// handler never sees the key.
#[tokio::test]
async fn streaming_round_trips_both_ways() {
    bounded(async {
        let (client, server) = pair(ManagerOptions::default());
        let md = metadata(&[("tenant", "blue")]);
        let call = client
            .open_stream_with(RPC, &md, Some(SNAPPY))
            .await
            .expect("open");
        let served = accept(&server).await;
        assert_eq!(served.metadata, md, "the key is taken out");
        assert_eq!(served.stream.compression(), Some(SNAPPY));

        let messages: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"x".to_vec(),
            text(1000),
            text(300 * KIB),
            random(100 * KIB, 7),
            pattern(1, 2, 70 * KIB),
        ];
        for m in &messages {
            call.send(m).await.expect("send");
            let got = step("server recv", served.stream.recv())
                .await
                .expect("recv")
                .expect("a message");
            assert_eq!(got.len(), m.len());
            assert_eq!(&got[..], &m[..]);
            served.stream.send(&got).await.expect("echo");
            let back = step("client recv", call.recv())
                .await
                .expect("recv")
                .expect("a message");
            assert_eq!(&back[..], &m[..]);
        }
        call.close_send().expect("close_send");
        assert_eq!(served.stream.recv().await.expect("end"), None);
        served.stream.close_send().expect("close_send");
        assert_eq!(call.recv().await.expect("end"), None);
    })
    .await
}

/// Every send path compresses: `send_bytes` (shared, large), `send_encoded`
/// of a message in several parts (gathered first), `send_batch`; and
/// every receive path decompresses: `recv`, `RecvBatch`,
/// `poll_recv_many`.
#[tokio::test]
async fn every_send_and_receive_path() {
    bounded(async {
        let (client, server) = pair(ManagerOptions::default());
        let call = client
            .open_stream_with(RPC, &Default::default(), Some(SNAPPY))
            .await
            .expect("open");
        let served = accept(&server).await;

        let large = Bytes::from(text(200 * KIB));
        call.send_bytes(large.clone()).await.expect("send_bytes");
        // A message in three parts: a run, a shared buffer, a run.
        let mut buf = MessageBuf::new();
        bytes::BufMut::put_slice(&mut buf, b"head");
        bytes::BufMut::put(&mut buf, Bytes::from(random(ZERO_COPY_MIN, 3)));
        bytes::BufMut::put_slice(&mut buf, b"tail");
        assert!(buf.as_contiguous().is_none(), "in parts");
        let mut parts_joined = b"head".to_vec();
        parts_joined.extend_from_slice(&random(ZERO_COPY_MIN, 3));
        parts_joined.extend_from_slice(b"tail");
        call.send_encoded(&mut buf).await.expect("send_encoded");
        let mut batch = MessageBatch::new();
        for i in 0..10 {
            batch.push_encoded(&pattern(9, i, i * 100));
        }
        call.send_batch(&mut batch).await.expect("send_batch");
        call.close_send().expect("close_send");

        let s = &served.stream;
        assert_eq!(s.recv().await.expect("recv"), Some(large));
        let mut recv_batch = RecvBatch::new();
        let got = recv_batch.recv(s).await.expect("recv").expect("a message");
        assert_eq!(&got[..], &parts_joined[..]);
        for i in 0..5 {
            let got = recv_batch.recv(s).await.expect("recv").expect("a message");
            assert_eq!(&got[..], &pattern(9, i, i * 100)[..]);
        }
        // The batch may hold some of the rest already; what it does not
        // comes through `poll_recv_many`, one at a time.
        let mut rest = Vec::new();
        while !recv_batch.is_empty() {
            rest.push(recv_batch.recv(s).await.expect("recv").expect("a message"));
        }
        let mut out = VecDeque::new();
        loop {
            let n = poll_fn(|cx| s.poll_recv_many(cx, &mut out, 64))
                .await
                .expect("recv");
            if n == 0 {
                break;
            }
            assert_eq!(n, 1, "one at a time on a compressed stream");
        }
        rest.extend(out);
        assert_eq!(rest.len(), 5);
        for (k, got) in rest.iter().enumerate() {
            let i = 5 + k;
            assert_eq!(&got[..], &pattern(9, i, i * 100)[..]);
        }
    })
    .await
}

/// A unary call compresses its request (from `open_unary` and from a
/// multi-part `open_unary_encoded_with`) and its response.
#[tokio::test]
async fn unary_round_trips() {
    bounded(async {
        let (client, server) = pair(compressing(ManagerOptions::default()));
        for (k, request) in [Vec::new(), b"ping".to_vec(), text(500 * KIB)]
            .into_iter()
            .enumerate()
        {
            let call = if k % 2 == 0 {
                client
                    .open_unary(RPC, &Default::default(), Bytes::from(request.clone()))
                    .await
                    .expect("open")
            } else {
                let mut buf = MessageBuf::new();
                bytes::BufMut::put_slice(&mut buf, &request[..2]);
                bytes::BufMut::put(&mut buf, Bytes::from(text(ZERO_COPY_MIN)));
                bytes::BufMut::put_slice(&mut buf, &request[2..]);
                client
                    .open_unary_encoded_with(RPC, &Default::default(), &mut buf, Some(SNAPPY))
                    .await
                    .expect("open")
            };
            let want = if k % 2 == 0 {
                request.clone()
            } else {
                let mut w = request[..2].to_vec();
                w.extend_from_slice(&text(ZERO_COPY_MIN));
                w.extend_from_slice(&request[2..]);
                w
            };
            let served = accept(&server).await;
            assert!(served.metadata.is_empty());
            let got = served.stream.recv().await.expect("recv").expect("request");
            assert_eq!(&got[..], &want[..]);
            assert_eq!(served.stream.recv().await.expect("end"), None);
            let mut reply = want.clone();
            reply.reverse();
            served.stream.send(&reply).await.expect("reply");
            served.stream.close_send().expect("close_send");
            let back = call.recv().await.expect("recv").expect("reply");
            assert_eq!(&back[..], &reply[..]);
        }
    })
    .await
}

/// The messages really are compressed on the wire: a 1 MiB text message
/// costs about a twentieth of its size.
#[tokio::test]
async fn the_wire_carries_compressed_bytes() {
    bounded(async {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (recording, log) = Recording::new(a);
        let client = Manager::new(recording, Role::Client, ManagerOptions::default());
        let server = Manager::new(b, Role::Server, ManagerOptions::default());
        let call = client
            .open_stream_with(RPC, &Default::default(), Some(SNAPPY))
            .await
            .expect("open");
        let message = text(1 << 20);
        call.send(&message).await.expect("send");
        let served = accept(&server).await;
        let got = served.stream.recv().await.expect("recv").expect("message");
        assert_eq!(got.len(), message.len());
        let wire = written(&log).len();
        assert!(wire < 100 * KIB, "{wire} bytes on the wire");
    })
    .await
}

/// A value the server does not know refuses that stream alone, with
/// Unimplemented and the fork's text; the connection and other streams go
/// on, and the refused stream's later frames are dropped.
#[tokio::test]
async fn an_unknown_compression_refuses_only_its_stream() {
    bounded(async {
        let (server, mut peer) = scripted(Role::Server, ManagerOptions::default());
        let md = metadata_payload(&[(COMPRESSION_METADATA_KEY, "zstd")]);
        peer.send(1, 1, Kind::INVOKE_METADATA, &md).await;
        peer.send(1, 2, Kind::INVOKE, RPC.as_bytes()).await;
        peer.send(1, 3, Kind::MESSAGE, b"\x05\x10hello").await;
        let refusal = peer.read().await;
        assert_eq!(refusal.kind, Kind::ERROR);
        assert_eq!((refusal.id.stream, refusal.id.message), (1, 1));
        let err = CodedError::decode(&refusal.data);
        assert_eq!(err.code(), 12, "Unimplemented");
        assert_eq!(
            err.message(),
            r#"protocol error: unsupported compression: "zstd""#
        );
        peer.send(1, 4, Kind::CLOSE_SEND, &[]).await;

        // Stream 3, compressed, on the same connection.
        let md = metadata_payload(&[(COMPRESSION_METADATA_KEY, "snappy"), ("k", "v")]);
        peer.send(3, 1, Kind::INVOKE_METADATA, &md).await;
        peer.send(3, 2, Kind::INVOKE, RPC.as_bytes()).await;
        peer.send(3, 3, Kind::MESSAGE, &compressed(b"hello")).await;
        let served = accept(&server).await;
        assert_eq!(served.stream.id(), 3);
        assert_eq!(served.metadata, metadata(&[("k", "v")]));
        let got = served.stream.recv().await.expect("recv").expect("message");
        assert_eq!(&got[..], b"hello");
        served.stream.send(b"world").await.expect("send");
        peer.expect(frame(3, 1, Kind::MESSAGE, &compressed(b"world")))
            .await;
        assert!(server.termination().is_none());
        assert_eq!(server.active_streams(), 1);
    })
    .await
}

/// A payload that does not decompress fails the receive that takes it,
/// and only that one: the next message comes through, on every receive
/// path, and the stream can still answer.
#[tokio::test]
async fn a_corrupt_payload_fails_only_its_receive() {
    bounded(async {
        let (server, mut peer) = scripted(Role::Server, ManagerOptions::default());
        let md = metadata_payload(&[(COMPRESSION_METADATA_KEY, "snappy")]);
        peer.send(1, 1, Kind::INVOKE_METADATA, &md).await;
        peer.send(1, 2, Kind::INVOKE, RPC.as_bytes()).await;
        let corrupt: &[u8] = b"\x05\x10he"; // a literal running past the end
        let one = compressed(b"one");
        peer.send(1, 3, Kind::MESSAGE, corrupt).await;
        peer.send(1, 4, Kind::MESSAGE, &one).await;
        let served = accept(&server).await;
        let s = &served.stream;

        let is_corrupt = |r: Result<Option<Bytes>, drpc_stream::StreamError>| match r {
            Err(e) => {
                assert!(e.connection_survives());
                assert!(!e.is_too_large());
                assert!(
                    e.to_string()
                        .starts_with("protocol error: snappy: corrupt input"),
                    "{e}"
                );
                matches!(
                    e.kind(),
                    StreamErrorKind::Decompress {
                        compression: Compression::Snappy,
                        source: CompressionError::Corrupt(_)
                    }
                )
            }
            Ok(other) => panic!("expected a decompression error, got {other:?}"),
        };
        // `Stream::recv`.
        assert!(is_corrupt(s.recv().await));
        assert_eq!(s.recv().await.expect("recv").as_deref(), Some(&b"one"[..]));

        // `RecvBatch`, which takes what is queued at once.
        let two = compressed(b"two");
        let three = compressed(b"three");
        peer.send(1, 5, Kind::MESSAGE, &[]).await; // no length: corrupt too
        peer.send(1, 6, Kind::MESSAGE, &two).await;
        peer.send(1, 7, Kind::MESSAGE, corrupt).await;
        peer.send(1, 8, Kind::MESSAGE, &three).await;
        let mut batch = RecvBatch::new();
        assert!(is_corrupt(batch.recv(s).await));
        assert_eq!(
            batch.recv(s).await.expect("recv").as_deref(),
            Some(&b"two"[..])
        );
        assert!(is_corrupt(batch.recv(s).await));
        assert_eq!(
            batch.recv(s).await.expect("recv").as_deref(),
            Some(&b"three"[..])
        );
        assert!(batch.is_empty());

        // `poll_recv_many`, one message a call on a compressed stream.
        let four = compressed(b"four");
        peer.send(1, 9, Kind::MESSAGE, corrupt).await;
        peer.send(1, 10, Kind::MESSAGE, &four).await;
        let mut out = VecDeque::new();
        let r = poll_fn(|cx| s.poll_recv_many(cx, &mut out, 8)).await;
        assert!(is_corrupt(r.map(|_| None)));
        assert!(out.is_empty());
        let n = poll_fn(|cx| s.poll_recv_many(cx, &mut out, 8))
            .await
            .expect("recv");
        assert_eq!(n, 1);
        assert_eq!(out.pop_front().as_deref(), Some(&b"four"[..]));

        s.send(b"still here").await.expect("send");
        peer.expect(frame(1, 1, Kind::MESSAGE, &compressed(b"still here")))
            .await;
        assert!(server.termination().is_none());
    })
    .await
}

/// A block declaring more than the maximum packet size is refused from
/// its header (the allocation test is drpc-wire's `compress_bomb`): that
/// receive fails as too large, the next goes on.
#[tokio::test]
async fn a_decompression_bomb_is_refused() {
    bounded(async {
        let mut opts = ManagerOptions::default();
        opts.stream.max_packet_size = 64 * KIB;
        let (server, mut peer) = scripted(Role::Server, opts);
        let md = metadata_payload(&[(COMPRESSION_METADATA_KEY, "snappy")]);
        peer.send(1, 1, Kind::INVOKE_METADATA, &md).await;
        peer.send(1, 2, Kind::INVOKE, RPC.as_bytes()).await;
        // 4 GiB − 1 declared in six bytes.
        peer.send(1, 3, Kind::MESSAGE, &[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00])
            .await;
        // A valid block of 64 KiB + 1: within the limit compressed, not
        // once decompressed.
        peer.send(1, 4, Kind::MESSAGE, &compressed(&vec![0; 64 * KIB + 1]))
            .await;
        peer.send(1, 5, Kind::MESSAGE, &compressed(&vec![1; 64 * KIB]))
            .await;
        let served = accept(&server).await;
        for declared in [u32::MAX as u64, 64 * KIB as u64 + 1] {
            let err = served.stream.recv().await.expect_err("refused");
            assert!(err.is_too_large() && err.is_resource_exhausted(), "{err}");
            match err.kind() {
                StreamErrorKind::Decompress {
                    source: CompressionError::TooLarge { len, limit },
                    ..
                } => assert_eq!((*len, *limit), (declared, 64 * KIB)),
                other => panic!("{other:?}"),
            }
        }
        let got = served.stream.recv().await.expect("recv").expect("message");
        assert_eq!(got.len(), 64 * KIB);
        assert!(server.termination().is_none());
    })
    .await
}

/// The maximum packet size applies to the compressed payload: an
/// incompressible message of exactly the limit grows past it and is
/// refused locally; a compressible one of the limit goes. A message over
/// the limit before compression is refused too (the peer bounds what it
/// decompresses by its own limit).
#[tokio::test]
async fn size_limits_count_compressed_bytes() {
    bounded(async {
        let mut opts = ManagerOptions::default();
        opts.stream.max_packet_size = 64 * KIB;
        let (client, server) = pair(opts);
        let call = client
            .open_stream_with(RPC, &Default::default(), Some(SNAPPY))
            .await
            .expect("open");
        let incompressible = random(64 * KIB, 5);
        match call.send(&incompressible).await.map_err(|e| e.into_kind()) {
            Err(StreamErrorKind::MessageTooLarge { size, limit }) => {
                assert!(size > 64 * KIB, "the compressed size: {size}");
                assert_eq!(limit, 64 * KIB);
            }
            other => panic!("{other:?}"),
        }
        match call
            .send(&text(64 * KIB + 1))
            .await
            .map_err(|e| e.into_kind())
        {
            Err(StreamErrorKind::MessageTooLarge { size, .. }) => assert_eq!(size, 64 * KIB + 1),
            other => panic!("{other:?}"),
        }
        let mut batch = MessageBatch::new();
        batch.push_encoded(b"fine");
        batch.push_encoded(&incompressible);
        assert!(call.send_batch(&mut batch).await.is_err(), "nothing sent");
        // The stream goes on.
        call.send(&text(64 * KIB)).await.expect("fits compressed");
        let served = accept(&server).await;
        let got = served.stream.recv().await.expect("recv").expect("message");
        assert_eq!(&got[..], &text(64 * KIB)[..]);

        // A unary request that grows past the limit: refused, nothing
        // written, and the connection goes on.
        let refused = client
            .open_unary_encoded_with(
                RPC,
                &Default::default(),
                &mut {
                    let mut b = MessageBuf::new();
                    bytes::BufMut::put_slice(&mut b, &incompressible);
                    b
                },
                Some(SNAPPY),
            )
            .await
            .map_err(|e| e.into_kind());
        assert!(
            matches!(refused, Err(StreamErrorKind::MessageTooLarge { .. })),
            "{refused:?}"
        );
        let call = client
            .open_unary(RPC, &Default::default(), Bytes::from_static(b"next"))
            .await
            .expect("open");
        let served = accept(&server).await;
        assert_eq!(served.stream.id(), call.id());
        assert_eq!(
            served.stream.recv().await.expect("recv").as_deref(),
            Some(&b"next"[..])
        );
    })
    .await
}

/// Flow control counts compressed bytes: in fork mode with a 128 KiB
/// window, a receiver that reads nothing takes two 1 MiB text messages
/// (under 50 KiB each on the wire) without granting anything; without
/// compression the second send waits for credit.
#[tokio::test]
async fn flow_control_counts_compressed_bytes() {
    bounded(async {
        let fork = FlowControl::fork()
            .with_window(128 * KIB as u64, 32 * KIB as u64)
            .expect("valid");
        let mut opts = ManagerOptions::default();
        opts.stream.flow_control = fork;
        let message = text(1 << 20);

        let (client, server) = pair(opts.clone());
        let call = client
            .open_stream_with(RPC, &Default::default(), Some(SNAPPY))
            .await
            .expect("open");
        let served = accept(&server).await;
        assert!(compressed(&message).len() < 50 * KIB);
        for _ in 0..2 {
            step("send within the window", call.send(&message))
                .await
                .expect("send");
        }
        support::eventually("queued", || server.held_bytes() > 2 * 40 * KIB).await;
        assert!(
            server.held_bytes() < 128 * KIB + 16 * KIB,
            "{} held",
            server.held_bytes()
        );
        for _ in 0..2 {
            let got = served.stream.recv().await.expect("recv").expect("message");
            assert_eq!(got.len(), 1 << 20);
        }

        let (client, server) = pair(opts);
        let call = Arc::new(
            client
                .open_stream_with(RPC, &Default::default(), None)
                .await
                .expect("open"),
        );
        let _served = accept(&server).await;
        call.send(&message).await.expect("the first overdraws");
        assert_pending("the second waits for credit", call.send(&message)).await;
    })
    .await
}

/// The server's answer to a compressed unary call goes compressed even if
/// the handler answers with several messages in a batch.
#[tokio::test]
async fn server_batches_are_compressed() {
    bounded(async {
        let (client, mut peer) = scripted(Role::Client, ManagerOptions::default());
        let call = client
            .open_stream_with(RPC, &Default::default(), Some(SNAPPY))
            .await
            .expect("open");
        let _ = peer.read().await; // InvokeMetadata
        let _ = peer.read().await; // Invoke
        peer.send(1, 1, Kind::MESSAGE, &compressed(b"a")).await;
        peer.send(1, 2, Kind::MESSAGE, &compressed(&text(100 * KIB)))
            .await;
        peer.send(1, 3, Kind::CLOSE_SEND, &[]).await;
        assert_eq!(call.recv().await.expect("recv").as_deref(), Some(&b"a"[..]));
        let got = call.recv().await.expect("recv").expect("message");
        assert_eq!(&got[..], &text(100 * KIB)[..]);
        assert_eq!(call.recv().await.expect("end"), None);
        let mut batch = MessageBatch::new();
        batch.push_encoded(b"");
        batch.push_encoded(b"bc");
        call.send_batch(&mut batch).await.expect("send_batch");
        peer.expect(frame(1, 3, Kind::MESSAGE, &[0x00])).await;
        peer.expect(frame(1, 4, Kind::MESSAGE, &compressed(b"bc")))
            .await;
    })
    .await
}

/// `minlz-fastest` (drpc-wire's `minlz` feature): round trips of every
/// size over a real pair when built in; refused like any unknown value
/// otherwise.
#[tokio::test]
async fn minlz_fastest_when_built_in() {
    bounded(async {
        let (client, server) = pair(ManagerOptions::default());
        let Ok(minlz) = Compression::from_metadata_value("minlz-fastest") else {
            let (server, mut peer) = scripted(Role::Server, ManagerOptions::default());
            let md = metadata_payload(&[(COMPRESSION_METADATA_KEY, "minlz-fastest")]);
            peer.send(1, 1, Kind::INVOKE_METADATA, &md).await;
            peer.send(1, 2, Kind::INVOKE, RPC.as_bytes()).await;
            let refusal = peer.read().await;
            let err = CodedError::decode(&refusal.data);
            assert_eq!(err.code(), 12);
            assert_eq!(
                err.message(),
                r#"protocol error: unsupported compression: "minlz-fastest""#
            );
            drop(server);
            return;
        };
        let call = client
            .open_stream_with(RPC, &Default::default(), Some(minlz))
            .await
            .expect("open");
        let served = accept(&server).await;
        assert_eq!(served.stream.compression(), Some(minlz));
        assert!(served.metadata.is_empty());
        for m in [
            Vec::new(),
            text(4 * KIB),
            text(4 * KIB + 1),
            random(100 * KIB, 11),
            text(1 << 20),
        ] {
            call.send(&m).await.expect("send");
            let got = served.stream.recv().await.expect("recv").expect("message");
            assert_eq!(&got[..], &m[..]);
            served.stream.send(&got).await.expect("echo");
            let back = call.recv().await.expect("recv").expect("message");
            assert_eq!(&back[..], &m[..]);
        }
    })
    .await
}

/// One unary call of `client` served by `server`: returns the compression
/// the server's stream had, after echoing the request.
async fn unary_compression(client: &Manager, server: &Manager) -> Option<Compression> {
    let call = client
        .open_unary(
            RPC,
            &Default::default(),
            Bytes::from_static(b"ping ping ping"),
        )
        .await
        .expect("open");
    let served = accept(server).await;
    let compression = served.stream.compression();
    let req = step("request", served.stream.recv())
        .await
        .expect("recv")
        .expect("a request");
    step("respond", served.stream.send(&req))
        .await
        .expect("send");
    served.stream.close_send().expect("close");
    let reply = step("reply", call.recv()).await.expect("recv");
    assert_eq!(reply.as_deref(), Some(&b"ping ping ping"[..]));
    compression
}

/// Negotiated compression: the client compresses nothing until a server of
/// this implementation has said, in its acceptance of a flow-control offer,
/// that it decompresses Snappy; then every new call.
#[tokio::test]
async fn compression_if_accepted_waits_for_the_servers_word() {
    bounded(async {
        let (client, server) = pair(ManagerOptions {
            compression_if_accepted: Some(SNAPPY),
            ..ManagerOptions::default()
        });
        assert!(client.peer_compressions().is_empty());
        assert_eq!(client.default_compression(), None);
        assert_eq!(
            unary_compression(&client, &server).await,
            None,
            "the first call is plain"
        );
        assert!(client.peer_compressions().contains(SNAPPY));
        assert_eq!(client.default_compression(), Some(SNAPPY));
        assert_eq!(unary_compression(&client, &server).await, Some(SNAPPY));
        assert_eq!(unary_compression(&client, &server).await, Some(SNAPPY));
        // `compression`, when set, wins at once.
        let (client, server) = pair(ManagerOptions {
            compression: Some(SNAPPY),
            compression_if_accepted: Some(SNAPPY),
            ..ManagerOptions::default()
        });
        assert_eq!(unary_compression(&client, &server).await, Some(SNAPPY));
    })
    .await
}

/// A server that never accepts a flow-control offer (flow control off, as
/// a stock Go server or the fork's) never gets a compressed call.
#[tokio::test]
async fn compression_if_accepted_stays_plain_toward_servers_that_say_nothing() {
    bounded(async {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let client_opts = ManagerOptions {
            compression_if_accepted: Some(SNAPPY),
            ..ManagerOptions::default()
        };
        let mut server_opts = ManagerOptions::default();
        server_opts.stream.flow_control = FlowControl::off();
        let client = Manager::new(a, Role::Client, client_opts);
        let server = Manager::new(b, Role::Server, server_opts);
        for _ in 0..3 {
            assert_eq!(unary_compression(&client, &server).await, None);
        }
        assert!(client.peer_compressions().is_empty());
    })
    .await
}
