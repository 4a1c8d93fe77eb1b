//! The health service over DRPC: a real server on loopback TCP, the
//! generated DRPC client.

use std::future::Future;
use std::time::Duration;

use drpc_conn::{Code, Conn, ConnOptions, Prost, Responses};
use drpc_health::{
    HealthCheckRequest, HealthCheckResponse, HealthDrpcClient, HealthReporter, ServingStatus,
};
use drpc_mux::Mux;
use drpc_server::Server;
use tokio::net::TcpListener;

/// Upper bound of any one wait.
const LIMIT: Duration = Duration::from_secs(10);

/// A server with the health service on loopback, and a client of it.
struct Harness {
    reporter: HealthReporter,
    client: HealthDrpcClient<Conn>,
    server: Server,
}

impl Harness {
    async fn start() -> anyhow::Result<Harness> {
        let (reporter, health) = drpc_health::health_service();
        let mut mux = Mux::new();
        drpc_health::register(&mut mux, health);
        let server = Server::new(mux);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let serving = server.clone();
        tokio::spawn(async move { serving.serve_tcp(listener).await });
        let conn = Conn::connect_tcp(addr, ConnOptions::default()).await?;
        Ok(Harness {
            reporter,
            client: HealthDrpcClient::new(conn),
            server,
        })
    }

    async fn check(&self, service: &str) -> Result<ServingStatus, drpc_conn::Error> {
        let answer = within(self.client.check(&request(service))).await?;
        Ok(answer.status())
    }

    async fn watch(&self, service: &str) -> anyhow::Result<Responses<HealthCheckResponse, Prost>> {
        Ok(within(self.client.watch(&request(service))).await?)
    }
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("timed out waiting")
}

/// The next status a Watch sends.
async fn next(watch: &mut Responses<HealthCheckResponse, Prost>) -> anyhow::Result<ServingStatus> {
    let msg = within(watch.message()).await?;
    Ok(msg.expect("the watch went on").status())
}

/// The Watch ends cleanly, with nothing more sent.
async fn ended(watch: &mut Responses<HealthCheckResponse, Prost>) -> anyhow::Result<()> {
    let msg = within(watch.message()).await?;
    assert_eq!(msg, None, "the watch ended");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_overall_known_and_unknown() -> anyhow::Result<()> {
    let h = Harness::start().await?;

    // The server as a whole starts serving.
    assert_eq!(h.check("").await?, ServingStatus::Serving);

    // A service is unknown until set.
    let err = h.check("greeter.v1.Greeter").await.expect_err("unknown");
    assert_eq!(err.code(), Some(Code::NotFound));
    assert!(err.to_string().contains("unknown service"), "{err}");

    h.reporter.set_serving("greeter.v1.Greeter");
    assert_eq!(h.check("greeter.v1.Greeter").await?, ServingStatus::Serving);
    h.reporter.set_not_serving("greeter.v1.Greeter");
    assert_eq!(
        h.check("greeter.v1.Greeter").await?,
        ServingStatus::NotServing
    );
    h.reporter
        .set_status("greeter.v1.Greeter", ServingStatus::Unknown);
    assert_eq!(h.check("greeter.v1.Greeter").await?, ServingStatus::Unknown);

    // Other services are unaffected, and the overall status is its own.
    let err = h.check("other.v1.Other").await.expect_err("unknown");
    assert_eq!(err.code(), Some(Code::NotFound));
    assert_eq!(h.check("").await?, ServingStatus::Serving);
    h.reporter.set_not_serving("");
    assert_eq!(h.check("").await?, ServingStatus::NotServing);
    h.reporter.set_serving("");

    // Cleared, the service is unknown again.
    h.reporter.clear("greeter.v1.Greeter");
    let err = h.check("greeter.v1.Greeter").await.expect_err("cleared");
    assert_eq!(err.code(), Some(Code::NotFound));
    assert_eq!(h.reporter.status("greeter.v1.Greeter"), None);

    // set_all_not_serving reaches every known service and the whole.
    h.reporter.set_serving("a");
    h.reporter.set_serving("b");
    h.reporter.set_all_not_serving();
    for service in ["", "a", "b"] {
        assert_eq!(
            h.check(service).await?,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    // ...without making unknown services known.
    let err = h
        .check("greeter.v1.Greeter")
        .await
        .expect_err("still unknown");
    assert_eq!(err.code(), Some(Code::NotFound));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_every_change_in_order() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let svc = "greeter.v1.Greeter";
    h.reporter.set_serving(svc);

    let mut watch = h.watch(svc).await?;
    assert_eq!(next(&mut watch).await?, ServingStatus::Serving);

    h.reporter.set_not_serving(svc);
    assert_eq!(next(&mut watch).await?, ServingStatus::NotServing);

    // Setting the status it has sends nothing: the next message is the
    // next change.
    h.reporter.set_not_serving(svc);
    h.reporter.set_not_serving(svc);
    h.reporter.set_serving(svc);
    assert_eq!(next(&mut watch).await?, ServingStatus::Serving);

    // Changes of other services are not sent.
    h.reporter.set_not_serving("other.v1.Other");
    h.reporter.set_not_serving("");
    h.reporter.set_not_serving(svc);
    assert_eq!(next(&mut watch).await?, ServingStatus::NotServing);

    // Another watcher of the same service starts from the current status.
    let mut second = h.watch(svc).await?;
    assert_eq!(next(&mut second).await?, ServingStatus::NotServing);
    h.reporter.set_serving(svc);
    assert_eq!(next(&mut watch).await?, ServingStatus::Serving);
    assert_eq!(next(&mut second).await?, ServingStatus::Serving);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_of_an_unknown_service_waits_for_it() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let svc = "late.v1.Late";

    // Unknown is a status for Watch, not an error: the call goes on.
    let mut watch = h.watch(svc).await?;
    assert_eq!(next(&mut watch).await?, ServingStatus::ServiceUnknown);

    h.reporter.set_serving(svc);
    assert_eq!(next(&mut watch).await?, ServingStatus::Serving);
    assert_eq!(h.check(svc).await?, ServingStatus::Serving);

    // Cleared, it is unknown again, and the watch still goes on.
    h.reporter.clear(svc);
    assert_eq!(next(&mut watch).await?, ServingStatus::ServiceUnknown);
    h.reporter.set_not_serving(svc);
    assert_eq!(next(&mut watch).await?, ServingStatus::NotServing);

    // Watching a made-up name does not make it known to Check.
    let mut made_up = h.watch("made.up.Name").await?;
    assert_eq!(next(&mut made_up).await?, ServingStatus::ServiceUnknown);
    let err = h.check("made.up.Name").await.expect_err("unknown");
    assert_eq!(err.code(), Some(Code::NotFound));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_all_not_serving_is_seen_by_watchers() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.reporter.set_serving("a");
    let mut overall = h.watch("").await?;
    let mut a = h.watch("a").await?;
    let mut unknown = h.watch("unknown").await?;
    assert_eq!(next(&mut overall).await?, ServingStatus::Serving);
    assert_eq!(next(&mut a).await?, ServingStatus::Serving);
    assert_eq!(next(&mut unknown).await?, ServingStatus::ServiceUnknown);

    h.reporter.set_all_not_serving();
    assert_eq!(next(&mut overall).await?, ServingStatus::NotServing);
    assert_eq!(next(&mut a).await?, ServingStatus::NotServing);

    // The watches go on, and statuses can change again; the unknown
    // service's watcher got nothing from set_all_not_serving.
    h.reporter.set_serving("a");
    h.reporter.set_serving("unknown");
    assert_eq!(next(&mut a).await?, ServingStatus::Serving);
    assert_eq!(next(&mut unknown).await?, ServingStatus::Serving);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_not_serving_then_ends_watches() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.reporter.set_serving("a");
    let mut overall = h.watch("").await?;
    let mut a = h.watch("a").await?;
    let mut unknown = h.watch("unknown").await?;
    assert_eq!(next(&mut overall).await?, ServingStatus::Serving);
    assert_eq!(next(&mut a).await?, ServingStatus::Serving);
    assert_eq!(next(&mut unknown).await?, ServingStatus::ServiceUnknown);

    h.reporter.shutdown();
    assert!(h.reporter.is_shut_down());
    assert_eq!(next(&mut overall).await?, ServingStatus::NotServing);
    ended(&mut overall).await?;
    assert_eq!(next(&mut a).await?, ServingStatus::NotServing);
    ended(&mut a).await?;
    ended(&mut unknown).await?;

    // Later changes are ignored; Check goes on answering.
    h.reporter.set_serving("a");
    h.reporter.set_serving("new");
    h.reporter.clear("a");
    h.reporter.set_all_not_serving();
    assert_eq!(h.check("").await?, ServingStatus::NotServing);
    assert_eq!(h.check("a").await?, ServingStatus::NotServing);
    assert_eq!(
        h.check("new").await.expect_err("ignored").code(),
        Some(Code::NotFound)
    );

    // A new watch gets the status and ends.
    let mut late = h.watch("a").await?;
    assert_eq!(next(&mut late).await?, ServingStatus::NotServing);
    ended(&mut late).await?;

    // With no watch left in flight, the server's graceful shutdown does
    // not wait out its grace period.
    within(h.server.shutdown(Duration::from_secs(60))).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_shutdown() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.reporter.set_serving("a");
    h.reporter.shutdown();
    h.reporter.shutdown(); // again: nothing more
    assert_eq!(h.check("a").await?, ServingStatus::NotServing);

    h.reporter.resume();
    assert!(!h.reporter.is_shut_down());
    assert_eq!(h.check("").await?, ServingStatus::Serving);
    assert_eq!(h.check("a").await?, ServingStatus::Serving);

    // Watches stream again, and changes are taken again.
    let mut a = h.watch("a").await?;
    assert_eq!(next(&mut a).await?, ServingStatus::Serving);
    h.reporter.set_not_serving("a");
    assert_eq!(next(&mut a).await?, ServingStatus::NotServing);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_watch_leaves_the_others_going() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.reporter.set_serving("a");
    let mut kept = h.watch("a").await?;
    let mut dropped = h.watch("a").await?;
    assert_eq!(next(&mut kept).await?, ServingStatus::Serving);
    assert_eq!(next(&mut dropped).await?, ServingStatus::Serving);
    drop(dropped); // cancels that call

    h.reporter.set_not_serving("a");
    assert_eq!(next(&mut kept).await?, ServingStatus::NotServing);
    // The connection still serves calls.
    assert_eq!(h.check("a").await?, ServingStatus::NotServing);
    Ok(())
}
