//! The server's metrics, counted by a test recorder.
//!
//! Each test runs on a current-thread runtime, with the recorder set for
//! that thread alone: the server, its connections and its handlers all
//! run there.

mod observe_support;

use observe_support::*;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use drpc_conn::{Conn, ConnOptions};
use drpc_server::{PeerInfo, Server, ServerOptions, observe};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

// --- the test recorder ---

#[derive(Default)]
struct Values {
    counters: BTreeMap<String, Arc<AtomicU64>>,
    gauges: BTreeMap<String, Arc<TestGauge>>,
    histograms: BTreeMap<String, Arc<TestHistogram>>,
}

/// Keeps every value; unlike a snapshotting recorder, reading does not
/// reset them.
#[derive(Clone, Default)]
struct TestRecorder(Arc<Mutex<Values>>);

#[derive(Default)]
struct TestGauge(Mutex<f64>);

#[derive(Default)]
struct TestHistogram(Mutex<Vec<f64>>);

struct TestCounter(Arc<AtomicU64>);

impl CounterFn for TestCounter {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl GaugeFn for TestGauge {
    fn increment(&self, value: f64) {
        *self.0.lock().unwrap() += value;
    }
    fn decrement(&self, value: f64) {
        *self.0.lock().unwrap() -= value;
    }
    fn set(&self, value: f64) {
        *self.0.lock().unwrap() = value;
    }
}

impl HistogramFn for TestHistogram {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// `name{a=x,b=y}`, labels in their order.
fn key_string(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    if labels.is_empty() {
        key.name().to_string()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut values = self.0.lock().unwrap();
        let c = values.counters.entry(key_string(key)).or_default().clone();
        Counter::from_arc(Arc::new(TestCounter(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut values = self.0.lock().unwrap();
        Gauge::from_arc(values.gauges.entry(key_string(key)).or_default().clone())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut values = self.0.lock().unwrap();
        Histogram::from_arc(
            values
                .histograms
                .entry(key_string(key))
                .or_default()
                .clone(),
        )
    }
}

impl TestRecorder {
    fn counter(&self, key: &str) -> u64 {
        let values = self.0.lock().unwrap();
        values
            .counters
            .get(key)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn gauge(&self, key: &str) -> Option<f64> {
        let values = self.0.lock().unwrap();
        values.gauges.get(key).map(|g| *g.0.lock().unwrap())
    }

    fn histogram(&self, key: &str) -> Vec<f64> {
        let values = self.0.lock().unwrap();
        values
            .histograms
            .get(key)
            .map(|h| h.0.lock().unwrap().clone())
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code_and_track_connections() {
    let recorder = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&recorder);
    tokio::time::timeout(LIMIT, async {
        let server = Server::new(mux());
        let (task, conn) = connect(&server);
        call(&conn, SLEEPY).await.expect("sleepy");
        call(&conn, SLEEPY).await.expect("sleepy");
        call(&conn, FAIL).await.expect_err("fail");
        call(&conn, "/t.Obs/Nope").await.expect_err("unknown");
        call(&conn, "/t.Obs/AlsoNope").await.expect_err("unknown");
        assert_eq!(recorder.gauge(observe::CONNECTIONS), Some(1.0));
        assert_eq!(recorder.gauge(observe::STREAMS), Some(0.0));
        drop(conn);
        task.await.expect("connection task");
    })
    .await
    .expect("in time");

    let calls = |method: &str, code: &str| {
        recorder.counter(&format!(
            "{}{{method={method},code={code}}}",
            observe::CALLS_TOTAL
        ))
    };
    assert_eq!(calls(SLEEPY, "OK"), 2);
    assert_eq!(calls(FAIL, "NotFound"), 1);
    // Paths the mux does not serve share one label.
    assert_eq!(calls("unknown", "Unimplemented"), 2);

    let durations = recorder.histogram(&format!(
        "{}{{method={SLEEPY}}}",
        observe::CALL_DURATION_SECONDS
    ));
    assert_eq!(durations.len(), 2, "{durations:?}");
    assert!(
        durations.iter().all(|s| (0.001..10.0).contains(s)),
        "{durations:?}"
    );

    assert_eq!(recorder.gauge(observe::CONNECTIONS), Some(0.0));
    assert_eq!(recorder.gauge(observe::STREAMS), Some(0.0));
    assert_eq!(
        recorder.counter(&format!(
            "{}{{reason=peer_closed}}",
            observe::CONNECTIONS_CLOSED_TOTAL
        )),
        1
    );
    assert!(recorder.counter(observe::BYTES_RECEIVED_TOTAL) > 0);
    assert!(recorder.counter(observe::BYTES_SENT_TOTAL) > 0);
    // The default options have a shared budget: sampled, empty by now.
    assert!(recorder.gauge(observe::SHARED_MEMORY_HELD_BYTES).is_some());
}

#[tokio::test]
async fn refusals_over_max_connections_are_counted() {
    let recorder = TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&recorder);
    tokio::time::timeout(LIMIT, async {
        let server = Server::with_options(mux(), ServerOptions::new().max_connections(1));
        let (first, served_first) = tokio::io::duplex(64 * 1024);
        let (second, served_second) = tokio::io::duplex(64 * 1024);
        let incoming = futures_util::stream::iter([
            Ok((served_first, PeerInfo::unknown())),
            Ok((served_second, PeerInfo::unknown())),
        ]);
        let serving = tokio::spawn({
            let server = server.clone();
            async move { server.serve_incoming(incoming).await }
        });
        let conn = Conn::new(first, ConnOptions::default());
        call(&conn, SLEEPY).await.expect("the first is served");
        drop(second);
        drop(conn);
        serving.await.expect("join").expect("served");
    })
    .await
    .expect("in time");
    assert_eq!(
        recorder.counter(&format!(
            "{}{{reason=max_connections}}",
            observe::REFUSED_TOTAL
        )),
        1
    );
    assert_eq!(recorder.gauge(observe::CONNECTIONS), Some(0.0));
}
