//! Every scenario against the in-process server, multiplexed and
//! sequential.

use drpc_interop::scenarios::{ClientConfig, SCENARIOS, run_scenarios};
use drpc_interop::{ServeOptions, serve};

async fn start_server() -> (String, drpc_server::Server) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let server = serve(&ServeOptions::default());
    let serving = server.clone();
    tokio::spawn(async move { serving.serve_tcp(listener).await });
    (addr, server)
}

async fn run_all(sequential: bool) {
    let (addr, server) = start_server().await;
    let mut cfg = ClientConfig::new(addr);
    cfg.sequential = sequential;
    let report = run_scenarios(&cfg, SCENARIOS).await;
    println!("{report}");
    assert_eq!(report.results.len(), SCENARIOS.len());
    assert_eq!(report.failed(), 0, "{report}");
    server.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_scenarios_multiplexed() {
    run_all(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_scenarios_sequential() {
    run_all(true).await;
}

/// Every scenario with every call compressed (`--compression snappy`):
/// the server follows each call, and nothing a scenario checks changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_scenarios_compressed() {
    let (addr, server) = start_server().await;
    let mut cfg = ClientConfig::new(addr);
    cfg.compression = drpc_interop::parse_compression("snappy").expect("a known compression");
    let report = run_scenarios(&cfg, SCENARIOS).await;
    println!("{report}");
    assert_eq!(report.failed(), 0, "{report}");
    assert_eq!(drpc_interop::parse_compression("none"), Ok(None));
    assert!(drpc_interop::parse_compression("zstd").is_err());
    server.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_passes_when_the_client_limit_is_raised() {
    // The client sends the 5 MiB request; the server (4 MiB) refuses it by
    // ending the connection.
    let (addr, server) = start_server().await;
    let mut cfg = ClientConfig::new(addr);
    cfg.max_message_size = 8 << 20;
    let report = run_scenarios(&cfg, &["oversize_message", "empty_unary"]).await;
    assert_eq!(report.failed(), 0, "{report}");
    server.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_fails_against_a_raised_server_limit() {
    // A server that accepts 5 MiB makes the scenario fail: it checks the
    // default limit.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let server = serve(&ServeOptions {
        max_message_size: 8 << 20,
        ..ServeOptions::default()
    });
    let serving = server.clone();
    tokio::spawn(async move { serving.serve_tcp(listener).await });
    let mut cfg = ClientConfig::new(addr);
    cfg.max_message_size = 8 << 20;
    let report = run_scenarios(&cfg, &["oversize_message"]).await;
    assert_eq!(report.failed(), 1, "{report}");
    server.shutdown(std::time::Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unknown_scenario_fails() {
    let report = run_scenarios(&ClientConfig::new("127.0.0.1:1"), &["nope"]).await;
    assert_eq!(report.failed(), 1);
    assert!(
        report
            .to_string()
            .starts_with("FAIL nope: unknown scenario")
    );
    assert!(report.to_string().ends_with("0 passed, 1 failed"));
}
