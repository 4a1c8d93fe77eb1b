//! The names of what the server reports, and how it counts.
//!
//! # Spans and events
//!
//! With [`tracing`], each connection is a span [`CONNECTION_SPAN`] at
//! `INFO`, with fields `conn_id` (the server's own count) and `peer` (its
//! address, or `unknown`), and each call a span [`CALL_SPAN`] at `INFO`,
//! its child, with fields `method` (the RPC path, its first 256 bytes if
//! longer), `peer`, `stream_id`,
//! and, recorded when the call ends, `code` (gRPC's name, `OK` when it
//! succeeded) and `duration_ms`. A handler runs inside its call's span:
//! every line it logs, after any `.await`, carries the call and its
//! connection. The connection's internal span (`drpc.manager`, at
//! `DEBUG`) is a child of the connection's.
//!
//! Events, in those spans:
//!
//! * `INFO` `connection opened`; `connection closed`, with `reason`
//!   (`peer_closed`, `io_error`, `protocol_error`, `wrong_protocol`,
//!   `idle_timeout`, `handshake_timeout`, `shutdown`, `closed`) and
//!   `detail`; `connection refused` (no span), with `peer` and `reason`
//!   (`max_connections`, `shutting_down`).
//! * `INFO` `call finished`, with `code` and `duration_ms`, for every
//!   call (as tower-http's `TraceLayer` does for every response);
//!   `handler failed`, with `code` and `error`, for a handler that
//!   returned an error; `ERROR` `handler panicked`.
//! * `DEBUG`: calls cancelled by their client or refused during shutdown,
//!   streams that could not be ended; `TRACE`: frame by frame (in
//!   `drpc-manager`).
//!
//! Fields are formatted only by a subscriber that takes them: with the
//! levels disabled, a call costs a level check per span and event.
//!
//! # Metrics
//!
//! Through the [`metrics`] facade: nothing is recorded unless the
//! application installs a recorder (an exporter such as
//! `metrics-exporter-prometheus`), and without one each call costs a few
//! no-op calls. Install the recorder before serving: a connection
//! resolves its metrics' handles when it opens and when it first serves
//! a method.
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | [`drpc_server_calls_total`](CALLS_TOTAL) | counter | `method`, `code` | calls ended, by method and code (`OK`, gRPC's code names, `Other` above 16) |
//! | [`drpc_server_call_duration_seconds`](CALL_DURATION_SECONDS) | histogram | `method` | from the call's start to its end, in seconds |
//! | [`drpc_server_connections`](CONNECTIONS) | gauge | | connections being served |
//! | [`drpc_server_streams`](STREAMS) | gauge | | calls being served |
//! | [`drpc_server_connections_closed_total`](CONNECTIONS_CLOSED_TOTAL) | counter | `reason` | connections ended, by the `reason` of `connection closed` |
//! | [`drpc_server_refused_total`](REFUSED_TOTAL) | counter | `reason` | refusals: connections over `max_connections` (`max_connections`) or during shutdown (`shutting_down`), connections that do not speak DRPC (`wrong_protocol`), calls during shutdown (`call_during_shutdown`) |
//! | [`drpc_server_bytes_received_total`](BYTES_RECEIVED_TOTAL) | counter | | bytes read from the transports |
//! | [`drpc_server_bytes_sent_total`](BYTES_SENT_TOTAL) | counter | | bytes written to the transports |
//! | [`drpc_server_shared_memory_held_bytes`](SHARED_MEMORY_HELD_BYTES) | gauge | | what the connections hold of the shared memory budget ([`ServerOptions::shared_memory`](crate::ServerOptions::shared_memory)), sampled at the end of each call |
//! | [`drpc_server_shared_write_memory_held_bytes`](SHARED_WRITE_MEMORY_HELD_BYTES) | gauge | | the same for the shared write budget ([`ServerOptions::shared_write_memory`](crate::ServerOptions::shared_write_memory)) |
//!
//! The `method` label is the registered path
//! ([`Handler::method_label`]); calls to
//! paths the handler does not serve are counted under `unknown`, so that
//! a peer cannot grow the label sets. Calls refused over a connection's
//! stream limit are answered inside the connection and not counted.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use drpc_mux::Handler;
use drpc_stream::MemoryBudget;
use drpc_wire::Code;
use metrics::{Counter, Gauge, Histogram, SharedString};

/// The span of a connection.
pub const CONNECTION_SPAN: &str = "drpc.server.connection";
/// The span of a call, a child of its connection's.
pub const CALL_SPAN: &str = "drpc.server.call";

/// Counter of calls ended, labelled `method` and `code`.
pub const CALLS_TOTAL: &str = "drpc_server_calls_total";
/// Histogram of call durations in seconds, labelled `method`.
pub const CALL_DURATION_SECONDS: &str = "drpc_server_call_duration_seconds";
/// Gauge of connections being served.
pub const CONNECTIONS: &str = "drpc_server_connections";
/// Gauge of calls being served.
pub const STREAMS: &str = "drpc_server_streams";
/// Counter of connections ended, labelled `reason`.
pub const CONNECTIONS_CLOSED_TOTAL: &str = "drpc_server_connections_closed_total";
/// Counter of refused connections and calls, labelled `reason`.
pub const REFUSED_TOTAL: &str = "drpc_server_refused_total";
/// Counter of bytes read from the transports.
pub const BYTES_RECEIVED_TOTAL: &str = "drpc_server_bytes_received_total";
/// Counter of bytes written to the transports.
pub const BYTES_SENT_TOTAL: &str = "drpc_server_bytes_sent_total";
/// Gauge of the bytes held of the shared memory budget.
pub const SHARED_MEMORY_HELD_BYTES: &str = "drpc_server_shared_memory_held_bytes";
/// Gauge of the bytes held of the shared write budget.
pub const SHARED_WRITE_MEMORY_HELD_BYTES: &str = "drpc_server_shared_write_memory_held_bytes";

/// The `method` label of calls to paths the handler does not serve.
const UNKNOWN_METHOD: &str = "unknown";

/// How many methods a connection keeps the handles of; past it (a
/// handler labelling every path its own), each call resolves them anew.
const MAX_CACHED_METHODS: usize = 256;

/// The code a call ended with, for spans, events and metrics: a handler's
/// error without a code (0) is `Unknown`, as its client sees it.
pub(crate) fn error_code(code: Code) -> Code {
    if code == Code::Ok {
        Code::Unknown
    } else {
        code
    }
}

/// The `code` label: gRPC's name, or `Other` above 16 (a bounded set).
fn code_label(code: Code) -> &'static str {
    code.name().unwrap_or("Other")
}

/// The longest RPC path the spans and events show in full: the peer
/// chooses it, up to the maximum message size.
const MAX_LOGGED_PATH: usize = 256;

/// Shows an RPC path, cut after [`MAX_LOGGED_PATH`] bytes (formatted only
/// by a subscriber that takes the field).
pub(crate) struct BoundedPath<'a>(pub(crate) &'a str);

impl std::fmt::Display for BoundedPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.0;
        if path.len() <= MAX_LOGGED_PATH {
            return f.write_str(path);
        }
        let mut end = MAX_LOGGED_PATH;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}... ({} bytes)", &path[..end], path.len())
    }
}

/// Counts a refusal.
pub(crate) fn refused(reason: &'static str) {
    metrics::counter!("drpc_server_refused_total", "reason" => reason).increment(1);
}

/// Counts a connection that ended.
pub(crate) fn connection_closed(reason: &'static str) {
    metrics::counter!("drpc_server_connections_closed_total", "reason" => reason).increment(1);
}

/// The byte counters of a transport, resolved once per connection.
pub(crate) fn byte_counters() -> (Counter, Counter) {
    (
        metrics::counter!("drpc_server_bytes_received_total"),
        metrics::counter!("drpc_server_bytes_sent_total"),
    )
}

/// One served connection in the `drpc_server_connections` gauge, until
/// dropped.
#[derive(Debug)]
pub(crate) struct OpenConnection(Gauge);

impl OpenConnection {
    pub(crate) fn new() -> OpenConnection {
        let gauge = metrics::gauge!("drpc_server_connections");
        gauge.increment(1.0);
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What a connection shares with the metrics of its methods.
struct Shared {
    streams: Gauge,
    memory: Option<(Gauge, Arc<MemoryBudget>)>,
    write_memory: Option<(Gauge, Arc<MemoryBudget>)>,
}

impl Shared {
    fn sample_budgets(&self) {
        for (gauge, budget) in [&self.memory, &self.write_memory].into_iter().flatten() {
            gauge.set(budget.held() as f64);
        }
    }
}

/// The metrics of one method on one connection: handles resolved once,
/// so that counting a call builds no key.
pub(crate) struct MethodMetrics {
    method: SharedString,
    duration: Histogram,
    /// By code, 0 to 16, then `Other`: resolved at their first use.
    calls: [OnceLock<Counter>; 18],
    shared: Arc<Shared>,
}

impl MethodMetrics {
    fn new(method: SharedString, shared: Arc<Shared>) -> MethodMetrics {
        MethodMetrics {
            duration: metrics::histogram!("drpc_server_call_duration_seconds", "method" => method.clone()),
            method,
            calls: Default::default(),
            shared,
        }
    }

    /// Counts the start of a call; the guard counts its end.
    pub(crate) fn start(self: Arc<Self>) -> CallGuard {
        self.shared.streams.increment(1.0);
        CallGuard(self)
    }

    /// Counts a call that ended with `code` after `took`.
    pub(crate) fn finish(&self, code: Code, took: Duration) {
        let index = usize::try_from(code.as_u64()).map_or(17, |i| i.min(17));
        self.calls[index]
            .get_or_init(|| {
                metrics::counter!(
                    "drpc_server_calls_total",
                    "method" => self.method.clone(),
                    "code" => code_label(code)
                )
            })
            .increment(1);
        self.duration.record(took.as_secs_f64());
        self.shared.sample_budgets();
    }
}

/// A call in the `drpc_server_streams` gauge, until dropped (also when
/// its task is dropped unfinished).
pub(crate) struct CallGuard(Arc<MethodMetrics>);

impl std::ops::Deref for CallGuard {
    type Target = MethodMetrics;
    fn deref(&self) -> &MethodMetrics {
        &self.0
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.shared.streams.decrement(1.0);
    }
}

/// A connection's metrics by method, kept on its reader task (no lock):
/// a call looks its path up once.
pub(crate) struct Methods {
    by_path: HashMap<Box<str>, Arc<MethodMetrics>, foldhash::fast::RandomState>,
    unknown: Option<Arc<MethodMetrics>>,
    shared: Arc<Shared>,
}

impl Methods {
    pub(crate) fn new(opts: &drpc_manager::ManagerOptions) -> Methods {
        let memory = opts
            .shared_memory
            .clone()
            .map(|b| (metrics::gauge!("drpc_server_shared_memory_held_bytes"), b));
        let write_memory = opts.shared_write_memory.clone().map(|b| {
            (
                metrics::gauge!("drpc_server_shared_write_memory_held_bytes"),
                b,
            )
        });
        Methods {
            by_path: HashMap::default(),
            unknown: None,
            shared: Arc::new(Shared {
                streams: metrics::gauge!("drpc_server_streams"),
                memory,
                write_memory,
            }),
        }
    }

    /// The metrics of calls to `rpc`.
    pub(crate) fn get(&mut self, handler: &dyn Handler, rpc: &str) -> Arc<MethodMetrics> {
        if let Some(found) = self.by_path.get(rpc) {
            return found.clone();
        }
        match handler.method_label(rpc) {
            Some(label) => {
                let found = Arc::new(MethodMetrics::new(label.into(), self.shared.clone()));
                if self.by_path.len() < MAX_CACHED_METHODS {
                    self.by_path.insert(rpc.into(), found.clone());
                }
                found
            }
            None => self
                .unknown
                .get_or_insert_with(|| {
                    Arc::new(MethodMetrics::new(
                        SharedString::const_str(UNKNOWN_METHOD),
                        self.shared.clone(),
                    ))
                })
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_in_logs_and_short_ones_kept() {
        assert_eq!(BoundedPath("/a.B/C").to_string(), "/a.B/C");
        let long = format!("/{}", "é".repeat(300));
        let shown = BoundedPath(&long).to_string();
        assert!(shown.ends_with("... (601 bytes)"), "{shown}");
        assert!(shown.len() < MAX_LOGGED_PATH + 20, "{}", shown.len());
    }

    #[test]
    fn codes_are_labelled_by_name_within_a_bounded_set() {
        assert_eq!(code_label(Code::Ok), "OK");
        assert_eq!(code_label(Code::NotFound), "NotFound");
        assert_eq!(code_label(Code::from_u64(42)), "Other");
        assert_eq!(error_code(Code::Ok), Code::Unknown);
        assert_eq!(error_code(Code::Aborted), Code::Aborted);
    }
}
