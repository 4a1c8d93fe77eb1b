//! The client scenarios of the contract (`drpc-interop client`).

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use drpc_conn::{CallOptions, Conn, ConnOptions, Error};
use drpc_stream::StreamErrorKind;
use drpc_wire::{Code, DEFAULT_MAX_PACKET_SIZE};
use tokio::task::JoinSet;

use crate::pb::{In, Out, ServiceDrpcClient};
use crate::service::BOOM_CODE;

/// Every scenario, in the order of the contract (what `--scenario all`
/// runs).
pub const SCENARIOS: &[&str] = &[
    "empty_unary",
    "unary_sizes",
    "status_code_and_message",
    "custom_metadata",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "cancel_blocked",
    "unknown_method",
    "sequential_10000",
    "concurrent_16",
    "slow_reader_isolation",
    "blocking_handler_isolation",
    "oversize_message",
];

/// How long one scenario may take before it fails as hung.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how the client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT` of the server.
    pub addr: String,
    /// One stream at a time per connection (for the reference Go server).
    pub sequential: bool,
    /// The largest message sent to or accepted from the server.
    pub max_message_size: usize,
    /// Flow control (`--flow-control`; default auto).
    pub flow_control: drpc_stream::FlowControl,
    /// Compression of every call (`--compression`; default none): only
    /// toward servers that accept it (the fork's, or this project's).
    pub compression: Option<drpc_wire::Compression>,
}

impl ClientConfig {
    /// Multiplexed, with the default 4 MiB message limit.
    pub fn new(addr: impl Into<String>) -> ClientConfig {
        ClientConfig {
            addr: addr.into(),
            sequential: false,
            max_message_size: DEFAULT_MAX_PACKET_SIZE,
            flow_control: drpc_stream::FlowControl::default(),
            compression: None,
        }
    }

    /// The connection options this configuration stands for.
    pub fn conn_options(&self) -> ConnOptions {
        let mut opts = if self.sequential {
            ConnOptions::sequential()
        } else {
            ConnOptions::default()
        };
        opts.manager.stream.max_packet_size = self.max_message_size;
        opts.manager.stream.flow_control = self.flow_control;
        opts.manager.compression = self.compression;
        opts
    }

    /// Opens a new connection.
    pub async fn connect(&self) -> Result<Conn, String> {
        Conn::connect_tcp(self.addr.as_str(), self.conn_options())
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.addr))
    }
}

/// The outcome of a run: one result per scenario, in order.
#[derive(Debug, Default)]
pub struct Report {
    /// Each scenario's name and result (`Err` holds the reason).
    pub results: Vec<(String, Result<(), String>)>,
}

impl Report {
    /// How many scenarios passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|(_, r)| r.is_ok()).count()
    }

    /// How many scenarios failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// The closing line, `N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }
}

/// The line printed for one scenario: `PASS name` or `FAIL name: reason`.
pub fn result_line(name: &str, result: &Result<(), String>) -> String {
    match result {
        Ok(()) => format!("PASS {name}"),
        Err(reason) => format!("FAIL {name}: {reason}"),
    }
}

impl fmt::Display for Report {
    /// One line per scenario, then the summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, result) in &self.results {
            writeln!(f, "{}", result_line(name, result))?;
        }
        write!(f, "{}", self.summary())
    }
}

/// Runs `names` one after another.
pub async fn run_scenarios(cfg: &ClientConfig, names: &[&str]) -> Report {
    let mut report = Report::default();
    for name in names {
        let result = run_scenario(cfg, name).await;
        report.results.push(((*name).to_owned(), result));
    }
    report
}

/// Runs one scenario on its own connection(s), failing it if it takes
/// longer than [`SCENARIO_TIMEOUT`].
pub async fn run_scenario(cfg: &ClientConfig, name: &str) -> Result<(), String> {
    let run = async {
        match name {
            "empty_unary" => empty_unary(cfg).await,
            "unary_sizes" => unary_sizes(cfg).await,
            "status_code_and_message" => status_code_and_message(cfg).await,
            "custom_metadata" => custom_metadata(cfg).await,
            "client_streaming" => client_streaming(cfg).await,
            "server_streaming" => server_streaming(cfg).await,
            "ping_pong" => ping_pong(cfg).await,
            "cancel_blocked" => cancel_blocked(cfg).await,
            "unknown_method" => unknown_method(cfg).await,
            "sequential_10000" => sequential_10000(cfg).await,
            "concurrent_16" => concurrent_16(cfg).await,
            "slow_reader_isolation" => slow_reader_isolation(cfg).await,
            "blocking_handler_isolation" => blocking_handler_isolation(cfg).await,
            "oversize_message" => oversize_message(cfg).await,
            other => Err(format!(
                "unknown scenario {other:?} (known: {})",
                SCENARIOS.join(", ")
            )),
        }
    };
    within(SCENARIO_TIMEOUT, "the scenario", run).await?
}

/// `fut`'s output, or a failure naming `what` when it takes longer than
/// `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("{what} did not finish within {limit:?}"))
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

fn failed(what: &str) -> impl FnOnce(Error) -> String + '_ {
    move |e| format!("{what} failed: {e}")
}

/// A payload of `len` bytes whose content depends on the position, so that
/// reordered or shifted bytes show.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

async fn unary(conn: &Conn, req: &In, opts: &CallOptions) -> Result<Out, Error> {
    ServiceDrpcClient::new(conn.clone())
        .method1_with(req, opts)
        .await
}

/// A plain echo on `conn` succeeds.
async fn echo_works(conn: &Conn, what: &str) -> Result<(), String> {
    let req = In {
        r#in: 7,
        buf: Bytes::from_static(b"still there"),
        opt: Some(3),
    };
    let out = unary(conn, &req, &CallOptions::new())
        .await
        .map_err(failed(what))?;
    ensure(
        out.out == 7 && out.buf == req.buf && out.opt == Some(3),
        || format!("{what} returned {out:?}"),
    )
}

async fn empty_unary(cfg: &ClientConfig) -> Result<(), String> {
    let conn = cfg.connect().await?;
    let out = unary(&conn, &In::default(), &CallOptions::new())
        .await
        .map_err(failed("Method1(In{})"))?;
    ensure(out == Out::default(), || {
        format!("expected Out{{}}, got {out:?}")
    })
}

async fn unary_sizes(cfg: &ClientConfig) -> Result<(), String> {
    let conn = cfg.connect().await?;
    for size in [0, 2 << 10, 1 << 20, 3 << 20] {
        let req = In {
            r#in: size as i64,
            buf: pattern(size),
            opt: None,
        };
        let out = unary(&conn, &req, &CallOptions::new())
            .await
            .map_err(|e| format!("{size}-byte echo failed: {e}"))?;
        ensure(out.out == size as i64, || {
            format!("{size}-byte echo: out = {}, expected {size}", out.out)
        })?;
        ensure(out.buf == req.buf, || {
            let first = out.buf.iter().zip(req.buf.iter()).position(|(a, b)| a != b);
            format!(
                "{size}-byte echo: got {} bytes back, first difference at {first:?}",
                out.buf.len()
            )
        })?;
    }
    Ok(())
}

async fn status_code_and_message(cfg: &ClientConfig) -> Result<(), String> {
    let conn = cfg.connect().await?;
    let req = In {
        r#in: -1,
        ..In::default()
    };
    match unary(&conn, &req, &CallOptions::new()).await {
        Ok(out) => Err(format!("expected an error, got {out:?}")),
        Err(e) => ensure(
            e.code() == Some(Code::from(BOOM_CODE)) && e.remote_message() == Some("boom"),
            || {
                format!(
                    "expected code {BOOM_CODE} and message \"boom\", got code {:?} and {:?} ({e})",
                    e.code(),
                    e.remote_message()
                )
            },
        ),
    }
}

async fn custom_metadata(cfg: &ClientConfig) -> Result<(), String> {
    let conn = cfg.connect().await?;
    // No deadline here: it would travel as one more metadata pair.
    let opts = CallOptions::new()
        .metadata("interop-key1", "value 1")
        .metadata("interop-key2", "value=2");
    let req = In {
        r#in: -3,
        ..In::default()
    };
    let out = unary(&conn, &req, &opts)
        .await
        .map_err(failed("Method1(in = -3)"))?;
    let expected = "interop-key1=value 1\ninterop-key2=value=2\n";
    ensure(out.buf == expected.as_bytes(), || {
        format!(
            "expected metadata {expected:?}, got {:?}",
            String::from_utf8_lossy(&out.buf)
        )
    })
}

async fn client_streaming(cfg: &ClientConfig) -> Result<(), String> {
    const N: i64 = 1000;
    let conn = cfg.connect().await?;
    let mut stream = ServiceDrpcClient::new(conn)
        .method2()
        .await
        .map_err(failed("opening Method2"))?;
    let mut last = Bytes::new();
    for i in 0..N {
        last = Bytes::from(format!("message {i}"));
        let req = In {
            r#in: i,
            buf: last.clone(),
            opt: None,
        };
        stream
            .send(&req)
            .await
            .map_err(|e| format!("send {i} failed: {e}"))?;
    }
    let out = stream
        .close_and_recv()
        .await
        .map_err(failed("close_and_recv"))?;
    ensure(out.out == N, || format!("out = {}, expected {N}", out.out))?;
    ensure(out.buf == last, || {
        format!("last buffer {:?}, expected {last:?}", out.buf)
    })
}

async fn server_streaming(cfg: &ClientConfig) -> Result<(), String> {
    const N: i64 = 1000;
    let conn = cfg.connect().await?;
    let buf = Bytes::from_static(b"server streaming");
    let req = In {
        r#in: N,
        buf: buf.clone(),
        opt: None,
    };
    let mut stream = ServiceDrpcClient::new(conn)
        .method3(&req)
        .await
        .map_err(failed("opening Method3"))?;
    for i in 0..N {
        match stream.message().await {
            Ok(Some(out)) => ensure(out.out == 1 && out.buf == buf, || {
                format!("message {i} is {out:?}")
            })?,
            Ok(None) => return Err(format!("stream ended after {i} messages, expected {N}")),
            Err(e) => return Err(format!("receive {i} failed: {e}")),
        }
    }
    match stream.message().await {
        Ok(None) => Ok(()),
        Ok(Some(out)) => Err(format!("message {N} past the end: {out:?}")),
        Err(e) => Err(format!("expected a clean end of stream, got {e}")),
    }
}

async fn ping_pong(cfg: &ClientConfig) -> Result<(), String> {
    const N: i64 = 1000;
    let conn = cfg.connect().await?;
    let (mut sender, mut responses) = ServiceDrpcClient::new(conn)
        .method4()
        .await
        .map_err(failed("opening Method4"))?;
    for i in 0..N {
        let req = In {
            r#in: i,
            buf: Bytes::from(format!("ping {i}")),
            opt: Some(i),
        };
        sender
            .send(&req)
            .await
            .map_err(|e| format!("send {i} failed: {e}"))?;
        match responses.message().await {
            Ok(Some(out)) => ensure(
                out.out == i && out.buf == req.buf && out.opt == Some(i),
                || format!("pong {i} is {out:?}"),
            )?,
            Ok(None) => return Err(format!("stream ended after {i} pongs")),
            Err(e) => return Err(format!("receive {i} failed: {e}")),
        }
    }
    sender.close_send().map_err(failed("close_send"))?;
    match responses.message().await {
        Ok(None) => Ok(()),
        Ok(Some(out)) => Err(format!("unexpected message after close_send: {out:?}")),
        Err(e) => Err(format!("expected a clean end of stream, got {e}")),
    }
}

async fn cancel_blocked(cfg: &ClientConfig) -> Result<(), String> {
    let conn = cfg.connect().await?;
    let req = In {
        r#in: -2,
        ..In::default()
    };
    let opts = CallOptions::new().timeout(Duration::from_millis(100));
    let start = Instant::now();
    let result = within(
        Duration::from_secs(5),
        "the blocked call",
        unary(&conn, &req, &opts),
    )
    .await?;
    let elapsed = start.elapsed();
    match result {
        Ok(out) => return Err(format!("expected a cancellation, got {out:?}")),
        Err(e) if is_cancellation(&e) => {}
        Err(e) => return Err(format!("ended as {e:?} ({e}), not as a cancellation")),
    }
    ensure(elapsed < Duration::from_secs(1), || {
        format!("the cancellation took {elapsed:?} (limit 1 s)")
    })?;
    within(
        Duration::from_secs(5),
        "the call after the cancellation",
        echo_works(&conn, "the call after the cancellation"),
    )
    .await?
}

/// A local or remote cancellation or deadline: the client's own timer, a
/// Cancel from the server, or the server's error for a call it cancelled
/// (Canceled or DeadlineExceeded).
fn is_cancellation(e: &Error) -> bool {
    e.is_canceled() || e.is_deadline_exceeded()
}

async fn unknown_method(cfg: &ClientConfig) -> Result<(), String> {
    let conn = cfg.connect().await?;
    let result: Result<Out, Error> = conn
        .unary("/service.Service/Nope", &In::default(), &CallOptions::new())
        .await;
    match result {
        Ok(out) => return Err(format!("expected an error, got {out:?}")),
        Err(e) if e.code() == Some(Code::Unimplemented) => {}
        // The reference Go server: no code (0), and
        // `protocol error: unknown rpc: "/service.Service/Nope"`.
        Err(e) if e.code().is_none() && e.to_string().contains("unknown rpc") => {}
        Err(e) => {
            return Err(format!(
                "expected code {} (Unimplemented), or a text saying \
                 \"unknown rpc\", got code {:?}: {e}",
                Code::Unimplemented.as_u64(),
                e.code()
            ));
        }
    }
    echo_works(&conn, "the call after the unknown method").await
}

async fn sequential_10000(cfg: &ClientConfig) -> Result<(), String> {
    const N: i64 = 10_000;
    let conn = cfg.connect().await?;
    let opts = CallOptions::new();
    for i in 0..N {
        let req = In {
            r#in: i,
            ..In::default()
        };
        let out = unary(&conn, &req, &opts)
            .await
            .map_err(|e| format!("call {i} failed: {e}"))?;
        ensure(out.out == i, || format!("call {i} returned {out:?}"))?;
    }
    Ok(())
}

async fn concurrent_16(cfg: &ClientConfig) -> Result<(), String> {
    const N: i64 = 16;
    let conn = cfg.connect().await?;
    let mut calls = JoinSet::new();
    for i in 0..N {
        let conn = conn.clone();
        calls.spawn(async move {
            let req = In {
                r#in: i,
                buf: Bytes::from(format!("concurrent call {i}")),
                opt: Some(-i),
            };
            let out = unary(&conn, &req, &CallOptions::new())
                .await
                .map_err(|e| format!("call {i} failed: {e}"))?;
            ensure(
                out.out == i && out.buf == req.buf && out.opt == Some(-i),
                || format!("call {i} returned {out:?}"),
            )
        });
    }
    let mut errors = Vec::new();
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("a call task failed: {e}")),
        }
    }
    ensure(errors.is_empty(), || errors.join("; "))
}

/// The connection for calls made beside a stream left open on `conn`:
/// `conn` itself, or, under `--sequential` (one stream at a time per
/// connection), a second connection to the same server.
async fn beside(cfg: &ClientConfig, conn: &Conn) -> Result<Conn, String> {
    if cfg.sequential {
        cfg.connect().await
    } else {
        Ok(conn.clone())
    }
}

/// Whether a stream was failed by its receiver for sending more than it
/// may queue (what a receiver without flow control does): code 8 or this
/// implementation's error, or another peer's text.
fn is_resource_exhausted(e: &Error) -> bool {
    e.is_resource_exhausted()
        || e.to_string()
            .to_ascii_lowercase()
            .contains("resource exhausted")
}

/// A server stream nobody reads does not hold up the other calls of its
/// connection, and still delivers its messages once read.
///
/// A Method3 stream of 100000 messages of 64 KiB is opened and left
/// unread for a moment (time enough to fill every buffer it may fill);
/// then 20 unary calls on the same connection must each finish within
/// 1 s, and the stream must then deliver its first 200 messages intact
/// before it is dropped (cancelled). A receiver without flow control may
/// instead fail the overflowing stream, alone, with ResourceExhausted
/// (code 8): that passes too, once the stream has delivered a message.
/// Under `--sequential`, the unary calls go on a second connection.
async fn slow_reader_isolation(cfg: &ClientConfig) -> Result<(), String> {
    const MESSAGES: i64 = 100_000;
    const SIZE: usize = 64 << 10;
    const CHECKED: usize = 200;
    const CALLS: usize = 20;
    let conn = cfg.connect().await?;
    let buf = pattern(SIZE);
    let req = In {
        r#in: MESSAGES,
        buf: buf.clone(),
        opt: None,
    };
    let mut stream = within(
        Duration::from_secs(5),
        "opening Method3",
        ServiceDrpcClient::new(conn.clone()).method3(&req),
    )
    .await?
    .map_err(failed("opening Method3"))?;
    // Unread, the stream fills the buffers between the server's handler
    // and this client meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = beside(cfg, &conn).await?;
    for i in 0..CALLS {
        let what = format!("unary call {i} beside the unread stream");
        within(Duration::from_secs(1), &what, echo_works(&other, &what)).await??;
    }
    let mut received = 0;
    while received < CHECKED {
        let next = within(
            Duration::from_secs(5),
            &format!("message {received} of the stream"),
            stream.message(),
        )
        .await?;
        match next {
            Ok(Some(out)) => {
                ensure(out.out == 1 && out.buf == buf, || {
                    format!(
                        "message {received} has out = {} and {} bytes, not the {SIZE} sent",
                        out.out,
                        out.buf.len(),
                    )
                })?;
                received += 1;
            }
            Ok(None) => {
                return Err(format!(
                    "the stream ended after {received} messages, expected {MESSAGES}"
                ));
            }
            // No flow control: the receiver failed the stream alone.
            Err(e) if received > 0 && is_resource_exhausted(&e) => break,
            Err(e) => return Err(format!("receive {received} failed: {e}")),
        }
    }
    drop(stream);
    within(
        Duration::from_secs(5),
        "the call after the stream's cancellation",
        echo_works(&conn, "the call after the stream's cancellation"),
    )
    .await?
}

/// A handler that blocks its OS thread does not hold up the other calls of
/// its connection.
///
/// A Method1 call with `in = -4` (whose handler blocks its thread for a
/// second) is started; 50 ms later a unary call on the same connection
/// must finish within 250 ms; then the blocking call must succeed. Under
/// `--sequential`, the second call goes on a second connection.
async fn blocking_handler_isolation(cfg: &ClientConfig) -> Result<(), String> {
    let conn = cfg.connect().await?;
    let req = In {
        r#in: -4,
        buf: Bytes::from_static(b"blocking"),
        opt: Some(4),
    };
    let blocking = {
        let (conn, req) = (conn.clone(), req.clone());
        tokio::spawn(async move { unary(&conn, &req, &CallOptions::new()).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let other = beside(cfg, &conn).await?;
    let what = "the call beside the blocking handler";
    let beside_result = within(Duration::from_millis(250), what, echo_works(&other, what)).await;
    let blocked = within(Duration::from_secs(5), "the blocking call", blocking).await;
    beside_result??;
    let out = blocked?
        .map_err(|e| format!("the blocking call's task failed: {e}"))?
        .map_err(failed("the blocking call"))?;
    ensure(
        out.out == -4 && out.buf == req.buf && out.opt == Some(4),
        || format!("the blocking call returned {out:?}"),
    )
}

async fn oversize_message(cfg: &ClientConfig) -> Result<(), String> {
    const SIZE: usize = 5 << 20;
    let conn = cfg.connect().await?;
    let req = In {
        r#in: 1,
        buf: pattern(SIZE),
        opt: None,
    };
    let result = within(
        Duration::from_secs(5),
        "the 5 MiB call",
        unary(&conn, &req, &CallOptions::new()),
    )
    .await?;
    match result {
        Ok(out) => {
            return Err(format!(
                "a 5 MiB request succeeded (out = {}): is the server's limit raised above 4 MiB?",
                out.out
            ));
        }
        // Refused locally: nothing reached the server, and this
        // connection goes on.
        Err(e) if is_message_too_large(&e) => {
            within(
                Duration::from_secs(5),
                "the call after the local refusal",
                echo_works(
                    &conn,
                    "the call on the same connection after the local refusal",
                ),
            )
            .await??;
        }
        // Refused by the server (it ends the connection), or any other
        // clear error.
        Err(_) => {}
    }
    drop(conn);
    let fresh = cfg.connect().await?;
    within(
        Duration::from_secs(5),
        "the call on a new connection",
        echo_works(&fresh, "the call on a new connection"),
    )
    .await?
}

/// Whether the client refused to send a message over its own limit.
pub fn is_message_too_large(e: &Error) -> bool {
    matches!(e, Error::Stream(s) if matches!(s.kind(), StreamErrorKind::MessageTooLarge { .. }))
}
