//! The health service over gRPC, through the generated adapter served by
//! tonic, asked by tonic's client generated from the same proto; and the
//! same statuses over DRPC at once.
#![cfg(feature = "grpc")]

use std::future::Future;
use std::time::Duration;

use drpc_conn::{Conn, ConnOptions, Prost, Responses};
use drpc_health::pb::health_client::HealthClient;
use drpc_health::{HealthCheckRequest, HealthCheckResponse, HealthDrpcClient, ServingStatus};
use drpc_mux::Mux;
use drpc_server::Server;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

/// Upper bound of any one wait.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("timed out waiting")
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

/// Serves `service` over gRPC on loopback; a tonic client of it.
async fn serve_grpc(service: drpc_health::HealthService) -> anyhow::Result<HealthClient<Channel>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(drpc_health::grpc_service(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(within(HealthClient::connect(format!("http://{addr}"))).await?)
}

async fn check(
    client: &mut HealthClient<Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let answer = within(client.check(request(service))).await?;
    Ok(answer.into_inner().status())
}

/// The next status a gRPC Watch sends.
async fn next(watch: &mut tonic::Streaming<HealthCheckResponse>) -> anyhow::Result<ServingStatus> {
    let msg = within(watch.message()).await?;
    Ok(msg.expect("the watch went on").status())
}

/// The next status a DRPC Watch sends.
async fn drpc_next(
    watch: &mut Responses<HealthCheckResponse, Prost>,
) -> anyhow::Result<ServingStatus> {
    let msg = within(watch.message()).await?;
    Ok(msg.expect("the watch went on").status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_over_grpc() -> anyhow::Result<()> {
    let (reporter, health) = drpc_health::health_service();
    let mut client = serve_grpc(health).await?;

    assert_eq!(check(&mut client, "").await?, ServingStatus::Serving);
    let status = check(&mut client, "greeter.v1.Greeter")
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "unknown service");

    reporter.set_serving("greeter.v1.Greeter");
    assert_eq!(
        check(&mut client, "greeter.v1.Greeter").await?,
        ServingStatus::Serving
    );
    reporter.set_not_serving("greeter.v1.Greeter");
    assert_eq!(
        check(&mut client, "greeter.v1.Greeter").await?,
        ServingStatus::NotServing
    );
    reporter.set_all_not_serving();
    assert_eq!(check(&mut client, "").await?, ServingStatus::NotServing);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_over_grpc_and_drpc_at_once() -> anyhow::Result<()> {
    let (reporter, health) = drpc_health::health_service();
    let mut grpc = serve_grpc(health.clone()).await?;

    // The same service over DRPC.
    let mut mux = Mux::new();
    drpc_health::register(&mut mux, health);
    let server = Server::new(mux);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { server.serve_tcp(listener).await });
    let drpc = HealthDrpcClient::new(Conn::connect_tcp(addr, ConnOptions::default()).await?);

    let svc = "greeter.v1.Greeter";
    let mut grpc_watch = within(grpc.watch(request(svc))).await?.into_inner();
    let mut drpc_watch = within(drpc.watch(&request(svc))).await?;

    // Unknown at first, then every change, in order, on both.
    assert_eq!(next(&mut grpc_watch).await?, ServingStatus::ServiceUnknown);
    assert_eq!(
        drpc_next(&mut drpc_watch).await?,
        ServingStatus::ServiceUnknown
    );
    for status in [
        ServingStatus::Serving,
        ServingStatus::NotServing,
        ServingStatus::Serving,
    ] {
        reporter.set_status(svc, status);
        reporter.set_status(svc, status); // unchanged: sends nothing
        assert_eq!(next(&mut grpc_watch).await?, status);
        assert_eq!(drpc_next(&mut drpc_watch).await?, status);
    }

    // Shutdown: NotServing, then the end of the call, with status OK.
    reporter.shutdown();
    assert_eq!(next(&mut grpc_watch).await?, ServingStatus::NotServing);
    assert_eq!(within(grpc_watch.message()).await?, None);
    assert_eq!(drpc_next(&mut drpc_watch).await?, ServingStatus::NotServing);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_all_not_serving_reaches_a_grpc_watch() -> anyhow::Result<()> {
    let (reporter, health) = drpc_health::health_service();
    let mut client = serve_grpc(health).await?;
    let mut overall = within(client.watch(request(""))).await?.into_inner();
    assert_eq!(next(&mut overall).await?, ServingStatus::Serving);
    reporter.set_all_not_serving();
    assert_eq!(next(&mut overall).await?, ServingStatus::NotServing);
    reporter.set_serving("");
    assert_eq!(next(&mut overall).await?, ServingStatus::Serving);
    Ok(())
}
