//! The healing channel against real servers over loopback: restarts,
//! connect timeouts, fail-fast and wait-for-ready, the sequential-mode
//! pool, balancing over three servers, `tower` layers and interceptors.
//!
//! No test asserts on timing: waits are for states and events, each
//! bounded by a generous limit that only a hang reaches.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use drpc_conn::{
    Backoff, CallOptions, Channel, ConnOptions, Connectivity, Endpoint, Error, Invoker, Raw,
    Request, ServiceInvoker, with_interceptor,
};
use drpc_manager::ManagerOptions;
use drpc_mux::{CodedError, Mux, RequestContext, ServerReceiver, ServerSender};
use drpc_server::{Server, ServerOptions};
use tokio::net::TcpListener;
use tokio::sync::{Barrier, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::discover::Change;
use tower::{Service, ServiceBuilder, ServiceExt};

const ECHO: &str = "/t.T/Echo";
const WHO: &str = "/t.T/Who";
const META: &str = "/t.T/Meta";
const BLOCK: &str = "/t.T/Block";
const SLOW: &str = "/t.T/Slow";
const FLAKY: &str = "/t.T/Flaky";
const BARRIER: &str = "/t.T/Barrier";
const BIDI_META: &str = "/t.T/BidiMeta";

/// Upper bound of any wait: only a hang reaches it.
const LIMIT: Duration = Duration::from_secs(5);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Waits until `cond` holds (polled every 2 ms).
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

/// What the handlers share with the test.
struct State {
    name: String,
    /// `BLOCK` calls started.
    blocked: mpsc::UnboundedSender<()>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// `FLAKY` calls so far.
    flaky_calls: AtomicUsize,
    barrier: Barrier,
}

fn mux(state: Arc<State>) -> Mux {
    let mut mux = Mux::new();
    mux.unary(
        ECHO,
        Raw,
        |_: RequestContext, req: Bytes| async move { Ok(req) },
    );
    {
        let state = state.clone();
        mux.unary(WHO, Raw, move |_: RequestContext, _: Bytes| {
            let name = Bytes::from(state.name.clone());
            async move { Ok(name) }
        });
    }
    mux.unary(META, Raw, |ctx: RequestContext, _: Bytes| async move {
        let token = ctx.metadata().get("authorization").cloned();
        Ok(Bytes::from(token.unwrap_or_default()))
    });
    {
        let state = state.clone();
        mux.unary(BLOCK, Raw, move |ctx: RequestContext, _: Bytes| {
            let state = state.clone();
            async move {
                let _ = state.blocked.send(());
                ctx.cancelled().await;
                Err::<Bytes, _>(CodedError::new(1u64, "cancelled"))
            }
        });
    }
    {
        let state = state.clone();
        mux.unary(SLOW, Raw, move |_: RequestContext, req: Bytes| {
            let state = state.clone();
            async move {
                let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                state.max_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                state.in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(req)
            }
        });
    }
    {
        // Fails with Unavailable (14) as many times as the request says,
        // then answers `ok`.
        let state = state.clone();
        mux.unary(FLAKY, Raw, move |_: RequestContext, req: Bytes| {
            let state = state.clone();
            async move {
                let failures: usize = String::from_utf8_lossy(&req).parse().unwrap_or(0);
                if state.flaky_calls.fetch_add(1, Ordering::SeqCst) < failures {
                    return Err(CodedError::new(14u64, "try again"));
                }
                Ok(Bytes::from_static(b"ok"))
            }
        });
    }
    {
        let state = state.clone();
        mux.unary(BARRIER, Raw, move |_: RequestContext, req: Bytes| {
            let state = state.clone();
            async move {
                state.barrier.wait().await;
                Ok(req)
            }
        });
    }
    mux.bidi(
        BIDI_META,
        Raw,
        |ctx: RequestContext,
         mut rx: ServerReceiver<Bytes, Raw>,
         mut tx: ServerSender<Bytes, Raw>| async move {
            let token = ctx.metadata().get("authorization").cloned();
            tx.send(&Bytes::from(token.unwrap_or_default())).await?;
            while let Some(msg) = rx.recv().await? {
                tx.send(&msg).await?;
            }
            Ok(())
        },
    );
    mux
}

/// A server on loopback TCP that counts its connections.
struct TestServer {
    addr: SocketAddr,
    server: Server,
    state: Arc<State>,
    blocked: mpsc::UnboundedReceiver<()>,
    connections: Arc<AtomicUsize>,
    stop: CancellationToken,
    accept: JoinHandle<()>,
}

impl TestServer {
    /// Serves `addr` (`127.0.0.1:0` for a new port).
    async fn start(addr: &str, name: &str, opts: ServerOptions) -> TestServer {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (blocked_tx, blocked) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            name: name.to_owned(),
            blocked: blocked_tx,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            flaky_calls: AtomicUsize::new(0),
            barrier: Barrier::new(4),
        });
        let server = Server::with_options(mux(state.clone()), opts);
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let accept = tokio::spawn({
            let (server, connections, stop) = (server.clone(), connections.clone(), stop.clone());
            async move {
                loop {
                    let socket = tokio::select! {
                        _ = stop.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((socket, _)) => socket,
                            Err(_) => return,
                        },
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let _ = socket.set_nodelay(true);
                    let server = server.clone();
                    tokio::spawn(async move { server.serve_connection(socket).await });
                }
            }
        });
        TestServer {
            addr,
            server,
            state,
            blocked,
            connections,
            stop,
            accept,
        }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stops listening (the port is free again) and ends every connection:
    /// calls in flight get code 14, Unavailable.
    async fn stop(self) -> String {
        let addr = self.address();
        self.stop.cancel();
        let _ = self.accept.await;
        within("shutdown", self.server.shutdown(Duration::ZERO)).await;
        addr
    }
}

/// Short waits between attempts, for tests.
fn fast(endpoint: Endpoint) -> Endpoint {
    endpoint
        .backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            multiplier: 2.0,
            jitter: 0.2,
        })
        .connect_timeout(Duration::from_secs(2))
}

async fn call(invoker: &impl Invoker, rpc: &str, req: &str) -> Result<Bytes, Error> {
    invoker
        .invoke(
            &Raw,
            rpc,
            &Bytes::copy_from_slice(req.as_bytes()),
            &CallOptions::new(),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected_and_calls_fail_fast_meanwhile() {
    let server = TestServer::start("127.0.0.1:0", "a", ServerOptions::default()).await;
    let channel = fast(Endpoint::tcp(server.address())).connect_lazy();
    assert_eq!(channel.connectivity(), Connectivity::Idle, "lazy");
    assert_eq!(
        within("call", call(&channel, ECHO, "1")).await.unwrap(),
        "1"
    );
    assert_eq!(channel.connectivity(), Connectivity::Ready);

    // A call in flight when the server goes away fails as unavailable.
    let mut server = server;
    let blocked = tokio::spawn({
        let channel = channel.clone();
        async move { call(&channel, BLOCK, "").await }
    });
    within("block started", server.blocked.recv()).await;
    let addr = server.stop().await;
    let err = within("blocked call", blocked).await.unwrap().unwrap_err();
    assert!(err.is_unavailable(), "{err}");

    // Down: the channel notices, retries with backoff, and calls fail fast
    // naming the address and the connect error.
    wait_until("failure noticed", || {
        channel.connectivity() == Connectivity::TransientFailure
    })
    .await;
    let err = within("fail fast", call(&channel, ECHO, "2"))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    match &err {
        Error::Unavailable { addr: a, reason } => {
            assert_eq!(a, &addr);
            assert!(!reason.is_empty());
        }
        other => panic!("not Unavailable: {other:?}"),
    }
    assert!(err.to_string().contains(&addr), "{err}");

    // Back on the same port: the same channel heals by itself.
    let server = TestServer::start(&addr, "a2", ServerOptions::default()).await;
    wait_until("reconnected", || {
        channel.connectivity() == Connectivity::Ready
    })
    .await;
    assert_eq!(within("call", call(&channel, WHO, "")).await.unwrap(), "a2");
    assert_eq!(server.connections(), 1);
    server.stop().await;
}

/// A connector through a bridge the test can cut, as a network would.
#[derive(Clone, Default)]
struct Cuttable {
    bridges: Arc<Mutex<Vec<JoinHandle<()>>>>,
    dials: Arc<AtomicUsize>,
}

impl Cuttable {
    fn endpoint(&self, server: Server) -> Endpoint {
        let this = self.clone();
        Endpoint::from_connector("bridge", move || {
            let (this, server) = (this.clone(), server.clone());
            async move {
                this.dials.fetch_add(1, Ordering::SeqCst);
                let (client, mut near) = tokio::io::duplex(64 << 10);
                let (mut far, served) = tokio::io::duplex(64 << 10);
                tokio::spawn(async move { server.serve_connection(served).await });
                let bridge = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut near, &mut far).await;
                });
                this.bridges.lock().unwrap().push(bridge);
                Ok(client)
            }
        })
    }

    fn cut(&self) {
        for bridge in self.bridges.lock().unwrap().drain(..) {
            bridge.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_fails_its_calls_as_unavailable_and_is_redialed() {
    let (blocked_tx, mut blocked) = mpsc::unbounded_channel();
    let state = Arc::new(State {
        name: "bridged".into(),
        blocked: blocked_tx,
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        flaky_calls: AtomicUsize::new(0),
        barrier: Barrier::new(4),
    });
    let server = Server::new(mux(state));
    let bridge = Cuttable::default();
    let channel = fast(bridge.endpoint(server.clone())).connect_lazy();
    assert_eq!(
        within("call", call(&channel, ECHO, "x")).await.unwrap(),
        "x"
    );

    let in_flight = tokio::spawn({
        let channel = channel.clone();
        async move { call(&channel, BLOCK, "").await }
    });
    within("block started", blocked.recv()).await;
    bridge.cut();
    let err = within("cut call", in_flight).await.unwrap().unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.is_connection_lost(), "{err}");

    // Nothing retried the call; the channel dialed again by itself.
    wait_until("redialed", || channel.connectivity() == Connectivity::Ready).await;
    assert_eq!(bridge.dials.load(Ordering::SeqCst), 2);
    assert_eq!(
        within("call", call(&channel, ECHO, "y")).await.unwrap(),
        "y"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_never_completes_times_out() {
    let never = || std::future::pending::<io::Result<tokio::io::DuplexStream>>();
    let endpoint = Endpoint::from_connector("black-hole:1", never)
        .connect_timeout(Duration::from_millis(50))
        .backoff(Backoff {
            initial: Duration::from_secs(60),
            ..Backoff::default()
        });

    // Dialing eagerly: the connect error, naming the address.
    let err = within("connect", endpoint.clone().connect())
        .await
        .unwrap_err();
    match &err {
        Error::Connect { addr, source } => {
            assert_eq!(addr, "black-hole:1");
            assert_eq!(source.kind(), io::ErrorKind::TimedOut);
        }
        other => panic!("not Connect: {other:?}"),
    }
    assert!(err.is_unavailable());

    // Lazily: the first call waits for the attempt and fails with it; the
    // next fails fast with the same reason while the channel backs off.
    let channel = endpoint.connect_lazy();
    for _ in 0..2 {
        let err = within("call", call(&channel, ECHO, "")).await.unwrap_err();
        match &err {
            Error::Unavailable { addr, reason } => {
                assert_eq!(addr, "black-hole:1");
                assert!(reason.contains("timed out"), "{reason}");
            }
            other => panic!("not Unavailable: {other:?}"),
        }
    }
    assert_eq!(channel.connectivity(), Connectivity::TransientFailure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_for_a_connection_no_longer_than_its_deadline() {
    let never = || std::future::pending::<io::Result<tokio::io::DuplexStream>>();
    let channel = Endpoint::from_connector("black-hole:2", never)
        .connect_timeout(Duration::from_secs(3600))
        .connect_lazy()
        .wait_for_ready(true);
    let opts = CallOptions::new().timeout(Duration::from_millis(50));
    let err = within(
        "deadline",
        channel.unary_with(&Raw, ECHO, &Bytes::from_static(b"x"), &opts),
    )
    .await
    .map(|_: Bytes| ())
    .unwrap_err();
    assert!(err.is_deadline_exceeded(), "{err}");
    let token = drpc_conn::CancellationToken::new();
    let opts = CallOptions::new().cancel_on(token.clone());
    let request = Bytes::from_static(b"x");
    let call = channel.unary_with(&Raw, ECHO, &request, &opts);
    token.cancel();
    let err = within("cancel", call).await.map(|_: Bytes| ()).unwrap_err();
    assert!(err.is_canceled(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_panics_is_a_failed_attempt() {
    let panicking =
        || async { panic!("a broken connector") as io::Result<tokio::io::DuplexStream> };
    let channel = Endpoint::from_connector("panics:1", panicking).connect_lazy();
    let err = within("first call", call(&channel, ECHO, "x"))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("panicked"), "{err}");
    // And the next call fails fast too, rather than waiting for a dial
    // that died with its task.
    let err = within("second call", call(&channel, ECHO, "x"))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_ready_waits_for_a_connection_instead_of_failing() {
    let server = TestServer::start("127.0.0.1:0", "late", ServerOptions::default()).await;
    let addr = server.address();
    let up = Arc::new(AtomicBool::new(false));
    let endpoint = {
        let (up, addr) = (up.clone(), addr.clone());
        fast(Endpoint::from_connector(addr.clone(), move || {
            let (up, addr) = (up.load(Ordering::SeqCst), addr.clone());
            async move {
                if !up {
                    return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "not yet"));
                }
                tokio::net::TcpStream::connect(addr).await
            }
        }))
    };
    let channel = endpoint.connect_lazy();
    let err = within("fail fast", call(&channel, ECHO, ""))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");

    let patient = channel.clone().wait_for_ready(true);
    let waiting = tokio::spawn(async move { call(&patient, ECHO, "waited").await });
    // Still failing for the others while it waits.
    assert!(call(&channel, ECHO, "").await.unwrap_err().is_unavailable());
    up.store(true, Ordering::SeqCst);
    assert_eq!(
        within("waiting call", waiting).await.unwrap().unwrap(),
        "waited"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_redialed_at_the_next_call() {
    let server = TestServer::start("127.0.0.1:0", "idle", ServerOptions::default()).await;
    let channel = fast(Endpoint::tcp(server.address()))
        .idle_timeout(Some(Duration::from_millis(40)))
        .connect_lazy();
    assert_eq!(
        within("call", call(&channel, ECHO, "1")).await.unwrap(),
        "1"
    );
    wait_until("idle", || channel.connectivity() == Connectivity::Idle).await;
    assert_eq!(
        within("call", call(&channel, ECHO, "2")).await.unwrap(),
        "2"
    );
    assert_eq!(server.connections(), 2);
    server.stop().await;
}

#[cfg(unix)]
/// A server that closes connections that say nothing (a first-byte
/// timeout) does not make an unused channel redial for ever: the
/// connection is replaced at the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_connection_closed_by_the_server_is_redialed_at_the_next_call() {
    let opts = ServerOptions::default().handshake_timeout(Some(Duration::from_millis(30)));
    let server = TestServer::start("127.0.0.1:0", "strict", opts).await;
    let channel = within(
        "connect",
        fast(Endpoint::tcp(server.addr.to_string())).connect(),
    )
    .await
    .expect("connected");
    wait_until("the server closed the silent connection", || {
        channel.connectivity() == Connectivity::Idle
    })
    .await;
    // Many first-byte timeouts' worth of time: an eager redial would have
    // made several more connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    let reply = within("call", call(&channel, ECHO, "again"))
        .await
        .expect("served");
    assert_eq!(reply, "again");
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

/// A channel that sends the migration header (for servers sharing their
/// port with other protocols) is served by a plain server, which skips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_header_is_sent_first_and_a_server_skips_it() {
    let server = TestServer::start("127.0.0.1:0", "shared", ServerOptions::default()).await;
    let channel = fast(Endpoint::tcp(server.addr.to_string()))
        .migration_header(true)
        .connect_lazy();
    for i in 0..3 {
        let reply = within("call", call(&channel, ECHO, &format!("m{i}")))
            .await
            .expect("served");
        assert_eq!(reply, format!("m{i}"));
    }
    // The bytes themselves: the header, then an Invoke.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let raw = fast(Endpoint::tcp(addr.to_string()))
        .migration_header(true)
        .connect_lazy();
    let calling = tokio::spawn(async move { call(&raw, ECHO, "x").await });
    let (mut socket, _) = within("accept", listener.accept()).await.expect("accepted");
    let mut first = [0u8; 9];
    within(
        "read",
        tokio::io::AsyncReadExt::read_exact(&mut socket, &mut first),
    )
    .await
    .expect("read");
    assert_eq!(&first[..8], b"DRPC!!!1");
    assert_eq!(first[8] >> 1, 1, "an Invoke follows");
    calling.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_endpoint() {
    let dir = std::env::temp_dir().join(format!("drpc-channel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (blocked, _rx) = mpsc::unbounded_channel();
    let state = Arc::new(State {
        name: "unix".into(),
        blocked,
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        flaky_calls: AtomicUsize::new(0),
        barrier: Barrier::new(4),
    });
    let server = Server::new(mux(state));
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve_unix(listener).await }
    });
    let channel = Endpoint::unix(&path).connect().await.unwrap();
    assert_eq!(channel.connectivity(), Connectivity::Ready);
    assert_eq!(
        within("call", call(&channel, WHO, "")).await.unwrap(),
        "unix"
    );
    server.shutdown(Duration::ZERO).await;
    let _ = serving.await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn sequential_server() -> ServerOptions {
    ServerOptions {
        manager: ManagerOptions {
            sequential: true,
            ..ManagerOptions::default()
        },
        ..ServerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_mode_pools_one_call_per_connection() {
    let server = TestServer::start("127.0.0.1:0", "seq", sequential_server()).await;
    let channel = fast(Endpoint::tcp(server.address()))
        .options(ConnOptions::sequential())
        .max_connections(4)
        .connect_lazy();

    // The handler returns only once 4 calls are in it at once: that takes
    // 4 connections. 8 calls: two rounds, on the same 4 connections.
    for round in 0..2 {
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let channel = channel.clone();
                tokio::spawn(async move { call(&channel, BARRIER, &i.to_string()).await })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let reply = within("barrier call", c).await.unwrap().unwrap();
            assert_eq!(reply, i.to_string());
        }
        assert_eq!(server.connections(), 4, "round {round}");
    }

    // Many more calls than connections still all complete.
    let calls: Vec<_> = (0..32)
        .map(|i| {
            let channel = channel.clone();
            tokio::spawn(async move { call(&channel, SLOW, &i.to_string()).await })
        })
        .collect();
    for c in calls {
        within("slow call", c).await.unwrap().unwrap();
    }
    assert!(server.state.max_in_flight.load(Ordering::SeqCst) <= 4);
    assert_eq!(server.connections(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_mode_a_stream_holds_its_connection_until_it_ends() {
    let server = TestServer::start("127.0.0.1:0", "seq", sequential_server()).await;
    let channel = fast(Endpoint::tcp(server.address()))
        .options(ConnOptions::sequential())
        .max_connections(2)
        .connect_lazy();
    let mut stream = within(
        "open",
        channel.open::<Bytes, Bytes, _>(Raw, BIDI_META, &CallOptions::new()),
    )
    .await
    .unwrap();
    assert_eq!(within("first", stream.recv()).await.unwrap().unwrap(), "");
    // The stream holds connection 1: a unary call gets a second one and
    // completes while the stream is open.
    assert_eq!(
        within("unary", call(&channel, ECHO, "u")).await.unwrap(),
        "u"
    );
    assert_eq!(server.connections(), 2);
    stream.send(&Bytes::from_static(b"s")).await.unwrap();
    assert_eq!(within("echo", stream.recv()).await.unwrap().unwrap(), "s");
    stream.close_send().unwrap();
    assert_eq!(within("end", stream.recv()).await.unwrap(), None);
    drop(stream);
    // Both connections are free again and reused.
    for i in 0..4 {
        assert_eq!(
            within("unary", call(&channel, ECHO, &i.to_string()))
                .await
                .unwrap(),
            i.to_string()
        );
    }
    assert_eq!(server.connections(), 2);
    server.stop().await;
}

/// Calls `WHO` `n` times, one after another; counts the answers by server.
async fn tally(channel: &Channel, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let who = within("who", call(channel, WHO, "")).await.expect("who");
        *seen
            .entry(String::from_utf8_lossy(&who).into_owned())
            .or_insert(0) += 1;
    }
    seen
}

fn state_of(channel: &Channel, addr: &str) -> Connectivity {
    channel
        .endpoints()
        .into_iter()
        .find(|(a, _)| a == addr)
        .map(|(_, c)| c)
        .expect("endpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_over_three_servers_with_one_restarted() {
    let mut servers = Vec::new();
    for name in ["s0", "s1", "s2"] {
        servers.push(TestServer::start("127.0.0.1:0", name, ServerOptions::default()).await);
    }
    let addrs: Vec<String> = servers.iter().map(TestServer::address).collect();
    let channel = Channel::balance_list(addrs.iter().map(|a| fast(Endpoint::tcp(a.clone()))));

    let seen = tally(&channel, 60).await;
    assert_eq!(seen.len(), 3, "every server gets calls: {seen:?}");

    // s1 goes down: left out, calls keep succeeding on the other two.
    let s1 = servers.remove(1);
    s1.stop().await;
    wait_until("s1 failing", || {
        state_of(&channel, &addrs[1]) == Connectivity::TransientFailure
    })
    .await;
    let seen = tally(&channel, 40).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["s0", "s2"], "{seen:?}");

    // s1 comes back on its port: reconnected with backoff, and called.
    let s1 = TestServer::start(&addrs[1], "s1-again", ServerOptions::default()).await;
    wait_until("s1 ready", || {
        state_of(&channel, &addrs[1]) == Connectivity::Ready
    })
    .await;
    within("s1 called again", async {
        while !tally(&channel, 10).await.contains_key("s1-again") {}
    })
    .await;
    s1.stop().await;
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_over_a_changing_set() {
    let a = TestServer::start("127.0.0.1:0", "a", ServerOptions::default()).await;
    let b = TestServer::start("127.0.0.1:0", "b", ServerOptions::default()).await;
    let (channel, changes) = Channel::balance_channel::<&'static str>(4);
    let err = within("empty", call(&channel, WHO, "")).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");

    changes
        .send(Change::Insert("a", fast(Endpoint::tcp(a.address()))))
        .await
        .unwrap();
    changes
        .send(Change::Insert("b", fast(Endpoint::tcp(b.address()))))
        .await
        .unwrap();
    wait_until("two endpoints", || channel.endpoints().len() == 2).await;
    assert_eq!(tally(&channel, 40).await.len(), 2);

    changes.send(Change::Remove("a")).await.unwrap();
    wait_until("one endpoint", || channel.endpoints().len() == 1).await;
    let seen = tally(&channel, 10).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["b"], "{seen:?}");
    a.stop().await;
    b.stop().await;
}

/// Retries calls that failed as unavailable, up to `left` more times.
#[derive(Clone)]
struct RetryUnavailable {
    left: usize,
}

impl tower::retry::Policy<Request, Bytes, Error> for RetryUnavailable {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Request,
        result: &mut Result<Bytes, Error>,
    ) -> Option<Self::Future> {
        match result {
            Err(e) if e.is_unavailable() && self.left > 0 => {
                self.left -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Request) -> Option<Request> {
        Some(req.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_layers_compose_over_the_channel() {
    let server = TestServer::start("127.0.0.1:0", "tower", ServerOptions::default()).await;
    let channel = fast(Endpoint::tcp(server.address())).connect_lazy();

    // Timeout: a call that never answers ends as a deadline error.
    let timed = ServiceInvoker::new(
        ServiceBuilder::new()
            .timeout(Duration::from_millis(50))
            .service(channel.clone()),
        channel.clone(),
    );
    let err = within("timeout", call(&timed, BLOCK, ""))
        .await
        .unwrap_err();
    assert!(err.is_deadline_exceeded(), "{err}");
    assert_eq!(within("echo", call(&timed, ECHO, "t")).await.unwrap(), "t");

    // Concurrency limit: never more than 2 in the handler at once.
    let limited = ServiceInvoker::new(
        ServiceBuilder::new()
            .concurrency_limit(2)
            .service(channel.clone()),
        channel.clone(),
    );
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let limited = limited.clone();
            tokio::spawn(async move { call(&limited, SLOW, &i.to_string()).await })
        })
        .collect();
    for c in calls {
        within("limited", c).await.unwrap().unwrap();
    }
    let max = server.state.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "{max}");

    // Retry: two Unavailable answers, then success, all in one call.
    let retried = ServiceInvoker::new(
        ServiceBuilder::new()
            .retry(RetryUnavailable { left: 3 })
            .service(channel.clone()),
        channel.clone(),
    );
    assert_eq!(
        within("retry", call(&retried, FLAKY, "2")).await.unwrap(),
        "ok"
    );
    assert_eq!(server.state.flaky_calls.load(Ordering::SeqCst), 3);
    // Without the layer, nothing is retried.
    server.state.flaky_calls.store(0, Ordering::SeqCst);
    let err = within("no retry", call(&channel, FLAKY, "1"))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(server.state.flaky_calls.load(Ordering::SeqCst), 1);

    // Load shedding: with one call held in a limit of one, the next is shed.
    let mut shedding = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1)
        .service(channel.clone());
    let held = {
        let svc = shedding.ready().await.unwrap();
        svc.call(Request::new(BLOCK, Bytes::new()))
    };
    // The held call has the only permit, and never completes.
    let held = tokio::spawn(held);
    let err = shedding
        .ready()
        .await
        .unwrap()
        .call(Request::new(ECHO, Bytes::new()))
        .await
        .unwrap_err();
    let err = drpc_conn::from_layer_error(err);
    assert!(err.is_unavailable(), "{err}");
    held.abort();

    // A layer's own error (an authorization check, say) is the layer's:
    // code Unknown, its error kept as the source, not "unavailable".
    let refused = drpc_conn::from_layer_error("no token".into());
    assert_eq!(refused.code(), Some(drpc_conn::Code::Unknown), "{refused}");
    assert!(!refused.is_unavailable(), "{refused}");
    assert_eq!(
        std::error::Error::source(&refused).map(ToString::to_string),
        Some("no token".to_owned())
    );

    // The channel itself is a Service: a request with options.
    let mut svc = channel.clone();
    let mut request = Request::new(META, Bytes::new());
    request.insert_metadata("authorization", "direct");
    let reply = within("service call", svc.ready().await.unwrap().call(request))
        .await
        .unwrap();
    assert_eq!(reply, "direct");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interceptor_adds_a_token_to_unary_and_streaming_calls() {
    let server = TestServer::start("127.0.0.1:0", "auth", ServerOptions::default()).await;
    let channel = fast(Endpoint::tcp(server.address())).connect_lazy();
    let authed = with_interceptor(channel.clone(), |path, opts| {
        if path.ends_with("/Echo") {
            return Err(Error::unavailable("interceptor", "echo is not allowed"));
        }
        Ok(opts.metadata("authorization", "Bearer t0k3n"))
    });

    assert_eq!(
        within("unary", call(&authed, META, "")).await.unwrap(),
        "Bearer t0k3n"
    );
    let mut stream = within(
        "open",
        authed.open::<Bytes, Bytes, _>(Raw, BIDI_META, &CallOptions::new()),
    )
    .await
    .unwrap();
    assert_eq!(
        within("first", stream.recv()).await.unwrap().unwrap(),
        "Bearer t0k3n"
    );
    stream.close_send().unwrap();
    assert_eq!(within("end", stream.recv()).await.unwrap(), None);

    // Refused by the interceptor: nothing reaches the server.
    let err = call(&authed, ECHO, "").await.unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");

    // Under tower layers too, and as a tower Service itself.
    let layered = ServiceInvoker::new(
        ServiceBuilder::new()
            .concurrency_limit(4)
            .service(authed.clone()),
        authed.clone(),
    );
    assert_eq!(
        within("layered", call(&layered, META, "")).await.unwrap(),
        "Bearer t0k3n"
    );
    // The caller's own metadata stays; the interceptor's is added.
    let opts = CallOptions::new().metadata("authorization", "caller");
    let reply: Bytes = within(
        "caller metadata",
        channel.invoke(&Raw, META, &Bytes::new(), &opts),
    )
    .await
    .unwrap();
    assert_eq!(reply, "caller");
    server.stop().await;
}
