//! Limits: connections per server, concurrent streams per connection, and
//! message sizes.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use drpc_conn::{CallOptions, Conn, ConnOptions, Error};
use drpc_manager::ManagerOptions;
use drpc_server::ServerOptions;
use drpc_stream::{Raw, StreamErrorKind};

const FIVE_S: Duration = Duration::from_secs(5);
const MIB: usize = 1 << 20;

async fn echo(conn: &Conn, msg: &Bytes) -> Result<Bytes, Error> {
    conn.unary_with(&Raw, ECHO, msg, &CallOptions::new()).await
}

async fn one_connection_at_a_time(transport: Transport) {
    let opts = ServerOptions {
        max_connections: 1,
        ..ServerOptions::default()
    };
    let mut h = Harness::start_with(transport, opts).await;
    let first = h.connect().await;
    assert_eq!(echo(&first, &b("first")).await.expect("first"), "first");

    // The second connection is made (the kernel accepts it) and closed at
    // once: its call fails promptly, and the first connection goes on.
    let second = h.connect().await;
    let err = within(FIVE_S, "over-limit call fails", echo(&second, &b("second")))
        .await
        .expect_err("a connection over the limit is not served");
    assert!(err.is_unavailable(), "{err:?}");
    within(FIVE_S, "over-limit connection closed", second.closed()).await;
    assert_eq!(
        echo(&first, &b("still")).await.expect("first again"),
        "still"
    );

    // Once the first has closed (and the server has seen it), a new
    // connection is served.
    first.close().await;
    let third = within(FIVE_S, "a new connection served", async {
        loop {
            let conn = h.connect().await;
            if let Ok(got) = echo(&conn, &b("third")).await {
                break (conn, got);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(third.1, "third");
    assert_eq!(
        echo(&third.0, &b("more")).await.expect("third again"),
        "more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_connections_one_tcp() {
    within(
        TEST_LIMIT,
        "max connections tcp",
        one_connection_at_a_time(Transport::Tcp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_connections_one_unix() {
    within(
        TEST_LIMIT,
        "max connections unix",
        one_connection_at_a_time(Transport::Unix),
    )
    .await;
}

fn refused_stream(err: &Error) -> bool {
    err.to_string().contains("too many concurrent streams")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_max_concurrent_streams() {
    within(TEST_LIMIT, "server stream limit", async {
        let opts = ServerOptions {
            manager: ManagerOptions {
                max_concurrent_streams: 2,
                ..ManagerOptions::default()
            },
            ..ServerOptions::default()
        };
        let mut h = Harness::start_with(Transport::Tcp, opts).await;
        let conn = h.connect().await;
        let blocked: Vec<_> = (0..2)
            .map(|_| {
                let conn = conn.clone();
                tokio::spawn(async move {
                    conn.unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &b("b"), &CallOptions::new())
                        .await
                })
            })
            .collect();
        h.probe.wait_n("block:start", 2, FIVE_S).await;

        // A third unary call is refused with a clear message.
        let err = echo(&conn, &b("third")).await.expect_err("over the limit");
        assert!(refused_stream(&err), "{err:?}");
        assert!(!err.is_connection_lost(), "{err:?}");
        // A third streaming call too, on its first receive.
        let mut s = conn
            .stream_with::<Bytes, Bytes, _>(Raw, BIDI, &CallOptions::new())
            .await
            .expect("opening is local");
        let err = s.recv().await.expect_err("over the limit");
        assert!(refused_stream(&err), "{err:?}");
        drop(s);

        // The connection survives: the blocked calls are still in flight,
        // and once they are gone new calls work.
        assert!(blocked.iter().all(|t| !t.is_finished()));
        for t in &blocked {
            t.abort();
        }
        h.probe.wait_n("block:end", 2, FIVE_S).await;
        for i in 0..4 {
            let msg = b(&format!("after {i}"));
            assert_eq!(echo(&conn, &msg).await.expect("echo after refusal"), msg);
        }
        // Two at a time are fine.
        let (ma, mc) = (b("a"), b("c"));
        let (a, c) = tokio::join!(echo(&conn, &ma), echo(&conn, &mc));
        assert_eq!(a.expect("a"), "a");
        assert_eq!(c.expect("c"), "c");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_max_concurrent_streams() {
    within(TEST_LIMIT, "client stream limit", async {
        let mut h = Harness::start(Transport::Duplex).await;
        let conn = h
            .connect_with(ConnOptions {
                manager: ManagerOptions {
                    max_concurrent_streams: 2,
                    ..ManagerOptions::default()
                },
            })
            .await;
        let s1 = conn
            .stream_with::<Bytes, Bytes, _>(Raw, BIDI, &CallOptions::new())
            .await
            .expect("first");
        let s2 = conn
            .stream_with::<Bytes, Bytes, _>(Raw, BIDI, &CallOptions::new())
            .await
            .expect("second");
        let err = echo(&conn, &b("third")).await.expect_err("refused locally");
        assert!(refused_stream(&err), "{err:?}");
        drop((s1, s2));
        assert_eq!(echo(&conn, &b("x")).await.expect("echo after"), "x");
    })
    .await;
}

fn is_message_too_large(err: &Error) -> bool {
    matches!(err, Error::Stream(e) if matches!(e.kind(), StreamErrorKind::MessageTooLarge { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_request_fails_locally() {
    within(TEST_LIMIT, "oversized request", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        let big = Bytes::from(vec![1u8; 5 * MIB]);
        let err = echo(&conn, &big)
            .await
            .expect_err("5 MiB over the default 4 MiB");
        assert!(is_message_too_large(&err), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("maximum"), "{text}");
        assert!(text.contains(&(5 * MIB).to_string()), "{text}");
        assert!(text.contains(&(4 * MIB).to_string()), "{text}");
        assert!(!err.is_connection_lost());
        assert_eq!(echo(&conn, &b("small")).await.expect("echo after"), "small");

        // On a stream, the oversized send fails and the stream goes on.
        let mut s = conn
            .stream_with::<Bytes, Bytes, _>(Raw, BIDI, &CallOptions::new())
            .await
            .expect("open");
        let err = s.send(&big).await.expect_err("oversized send");
        assert!(is_message_too_large(&err), "{err:?}");
        s.send(&b("fits")).await.expect("send after");
        assert_eq!(s.recv().await.expect("recv"), Some(b("fits")));
        s.close_send().expect("close_send");
        assert_eq!(s.recv().await.expect("end"), None);

        // Exactly the limit is fine.
        let max = Bytes::from(vec![2u8; 4 * MIB]);
        assert!(echo(&conn, &max).await.expect("4 MiB echo") == max);
    })
    .await;
}

/// A response over the server's limit fails the call with the server's
/// explanation; the connection survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_response_fails_the_call() {
    within(TEST_LIMIT, "oversized response", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h.connect().await;
        let err = conn
            .unary_with::<Bytes, Bytes, _>(
                &Raw,
                BIG,
                &b(&(5 * MIB).to_string()),
                &CallOptions::new(),
            )
            .await
            .expect_err("5 MiB response");
        let text = err.remote_message().expect("the server's error").to_owned();
        assert!(text.contains("maximum"), "{text}");
        assert_eq!(echo(&conn, &b("small")).await.expect("echo after"), "small");
    })
    .await;
}

fn large_options() -> ManagerOptions {
    let mut m = ManagerOptions::default();
    m.stream.max_packet_size = 8 * MIB;
    m
}

async fn raised_limits(transport: Transport) {
    let opts = ServerOptions {
        manager: large_options(),
        ..ServerOptions::default()
    };
    let mut h = Harness::start_with(transport, opts).await;
    let conn = h
        .connect_with(ConnOptions {
            manager: large_options(),
        })
        .await;
    let big = Bytes::from((0..5 * MIB).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let got = echo(&conn, &big)
        .await
        .expect("5 MiB echo with 8 MiB limits");
    assert!(got == big, "the 5 MiB payload differs");
    let got: Bytes = conn
        .unary_with(&Raw, BIG, &b(&(5 * MIB).to_string()), &CallOptions::new())
        .await
        .expect("5 MiB response");
    assert_eq!(got.len(), 5 * MIB);
    let err = echo(&conn, &Bytes::from(vec![0u8; 9 * MIB]))
        .await
        .expect_err("over the raised limit");
    assert!(is_message_too_large(&err), "{err:?}");
    assert_eq!(echo(&conn, &b("small")).await.expect("echo after"), "small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raised_limits_echo_5mib_tcp() {
    within(
        TEST_LIMIT,
        "raised limits tcp",
        raised_limits(Transport::Tcp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raised_limits_echo_5mib_duplex() {
    within(
        TEST_LIMIT,
        "raised limits duplex",
        raised_limits(Transport::Duplex),
    )
    .await;
}

/// Only the client raised its limit: the server refuses the message by
/// failing that call alone (ResourceExhausted, "message too large"); the
/// connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_only_raised_limit_fails_only_the_call() {
    within(TEST_LIMIT, "client-only limit", async {
        let mut h = Harness::start(Transport::Tcp).await;
        let conn = h
            .connect_with(ConnOptions {
                manager: large_options(),
            })
            .await;
        let err = echo(&conn, &Bytes::from(vec![0u8; 5 * MIB]))
            .await
            .expect_err("the server refuses it");
        assert!(err.is_too_large(), "{err:?}");
        assert!(err.is_resource_exhausted(), "{err:?}");
        assert_eq!(
            err.code(),
            Some(drpc_conn::Code::ResourceExhausted),
            "{err:?}"
        );
        assert!(!err.is_connection_lost(), "{err:?}");
        assert_eq!(
            echo(&conn, &b("again")).await.expect("same connection"),
            "again"
        );
        assert!(conn.manager().termination().is_none());
    })
    .await;
}

/// Only the server raised its limit: the client refuses the 5 MiB response
/// and says so (`is_too_large`); only that call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_only_raised_limit_response_too_large() {
    within(TEST_LIMIT, "server-only limit", async {
        let opts = ServerOptions {
            manager: large_options(),
            ..ServerOptions::default()
        };
        let mut h = Harness::start_with(Transport::Tcp, opts).await;
        let conn = h.connect().await;
        let err = conn
            .unary_with::<Bytes, Bytes, _>(
                &Raw,
                BIG,
                &b(&(5 * MIB).to_string()),
                &CallOptions::new(),
            )
            .await
            .expect_err("the client refuses it");
        assert!(err.is_too_large(), "{err:?}");
        assert!(err.is_resource_exhausted(), "{err:?}");
        assert!(!err.is_connection_lost(), "{err:?}");
        assert_eq!(
            echo(&conn, &b("again")).await.expect("same connection"),
            "again"
        );
    })
    .await;
}

/// Calls over the server's stream limit are always refused with the
/// limit's message, also under load, when the refusal (sent at the Invoke)
/// overtakes the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusal_never_reports_bare_eof() {
    within(TEST_LIMIT, "refusals under load", async {
        let opts = ServerOptions {
            manager: ManagerOptions {
                max_concurrent_streams: 2,
                ..ManagerOptions::default()
            },
            ..ServerOptions::default()
        };
        let mut h = Harness::start_with(Transport::Duplex, opts).await;
        let conn = h.connect().await;
        let blocked: Vec<_> = (0..2)
            .map(|_| {
                let conn = conn.clone();
                tokio::spawn(async move {
                    conn.unary_with::<Bytes, Bytes, _>(&Raw, BLOCK, &b("b"), &CallOptions::new())
                        .await
                })
            })
            .collect();
        h.probe.wait_n("block:start", 2, FIVE_S).await;
        let req = Bytes::from(vec![0u8; 64 * 1024]);
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let (conn, req) = (conn.clone(), req.clone());
                tokio::spawn(async move { echo(&conn, &req).await })
            })
            .collect();
        for call in calls {
            let err = call.await.expect("task").expect_err("over the limit");
            assert!(refused_stream(&err), "{err:?}");
        }
        for t in blocked {
            t.abort();
        }
    })
    .await;
}
