//! The bench runner and the TCP baselines produce one well-formed line.

use std::time::Duration;

use drpc_interop::bench::{BenchConfig, BenchResult, Kind, Size, run_bench};
use drpc_interop::tcp::{Mode, echo_server, run_tcp_bench};
use drpc_interop::{ServeOptions, serve};

/// Checks the line against the contract's format and returns its fields.
fn check_line(
    line: &str,
    kind: &str,
    size: &str,
    conc: usize,
    conns: usize,
) -> Vec<(String, String)> {
    assert!(!line.contains('\n'), "one line: {line:?}");
    let fields: Vec<(String, String)> = line
        .split(' ')
        .map(|f| {
            let (k, v) = f
                .split_once('=')
                .unwrap_or_else(|| panic!("field {f:?} in {line:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "kind",
            "size",
            "conc",
            "conns",
            "ops",
            "ops_per_s",
            "mb_per_s",
            "mean_us",
            "p50_us",
            "p99_us"
        ],
        "{line}"
    );
    assert_eq!(fields[0].1, kind);
    assert_eq!(fields[1].1, size);
    assert_eq!(fields[2].1, conc.to_string());
    assert_eq!(fields[3].1, conns.to_string());
    let ops: u64 = fields[4].1.parse().expect("ops is an integer");
    assert!(ops > 0, "no operation in {line}");
    let _: u64 = fields[5].1.parse().expect("ops_per_s is an integer");
    for (k, v) in &fields[6..] {
        let (int, frac) = v
            .split_once('.')
            .unwrap_or_else(|| panic!("{k}={v} has decimals"));
        assert!(
            int.chars().all(|c| c.is_ascii_digit()) && !int.is_empty(),
            "{k}={v}"
        );
        let decimals = if k == "mb_per_s" { 2 } else { 1 };
        assert_eq!(frac.len(), decimals, "{k}={v}");
        let x: f64 = v.parse().expect("a number");
        assert!(x >= 0.0);
    }
    fields
}

fn check_result(r: &BenchResult) {
    assert!(r.p50_us <= r.p99_us, "{r}");
    assert!(r.mean_us > 0.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_produces_a_line() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let server = serve(&ServeOptions::default());
    let serving = server.clone();
    tokio::spawn(async move { serving.serve_tcp(listener).await });

    for kind in [Kind::Unary, Kind::InStream, Kind::OutStream, Kind::Bidi] {
        for (size, conc, conns, sequential) in [
            (Size::Small, 1, 1, false),
            (Size::Med, 4, 2, false),
            (Size::Small, 3, 3, true),
        ] {
            let mut cfg = BenchConfig::new(addr.clone(), kind, size);
            cfg.duration = Duration::from_millis(200);
            cfg.conc = conc;
            cfg.conns = conns;
            cfg.sequential = sequential;
            let r = run_bench(&cfg)
                .await
                .unwrap_or_else(|e| panic!("{kind:?} {size:?}: {e}"));
            check_line(&r.to_string(), kind.name(), size.name(), conc, conns);
            check_result(&r);
        }
    }
    let mut large = BenchConfig::new(addr.clone(), Kind::OutStream, Size::Large);
    large.duration = Duration::from_millis(200);
    let r = run_bench(&large).await.expect("outstream large");
    check_line(&r.to_string(), "outstream", "large", 1, 1);
    let expected_mb = r.ops_per_s * Size::Large.encoded_len() as f64 / 1e6;
    assert!((r.mb_per_s - expected_mb).abs() < 1e-6 * expected_mb.max(1.0));

    // Sequential streams stay open for the whole run: one connection each.
    let mut shared = BenchConfig::new(addr.clone(), Kind::Bidi, Size::Small);
    shared.duration = Duration::from_millis(200);
    (shared.conc, shared.conns, shared.sequential) = (2, 1, true);
    let err = run_bench(&shared).await.expect_err("refused");
    assert!(err.contains("one connection per task"), "{err}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_baselines_produce_a_line() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    tokio::spawn(echo_server(listener));
    for mode in [Mode::PingPong, Mode::OneWay] {
        for size in [Size::Small, Size::Med, Size::Large] {
            let r = run_tcp_bench(&addr, mode, size, Duration::from_millis(200))
                .await
                .unwrap_or_else(|e| panic!("{mode:?} {size:?}: {e}"));
            check_line(&r.to_string(), mode.kind(), size.name(), 1, 1);
            check_result(&r);
        }
    }
}

/// The tonic server and bench client: every kind produces a well-formed
/// line, and the service answers the contract's messages and counts.
#[cfg(feature = "grpc")]
mod grpc {
    use super::*;
    use drpc_interop::grpc::pb::service_client::ServiceClient;
    use drpc_interop::grpc::{run_grpc_bench, serve_grpc};
    use drpc_interop::pb::In;
    use tokio::sync::oneshot;

    /// Starts the tonic server on a free port; it stops when the sender
    /// is dropped.
    async fn start() -> (String, oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve_grpc(listener, 4 << 20, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_kind_produces_a_line() {
        let (addr, _stop) = start().await;
        for kind in [Kind::Unary, Kind::InStream, Kind::OutStream, Kind::Bidi] {
            for (size, conc, conns) in [(Size::Small, 1, 1), (Size::Med, 4, 2)] {
                let mut cfg = BenchConfig::new(addr.clone(), kind, size);
                cfg.duration = Duration::from_millis(150);
                (cfg.conc, cfg.conns) = (conc, conns);
                // Client streams end by checking the server's count
                // against what was sent, bidi streams by a clean end.
                let r = run_grpc_bench(&cfg)
                    .await
                    .unwrap_or_else(|e| panic!("{kind:?} {size:?}: {e}"));
                check_line(&r.to_string(), kind.name(), size.name(), conc, conns);
                check_result(&r);
            }
        }
        let mut large = BenchConfig::new(addr.clone(), Kind::OutStream, Size::Large);
        large.duration = Duration::from_millis(150);
        let r = run_grpc_bench(&large).await.expect("outstream large");
        check_line(&r.to_string(), "outstream", "large", 1, 1);

        let mut sequential = BenchConfig::new(addr, Kind::Unary, Size::Small);
        sequential.sequential = true;
        let err = run_grpc_bench(&sequential).await.expect_err("refused");
        assert!(err.contains("no sequential mode"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_service_follows_the_contract() {
        let (addr, _stop) = start().await;
        let mut client = ServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let req = |n: i64| In {
            r#in: n,
            buf: vec![7u8; 3].into(),
            opt: Some(9),
        };

        let out = client.method1(req(5)).await.expect("echo").into_inner();
        assert_eq!(
            (out.out, &out.buf[..], out.opt),
            (5, &[7u8; 3][..], Some(9))
        );
        let status = client.method1(req(-1)).await.expect_err("boom");
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::Unknown, "boom")
        );
        let mut with_metadata = tonic::Request::new(req(-3));
        with_metadata
            .metadata_mut()
            .insert("b-key", "2".parse().expect("value"));
        with_metadata
            .metadata_mut()
            .insert("a-key", "1".parse().expect("value"));
        let out = client
            .method1(with_metadata)
            .await
            .expect("-3")
            .into_inner();
        assert_eq!(out.out, 2);
        assert_eq!(&out.buf[..], b"a-key=1\nb-key=2\n");

        let requests = tokio_stream::iter((0..1000).map(req));
        let out = client
            .method2(requests)
            .await
            .expect("method2")
            .into_inner();
        assert_eq!(
            (out.out, &out.buf[..], out.opt),
            (1000, &[7u8; 3][..], Some(9))
        );
        let empty = tokio_stream::iter(Vec::<In>::new());
        let out = client.method2(empty).await.expect("empty").into_inner();
        assert_eq!(out.out, 0);

        let mut responses = client
            .method3(req(1000))
            .await
            .expect("method3")
            .into_inner();
        let mut count = 0;
        while let Some(out) = responses.message().await.expect("receive") {
            assert_eq!((out.out, &out.buf[..]), (1, &[7u8; 3][..]));
            count += 1;
        }
        assert_eq!(count, 1000);

        let mut responses = client
            .method4(tokio_stream::iter((0..100).map(req)))
            .await
            .expect("method4")
            .into_inner();
        let mut echoed = Vec::new();
        while let Some(out) = responses.message().await.expect("receive") {
            echoed.push(out.out);
        }
        assert_eq!(echoed, (0..100).collect::<Vec<i64>>());
    }
}
