//! Balancing over three servers, one of them stopped and restarted while
//! calls go on.
//!
//! Serves the Greeter service on three loopback ports, makes calls from
//! four tasks through one balanced [`Channel`] (power of two choices over
//! the calls in flight), stops `server-1` and later starts it again on
//! the same port, and prints who answered in each phase. While `server-1`
//! is down the channel leaves it out and redials it with backoff; nothing
//! is retried, so only calls in flight on it when it stopped fail.
//!
//! Run it with `cargo run -p drpc-examples --bin balance`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drpc_conn::{Backoff, Channel, Connectivity, Endpoint};
use drpc_mux::{CodedError, Mux, RequestContext};
use drpc_server::Server;

/// The generated code: messages, `GreeterDrpcClient`, `GreeterDrpcServer`.
pub mod greeter {
    include!(concat!(env!("OUT_DIR"), "/greeter.v1.rs"));
}

use greeter::*;

/// A Greeter that says which server it is.
struct Named(String);

impl GreeterDrpcServer for Named {
    async fn say_hello(
        &self,
        _ctx: RequestContext,
        request: HelloRequest,
    ) -> Result<HelloReply, CodedError> {
        // A little work, so that calls overlap.
        tokio::time::sleep(Duration::from_micros(200)).await;
        Ok(HelloReply {
            message: format!("{} greets {}", self.0, request.name),
        })
    }
}

/// A server on `addr` (port 0 for a new one) and the task serving it.
struct Running {
    addr: SocketAddr,
    server: Server,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(name: &str, addr: SocketAddr) -> anyhow::Result<Running> {
    let mut mux = Mux::new();
    register_greeter_drpc(&mut mux, Arc::new(Named(name.to_owned())));
    let server = Server::new(mux);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve_tcp(listener).await }
    });
    Ok(Running {
        addr,
        server,
        serving,
    })
}

impl Running {
    /// Stops accepting and ends every connection (calls in flight get
    /// Unavailable); the port is free again when it returns.
    async fn stop(self) -> anyhow::Result<()> {
        self.server.shutdown(Duration::from_millis(10)).await;
        self.serving.await??;
        Ok(())
    }
}

const PHASES: [&str; 3] = ["all three up", "server-1 stopped", "server-1 restarted"];

/// What the callers saw, by the phase their calls started in.
#[derive(Default)]
struct Tally {
    answered: [BTreeMap<String, usize>; 3],
    failed: [usize; 3],
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let mut servers = Vec::new();
    for i in 0..3 {
        servers.push(Some(start(&format!("server-{i}"), loopback).await?));
    }
    let addrs: Vec<SocketAddr> = servers.iter().flatten().map(|s| s.addr).collect();
    for (i, addr) in addrs.iter().enumerate() {
        println!("server-{i} listening on {addr}");
    }

    // One channel over the three; short backoff so that the restart is
    // noticed quickly.
    let backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        ..Backoff::default()
    };
    let channel = Channel::balance_list(
        addrs
            .iter()
            .map(|addr| Endpoint::tcp(addr.to_string()).backoff(backoff)),
    );

    let phase = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut callers = Vec::new();
    for caller in 0..4 {
        let client = GreeterDrpcClient::new(channel.clone());
        let (phase, done, tally) = (phase.clone(), done.clone(), tally.clone());
        callers.push(tokio::spawn(async move {
            let request = HelloRequest {
                name: format!("caller-{caller}"),
            };
            while !done.load(Ordering::Relaxed) {
                // Counted in the phase the call started in.
                let p = phase.load(Ordering::SeqCst);
                let result = client.say_hello(&request).await;
                let mut tally = tally.lock().unwrap();
                match result {
                    Ok(reply) => {
                        let server = reply.message.split(' ').next().unwrap_or("").to_owned();
                        *tally.answered[p].entry(server).or_insert(0) += 1;
                    }
                    Err(e) => {
                        assert!(e.is_unavailable(), "unexpected error: {e}");
                        tally.failed[p] += 1;
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(server) = servers[1].take() {
        server.stop().await?;
    }
    phase.store(1, Ordering::SeqCst);
    println!("server-1 stopped");
    tokio::time::sleep(Duration::from_millis(300)).await;

    servers[1] = Some(start("server-1", addrs[1]).await?);
    phase.store(2, Ordering::SeqCst);
    println!("server-1 restarted on {}", addrs[1]);
    // Until the channel has reconnected and server-1 answered a while.
    let addr1 = addrs[1].to_string();
    let back = async {
        loop {
            let ready = channel
                .endpoints()
                .iter()
                .any(|(a, c)| *a == addr1 && *c == Connectivity::Ready);
            let answered = tally.lock().unwrap().answered[2]
                .get("server-1")
                .copied()
                .unwrap_or(0);
            if ready && answered >= 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), back).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    done.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await?;
    }

    print_summary(&tally.lock().unwrap());

    for server in servers.into_iter().flatten() {
        server.stop().await?;
    }
    Ok(())
}

/// Prints who answered in each phase.
fn print_summary(tally: &Tally) {
    println!();
    println!(
        "{:<20} {:>7} {:>7} {:>9} {:>9} {:>9}",
        "phase", "calls", "failed", "server-0", "server-1", "server-2"
    );
    for (p, name) in PHASES.iter().enumerate() {
        let answered = &tally.answered[p];
        let ok: usize = answered.values().sum();
        let by = |s: &str| answered.get(s).copied().unwrap_or(0);
        println!(
            "{:<20} {:>7} {:>7} {:>9} {:>9} {:>9}",
            name,
            ok + tally.failed[p],
            tally.failed[p],
            by("server-0"),
            by("server-1"),
            by("server-2")
        );
    }
    let failed: usize = tally.failed.iter().sum();
    println!();
    println!("failed calls: {failed} (sent to server-1 as it stopped; nothing is retried)");
    let everyone = |p: usize| {
        ["server-0", "server-1", "server-2"]
            .iter()
            .all(|s| tally.answered[p].get(*s).copied().unwrap_or(0) > 0)
    };
    println!("all three answered before the stop: {}", everyone(0));
    println!("all three answered after the restart: {}", everyone(2));
}
