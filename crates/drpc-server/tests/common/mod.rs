//! Shared end-to-end harness: a test service, a server started on a TCP
//! listener, a Unix socket or in-memory pipes, and a probe on what the
//! handlers saw.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use drpc_conn::{Conn, ConnOptions};
use drpc_mux::{CodedError, Mux, RequestContext, ServerReceiver, ServerSender};
use drpc_server::{Server, ServerOptions};
use drpc_stream::{ConnectionError, Raw};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Unary: answers its request.
pub const ECHO: &str = "/test.Test/Echo";
/// Unary: sleeps 20 ms, then answers its request; counts calls in flight.
pub const SLOW_ECHO: &str = "/test.Test/SlowEcho";
/// Unary: sleeps the number of milliseconds in the request, answers
/// `slept`; emits `sleep:start`, `sleep:end`.
pub const SLEEP: &str = "/test.Test/Sleep";
/// Client streaming: answers the number of messages received.
pub const COUNT: &str = "/test.Test/Count";
/// Server streaming: the request is a number K; sends `0`..`K-1`.
pub const REPEAT: &str = "/test.Test/Repeat";
/// Bidi: sends every message back, ends when the client closes.
pub const BIDI: &str = "/test.Test/Bidi";
/// Unary: answers the metadata it saw as `k=v;k=v` (sorted).
pub const META: &str = "/test.Test/Meta";
/// Unary: answers the remaining time to its deadline in ms, or `none`.
pub const DEADLINE: &str = "/test.Test/Deadline";
/// Unary: fails with code 42, `boom`.
pub const FAIL: &str = "/test.Test/Fail";
/// Unary: panics.
pub const PANIC: &str = "/test.Test/Panic";
/// Unary: blocks until cancelled; emits `block:start`, `block:end` (its
/// future dropped or returned) and `block:ctx` (its context cancelled).
pub const BLOCK: &str = "/test.Test/Block";
/// Bidi: echoes until its receive fails; emits `bidi-watch:start`,
/// `bidi-watch:recv-err`, `bidi-watch:end` and `bidi-watch:ctx`.
pub const BIDI_WATCH: &str = "/test.Test/BidiWatch";
/// Server streaming: sends a message every 5 ms until sending fails; emits
/// `forever:start`, `forever:send-err`, `forever:end`, `forever:ctx`.
pub const FOREVER: &str = "/test.Test/Forever";
/// Unary: answers a response of the size (in bytes) given in the request.
pub const BIG: &str = "/test.Test/Big";

/// Bidi: fails at once with `marker` (code 0).
pub const MARKER: &str = "/test.Test/Marker";
/// Bidi: sends `2`, then waits until cancelled.
pub const OUT2: &str = "/test.Test/Out2";
/// Unary: the request is a number N; fails with code N, text `code N`.
pub const CODE: &str = "/test.Test/Code";
/// Unary: fails with code 0 and the request as its text.
pub const FAIL_WITH: &str = "/test.Test/FailWith";

/// Upper bound of every single test.
pub const TEST_LIMIT: Duration = Duration::from_secs(15);

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// What the handlers report.
#[derive(Clone)]
pub struct Events(mpsc::UnboundedSender<String>);

impl Events {
    pub fn emit(&self, event: impl Into<String>) {
        let _ = self.0.send(event.into());
    }
}

/// Emits `<name>:end` when dropped: the handler future ended, by returning
/// or by being dropped.
struct EndGuard {
    events: Events,
    name: &'static str,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.events.emit(format!("{}:end", self.name));
    }
}

/// Emits `<name>:ctx` once the request context is cancelled (as work a
/// handler hands to another task would see it).
fn watch_ctx(ctx: &RequestContext, events: &Events, name: &'static str) {
    let token = ctx.cancellation_token().clone();
    let events = events.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        events.emit(format!("{name}:ctx"));
    });
}

/// The receiving end of the handlers' events.
pub struct Probe {
    rx: mpsc::UnboundedReceiver<String>,
    /// Events received while waiting for others.
    seen: Vec<String>,
}

impl Probe {
    /// Waits (at most `limit`) until `event` has been emitted, and consumes
    /// one occurrence of it.
    pub async fn wait_for(&mut self, event: &str, limit: Duration) {
        if let Some(i) = self.seen.iter().position(|e| e == event) {
            self.seen.remove(i);
            return;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) if e == event => return,
                Ok(Some(e)) => self.seen.push(e),
                Ok(None) => panic!("event channel closed while waiting for {event:?}"),
                Err(_) => panic!(
                    "no {event:?} within {limit:?}; seen meanwhile: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits until `event` has been emitted `n` times.
    pub async fn wait_n(&mut self, event: &str, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for _ in 0..n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.wait_for(event, left).await;
        }
    }

    /// Whether `event` is emitted within `wait`, without failing.
    pub async fn saw_within(&mut self, event: &str, wait: Duration) -> bool {
        if let Some(i) = self.seen.iter().position(|e| e == event) {
            self.seen.remove(i);
            return true;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) if e == event => return true,
                Ok(Some(e)) => self.seen.push(e),
                Ok(None) | Err(_) => return false,
            }
        }
    }

    /// Every event emitted so far and not consumed.
    pub fn drain(&mut self) -> Vec<String> {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
        std::mem::take(&mut self.seen)
    }
}

/// Calls in flight in `SLOW_ECHO` and `SLEEP`.
#[derive(Default)]
pub struct Stats {
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub calls: AtomicUsize,
}

struct InFlight(Arc<Stats>);

impl InFlight {
    fn enter(stats: &Arc<Stats>) -> InFlight {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        stats.calls.fetch_add(1, Ordering::SeqCst);
        InFlight(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The test service.
pub fn test_mux(events: Events, stats: Arc<Stats>) -> Mux {
    let mut mux = Mux::new();
    mux.unary(
        ECHO,
        Raw,
        |_: RequestContext, req: Bytes| async move { Ok(req) },
    );
    {
        let stats = stats.clone();
        mux.unary(SLOW_ECHO, Raw, move |_: RequestContext, req: Bytes| {
            let stats = stats.clone();
            async move {
                let _in = InFlight::enter(&stats);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(req)
            }
        });
    }
    {
        let (events, stats) = (events.clone(), stats.clone());
        mux.unary(SLEEP, Raw, move |_: RequestContext, req: Bytes| {
            let (events, stats) = (events.clone(), stats.clone());
            async move {
                let _in = InFlight::enter(&stats);
                let ms: u64 = text(&req)
                    .parse()
                    .map_err(|_| CodedError::new(3, "bad ms"))?;
                events.emit("sleep:start");
                let _end = EndGuard {
                    events,
                    name: "sleep",
                };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Bytes::from_static(b"slept"))
            }
        });
    }
    mux.client_streaming(
        COUNT,
        Raw,
        |_: RequestContext, mut rx: ServerReceiver<Bytes, Raw>| async move {
            let mut n = 0u64;
            while rx.recv().await?.is_some() {
                n += 1;
            }
            Ok(Bytes::from(n.to_string()))
        },
    );
    mux.server_streaming(
        REPEAT,
        Raw,
        |_: RequestContext, req: Bytes, mut tx: ServerSender<Bytes, Raw>| async move {
            let k: u64 = text(&req)
                .parse()
                .map_err(|_| CodedError::new(3, "bad k"))?;
            for i in 0..k {
                tx.send(&Bytes::from(i.to_string())).await?;
            }
            Ok(())
        },
    );
    mux.bidi(
        BIDI,
        Raw,
        |_: RequestContext,
         mut rx: ServerReceiver<Bytes, Raw>,
         mut tx: ServerSender<Bytes, Raw>| async move {
            while let Some(msg) = rx.recv().await? {
                tx.send(&msg).await?;
            }
            Ok(())
        },
    );
    mux.unary(META, Raw, |ctx: RequestContext, _: Bytes| async move {
        let pairs: Vec<String> = ctx
            .metadata()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Ok(Bytes::from(pairs.join(";")))
    });
    mux.unary(DEADLINE, Raw, |ctx: RequestContext, _: Bytes| async move {
        let answer = match ctx.deadline() {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .to_string(),
            None => "none".to_owned(),
        };
        Ok(Bytes::from(answer))
    });
    mux.unary(FAIL, Raw, |_: RequestContext, _: Bytes| async move {
        Err::<Bytes, _>(CodedError::new(42, "boom"))
    });
    mux.unary(PANIC, Raw, |_: RequestContext, _: Bytes| async move {
        if std::hint::black_box(true) {
            panic!("handler panic provoked by the test");
        }
        Ok(Bytes::new())
    });
    {
        let events = events.clone();
        mux.unary(BLOCK, Raw, move |ctx: RequestContext, _: Bytes| {
            let events = events.clone();
            async move {
                watch_ctx(&ctx, &events, "block");
                events.emit("block:start");
                let _end = EndGuard {
                    events: events.clone(),
                    name: "block",
                };
                ctx.cancelled().await;
                events.emit("block:observed");
                Err::<Bytes, _>(CodedError::new(1, "cancelled"))
            }
        });
    }
    {
        let events = events.clone();
        mux.bidi(
            BIDI_WATCH,
            Raw,
            move |ctx: RequestContext,
                  mut rx: ServerReceiver<Bytes, Raw>,
                  mut tx: ServerSender<Bytes, Raw>| {
                let events = events.clone();
                async move {
                    watch_ctx(&ctx, &events, "bidi-watch");
                    events.emit("bidi-watch:start");
                    let _end = EndGuard {
                        events: events.clone(),
                        name: "bidi-watch",
                    };
                    loop {
                        match rx.recv().await {
                            Ok(Some(msg)) => tx.send(&msg).await?,
                            Ok(None) => return Ok(()),
                            Err(e) => {
                                events.emit("bidi-watch:recv-err");
                                return Err(e);
                            }
                        }
                    }
                }
            },
        );
    }
    {
        let events = events.clone();
        mux.server_streaming(
            FOREVER,
            Raw,
            move |ctx: RequestContext, _: Bytes, mut tx: ServerSender<Bytes, Raw>| {
                let events = events.clone();
                async move {
                    watch_ctx(&ctx, &events, "forever");
                    events.emit("forever:start");
                    let _end = EndGuard {
                        events: events.clone(),
                        name: "forever",
                    };
                    let mut i = 0u64;
                    loop {
                        if let Err(e) = tx.send(&Bytes::from(i.to_string())).await {
                            events.emit("forever:send-err");
                            return Err(e);
                        }
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            },
        );
    }
    mux.bidi(
        MARKER,
        Raw,
        |_: RequestContext, _: ServerReceiver<Bytes, Raw>, _: ServerSender<Bytes, Raw>| async move {
            Err(CodedError::new(0, "marker"))
        },
    );
    mux.bidi(
        OUT2,
        Raw,
        |ctx: RequestContext, _: ServerReceiver<Bytes, Raw>, mut tx: ServerSender<Bytes, Raw>| async move {
            tx.send(&Bytes::from_static(b"2")).await?;
            ctx.cancelled().await;
            Ok(())
        },
    );
    mux.unary(CODE, Raw, |_: RequestContext, req: Bytes| async move {
        let n: u64 = text(&req)
            .parse()
            .map_err(|_| CodedError::new(3, "bad code"))?;
        Err::<Bytes, _>(CodedError::new(n, format!("code {n}")))
    });
    mux.unary(FAIL_WITH, Raw, |_: RequestContext, req: Bytes| async move {
        Err::<Bytes, _>(CodedError::new(0, text(&req)))
    });
    mux.unary(BIG, Raw, |_: RequestContext, req: Bytes| async move {
        let n: usize = text(&req)
            .parse()
            .map_err(|_| CodedError::new(3, "bad size"))?;
        Ok(Bytes::from(vec![7u8; n]))
    });
    mux
}

/// How the client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `serve_tcp` on 127.0.0.1:0.
    Tcp,
    /// `serve_unix` on a fresh path in the temporary directory.
    Unix,
    /// `serve_connection` on one end of a `tokio::io::duplex`.
    Duplex,
}

enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Duplex,
}

/// A running server with its test service.
pub struct Harness {
    pub server: Server,
    pub probe: Probe,
    pub stats: Arc<Stats>,
    endpoint: Endpoint,
    /// The listener's task (`serve_tcp`/`serve_unix`).
    pub serve: Option<JoinHandle<io::Result<()>>>,
    /// The `serve_connection` tasks of duplex connections.
    pub connections: Vec<JoinHandle<ConnectionError>>,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A socket path nobody else uses.
pub fn unique_socket_path() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "drpc-e2e-{}-{}-{nanos}.sock",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Harness {
    /// Starts a server with the test service and default options.
    pub async fn start(transport: Transport) -> Harness {
        Harness::start_with(transport, ServerOptions::default()).await
    }

    /// Starts a server with the test service and `opts`.
    pub async fn start_with(transport: Transport, opts: ServerOptions) -> Harness {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let server = Server::with_options(test_mux(Events(tx), stats.clone()), opts);
        let (endpoint, serve) = match transport {
            Transport::Tcp => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1:0");
                let addr = listener.local_addr().expect("local address");
                let s = server.clone();
                let task = tokio::spawn(async move { s.serve_tcp(listener).await });
                (Endpoint::Tcp(addr), Some(task))
            }
            Transport::Unix => {
                let path = unique_socket_path();
                let listener = tokio::net::UnixListener::bind(&path).expect("bind unix socket");
                let s = server.clone();
                let task = tokio::spawn(async move { s.serve_unix(listener).await });
                (Endpoint::Unix(path), Some(task))
            }
            Transport::Duplex => (Endpoint::Duplex, None),
        };
        Harness {
            server,
            probe: Probe {
                rx,
                seen: Vec::new(),
            },
            stats,
            endpoint,
            serve,
            connections: Vec::new(),
        }
    }

    /// The TCP address served, for raw peers.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match &self.endpoint {
            Endpoint::Tcp(addr) => Some(*addr),
            _ => None,
        }
    }

    /// A new client connection with default options.
    pub async fn connect(&mut self) -> Conn {
        self.connect_with(ConnOptions::default()).await
    }

    /// A new client connection.
    pub async fn connect_with(&mut self, opts: ConnOptions) -> Conn {
        self.try_connect_with(opts).await.expect("connect")
    }

    /// A new client connection, or the dialling error.
    pub async fn try_connect_with(&mut self, opts: ConnOptions) -> Result<Conn, drpc_conn::Error> {
        match &self.endpoint {
            Endpoint::Tcp(addr) => Conn::connect_tcp(*addr, opts).await,
            Endpoint::Unix(path) => Conn::connect_unix(path, opts).await,
            Endpoint::Duplex => {
                let (client, server_end) = tokio::io::duplex(64 * 1024);
                let s = self.server.clone();
                self.connections.push(tokio::spawn(
                    async move { s.serve_connection(server_end).await },
                ));
                Ok(Conn::new(client, opts))
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Endpoint::Unix(path) = &self.endpoint {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Bytes from text.
pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Whether `err` says the deadline passed: detected by the client itself,
/// or reported by the server (DeadlineExceeded) when its own timer fired
/// first: the one predicate covers both.
pub fn is_deadline(err: &drpc_conn::Error) -> bool {
    err.is_deadline_exceeded()
}
