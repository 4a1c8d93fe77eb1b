//! What the server reports in spans and events, captured by a test
//! subscriber.
//!
//! The subscriber is the process's global one, set before anything is
//! logged: with a subscriber set per thread, a callsite that another
//! thread registered first may keep the interest it had then (tracing's
//! interest cache), which made such tests flaky. Alone in its binary, one
//! test runs the scenarios in turn.

mod observe_support;

use observe_support::*;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use drpc_server::{Server, observe};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

// --- the test subscriber ---

#[derive(Debug, Clone, Default)]
struct SpanRec {
    name: &'static str,
    parent: Option<&'static str>,
    fields: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct EventRec {
    level: String,
    fields: BTreeMap<String, String>,
    /// The names of the spans it is in, outermost first.
    scope: Vec<&'static str>,
}

#[derive(Debug, Default)]
struct Captured {
    /// Every span, in order of creation.
    spans: Vec<SpanRec>,
    /// The index in `spans` of each live span (the registry reuses ids).
    live: BTreeMap<u64, usize>,
    events: Vec<EventRec>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Captured>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut rec = SpanRec {
            name: attrs.metadata().name(),
            parent: ctx
                .span(id)
                .and_then(|s| s.parent())
                .map(|p| p.metadata().name()),
            ..SpanRec::default()
        };
        attrs.record(&mut Fields(&mut rec.fields));
        let mut captured = self.0.lock().unwrap();
        let index = captured.spans.len();
        captured.spans.push(rec);
        captured.live.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut captured = self.0.lock().unwrap();
        if let Some(&index) = captured.live.get(&id.into_u64()) {
            values.record(&mut Fields(&mut captured.spans[index].fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut rec = EventRec {
            level: event.metadata().level().to_string(),
            ..EventRec::default()
        };
        event.record(&mut Fields(&mut rec.fields));
        if let Some(scope) = ctx.event_scope(event) {
            rec.scope = scope.from_root().map(|s| s.metadata().name()).collect();
        }
        self.0.lock().unwrap().events.push(rec);
    }
}

impl Capture {
    fn clear(&self) {
        let mut captured = self.0.lock().unwrap();
        captured.spans.clear();
        captured.events.clear();
    }

    fn spans_named(&self, name: &str) -> Vec<SpanRec> {
        let captured = self.0.lock().unwrap();
        captured
            .spans
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    fn events_with(&self, message: &str) -> Vec<EventRec> {
        let captured = self.0.lock().unwrap();
        captured
            .events
            .iter()
            .filter(|e| e.fields.get("message").map(String::as_str) == Some(message))
            .cloned()
            .collect()
    }
}

#[tokio::test]
async fn spans_and_events() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    calls_have_info_spans_with_their_fields_under_the_connection_span(&capture).await;
    capture.clear();
    the_manager_span_nests_under_the_connection_span(&capture).await;
}

async fn calls_have_info_spans_with_their_fields_under_the_connection_span(capture: &Capture) {
    tokio::time::timeout(LIMIT, async {
        let server = Server::new(mux());
        let (task, conn) = connect(&server);
        assert_eq!(call(&conn, SLEEPY).await.expect("sleepy"), "hi");
        let err = call(&conn, FAIL).await.expect_err("fail");
        assert!(err.to_string().contains("no such thing"), "{err}");
        drop(conn);
        task.await.expect("connection task");
    })
    .await
    .expect("in time");

    // The connection: one INFO span, with the peer and an id.
    let conns = capture.spans_named(observe::CONNECTION_SPAN);
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].fields["peer"], PEER);
    assert!(conns[0].fields.contains_key("conn_id"), "{conns:?}");

    // The calls: children of the connection, with everything filled in.
    let calls = capture.spans_named(observe::CALL_SPAN);
    assert_eq!(calls.len(), 2, "{calls:?}");
    for span in &calls {
        assert_eq!(span.parent, Some(observe::CONNECTION_SPAN), "{span:?}");
        assert_eq!(span.fields["peer"], PEER, "{span:?}");
        assert!(span.fields.contains_key("stream_id"), "{span:?}");
        let ms: f64 = span.fields["duration_ms"].parse().expect("a number");
        assert!(ms >= 0.0, "{span:?}");
    }
    let sleepy = calls.iter().find(|s| s.fields["method"] == SLEEPY);
    let sleepy = sleepy.expect("the sleepy call's span");
    assert_eq!(sleepy.fields["code"], "OK");
    let ms: f64 = sleepy.fields["duration_ms"].parse().expect("a number");
    assert!(ms >= 1.0, "it slept 2 ms: {sleepy:?}");
    let fail = calls.iter().find(|s| s.fields["method"] == FAIL);
    assert_eq!(
        fail.expect("the failed call's span").fields["code"],
        "NotFound"
    );

    // What the handler logs after an await is in its call's span, itself
    // in the connection's.
    let lines = capture.events_with("handler line");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        lines[0].scope,
        [observe::CONNECTION_SPAN, observe::CALL_SPAN],
        "{lines:?}"
    );

    // One INFO "call finished" per call, with the code and latency.
    let finished = capture.events_with("call finished");
    assert_eq!(finished.len(), 2, "{finished:?}");
    for event in &finished {
        assert_eq!(event.level, "INFO");
        assert!(event.fields.contains_key("duration_ms"), "{event:?}");
        assert_eq!(event.scope.last(), Some(&observe::CALL_SPAN), "{event:?}");
    }
    let mut codes: Vec<_> = finished.iter().map(|e| e.fields["code"].clone()).collect();
    codes.sort();
    assert_eq!(codes, ["NotFound", "OK"]);

    // "handler failed" says the code.
    let failed = capture.events_with("handler failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].fields["code"], "NotFound");
    assert!(failed[0].fields["error"].contains("no such thing"));

    // The connection's life, at INFO, with why it ended.
    let opened = capture.events_with("connection opened");
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0].level, "INFO");
    assert_eq!(opened[0].scope, [observe::CONNECTION_SPAN]);
    let closed = capture.events_with("connection closed");
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].level, "INFO");
    assert_eq!(closed[0].fields["reason"], "peer_closed", "{closed:?}");
    assert_eq!(closed[0].scope, [observe::CONNECTION_SPAN]);
}

async fn the_manager_span_nests_under_the_connection_span(capture: &Capture) {
    tokio::time::timeout(LIMIT, async {
        let server = Server::new(mux());
        let (task, conn) = connect(&server);
        call(&conn, FAIL).await.expect_err("fail");
        drop(conn);
        task.await.expect("connection task");
    })
    .await
    .expect("in time");
    let managers = capture.spans_named("drpc.manager");
    let server_side: Vec<_> = managers
        .iter()
        .filter(|s| s.fields.get("role").map(String::as_str) == Some("Server"))
        .collect();
    assert_eq!(server_side.len(), 1, "{managers:?}");
    assert_eq!(server_side[0].parent, Some(observe::CONNECTION_SPAN));
}
