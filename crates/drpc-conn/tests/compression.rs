//! Compression chosen by the caller ([`CallOptions::compression`]) or for
//! the whole connection ([`ConnOptions::compression`]): requests and
//! responses both compressed, every client path, and what a response that
//! does not decompress does to the call.

use std::time::Duration;

use bytes::Bytes;
use drpc_conn::{CallOptions, Code, Compression, Conn, ConnOptions, Raw};
use drpc_manager::{Manager, ManagerOptions, Role};
use drpc_wire::{
    COMPRESSION_METADATA_KEY, Frame, FrameReader, Id, Kind, Metadata, append_packet,
    decode_metadata,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf};

const RPC: &str = "/echo.Echo/Say";
const LIMIT: Duration = Duration::from_secs(10);

fn text(len: usize) -> Vec<u8> {
    b"lorem ipsum dolor sit amet, "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// A server manager that echoes every message of every stream, and
/// reports each stream's compression and metadata.
fn echo_server(
    io: DuplexStream,
) -> tokio::sync::mpsc::UnboundedReceiver<(Option<Compression>, Metadata)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let server = Manager::new(io, Role::Server, ManagerOptions::default());
    tokio::spawn(async move {
        while let Ok(incoming) = server.accept().await {
            let _ = tx.send((incoming.stream.compression(), incoming.metadata));
            tokio::spawn(async move {
                let stream = incoming.stream;
                while let Ok(Some(msg)) = stream.recv().await {
                    if stream.send(&msg).await.is_err() {
                        return;
                    }
                }
                let _ = stream.close_send();
                stream.terminated().await;
            });
        }
    });
    rx
}

#[tokio::test]
async fn a_call_chooses_compression() {
    tokio::time::timeout(LIMIT, async {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut seen = echo_server(b);
        let conn = Conn::new(a, ConnOptions::default());
        let opts = CallOptions::new()
            .metadata("tenant", "blue")
            .compression(Compression::Snappy);
        assert_eq!(opts.get_compression(), Some(Compression::Snappy));

        for request in [
            Bytes::new(),
            Bytes::from("hi"),
            Bytes::from(text(300 << 10)),
        ] {
            let reply: Bytes = conn
                .unary_with(&Raw, RPC, &request, &opts)
                .await
                .expect("unary");
            assert_eq!(reply, request);
            let (compression, md) = seen.recv().await.expect("served");
            assert_eq!(compression, Some(Compression::Snappy));
            assert_eq!(md.get("tenant").map(String::as_str), Some("blue"));
            assert!(!md.contains_key(COMPRESSION_METADATA_KEY));
        }

        // Without the option, the connection's default: none.
        let reply: Bytes = conn
            .unary_with(&Raw, RPC, &Bytes::from("plain"), &CallOptions::new())
            .await
            .expect("unary");
        assert_eq!(reply, "plain");
        assert_eq!(seen.recv().await.expect("served").0, None);

        // A streaming call: `send`, `send_all` (batched), the `Sink`, and
        // responses through the receive batch.
        let mut call = conn
            .stream_with::<Bytes, Bytes, _>(Raw, RPC, &opts)
            .await
            .expect("stream");
        let small: Vec<Bytes> = (0..20)
            .map(|i| Bytes::from(vec![i as u8; i * 10]))
            .collect();
        call.send(&Bytes::from(text(100 << 10)))
            .await
            .expect("send");
        call.send_all(&small).await.expect("send_all");
        SinkExt::send(&mut call, Bytes::from("via sink"))
            .await
            .expect("sink");
        call.close_send().expect("close_send");
        let mut got = Vec::new();
        while let Some(reply) = call.next().await {
            got.push(reply.expect("reply"));
        }
        assert_eq!(got.len(), 22);
        assert_eq!(got[0], text(100 << 10));
        assert_eq!(&got[1..21], &small[..]);
        assert_eq!(got[21], "via sink");
        assert_eq!(
            seen.recv().await.expect("served").0,
            Some(Compression::Snappy)
        );
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_connection_compresses_every_call() {
    tokio::time::timeout(LIMIT, async {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut seen = echo_server(b);
        let conn = Conn::new(a, ConnOptions::default().compression(Compression::Snappy));
        let reply: Bytes = conn
            .unary_with(&Raw, RPC, &Bytes::from(text(5000)), &CallOptions::new())
            .await
            .expect("unary");
        assert_eq!(reply, text(5000));
        assert_eq!(
            seen.recv().await.expect("served").0,
            Some(Compression::Snappy)
        );
    })
    .await
    .expect("in time");
}

/// Negotiated compression, for the connection or for one call: the first
/// unary call goes plain and asks the server (a server of this
/// implementation) what it decompresses; the next ones are compressed.
/// Toward a server that never says (flow control off, as a stock Go
/// server), every call stays plain, and after a few calls the client stops
/// asking.
#[tokio::test]
async fn compression_if_accepted_follows_what_the_server_says() {
    tokio::time::timeout(LIMIT, async {
        let calls = [
            (
                ConnOptions::default().compression_if_accepted(Compression::Snappy),
                CallOptions::new(),
            ),
            (
                ConnOptions::default(),
                CallOptions::new().compression_if_accepted(Compression::Snappy),
            ),
        ];
        for (conn_opts, call_opts) in calls {
            let (a, b) = tokio::io::duplex(1 << 20);
            let mut seen = echo_server(b);
            let conn = Conn::new(a, conn_opts);
            let mut compressions = Vec::new();
            for _ in 0..3 {
                let reply: Bytes = conn
                    .unary_with(&Raw, RPC, &Bytes::from(text(5000)), &call_opts)
                    .await
                    .expect("unary");
                assert_eq!(reply, text(5000));
                let (compression, metadata) = seen.recv().await.expect("served");
                assert!(
                    !metadata.contains_key(drpc_wire::FLOW_CONTROL_METADATA_KEY),
                    "the server takes its key out"
                );
                compressions.push(compression);
            }
            let snappy = Some(Compression::Snappy);
            assert_eq!(compressions, [None, snappy, snappy], "{call_opts:?}");
        }

        // A server that never accepts an offer (a stock Go server): a raw
        // one, which records whether each call offered flow control and
        // was compressed.
        let (a, b) = tokio::io::duplex(1 << 20);
        let (r, mut w) = tokio::io::split(b);
        let mut reader = FrameReader::new(r, 1 << 20);
        let offers = tokio::spawn(async move {
            let mut offers = Vec::new();
            for _ in 0..6 {
                let request = read_request(&mut reader).await;
                let stream = request[0].id.stream;
                let md = match request[0].kind {
                    Kind::INVOKE_METADATA => decode_metadata(&request[0].data).expect("metadata"),
                    _ => Metadata::new(),
                };
                offers.push((
                    md.contains_key(drpc_wire::FLOW_CONTROL_METADATA_KEY),
                    md.contains_key(COMPRESSION_METADATA_KEY),
                ));
                let mut out = Vec::new();
                append_packet(&mut out, Id::new(stream, 1), Kind::MESSAGE, false, b"ok", 0);
                append_packet(
                    &mut out,
                    Id::new(stream, 2),
                    Kind::CLOSE_SEND,
                    false,
                    &[],
                    0,
                );
                w.write_all(&out).await.expect("write");
            }
            offers
        });
        let conn = Conn::new(
            a,
            ConnOptions::default().compression_if_accepted(Compression::Snappy),
        );
        for _ in 0..6 {
            let reply: Bytes = conn
                .unary_with(&Raw, RPC, &Bytes::from(text(100)), &CallOptions::new())
                .await
                .expect("unary");
            assert_eq!(reply, "ok");
        }
        let offers = offers.await.expect("server");
        assert_eq!(
            offers,
            [
                (true, false),
                (true, false),
                (true, false),
                (true, false),
                (false, false),
                (false, false)
            ],
            "plain calls; the offer stops after four unanswered ones"
        );
    })
    .await
    .expect("in time");
}

/// A raw server: reads frames until the client's CloseSend on stream 1.
async fn read_request(reader: &mut FrameReader<ReadHalf<DuplexStream>>) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let frame = reader.read_frame().await.expect("read").expect("a frame");
        let end = frame.kind == Kind::CLOSE_SEND;
        frames.push(frame);
        if end {
            return frames;
        }
    }
}

fn packet(message: u64, kind: Kind, data: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    append_packet(&mut buf, Id::new(1, message), kind, false, data, 0);
    buf
}

/// A response that does not decompress fails the call with Internal (a
/// unary call), or that one receive (a stream), and the stream goes on.
#[tokio::test]
async fn a_corrupt_response() {
    tokio::time::timeout(LIMIT, async {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (r, mut w) = tokio::io::split(b);
        let mut reader = FrameReader::new(r, 1 << 20);
        let conn = Conn::new(a, ConnOptions::default().compression(Compression::Snappy));
        let mut ok = Vec::new();
        Compression::Snappy
            .compress(b"fine", &mut ok)
            .expect("compresses");

        let server = tokio::spawn(async move {
            let request = read_request(&mut reader).await;
            let md = decode_metadata(&request[0].data).expect("metadata");
            assert_eq!(md[COMPRESSION_METADATA_KEY], "snappy");
            let mut out = packet(1, Kind::MESSAGE, b"\xff\xff\xff");
            out.extend(packet(2, Kind::MESSAGE, &ok));
            out.extend(packet(3, Kind::CLOSE_SEND, &[]));
            w.write_all(&out).await.expect("write");
            (reader, w)
        });
        let err = conn
            .unary_with::<Bytes, Bytes, _>(&Raw, RPC, &Bytes::from("q"), &CallOptions::new())
            .await
            .expect_err("corrupt");
        assert_eq!(err.code(), Some(Code::Internal), "{err}");
        assert!(err.to_string().contains("protocol error: "), "{err}");
        let _ = server.await.expect("server");
    })
    .await
    .expect("in time");

    tokio::time::timeout(LIMIT, async {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (r, mut w) = tokio::io::split(b);
        let mut reader = FrameReader::new(r, 1 << 20);
        let conn = Conn::new(a, ConnOptions::default());
        let mut ok = Vec::new();
        Compression::Snappy
            .compress(b"fine", &mut ok)
            .expect("compresses");
        let opts = CallOptions::new().compression(Compression::Snappy);
        let mut call = conn
            .stream_with::<Bytes, Bytes, _>(Raw, RPC, &opts)
            .await
            .expect("stream");
        call.close_send().expect("close_send");
        read_request(&mut reader).await;
        let mut out = packet(1, Kind::MESSAGE, b"\xff\xff\xff");
        out.extend(packet(2, Kind::MESSAGE, &ok));
        out.extend(packet(3, Kind::CLOSE_SEND, &[]));
        w.write_all(&out).await.expect("write");
        let err = call.recv().await.expect_err("corrupt");
        assert_eq!(err.code(), Some(Code::Internal));
        assert_eq!(call.recv().await.expect("recv"), Some(Bytes::from("fine")));
        assert_eq!(call.recv().await.expect("end"), None);
    })
    .await
    .expect("in time");
}
