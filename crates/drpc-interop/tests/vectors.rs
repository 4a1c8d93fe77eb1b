//! Replays of the Go captures in `shared/vectors` against the Rust peers.
//!
//! For every scenario of `shared/vectors/README.md`:
//!
//! * **server replay**: the recorded Go client bytes (`NAME.client.hex`)
//!   are fed to the Rust server (`Server::serve_connection` with
//!   [`service_mux`]) over an in-memory pipe, with the causality of the
//!   capture (a packet the Go client only wrote after reading the server's
//!   answer is only written once the Rust server has answered). What the
//!   Rust server writes must decode to the packets of the Go server's
//!   capture (`NAME.server.hex`).
//! * **shared-port replay**: the same, over TCP to a shared port
//!   (`drpc_server::shared_port`), once as the capture and once after the
//!   migration header `DRPC!!!1` (the reference's `drpcmigrate`
//!   constant), as a Go client of a `drpcmigrate` listener dials.
//! * **client replay**: the Rust client, in sequential mode, makes the
//!   scenario's call(s) against a scripted peer that answers with the
//!   recorded Go server bytes. What the Rust client writes must decode to
//!   the packets of the Go client's capture, its frames must follow the
//!   original connection-wide id order, and the calls must end as the
//!   README says.
//!
//! "Decode to the same packets" means the same sequence of (stream,
//! message id, kind, control bit), split into the same frames, with
//! Message bodies equal as protobuf messages and every other payload equal
//! byte for byte. The races the README documents are accepted both ways:
//! the client's trailing Close of a unary call, and the server's trailing
//! CloseSend that such a Close can pre-empt.
//!
//! The vectors directory is `$DRPC_VECTORS_DIR` if set, else
//! `<workspace root>/../shared/vectors`; a missing directory or file fails.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use drpc_conn::{CallOptions, Conn, ConnOptions, Prost};
use drpc_interop::pb::{In, Out};
use drpc_interop::{BOOM_CODE, METHOD1, METHOD2, METHOD3, METHOD4, service_mux};
use drpc_server::Server;
use drpc_wire::{CodedError, Kind, decode_metadata};
use prost::Message as _;

use support::{
    Decoded, Match, Recorder, SCENARIOS, STEP_LIMIT, Side, Step, compare, decode, decode_vector,
    hex, hex_decode, read_readme, replay, within,
};

/// The bound of one whole test.
const TEST_LIMIT: Duration = Duration::from_secs(12);

/// The capacity of each direction of the in-memory pipe.
const PIPE: usize = 64 * 1024;

/// How long a side is given to write packets the capture does not require
/// (a racy trailing packet, or a wrong extra one) before the comparison.
const SETTLE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------

/// What the client does in a scenario, and how the calls must end.
#[derive(Debug, Clone)]
enum Call {
    /// One unary call.
    Unary {
        req: In,
        metadata: Vec<(&'static str, &'static str)>,
        expect: Result<Out, (u64, &'static str)>,
    },
    /// Sends `reqs`, then CloseSend; one response.
    ClientStream { reqs: Vec<In>, expect: Out },
    /// Sends `req` and CloseSend; `expect`, then the clean end.
    ServerStream { req: In, expect: Vec<Out> },
    /// Ping-pong: each request, then its echo; CloseSend, the clean end.
    Bidi { reqs: Vec<In> },
    /// A unary call cancelled once its request is out.
    CancelHard { req: In },
    /// A unary call cancelled once its request is out, then a second call
    /// on the same connection.
    CancelSoft { cancelled: In, then: In },
}

#[derive(Debug, Clone)]
struct Scenario {
    rpc: &'static str,
    call: Call,
    /// How the Go client's bytes are fed to the Rust server.
    go_client: &'static [Step],
    /// How the Go server's bytes answer the Rust client.
    go_server: &'static [Step],
}

impl Scenario {
    /// Every request message, in wire order.
    fn requests(&self) -> Vec<In> {
        match &self.call {
            Call::Unary { req, .. } | Call::ServerStream { req, .. } | Call::CancelHard { req } => {
                vec![req.clone()]
            }
            Call::ClientStream { reqs, .. } | Call::Bidi { reqs } => reqs.clone(),
            Call::CancelSoft { cancelled, then } => vec![cancelled.clone(), then.clone()],
        }
    }

    /// Every response message, in wire order.
    fn responses(&self) -> Vec<Out> {
        match &self.call {
            Call::Unary { expect, .. } => expect.iter().cloned().collect(),
            Call::ClientStream { expect, .. } => vec![expect.clone()],
            Call::ServerStream { expect, .. } => expect.clone(),
            Call::Bidi { reqs } => reqs.iter().map(echo).collect(),
            Call::CancelHard { .. } => vec![],
            Call::CancelSoft { then, .. } => vec![echo(then)],
        }
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        match &self.call {
            Call::Unary { metadata, .. } => metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _ => BTreeMap::new(),
        }
    }
}

fn msg_in(r#in: i64, buf: impl Into<Bytes>, opt: Option<i64>) -> In {
    In {
        r#in,
        buf: buf.into(),
        opt,
    }
}

fn msg_out(out: i64, buf: impl Into<Bytes>, opt: Option<i64>) -> Out {
    Out {
        out,
        buf: buf.into(),
        opt,
    }
}

/// Method1's and Method4's echo.
fn echo(req: &In) -> Out {
    msg_out(req.r#in, req.buf.clone(), req.opt)
}

/// The capture harness's payloads: byte i is (seed + step * i) mod 251.
fn pattern(len: usize, seed: usize, step: usize) -> Bytes {
    (0..len).map(|i| ((seed + step * i) % 251) as u8).collect()
}

fn unary_echo(req: In) -> Scenario {
    use Step::*;
    Scenario {
        rpc: METHOD1,
        call: Call::Unary {
            expect: Ok(echo(&req)),
            req,
            metadata: vec![],
        },
        // Invoke, Message, CloseSend at once; Close once the response is in.
        go_client: &[Send(3), WaitFor(1), Send(1)],
        go_server: &[WaitFor(3), Send(2)],
    }
}

fn scenario(name: &str) -> Scenario {
    use Step::*;
    match name {
        "unary_small" => unary_echo(msg_in(5, Bytes::new(), None)),
        "unary_empty" => unary_echo(In::default()),
        "unary_2KiB" => unary_echo(msg_in(1, pattern(2048, 0, 1), None)),
        "unary_64KiB_exact" => unary_echo(msg_in(0, pattern(65_532, 1, 7), None)),
        "unary_split_64KiB_plus1" => unary_echo(msg_in(0, pattern(65_533, 2, 7), None)),
        "unary_split_3frames" => unary_echo(msg_in(1, pattern(150_000, 3, 7), None)),
        "unary_metadata" => Scenario {
            rpc: METHOD1,
            call: Call::Unary {
                req: msg_in(-3, Bytes::new(), None),
                metadata: vec![("alpha", "first"), ("beta", "second")],
                expect: Ok(msg_out(2, "alpha=first\nbeta=second\n", None)),
            },
            go_client: &[Send(4), WaitFor(1), Send(1)],
            go_server: &[WaitFor(4), Send(2)],
        },
        "unary_error" => Scenario {
            rpc: METHOD1,
            call: Call::Unary {
                req: msg_in(-1, Bytes::new(), None),
                metadata: vec![],
                expect: Err((BOOM_CODE, "boom")),
            },
            // No Close: the Error ends the stream.
            go_client: &[Send(3)],
            go_server: &[WaitFor(3), Send(1)],
        },
        "client_stream_3" => Scenario {
            rpc: METHOD2,
            call: Call::ClientStream {
                reqs: vec![
                    msg_in(1, "a", None),
                    msg_in(2, "bb", None),
                    msg_in(3, "ccc", Some(7)),
                ],
                expect: msg_out(3, "ccc", Some(7)),
            },
            go_client: &[Send(5)],
            go_server: &[WaitFor(5), Send(2)],
        },
        "server_stream_3" => Scenario {
            rpc: METHOD3,
            call: Call::ServerStream {
                req: msg_in(3, "xyz", None),
                expect: vec![msg_out(1, "xyz", None); 3],
            },
            go_client: &[Send(3)],
            go_server: &[WaitFor(3), Send(4)],
        },
        "bidi_3" => Scenario {
            rpc: METHOD4,
            call: Call::Bidi {
                reqs: vec![
                    msg_in(1, "ping-1", None),
                    msg_in(2, "ping-2", None),
                    msg_in(3, "ping-3", Some(-1)),
                ],
            },
            // Each request only after the previous echo; CloseSend after
            // the last echo.
            go_client: &[
                Send(2),
                WaitFor(1),
                Send(1),
                WaitFor(2),
                Send(1),
                WaitFor(3),
                Send(1),
            ],
            go_server: &[
                WaitFor(2),
                Send(1),
                WaitFor(3),
                Send(1),
                WaitFor(4),
                Send(1),
                WaitFor(5),
                Send(1),
            ],
        },
        "cancel_hard" => Scenario {
            rpc: METHOD1,
            call: Call::CancelHard {
                req: msg_in(-2, Bytes::new(), None),
            },
            // The Go client closed the transport once the handler was
            // blocked.
            go_client: &[Send(3), Sleep(100), Shutdown],
            go_server: &[WaitFor(3)],
        },
        "cancel_soft" => Scenario {
            rpc: METHOD1,
            call: Call::CancelSoft {
                cancelled: msg_in(-2, Bytes::new(), None),
                then: msg_in(6, "after-cancel", None),
            },
            // Stream 1, the Cancel once the handler is blocked, stream 2;
            // stream 2's Close once its response is in.
            go_client: &[Send(3), Sleep(100), Send(1), Send(3), WaitFor(1), Send(1)],
            go_server: &[WaitFor(7), Send(2)],
        },
        _ => panic!("no scenario {name:?} in the table"),
    }
}

/// The optional trailing packets of a capture pair: when the Go client
/// ends with Close (after a unary response), that Close is racy, and so is
/// the Go server's last CloseSend, which the Close can pre-empt.
fn optional_tails(client: &Decoded) -> (Option<Kind>, Option<Kind>) {
    let ends_with_close = client
        .packets
        .last()
        .is_some_and(|p| p.packet.kind == Kind::CLOSE);
    if ends_with_close {
        (Some(Kind::CLOSE), Some(Kind::CLOSE_SEND))
    } else {
        (None, None)
    }
}

fn required(expected: &Decoded, optional: Option<Kind>) -> usize {
    let last = expected.packets.last().map(|p| p.packet.kind);
    match optional {
        Some(k) if last == Some(k) => expected.packets.len() - 1,
        _ => expected.packets.len(),
    }
}

fn report(name: &str, what: &str, m: &Match) {
    let optional = match m.optional_present {
        Some(true) => ", racy trailing packet present",
        Some(false) => ", racy trailing packet absent",
        None => "",
    };
    eprintln!(
        "{name} {what}: {} packets match{optional}; byte-identical to the capture: {}",
        m.packets, m.byte_identical
    );
}

// ---------------------------------------------------------------------------
// Server replay: the Go client's bytes against the Rust server
// ---------------------------------------------------------------------------

/// How the Go client's bytes reach the Rust server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// One connection, served directly.
    Connection,
    /// A TCP connection to a shared port (`drpc_server::shared_port`),
    /// preceded or not by the migration header a Go client of a
    /// `drpcmigrate` listener sends.
    SharedPort { header: bool },
}

/// The reference's `drpcmigrate.DRPCHeader`, as its Go source spells it.
const GO_MIGRATION_HEADER: &str = "DRPC!!!1";

async fn server_replay(name: &'static str) {
    within(TEST_LIMIT, name, server_replay_inner(name, Via::Connection)).await
}

async fn shared_port_replay(name: &'static str, header: bool) {
    within(
        TEST_LIMIT,
        name,
        server_replay_inner(name, Via::SharedPort { header }),
    )
    .await
}

async fn server_replay_inner(name: &'static str, via: Via) {
    let sc = scenario(name);
    let go_client = decode_vector(name, Side::Client);
    let go_server = decode_vector(name, Side::Server);
    let (_, optional) = optional_tails(&go_client);

    let (server, read_half, mut write_half) = match via {
        Via::Connection => {
            let (client_io, server_io) = tokio::io::duplex(PIPE);
            let server = tokio::spawn(async move {
                Some(Server::new(service_mux()).serve_connection(server_io).await)
            });
            let (read_half, write_half) = tokio::io::split(client_io);
            (
                server,
                ReadHalfOf::Duplex(read_half),
                WriteHalfOf::Duplex(write_half),
            )
        }
        Via::SharedPort { header } => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("local address");
            let port = drpc_server::shared_port::split(listener, drpc_server::SniffOptions::new())
                .expect("split");
            let server = tokio::spawn(async move {
                let server = Server::new(service_mux());
                let _ = server.serve_incoming(port.drpc).await;
                None
            });
            let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
            if header {
                tokio::io::AsyncWriteExt::write_all(&mut socket, GO_MIGRATION_HEADER.as_bytes())
                    .await
                    .expect("write the header");
            }
            let (read_half, write_half) = socket.into_split();
            (
                server,
                ReadHalfOf::Tcp(read_half),
                WriteHalfOf::Tcp(write_half),
            )
        }
    };
    let recorder = Recorder::spawn(read_half);

    let what = format!("{name}: replaying the Go client to the Rust server");
    if let Err(e) = replay(
        &mut write_half,
        &go_client,
        sc.go_client,
        recorder.progress(),
        &what,
    )
    .await
    {
        panic!("{e}");
    }
    // Everything the capture requires, then a moment for anything more.
    // A shortfall shows in the comparison below.
    recorder
        .wait_packets(required(&go_server, optional), STEP_LIMIT)
        .await;
    tokio::time::sleep(SETTLE).await;
    // The client leaves: the server must end the connection.
    let _ = within(
        STEP_LIMIT,
        name,
        tokio::io::AsyncWriteExt::shutdown(&mut write_half),
    )
    .await;
    let (actual, end) = match via {
        Via::Connection => {
            let end = within(STEP_LIMIT, "serve_connection to return", server)
                .await
                .expect("server task");
            let actual = recorder
                .finish(&format!("{name}: the Rust server's output"))
                .await;
            (actual, end)
        }
        Via::SharedPort { .. } => {
            let actual = recorder
                .finish(&format!("{name}: the Rust server's output"))
                .await;
            server.abort();
            (actual, None)
        }
    };

    match compare(Side::Server, &go_server, &actual, optional) {
        Ok(m) => report(name, "Rust server vs Go server", &m),
        Err(e) => panic!("{name}: the Rust server's packets differ from the Go server's: {e}"),
    }
    if let Err(e) = actual.check_connection_order() {
        panic!("{name}: the Rust server's frames break the connection-wide id order: {e}");
    }
    if let Some(end) = end {
        assert!(
            !end.is_protocol_violation(),
            "{name}: the Rust server saw a protocol violation in the Go client's bytes: {end}"
        );
    }
    if name == "cancel_hard" {
        assert!(
            actual.bytes.is_empty(),
            "cancel_hard: the server must write nothing, wrote {}",
            hex(&actual.bytes)
        );
    }
}

// ---------------------------------------------------------------------------
// Client replay: the Rust client against the Go server's bytes
// ---------------------------------------------------------------------------

async fn client_replay(name: &'static str) {
    within(TEST_LIMIT, name, client_replay_inner(name)).await
}

async fn client_replay_inner(name: &'static str) {
    let sc = scenario(name);
    let go_client = decode_vector(name, Side::Client);
    let go_server = decode_vector(name, Side::Server);
    let (mut optional, _) = optional_tails(&go_client);

    let expected = if name == "cancel_hard" {
        // The Go capture is a hard cancel: the Go client closes the
        // transport and writes nothing more. The Rust client always
        // cancels softly: it writes Cancel (kind 4, done, control bit:
        // header 0x89) on stream 1, message 4, and keeps the connection.
        // So the expected bytes are the capture plus exactly that frame.
        optional = None;
        let mut bytes = go_client.bytes.clone();
        bytes.extend_from_slice(&[0x89, 0x01, 0x04, 0x00]);
        decode(&bytes).expect("capture plus Cancel")
    } else {
        go_client
    };

    let (client_io, peer_io) = tokio::io::duplex(PIPE);
    let (read_half, mut write_half) = tokio::io::split(peer_io);
    let recorder = Recorder::spawn(read_half);
    let progress = recorder.progress();
    let script = sc.go_server;
    let what = format!("{name}: the Go server's answers to the Rust client");
    let peer = tokio::spawn(async move {
        let result = replay(&mut write_half, &go_server, script, progress, &what).await;
        (result, write_half)
    });

    let conn = Conn::new(client_io, ConnOptions::sequential());
    if let Err(e) = within(TEST_LIMIT, "the calls", run_calls(&conn, &sc, &recorder)).await {
        panic!("{name}: {e}");
    }

    // Let the client write what the capture requires (and any racy or
    // wrong extra), then close the connection, flushing what is queued.
    recorder
        .wait_packets(required(&expected, optional), STEP_LIMIT)
        .await;
    tokio::time::sleep(SETTLE).await;
    within(
        STEP_LIMIT,
        "closing the client",
        conn.manager().close_gracefully(Duration::from_secs(1)),
    )
    .await;
    drop(conn);
    let actual = recorder
        .finish(&format!("{name}: the Rust client's output"))
        .await;
    let (script_result, write_half) = within(STEP_LIMIT, "the scripted peer", peer)
        .await
        .expect("peer task");
    drop(write_half);
    if let Err(e) = script_result {
        panic!("{e}");
    }

    match compare(Side::Client, &expected, &actual, optional) {
        Ok(m) => report(name, "Rust client vs Go client", &m),
        Err(e) => panic!("{name}: the Rust client's packets differ from the Go client's: {e}"),
    }
    if let Err(e) = actual.check_connection_order() {
        panic!("{name}: the Rust client's frames break the connection-wide id order: {e}");
    }
    if name == "cancel_hard" {
        let tail = &actual.bytes[actual.bytes.len().saturating_sub(4)..];
        assert_eq!(
            tail,
            [0x89, 0x01, 0x04, 0x00],
            "cancel_hard: the extra frame must be Cancel s1/m4 with the control bit"
        );
        assert_eq!(
            &actual.bytes[..actual.bytes.len() - 4],
            &read_go_client(name)[..],
            "cancel_hard: Invoke/Message/CloseSend must match the capture byte for byte"
        );
    }
    if name == "unary_metadata" {
        let md = |d: &Decoded| {
            d.packets
                .iter()
                .find(|p| p.packet.kind == Kind::INVOKE_METADATA)
                .map(|p| p.packet.data.clone())
                .expect("an InvokeMetadata packet")
        };
        let go = decode_vector(name, Side::Client);
        assert_eq!(
            hex(&md(&actual)),
            hex(&md(&go)),
            "unary_metadata: InvokeMetadata must match the capture byte for byte"
        );
    }
}

fn read_go_client(name: &str) -> Vec<u8> {
    support::read_vector(name, Side::Client)
}

fn check<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

/// Makes the scenario's calls and checks how they end.
async fn run_calls(conn: &Conn, sc: &Scenario, peer: &Recorder) -> Result<(), String> {
    let fail = |what: &str| {
        let what = what.to_owned();
        move |e: drpc_conn::Error| format!("{what}: {e} ({e:?})")
    };
    match &sc.call {
        Call::Unary {
            req,
            metadata,
            expect,
        } => {
            let mut opts = CallOptions::new();
            for (k, v) in metadata {
                opts = opts.metadata(*k, *v);
            }
            let got = within(
                STEP_LIMIT,
                "unary call",
                conn.unary::<In, Out>(sc.rpc, req, &opts),
            )
            .await;
            match (got, expect) {
                (Ok(out), Ok(want)) => check("response", &out, want),
                (Err(e), Err((code, message))) => {
                    check("error code", e.code(), Some(drpc_wire::Code::from(*code)))?;
                    check("error message", e.remote_message(), Some(*message))
                }
                (got, want) => Err(format!("call ended as {got:?}, want {want:?}")),
            }
        }
        Call::ClientStream { reqs, expect } => {
            let opts = CallOptions::new();
            let mut stream = within(STEP_LIMIT, "open", conn.stream::<In, Out>(sc.rpc, &opts))
                .await
                .map_err(fail("open"))?;
            for req in reqs {
                within(STEP_LIMIT, "send", stream.send(req))
                    .await
                    .map_err(fail("send"))?;
            }
            let out = within(STEP_LIMIT, "close_and_recv", stream.close_and_recv())
                .await
                .map_err(fail("close_and_recv"))?;
            check("response", &out, expect)?;
            // The call is over: Go's CloseAndRecv returns here and the
            // stream ends once the server's CloseSend is in; ours has also
            // ended it with Close, unless that CloseSend was already
            // routed (a race between the reader and this task, which is
            // why the capture's trailing Close is optional). Either way
            // nothing more is received and dropping the stream sends
            // nothing.
            match within(STEP_LIMIT, "recv after the response", stream.recv()).await {
                Ok(None) => Ok(()),
                Err(drpc_conn::Error::Stream(e))
                    if matches!(e.kind(), drpc_stream::StreamErrorKind::TerminatedByClose) =>
                {
                    Ok(())
                }
                other => Err(format!("after the response: {other:?}")),
            }
        }
        Call::ServerStream { req, expect } => {
            let opts = CallOptions::new();
            let mut stream = within(
                STEP_LIMIT,
                "open",
                conn.server_streaming::<In, Out, _>(Prost, sc.rpc, req, &opts),
            )
            .await
            .map_err(fail("open"))?;
            let mut got = Vec::new();
            while let Some(out) = within(STEP_LIMIT, "recv", stream.recv())
                .await
                .map_err(fail("recv"))?
            {
                got.push(out);
            }
            check("responses", &got, expect)
        }
        Call::Bidi { reqs } => {
            let opts = CallOptions::new();
            let mut stream = within(STEP_LIMIT, "open", conn.stream::<In, Out>(sc.rpc, &opts))
                .await
                .map_err(fail("open"))?;
            for req in reqs {
                within(STEP_LIMIT, "send", stream.send(req))
                    .await
                    .map_err(fail("send"))?;
                let out = within(STEP_LIMIT, "recv", stream.recv())
                    .await
                    .map_err(fail("recv"))?;
                check("echo", out, Some(echo(req)))?;
            }
            stream.close_send().map_err(fail("close_send"))?;
            let end = within(STEP_LIMIT, "recv after CloseSend", stream.recv())
                .await
                .map_err(fail("recv after CloseSend"))?;
            check("after CloseSend", end, None)
        }
        Call::CancelHard { req } => cancelled_call(conn, sc.rpc, req, peer).await,
        Call::CancelSoft { cancelled, then } => {
            cancelled_call(conn, sc.rpc, cancelled, peer).await?;
            let out = within(
                STEP_LIMIT,
                "the call after the cancellation",
                conn.unary::<In, Out>(sc.rpc, then, &CallOptions::new()),
            )
            .await
            .map_err(fail("the call after the cancellation"))?;
            check("response after the cancellation", out, echo(then))
        }
    }
}

/// A unary call of `req` cancelled through [`CallOptions::cancel_on`] once
/// the peer has its Invoke, Message and CloseSend (and the handler would
/// be blocked): it must end as cancelled.
async fn cancelled_call(
    conn: &Conn,
    rpc: &'static str,
    req: &In,
    peer: &Recorder,
) -> Result<(), String> {
    // The token's type (tokio_util's CancellationToken) is not a
    // dependency of this crate; it is inferred from `cancel_on`.
    let token = Default::default();
    let opts = CallOptions::new().cancel_on(Clone::clone(&token));
    // Counted before the call starts, so that its packets are not.
    let before = peer.progress().borrow().packets;
    let call = {
        let (conn, req) = (conn.clone(), req.clone());
        tokio::spawn(async move { conn.unary::<In, Out>(rpc, &req, &opts).await })
    };
    if !peer.wait_packets(before + 3, STEP_LIMIT).await {
        return Err("the request never reached the peer".into());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    token.cancel();
    let got = within(STEP_LIMIT, "the cancelled call", call)
        .await
        .map_err(|e| format!("call task: {e}"))?;
    match got {
        Err(e) if e.is_canceled() => Ok(()),
        other => Err(format!(
            "the cancelled call ended as {other:?}, not cancelled"
        )),
    }
}

// ---------------------------------------------------------------------------
// The table against the vectors and their README
// ---------------------------------------------------------------------------

/// A message as the README lists it: `= hex `...``, maybe truncated.
#[derive(Debug, Default)]
struct ReadmeMessage {
    prefix: Vec<u8>,
    len: usize,
}

#[derive(Debug, Default)]
struct ReadmeScenario {
    rpc: String,
    requests: Vec<ReadmeMessage>,
    responses: Vec<ReadmeMessage>,
}

/// `0805`, `(empty, 0 bytes)` or `12fcff03... (65536 bytes)`.
fn parse_readme_hex(s: &str) -> ReadmeMessage {
    if s.starts_with("(empty") {
        return ReadmeMessage::default();
    }
    match s.split_once("... (") {
        Some((prefix, len)) => {
            let len = len.trim_end_matches(" bytes)");
            ReadmeMessage {
                prefix: hex_decode(prefix).expect("README hex"),
                len: len.parse().expect("README length"),
            }
        }
        None => {
            let prefix = hex_decode(s).expect("README hex");
            ReadmeMessage {
                len: prefix.len(),
                prefix,
            }
        }
    }
}

/// The `### name` sections of the README: method path, request and
/// response messages.
fn parse_readme(text: &str) -> BTreeMap<String, ReadmeScenario> {
    let mut out: BTreeMap<String, ReadmeScenario> = BTreeMap::new();
    let mut current: Option<String> = None;
    // Some(true): request list; Some(false): response list.
    let mut list: Option<bool> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("### ") {
            current = Some(name.trim().to_owned());
            out.insert(name.trim().to_owned(), ReadmeScenario::default());
            list = None;
            continue;
        }
        let Some(sc) = current.as_ref().and_then(|n| out.get_mut(n)) else {
            continue;
        };
        if let Some(rest) = line.strip_prefix("- Method path: `") {
            let path = rest.split(['`', ' ']).next().unwrap_or_default();
            sc.rpc = path.to_owned();
            list = None;
        } else if line.starts_with("- Request messages") {
            list = Some(true);
        } else if line.starts_with("- Response messages") {
            list = Some(false);
        } else if line.starts_with("- ") || line.starts_with("Frame-by-frame") {
            list = None;
        } else if let (Some(is_request), Some((_, tail))) = (list, line.split_once("= hex `")) {
            let msg = parse_readme_hex(tail.trim_end_matches('`'));
            if is_request {
                sc.requests.push(msg);
            } else {
                sc.responses.push(msg);
            }
        }
    }
    out
}

fn check_listed(what: &str, listed: &[ReadmeMessage], encoded: &[Vec<u8>]) {
    assert_eq!(listed.len(), encoded.len(), "{what}: number of messages");
    for (i, (l, e)) in listed.iter().zip(encoded).enumerate() {
        assert_eq!(l.len, e.len(), "{what} #{i}: length");
        assert!(
            e.starts_with(&l.prefix),
            "{what} #{i}: README shows {}, the table encodes {}",
            hex(&l.prefix),
            hex(&e[..e.len().min(l.prefix.len())])
        );
    }
}

fn message_bodies(d: &Decoded) -> Vec<Bytes> {
    d.packets
        .iter()
        .filter(|p| p.packet.kind == Kind::MESSAGE)
        .map(|p| p.packet.data.clone())
        .collect()
}

/// The vectors hold exactly the 13 scenarios, and the table above says
/// what they say: method, metadata, request and response messages (as the
/// README lists them and as the captures carry them), the error.
#[test]
fn table_matches_the_vectors() {
    let dir = support::vectors_dir();
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("list the vectors")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".hex"))
        .collect();
    let want: BTreeSet<String> = SCENARIOS
        .iter()
        .flat_map(|n| [format!("{n}.client.hex"), format!("{n}.server.hex")])
        .collect();
    assert_eq!(files, want, "the .hex files of {}", dir.display());

    let readme = parse_readme(&read_readme());
    let names: BTreeSet<&str> = readme.keys().map(String::as_str).collect();
    assert_eq!(names, SCENARIOS.into_iter().collect(), "README scenarios");

    for name in SCENARIOS {
        let sc = scenario(name);
        let doc = &readme[name];
        assert_eq!(doc.rpc, sc.rpc, "{name}: method path");
        let requests: Vec<Vec<u8>> = sc.requests().iter().map(|m| m.encode_to_vec()).collect();
        let responses: Vec<Vec<u8>> = sc.responses().iter().map(|m| m.encode_to_vec()).collect();
        check_listed(&format!("{name} request"), &doc.requests, &requests);
        check_listed(&format!("{name} response"), &doc.responses, &responses);

        let client = decode_vector(name, Side::Client);
        let server = decode_vector(name, Side::Server);
        let sent: Vec<Vec<u8>> = message_bodies(&client).iter().map(|b| b.to_vec()).collect();
        let answered: Vec<Vec<u8>> = message_bodies(&server).iter().map(|b| b.to_vec()).collect();
        assert_eq!(sent, requests, "{name}: requests in the capture");
        assert_eq!(answered, responses, "{name}: responses in the capture");

        let invokes: Vec<String> = client
            .packets
            .iter()
            .filter(|p| p.packet.kind == Kind::INVOKE)
            .map(|p| String::from_utf8_lossy(&p.packet.data).into_owned())
            .collect();
        assert!(
            !invokes.is_empty() && invokes.iter().all(|i| i == sc.rpc),
            "{name}: invokes {invokes:?}"
        );
        let md = client
            .packets
            .iter()
            .find(|p| p.packet.kind == Kind::INVOKE_METADATA)
            .map(|p| decode_metadata(&p.packet.data).expect("capture metadata"))
            .unwrap_or_default();
        assert_eq!(md, sc.metadata(), "{name}: metadata");

        let errors: Vec<(u64, String)> = server
            .packets
            .iter()
            .filter(|p| p.packet.kind == Kind::ERROR)
            .map(|p| {
                let e = CodedError::decode(&p.packet.data);
                (e.code(), e.message().to_owned())
            })
            .collect();
        let want_errors: Vec<(u64, String)> = match &sc.call {
            Call::Unary {
                expect: Err((code, message)),
                ..
            } => vec![(*code, message.to_string())],
            _ => vec![],
        };
        assert_eq!(errors, want_errors, "{name}: errors in the capture");

        // The Go peers themselves follow the original id order.
        client.check_connection_order().expect("Go client order");
        server.check_connection_order().expect("Go server order");
    }
}

// ---------------------------------------------------------------------------
// One server replay and one client replay per scenario
// ---------------------------------------------------------------------------

/// The reading half of the transport a replay goes over.
enum ReadHalfOf {
    Duplex(tokio::io::ReadHalf<tokio::io::DuplexStream>),
    Tcp(tokio::net::tcp::OwnedReadHalf),
}

/// The writing half of the transport a replay goes over.
enum WriteHalfOf {
    Duplex(tokio::io::WriteHalf<tokio::io::DuplexStream>),
    Tcp(tokio::net::tcp::OwnedWriteHalf),
}

impl tokio::io::AsyncRead for ReadHalfOf {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ReadHalfOf::Duplex(r) => std::pin::Pin::new(r).poll_read(cx, buf),
            ReadHalfOf::Tcp(r) => std::pin::Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for WriteHalfOf {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WriteHalfOf::Duplex(w) => std::pin::Pin::new(w).poll_write(cx, buf),
            WriteHalfOf::Tcp(w) => std::pin::Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteHalfOf::Duplex(w) => std::pin::Pin::new(w).poll_flush(cx),
            WriteHalfOf::Tcp(w) => std::pin::Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteHalfOf::Duplex(w) => std::pin::Pin::new(w).poll_shutdown(cx),
            WriteHalfOf::Tcp(w) => std::pin::Pin::new(w).poll_shutdown(cx),
        }
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {$(
        #[allow(non_snake_case)]
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rust_server_answers_go_client() {
                super::server_replay(stringify!($name)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rust_shared_port_answers_go_client() {
                super::shared_port_replay(stringify!($name), false).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rust_shared_port_answers_go_client_with_the_migration_header() {
                super::shared_port_replay(stringify!($name), true).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rust_client_matches_go_client() {
                super::client_replay(stringify!($name)).await;
            }
        }
    )*};
}

replay_tests!(
    unary_small,
    unary_empty,
    unary_metadata,
    unary_2KiB,
    unary_error,
    client_stream_3,
    server_stream_3,
    bidi_3,
    unary_64KiB_exact,
    unary_split_64KiB_plus1,
    unary_split_3frames,
    cancel_hard,
    cancel_soft,
);

/// The macro above covers every scenario of the README.
#[test]
fn every_scenario_has_replay_tests() {
    let covered = [
        "unary_small",
        "unary_empty",
        "unary_metadata",
        "unary_2KiB",
        "unary_error",
        "client_stream_3",
        "server_stream_3",
        "bidi_3",
        "unary_64KiB_exact",
        "unary_split_64KiB_plus1",
        "unary_split_3frames",
        "cancel_hard",
        "cancel_soft",
    ];
    assert_eq!(covered, SCENARIOS);
}
