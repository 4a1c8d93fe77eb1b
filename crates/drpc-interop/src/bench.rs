//! The benchmark runner (`drpc-interop bench`) and its one-line report.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use drpc_conn::{CallOptions, ClientSender, Conn, ConnOptions, Responses};
use drpc_stream::Prost;
use drpc_wire::DEFAULT_MAX_PACKET_SIZE;
use prost::Message;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use crate::pb::{In, Out, ServiceDrpcClient};

/// What one operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One Method1 call.
    Unary,
    /// One send on an open Method2 stream.
    InStream,
    /// One receive on a Method3 stream opened with a very large `in`.
    OutStream,
    /// One send and one receive on a Method4 stream.
    Bidi,
}

impl Kind {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Unary => "unary",
            Kind::InStream => "instream",
            Kind::OutStream => "outstream",
            Kind::Bidi => "bidi",
        }
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "unary" => Ok(Kind::Unary),
            "instream" => Ok(Kind::InStream),
            "outstream" => Ok(Kind::OutStream),
            "bidi" => Ok(Kind::Bidi),
            other => Err(format!(
                "unknown kind {other:?} (unary, instream, outstream, bidi)"
            )),
        }
    }
}

/// The request of every operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// `In{in: 5}`.
    Small,
    /// `In{in: 1, buf: 2 KiB}`.
    Med,
    /// `In{in: 1, buf: 1 MiB}`.
    Large,
}

impl Size {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Med => "med",
            Size::Large => "large",
        }
    }

    /// The request message of this size.
    pub fn request(self) -> In {
        let (r#in, len) = match self {
            Size::Small => (5, 0),
            Size::Med => (1, 2 << 10),
            Size::Large => (1, 1 << 20),
        };
        In {
            r#in,
            buf: Bytes::from(vec![0x5a; len]),
            opt: None,
        }
    }

    /// The encoded size of [`Size::request`] in bytes (2, 2053 and
    /// 1048582).
    pub fn encoded_len(self) -> usize {
        self.request().encoded_len()
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Size, String> {
        match s {
            "small" => Ok(Size::Small),
            "med" => Ok(Size::Med),
            "large" => Ok(Size::Large),
            other => Err(format!("unknown size {other:?} (small, med, large)")),
        }
    }
}

/// A benchmark run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// `HOST:PORT` of the server.
    pub addr: String,
    /// What one operation is.
    pub kind: Kind,
    /// The request size.
    pub size: Size,
    /// How long the operations run.
    pub duration: Duration,
    /// How many tasks run operations at once.
    pub conc: usize,
    /// How many connections the tasks share, round-robin.
    pub conns: usize,
    /// Sequential connections (one stream at a time each).
    pub sequential: bool,
    /// The largest message sent to or accepted from the server.
    pub max_message_size: usize,
    /// Flow control (`--flow-control`; default auto).
    pub flow_control: drpc_stream::FlowControl,
    /// Compression of every call (`--compression`; default none).
    pub compression: Option<drpc_wire::Compression>,
}

impl BenchConfig {
    /// One task on one multiplexed connection for 3 s.
    pub fn new(addr: impl Into<String>, kind: Kind, size: Size) -> BenchConfig {
        BenchConfig {
            addr: addr.into(),
            kind,
            size,
            duration: Duration::from_secs(3),
            conc: 1,
            conns: 1,
            sequential: false,
            max_message_size: DEFAULT_MAX_PACKET_SIZE,
            flow_control: drpc_stream::FlowControl::default(),
            compression: None,
        }
    }
}

/// The result of a run, displayed as the contract's one line:
///
/// ```text
/// kind=unary size=small conc=1 conns=1 ops=123456 ops_per_s=41152 mb_per_s=0.08 mean_us=24.3 p50_us=22.9 p99_us=41.0
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    /// The kind, as printed (`unary`, `tcp-pingpong`, ...).
    pub kind: String,
    /// The size, as printed.
    pub size: String,
    /// Concurrent tasks.
    pub conc: usize,
    /// Connections.
    pub conns: usize,
    /// Operations completed.
    pub ops: u64,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Encoded request bytes per second, in 10^6 bytes.
    pub mb_per_s: f64,
    /// Mean latency of an operation, µs.
    pub mean_us: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
}

impl BenchResult {
    /// Summarizes operation latencies (in nanoseconds, any order) measured
    /// over `elapsed`, each operation carrying `bytes_per_op` request
    /// bytes.
    pub fn from_latencies(
        kind: impl Into<String>,
        size: impl Into<String>,
        conc: usize,
        conns: usize,
        mut latencies_ns: Vec<u64>,
        elapsed: Duration,
        bytes_per_op: usize,
    ) -> BenchResult {
        latencies_ns.sort_unstable();
        let ops = latencies_ns.len() as u64;
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mean_us = if ops == 0 {
            0.0
        } else {
            latencies_ns.iter().map(|&n| n as f64).sum::<f64>() / ops as f64 / 1e3
        };
        BenchResult {
            kind: kind.into(),
            size: size.into(),
            conc,
            conns,
            ops,
            ops_per_s: ops as f64 / secs,
            mb_per_s: ops as f64 * bytes_per_op as f64 / secs / 1e6,
            mean_us,
            p50_us: percentile(&latencies_ns, 50.0) / 1e3,
            p99_us: percentile(&latencies_ns, 99.0) / 1e3,
        }
    }
}

/// The nearest-rank percentile of sorted values (0 when empty).
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

impl fmt::Display for BenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kind={} size={} conc={} conns={} ops={} ops_per_s={:.0} mb_per_s={:.2} mean_us={:.1} p50_us={:.1} p99_us={:.1}",
            self.kind,
            self.size,
            self.conc,
            self.conns,
            self.ops,
            self.ops_per_s,
            self.mb_per_s,
            self.mean_us,
            self.p50_us,
            self.p99_us
        )
    }
}

/// Runs a benchmark: opens `conns` connections, starts `conc` tasks on
/// them round-robin, lets each set up its stream, then runs operations
/// for `duration` and summarizes them.
///
/// Sequential connections carry one stream at a time, so a sequential
/// streaming run needs `conns >= conc`; it is refused otherwise.
pub async fn run_bench(cfg: &BenchConfig) -> Result<BenchResult, String> {
    if cfg.conc == 0 || cfg.conns == 0 {
        return Err("--conc and --conns must be at least 1".into());
    }
    if cfg.sequential && cfg.kind != Kind::Unary && cfg.conc > cfg.conns {
        // A sequential connection carries one stream at a time, and these
        // streams stay open for the whole run.
        return Err(format!(
            "--sequential {} needs one connection per task (--conns {} < --conc {})",
            cfg.kind.name(),
            cfg.conns,
            cfg.conc
        ));
    }
    let mut opts = if cfg.sequential {
        ConnOptions::sequential()
    } else {
        ConnOptions::default()
    };
    opts.manager.stream.max_packet_size = cfg.max_message_size;
    opts.manager.stream.flow_control = cfg.flow_control;
    opts.manager.compression = cfg.compression;
    let mut conns = Vec::with_capacity(cfg.conns);
    for _ in 0..cfg.conns {
        let conn = Conn::connect_tcp(cfg.addr.as_str(), opts.clone())
            .await
            .map_err(|e| format!("connecting to {}: {e}", cfg.addr))?;
        conns.push(conn);
    }
    let request = Arc::new(cfg.size.request());
    let bytes_per_op = request.encoded_len();
    let barrier = Arc::new(Barrier::new(cfg.conc + 1));
    let mut tasks = Vec::with_capacity(cfg.conc);
    for i in 0..cfg.conc {
        let conn = conns[i % conns.len()].clone();
        let (request, barrier) = (request.clone(), barrier.clone());
        let (kind, duration, chunk) = (cfg.kind, cfg.duration, stream_chunk(cfg.size));
        tasks.push(tokio::spawn(async move {
            worker(conn, kind, request, duration, chunk, barrier).await
        }));
    }
    let run = gather(&barrier, tasks).await;
    for conn in &conns {
        conn.close().await;
    }
    run.into_result(cfg, bytes_per_op)
}

/// What the tasks of a run measured: every latency, how long the run
/// took, and the first failure.
#[derive(Debug)]
pub(crate) struct Gathered {
    latencies: Vec<u64>,
    elapsed: Duration,
    first_error: Option<String>,
}

impl Gathered {
    /// The first failure, or the run summarized as `cfg`'s result.
    pub(crate) fn into_result(
        self,
        cfg: &BenchConfig,
        bytes_per_op: usize,
    ) -> Result<BenchResult, String> {
        if let Some(e) = self.first_error {
            return Err(e);
        }
        Ok(BenchResult::from_latencies(
            cfg.kind.name(),
            cfg.size.name(),
            cfg.conc,
            cfg.conns,
            self.latencies,
            self.elapsed,
            bytes_per_op,
        ))
    }
}

/// Starts the run once the `tasks` (each of which waits on `barrier` once
/// set up) are ready, and collects their latencies as they end.
pub(crate) async fn gather(
    barrier: &Barrier,
    tasks: Vec<JoinHandle<Result<Vec<u64>, String>>>,
) -> Gathered {
    barrier.wait().await;
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(mut l)) => latencies.append(&mut l),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("a bench task failed: {e}"));
            }
        }
    }
    Gathered {
        latencies,
        elapsed: start.elapsed(),
        first_error,
    }
}

/// The operations of one task: when each starts, until the run's time is
/// up, and how long each took.
#[derive(Debug)]
pub(crate) struct OpClock {
    deadline: Instant,
    latencies: Vec<u64>,
}

impl OpClock {
    /// A clock for operations that run for `duration` from now.
    pub(crate) fn new(duration: Duration) -> OpClock {
        OpClock {
            deadline: Instant::now() + duration,
            latencies: Vec::with_capacity(4096),
        }
    }

    /// The start of the next operation, or `None` once time is up.
    pub(crate) fn start(&self) -> Option<Instant> {
        let now = Instant::now();
        (now < self.deadline).then_some(now)
    }

    /// Records an operation that started at `start` as done.
    pub(crate) fn done(&mut self, start: Instant) {
        self.latencies.push(start.elapsed().as_nanos() as u64);
    }

    /// Records `n` operations that together took from `start` until now,
    /// each with their mean latency: streams of small messages are timed
    /// per chunk, since reading the clock costs as much as a message.
    pub(crate) fn done_many(&mut self, start: Instant, n: usize) {
        let each = start.elapsed().as_nanos() as u64 / n.max(1) as u64;
        self.latencies.extend(std::iter::repeat_n(each, n));
    }

    /// Operations done so far.
    pub(crate) fn count(&self) -> usize {
        self.latencies.len()
    }

    /// Every operation's latency, in nanoseconds.
    pub(crate) fn into_latencies(self) -> Vec<u64> {
        self.latencies
    }
}

/// How many messages a streaming operation of `size` handles between two
/// readings of the clock: sends of a client stream go out together
/// (`send_all`), as the messages a server streams do. One per reading for
/// large messages, whose time dwarfs the clock's.
pub(crate) fn stream_chunk(size: Size) -> usize {
    match size {
        Size::Small | Size::Med => 32,
        Size::Large => 1,
    }
}

/// The stream a task keeps open for its operations.
enum Open {
    Unary,
    InStream(drpc_conn::ClientStream<In, Out, Prost>),
    OutStream(Responses<Out, Prost>),
    Bidi(ClientSender<In, Prost>, Responses<Out, Prost>),
}

async fn open(conn: &Conn, kind: Kind, request: &In) -> Result<Open, String> {
    let failed = |e: drpc_conn::Error| format!("opening the {} stream: {e}", kind.name());
    let client = ServiceDrpcClient::new(conn.clone());
    Ok(match kind {
        Kind::Unary => Open::Unary,
        Kind::InStream => Open::InStream(client.method2().await.map_err(failed)?),
        Kind::OutStream => {
            let req = In {
                r#in: i64::MAX,
                ..request.clone()
            };
            Open::OutStream(client.method3(&req).await.map_err(failed)?)
        }
        Kind::Bidi => {
            let (sender, responses) = client.method4().await.map_err(failed)?;
            Open::Bidi(sender, responses)
        }
    })
}

/// One task: sets up, waits for the others, then runs operations until
/// `duration` has passed; returns each operation's latency.
async fn worker(
    conn: Conn,
    kind: Kind,
    request: Arc<In>,
    duration: Duration,
    chunk: usize,
    barrier: Arc<Barrier>,
) -> Result<Vec<u64>, String> {
    let client = ServiceDrpcClient::new(conn.clone());
    let opened = open(&conn, kind, &request).await;
    barrier.wait().await;
    let mut open = opened?;
    let mut clock = OpClock::new(duration);
    let unary_opts = CallOptions::new();
    while let Some(start) = clock.start() {
        let n = clock.count();
        match &mut open {
            Open::Unary => {
                let out: Out = client
                    .method1_with(&request, &unary_opts)
                    .await
                    .map_err(|e| format!("unary call {n} failed: {e}"))?;
                if out.out != request.r#in {
                    return Err(format!("unary call {n} returned out = {}", out.out));
                }
            }
            Open::InStream(stream) => {
                stream
                    .send_all(std::iter::repeat_n(&*request, chunk))
                    .await
                    .map_err(|e| format!("send {n} failed: {e}"))?;
                clock.done_many(start, chunk);
                continue;
            }
            Open::OutStream(stream) => {
                for i in n..n + chunk {
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            return Err(format!("the server stream ended after {i} messages"));
                        }
                        Err(e) => return Err(format!("receive {i} failed: {e}")),
                    }
                }
                clock.done_many(start, chunk);
                continue;
            }
            Open::Bidi(sender, responses) => {
                sender
                    .send(&request)
                    .await
                    .map_err(|e| format!("send {n} failed: {e}"))?;
                match responses.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(format!("the bidi stream ended after {n} messages")),
                    Err(e) => return Err(format!("receive {n} failed: {e}")),
                }
            }
        }
        clock.done(start);
    }
    let done = clock.count() as i64;
    match open {
        Open::Unary | Open::OutStream(_) => {}
        Open::InStream(mut stream) => {
            let out = stream
                .close_and_recv()
                .await
                .map_err(|e| format!("closing the client stream: {e}"))?;
            if out.out != done {
                return Err(format!(
                    "the server counted {} messages, sent {done}",
                    out.out
                ));
            }
        }
        Open::Bidi(sender, mut responses) => {
            sender
                .close_send()
                .map_err(|e| format!("closing the bidi stream: {e}"))?;
            match responses.message().await {
                Ok(None) => {}
                Ok(Some(_)) => return Err("a message after close_send".into()),
                Err(e) => return Err(format!("ending the bidi stream: {e}")),
            }
        }
    }
    Ok(clock.into_latencies())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_contract() {
        assert_eq!(Size::Small.encoded_len(), 2);
        assert_eq!(Size::Med.encoded_len(), 2 + 3 + 2048);
        assert_eq!(Size::Large.encoded_len(), 2 + 4 + (1 << 20));
    }

    #[test]
    fn formats_one_line() {
        let r = BenchResult::from_latencies(
            "unary",
            "small",
            1,
            1,
            vec![3000, 1000, 2000],
            Duration::from_secs(1),
            2,
        );
        assert_eq!(
            r.to_string(),
            "kind=unary size=small conc=1 conns=1 ops=3 ops_per_s=3 mb_per_s=0.00 mean_us=2.0 p50_us=2.0 p99_us=3.0"
        );
    }
}
